"""Talking-head evaluation on held-out clips (`ifmdm-eval video`): generate each clip, gather its metrics.

    ifmdm-eval video --checkpoint runs/x --clips a.mp4 b.mp4 -o eval_out/ [--inception F]
                     [--arcface F] [--syncnet F] [--steps 25] [--max-frames N]

For each clip (a video with its audio track): its first frame is the source image and its
audio the driving speech; `infer.generate` writes out_dir/<name>.mp4 at the clip's frame rate
(frames = round(audio seconds x fps)). Generated and real frames are decoded; the real ones
are centre-cropped to a square and resized to the generated size (as the source image is).

Metrics (code: eval/metrics.py, landmarks.py, fid.py, csim.py, lipsync.py; networks: nets.py)
-----------------------------------------------------------------------------------------------
psnr / ssim   eval/metrics.py (shared with the stage-1 evaluation), per frame on [0, 1], frames
              aligned by index up to the shorter sequence, averaged.
av_corr       the data filter's audio-visual agreement: `ifmdm_data.media.avsync.av_sync` of the
              mouth-opening series (MediapipeMesh landmarks, pose-normalised against the
              clip's median face, `signals.mouth_opening`) and the speech `envelope` of the
              input audio at the frame times; reported for the generated and the real frames
              (`av_corr_generated`, `av_corr_real`). The minimum overlap is min(2 s, half the
              clip); None when no face is found in enough frames.
fid           (--inception FILE) Frechet distance between Inception-v3 pool3 (2048-d) features
              of all generated and all real frames (every clip pooled). The network is
              torchvision's inception_v3(weights=None, aux_logits=True, init_weights=False)
              with the user's state dict; frames resized to 299 x 299 (bilinear), ImageNet
              normalisation. ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrtm(S1 S2), the matrix
              square root by scipy.linalg.sqrtm. With fewer frames than feature dimensions
              the trace term is computed exactly on the smaller (n x n) Gram matrix
              (tr sqrtm(S1 S2) = nuclear norm of A B^T / sqrt((n1 - 1)(n2 - 1)), A, B the
              centred features) instead of the 2048 x 2048 product. Few frames give a biased
              FID: compare numbers computed on the same clips only.
csim          (--arcface FILE) mean cosine similarity between the ArcFace embedding of the
              source image and that of each generated frame. The backbone is `IResNet`
              (eval/nets.py): insightface's arcface_torch iresnet layout and parameter names
              (iresnet18/34/50/100 state dicts load; depth and widths are read from the
              state dict), 112 x 112 RGB input scaled to [-1, 1], 512-d output. Faces are
              aligned as insightface does for ArcFace: five points from the MediapipeMesh
              landmarks (iris centres 468 / 473, nose tip 1, outer mouth corners 61 / 291;
              image-left first), a least-squares similarity transform (Umeyama) onto
              insightface's 112 x 112 template (38.2946, 51.6963), (73.5318, 51.5014),
              (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041), cv2.warpAffine to
              112 x 112. The source is aligned on the full-resolution first frame. A frame
              without a face falls back to the whole (square) frame resized to 112 x 112;
              such generated frames are counted in `csim_unaligned_frames` (and
              `csim_source_aligned` says whether the source was aligned).
lse_d / lse_c (--syncnet FILE) Lip-sync error of the generated video against the input audio
              with a SyncNet; the layout is read from the state-dict keys and reported as
              `syncnet_layout`:
              - "syncnet_python" (`SyncNetPython`): Joon Son Chung's syncnet_python network;
                its released `syncnet_v2.model` is what Wav2Lip, LatentSync and the IF-MDM
                paper report LSE with, so only this file gives paper-comparable numbers. It is
                not shipped: download_model.sh of github.com/joonson/syncnet_python fetches
                it (a plain state dict; pass it as is). Preprocessing as syncnet_python's
                run_pipeline.py + SyncNetInstance.py: the video re-timed to 25 fps (nearest
                frame); per frame the box of the MediapipeMesh landmarks (in place of its S3FD
                detection; interpolated over frames without a face, median-filtered over 13
                frames), enlarged by crop scale 0.4 (columns centre -+ 1.4 s, rows centre - s
                .. centre + 1.8 s, s = half the box side), grey 110 outside the frame,
                resized to 224 x 224, BGR, raw 0-255, 5 frames per window (B, 3, 5, 224, 224);
                audio: python_speech_features' MFCC (13 x 100 Hz, `syncnet_mfcc`) of the
                int16-scaled 16 kHz signal, 20 MFCC frames per window (4 per video frame);
                min(frames, samples // 640) - 5 windows. Frames without a face of their own
                are counted in `lse_no_face_frames`.
              - "ifmdm" (`SyncNet`, this project's own state-dict format): audio 13 MFCC x 20
                windows (0.2 s, 4 MFCC per video frame at the clip's rate), video 5 grayscale
                48 x 48 mouth crops (`signals.mouth_crop` on MediapipeMesh landmarks; the
                lower-centre of the frame when no face is found).
              Both then follow syncnet_python's evaluation: per video window i, distances to
              audio windows i + o, o in [-15, 15] (zero-padded embeddings outside the clip);
              averaged over windows -> mean distance per offset d(o). LSE-D = min_o d(o);
              LSE-C = median_o d(o) - min_o d(o). Lower LSE-D and higher LSE-C are better.
              Differences from the published pipeline: no scene-cut / face-track split (one
              track per clip, every frame), no minimum track length, MediapipeMesh boxes
              instead of S3FD's, frames not re-encoded to JPEG / MPEG-4 before scoring.

A metric whose weights file is not given is reported under "skipped" with the file it needs,
never as a number. A weights file that does not fit its network raises an error naming it.
"""
from __future__ import annotations

