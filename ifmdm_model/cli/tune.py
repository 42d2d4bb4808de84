"""`ifmdm-tune` command line: parse and check the arguments (before torch is imported), tune, report.

The work is in `ifmdm_model.tune.stage1.tune_stage1` and `ifmdm_model.tune.stage2.tune_stage2`
(LoRA layers: `ifmdm_model.lora`)."""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from ifmdm_data.cli import HelpFormatter
from ifmdm_data.errors import IfmdmError, InputError

EPILOG = """\
examples:
  ifmdm-tune --base runs/x --data subject.mp4 -o runs/x-subject
  ifmdm-tune --base runs/x --data photos/ clip1.mp4 clip2.mp4 -o runs/x-subject --rank 16 --steps 2000
  ifmdm-infer --checkpoint runs/x --lora runs/x-subject --image subject.png --audio speech.wav -o out.mp4

Data: videos (every frame, at most 400 evenly spaced) and images or folders of them,
centre-cropped square and resized like ifmdm-infer's portrait: frame the subject as the
training crops are. A still image is paired with augmented copies of itself (affine + local
elastic motion). The last 25% of each video (and of the images, from 4 up) are held out; the
base and tuned reconstruction errors on them are printed and recorded in OUT/lora/adapter.json.
`--stage 1` (the default) tunes stage 1 (the adapter on the decoder by default keeps the motion
space stage 2 was trained on); `--stage 2` tunes the motion DiT on the subject's videos,
`--stage all` both.
"""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ifmdm-tune", epilog=EPILOG, formatter_class=HelpFormatter,
        description="Personalise a trained IF-MDM run to one subject (a person, a character, an animal) "
                    "with LoRA adapters on the stage-1 motion autoencoder (paper Fig. 6). The base run is "
                    "never modified; the adapter (safetensors + JSON) goes to OUT/lora/.")
    ap.add_argument("--base", required=True, help="run folder of `ifmdm-train -o` (or its stage1/ or a ckpt-* folder)")
    ap.add_argument("--data", required=True, nargs="+", help="the subject's videos, images or folders of them "
                                                             "(local, or object storage: s3://bucket/subject/)")
    ap.add_argument("-o", "--out", required=True, help="output folder (the adapter goes to OUT/lora/)")
    ap.add_argument("--stage", choices=["1", "2", "all"], default="1",
                    help="1 (default): stage-1 adapters from videos and images -> OUT/lora; 2: stage-2 (motion DiT) "
                         "adapters from videos with speech -> OUT/lora-stage2; all: 1, then 2 on the tuned stage 1's codes")
    ap.add_argument("--wav2vec2", help="stage 2: the wav2vec2 folder of a run trained on wav2vec2 features "
                                       "(default: the one the run records)")
    ap.add_argument("--targets", choices=["decoder", "encoder", "all"], default="decoder",
                    help="which part of stage 1 gets adapters (default decoder: the motion codes stay the base's)")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    ap.add_argument("--alpha", type=float, help="LoRA alpha (the update is alpha/r * B A; default: = rank)")
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps (default 500)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs (stage 1) or windows (stage 2) per step (default 8)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the adapters (default 1e-3)")
    ap.add_argument("--seed", type=int, default=0, help="pairs, noise and adapter init (default 0)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing OUT/lora")
    ap.add_argument("-v", "--verbose", action="store_true", help="log the loss every 50 steps")
    return ap


