"""Small-scale learning checks of stage 1: data with a known answer, a short training loop, the
metrics and the baselines that would fool us. Used by `benchmarks/learning_bench.py` (tables)
and by the tests (orderings at a few seconds' scale).

Data: each "clip" is a list of frames (T, H, W, 3) uint8 split into training frames and
held-out frames (unseen motion of the same subject):
- `synthetic_local_motion`: procedural faces whose head moves globally (a shift) while a
  textured mouth patch moves independently inside the face: what the local flow module exists
  for (one global warp cannot explain both). Ground truth: the patch box of every frame.
- `shard_clips`: frames of real clips from the project's own shards (`ifmdm-data shard`), the
  first `train_fraction` of each clip's frames for training, the rest held out.

Baselines (the outputs that ignore the motion code): "copy" returns the appearance frame;
"median" returns the per-pixel median of the clip's training frames (motion-blind, and hard
to beat on near-static talking heads).

Metrics: PSNR over the image (images in [-1, 1], peak-to-peak 2), PSNR inside the moving patch
(synthetic data), and mask compactness: the mass of each group's local-flow mask inside its
best quadrant, averaged over groups and samples (1/4 for a uniform mask, 1 for a local one).
"""
from __future__ import annotations

import copy

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ifmdm_model.stage1.model import STAGE1_CONFIGS, MotionAutoencoder, Stage1Config, build_stage1


@dataclass
class Clip:
    """One subject's frames: train (T1, H, W, 3) and held-out (T2, H, W, 3) uint8 RGB;
    `heldout_boxes` (T2, 4): per held-out frame (y0, y1, x0, x1) of the independently moving region;
    `shifts` (T1 + T2, 4): per frame (train, then held-out) the true head (dx, dy) and the mouth's own
    (dx, dy) in px at the frames' size (synthetic only: what `motion_probe` regresses)."""
    name: str
    train: np.ndarray
    heldout: np.ndarray
    heldout_boxes: Optional[np.ndarray] = None
    shifts: Optional[np.ndarray] = None


#################################################################################
#                                    Data                                       #
#################################################################################

def _smooth_noise(rng: np.random.Generator, size: int, scale: int, channels: int = 3) -> np.ndarray:
    """Low-frequency colour noise (size, size, C) in [0, 1]: random values on a coarse grid,
    upsampled bicubically."""
    import cv2
    coarse = rng.random((scale, scale, channels)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)


