"""`ifmdm-tune`: personalise a trained stage 1 to one subject with LoRA adapters (paper Fig. 6).

The base run's stage-1 EMA model is frozen; low-rank updates (`ifmdm_model.lora`) on its
decoder (default) or encoder are trained on the subject's frames with the stage-1 losses (L1 +
the local-flow term), and saved as a small adapter next to a record of the base weights'
sha256. The base run is never written to.

Subject data (`--data`, any mix): videos (every frame, centre-cropped square and resized like
`ifmdm-infer`'s portrait) and images or folders of images. Pairs (appearance, motion):
two frames of one video; for a still image, two random augmentations of it
(`ifmdm_data.shard.image_pairs.image_motion_pair`: a head-like affine motion plus a local elastic
warp). Held-out frames: the last 25% of each video (appearance = its first frame, as in the
stage-1 evaluation) and, with 4 or more images, the last 25% of the images (fixed-seed
augmented pairs); with less data the errors are measured on the training pairs, and the
record says so.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ifmdm_data.errors import IfmdmError
from ifmdm_data.shard.image_set import IMAGE_EXTENSIONS
from ifmdm_data.filter.inputs import VIDEO_EXTENSIONS

log = logging.getLogger("ifmdm_model")

IMAGE_EXTS = set(IMAGE_EXTENSIONS)          # what `ifmdm-data shard --images` reads
VIDEO_EXTS = set(VIDEO_EXTENSIONS)          # what `ifmdm-data filter` reads


class TuneError(IfmdmError):
    """Bad tuning input: no data, unreadable files, a missing base run."""


@dataclass
class Source:
    """Frames of one input, uint8 (T, S, S, 3): a video (T frames) or one image (T = 1)."""
    name: str
    frames: np.ndarray
    is_video: bool


@dataclass
class SubjectData:
    train: List[Source] = field(default_factory=list)
    heldout: List[Source] = field(default_factory=list)   # videos: their last 25%; images: held-out images
    heldout_kind: str = "train"                            # "held-out" or "train" (too little data)


def file_ext(f) -> str:
    """The lower-case suffix ('.mp4') of a local path or an object-storage URL."""
    import os

    from ifmdm_data.io import storage
    return os.path.splitext(storage.name(f))[1].lower()


def subject_files(paths: Sequence[str]) -> List[Path | str]:
    """The files named by `--data`: each file as given, each folder's images and videos (recursive, sorted).
    An object-storage URL (s3://bucket/subject.mp4, or a prefix: every image and video under it)
    stays a str; `load_subject` / `subject_windows` read each through `storage.spool` (a private
    local copy for the time it is decoded, always removed)."""
    from ifmdm_data.io import storage

    out: List[Path | str] = []
    for d in paths:
        if storage.is_url(str(d)):
            u = str(d)
            if storage.isfile(u):
                out.append(u)
                continue
            found = storage.find(u, tuple(sorted(IMAGE_EXTS | VIDEO_EXTS))) if storage.isdir(u) else None
            if found is None:
                raise TuneError(f"--data {u} does not exist")
            found = [h for h in found if not storage.name(h).startswith(".")]   # upload temporaries
            if not found:
                raise TuneError(f"{u} holds no image or video file ({', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))})")
            out += found
            continue
        p = Path(d)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
            if not found:
                raise TuneError(f"{p} holds no image or video file ({', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise TuneError(f"--data {p} does not exist")
    return out


def load_subject(paths: Sequence[str], size: int, max_frames: int = 400) -> SubjectData:
    """Read the subject's videos and images at `size` px and split off held-out frames."""
    from ifmdm_model.infer.media_io import InferenceError, load_image, video_frames
    from ifmdm_data.shard.crop import square_resize
    from ifmdm_data.io import storage
    videos, images, skipped = [], [], []
    for f in subject_files(paths):
        kind = file_ext(f)
        if kind not in VIDEO_EXTS | IMAGE_EXTS:
            skipped.append(f"{f} (not an image or video: {', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))})")
            continue
        lf = None
        try:
            with storage.spool(str(f)) as lf:           # a local path as it is; an object: a local copy
                if kind in VIDEO_EXTS:
                    frames = np.concatenate(list(video_frames(lf, size, 64)))
                    if len(frames) > max_frames:
                        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
                    videos.append(Source(storage.name(f), frames, True))
                else:
                    images.append(Source(storage.name(f), square_resize(load_image(lf), size)[None], False))
        except (InferenceError, ValueError) as e:
            msg = str(e).split('; give a png')[0]
            skipped.append(f"{f} ({msg.replace(lf, str(f)) if lf and storage.is_url(str(f)) else msg})")
        except (FileNotFoundError, storage.SpoolLimitError) as e:
            skipped.append(f"{f} ({type(e).__name__}: {e})")
    if skipped:
        if not videos and not images:
            raise TuneError("no usable image or video in --data: " + "; ".join(skipped[:5])
                            + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""))
        log.warning("skipped %d file(s): %s", len(skipped), "; ".join(skipped[:5]))
    data = SubjectData()
    for v in videos:
        if len(v.frames) < 2:
            raise TuneError(f"video {v.name} has {len(v.frames)} frame(s): a video needs 2 or more")
        cut = max(2, int(round(len(v.frames) * 0.75))) if len(v.frames) >= 8 else len(v.frames)
        data.train.append(Source(v.name, v.frames[:cut], True))
        if cut < len(v.frames):
            data.heldout.append(Source(v.name, np.concatenate([v.frames[:1], v.frames[cut:]]), True))
    n_held = len(images) // 4 if len(images) >= 4 else 0
    data.train += images[:len(images) - n_held]
    data.heldout += images[len(images) - n_held:]
    data.heldout_kind = "held-out" if data.heldout else "train"
    if not data.heldout:
        data.heldout = list(data.train)
    return data


