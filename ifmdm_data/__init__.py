"""The data side of IF-MDM: videos -> filtered manifests -> splits -> WebDataset shards -> loaders.

The package map, in the order the data flows (`ifmdm-data`, the `cli` module, runs the stages):

    io        shared utilities: local paths / object storage, atomic writes, Ray start-up, console
    media     reading media files: probe, streams, time axis, video and audio decoding, VAD
    faces     per-frame face analysis: face model backends, landmark signals, SyncNet, identity
    filter    `ifmdm-data filter` / `decide`: analyse every clip on Ray, decide, write manifests
    split     `ifmdm-data split`: identity- and duplicate-disjoint train / val / test manifests
    shard     `ifmdm-data shard`: accepted segments (or still images) -> WebDataset tars
    features  speech features for stage 2 (log-mel or wav2vec2), aligned to video frames
    loaders   training data: stage-1 frame pairs, stage-2 motion windows (torch DataLoaders)
    report    `ifmdm-data report` / `inspect`: an HTML page / a listing of a manifest
    sample    `ifmdm-data sample`: a small labelled clip set made locally, for tests and demos
    schema    the manifest formats: clips.parquet, split files, per-frame tracks
    reasons   the reason codes stored in the manifests
    errors    errors a user can cause (one line from the CLI, non-zero exit)
    cli       the `ifmdm-data` command line: argument parsing and summaries only

Dependencies point one way: cli -> the stage pipelines (filter, split, shard, report, sample)
-> per-clip logic (media, faces, features) -> formats and utilities (schema, reasons, errors,
io). Nothing here imports `ifmdm_model`.
"""
