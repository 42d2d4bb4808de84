"""Speed and FLOPs of the stage-2 motion DiT sampler (run by hand, not a test).

    .venv/bin/python benchmarks/stage2_bench.py [--iters N] [--warmup N] [--threads T]
                                                [--frames 32] [--no-cpu]

Prints three tables:
- parameters per registry config;
- FLOPs of one sampling step for one 32-frame chunk (torch.utils.flop_counter.FlopCounterMode
  on the meta device, so nothing is computed): the conditional forward alone, and with
  classifier-free guidance (two passes: batched or not, the FLOPs are the same), for framewise
  and global modulation. FlopCounterMode counts matmuls and attention only, not norms or
  elementwise ops;
- time of one chunk (batch 1, `--frames` frames, DDIM with 25 and 100 steps) and per step, for
  M2-tiny and M2-A0 on CPU (float32) and on CUDA when available (bf16 autocast): conditional only
  (w = 1), CFG with two separate forwards, CFG with one batched forward (w = 2.5). The last
  column is the frames per second the sampler alone sustains at 25 fps video (chunk frames /
  chunk time); the decoder's cost comes on top.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ifmdm_model.stage2.diffusion import DDPMSchedule, cfg_model_fn, ddim_sample  # noqa: E402
from ifmdm_model.stage2.model import STAGE2_CONFIGS, build_stage2  # noqa: E402

MODES = {"cond only (w=1)": (1.0, True), "CFG, 2 forwards": (2.5, False), "CFG, batched": (2.5, True)}


def conditions(cfg, n, frames, device):
    g = torch.Generator().manual_seed(0)
    cond = {"speech": torch.randn(n, frames, cfg.speech_dim, generator=g),
            "m_mu": torch.randn(n, cfg.motion_dim, generator=g) * 0.3,
            "m_sigma": torch.full((n, cfg.motion_dim), 0.1), "hint": torch.randn(n, cfg.motion_dim, generator=g) * 0.3}
    return {k: v.to(device) for k, v in cond.items()}


def param_table():
    print("| config | depth | hidden | heads | params |")
    print("|---|---|---|---|---|")
    for name, cfg in STAGE2_CONFIGS.items():
        with torch.device("meta"):
            model = build_stage2(name)
        n = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {cfg.depth} | {cfg.hidden} | {cfg.heads} | {n / 1e6:.2f}M |")


def flop_table(frames):
    print(f"| config | modulation | 1 forward ({frames} frames) | CFG step (2 passes) |")
    print("|---|---|---|---|")
    for name in STAGE2_CONFIGS:
        for modulation in ("framewise", "global"):
            with torch.device("meta"):
                model = build_stage2(name, modulation=modulation).eval()
                x = torch.empty(1, frames, model.cfg.motion_dim)
                t = torch.zeros(1, dtype=torch.long)
                cond = {"speech": torch.empty(1, frames, model.cfg.speech_dim),
                        "m_mu": torch.empty(1, model.cfg.motion_dim),
                        "m_sigma": torch.empty(1, model.cfg.motion_dim), "hint": torch.empty(1, model.cfg.motion_dim)}
            flops = []
            for w in (1.0, 2.5):
                fn = cfg_model_fn(model, cond, w=w)
                with torch.no_grad(), FlopCounterMode(display=False) as counter:
                    fn(x, t)
                flops.append(counter.get_total_flops())
            print(f"| {name} | {modulation} | {flops[0] / 1e6:.1f} MFLOP | {flops[1] / 1e6:.1f} MFLOP |")


def time_it(fn, device, warmup, iters) -> float:
    """Median seconds per call (robust to a shared machine's hiccups)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench(name, device, amp, frames, warmup, iters):
    torch.manual_seed(0)
    model = build_stage2(name).to(device).eval()
    cond = conditions(model.cfg, 1, frames, device)
    schedule = DDPMSchedule()
    shape = (1, frames, model.cfg.motion_dim)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    tag = f"{device.type} {'bf16' if amp else 'fp32'}"
    for mode, (w, batched) in MODES.items():
        fn = cfg_model_fn(model, cond, w=w, batched=batched)
        for steps in (25, 100):
            def chunk():
                with ctx():
                    ddim_sample(fn, shape, steps, schedule, device=device,
                                generator=torch.Generator().manual_seed(0))
            sec = time_it(chunk, device, warmup, iters)
            print(f"| {tag} | {name} | {mode} | {steps} | {sec / steps * 1e3:.2f} | {sec * 1e3:.0f} "
                  f"| {frames / sec:.0f} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default; 1 on a shared machine)")
    ap.add_argument("--frames", type=int, default=32, help="frames per chunk (n_f)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU timings")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"CUDA {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}\n")
    param_table()
    print()
    flop_table(args.frames)
    print()
    print("| device | config | mode | steps | ms / step | ms / chunk | frames / s |")
    print("|---|---|---|---|---|---|---|")
    if not args.no_cpu:
        for name in STAGE2_CONFIGS:
            bench(name, torch.device("cpu"), False, args.frames, args.warmup, args.iters)
    if torch.cuda.is_available():
        for name in STAGE2_CONFIGS:
            bench(name, torch.device("cuda"), True, args.frames, max(args.warmup, 2), max(args.iters, 5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