import logging
import tempfile
import wave
from pathlib import Path
from typing import List, Optional

import numpy as np

from ifmdm_data.faces.syncnet import AUDIO_RATE
from ifmdm_data.shard.crop import square_resize

from ifmdm_model.eval.csim import arcface_crops, arcface_embed
from ifmdm_model.eval.fid import frechet_distance, inception_features
from ifmdm_model.eval.landmarks import MeshLandmarks, av_agreement, mouth_series
from ifmdm_model.eval.lipsync import lse, sync_video
from ifmdm_model.eval.metrics import frames_tensor, psnr, ssim
from ifmdm_model.eval.nets import VideoEvalError, load_arcface, load_inception, load_syncnet

log = logging.getLogger("ifmdm_model")

SKIP_FID = ("needs an Inception-v3 state dict file (e.g. pt_inception-2015-12-05 converted / "
            "torchvision inception_v3 weights): pass --inception FILE")
SKIP_CSIM = ("needs an ArcFace iresnet state dict file (insightface arcface_torch backbone.pth, "
             "112x112 input, 512-d output): pass --arcface FILE")
SKIP_LSE = ("needs a SyncNet state dict file: syncnet_python's syncnet_v2.model for paper-comparable "
            "LSE-D / LSE-C (not shipped: fetched by download_model.sh of github.com/joonson/"
            "syncnet_python), or an ifmdm_data.faces.syncnet.SyncNet state dict: pass --syncnet FILE")


# ------------------------------------------------------------------------------------------
# Clips
# ------------------------------------------------------------------------------------------

def _decode_video(path, size: Optional[int], max_frames: Optional[int], keep_full: bool = False):
    """(frames resized to size (square centre crop) or as they are, fps, full-size frames)."""
    import av

    frames, full = [], []
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoEvalError(f"{path} has no video stream")
            from ifmdm_data.media.streams import main_streams
            from ifmdm_data.media.video import stream_display_size, to_rgb
            vs = main_streams(c)[0]
            w, h = stream_display_size(vs)
            fps = float(vs.average_rate) if vs.average_rate else 25.0
            for f in c.decode(vs):
                rgb = to_rgb(f, w, h)                    # display geometry, limited range
                frames.append(square_resize(rgb, size) if size else rgb)
                if keep_full:
                    full.append(rgb)
                if max_frames and len(frames) >= max_frames:
                    break
    except VideoEvalError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VideoEvalError(f"cannot decode {path} ({type(e).__name__}: {e})") from None
    if not frames:
        raise VideoEvalError(f"{path} has no video frames")
    return np.stack(frames), fps, full


