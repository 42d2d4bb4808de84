"""Start (or join) the Ray runtime that `filter` and `shard` run on."""
from __future__ import annotations

import os


def init_ray(address: str | None, workers: int | None, verbose: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=verbose)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # "local": a new Ray for this run, even when a `ray start` cluster on this machine left
        # its address in /tmp/ray/ray_current_cluster (ray.init() would join that one)
        ray.init(address="local", num_cpus=workers or os.cpu_count(), include_dashboard=False,
                 log_to_driver=verbose)
