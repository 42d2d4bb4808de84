"""Stage 1 of IF-MDM (paper Sec. 3.1): the motion autoencoder (visual encoder E_v, decoder D with the
local flow module), its losses, its training through the curriculum and small learning checks.

The model's public names are re-exported here (`from ifmdm_model.stage1 import build_stage1`)."""
from ifmdm_model.stage1.model import (STAGE1_CONFIGS, MotionAutoencoder, Stage1Config,  # noqa: F401
                                      build_discriminator, build_stage1)
