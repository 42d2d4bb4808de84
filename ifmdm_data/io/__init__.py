"""Shared utilities of every data stage: where bytes live and how they are written.

    storage      local paths and object-storage URLs (s3://, gs://): read, list, atomic upload
    atomic       atomic JSON writes (`write_json_atomic`)
    ray_runtime  start or join the Ray runtime of `filter` and `shard` (`init_ray`)
    console      the quiet console of `filter` / `shard`: log file, one progress line a stage
"""
