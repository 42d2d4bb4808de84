"""Stage-1 evaluation: reconstruction quality of the motion autoencoder on held-out clips.

    ifmdm-eval stage1 --checkpoint runs/x --shards shards_heldout/ [--subsets hard] [--clips 50] [--raw] [-o results.json]

The paper's stage-1 ablation reports reconstruction PSNR for "same identity" and "cross
identity" (G=16, D=20: 32.04 / 29.74 dB). It does not say how the cross-identity number is
measured; the protocol below is OURS.

Held-out data
-------------
There is no automatic train / test split: point `--shards` at shards of clips the model was
NOT trained on, e.g. `ifmdm-data shard heldout_manifests/ -o shards_heldout/` of a manifest
folder kept out of training (another `ifmdm-data filter` run, or rows removed from the
training manifests). Clips: every sample of the chosen subsets (from `index.parquet` when
present, else the tars' json members) with at least 2 frames, sorted by (shard, key), permuted
with `numpy.random.default_rng(seed)`; the first `n_clips` are evaluated. Each clip gets
`pairs_per_clip` distinct ordered frame pairs (i, j), i != j, drawn with
`default_rng([seed, position of the clip])`. Frames are decoded from the mp4 members, resized
to the model's image_size (INTER_AREA) and scaled to [-1, 1], as in training (no augmentation).

Protocols (E: encoder -> (appearance A, motion m); D: decoder)
-----------------------------------------------------------
same identity   appearance frame i and motion frame j of the same clip; target frame j:
                recon = D(A(i), m(j)), compared with frame j. (The training task.)
cross identity  appearance from clip A, motion from a clip B of another source video when
                the evaluated clips have one (else the next clip), pair p of each clip:
                x_AB  = D(A_app(A_i), m(B_j))          (A's face with B's motion: no ground truth)
                recon = D(B_app(B_i), m(clip(x_AB)))   (B's face with the motion read back from x_AB)
                recon is compared with B_j: it is right only when the motion survived the
                transfer onto another face and the transfer back. `motion_l1` is the mean
                |m(x_AB) - m(B_j)| over the D components, which needs no image. x_AB is
                clamped to [-1, 1] (as it would be rendered) before it is encoded again.

Metrics (each per image, then averaged over images; `ifmdm_model.eval.metrics`): images
clamped to [-1, 1] and mapped to [0, 1]; PSNR = 10 log10(1 / MSE) over all pixels and channels,
capped at `PSNR_CAP_DB` = 100 dB (identical images); SSIM with an 11x11 Gaussian window, sigma
1.5, K1 = 0.01, K2 = 0.03, data range 1, computed per RGB channel over the valid region (no
padding) and averaged (the same value as skimage's `structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)`); L1 = mean absolute error on [0, 1].

The model runs in float32 under `torch.inference_mode` (CUDA when present with device="auto").
Memory: the decoded frames of all evaluated clips are kept (n_clips x 2 x pairs_per_clip
frames of image_size^2 x 3 bytes: 50 clips x 8 frames at 512 px is about 315 MB).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ifmdm_data.errors import IfmdmError

from ifmdm_model.checkpoint import load_stage1_checkpoint, resolve_stage1_checkpoint
from ifmdm_model.eval.metrics import PSNR_CAP_DB, l1, psnr, ssim, to_unit

log = logging.getLogger("ifmdm_model")

PAPER_REFERENCE = {"G16_D20": {"same_psnr": 32.04, "cross_psnr": 29.74}}
SUBSETS = ("coarse", "lip", "hard")


class EvalError(IfmdmError):
    """The evaluation cannot run (no clips to evaluate, bad arguments)."""


# ------------------------------------------------------------------------------------------
# Metrics (per image; inputs (N, C, H, W) in [0, 1]: `ifmdm_model.eval.metrics`)
# ------------------------------------------------------------------------------------------

class _Meter:
    def __init__(self, *names):
        self.values: Dict[str, List[float]] = {k: [] for k in names}

    def add(self, **kw):
        for k, v in kw.items():
            self.values[k].extend(v.detach().double().cpu().tolist())

    def add_images(self, recon, target):
        r, t = to_unit(recon), to_unit(target)
        self.add(psnr=psnr(r, t), ssim=ssim(r, t), l1=l1(r, t))

    def result(self) -> dict:
        out = {k: (float(np.mean(v)) if v else None) for k, v in self.values.items()}
        out["n"] = len(next(iter(self.values.values())))
        return out


# ------------------------------------------------------------------------------------------
# Checkpoint
# ------------------------------------------------------------------------------------------

def resolve_checkpoint(path) -> Path:
    """`checkpoint.resolve_stage1_checkpoint`: a ckpt folder, runs/x/stage1 or runs/x."""
    return resolve_stage1_checkpoint(path)


def load_stage1(checkpoint, use_ema: bool = True, device="cpu", lora=None):
    """(model in eval mode on `device`, checkpoint folder, state.json dict). Reads state.json
    and one weights file only (not the optimizer). `lora`: an `ifmdm-tune` output folder whose
    adapter (tuned on exactly these weights) is merged in. The model comes from
    `checkpoint.load_stage1_checkpoint` (failures: CheckpointError)."""
    ck = resolve_checkpoint(checkpoint)
    weights = "ema.safetensors" if use_ema else "model.safetensors"
    model, state = load_stage1_checkpoint(ck, "cpu", weights=weights)
    if lora is not None:
        from ifmdm_model.lora import apply_adapter
        apply_adapter(model, lora, ck / weights)
    return model.to(device).eval().requires_grad_(False), ck, state


# ------------------------------------------------------------------------------------------
# Held-out clips
# ------------------------------------------------------------------------------------------

def _candidates(shards_root, subsets) -> List[tuple]:
    """[(shard path or URL, key, n_frames)] of every sample of `subsets`, sorted. `shards_root`:
    a shard folder, an object-storage prefix (s3://bucket/shards: the tars are read with ranged
    reads, as by the training loaders) or a list of tars."""
    from ifmdm_data.io import storage
    from ifmdm_data.loaders import TarShard, list_shards, read_meta

    shards = list_shards(shards_root, subsets)      # ShardFormatError when there are none
    remote = not isinstance(shards_root, (list, tuple)) and storage.is_url(str(shards_root))
    if isinstance(shards_root, (list, tuple)):
        index = None
    elif remote:
        index = storage.join(str(shards_root).rstrip("/"), "index.parquet")
    else:
        index = Path(shards_root) / "index.parquet"
    rows = []
    if index is not None and storage.isfile(index):
        t = storage.read_parquet(index, columns=["key", "shard", "subset", "n_frames"]).to_pydict()
        root = str(shards_root).rstrip("/") if remote else Path(shards_root).absolute()
        for key, shard, sub, n in zip(t["key"], t["shard"], t["subset"], t["n_frames"]):
            if sub in subsets:
                rows.append((storage.join(root, shard) if remote else str(root / shard), key, int(n)))
    else:
        for path in shards:
            with TarShard(path) as sh:
                for key in sh.keys():
                    rows.append((path, key, int(read_meta(sh, key)["n_frames"])))
    return sorted(rows)


def select_clips(shards_root, subsets=SUBSETS, n_clips: int = 50, seed: int = 0) -> List[tuple]:
    """The evaluated clips: [(shard, key, n_frames)], the first `n_clips` of a seeded order."""
    from ifmdm_data.shard.image_set import is_image_set_folder
    subsets = tuple(subsets)
    if not isinstance(shards_root, (list, tuple)) and is_image_set_folder(shards_root):
        raise EvalError(f"{shards_root} is an image set (`ifmdm-data shard --images`): still images, no clips; "
                        "ifmdm-eval stage1 measures reconstruction on held-out video shards")
    rows = [r for r in _candidates(shards_root, subsets) if r[2] >= 2]
    if not rows:
        raise EvalError(f"no clips with at least 2 frames in subsets {list(subsets)} under "
                        f"{shards_root}")
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order[:n_clips]]


def _load_clips(clips: List[tuple], size: int, pairs_per_clip: int, seed: int) -> List[dict]:
    """Decode the frames of each clip's pairs: [{"key", "source", "pairs", "frames"}]."""
    from ifmdm_data.loaders import TarShard, decode_frames, read_meta, sample_pairs

    out: List[Optional[dict]] = [None] * len(clips)
    by_shard: Dict[str, List[int]] = {}
    for pos, (shard, _, _) in enumerate(clips):
        by_shard.setdefault(shard, []).append(pos)
    for shard, positions in sorted(by_shard.items()):
        with TarShard(shard) as sh:
            for pos in positions:
                _, key, n = clips[pos]
                if key not in sh.keys():
                    raise EvalError(f"{shard}: sample {key} listed in index.parquet is not in the "
                                    f"tar (re-run `ifmdm-data shard`)")
                meta = read_meta(sh, key)
                n = min(n, int(meta["n_frames"]))
                pairs = sample_pairs(n, pairs_per_clip, np.random.default_rng([seed, pos]))
                frames = decode_frames(sh.read(key, "mp4"), [i for p in pairs for i in p], size,
                                       sh.where(key))
                out[pos] = {"key": key, "source": meta.get("source", f"{shard}:{key}"),
                            "pairs": pairs, "frames": frames}
    return out


