"""`ifmdm-eval stage1|video`. Thin: parse, call the library (`ifmdm_model.eval`), one-line errors (exit 2).

    ifmdm-eval stage1 --checkpoint runs/x --shards held_out/ ...   stage-1 reconstruction (eval/stage1.py)
    ifmdm-eval video --checkpoint runs/x --clips a.mp4 ... -o out/  talking-head metrics (eval/video.py)

The library modules (and torch) are imported only once a subcommand is chosen, so a missing or
unknown subcommand is a one-line error at once.
"""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

from ifmdm_data.cli import HelpFormatter
from ifmdm_data.errors import IfmdmError

SUBCOMMANDS = ("stage1", "video")
SUBCOMMAND_HELP = ("the subcommands are `ifmdm-eval stage1` (stage-1 reconstruction on held-out "
                   "shards) and `ifmdm-eval video` (talking-head metrics on held-out clips); see "
                   "ifmdm-eval -h")

EPILOG = """\
examples:
  ifmdm-eval stage1 --checkpoint runs/x --shards shards_heldout/ -o runs/x/eval_stage1.json
  ifmdm-eval video --checkpoint runs/x --clips a.mp4 b.mp4 -o eval_out/ --syncnet syncnet_v2.model
  ifmdm-eval stage1 -h      # the flags, protocols and metrics of one subcommand
"""

STAGE1_EPILOG = """\
examples:
  ifmdm-eval stage1 --checkpoint runs/x --shards shards_heldout/ -o runs/x/eval_stage1.json
  ifmdm-eval stage1 --checkpoint runs/x/stage1/ckpt-00120000 --shards shards_heldout/ --subsets hard --clips 200
  ifmdm-eval stage1 --checkpoint runs/x --shards shards_heldout/ --raw      # raw weights instead of EMA

protocols:
  same identity   recon = D(A(frame i), m(frame j)) of one clip, compared with frame j
  cross identity  OURS (the paper does not describe its own): x_AB = D(A_app(clip A frame i),
                  m(clip B frame j)); recon = D(B_app(clip B frame i), m(x_AB)), compared with
                  B frame j; motion L1 = mean |m(x_AB) - m(B frame j)|
  metrics         per image on [0, 1], averaged; PSNR capped at 100 dB; SSIM: Gaussian window
                  11, sigma 1.5, per RGB channel; L1: mean absolute error
"""

STAGE1_DESCRIPTION = (
    "Evaluate a stage-1 checkpoint (the motion autoencoder): same- and cross-identity "
    "reconstruction PSNR / SSIM / L1 on held-out clips, next to the paper's numbers. Point "
    "--shards at shards of clips NOT used for training (`ifmdm-data shard` of a held-out "
    "manifest): there is no automatic split. Generated talking-head video is evaluated by "
    "`ifmdm-eval video` instead (see ifmdm_model/eval/video.py).")

VIDEO_DESCRIPTION = (
    "Talking-head evaluation: generate each held-out clip from its first frame and its audio;\n"
    "PSNR / SSIM / audio-visual agreement, and FID / CSIM / LSE-D / LSE-C where their weights\n"
    "files are given.")


