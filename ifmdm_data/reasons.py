"""Machine-readable reason codes. The manifests store their string values."""
from enum import Enum


class Reason(str, Enum):
    """Why a segment is not in a stage-1 subset (stored in `reasons`, a list per row)."""

    UNREADABLE = "unreadable"            # path cannot be opened (permissions, vanished)
    EMPTY_FILE = "empty_file"            # zero bytes
    DECODE_ERROR = "decode_error"        # not a media file, truncated, corrupt
    NO_VIDEO_STREAM = "no_video_stream"  # audio-only or data-only file
    TOO_FEW_FRAMES = "too_few_frames"    # decodes, but fewer frames than analysis needs
    TOO_SHORT = "too_short"              # shorter than segment.min_duration_s (config)
    LOW_RESOLUTION = "low_resolution"    # short side below segment.min_short_side (config)
    NO_FACE = "no_face"                  # a face in too few analysed frames
    MULTI_FACE = "multi_face"            # a second face in too many frames
    FACE_TOO_SMALL = "face_too_small"
    FACE_OUT_OF_FRAME = "face_out_of_frame"
    STATIC = "static"                    # neither head nor lips move
    CAMERA_MOTION = "camera_motion"      # the background moves (pan, zoom, shake)
    BLURRY = "blurry"
    ANALYSIS_ERROR = "analysis_error"    # our code failed on this clip (detail in `error`)
    WORKER_CRASH = "worker_crash"        # the worker process died on this clip, retries exhausted

    def __str__(self) -> str:
        return self.value


class Stage2Reason(str, Enum):
    """Why an accepted segment cannot train stage 2 (stored in `stage2_reasons`)."""

    NO_AUDIO = "no_audio"                # no audio stream
    AUDIO_DECODE_ERROR = "audio_decode_error"
    NO_SPEECH = "no_speech"              # VAD finds too little speech (music, ambience, silence)
    AUDIO_TOO_SHORT = "audio_too_short"  # audio ends (or starts) inside the segment: audio_coverage < min
    AV_OUT_OF_SYNC = "av_out_of_sync"    # mouth and speech disagree (dubbed, offset, mismatched)
    NOT_IN_SUBSET = "not_in_subset"      # rejected for stage 1 (no usable face track)

    def __str__(self) -> str:
        return self.value


SUBSETS = ("coarse", "lip", "hard")
