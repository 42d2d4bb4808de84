"""Helpers for tests and benchmarks: small run folders of random-init models, written exactly as
the trainers write their checkpoints. Not used by the library."""
from __future__ import annotations

from pathlib import Path

import torch


def save_random_run(run_dir, stage1: str = "S1-tiny", stage2: str = "M2-tiny", n_frames: int = 32,
                    speech_dim: int = 80, seed: int = 0, perturb: float = 0.02,
                    num_timesteps: int = 1000, beta_schedule: str = "linear") -> Path:
    """A run folder (stage1/latest, stage2/latest) of random-init models with the state.json
    fields train_stage1/2 write, for tests and benchmarks. `perturb`: std of noise added to
    stage 2's zero-initialised layers (adaLN-Zero gives eps = 0 otherwise, ignoring every
    condition). Log-mel speech features (speech_dim 80) unless told otherwise."""
    from ifmdm_data.features import LogMelFeatures

    from ifmdm_model.checkpoint import save_checkpoint
    from ifmdm_model.stage1.model import build_stage1
    from ifmdm_model.stage2.model import build_stage2

    run = Path(run_dir)
    torch.manual_seed(seed)
    s1 = build_stage1(stage1).eval()
    ck1 = save_checkpoint(run / "stage1", 0, s1, s1, {},
                          {"model": stage1, "model_config": s1.cfg.to_dict(), "global_step": 0})
    s2 = build_stage2(stage2, n_frames=n_frames, speech_dim=speech_dim, motion_dim=s1.cfg.motion_dim).eval()
    if perturb:
        with torch.no_grad():
            for p in s2.parameters():
                if p.abs().max() == 0:
                    p.normal_(0.0, perturb)
    speech = LogMelFeatures().info() if speech_dim == 80 else {}
    save_checkpoint(run / "stage2", 0, s2, s2, {},
                    {"model": stage2, "model_config": s2.cfg.to_dict(), "global_step": 0,
                     "stage1_checkpoint": str(ck1), "speech_feature": speech,
                     "schedule": {"num_timesteps": num_timesteps, "beta_schedule": beta_schedule}})
    return run
