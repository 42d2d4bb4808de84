"""Before any work: can every Ray node read the inputs and reach the output?

On a cluster whose nodes share no file system, a local input path or output folder of the
driver may not exist on a worker node. `check_nodes` runs one tiny task on every alive node
(0 CPUs, pinned with a node-affinity strategy) and stops the run with one line naming the
first node and location that failed, instead of letting clips fail one by one.
"""
from __future__ import annotations

import uuid

from ifmdm_data.io import storage

TIMEOUT_S = 180.0


def _node_check(read: list[str], write: str | None, see: str | None, env: dict) -> str:
    """On one node: '' when every check passes, else what failed (one line)."""
    from ifmdm_data.io.paths import fs_path

    storage.apply_env(env)
    for loc in read:
        try:
            with storage.open_read(loc if storage.is_url(loc) else fs_path(loc)) as f:
                f.read(16)
        except FileNotFoundError:
            return (f"cannot read the input {loc}: no such file on this node (every node must see "
                    f"the inputs at the same path, or put them in object storage)")
        except Exception as e:  # noqa: BLE001
            return f"cannot read the input {loc} ({type(e).__name__}: {e})".splitlines()[0]
    if see is not None and not storage.exists(see):
        return (f"does not see the driver's file {see}: the folder is not shared with this node "
                f"(mount it on every node, or use object storage)")
    if write is not None:
        try:
            storage.check_writable(write)
        except storage.StorageError as e:
            return str(e)
    return ""


def check_nodes(read: list[str], write: str | None = None, shared: str | None = None) -> None:
    """Run `_node_check` on every alive Ray node with CPUs; raise StorageError (one line) for
    the first node that fails. `read`: locations each node must read (a few bytes each);
    `write`: a folder / URL each node must write to; `shared`: a local folder the workers
    write to directly, which must be the driver's folder (a marker file written here must be
    visible on every node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    marker = None
    if shared is not None:
        marker = storage.join(shared, "_work", f".node-check-{uuid.uuid4().hex[:12]}")
        storage.write_bytes_atomic(b"ok", marker)
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(_node_check)
        env = storage.forward_env()
        labels = [f"Ray node {n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]})" for n in nodes]
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                read, write if write is not None else shared, marker, env) for n in nodes]
        try:
            results = ray.get(refs, timeout=TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise storage.StorageError(f"the storage check did not finish on every Ray node in "
                                       f"{TIMEOUT_S:.0f} s (a node cannot reach the storage?)") from None
    finally:
        if marker is not None:
            storage.remove(marker)
    for label, err in zip(labels, results):
        if err:
            raise storage.StorageError(f"{label} {err}")