def _render_face(ident: dict, head: tuple, mouth: tuple, size: int, ss: int = 2) -> tuple:
    """One frame at `size` px (rendered at ss * size, area-downsampled): background, a head
    (ellipse with skin texture, two eyes) shifted by `head` (dx, dy) px and a textured mouth
    patch shifted by `head` + `mouth` px. Returns (frame uint8 (size, size, 3), mouth box
    (y0, y1, x0, x1) at `size`)."""
    import cv2
    big = size * ss
    hx, hy = head[0] * ss, head[1] * ss
    img = ident["background"].copy()                                  # (big, big, 3) float
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    cx, cy = big / 2 + hx, big * 0.45 + hy
    rx, ry = big * 0.27, big * 0.34
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    skin = np.roll(ident["skin"], (int(round(hy)), int(round(hx))), axis=(0, 1))
    img[inside] = skin[inside]
    for ex in (-0.11, 0.11):                                           # eyes move with the head
        eye = ((xx - (cx + ex * big)) ** 2 + (yy - (cy - 0.08 * big)) ** 2) <= (0.035 * big) ** 2
        img[eye] = ident["eye"]
    mw, mh = int(0.26 * big), int(0.12 * big)                          # mouth patch
    mx0 = int(round(cx + mouth[0] * ss - mw / 2))
    my0 = int(round(cy + 0.17 * big + mouth[1] * ss - mh / 2))
    patch = ident["mouth"]
    y0, y1 = max(my0, 0), min(my0 + mh, big)
    x0, x1 = max(mx0, 0), min(mx0 + mw, big)
    img[y0:y1, x0:x1] = patch[y0 - my0:y1 - my0, x0 - mx0:x1 - mx0]
    frame = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    box = (max(y0 // ss, 0), min(-(-y1 // ss), size), max(x0 // ss, 0), min(-(-x1 // ss), size))
    return (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8), box


def mouth_texture_image(rng: np.random.Generator, width: int, height: int, kind: str = "stripes") -> np.ndarray:
    """The synthetic mouth patch, (height, width, 3) float32 in [0, 1] (`synthetic_local_motion`):
    "stripes": vertical stripes of 3-6 periods across the patch plus faint noise (periodic: a
    shift by one period matches almost as well as the true one); "blobs": smooth blobs about a
    third of the patch wide and a dark lip line across the middle (non-periodic)."""
    # (the stripes' draw happens for both kinds, so "blobs" keeps the rest of the seed's stream)
    stripes = (np.sin(np.arange(width) / width * rng.uniform(3, 6) * 2 * np.pi)[None, :, None] > 0)
    base = rng.uniform(0.1, 0.5, 3)
    side = max(width, height)
    if kind == "stripes":
        return np.clip(base[None, None] + 0.45 * stripes
                       + 0.15 * _smooth_noise(rng, side, 6)[:height, :width], 0, 1).astype(np.float32)
    if kind == "blobs":
        blobs = _smooth_noise(rng, side, 3, channels=1).reshape(side, side, 1)[:height, :width]
        lip = (np.abs(np.arange(height) - height / 2) < height * 0.12)[:, None, None]
        return np.clip(base[None, None] + 0.9 * (blobs - 0.5) - 0.6 * lip, 0, 1).astype(np.float32)
    raise ValueError(f"mouth texture must be stripes or blobs, got {kind!r}")


def synthetic_local_motion(n_clips: int = 6, n_train: int = 48, n_heldout: int = 16, size: int = 64,
                           head_px: float = 5.0, mouth_px: float = 4.0, seed: int = 0,
                           mouth_texture: str = "stripes") -> List[Clip]:
    """Procedural subjects with a global head shift (uniform in +-head_px, x and y) and an
    independent mouth-patch shift (uniform in +-mouth_px) per frame; held-out frames are new
    draws of both (unseen motion). Deterministic for a seed.

    mouth_texture (`mouth_texture_image`): "stripes" (the benchmark's recorded runs; period ~2.8-5.5
    px at 64 px, shorter than a pair's relative mouth shift of up to 2 * mouth_px, so a shift is
    ambiguous up to a period) or "blobs" (non-periodic: one match in x and y)."""
    rng = np.random.default_rng(seed)
    big = 2 * size
    clips = []
    for k in range(n_clips):
        ident = {
            "background": _smooth_noise(rng, big, 4),
            "skin": np.clip(rng.uniform(0.35, 0.85, 3)[None, None] * 0.7
                            + 0.3 * _smooth_noise(rng, big, 12), 0, 1).astype(np.float32),
            "eye": rng.uniform(0.0, 0.25, 3).astype(np.float32),
        }
        mw, mh = int(0.26 * big), int(0.12 * big)
        ident["mouth"] = mouth_texture_image(rng, mw, mh, mouth_texture)
        frames, boxes, shifts = [], [], []
        for _ in range(n_train + n_heldout):
            head = tuple(rng.uniform(-head_px, head_px, 2))
            mouth = tuple(rng.uniform(-mouth_px, mouth_px, 2))
            f, b = _render_face(ident, head, mouth, size)
            frames.append(f)
            boxes.append(b)
            shifts.append((*head, *mouth))
        frames = np.stack(frames)
        clips.append(Clip(f"synthetic{k}", frames[:n_train], frames[n_train:],
                          np.asarray(boxes[n_train:], dtype=np.int64), np.asarray(shifts, dtype=np.float64)))
    return clips


def shard_clips(shards_root, size: int, train_fraction: float = 0.75, max_frames: int = 400,
                subsets: Sequence[str] = ("coarse", "lip", "hard")) -> List[Clip]:
    """Every clip of the project's shards under `shards_root` (index.parquet), decoded at
    `size` px (at most `max_frames` frames, evenly spaced), split in time: the first
    `train_fraction` of the frames train, the rest are held out."""
    from pathlib import Path

    import pandas as pd

    from ifmdm_data.shard.reader import TarShard, decode_frames

    root = Path(shards_root)
    index = pd.read_parquet(root / "index.parquet")
    index = index[index["subset"].isin(list(subsets))].sort_values("key")
    clips = []
    for shard, rows in index.groupby("shard", sort=True):
        with TarShard(str(root / shard)) as tar:
            for row in rows.itertuples():
                n = int(row.n_frames)
                idx = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))
                data = tar.load(row.key, {"mp4"})["mp4"]
                got = decode_frames(data, idx.tolist(), size, f"{shard}:{row.key}")
                frames = np.stack([got[i] for i in idx if i in got])
                cut = int(len(frames) * train_fraction)
                clips.append(Clip(str(row.key), frames[:cut], frames[cut:]))
    return clips


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


