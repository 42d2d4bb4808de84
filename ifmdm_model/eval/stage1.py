"""Stage-1 evaluation: reconstruction quality of the motion autoencoder on held-out clips.

    ifmdm-eval --checkpoint runs/x --shards shards_heldout/ [--subsets hard] [--clips 50] [--raw] [-o results.json]

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

Metrics (each per image, then averaged over images): images clamped to [-1, 1] and mapped to
[0, 1]; PSNR = 10 log10(1 / MSE) over all pixels and channels, capped at `PSNR_CAP_DB` = 100 dB
(identical images); SSIM with an 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
data range 1, computed per RGB channel over the valid region (no padding) and averaged (the
same value as skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`); L1 = mean absolute error on [0, 1].

The model runs in float32 under `torch.inference_mode` (CUDA when present with device="auto").
Memory: the decoded frames of all evaluated clips are kept (n_clips x 2 x pairs_per_clip
frames of image_size^2 x 3 bytes: 50 clips x 8 frames at 512 px is about 315 MB).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ifmdm_data.errors import IfmdmError

from ifmdm_model.checkpoint import CheckpointError, load_weights, resolve_stage1_checkpoint

log = logging.getLogger("ifmdm_model")

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PAPER_REFERENCE = {"G16_D20": {"same_psnr": 32.04, "cross_psnr": 29.74}}
SUBSETS = ("coarse", "lip", "hard")


class EvalError(IfmdmError):
    """The evaluation cannot run (no clips to evaluate, bad arguments)."""


# ------------------------------------------------------------------------------------------
# Metrics (per image; inputs (N, C, H, W) in [0, 1])
# ------------------------------------------------------------------------------------------

def psnr(x: torch.Tensor, y: torch.Tensor, cap: float = PSNR_CAP_DB) -> torch.Tensor:
    """PSNR in dB per image, data range 1; identical images give `cap` (default 100 dB)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-cap / 10.0)))).clamp_max(cap)


def _gaussian_kernel(size: int, sigma: float, device, dtype) -> torch.Tensor:
    c = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    k = torch.exp(-c.pow(2) / (2.0 * sigma * sigma))
    return k / k.sum()                                             # (size,)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
         data_range: float = 1.0) -> torch.Tensor:
    """SSIM per image (Wang et al. 2004): Gaussian window `window` x `window` (11, sigma 1.5),
    K1 = 0.01, K2 = 0.03, per channel over the valid region (no padding), averaged over
    channels and positions. Images smaller than the window use a window of their size."""
    x, y = x.float(), y.float()
    n, c, h, w = x.shape
    size = min(window, h, w)
    g = _gaussian_kernel(size, sigma, x.device, x.dtype)
    gh = g.view(1, 1, size, 1).expand(c, 1, size, 1)
    gw = g.view(1, 1, 1, size).expand(c, 1, 1, size)

    def blur(t):                                                   # separable, depthwise, valid
        return F.conv2d(F.conv2d(t, gh, groups=c), gw, groups=c)

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(dim=1)                                # (N,)


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.float() - y.float()).abs().flatten(1).mean(dim=1)


def to_unit(img: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space (decoder output is linear) -> clamped [0, 1]."""
    return (img.float().clamp(-1.0, 1.0) + 1.0) * 0.5


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
    adapter (tuned on exactly these weights) is merged in."""
    from safetensors.torch import load_file

    from ifmdm_model.stage1.model import Stage1Config, build_stage1

    ck = resolve_checkpoint(checkpoint)
    weights = ck / ("ema.safetensors" if use_ema else "model.safetensors")
    for f in (ck / "state.json", weights):
        if not f.is_file():
            raise CheckpointError(f"checkpoint {ck} is incomplete: {f.name} is missing")
    try:
        state = json.loads((ck / "state.json").read_text())
        sd = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt checkpoint
        raise CheckpointError(f"checkpoint {ck} is corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{ck}/state.json is not a JSON object")
    if isinstance(state.get("model_config"), dict):
        cfg = Stage1Config.from_dict(state["model_config"], where=f"{ck}/state.json model_config")
        model = build_stage1(cfg)
    elif isinstance(state.get("model"), str):
        model = build_stage1(state["model"])
    else:
        raise CheckpointError(f"{ck}/state.json has neither 'model_config' nor 'model'")
    load_weights(model, sd, str(weights))
    if lora is not None:
        from ifmdm_model.tune.lora import apply_adapter
        apply_adapter(model, lora, weights)
    return model.to(device).eval().requires_grad_(False), ck, state


# ------------------------------------------------------------------------------------------
# Held-out clips
# ------------------------------------------------------------------------------------------

def _candidates(shards_root, subsets) -> List[tuple]:
    """[(shard path, key, n_frames)] of every sample of `subsets`, sorted."""
    from ifmdm_data.loaders import TarShard, list_shards, read_meta

    shards = list_shards(shards_root, subsets)      # ShardFormatError when there are none
    index = None if isinstance(shards_root, (list, tuple)) else Path(shards_root) / "index.parquet"
    rows = []
    if index is not None and index.is_file():
        import pyarrow.parquet as pq

        root = Path(shards_root).absolute()
        t = pq.read_table(index, columns=["key", "shard", "subset", "n_frames"]).to_pydict()
        for key, shard, sub, n in zip(t["key"], t["shard"], t["subset"], t["n_frames"]):
            if sub in subsets:
                rows.append((str(root / shard), key, int(n)))
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
                        "ifmdm-eval measures reconstruction on held-out video shards")
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
        else str(shards_root),
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
# CLI
# ------------------------------------------------------------------------------------------