def data_location(p) -> str:
    """A `--data` entry as the adapter records it: absolute local path, or the URL as given."""
    from ifmdm_data.io import storage
    return str(p) if storage.is_url(str(p)) else str(Path(p).resolve())


def check_local_runs(base_run, out) -> None:
    """Run folders (the base run, the output) are local paths: TuneError (one line) for a URL."""
    from ifmdm_data.io import storage
    for what, v in (("base run", base_run), ("output folder", out)):
        if v is not None and storage.is_url(str(v)):
            raise TuneError(f"the {what} {v} must be a local path (run folders and adapters are read and "
                            "written on local disk; copy them to / from object storage yourself)")


def check_finite(fit: dict) -> None:
    """Refuse to save an adapter whose weights or tuned error are not finite (a diverged run)."""
    params_ok = all(bool(torch.isfinite(p).all()) for u in fit["updates"].values() for p in u.parameters())
    err_ok = all(np.isfinite(v) for v in fit["tuned"].values())
    if not (params_ok and err_ok):
        raise TuneError("tuning diverged (non-finite adapter weights or error): nothing saved; lower --lr")


def run_root(stage1_ckpt: Path) -> Path:
    """The run folder of a stage-1 checkpoint (runs/x for runs/x/stage1/ckpt-XXXXXXXX)."""
    ck = Path(stage1_ckpt).resolve()
    return ck.parent.parent if ck.parent.name == "stage1" else ck.parent


def check_out_not_in_base(out: Path, base: Path) -> None:
    """The base run is never written: an output folder that is it or lies inside it is refused."""
    o, b = Path(out).resolve(), Path(base).resolve()
    if o == b or b in o.parents:
        raise TuneError(f"-o {out} is inside the base run {b}: give another folder (the base is never written)")


def _pair(src: Source, rng: np.random.Generator):
    if src.is_video:
        i, j = rng.integers(len(src.frames), size=2)
        return src.frames[i], src.frames[j]
    from ifmdm_data.shard.image_pairs import image_motion_pair
    return image_motion_pair(src.frames[0], rng)


def _to_tensor(frames: np.ndarray, dev) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def eval_pairs(data: SubjectData, seed: int = 1234) -> tuple:
    """Fixed (appearance, target) uint8 stacks: per held-out video its first frame with each
    later frame; per held-out image 4 fixed-seed augmented pairs."""
    rng = np.random.default_rng(seed)
    app, tgt = [], []
    for s in data.heldout:
        if s.is_video:
            for f in (s.frames[1:] if len(s.frames) > 1 else s.frames):
                app.append(s.frames[0])
                tgt.append(f)
        else:
            for _ in range(4):
                a, m = _pair(s, rng)
                app.append(a)
                tgt.append(m)
    return np.stack(app), np.stack(tgt)


@torch.no_grad()
def recon_error(model, app: np.ndarray, tgt: np.ndarray, batch: int = 16) -> dict:
    """Mean L1 (images in [-1, 1]) and PSNR (dB, peak-to-peak 2) of D(A(app), m(tgt)) vs tgt."""
    dev = next(model.parameters()).device
    se = ae = n = 0.0
    for i in range(0, len(app), batch):
        a, t = _to_tensor(app[i:i + batch], dev), _to_tensor(tgt[i:i + batch], dev)
        r = model(a, t)["recon"].float().clamp(-1, 1)
        ae += float((r - t).abs().sum())
        se += float((r - t).pow(2).sum())
        n += t.numel()
    mse = se / n
    return {"l1": ae / n, "psnr": float(10 * np.log10(4.0 / max(mse, 1e-10)))}


