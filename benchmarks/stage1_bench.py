"""Speed and FLOPs of the stage-1 motion autoencoder (run by hand, not a test).

    .venv/bin/python benchmarks/stage1_bench.py [--iters N] [--warmup N] [--threads T]
                                                [--compile] [--no-cpu]

Prints three tables:
- parameters per registry config (encoder, decoder, local flow modules, discriminator);
- FLOPs per image at 256 and 512 (torch.utils.flop_counter.FlopCounterMode on the meta
  device, so nothing is computed): encode one image, decode one image (the inference cost per
  frame), one training sample forward (appearance + motion image through E_v, one decode) and
  forward+backward. FlopCounterMode counts matmuls and convolutions only (not grid_sample, the
  softmaxes or elementwise ops), so real work is somewhat higher;
- time per batch and images/s: one training step's forward+backward (L1 + local flow loss;
  no optimizer step) and decode-only inference, for S1-tiny (batch 8) and S1-256 (batch 2) on
  CPU, and on CUDA when available (bf16 autocast; --compile adds torch.compile rows).
GPU throughput can be estimated from the FLOPs: images/s ~ sustained FLOP/s / FLOPs per image.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ifmdm_model.stage1.losses import local_flow_loss  # noqa: E402
from ifmdm_model.stage1.model import STAGE1_CONFIGS, build_discriminator, build_stage1  # noqa: E402


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_table():
    print("| config | image | G | D | params | encoder | decoder | local flow | discriminator |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, cfg in STAGE1_CONFIGS.items():
        with torch.device("meta"):
            model, disc = build_stage1(name), build_discriminator(name)
        flow = sum(n_params(b.local_flow) for b in model.decoder.blocks)
        print(f"| {name} | {cfg.image_size} | {cfg.groups} | {cfg.motion_dim} | {n_params(model) / 1e6:.2f}M "
              f"| {n_params(model.encoder) / 1e6:.2f}M | {n_params(model.decoder) / 1e6:.2f}M "
              f"| {flow / 1e6:.3f}M | {n_params(disc) / 1e6:.2f}M |")


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flop_table():
    print("| config | encode 1 img | decode 1 img | train sample fwd | train sample fwd+bwd |")
    print("|---|---|---|---|---|")
    for name in ("S1-256", "S1-512"):
        with torch.device("meta"):
            model = build_stage1(name)
            s = model.cfg.image_size
            a, m = torch.empty(1, 3, s, s), torch.empty(1, 3, s, s)
        appearance, motion = model.encode(a)
        enc = count_flops(lambda: model.encode(a))
        dec = count_flops(lambda: model.decode(appearance, motion))
        fwd = count_flops(lambda: model(a, m))

        def step():
            out = model(a, m)
            (F.l1_loss(out["recon"], m) + local_flow_loss(out["masks"])).backward()
        both = count_flops(step)
        print(f"| {name} | {enc / 1e9:.1f} GFLOP | {dec / 1e9:.1f} GFLOP | {fwd / 1e9:.1f} GFLOP "
              f"| {both / 1e9:.1f} GFLOP |")


def time_it(fn, device, warmup, iters) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def bench(name, batch, device, amp, compiled, warmup, iters):
    torch.manual_seed(0)
    model = build_stage1(name).to(device)
    s = model.cfg.image_size
    a = torch.rand(batch, 3, s, s, device=device) * 2 - 1
    m = torch.rand(batch, 3, s, s, device=device) * 2 - 1
    fwd = torch.compile(model) if compiled else model

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def train_step():
        with autocast():
            out = fwd(a, m)
            loss = F.l1_loss(out["recon"].float(), m) + 0.1 * local_flow_loss(out["masks"])
        loss.backward()
        model.zero_grad(set_to_none=True)

    with torch.no_grad(), autocast():
        appearance, motion = model.encode(a[:1])
        motion = motion.expand(batch, -1).contiguous()
    dec = torch.compile(model.decode) if compiled else model.decode

    def decode_step():
        with torch.no_grad(), autocast():
            dec(appearance, motion)

    rows = []
    for mode, fn in (("train fwd+bwd", train_step), ("decode (inference)", decode_step)):
        sec = time_it(fn, device, warmup, iters)
        rows.append((mode, sec))
    tag = f"{device.type}{' bf16' if amp else ' fp32'}{' compile' if compiled else ''}"
    for mode, sec in rows:
        print(f"| {tag} | {name} | {batch} | {mode} | {sec * 1e3:.0f} | {batch / sec:.1f} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on CUDA")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU timings")
    ap.add_argument("--cuda-batch", type=int, nargs=2, default=(16, 8), metavar=("B256", "B512"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"CUDA {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}\n")
    param_table()
    print()
    flop_table()
    print()
    print("| device | config | batch | mode | ms / batch | images / s |")
    print("|---|---|---|---|---|---|")
    if not args.no_cpu:
        cpu = torch.device("cpu")
        bench("S1-tiny", 8, cpu, False, False, args.warmup, args.iters)
        bench("S1-256", 2, cpu, False, False, args.warmup, args.iters)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        for compiled in ((False, True) if args.compile else (False,)):
            bench("S1-256", args.cuda_batch[0], cuda, True, compiled, max(args.warmup, 3), max(args.iters, 10))
            bench("S1-512", args.cuda_batch[1], cuda, True, compiled, max(args.warmup, 3), max(args.iters, 10))
        print(f"\npeak CUDA memory {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
