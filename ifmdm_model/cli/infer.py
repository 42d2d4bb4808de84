"""`ifmdm-infer` command line: arguments are parsed and checked (files exist, values in range)
before torch and the models are imported, so a bad argument is rejected in a fraction of a
second instead of after the ~4-7 s torch import. The work is in `ifmdm_model.infer`
(`generate`, `reenact`); run as `ifmdm-infer` or `python -m ifmdm_model.cli.infer`."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from ifmdm_data.cli import HelpFormatter
from ifmdm_data.errors import IfmdmError, InputError

DTYPE_NAMES = ("bf16", "fp16", "fp32")

EPILOG = """\
examples:
  ifmdm-infer --checkpoint runs/x --image face.png --audio speech.wav -o out.mp4
  ifmdm-infer --checkpoint runs/x --image face.png --audio talk.mp4 -o out.mp4 --steps 10 --cfg 2
  ifmdm-infer --checkpoint runs/x --image face.png --audio speech.wav -o out.mp4 --motion-std 0.05
  ifmdm-infer --checkpoint runs/x --image face.png --audio speech.wav -o out.mp4 --device cuda --dtype bf16 --compile
  ifmdm-infer --checkpoint runs/x --image face.png --driving-video clip.mp4 -o reenact.mp4
  ifmdm-infer --checkpoint runs/x --lora runs/x-cat --image cat.png --audio speech.wav -o cat.mp4