def fit_adapter(model, data: SubjectData, cfg, steps: int = 500, batch_size: int = 8, lr: float = 1e-3,
                local_flow: float = 0.1, seed: int = 0, log_every: int = 50) -> dict:
    """Attach LoRA updates (`cfg`: a `lora.LoraConfig`) to the frozen stage-1 `model` and train
    them on `data`'s pairs with L1 + `local_flow` x the local-flow loss (Adam). Returns
    {"updates", "base", "tuned", "seconds"}: the errors (`recon_error`) on `eval_pairs(data)`
    with the adapter off and after training."""
    from ifmdm_model.lora import add_lora, set_lora_enabled
    from ifmdm_model.stage1.losses import Stage1Loss, Stage1LossConfig

    if not data.train:
        raise TuneError("no training frames: give --data videos, images or folders of the subject")
    dev = next(model.parameters()).device
    app_e, tgt_e = eval_pairs(data)
    torch.manual_seed(seed)
    updates = add_lora(model, cfg)
    set_lora_enabled(updates, False)
    base_err = recon_error(model, app_e, tgt_e)
    set_lora_enabled(updates, True)
    params = [p for u in updates.values() for p in u.parameters()]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    loss_fn = Stage1Loss(Stage1LossConfig(l1=1.0, perceptual=0.0, local_flow=local_flow))
    rng = np.random.default_rng(seed)
    t0, recent = time.perf_counter(), []
    for step in range(1, steps + 1):
        pairs = [_pair(data.train[k], rng) for k in rng.integers(len(data.train), size=batch_size)]
        a = _to_tensor(np.stack([p[0] for p in pairs]), dev)
        m = _to_tensor(np.stack([p[1] for p in pairs]), dev)
        losses = loss_fn(model(a, m), m)
        if not torch.isfinite(losses["loss"]):
            raise TuneError(f"loss is not finite at step {step} ({float(losses['loss'])}): lower --lr")
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        recent.append(float(losses["l1"]))
        if log_every and step % log_every == 0:
            log.info("tune step %d/%d l1 %.4f | %.1f steps/s", step, steps, np.mean(recent[-log_every:]),
                     step / (time.perf_counter() - t0))
    return {"updates": updates, "base": base_err, "tuned": recon_error(model, app_e, tgt_e),
            "seconds": time.perf_counter() - t0, "eval_pairs": int(len(app_e)),
            "adapter_parameters": int(sum(p.numel() for p in params))}


def tune_stage1(base_run, data_paths: Sequence[str], out, rank: int = 8, alpha: Optional[float] = None,
                targets: str = "decoder", steps: int = 500, batch_size: int = 8, lr: float = 1e-3,
                local_flow: float = 0.1, seed: int = 0, device: str = "auto", overwrite: bool = False,
                log_every: int = 50) -> dict:
    """Train a stage-1 LoRA adapter for one subject on the base run's EMA stage 1 (never
    written) and save it to OUT/lora; returns the record written to OUT/lora/adapter.json
    (base checkpoint + sha256, data, the base and tuned errors)."""
    from ifmdm_model.checkpoint import resolve_stage1_checkpoint
    from ifmdm_model.infer import choose_device, load_stage1
    from ifmdm_model.lora import LoraConfig, save_adapter
    from ifmdm_model.checkpoint import weights_sha256

    check_local_runs(base_run, out)
    out = Path(out)
    if (out / "lora").exists() and not overwrite:
        raise TuneError(f"{out}/lora exists: pass --overwrite to replace it")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise TuneError(f"--steps and --batch-size must be >= 1 and --lr > 0 (got {steps}, {batch_size}, {lr})")
    ck = resolve_stage1_checkpoint(base_run, error=TuneError)
    check_out_not_in_base(out, run_root(ck))
    model = load_stage1(ck, choose_device(device))
    cfg = LoraConfig(rank=rank, alpha=float(alpha if alpha is not None else rank), targets=targets).validate()
    data = load_subject(data_paths, model.cfg.image_size)
    fit = fit_adapter(model, data, cfg, steps, batch_size, lr, local_flow, seed, log_every)
    record = {
        "stage": 1,
        "base_checkpoint": str(ck.resolve()),
        "base_sha256": weights_sha256(ck / "ema.safetensors"),
        "model_config": model.cfg.to_dict(),
        "data": [data_location(p) for p in data_paths],
        "train_sources": [s.name for s in data.train],
        "train_frames": int(sum(len(s.frames) for s in data.train)),
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "adapter_parameters": fit["adapter_parameters"],
        "base_parameters": int(sum(p.numel() for n_, p in model.named_parameters() if "lora_" not in n_)),
        "evaluated_on": data.heldout_kind,
        "eval_pairs": fit["eval_pairs"],
        "base": fit["base"], "tuned": fit["tuned"],
        "seconds": fit["seconds"],
    }
    check_finite(fit)
    save_adapter(out / "lora", fit["updates"], cfg, record)
    return record
