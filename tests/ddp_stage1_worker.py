"""Run under `torch.distributed.run` by tests/test_train_stage1.py: trains stage 1 for a few
steps, then writes this rank's weights (model, EMA, discriminator) to OUT/rank<R>.pt so the
test can compare the ranks.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_stage1_worker.py MANIFESTS OUT STEPS
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ifmdm_model.stage1 import train as ts
from ifmdm_model.curriculum import load_curriculum


def main() -> None:
    manifests, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    res = ts.train_stage1(load_curriculum(manifests),
                          ts.TrainOptions(run_dir=out / "run", max_steps=steps, device="cpu"))
    weights = {name: {k: v.detach().cpu().clone() for k, v in mod.state_dict().items()}
               for name, mod in res["modules"].items() if mod is not None}
    torch.save({"steps": res["steps"], "weights": weights}, out / f"rank{os.environ['RANK']}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