The image is centre-cropped to a square and resized to the model's size: no face detection or
alignment is done, so give a frontal portrait framed like the training crops.
"""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ifmdm-infer", epilog=EPILOG, formatter_class=HelpFormatter,
        description="Generate a talking-head video from one portrait image and speech with a trained "
                    "IF-MDM run (stage-1 motion autoencoder + stage-2 motion diffusion), or transfer "
                    "the motion of a driving video to the portrait (stage 1 only). Writes an H.264 "
                    "mp4 with the input audio as AAC.")
    ap.add_argument("--checkpoint", required=True, help="run folder of `ifmdm-train -o` (holding stage1/ and stage2/)")
    ap.add_argument("--image", required=True, help="portrait image (png, jpg, ...)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="speech: any audio file, or a video whose audio track is used")
    src.add_argument("--driving-video", help="reenactment: transfer this video's motion (stage 1 only)")
    ap.add_argument("-o", "--out", required=True, help="output mp4")
    ap.add_argument("--lora", help="an `ifmdm-tune -o` folder: its stage-1 adapter (tuned on this run) is merged in")
    ap.add_argument("--steps", type=int, default=25, help="DDIM sampling steps (default 25; 10-100)")
    ap.add_argument("--cfg", type=float, default=2.5, help="classifier-free guidance scale on speech (default 2.5; 1: off)")
    ap.add_argument("--cfg-rescale", type=float, default=1.0,
                    help="guidance rescale in [0, 1] (default 1: the guided motion keeps the conditional "
                         "prediction's std over frames, so --motion-std holds under --cfg; 0: plain CFG)")
    ap.add_argument("--motion-std", type=float, default=0.1,
                    help="m_sigma for every motion dim (default 0.1; lower: calmer, better lip sync; higher: more expressive)")
    ap.add_argument("--motion-mean", default="input",
                    help="m_mu: input (the image's motion, default), previous (each chunk: the previous "
                         "chunk's mean) or a .npy of shape (D,) or (T, D)")
    ap.add_argument("--first-hint", choices=["input", "learned"], default="input",
                    help="motion hint of the first chunk: the image's motion m' (default) or the learned "
                         "first-chunk embedding")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same video)")
    ap.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    ap.add_argument("--size", type=int, help="output side in pixels (default: the model's image size; "
                                             "other sizes resize the generated frames)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="autocast precision (bf16/fp16 on GPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the DiT and the decoder (GPU)")
    ap.add_argument("--batch-frames", type=int, default=16, help="frames decoded per batch (default 16)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    ap.add_argument("--wav2vec2", help="wav2vec2 model folder (overrides the one recorded in the checkpoint)")
    ap.add_argument("--no-face-check", action="store_true", help="skip the mediapipe face-count warning")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    ap.add_argument("--json", action="store_true", help="print the stats as JSON")
    return ap


def _need_file(path: str, what: str) -> None:
    if not Path(path).is_file():
        raise InputError(f"{what} {path} does not exist" if not Path(path).exists() else f"{what} {path} is not a file")


def check_paths(args) -> None:
    """Inputs exist, the output can be written (the same checks `ifmdm_model.infer` repeats later)."""
    from ifmdm_model.cli.run_folder import reject_url_run_folder
    reject_url_run_folder("--checkpoint", args.checkpoint)         # run folders are local: one line, exit 2
    reject_url_run_folder("--lora", args.lora, example="runs/x-subject")
    if not Path(args.checkpoint).is_dir():
        raise InputError(f"checkpoint folder {args.checkpoint} does not exist (give the run folder of "
                         f"`ifmdm-train -o`, e.g. runs/x)")
    _need_file(args.image, "image")
    if args.audio is not None:
        _need_file(args.audio, "audio")
    if args.driving_video is not None:
        _need_file(args.driving_video, "driving video")
    if args.lora is not None and not Path(args.lora).is_dir():
        raise InputError(f"--lora folder {args.lora} does not exist (give the -o folder of `ifmdm-tune`)")
    if args.wav2vec2 is not None and not Path(args.wav2vec2).is_dir():
        raise InputError(f"--wav2vec2 folder {args.wav2vec2} does not exist")
    if args.motion_mean not in ("input", "previous") and not Path(args.motion_mean).is_file():
        raise InputError(f"--motion-mean must be input, previous or a .npy file; {args.motion_mean} does not exist")
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"{out} is a folder")
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists: pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")


def check_values(args) -> None:
    """Numbers in range (the steps' upper bound depends on the checkpoint: checked later)."""
    if args.steps < 1:
        raise InputError(f"--steps must be an integer >= 1, got {args.steps}")
    if not (math.isfinite(args.motion_std) and args.motion_std >= 0):
        raise InputError(f"--motion-std must be >= 0, got {args.motion_std!r}")
    if not math.isfinite(args.cfg):
        raise InputError(f"--cfg must be finite, got {args.cfg!r}")
    if not (math.isfinite(args.cfg_rescale) and 0.0 <= args.cfg_rescale <= 1.0):
        raise InputError(f"--cfg-rescale must be in [0, 1], got {args.cfg_rescale!r}")
    if not (math.isfinite(args.fps) and 1 <= args.fps <= 240):
        raise InputError(f"--fps must be in [1, 240], got {args.fps!r}")
    if args.batch_frames < 1:
        raise InputError(f"--batch-frames must be an integer >= 1, got {args.batch_frames}")
    if args.size is not None and (args.size < 16 or args.size % 2 or args.size > 4096):
        raise InputError(f"--size must be an even integer in [16, 4096], got {args.size}")


def _summary(st: dict) -> str:
    s = st["stages_s"]
    ffl = st["first_frame_latency_s"]
    return (f"wrote {st['output']}: {st['frames']} frames ({st['seconds']:.2f} s at {st['fps_video']:g} fps) "
            f"in {st['wall_s']:.2f} s = {st['fps']:.1f} fps; first frame after "
            f"{ffl:.2f} s; load {st['load_s']:.2f} s; " +
            ", ".join(f"{k} {v:.2f} s" for k, v in s.items()))


def _run(args) -> dict:
    from ifmdm_model.infer import generate, reenact          # torch, models: only for valid arguments

    common = dict(size=args.size, device=args.device, dtype=args.dtype, compile=args.compile,
                  overwrite=args.overwrite, batch_frames=args.batch_frames, progress=not args.quiet,
                  face_check=not args.no_face_check, lora=args.lora)
    if args.driving_video:
        return reenact(args.checkpoint, args.image, args.driving_video, args.out, **common)
    return generate(args.checkpoint, args.image, args.audio, args.out, fps=args.fps, steps=args.steps,
                    cfg=args.cfg, motion_std=args.motion_std, motion_mean=args.motion_mean,
                    seed=args.seed, wav2vec2=args.wav2vec2, first_hint=args.first_hint,
                    guidance_rescale=args.cfg_rescale, **common)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="ifmdm-infer: %(levelname)s: %(message)s")
    try:
        check_paths(args)
        check_values(args)
        st = _run(args)
    except IfmdmError as e:
        print(f"ifmdm-infer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ifmdm-infer: interrupted; no output written", file=sys.stderr)
        return 130
    print(json.dumps(st, indent=2) if args.json else _summary(st))
    return 0


if __name__ == "__main__":
    sys.exit(main())
