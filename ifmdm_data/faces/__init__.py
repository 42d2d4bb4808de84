"""Per-frame face analysis: face models, landmark signals, lip sync, identity.

- backends: the face models by role (detector, landmarks, segmenter) and `build_models`
- counting: every face in a frame (detector pass + tiled second pass for small faces)
- signals: per-frame signals from landmarks and pixels (pose, mouth opening, motion, ...)
- syncnet: syncnet_python's SyncNet and its preprocessing (filter sync check, LSE-D / LSE-C)
- identity: dlib face descriptors -> `identity_id` per segment and across a collection
"""
