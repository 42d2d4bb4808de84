"""Stage 1 of IF-MDM (paper Sec. 3.1): the motion autoencoder (visual encoder E_v, decoder D with the
local flow module), its losses, its training through the curriculum and small learning checks.

Modules: `model` (config, encoder, latent axis, decoder, autoencoder, discriminator, registry),
`layers` (StyleGAN2-style layers), `local_flow` (the local flow module), `losses`, `train`,
`learning` (small-scale learning checks).

The model's public names are re-exported here (`from ifmdm_model.stage1 import build_stage1`)."""
from ifmdm_model.stage1.model import (STAGE1_CONFIGS, MotionAutoencoder, Stage1Config,  # noqa: F401
                                      build_discriminator, build_stage1)
