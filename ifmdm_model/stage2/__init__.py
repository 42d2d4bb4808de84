"""Stage 2 of IF-MDM (paper Sec. 3.2): the implicit motion generator (a DiT over motion frames), its
Gaussian diffusion, the motion latents it learns from and its training.

Modules: `model` (config, DiT, registry), `guidance` (framewise temporal guidance, motion
statistics guidance, motion hint), `diffusion` (schedule, loss, samplers, speech-only CFG),
`extract` (motion latents from the stage-1 encoder), `motion_windows` (in-memory windows for
small runs), `train`.

The model's public names are re-exported here (`from ifmdm_model.stage2 import build_stage2`)."""
from ifmdm_model.stage2.model import STAGE2_CONFIGS, MotionDiT, Stage2Config, build_stage2  # noqa: F401