def check(args) -> None:
    from ifmdm_data.io import storage

    from ifmdm_model.cli.run_folder import reject_url_run_folder

    reject_url_run_folder("--base", args.base)
    reject_url_run_folder("-o", args.out, writes="the adapters are", example="runs/x-subject")
    if not Path(args.base).is_dir():
        raise InputError(f"base run {args.base} does not exist (give the run folder of `ifmdm-train -o`)")
    for d in args.data:
        storage.check_location("--data", d)
        if storage.is_url(d):      # a video / image / prefix on object storage: spooled when read
            try:
                found = storage.isfile(d) or storage.isdir(d)
            except storage.StorageError as e:
                raise InputError(f"--data {d}: cannot read it: {e}") from None
            if not found:
                raise InputError(f"--data {d} does not exist")
        elif not Path(d).exists():
            raise InputError(f"--data {d} does not exist")
    if args.rank < 1:
        raise InputError(f"--rank must be >= 1, got {args.rank}")
    if args.alpha is not None and not args.alpha > 0:
        raise InputError(f"--alpha must be > 0, got {args.alpha}")
    if args.steps < 1 or args.batch_size < 1:
        raise InputError("--steps and --batch-size must be >= 1")
    if not (math.isfinite(args.lr) and 0 < args.lr <= 1):
        raise InputError(f"--lr must be in (0, 1], got {args.lr}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    for st, sub in (("1", "lora"), ("2", "lora-stage2")):
        target = out / sub
        if args.stage in (st, "all") and (target.exists() or target.is_symlink()):
            if target.is_symlink() or not target.is_dir():
                raise InputError(f"{target} exists and is not a folder: remove it or choose another -o")
            if not args.overwrite:
                raise InputError(f"{target} exists: pass --overwrite to replace it")


def _share(rec: dict) -> str:
    return f"{100 * rec['adapter_parameters'] / max(rec['base_parameters'], 1):.1f}% of the base"


def _report1(rec: dict, args) -> None:
    b, t = rec["base"], rec["tuned"]
    print(f"stage 1: tuned on {rec['train_frames']} frames of {len(rec['train_sources'])} input(s), "
          f"{rec['steps']} steps, {rec['adapter_parameters']:,} adapter parameters ({_share(rec)}), {rec['seconds']:.0f} s")
    print(f"  reconstruction on {rec['eval_pairs']} {rec['evaluated_on']} pairs: L1 {b['l1']:.4f} -> {t['l1']:.4f}, "
          f"PSNR {b['psnr']:.2f} -> {t['psnr']:.2f} dB")
    if rec["evaluated_on"] == "train":
        print("  note: too few frames to hold any out; the errors above are on training pairs")
    print(f"  adapter: {Path(args.out) / 'lora'}")


def _report2(rec: dict) -> None:
    print(f"stage 2: tuned on {rec['train_windows']} windows of {len(rec['videos'])} video(s), {rec['steps']} steps, "
          f"{rec['adapter_parameters']:,} adapter parameters ({_share(rec)}), {rec['seconds']:.0f} s")
    print(f"  held-out denoising loss on {rec['heldout_windows']} windows: {rec['base']['heldout_loss']:.4f} -> "
          f"{rec['tuned']['heldout_loss']:.4f}")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ifmdm-tune: %(levelname)s: %(message)s")
    try:
        check(args)
        from ifmdm_model.tune.stage1 import tune_stage1
        rec1 = None
        if args.stage in ("1", "all"):
            rec1 = tune_stage1(args.base, args.data, args.out, rank=args.rank, alpha=args.alpha,
                               targets=args.targets, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed, device=args.device, overwrite=args.overwrite)
            _report1(rec1, args)
        if args.stage in ("2", "all"):
            from ifmdm_model.tune.stage2 import tune_stage2
            rec = tune_stage2(args.base, args.data, args.out, rank=args.rank, alpha=args.alpha, steps=args.steps,
                               batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device, overwrite=args.overwrite,
                               wav2vec2=args.wav2vec2, stage1_lora=args.out if rec1 else None)
            _report2(rec)
    except IfmdmError as e:
        print(f"ifmdm-tune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ifmdm-tune: interrupted; no adapter written for the stage in progress", file=sys.stderr)
        return 130
    from ifmdm_model.checkpoint import resolve_stage1_checkpoint
    from ifmdm_model.tune.stage1 import run_root
    try:
        base = run_root(resolve_stage1_checkpoint(args.base))
    except IfmdmError:
        base = Path(args.base)
    print(f"use: ifmdm-infer --checkpoint {base} --lora {args.out} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
