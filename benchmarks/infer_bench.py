"""End-to-end inference speed of `ifmdm_model.infer.generate` on random-init run folders.

For each model pair (S1-tiny/M2-tiny; S1-256/M2-A0; optionally S1-512/M2-A0) and each number of
DDIM steps: frames per second of wall time (models preloaded), first-frame latency, and the
per-stage breakdown (encode, features, motion, decode, write), plus the FLOPs per output frame
of the stage-1 decoder and of the motion DiT (CFG doubles its batch: 2 x steps forwards per
chunk of n_f frames), so GPU throughput can be estimated (e.g. an H100 at ~30% of 990 dense
bf16 TFLOP/s). Weights are random: speed does not depend on them.

    python benchmarks/infer_bench.py                          # tiny + S1-256/M2-A0, 10/25/100 steps
    python benchmarks/infer_bench.py --pairs tiny --seconds 4
    python benchmarks/infer_bench.py --device cuda --dtype bf16 --pairs 256,512 --seconds 20 [--compile]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PAIRS = {"tiny": ("S1-tiny", "M2-tiny"), "256": ("S1-256", "M2-A0"), "512": ("S1-512", "M2-A0")}


def _wav(path: Path, seconds: float):
    import wave
    t = np.arange(int(seconds * 16000)) / 16000
    a = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.round(a * 32767).astype("<i2").tobytes())
    return path


def _image(path: Path):
    import cv2
    from skimage import data
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def flops(models, dev) -> dict:
    """FLOPs of one decoded frame and of the DiT per output frame per sampling step (with CFG)."""
    from torch.utils.flop_counter import FlopCounterMode
    s1, s2 = models.stage1, models.stage2
    S, D, n_f = models.image_size, models.motion_dim, s2.cfg.n_frames
    with torch.inference_mode():
        img = torch.zeros(1, 3, S, S, device=dev)
        with FlopCounterMode(display=False) as fc:
            app, m = s1.encode(img)
        enc = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            s1.decode(app, m)
        dec = fc.get_total_flops()
        x = torch.zeros(2, n_f, D, device=dev)
        with FlopCounterMode(display=False) as fc:
            s2(x, torch.zeros(2, dtype=torch.long, device=dev), torch.zeros(2, n_f, s2.cfg.speech_dim, device=dev),
               torch.zeros(2, D, device=dev), torch.zeros(2, D, device=dev), torch.zeros(2, D, device=dev),
               drop_speech=False, drop_stats=False, drop_hint=False)
        dit = fc.get_total_flops() / n_f
    return {"encode": enc, "decode": dec, "dit_step": dit}


def main(argv=None):
    from ifmdm_model.infer import generate, load_models, save_random_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="tiny,256", help="comma list of tiny, 256, 512")
    ap.add_argument("--steps", default="10,25,100")
    ap.add_argument("--seconds", type=float, default=2.0, help="audio length (2 s = 50 frames at 25 fps)")
    ap.add_argument("--seconds-large", type=float, default=None, help="audio length for 256/512 (default: --seconds)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--batch-frames", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        img = _image(td / "face.png")
        for pair in args.pairs.split(","):
            s1n, s2n = PAIRS[pair]
            secs = args.seconds if pair == "tiny" or args.seconds_large is None else args.seconds_large
            wav = _wav(td / f"a{secs}.wav", secs)
            run = save_random_run(td / pair, s1n, s2n, n_frames=32)
            t0 = time.perf_counter()
            models = load_models(run, args.device)
            load_s = time.perf_counter() - t0
            fl = flops(models, models.device)
            # warm-up (allocator, cuDNN autotune, torch.compile)
            generate(run, img, wav, td / "warm.mp4", steps=2, models=models, overwrite=True, progress=False,
                     face_check=False, dtype=args.dtype, compile=args.compile, batch_frames=args.batch_frames)
            for steps in [int(s) for s in args.steps.split(",")]:
                st = generate(run, img, wav, td / "o.mp4", steps=steps, models=models, overwrite=True,
                              progress=False, face_check=False, dtype=args.dtype, compile=args.compile,
                              batch_frames=args.batch_frames)
                n = st["frames"]
                rows.append({"pair": f"{s1n}/{s2n}", "size": models.image_size, "steps": steps, "frames": n,
                             "fps": st["fps"], "ffl": st["first_frame_latency_s"], "load": load_s,
                             **{k: 1000 * v / n for k, v in st["stages_s"].items()},
                             "dec_gf": fl["decode"] / 1e9, "dit_gf": fl["dit_step"] * steps / 1e9,
                             "enc_gf": fl["encode"] / 1e9})
                r = rows[-1]
                print(f"{r['pair']:>16} {steps:>4} steps: {r['fps']:.2f} fps, first frame {r['ffl']:.2f} s",
                      flush=True)
    dev = models.device
    print(f"\ndevice {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'}),"
          f" dtype {args.dtype}, compile {args.compile}, batch {args.batch_frames} frames, n_f 32, cfg 2.5 (batched)")
    hdr = (f"| {'models':<16} | px  | steps | frames | fps   | 1st frame s | ms/frame: motion | decode | write |"
           f" encode+features s | GFLOP/frame: decoder | DiT (all steps, CFG) | E_v once |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['pair']:<16} | {r['size']:<3} | {r['steps']:>5} | {r['frames']:>6} | {r['fps']:5.2f} |"
              f" {r['ffl']:11.2f} | {r['motion']:16.1f} | {r['decode']:6.1f} | {r['write']:5.1f} |"
              f" {(r['encode'] + r['features']) * r['frames'] / 1000:17.2f} | {r['dec_gf']:20.2f} |"
              f" {r['dit_gf']:20.3f} | {r['enc_gf']:8.2f} |")


if __name__ == "__main__":
    main()