def _write_wav(path: Path, wav: np.ndarray) -> Path:
    ints = (np.clip(wav, -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_RATE)
        w.writeframes(ints.tobytes())
    return path


def _mean(vals) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def evaluate_videos(run_dir, clips: List[str], out_dir, inception=None, arcface=None, syncnet=None,
                    steps: int = 25, cfg: float = 2.5, seed: int = 0, max_frames: Optional[int] = None,
                    device="auto", lora=None) -> dict:
    """Generate each clip from its first frame and audio and compute the metrics (module
    docstring); `lora`: an `ifmdm-tune` adapter merged into stage 1. Returns {"clips": [...], "summary": {...}, "skipped": {metric: needed file}}."""
    from ifmdm_model.infer import load_models, read_audio, generate

    if not clips:
        raise VideoEvalError("no clips given")
    if max_frames is not None and int(max_frames) < 1:
        raise VideoEvalError(f"--max-frames must be >= 1, got {max_frames}")
    clips = [Path(c) for c in clips]
    for c in clips:
        if not c.is_file():
            raise VideoEvalError(f"clip {c} does not exist")
    names = [c.stem for c in clips]
    if len(set(names)) != len(names):
        raise VideoEvalError("clip file names must be distinct (outputs are out_dir/<name>.mp4)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VideoEvalError(f"-o {out} is a file; give a folder for the generated videos and metrics")
    models = load_models(run_dir, device, lora=lora)
    dev = models.device
    size = models.image_size
    # the extractors first: a bad weights file fails before any generation
    inc = load_inception(inception, dev) if inception else None
    arc = load_arcface(arcface, dev) if arcface else None
    syn = load_syncnet(syncnet, dev) if syncnet else None
    out.mkdir(parents=True, exist_ok=True)
    skipped = {}
    if inc is None:
        skipped["fid"] = SKIP_FID
    if arc is None:
        skipped["csim"] = SKIP_CSIM
    if syn is None:
        skipped["lse_d"] = skipped["lse_c"] = SKIP_LSE

    mesh = MeshLandmarks()
    from ifmdm_data.faces.backends.base import SCHEMES
    scheme = SCHEMES["mp478"]
    per_clip, feats_gen, feats_real = [], [], []
    try:
        for clip, name in zip(clips, names):
            real_sq, fps, real_full = _decode_video(clip, size, max_frames, keep_full=True)
            wav = read_audio(clip)
            if max_frames:
                wav = wav[:int(round(max_frames / fps * AUDIO_RATE))]
            if len(wav) < AUDIO_RATE / fps:
                raise VideoEvalError(f"{clip}: audio shorter than one frame")
            gen_path = out / f"{name}.mp4"
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                import cv2
                img = Path(tmp) / "source.png"
                cv2.imwrite(str(img), cv2.cvtColor(real_full[0], cv2.COLOR_RGB2BGR))
                aud = _write_wav(Path(tmp) / "audio.wav", wav)
                st = generate(run_dir, img, aud, gen_path, fps=fps, steps=steps, cfg=cfg, seed=seed,
                              device=device, overwrite=True, progress=False, face_check=False,
                              models=models)
            gen, _, _ = _decode_video(gen_path, None, None)
            if gen.shape[1:3] != real_sq.shape[1:3]:
                            real_sq = np.stack([square_resize(f, gen.shape[1]) for f in real_sq])
            n = min(len(gen), len(real_sq))
            g_t, r_t = frames_tensor(gen[:n], "cpu"), frames_tensor(real_sq[:n], "cpu")
            rec = {"clip": str(clip), "generated": str(gen_path), "fps": fps,
                   "frames_generated": int(len(gen)), "frames_real": int(len(real_sq)),
                   "frames_compared": int(n),
                   "psnr": float(psnr(g_t, r_t).mean()), "ssim": float(ssim(g_t, r_t).mean())}
            lms_gen = mesh.landmarks(gen)
            lms_real = mesh.landmarks(real_full[:len(real_sq)])
            rec["face_fraction_generated"] = float(np.mean([lm is not None for lm in lms_gen]))
            rec["av_corr_generated"] = av_agreement(mouth_series(lms_gen, scheme), wav, fps)
            rec["av_corr_real"] = av_agreement(mouth_series(lms_real, scheme), wav, fps)
            if inc is not None:
                feats_gen.append(inception_features(inc, gen, dev))
                feats_real.append(inception_features(inc, real_sq, dev))
            if arc is not None:
                # the source: the full-resolution first frame when its face is found, else the
                # square-resized one (whole-frame fallback)
                src = real_full[0] if lms_real[0] is not None else real_sq[0]
                src_face, src_unaligned = arcface_crops([src], lms_real[:1])
                gen_faces, unaligned = arcface_crops(gen, lms_gen)
                e = arcface_embed(arc, np.concatenate([src_face, gen_faces]), dev)
                rec["csim"] = float((e[1:] @ e[0]).mean())
                rec["csim_unaligned_frames"] = int(unaligned)
                rec["csim_source_aligned"] = not src_unaligned
            if syn is not None:
                video, sync_fps, no_face = sync_video(syn.layout, gen, lms_gen, scheme, fps)
                rec.update(lse(syn, video, wav, sync_fps, dev))
                rec["lse_fps"] = float(sync_fps)
                rec["lse_no_face_frames"] = int(no_face)
            rec["generate_stats"] = {k: st[k] for k in ("frames", "seconds", "wall_s", "steps", "cfg", "seed")}
            per_clip.append(rec)
            del real_full
    finally:
        mesh.close()

    summary = {k: _mean([c.get(k) for c in per_clip])
               for k in ("psnr", "ssim", "av_corr_generated", "av_corr_real")}
    summary["n_clips"] = len(per_clip)
    summary["frames_compared"] = int(sum(c["frames_compared"] for c in per_clip))
    if inc is not None:
        summary["fid"] = frechet_distance(np.concatenate(feats_gen), np.concatenate(feats_real))
        summary["fid_frames"] = [int(sum(len(f) for f in feats_gen)), int(sum(len(f) for f in feats_real))]
    if arc is not None:
        summary["csim"] = _mean([c["csim"] for c in per_clip])
        summary["csim_unaligned_frames"] = int(sum(c["csim_unaligned_frames"] for c in per_clip))
    if syn is not None:
        summary["lse_d"] = _mean([c["lse_d"] for c in per_clip])
        summary["lse_c"] = _mean([c["lse_c"] for c in per_clip])
    return {"checkpoint": str(run_dir), "stage1_checkpoint": str(models.stage1_ckpt),
            "stage2_checkpoint": str(models.stage2_ckpt), "steps": steps, "cfg": float(cfg),
            "seed": seed, "max_frames": max_frames,
            "weights": {"inception": str(inception) if inception else None,
                        "arcface": str(arcface) if arcface else None,
                        "syncnet": str(syncnet) if syncnet else None},
            "syncnet_layout": syn.layout if syn is not None else None,
            "clips": per_clip, "summary": summary, "skipped": skipped,
            "lora": {f"stage{k}": v for k, v in models.adapters.items()}}


# ------------------------------------------------------------------------------------------
# CLI


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

def format_table(res: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.4f}"
    cols = ["psnr", "ssim", "av_corr_generated", "av_corr_real", "csim", "lse_d", "lse_c"]
    lines = [f"talking-head evaluation: {res['checkpoint']}, {res['summary']['n_clips']} clip(s)",
             f"{'clip':24s} " + " ".join(f"{c:>12s}" for c in cols)]
    for c in res["clips"]:
        lines.append(f"{Path(c['clip']).name[:24]:24s} " + " ".join(f"{f(c.get(k)):>12s}" for k in cols))
    lines.append(f"{'mean':24s} " + " ".join(f"{f(res['summary'].get(k)):>12s}" for k in cols))
    if "fid" in res["summary"]:
        lines.append(f"FID (all clips pooled): {res['summary']['fid']:.3f}")
    if "csim_unaligned_frames" in res["summary"]:
        lines.append(f"CSIM: {res['summary']['csim_unaligned_frames']} generated frame(s) without a face "
                     "(not aligned)")
    if res.get("syncnet_layout"):
        lines.append(f"LSE: SyncNet layout {res['syncnet_layout']}")
    for k, why in res["skipped"].items():
        lines.append(f"{k}: skipped ({why})")
    return "\n".join(lines)