#################################################################################
#                                   Metrics                                     #
#################################################################################

def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) over all elements of x and y."""
    mse = F.mse_loss(x.float().clamp(-1, 1), y.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-10))


def box_psnr(x: torch.Tensor, y: torch.Tensor, boxes: np.ndarray) -> float:
    """PSNR over the union of the per-sample boxes (y0, y1, x0, x1) (one box per sample)."""
    se, count = 0.0, 0
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        d = x[i, :, y0:y1, x0:x1].float().clamp(-1, 1) - y[i, :, y0:y1, x0:x1].float()
        se += float(d.pow(2).sum())
        count += d.numel()
    return 10 * math.log10(4.0 / max(se / max(count, 1), 1e-10))


def mask_compactness(masks: Sequence[torch.Tensor]) -> float:
    """Mean over scales >= 8 px, groups and samples of the mass of a group's mask inside its
    best quadrant: 0.25 for a uniform mask, 1.0 for a mask that fits in one quadrant."""
    vals = []
    for m in masks:
        n, g, h, w = m.shape
        if h < 8:
            continue
        m = m.float() / m.float().sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        q = torch.stack([m[..., :h // 2, :w // 2].sum((2, 3)), m[..., :h // 2, w // 2:].sum((2, 3)),
                         m[..., h // 2:, :w // 2].sum((2, 3)), m[..., h // 2:, w // 2:].sum((2, 3))])
        vals.append(q.amax(dim=0).mean().item())
    return float(np.mean(vals))


@torch.no_grad()
def motion_probe(model: MotionAutoencoder, clips: Sequence[Clip], ridge: float = 1e-3) -> Dict[str, float]:
    """Linear probe of the motion code: a ridge regression (alpha `ridge`, with bias) from m = E(frame)
    (the encoder's motion code) to the true shifts of `Clip.shifts`, fit on every training frame,
    scored as R^2 on the held-out frames. Returns {"head_x", "head_y", "mouth_x", "mouth_y"}: near 1
    when the code carries that motion linearly, <= 0 when it does not (a decoder cannot move what
    the code lacks), nan for a shift that does not vary (the head of a `head_px=0` set). Raises ValueError for clips without shifts (real clips)."""
    if any(c.shifts is None for c in clips):
        raise ValueError("motion_probe needs clips with true shifts (synthetic_local_motion)")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device

    def codes(frames):
        return torch.cat([model.encode(to_tensor(frames[i:i + 64]).to(dev))[1].float().cpu()
                          for i in range(0, len(frames), 64)]).double().numpy()
    x_tr = np.concatenate([codes(c.train) for c in clips])
    x_te = np.concatenate([codes(c.heldout) for c in clips])
    y_tr = np.concatenate([c.shifts[:len(c.train)] for c in clips])
    y_te = np.concatenate([c.shifts[len(c.train):] for c in clips])
    model.train(was_training)
    a, b = np.c_[x_tr, np.ones(len(x_tr))], np.c_[x_te, np.ones(len(x_te))]
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y_tr)
    var = ((y_te - y_te.mean(0)) ** 2).sum(0)
    r2 = np.where(var > 0, 1 - ((y_te - b @ w) ** 2).sum(0) / np.maximum(var, 1e-300), np.nan)  # nan: no motion
    return dict(zip(("head_x", "head_y", "mouth_x", "mouth_y"), map(float, r2)))


def baselines(clips: Sequence[Clip]) -> Dict[str, float]:
    """Held-out PSNR (and patch PSNR when boxes are known) of the motion-blind outputs."""
    out = {}
    for name in ("copy", "median"):
        preds, targets, boxes = [], [], []
        for c in clips:
            target = to_tensor(c.heldout)
            ref = c.train[:1] if name == "copy" else np.median(c.train, axis=0, keepdims=True)
            preds.append(to_tensor(np.asarray(ref, dtype=np.float32).round().astype(np.uint8))
                         .expand_as(target))
            targets.append(target)
            if c.heldout_boxes is not None:
                boxes.append(c.heldout_boxes)
        p, t = torch.cat(preds), torch.cat(targets)
        out[name] = psnr(p, t)
        if boxes:
            out[name + "_patch"] = box_psnr(p, t, np.concatenate(boxes))
    return out


#################################################################################
#                                  Training                                     #
#################################################################################

@dataclass
class TrainSettings:
    """A short stage-1 run: Adam with StyleGAN2's betas; pairs (appearance, motion) drawn from
    the training frames of one clip, the target is the motion frame."""
    steps: int = 300
    batch_size: int = 8
    lr: float = 2e-3
    l1: float = 1.0
    local_flow: float = 0.1
    betas: tuple = (0.5, 0.99)
    seed: int = 0
    threads: Optional[int] = None
    eval_every: int = 0                       # 0: only at the end
    log: Optional[Callable[[dict], None]] = None  # called with each evaluation's row (step, train_l1, psnr, ...)
    device: str = "cpu"                       # any torch device ("cuda", "cuda:1"); evaluation runs there too
    augment: bool = False                     # the trainer's pair augmentation (same flip + colour jitter on both)
    ema: float = 0.0                          # > 0: evaluate an EMA copy of the weights (decay warmed up as
                                              # min(ema, (1 + step) / (10 + step))), as `ifmdm-train` keeps one and
                                              # extraction and inference use it; the raw weights' PSNR is kept too


@dataclass
class RunResult:
    name: str
    config: dict
    steps: int
    seconds: float
    train_loss: float
    psnr: float
    psnr_patch: Optional[float]
    compactness: float
    local_flow_loss: float
    history: List[dict] = field(default_factory=list)
    psnr_raw: Optional[float] = None          # the raw (non-EMA) weights' held-out PSNR when `ema` > 0


def synthetic_curriculum(n_clips: int = 6, seed: int = 0, mouth_texture: str = "stripes",
                         head_px: float = 5.0, mouth_px: float = 4.0) -> Dict[str, List[Clip]]:
    """The synthetic set split like `ifmdm-data filter`'s curriculum subsets (DESIGN: `coarse` =
    head moves, lips still; `lip` = lips move, head still; `hard` = both), n_clips subjects each:
    {"coarse": mouth_px 0, "lip": head_px 0, "hard": both moving}. "hard" is exactly
    `synthetic_local_motion(n_clips, seed=seed, ...)` (the set the benchmark evaluates on); the
    other two are other subjects (seeds seed + 1000, seed + 2000)."""
    return {"coarse": synthetic_local_motion(n_clips, seed=seed + 1000, mouth_texture=mouth_texture,
                                             head_px=head_px, mouth_px=0.0),
            "lip": synthetic_local_motion(n_clips, seed=seed + 2000, mouth_texture=mouth_texture,
                                          head_px=0.0, mouth_px=mouth_px),
            "hard": synthetic_local_motion(n_clips, seed=seed, mouth_texture=mouth_texture,
                                           head_px=head_px, mouth_px=mouth_px)}


def curriculum_levels(sets: Dict[str, List[Clip]], steps: int) -> List[tuple]:
    """The shipped curriculum's levels over `synthetic_curriculum` sets (ifmdm_data/configs/
    curriculum.yaml: coarse, then lip + coarse, then hard + lip + coarse), `steps` split in
    three (the remainder goes to the last level). Returns [(name, clips, level_steps)]."""
    k = steps // 3
    return [("coarse", sets["coarse"], k),
            ("lip", sets["lip"] + sets["coarse"], k),
            ("hard", sets["hard"] + sets["lip"] + sets["coarse"], steps - 2 * k)]


def model_config(base: str = "S1-tiny", **overrides) -> Stage1Config:
    return replace(STAGE1_CONFIGS[base], **overrides).validate()


@torch.no_grad()
def evaluate(model: MotionAutoencoder, clips: Sequence[Clip], batch: int = 32) -> dict:
    """Held-out reconstruction: appearance = the clip's first training frame, motion = each
    held-out frame (target). PSNR, patch PSNR (when boxes are known), mask compactness and the
    local flow loss of the masks."""
    from ifmdm_model.stage1.losses import local_flow_loss

    model.eval()
    dev = next(model.parameters()).device
    preds, targets, boxes, comp, lfl = [], [], [], [], []
    for c in clips:
        app = to_tensor(c.train[:1]).to(dev)
        tgt = to_tensor(c.heldout)
        for i in range(0, len(tgt), batch):
            t = tgt[i:i + batch].to(dev)
            out = model(app.expand(len(t), -1, -1, -1), t)
            preds.append(out["recon"].float().cpu())
            comp.append(mask_compactness(out["masks"]))
            lfl.append(float(local_flow_loss(out["masks"])))
        targets.append(tgt)
        if c.heldout_boxes is not None:
            boxes.append(c.heldout_boxes)
    p, t = torch.cat(preds), torch.cat(targets)
    model.train()
    return {"psnr": psnr(p, t), "psnr_patch": box_psnr(p, t, np.concatenate(boxes)) if boxes else None,
            "compactness": float(np.mean(comp)), "local_flow_loss": float(np.mean(lfl))}


def train_small(cfg: Stage1Config, clips: Sequence[Clip], settings: TrainSettings,
                name: str = "", levels: Optional[Sequence[tuple]] = None) -> tuple[MotionAutoencoder, RunResult]:
    """Train a fresh model of `cfg` on the clips' training frames for `settings.steps` steps on
    `settings.device` (deterministic for a seed on one CPU thread; on CUDA up to its kernels).
    The frames live on the device; `augment` draws the trainer's pair augmentation
    (`ifmdm_data.loaders.jitter_pair`: same flip and colour jitter on both frames) on the CPU.
    `levels` ([(name, clips, steps)], e.g. `curriculum_levels`): train on each level's clips in
    turn (pairs drawn from one clip of the level, uniformly over its clips; settings.steps is
    ignored) and evaluate on `clips` (the held-out frames)."""
    from ifmdm_model.stage1.losses import Stage1Loss, Stage1LossConfig

    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    dev = torch.device(settings.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True             # fixed shapes: let cuDNN pick its fastest kernels
    model = build_stage1(cfg).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False) if settings.ema > 0 else None
    loss_fn = Stage1Loss(Stage1LossConfig(l1=settings.l1, perceptual=0.0, local_flow=settings.local_flow))
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=settings.betas)
    if levels is None:
        levels = [("all", clips, settings.steps)]
    pools = [list(lv[1]) for lv in levels]
    ends = np.cumsum([lv[2] for lv in levels])
    total = int(ends[-1])
    frames_of = {}                                          # one device copy per clip object
    for pool in pools:
        for c in pool:
            if id(c) not in frames_of:
                frames_of[id(c)] = to_tensor(c.train).to(dev)
    history, t0, recent = [], time.perf_counter(), []
    for step in range(1, total + 1):
        train_clips = pools[int(np.searchsorted(ends, step))]
        frames = [frames_of[id(c)] for c in train_clips]
        ci = rng.integers(len(train_clips), size=settings.batch_size)
        ia = [rng.integers(len(frames[c])) for c in ci]           # (this draw order keeps old seeds' runs)
        pick = [(c, i, rng.integers(len(frames[c]))) for c, i in zip(ci, ia)]
        if settings.augment:
            from ifmdm_data.loaders import jitter_pair
            pairs = [jitter_pair(train_clips[c].train[i], train_clips[c].train[j], rng) for c, i, j in pick]
            a = to_tensor(np.stack([p[0] for p in pairs])).to(dev)
            m = to_tensor(np.stack([p[1] for p in pairs])).to(dev)
        else:
            a = torch.stack([frames[c][i] for c, i, _ in pick])
            m = torch.stack([frames[c][j] for c, _, j in pick])
        losses = loss_fn(model(a, m), m)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if ema is not None:
            _ema_update(ema, model, min(settings.ema, step / (9 + step)))
        recent.append(float(losses["l1"]))
        if settings.eval_every and step % settings.eval_every == 0:
            history.append({"step": step, "train_l1": float(np.mean(recent[-50:])), **_evaluate_both(model, ema, clips)})
            if settings.log is not None:
                settings.log({**history[-1], "seconds": time.perf_counter() - t0})
    ev = _evaluate_both(model, ema, clips)
    res = RunResult(name=name, config=cfg.to_dict(), steps=total,
                    seconds=time.perf_counter() - t0, train_loss=float(np.mean(recent[-50:])),
                    psnr=ev["psnr"], psnr_patch=ev["psnr_patch"], compactness=ev["compactness"],
                    local_flow_loss=ev["local_flow_loss"], history=history, psnr_raw=ev.get("psnr_raw"))
    if ema is not None:
        model.load_state_dict(ema.state_dict())
    return model, res


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _evaluate_both(model: MotionAutoencoder, ema: Optional[MotionAutoencoder], clips: Sequence[Clip]) -> dict:
    """`evaluate` of the EMA copy when there is one (plus the raw weights' PSNR as psnr_raw)."""
    if ema is None:
        return evaluate(model, clips)
    return {**evaluate(ema, clips), "psnr_raw": evaluate(model, clips)["psnr"]}


@torch.no_grad()
def cross_identity_psnr(model: MotionAutoencoder, clips: Sequence[Clip], batch: int = 32) -> float:
    """The eval's cycle protocol (`ifmdm_model.eval.stage1`, "cross identity") on held-out
    frames: clip A gets the motion of held-out frame B_j of the next clip B,
    x_AB = D(A(A_0), m(B_j)); then recon = D(A(B_0), m(x_AB)) is compared with B_j (A_0, B_0:
    the clips' first training frames). High only when the motion code transfers across faces."""
    model.eval()
    dev = next(model.parameters()).device
    preds, targets = [], []
    for k, b in enumerate(clips):
        a = clips[(k + 1) % len(clips)] if len(clips) > 1 else b
        app_a, _ = model.encode(to_tensor(a.train[:1]).to(dev))
        app_b, _ = model.encode(to_tensor(b.train[:1]).to(dev))
        tgt = to_tensor(b.heldout)
        for i in range(0, len(tgt), batch):
            t = tgt[i:i + batch].to(dev)
            _, m_bj = model.encode(t)
            x_ab = model.decode(app_a, m_bj).float().clamp(-1, 1)
            _, m_ab = model.encode(x_ab)
            preds.append(model.decode(app_b, m_ab).float().cpu())
        targets.append(tgt)
    model.train()
    return psnr(torch.cat(preds), torch.cat(targets))
