"""`ifmdm-train` command line: parse, check the shards, run stage 1 and/or stage 2, one-line errors (exit 2).

The work is in `ifmdm_model.stage1.train.train_stage1` and `ifmdm_model.stage2.train.train_stage2`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ifmdm_data.cli import HelpFormatter
from ifmdm_data.errors import IfmdmError

TRAIN_EPILOG = """\
examples:
  ifmdm-train --curriculum manifests/ -o runs/x                 # stage 1, then stage 2
  ifmdm-train --curriculum manifests/ -o runs/x --stage 2       # stage 2 only (needs stage 1)
  ifmdm-train --curriculum manifests/ -o runs/x --vgg-weights ~/weights/vgg19-dcbb9e9d.pth
  torchrun --nproc_per_node 8 -m ifmdm_model.cli.train --curriculum manifests/ -o runs/x   # 8 GPUs
  ifmdm-train --curriculum manifests/ -o runs/x                 # again: resumes from the latest checkpoint
"""


def train_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ifmdm-train", epilog=TRAIN_EPILOG, formatter_class=HelpFormatter,
        description="Train IF-MDM. Stage 1 (the motion autoencoder with the local flow module) "
                    "goes level by level through manifests/curriculum.yaml (coarse -> lip -> hard) "
                    "on the shards of `ifmdm-data shard`. Stage 2 extracts the motion latents of "
                    "every stage-2 clip with the stage-1 EMA encoder, then trains the motion "
                    "diffusion transformer on windows of them with the aligned speech. Checkpoints "
                    "(safetensors + EMA + optimizer + position) and TensorBoard logs go to "
                    "OUT/stage1/ and OUT/stage2/. Re-running the same command resumes where it stopped.")
    ap.add_argument("--curriculum", required=True, help="manifests folder holding curriculum.yaml (or the file); "
                                                        "a folder or file on object storage works too (s3://bucket/manifests/)")
    ap.add_argument("-o", "--out", required=True, help="run folder (a local path: checkpoints and logs are written on disk)")
    ap.add_argument("--stage", choices=["1", "2", "all"], default="all",
                    help="1, 2 or all (default: stage 1, then stage 2)")
    ap.add_argument("--shards", help="shard folder or object-storage prefix (s3://bucket/shards; default: `shards` in "
                                     "curriculum.yaml, ../shards); stage 2 writes the motion sidecars beside it")
    ap.add_argument("--vgg-weights", help="torchvision VGG19 state dict file (vgg19-dcbb9e9d.pth) for the "
                                          "perceptual loss; without it the perceptual loss is off")
    ap.add_argument("--restart", action="store_true", help="ignore existing checkpoints in OUT")
    ap.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    ap.add_argument("--batch-size", type=int, help="override the curriculum's per-GPU batch size")
    ap.add_argument("--workers", type=int, help="loader workers per process")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def train_main(argv=None) -> int:
    args = train_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("ifmdm_model").setLevel(logging.INFO)
    try:
        from ifmdm_model.cli.run_folder import reject_malformed_url, reject_url_run_folder

        reject_url_run_folder("-o", args.out, writes="checkpoints and TensorBoard logs are")
        reject_malformed_url("--curriculum", args.curriculum)
        reject_malformed_url("--shards", args.shards)
        from ifmdm_data.io import storage
        from ifmdm_data.shard.image_set import is_image_set_folder

        from ifmdm_model.curriculum import load_curriculum
        from ifmdm_model.stage1.train import train_stage1
        from ifmdm_model.stage2.train import train_stage2
        from ifmdm_model.training import TrainOptions

        if args.shards and args.shards.endswith(".parquet"):     # splits/train.parquet, say
            raise IfmdmError(f"--shards {args.shards} is a manifest, not a shard folder: run `ifmdm-data shard "
                             f"{args.shards} -o shards/{Path(args.shards).stem}`, then pass --shards "
                             f"shards/{Path(args.shards).stem}")
        cur = load_curriculum(args.curriculum)
        if args.shards:   # a folder, or object storage (s3://bucket/shards)
            cur.shards = args.shards.rstrip("/") if storage.is_url(args.shards) else Path(args.shards).resolve()
        if not storage.isfile(storage.join(str(cur.shards), "index.parquet")):
            raise IfmdmError(f"no shards at {cur.shards} (index.parquet missing): run "
                             f"`ifmdm-data shard {storage.parent(cur.path)} -o {cur.shards}` or pass --shards")
        for name, v in (("--max-steps", args.max_steps), ("--batch-size", args.batch_size)):
            if v is not None and v < 1:
                raise IfmdmError(f"{name} must be >= 1")
        opts = TrainOptions(run_dir=Path(args.out), vgg_weights=args.vgg_weights,
                            resume=not args.restart, max_steps=args.max_steps, device=args.device,
                            num_workers=args.workers, batch_size=args.batch_size)
        out = {}
        stage = args.stage
        if stage in ("2", "all") and is_image_set_folder(cur.shards):
            if stage == "2":
                raise IfmdmError(f"{cur.shards} is an image set (`ifmdm-data shard --images`): no audio, so no "
                                 "stage 2; train stage 2 on video shards with speech (--shards)")
            logging.getLogger("ifmdm_model").warning("%s is an image set (no audio): training stage 1 only (stage 2 needs video shards "
                        "with speech: ifmdm-train --stage 2 --shards ...)", cur.shards)
            stage = "1"
        if stage in ("1", "all"):
            res = train_stage1(cur, opts)
            out["stage1"] = {"steps": res["steps"], "run": res["run_dir"],
                             "last": res["history"][-1] if res["history"] else None}
        if stage in ("2", "all"):
            res = train_stage2(cur, opts)
            out["stage2"] = {"steps": res["steps"], "run": res["run_dir"], "encoder": res["encoder"],
                             "last": res["history"][-1] if res["history"] else None}
        print(json.dumps(out, indent=2))
    except IfmdmError as e:
        print(f"ifmdm-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ifmdm-train: interrupted; the latest checkpoint is kept, re-run to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
