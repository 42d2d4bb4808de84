"""Evaluation of trained runs: stage-1 reconstruction and talking-head video metrics (`ifmdm-eval`).

stage1     `ifmdm-eval stage1`: same- / cross-identity reconstruction of the motion autoencoder
           on held-out shards (`evaluate_stage1`, `load_stage1`)
video      `ifmdm-eval video`: generate held-out clips and gather their metrics (`evaluate_videos`)
metrics    per-image PSNR / SSIM / L1 on [0, 1], shared by both
landmarks  MediapipeMesh landmarks of a clip, mouth-opening series, av_corr
fid        Inception-v3 features and the Frechet distance
csim       ArcFace five-point alignment and identity embeddings
lipsync    SyncNet inputs and LSE-D / LSE-C
nets       the metric networks (IResNet; SyncNet layouts re-exported) and their weight loaders

The command line lives in `ifmdm_model.cli.eval`; nothing is imported here (import the modules).
"""
