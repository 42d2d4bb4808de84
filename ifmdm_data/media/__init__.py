"""Reading media files: probing, stream choice, the time axis, video and audio decoding, and
the analyses of decoded audio.

- probe: one file -> a plain record (ffprobe), or a ClipError
- streams: the main video / audio stream of a file (ffmpeg's rule)
- timeline: a file's time 0 (the video stream's first frame)
- video: decoded frames in display geometry at the analysis rate and size
- audio: decoded audio, float32 mono on the file's timeline (`load_audio`)
- waveform: float32 mono with NaN/inf zeroed (`as_mono`)
- vad: speech presence (silero-vad `SpeechDetector`)
- loudness: RMS level in dBFS and the speech envelope
- avsync: audio-visual agreement of a mouth signal and the speech envelope
"""