def _cross_partners(clips: List[dict]) -> List[int]:
    """For clip k, clip B: the next clip (cyclically) from another source video, else the next."""
    n = len(clips)
    partners = []
    for k in range(n):
        cand = [(k + d) % n for d in range(1, n)]
        other = [b for b in cand if clips[b]["source"] != clips[k]["source"]]
        partners.append(other[0] if other else cand[0])
    return partners


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------

def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _stack(frames: Sequence[np.ndarray], device) -> torch.Tensor:
    from ifmdm_data.loaders import to_tensor

    return torch.stack([to_tensor(f) for f in frames]).to(device)   # (B, 3, H, W) in [-1, 1]


def _select(appearance, idx: slice):
    return [a[idx] for a in appearance]


def evaluate_stage1(checkpoint, shards_root, subsets=SUBSETS, n_clips: int = 50,
                    pairs_per_clip: int = 4, seed: int = 0, use_ema: bool = True,
                    device: str = "auto", batch_size: int = 8, lora=None) -> dict:
    """Same- and cross-identity reconstruction metrics of a stage-1 checkpoint (with `lora`:
    an `ifmdm-tune` adapter merged in).

    checkpoint: a run folder (runs/x, or runs/x/stage1: its `latest` checkpoint) or a
    ckpt-XXXXXXXX folder. The model is rebuilt from state.json's model_config; EMA weights
    (use_ema=False: the raw weights). shards_root: a shard folder of `ifmdm-data shard`.
    Point it at shards of clips NOT used for training (e.g. `ifmdm-data shard` of a held-out
    manifest): there is no automatic split. See the module docstring for the clip selection,
    the protocols (the cross-identity cycle is ours; the paper does not describe its own) and
    the metrics.

    Returns {"checkpoint", "step", "model", "n_clips", "pairs" (same-identity pairs),
    "same_identity": {"psnr", "ssim", "l1", "n"}, "cross_identity": {"psnr", "ssim", "l1",
    "motion_l1", "n"} (values None with fewer than 2 clips), "paper_reference", ...}.
    """
    for name, v in (("n_clips", n_clips), ("pairs_per_clip", pairs_per_clip),
                    ("batch_size", batch_size)):
        if int(v) < 1:
            raise EvalError(f"{name} must be >= 1, got {v}")
    subsets = tuple(subsets)
    dev = _device(device)
    model, ck, state = load_stage1(checkpoint, use_ema=use_ema, device=dev, lora=lora)
    size = model.cfg.image_size
    chosen = select_clips(shards_root, subsets, n_clips, seed)
    clips = _load_clips(chosen, size, pairs_per_clip, seed)
    log.info("evaluating %s on %d clip(s) at %d px", ck, len(clips), size)

    # same identity: (clip, appearance frame i, motion frame j)
    same = [(c, i, j) for c in clips for i, j in c["pairs"]]
    # cross identity: (A frame i_p, B frame j_p, B frame i_p) for pair p of both clips
    cross, same_source = [], 0
    if len(clips) >= 2:
        for a, b in zip(clips, (clips[k] for k in _cross_partners(clips))):
            for (ia, _), (ib, jb) in zip(a["pairs"], b["pairs"]):
                cross.append((a["frames"][ia], b["frames"][jb], b["frames"][ib]))
                same_source += a["source"] == b["source"]

    same_m, cross_m = _Meter("psnr", "ssim", "l1"), _Meter("psnr", "ssim", "l1", "motion_l1")
    with torch.inference_mode():
        for s in range(0, len(same), batch_size):
            chunk = same[s:s + batch_size]
            n = len(chunk)
            imgs = _stack([c["frames"][i] for c, i, _ in chunk]
                          + [c["frames"][j] for c, _, j in chunk], dev)
            appearance, m = model.encode(imgs)                   # one pass for both frames
            recon = model.decode(_select(appearance, slice(0, n)), m[n:])
            same_m.add_images(recon, imgs[n:])
        for s in range(0, len(cross), batch_size):
            chunk = cross[s:s + batch_size]
            n = len(chunk)
            imgs = _stack([c[0] for c in chunk] + [c[1] for c in chunk] + [c[2] for c in chunk], dev)
            appearance, m = model.encode(imgs)                   # A_i, B_j, B_i
            m_bj = m[n:2 * n]
            x_ab = model.decode(_select(appearance, slice(0, n)), m_bj).float().clamp(-1.0, 1.0)
            _, m_ab = model.encode(x_ab)
            recon = model.decode(_select(appearance, slice(2 * n, 3 * n)), m_ab)
            cross_m.add_images(recon, imgs[n:2 * n])
            cross_m.add(motion_l1=l1(m_ab.reshape(n, -1), m_bj.reshape(n, -1)))

    return {
        "checkpoint": str(ck),
        "lora": str(Path(lora).resolve()) if lora is not None else None,
        "step": state.get("global_step"),
        "model": state.get("model"),
        "weights": "ema" if use_ema else "raw",
        "image_size": size,
        "shards": [str(p) for p in shards_root] if isinstance(shards_root, (list, tuple))
        else str(shards_root).rstrip("/") if "://" in str(shards_root) else str(shards_root),
        "subsets": list(subsets),
        "seed": seed,
        "n_clips": len(clips),
        "pairs": len(same),
        "cross_pairs": len(cross),
        "cross_pairs_same_source": same_source,
        "same_identity": same_m.result(),
        "cross_identity": cross_m.result(),
        "psnr_cap_db": PSNR_CAP_DB,
        "protocol": {
            "same_identity": "recon = D(A(frame i), m(frame j)) of one clip vs frame j",
            "cross_identity": "ours (the paper does not describe its own): x_AB = D(A_app(A_i), "
                              "m(B_j)); recon = D(B_app(B_i), m(clamp(x_AB))) vs B_j; motion_l1 = "
                              "mean |m(x_AB) - m(B_j)|",
            "metrics": "per image on [0, 1], then averaged; PSNR capped at 100 dB; SSIM Gaussian "
                       "window 11, sigma 1.5, per RGB channel; L1 mean absolute error",
        },
        "paper_reference": json.loads(json.dumps(PAPER_REFERENCE)),
    }


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

