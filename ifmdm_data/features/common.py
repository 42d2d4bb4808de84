"""What every speech-feature extractor shares: the 16 kHz input rate and `FeatureError`."""
from __future__ import annotations

from ifmdm_data.errors import IfmdmError

SAMPLE_RATE = 16000


class FeatureError(IfmdmError):
    """A speech-feature extractor cannot be built (bad checkpoint, bad layers, bad device)."""
