"""`ifmdm-data shard`: accepted segments (or still images) -> WebDataset tars, and their format.

    format          the one definition of the shard artefacts (members, names, index, sidecars)
    plan            which samples go into which shard (fixed on the first run)
    pipeline        the Ray Data driver: one task per shard on an actor pool, then index + summary
    segment         one sample from one segment: mp4, wav, speech features, landmarks, json
    crop            the stabilised large-field-of-view face crop
    tar_writer      one tar, written under a temporary name and renamed when complete
    image_set       `shard --images`: still images -> stage-1 shards
    image_pairs     stage-1 training pairs from one still image (two random warps)
    reader          reading the tars: samples, decoded members, mp4 frames
    motion_sidecar  the stage-2 motion sidecar writer
"""
