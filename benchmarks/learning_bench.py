"""Learning benchmark: does each paper component do its job, at a scale a CPU can run?

    python benchmarks/learning_bench.py --quick        # <= ~25 min on 2 cores, fixed seeds
    python benchmarks/learning_bench.py                # the full run (an hour or more of CPU)
    python benchmarks/learning_bench.py --quick --skip-real   # synthetic data only (no ../shared/media)

Prints one table per section and, last, `learning checks: K of N met`. Sections:
1. stage 1 on a synthetic local-motion set (`ifmdm_model.learning.synthetic_local_motion`: a
   global head shift plus an independently moving mouth patch; held-out frames are unseen
   motion): held-out PSNR vs the baselines (copy the appearance frame; the motion-blind
   per-clip median), PSNR inside the moving patch for the default, `groups: 1` and
   `mask_norm: paper`, and mask compactness (mass of a group's mask in its best quadrant).
   1b. personalisation (`ifmdm-tune`'s loop): LoRA adapters on that model's decoder, tuned on
   ../shared/media/image/cat_face.png with augmented motion, lower its error on other random
   motions of the cat vs the base.
2. stage 1 on the real clips of ../shared/media, filtered and sharded by the project itself
   (`ifmdm-data filter` + `ifmdm-data shard`, cached under --work): first 75% of each clip's
   frames train, the last 25% are held out.
3. motion_dim 20 vs 100: cross-identity reconstruction (the eval's cycle protocol) on the real
   held-out frames (paper Table 4: a larger D is not better across identities).
4. stage 2 on motion latents extracted by the real-clip stage-1 model, with the shards' speech
   features: the paper's Table 2 variants (`benchmarks/learning_stage2.py`).
Every check compares numbers measured in this run; nothing is hard-coded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from ifmdm_model.learning import (TrainSettings, baselines, cross_identity_psnr, model_config,  # noqa: E402
                                  shard_clips, synthetic_local_motion, train_small)

MEDIA = ROOT.parent / "shared" / "media"

# steps per stage-1 run (each run: S1-tiny at 64 px, batch 8)
BUDGET = {"quick": {"synthetic": 200, "real": 300, "dims": 300, "tune": 150},
          "full": {"synthetic": 6000, "real": 10000, "dims": 6000, "tune": 1000}}


def table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n{title}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else
                         f"{v:.2f}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


def prepare_real(work: Path, media: Path, size: int) -> Path:
    """Filter + shard ../shared/media with the project's own commands (cached in `work`)."""
    shards = work / f"shards{size}"
    if (shards / "index.parquet").is_file():
        return shards
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    exe = Path(sys.executable).parent
    man = work / "manifests"
    for cmd in ([str(exe / "ifmdm-data"), "filter", str(media / "video"), "-o", str(man)],
                [str(exe / "ifmdm-data"), "shard", str(man), "-o", str(shards), "--size", str(size)]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return shards


def run(name, clips, steps, seed, device="cpu", **overrides):
    cfg = model_config("S1-tiny", **overrides)
    model, res = train_small(cfg, clips, TrainSettings(steps=steps, seed=seed, device=device), name)
    print(f"  {name}: {res.steps} steps, {res.seconds:.0f} s, held-out PSNR {res.psnr:.2f} dB", flush=True)
    return model, res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the short budget (<= ~25 min on 2 cores)")
    ap.add_argument("--media", type=Path, default=MEDIA, help="the real media folder (video/ inside)")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "learning_bench",
                    help="cache for the real clips' manifests and shards")
    ap.add_argument("--skip-real", action="store_true", help="synthetic sections only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="stage-1 training device (cpu, cuda); stage 2 stays on the CPU")
    ap.add_argument("--json", type=Path, help="also write every number here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = BUDGET["quick" if args.quick else "full"]
    checks: list[tuple[str, bool, str]] = []
    report: dict = {"mode": "quick" if args.quick else "full", "budget": budget}
    t0 = time.perf_counter()

    # 1. synthetic local motion ------------------------------------------------------------
    syn = synthetic_local_motion(n_clips=6, seed=args.seed)
    base = baselines(syn)
    dflt = model_config("S1-tiny")
    print(f"default = S1-tiny (64 px, G={dflt.groups}, D={dflt.motion_dim}, mask_norm {dflt.mask_norm}, "
          f"motion_decoder {dflt.motion_decoder}, coarse_to_fine {dflt.coarse_to_fine}); "
          f"budget {budget} steps of batch 8")
    print(f"1. synthetic local motion: {len(syn)} subjects, 48 train / 16 held-out frames each, 64 px")
    variants = [("default", {}), ("groups: 1", {"groups": 1}), ("mask_norm: paper", {"mask_norm": "paper"}),
                ("motion_decoder: mapping", {"motion_decoder": "mapping"})]
    if not args.quick:
        variants += [("mask_norm: separable", {"mask_norm": "separable"}),
                     ("coarse_to_fine: true", {"coarse_to_fine": True})]
    rows = [{"model": "baseline: copy appearance", "PSNR": base["copy"], "patch PSNR": base["copy_patch"]},
            {"model": "baseline: median (motion-blind)", "PSNR": base["median"], "patch PSNR": base["median_patch"]}]
    res = {}
    syn_models = {}
    for name, ov in variants:
        syn_models[name], r = run(name, syn, budget["synthetic"], args.seed, args.device, **ov)
        res[name] = r
        rows.append({"model": name, "PSNR": r.psnr, "patch PSNR": r.psnr_patch,
                     "mask compactness": r.compactness, "local flow loss": r.local_flow_loss,
                     "s": r.seconds})
    table("| stage 1, synthetic (held-out) |", rows,
          ["model", "PSNR", "patch PSNR", "mask compactness", "local flow loss", "s"])
    report["synthetic"] = rows
    d = res["default"]
    margin = 0.0 if args.quick else 1.0
    best_base = max(base["copy"], base["median"])
    checks.append(("synthetic: default beats both baselines" + (" by >= 1 dB" if margin else ""),
                   d.psnr >= best_base + margin, f"{d.psnr:.2f} vs {best_base:.2f} dB"))
    checks.append(("synthetic: patch PSNR default > groups: 1", d.psnr_patch > res["groups: 1"].psnr_patch,
                   f"{d.psnr_patch:.2f} vs {res['groups: 1'].psnr_patch:.2f} dB"))
    checks.append(("synthetic: patch PSNR default > mask_norm: paper",
                   d.psnr_patch > res["mask_norm: paper"].psnr_patch,
                   f"{d.psnr_patch:.2f} vs {res['mask_norm: paper'].psnr_patch:.2f} dB"))
    checks.append(("mask compactness default > mask_norm: paper",
                   d.compactness > res["mask_norm: paper"].compactness,
                   f"{d.compactness:.3f} vs {res['mask_norm: paper'].compactness:.3f}"))
    checks.append(("local flow loss does not collapse masks to points (default > 0.01)",
                   d.local_flow_loss > 0.01, f"{d.local_flow_loss:.3f}"))

    # 1b. personalisation: LoRA on a subject the model never saw (ifmdm-tune's loop) -----------
    cat_path = args.media / "image" / "cat_face.png"
    if cat_path.is_file():
        import copy

        from ifmdm_model.lora import LoraConfig
        from ifmdm_model.media_io import load_image, square_resize
        from ifmdm_model.tune import Source, SubjectData, fit_adapter
        cat = square_resize(load_image(cat_path), 64)[None]
        subject = SubjectData(train=[Source(cat_path.name, cat, False)], heldout=[Source(cat_path.name, cat, False)],
                              heldout_kind="unseen motion")
        fit = fit_adapter(copy.deepcopy(syn_models["default"]), subject, LoraConfig(8, 8.0, "decoder"),
                          steps=budget["tune"], seed=args.seed, log_every=0)
        b, t = fit["base"], fit["tuned"]
        print(f"\n1b. personalisation: the synthetic-set default model, LoRA rank 8 on the decoder "
              f"({fit['adapter_parameters']:,} parameters), {budget['tune']} steps on {cat_path.name} with "
              "augmented motion (image_motion_pair); evaluated on other random motions of it")
        table("| personalisation (cat, unseen motions) |",
              [{"model": "base (adapter off)", "L1": b["l1"], "PSNR": b["psnr"]},
               {"model": "tuned", "L1": t["l1"], "PSNR": t["psnr"], "s": fit["seconds"]}], ["model", "L1", "PSNR", "s"])
        report["personalisation"] = {"base": b, "tuned": t}
        checks.append(("personalisation: tuned L1 < 0.9 x base on the unseen subject", t["l1"] < 0.9 * b["l1"],
                       f"{t['l1']:.4f} vs {b['l1']:.4f}"))

    # 2-4. real clips ------------------------------------------------------------------------
    if not args.skip_real:
        if not (args.media / "video").is_dir():
            raise SystemExit(f"{args.media}/video not found: give --media or --skip-real")
        shards = prepare_real(args.work, args.media, 64)
        real = shard_clips(shards, 64, train_fraction=0.75, max_frames=200)
        base = baselines(real)
        print(f"\n2. real clips: {len(real)} accepted segments of {args.media / 'video'}, "
              f"{sum(len(c.train) for c in real)} train / {sum(len(c.heldout) for c in real)} held-out frames")
        rows = [{"model": "baseline: copy appearance", "PSNR": base["copy"]},
                {"model": "baseline: median (motion-blind)", "PSNR": base["median"]}]
        variants = [("default", {})] + ([] if args.quick else [("motion_decoder: mapping", {"motion_decoder": "mapping"}),
                                                             ("mask_norm: paper", {"mask_norm": "paper"})])
        real_res, real_models = {}, {}
        for name, ov in variants:
            m, r = run(name, real, budget["real"], args.seed, args.device, **ov)
            real_res[name], real_models[name] = r, m
            rows.append({"model": name, "PSNR": r.psnr, "mask compactness": r.compactness,
                         "local flow loss": r.local_flow_loss, "s": r.seconds})
        table("| stage 1, real clips (held-out last 25%) |", rows,
              ["model", "PSNR", "mask compactness", "local flow loss", "s"])
        report["real"] = rows
        d = real_res["default"]
        checks.append(("real: default beats copy" + (" by >= 1 dB" if margin else ""),
                       d.psnr >= base["copy"] + margin, f"{d.psnr:.2f} vs {base['copy']:.2f} dB"))
        checks.append(("real: default beats the median" + (" by >= 1 dB" if margin else ""),
                       d.psnr >= base["median"] + margin, f"{d.psnr:.2f} vs {base['median']:.2f} dB"))

        # 3. motion_dim 20 vs 100 -------------------------------------------------------------
        # both with style_dim 128: the directions decoder needs D <= style_dim (S1-tiny has 64)
        rows, cross = [], {}
        for dim in (20, 100):
            model, r = run(f"motion_dim {dim}", real, budget["dims"], args.seed, args.device, motion_dim=dim,
                           style_dim=128)
            cross[dim] = cross_identity_psnr(model, real)
            rows.append({"motion_dim": dim, "same-identity PSNR": r.psnr, "cross-identity PSNR": cross[dim]})
        table("| motion_dim (real clips, held-out) |", rows,
              ["motion_dim", "same-identity PSNR", "cross-identity PSNR"])
        report["motion_dim"] = rows
        checks.append(("cross-identity PSNR: motion_dim 100 not better than 20 (paper Table 4)",
                       cross[100] <= cross[20], f"{cross[100]:.2f} vs {cross[20]:.2f} dB"))

        # 4. stage 2 --------------------------------------------------------------------------
        from learning_stage2 import stage2_checks, windows_from_clips
        train_w, held_w = windows_from_clips(real_models["default"], shards, 64)
        rows2, checks2 = stage2_checks(train_w, held_w, quick=args.quick, seed=args.seed)
        cols = list(rows2[0]) if rows2 else []
        table("| stage 2 on the real-clip latents (held-out windows) |", rows2, cols)
        report["stage2"] = rows2
        checks += list(checks2)

    print("\n| check | met | measured |")
    print("|---|---|---|")
    for name, ok, detail in checks:
        print(f"| {name} | {'yes' if ok else 'NO'} | {detail} |")
    met = sum(ok for _, ok, _ in checks)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    print(f"learning checks: {met} of {len(checks)} met")
    if args.json:
        report["checks"] = [{"check": n, "met": bool(o), "measured": d} for n, o, d in checks]
        args.json.write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