def add_stage1_arguments(ap: argparse.ArgumentParser, subsets) -> argparse.ArgumentParser:
    """The flags of `ifmdm-eval stage1` (`subsets`: the known subsets, the --subsets default)."""
    ap.add_argument("--checkpoint", required=True,
                    help="run folder (runs/x: its stage1/latest) or a ckpt-XXXXXXXX folder")
    ap.add_argument("--shards", required=True, help="held-out shard folder of `ifmdm-data shard`, or its "
                                                   "object-storage prefix (s3://bucket/shards)")
    ap.add_argument("--subsets", default=",".join(subsets),
                    help="comma-separated subsets to draw clips from (default: coarse,lip,hard)")
    ap.add_argument("--clips", type=int, default=50, help="clips to evaluate (default 50)")
    ap.add_argument("--pairs", type=int, default=4, help="frame pairs per clip (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="clip order and pairs (default 0)")
    ap.add_argument("--raw", action="store_true", help="raw weights instead of the EMA weights")
    ap.add_argument("--lora", help="an `ifmdm-tune -o` folder: evaluate with its adapter merged in")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("-o", "--out", help="write the results JSON here (atomically; a local path or an "
                                        "object-storage URL)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def add_video_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `ifmdm-eval video`."""
    ap.add_argument("--checkpoint", required=True, help="run folder (stage1/ and stage2/)")
    ap.add_argument("--clips", nargs="+", required=True, help="held-out videos with audio")
    ap.add_argument("-o", "--out", required=True, help="output folder (videos, results.json)")
    ap.add_argument("--inception", help="Inception-v3 state dict (FID)")
    ap.add_argument("--arcface", help="ArcFace iresnet state dict (CSIM)")
    ap.add_argument("--syncnet", help="SyncNet state dict (LSE-D / LSE-C): syncnet_python's "
                    "syncnet_v2.model (paper-comparable) or an ifmdm SyncNet state dict")
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps of stage 2 (default 25, as ifmdm-infer)")
    ap.add_argument("--cfg", type=float, default=2.5, help="speech CFG scale (default 2.5, as ifmdm-infer)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of every generation (default 0)")
    ap.add_argument("--max-frames", type=int, default=None, help="evaluate the first N frames")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    ap.add_argument("--lora", help="an `ifmdm-tune -o` folder: its stage-1 adapter is merged in")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def parser() -> argparse.ArgumentParser:
    """`ifmdm-eval` with its two subcommands (imports the evaluation modules, hence torch)."""
    from ifmdm_model.eval import stage1, video

    ap = argparse.ArgumentParser(
        prog="ifmdm-eval", epilog=EPILOG, formatter_class=HelpFormatter,
        description=textwrap.fill("Evaluate an IF-MDM run: `stage1` measures the motion autoencoder's "
                                  "reconstruction on held-out shards; `video` generates held-out clips from "
                                  "their first frame and audio and measures the talking-head metrics.", 95))
    sub = ap.add_subparsers(dest="command", metavar="{stage1,video}")
    add_stage1_arguments(sub.add_parser(
        "stage1", help="stage-1 reconstruction PSNR / SSIM / L1 (same and cross identity) on held-out shards",
        description=textwrap.fill(STAGE1_DESCRIPTION, 95), epilog=STAGE1_EPILOG,
        formatter_class=HelpFormatter), stage1.SUBSETS)
    add_video_arguments(sub.add_parser(
        "video", help="generated video vs held-out clips: PSNR / SSIM, AV agreement, FID / CSIM / LSE",
        description=VIDEO_DESCRIPTION, epilog=video.__doc__.split("\n", 1)[1].lstrip("\n"),
        formatter_class=HelpFormatter))
    return ap


def _local_runs(args) -> None:
    """--checkpoint / --lora (and video's -o folder) must be local: one line, exit 2, before any
    work (and before anything is created under a name like `s3:`)."""
    from ifmdm_model.cli.run_folder import reject_malformed_url, reject_url_run_folder

    reject_url_run_folder("--checkpoint", args.checkpoint)
    reject_url_run_folder("--lora", args.lora, example="runs/x-subject")
    reject_malformed_url("--shards", getattr(args, "shards", None))      # stage1's shards and results file
    reject_malformed_url("-o", getattr(args, "out", None))               # may be URLs: well-formed ones


def run_stage1(args) -> None:
    """`ifmdm-eval stage1`: evaluate, write the JSON (with -o), print the table."""
    from ifmdm_data.io import storage
    from ifmdm_data.io.atomic import write_json_atomic

    from ifmdm_model.eval.stage1 import SUBSETS, EvalError, evaluate_stage1, format_table

    subsets = tuple(s.strip() for s in args.subsets.split(",") if s.strip())
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown or not subsets:
        raise EvalError(f"--subsets: unknown subset(s) {unknown or [args.subsets]}; known: "
                        f"{list(SUBSETS)}")
    _local_runs(args)
    if args.out and storage.is_url(args.out):           # a results JSON on object storage
        if args.out.endswith("/") or storage.isdir(args.out):
            raise EvalError(f"-o {args.out} is a folder; give the JSON file to write")
        storage.check_writable(storage.parent(args.out))  # a bad bucket: one line now, not after the evaluation
    elif args.out and Path(args.out).is_dir():           # checked before the evaluation, not after it
        raise EvalError(f"-o {args.out} is a folder; give the JSON file to write")
    res = evaluate_stage1(args.checkpoint, args.shards, subsets=subsets, n_clips=args.clips,
                          pairs_per_clip=args.pairs, seed=args.seed, use_ema=not args.raw,
                          device=args.device, batch_size=args.batch_size, lora=args.lora)
    if args.out:
        write_json_atomic(res, args.out if storage.is_url(args.out) else Path(args.out))
    print(format_table(res))
    if args.out:
        print(f"results: {args.out}")


def run_video(args) -> None:
    """`ifmdm-eval video`: generate and evaluate, write OUT/results.json, print the table."""
    from ifmdm_data.io.atomic import write_json_atomic

    from ifmdm_model.cli.run_folder import reject_url_run_folder
    from ifmdm_model.eval.video import evaluate_videos, format_table

    _local_runs(args)
    reject_url_run_folder("-o", args.out, writes="the generated videos and results.json are", example="eval_out",
                          what="the output folder")
    res = evaluate_videos(args.checkpoint, args.clips, args.out, inception=args.inception,
                          arcface=args.arcface, syncnet=args.syncnet, steps=args.steps,
                          cfg=args.cfg, seed=args.seed, max_frames=args.max_frames,
                          device=args.device, lora=args.lora)
    write_json_atomic(res, Path(args.out) / "results.json")
    print(format_table(res))
    print(f"results: {Path(args.out) / 'results.json'}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        if not argv:
            got = "missing subcommand"
        elif argv[0].startswith("-"):   # the form before 2026-12-01, flags only
            got = ("missing subcommand (it comes first: `ifmdm-eval stage1 --checkpoint ... --shards ...`, "
                   "`ifmdm-eval video --clips ...`)")
        else:
            got = f"unknown subcommand {argv[0]!r}"
        print(f"ifmdm-eval: error: {got}: {SUBCOMMAND_HELP}", file=sys.stderr)
        return 2
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        (run_stage1 if args.command == "stage1" else run_video)(args)
    except IfmdmError as e:
        print(f"ifmdm-eval: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ifmdm-eval: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
