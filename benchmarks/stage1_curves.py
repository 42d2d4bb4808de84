"""Stage-1 learning curves: held-out PSNR by training step for a few variants, each in its own
process (in parallel), on the CPU or a GPU. The long-budget companion of
`benchmarks/learning_bench.py`: the same data, loop (`ifmdm_model.stage1.learning.train_small`) and
metrics, but many more steps, so that one can see where a curve crosses the baselines.

    python benchmarks/stage1_curves.py --device cuda --steps 6000 --every 1000
    python benchmarks/stage1_curves.py --variants real:default,real:mapping --steps 800 --every 200 --jobs 2
    python benchmarks/stage1_curves.py --real-shards out/learning_bench/shards64 --device cuda

Variants are `DATA:NAME` with DATA in {synthetic, real} and NAME one of VARIANTS below (the
default is real and synthetic, each with the default model and `motion_decoder: mapping`).
`real` needs the project's own shards of ../shared/media (`learning_bench.py` makes and caches
them under out/learning_bench/shards64). Prints one table of held-out PSNR (dB) by step with
both baselines (copy the appearance frame; the per-clip median of the training frames).
On CUDA the runs are not bit-reproducible (cuDNN kernels); on one CPU thread they are.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "default": {},
    "mapping": {"motion_decoder": "mapping"},
    "groups1": {"groups": 1},
    "paper": {"mask_norm": "paper"},
    "separable": {"mask_norm": "separable"},
    "coarse_to_fine": {"coarse_to_fine": True},
}


def _data(kind: str, shards: Path):
    from ifmdm_model.stage1.learning import shard_clips, synthetic_local_motion
    if kind == "synthetic":
        return synthetic_local_motion(n_clips=6, seed=0)
    if not (shards / "index.parquet").is_file():
        raise SystemExit(f"{shards}/index.parquet not found: run benchmarks/learning_bench.py once "
                         "(it shards ../shared/media) or give --real-shards")
    return shard_clips(shards, 64, train_fraction=0.75, max_frames=200)


def _progress(variant: str, row: dict) -> None:
    print(f"[{variant}] step {row['step']}: held-out PSNR {row['psnr']:.2f} dB (raw {row.get('psnr_raw') or row['psnr']:.2f}), train L1 {row['train_l1']:.4f}, "
          f"{row['seconds']:.0f} s", file=sys.stderr, flush=True)


def _one(job: dict) -> dict:
    import torch

    from ifmdm_model.stage1.learning import TrainSettings, baselines, model_config, train_small
    torch.set_num_threads(job["threads"])
    clips = _data(job["data"], Path(job["shards"]))
    cfg = model_config("S1-tiny", **VARIANTS[job["name"]])
    settings = TrainSettings(steps=job["steps"], seed=job["seed"], device=job["device"], eval_every=job["every"],
                             ema=job["ema"], log=partial(_progress, f"{job['data']}:{job['name']}"))
    _, res = train_small(cfg, clips, settings, job["name"])
    return {"variant": f"{job['data']}:{job['name']}", "base": baselines(clips), "seconds": res.seconds,
            "curve": {h["step"]: h["psnr"] for h in res.history}, "final": res.psnr,
            "patch": res.psnr_patch, "raw": res.psnr_raw}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="real:default,real:mapping,synthetic:default,synthetic:mapping",
                    help=f"comma list of DATA:NAME, DATA in synthetic|real, NAME in {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--every", type=int, default=1000, help="evaluate every this many steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=None, help="parallel processes (default: one per variant)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ema", type=float, default=0.999,
                    help="measure an EMA copy of the weights (the trainer's decay; 0: the raw weights)")
    ap.add_argument("--real-shards", type=Path, default=ROOT / "out" / "learning_bench" / "shards64")
    args = ap.parse_args(argv)
    jobs = []
    for v in args.variants.split(","):
        data, _, name = v.strip().partition(":")
        if data not in ("synthetic", "real") or name not in VARIANTS:
            ap.error(f"bad variant {v!r}: DATA:NAME with DATA synthetic|real and NAME in {', '.join(VARIANTS)}")
        jobs.append({"data": data, "name": name, "steps": args.steps, "every": args.every, "seed": args.seed,
                     "device": args.device, "threads": args.threads, "ema": args.ema, "shards": str(args.real_shards)})
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs or len(jobs)) as pool:
        results = pool.map(_one, jobs)
    steps = sorted({s for r in results for s in r["curve"]})
    print(f"held-out PSNR (dB) by step; S1-tiny 64 px, batch 8, Adam 2e-3, seed {args.seed}, device {args.device}, "
          + (f"EMA {args.ema} weights" if args.ema else "raw weights"))
    print("| variant | copy | median | " + " | ".join(str(s) for s in steps) + " | raw weights (final) | patch (final) | s |")
    print("|---|---|---|" + "---|" * len(steps) + "---|---|---|")
    for r in results:
        b = r["base"]
        cells = [f"{r['curve'][s]:.2f}" if s in r["curve"] else "" for s in steps]
        patch = f"{r['patch']:.2f} (median {b['median_patch']:.2f})" if r["patch"] is not None else ""
        print(f"| {r['variant']} | {b['copy']:.2f} | {b['median']:.2f} | " + " | ".join(cells)
              + f" | {r['raw'] if r['raw'] is None else format(r['raw'], '.2f')} | {patch} | {r['seconds']:.0f} |")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