def write_json_atomic(path: Path, obj) -> None:
    """Atomic JSON write (the project's one implementation, argument order of this module)."""
    from ifmdm_data.filter.finalise import write_json_atomic as _write
    _write(obj, Path(path))


def format_table(res: dict) -> str:
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
        "(cross identity: our cycle protocol A->B->back, see `ifmdm-eval --help`; paper: G=16, D=20)",
    ]
    return "\n".join(lines)


EPILOG = """\
examples:
  ifmdm-eval --checkpoint runs/x --shards shards_heldout/ -o runs/x/eval_stage1.json
  ifmdm-eval --checkpoint runs/x/stage1/ckpt-00120000 --shards shards_heldout/ --subsets hard --clips 200
  ifmdm-eval --checkpoint runs/x --shards shards_heldout/ --raw      # raw weights instead of EMA

protocols:
  same identity   recon = D(A(frame i), m(frame j)) of one clip, compared with frame j
  cross identity  OURS (the paper does not describe its own): x_AB = D(A_app(clip A frame i),
                  m(clip B frame j)); recon = D(B_app(clip B frame i), m(x_AB)), compared with
                  B frame j; motion L1 = mean |m(x_AB) - m(B frame j)|
  metrics         per image on [0, 1], averaged; PSNR capped at 100 dB; SSIM: Gaussian window
                  11, sigma 1.5, per RGB channel; L1: mean absolute error
"""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ifmdm-eval", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a stage-1 checkpoint (the motion autoencoder): same- and "
                    "cross-identity reconstruction PSNR / SSIM / L1 on held-out clips, next to "
                    "the paper's numbers. Point --shards at shards of clips NOT used for "
                    "training (`ifmdm-data shard` of a held-out manifest): there is no "
                    "automatic split. With `--clips VIDEO...` and no --shards, it evaluates "
                    "generated talking-head video instead: `ifmdm-eval --checkpoint runs/x "
                    "--clips a.mp4 b.mp4 -o eval_out/ [--inception F] [--arcface F] "
                    "[--syncnet F]` (see ifmdm_model/eval/video.py).")
    ap.add_argument("--checkpoint", required=True,
                    help="run folder (runs/x: its stage1/latest) or a ckpt-XXXXXXXX folder")
    ap.add_argument("--shards", required=True, help="held-out shard folder of `ifmdm-data shard`")
    ap.add_argument("--subsets", default=",".join(SUBSETS),
                    help="comma-separated subsets to draw clips from (default: coarse,lip,hard)")
    ap.add_argument("--clips", type=int, default=50, help="clips to evaluate (default 50)")
    ap.add_argument("--pairs", type=int, default=4, help="frame pairs per clip (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="clip order and pairs (default 0)")
    ap.add_argument("--raw", action="store_true", help="raw weights instead of the EMA weights")
    ap.add_argument("--lora", help="an `ifmdm-tune -o` folder: evaluate with its adapter merged in")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("-o", "--out", help="write the results JSON here (atomically)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = [a.split("=", 1)[0] for a in argv]
    if "--clips" in flags and "--shards" not in flags:     # talking-head evaluation on videos
        from ifmdm_model.eval import video as eval_video
        return eval_video.main(argv)
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        subsets = tuple(s.strip() for s in args.subsets.split(",") if s.strip())
        unknown = [s for s in subsets if s not in SUBSETS]
        if unknown or not subsets:
            raise EvalError(f"--subsets: unknown subset(s) {unknown or [args.subsets]}; known: "
                            f"{list(SUBSETS)}")
        res = evaluate_stage1(args.checkpoint, args.shards, subsets=subsets, n_clips=args.clips,
                              pairs_per_clip=args.pairs, seed=args.seed, use_ema=not args.raw,
                              device=args.device, batch_size=args.batch_size, lora=args.lora)
        if args.out:
            write_json_atomic(Path(args.out), res)
    except IfmdmError as e:
        print(f"ifmdm-eval: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ifmdm-eval: interrupted", file=sys.stderr)
        return 130
    print(format_table(res))
    if args.out:
        print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
