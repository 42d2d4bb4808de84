"""End-to-end inference speed of `ifmdm_model.infer.generate` on random-init run folders.

For each model pair (S1-tiny/M2-tiny; S1-256/M2-A0; optionally S1-512/M2-A0) and each number of
DDIM steps: frames per second of wall time (models preloaded), first-frame latency, and the
per-stage breakdown (encode, features, motion, decode, write: the time the generator waited
on the background encoder thread, plus the final flush), plus the FLOPs per output frame
of the stage-1 decoder and of the motion DiT (CFG doubles its batch: 2 x steps forwards per
chunk of n_f frames), so GPU throughput can be estimated (e.g. an H100 at ~30% of 990 dense
bf16 TFLOP/s). Weights are random: speed does not depend on them.

    python benchmarks/infer_bench.py                          # tiny + S1-256/M2-A0, 10/25/100 steps
    python benchmarks/infer_bench.py --pairs tiny --seconds 4
    python benchmarks/infer_bench.py --device cuda --dtype bf16 --pairs 256,512 --seconds 20 [--compile]

Long audio (`--long-audio 30,300`): streaming generation with the tiny models on speech-like
audio of each length (the shared speech recording looped, else espeak-ng, else a syllabic
tone), each length in a fresh process: first-frame latency, the time spent on speech features,
and peak RSS (ru_maxrss) after a warm-up vs at the end, so that what grows with the audio
length shows. For contrast, the time and size of the whole clip's features (what the first
frame waited for, and what was held, before features were streamed). `--long-features`:
logmel (the tiny run) and/or wav2vec2-base (a random-init wav2vec2-base saved to a temp dir,
its real CPU cost; 60 s chunks).

    python benchmarks/infer_bench.py --long-audio 30,300 --fps 5 --steps 2
    python benchmarks/infer_bench.py --long-audio 120,240 --long-features wav2vec2-base --fps 5 --steps 2
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import subprocess
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


def _speechlike(path: Path, seconds: float) -> Path:
    """Speech-like audio of `seconds`: the shared 16 kHz speech recording looped, else a
    sentence synthesised by espeak-ng looped, else the syllabic tone of `_wav`."""
    import wave

    from ifmdm_data.media.audio import load_audio
    src = Path(__file__).resolve().parents[2] / "shared" / "media" / "audio" / "speech_en_16k_mono.wav"
    base = None
    if src.is_file():
        base = load_audio(src)
    elif shutil.which("espeak-ng"):
        tts = path.with_suffix(".tts.wav")
        subprocess.run(["espeak-ng", "-w", str(tts), "The quick brown fox jumps over the lazy dog; "
                        "she sells sea shells by the sea shore, and talks for a long while."], check=True)
        base = load_audio(tts)
    if base is None or base.size == 0:
        return _wav(path, seconds)
    n = int(seconds * 16000)
    a = np.tile(base, -(-n // base.size))[:n]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.round(np.clip(a, -1, 1) * 32767).astype("<i2").tobytes())
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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def _long_one(run, img, wav, fps, steps, batch_frames, device, w2v, threads, warm_wav) -> dict:
    """One long-audio measurement, in a fresh process (so that ru_maxrss is this run's)."""
    import torch

    from ifmdm_data.features import align_to_frames
    from ifmdm_data.features.speech import build_features
    from ifmdm_model.infer import generate, load_models, read_audio
    if threads:
        torch.set_num_threads(threads)
    models = load_models(run, device)
    fx = build_features(w2v, device=str(models.device)) if w2v else build_features(None)
    kw = dict(steps=steps, fps=fps, models=models, features=fx, overwrite=True, progress=False,
              face_check=False, batch_frames=batch_frames)
    generate(run, img, warm_wav, Path(wav).with_suffix(".warm.mp4"), **kw)         # warm-up
    rss0 = _rss_mb()
    st = generate(run, img, wav, Path(wav).with_suffix(".mp4"), **kw)
    rss1 = _rss_mb()
    audio = read_audio(wav)
    t0 = time.perf_counter()                       # before streaming, the first frame waited for this
    native = fx(audio)
    speech = align_to_frames(native, fx.rate_hz, st["frames"], fps, offset_s=fx.offset_s)
    whole_s = time.perf_counter() - t0
    return {"frames": st["frames"], "seconds": st["seconds"], "ffl": st["first_frame_latency_s"],
            "features_s": st["stages_s"]["features"], "wall": st["wall_s"], "fps": st["fps"],
            "whole_s": whole_s, "whole_mb": (native.nbytes + speech.nbytes) / 2 ** 20,
            "audio_mb": audio.nbytes / 2 ** 20, "rss0": rss0, "rss1": rss1}


def long_audio(args):
    """--long-audio: first-frame latency and peak memory vs audio length (see the docstring)."""
    from ifmdm_model.testing import save_random_run

    lengths = [float(x) for x in args.long_audio.split(",")]
    steps = int(args.steps.split(",")[0])
    rows = []
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        img = _image(td / "face.png")
        # warm-up: every shape the measured runs see (full and padded motion chunks, full decode
        # batches; for wav2vec2 a full 60 s feature chunk), so that "growth" is what length adds
        warm_s = (2 * 32 + args.batch_frames + 1) / args.fps
        for kind in args.long_features.split(","):
            w2v = None
            if kind == "wav2vec2-base":
                import torch
                from transformers import Wav2Vec2Config, Wav2Vec2Model
                torch.manual_seed(0)
                w2v = td / "w2v-base"
                Wav2Vec2Model(Wav2Vec2Config()).eval().save_pretrained(w2v)   # random-init, base shape
                run = save_random_run(td / "run-w2v", n_frames=32, speech_dim=768)
            elif kind == "logmel":
                run = save_random_run(td / "run", n_frames=32)
            else:
                raise SystemExit(f"--long-features: unknown {kind!r} (logmel, wav2vec2-base)")
            warm = _speechlike(td / f"warm-{kind}.wav", max(warm_s, 61.0 if w2v else 0.0))
            for secs in lengths:
                wav = _speechlike(td / f"{kind}-{secs:g}.wav", secs)
                with ctx.Pool(1) as pool:
                    r = pool.apply(_long_one, (run, img, wav, args.fps, steps, args.batch_frames,
                                               args.device, str(w2v) if w2v else None, args.threads, warm))
                rows.append({"kind": kind, **r})
                print(f"{kind:>14} {secs:>6g} s: first frame {r['ffl']:.2f} s, peak RSS {r['rss1']:.0f} MB "
                      f"(after warm-up {r['rss0']:.0f} MB)", flush=True)
    print(f"\ndevice {args.device}, {args.threads or 'default'} threads, S1-tiny/M2-tiny (n_f 32), "
          f"{steps} DDIM steps, {args.fps:g} fps, batch {args.batch_frames} frames")
    hdr = ("| features | audio s | frames | 1st frame s | features s (streamed, total) | wall s | fps |"
           " whole-clip features: s | MB | decoded audio MB | RSS after warm-up MB | peak RSS MB | growth MB |")
    print(hdr)
    print("|" + "|".join("-" * len(c) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['kind']} | {r['seconds']:.0f} | {r['frames']} | {r['ffl']:.2f} | {r['features_s']:.2f} |"
              f" {r['wall']:.1f} | {r['fps']:.1f} | {r['whole_s']:.2f} | {r['whole_mb']:.1f} |"
              f" {r['audio_mb']:.1f} | {r['rss0']:.0f} | {r['rss1']:.0f} | {r['rss1'] - r['rss0']:.0f} |")


def main(argv=None):
    from ifmdm_model.infer import generate, load_models
    from ifmdm_model.testing import save_random_run

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
    ap.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    ap.add_argument("--long-audio", metavar="SECONDS", default=None,
                    help="comma list of audio lengths: first-frame latency and peak RSS vs length "
                         "(streaming; tiny models, the first --steps value)")
    ap.add_argument("--long-features", default="logmel", help="with --long-audio: logmel and/or wav2vec2-base")
    args = ap.parse_args(argv)
    if args.long_audio:
        return long_audio(args)
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
            generate(run, img, wav, td / "warm.mp4", steps=2, fps=args.fps, models=models, overwrite=True, progress=False,
                     face_check=False, dtype=args.dtype, compile=args.compile, batch_frames=args.batch_frames)
            for steps in [int(s) for s in args.steps.split(",")]:
                st = generate(run, img, wav, td / "o.mp4", steps=steps, fps=args.fps, models=models, overwrite=True,
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