def format_table(res: dict) -> str:
    """The results of `evaluate_stage1` as the table `ifmdm-eval stage1` prints."""
    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    s, c = res["same_identity"], res["cross_identity"]
    ref = res["paper_reference"]["G16_D20"]
    lines = [
        f"stage-1 evaluation: {res['checkpoint']} (step {res['step']}, {res['model']}, "
        f"{res['weights']} weights), {res['n_clips']} clip(s) of {','.join(res['subsets'])}",
        f"{'':16s} {'PSNR dB':>8s} {'SSIM':>7s} {'L1':>7s} {'motion L1':>10s} {'pairs':>6s} "
        f"{'paper PSNR':>11s}",
        f"{'same identity':16s} {f(s['psnr'], '8.2f')} {f(s['ssim'], '7.4f')} {f(s['l1'], '7.4f')} "
        f"{'-':>10s} {s['n']:6d} {ref['same_psnr']:11.2f}",
        f"{'cross identity':16s} {f(c['psnr'], '8.2f')} {f(c['ssim'], '7.4f')} {f(c['l1'], '7.4f')} "
        f"{f(c['motion_l1'], '10.4f')} {c['n']:6d} {ref['cross_psnr']:11.2f}",
        "(cross identity: our cycle protocol A->B->back, see `ifmdm-eval stage1 --help`; paper: G=16, D=20)",
    ]
    return "\n".join(lines)
