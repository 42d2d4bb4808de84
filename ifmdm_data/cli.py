"""`ifmdm-data`: the data stages. Thin: parses arguments, calls the library, prints a summary.

Errors a user can fix are printed in one line (exit 2); a failed run exits 1.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time

from ifmdm_data.errors import IfmdmError

EPILOG = """\
examples:
  ifmdm-data sample sample/                      # make the labelled sample set (no downloads)
  ifmdm-data filter sample/ -o manifests/        # local Ray, all cores, bundled mediapipe models
  ifmdm-data filter s3://bucket/raw/ -o s3://bucket/manifests --ray-address auto --workers 64   # a cluster
  ifmdm-data decide manifests/ --config strict.yaml   # new thresholds, no re-analysis
  ifmdm-data shard manifests/ -o shards/ --wav2vec2 ~/models/wav2vec2-base-960h
  ifmdm-data report manifests/ -o report/
  ifmdm-data split manifests/ --by identity --test-fraction 0.05 -o splits/
  ifmdm-data shard splits/train.parquet -o shards/train   # then: ifmdm-train ... --shards shards/train
  ifmdm-data shard --images afhq/cat/ -o shards/cats --size 256   # stage 1 on still images
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`argparse` formatter of every CLI here: a description or epilog written as one long line
    is wrapped to the terminal (argparse's default); one with its own line breaks (examples) is
    kept as written (RawDescriptionHelpFormatter)."""

    def _fill_text(self, text, width, indent):
        if "\n" not in text.strip():
            return argparse.HelpFormatter._fill_text(self, text, width, indent)
        return super()._fill_text(text, width, indent)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ifmdm-data",
        description="Curate raw talking-head videos into IF-MDM training data.",
        epilog=EPILOG, formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("sample", help="write the labelled sample clip set (astronaut face + espeak-ng speech)",
                       description="Make a small labelled clip set with no downloads: one clip per "
                                   "expected outcome (coarse, lip, hard, static, no face, two faces, "
                                   "no audio, too short, a scene cut, dubbed audio) and labels.csv.")
    p.add_argument("out", help="output folder")
    p.add_argument("--size", type=int, default=256, help="frame size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    p = sub.add_parser("filter", help="probe, analyse and sort clips into coarse/lip/hard manifests",
                       description="Probe every input, cut long videos and scene cuts into segments, "
                                   "analyse faces, landmarks, segmentation, head and lip motion and "
                                   "speech on Ray, identify who is in each segment and which segments are "
                                   "the same footage (identity_id: dlib face descriptors; dup_group: pHashes "
                                   "and Chromaprint audio fingerprints; config section identity:), and "
                                   "write Parquet manifests: clips.parquet (every "
                                   "segment, every statistic), coarse/lip/hard.parquet, rejected.parquet "
                                   "(reason codes), tracks/ (per-frame) and summary.json. Re-running "
                                   "with the same -o resumes: finished work units are skipped.",
                       formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="folders (recursive), globs, video files, or .csv/.parquet "
                                             "lists with a 'path' column")
    p.add_argument("-o", "--out", required=True, help="manifest folder")
    p.add_argument("--config", help="YAML with any subset of the keys of the shipped "
                                    "ifmdm_data/configs/filter.yaml")
    p.add_argument("--workers", type=int, help="analysis actors (default: all CPUs of the Ray cluster)")
    p.add_argument("--analysis-fps", type=float, help="face-mesh / lip-motion rate (default 6.25; 12.5 resolves lip motion finer at ~1.5x the cost)")
    p.add_argument("--backend", choices=["mediapipe", "fan", "facexlib"],
                   help="face models: mediapipe (bundled, default), fan (face-alignment S3FD + FAN-68), "
                        "facexlib (RetinaFace + BiSeNet parsing); the last two need --weights-dir")
    p.add_argument("--weights-dir", help="folder with the weight files of the fan / facexlib backends")
    p.add_argument("--syncnet", metavar="FILE", help="syncnet_python's syncnet_v2.model (not shipped: "
                   "download_model.sh of github.com/joonson/syncnet_python): SyncNet confidence and "
                   "AV offset per segment decide av_out_of_sync (LatentSync's rule); meant for GPU workers")
    p.add_argument("--syncnet-gpus", type=float, default=0.0, metavar="F",
                   help="Ray GPUs per analysis actor for SyncNet (default 0: CPU)")
    p.add_argument("--ray-address", help="Ray cluster address ('auto' inside a cluster); default: "
                                         "$RAY_ADDRESS, else a local Ray started for this run")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in the output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)

    p = sub.add_parser("decide", help="re-decide subsets and reasons of a finished manifest with a new config",
                       description="Recompute subsets, reasons and stage2_ok from the statistics in "
                                   "clips.parquet, and re-cluster identity_id / dup_group from the stored "
                                   "signals, with the thresholds of --config (no video is read). Keys the "
                                   "file leaves out keep the values the run used (its summary.json).")
    p.add_argument("manifests", help="manifest folder written by `filter`")
    p.add_argument("--config", help="YAML config: its decide.* and identity.threshold / max_phash_distance keys "
                                    "replace the run's (the rest of the run's config, from summary.json, is kept)")
    _add_common(p)

    p = sub.add_parser("inspect", help="print one line per segment of a manifest (optionally beside labels)",
                       description="Print file, time range, subset or reasons, stage-2 status and the "
                                   "deciding statistics of every segment, and its identity_id / dup_group "
                                   "when the manifest has them; with --labels (the sample set's labels.csv), also the "
                                   "expected outcome and whether it matches.")
    p.add_argument("manifests", help="manifest folder written by `filter`")
    p.add_argument("--labels", help="labels.csv of `ifmdm-data sample`")
    _add_common(p)

    p = sub.add_parser("shard", help="write WebDataset shards of the accepted clips (crop, encode, audio, speech features)",
                       description="Turn the accepted segments of a manifest into WebDataset tars: a "
                                   "stabilised large-field-of-view crop encoded as H.264, 16 kHz mono wav, "
                                   "speech features aligned to the frames (wav2vec2 from --wav2vec2 DIR, "
                                   "else log-mel), landmarks in crop pixels and a JSON record per sample. "
                                   "Writes shards/{coarse,lip,hard}/*.tar, shards/index.parquet and "
                                   "shards/summary.json. Re-running resumes: finished tars are skipped. "
                                   "With --images INPUT instead of a manifest: an image set for stage 1 "
                                   "(still images, centre square crop resized to --size, stored as PNG (or --format jpg), "
                                   "no face filter; unreadable, corrupt, too small (--min-side) and "
                                   "duplicate images are rejected into rejected.parquet; runs in this "
                                   "process, no Ray): shards/images/*.tar, index.parquet, rejected.parquet, "
                                   "summary.json.")
    p.add_argument("manifests", nargs="?", help="manifest folder written by `filter`, or a split file of `split` "
                                     "(splits/train.parquet: exactly its rows; tracks from the folder it was split from)")
    p.add_argument("--images", metavar="INPUT", help="shard still images instead: a folder (recursive), a glob, "
                                                     "an image, a .csv/.parquet list with a 'path' column, or an "
                                                     "object-storage prefix (s3://...)")
    p.add_argument("--min-side", type=int, help="--images: reject images whose short side is below this (default: --size / 2)")
    p.add_argument("--dup-bits", type=int,
                   help="--images: pHash Hamming distance (of 64) at which two images are duplicates (default 6)")
    p.add_argument("--format", choices=["png", "jpg"],
                   help="--images: stored picture format (default png, lossless; jpg: quality 95, smaller)")
    p.add_argument("-o", "--out", required=True, help="shard folder")
    p.add_argument("--subsets", default="coarse,lip,hard", help="comma list (default: coarse,lip,hard)")
    p.add_argument("--wav2vec2", metavar="DIR", help="local Wav2Vec2 checkpoint folder (save_pretrained "
                                                      "layout); default: log-mel features")
    p.add_argument("--wav2vec2-layers", default="-1", help="hidden-state indices, comma list, averaged (default -1: last)")
    p.add_argument("--size", type=int, help="crop side in pixels (default 512; --images: 256)")
    p.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    p.add_argument("--shard-size", type=float, default=1.0, help="target shard size in GB (default 1.0)")
    p.add_argument("--fix-av-offset", action="store_true",
                   help="shift each segment's audio to undo the SyncNet AV offset that `filter --syncnet` "
                        "measured (sync_offset_frames), as LatentSync does; no effect without it")
    p.add_argument("--workers", type=int, help="shard-writing actors (default: all CPUs; --images: decode threads)")
    p.add_argument("--ray-address", help="Ray cluster address ('auto' inside a cluster)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier shards in the output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)

    p = sub.add_parser("report", help="an HTML page of what the curation kept and why",
                       description="Write report/index.html (self-contained: plots and contact sheets "
                                   "embedded) with counts per subset and reason, the statistics' "
                                   "distributions per subset with the thresholds drawn, and contact sheets "
                                   "of random segments with the face box, landmarks and lip region.")
    p.add_argument("manifests", help="manifest folder written by `filter`, or a split file of `split` "
                                     "(identities per subset and duplicate groups are shown when present)")
    p.add_argument("-o", "--out", required=True, help="report folder")
    p.add_argument("--examples", type=int, default=6, help="contact-sheet tiles per subset (default 6)")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    p = sub.add_parser("split", help="identity- and duplicate-disjoint train/val/test manifests",
                       description="Split manifests so that no face identity, near-duplicate group or "
                                   "source file is in two splits, stratified by subset, deterministic for "
                                   "a seed. Uses the face descriptors, pHashes and audio fingerprints "
                                   "`filter` stored (re-clustered over all manifests given); computes them "
                                   "from the source videos only for manifests without them. Writes "
                                   "OUT/train.parquet, OUT/test.parquet (and val.parquet): the clips columns "
                                   "plus split_group, split and source_manifest.")
    p.add_argument("manifests", nargs="+", help="manifest folders (clips.parquet) or .parquet manifests")
    p.add_argument("-o", "--out", required=True, help="split folder")
    p.add_argument("--by", choices=["identity", "clip"], default="identity",
                   help="group by face identity (default) or only by source file and duplicate group")
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of segments in test (default 0.05)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="share of segments in val (default 0: no val)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--identity-threshold", type=float, default=None,
                   help="dlib descriptor distance below which faces are one person (default: the "
                        "identity.threshold the manifests were filtered / decided with, else 0.6)")
    p.add_argument("--dup-bits", type=int, default=None,
                   help="pHash Hamming distance (of 64 bits) at which frames are the same picture (default: "
                        "the manifests' identity.max_phash_distance, else 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(p)
    return ap


def print_summary(s: dict, out: str) -> None:
    from ifmdm_data.io.console import plural
    w = sys.stdout.write
    w(f"\n{plural(s['inputs'], 'file')} -> {plural(s['segments'], 'segment')} in {s.get('elapsed_s', 0):.1f} s "
      f"({s.get('files_per_s') or 0:.2f} files/s, {plural(s.get('workers', '?'), 'worker')})\n")
    w(f"  accepted  {s['accepted']:6d}   " + "  ".join(f"{k} {v}" for k, v in s["subsets"].items())
      + f"   ({s['hours_accepted']:.3f} h)\n")
    w(f"  rejected  {s['rejected']:6d}\n")
    for reason, n in s["rejected_by_reason"].items():
        w(f"    {reason:<20s}{n:6d}\n")
    w(f"  stage 2 ok {s['stage2_ok']:5d} of the accepted\n")
    for reason, n in s["stage2_by_reason"].items():
        w(f"    {reason:<20s}{n:6d}\n")
    if s.get("identities") is not None:
        w(f"  identities {s['identities']:5d} at threshold {s.get('identity_threshold', 0.6):g} (accepted: {s['identities_accepted']}), "
          f"{plural(s['segments_without_face'], 'segment')} without a face; "
          f"{plural(s['dup_groups_multi'], 'near-duplicate group')} of 2+ segments ({plural(s['dup_segments'], 'segment')})\n")
    w(f"manifests: {out}/clips.parquet, coarse/lip/hard/rejected.parquet, tracks/, summary.json\n")


def _print_logs(path) -> None:
    if path is not None:
        sys.stdout.write(f"logs: {path} (Ray's own: /tmp/ray/session_latest/logs on each node)\n")


def print_shard_summary(s: dict, out: str) -> None:
    from ifmdm_data.io.console import plural
    w = sys.stdout.write
    w(f"\n{plural(s.get('samples_total', 0), 'sample')} in {plural(sum((s.get('shards') or {}).values()), 'shard')} "
      f"({s.get('bytes', 0) / 1e6:.1f} MB) in {s.get('elapsed_s', 0):.1f} s: "
      f"{s.get('clips_per_s') or 0:.2f} clips/s, {s.get('mb_per_s') or 0:.2f} MB/s; "
      f"{plural(s.get('shards_skipped', 0), 'shard')} already done\n")
    w("  " + "  ".join(f"{k} {v}" for k, v in (s.get("samples") or {}).items())
      + f"   speech features: {s.get('feature_type')} ({s.get('feature_dim')})\n")
    fails = s.get("failures") or []
    if fails:
        w(f"  {plural(len(fails), 'segment')} could not be written (listed in {out}/summary.json):\n")
        for f in fails[:10]:
            w(f"    {f.get('key')}: {f.get('reason')} {f.get('detail', '')}\n")
    w(f"shards: {out}/{{coarse,lip,hard}}/*.tar, {out}/index.parquet, {out}/summary.json\n")


def print_image_set_summary(s: dict, out: str) -> None:
    from ifmdm_data.io.console import plural
    w = sys.stdout.write
    w(f"\n{plural(s['inputs'], 'image')} -> {plural(s['samples_total'], 'sample')} in {plural(s['shards']['images'], 'shard')} "
      f"({s['bytes'] / 1e6:.1f} MB) in {s['elapsed_s']:.1f} s; {s['composited']} composited over white\n")
    w(f"  rejected  {s['rejected']:6d}\n")
    for reason, n in s["rejected_by_reason"].items():
        w(f"    {reason:<20s}{n:6d}\n")
    w(f"shards: {out}/images/*.tar, {out}/index.parquet, {out}/rejected.parquet, {out}/summary.json\n")


def print_split_summary(s: dict, out: str) -> None:
    from ifmdm_data.io.console import plural
    w = sys.stdout.write
    w(f"\n{plural(s['segments'], 'segment')}, {plural(s['identities'], 'identity', 'identities')} "
      f"(threshold {s['threshold']:g}), {plural(s['dup_groups_multi'], 'duplicate group')} of 2+ segments; "
      f"{plural(s['groups'], 'group')} kept whole in one split (segments joined by "
      f"{'identity, ' if s.get('by') == 'identity' else ''}near-duplicate or source file)\n")
    for name, p in s["splits"].items():
        # the share reached beside the one asked for: whole groups go to one split, so they differ
        share = f"{100 * p['segments'] / max(s['segments'], 1):5.1f}% of segments"
        if p.get("fraction") is not None:
            share += f" (asked {100 * p['fraction']:g}%)"
        w(f"  {name:<6s}{plural(p['segments'], 'segment', width=6):<15s} "
          f"{plural(p['identities'], 'identity', 'identities', width=5):<16s}   {share}   "
          + "  ".join(f"{k} {v} ({plural(p['identities_per_subset'].get(k, 0), 'id')})" for k, v in p["subsets"].items())
          + "\n")
    if s.get("annotate_s_per_segment") is not None:
        w(f"  identity / hashes computed from the videos: {s['annotate_s_per_segment']:.2f} s per segment"
          + (f"; {plural(s['annotate_failed'], 'segment')} could not be decoded" if s.get("annotate_failed") else "")
          + "\n")
    for name, p in s["splits"].items():
        if not p["segments"]:
            w(f"  warning: {name} has no segment (too few groups: {s['groups']}; every group goes whole to one split)\n")
    w("splits: " + ", ".join(f"{out}/{n}.parquet" for n in s["splits"]) + "\n")


@contextlib.contextmanager
def _console(args):
    """`filter` / `shard` without -v: library output (Ray, C++ logs, warnings) to
    OUT/_logs/<cmd>-<time>.log; yields that path (None with -v: everything on the console)."""
    if args.verbose:
        yield None
        return
    from ifmdm_data.io.console import log_path_for, quiet_console
    with quiet_console(log_path_for(args.cmd, args.out)) as path:
        yield path


def _load_cfg(args):
    from ifmdm_data.filter.config import load_config
    cfg = load_config(getattr(args, "config", None))
    if getattr(args, "analysis_fps", None):
        if args.analysis_fps <= 0:
            raise IfmdmError("--analysis-fps must be > 0")
        cfg.analysis.fps = args.analysis_fps
    if getattr(args, "backend", None):
        cfg.analysis.backend = args.backend
    return cfg


# arguments that name a file, folder or object-storage location (any sub-command that has them)
_LOCATION_ARGS = (("inputs", "input"), ("manifests", "manifests"), ("out", "-o"), ("config", "--config"),
                  ("labels", "--labels"), ("wav2vec2", "--wav2vec2"), ("syncnet", "--syncnet"),
                  ("weights_dir", "--weights-dir"), ("images", "--images"))


def _check_locations(args) -> None:
    """A mistyped object-storage URL in any location argument is one line before any work
    (`storage.check_location`)."""
    from ifmdm_data.io.storage import check_location

    for attr, flag in _LOCATION_ARGS:
        v = getattr(args, attr, None)
        for one in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(one, (str, os.PathLike)):
                check_location(flag, one)


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.cmd:
        ap.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _check_locations(args)
        if args.cmd == "sample":
            from ifmdm_data.sample import make_sample_set
            t0 = time.time()
            with _console(args) as logs:       # mediapipe's TFLite / absl lines go to the log file
                labels = make_sample_set(args.out, seed=args.seed, size=args.size, progress=True)
            print(f"sample set written in {time.time() - t0:.1f} s; labels: {labels}")
            if logs is not None and logs.is_file():
                print(f"logs: {logs}")
        elif args.cmd == "filter":
            from ifmdm_data.filter.pipeline import run_filter
            if args.workers is not None and args.workers < 1:
                raise IfmdmError("--workers must be >= 1")
            with _console(args) as logs:
                s = run_filter(args.inputs, args.out, _load_cfg(args), workers=args.workers,
                               ray_address=args.ray_address, weights_dir=args.weights_dir,
                               overwrite=args.overwrite, progress=not args.no_progress,
                               syncnet=args.syncnet, syncnet_gpus=args.syncnet_gpus)
            print_summary(s, args.out)
            _print_logs(logs)
        elif args.cmd == "decide":
            from ifmdm_data.filter.config import load_config
            from ifmdm_data.filter.finalise import redecide, stored_config
            # the run's own config under the user's file: keys the file leaves out keep their values
            counts = redecide(args.manifests, load_config(args.config, base=stored_config(args.manifests)))
            print_summary({"inputs": counts["files"], **counts}, args.manifests)
        elif args.cmd == "inspect":
            from ifmdm_data.report.inspect import inspect_manifest
            ok = inspect_manifest(args.manifests, args.labels)
            return 0 if ok else 1
        elif args.cmd == "shard" and args.images:
            from ifmdm_data.shard.image_set import ImageSetConfig, run_image_set
            if args.manifests:
                raise IfmdmError("give a manifest folder or --images INPUT, not both")
            video_only = [f for f, given in (("--subsets", args.subsets != "coarse,lip,hard"),
                                             ("--wav2vec2", args.wav2vec2 is not None),
                                             ("--wav2vec2-layers", args.wav2vec2_layers != "-1"),
                                             ("--fps", args.fps != 25.0), ("--fix-av-offset", args.fix_av_offset),
                                             ("--ray-address", args.ray_address is not None)) if given]
            if video_only:
                raise IfmdmError(f"{video_only[0]} applies to video shards only, not to --images")
            cfg = ImageSetConfig(size=256 if args.size is None else args.size, min_side=args.min_side,
                                 dup_bits=6 if args.dup_bits is None else args.dup_bits,
                                 image_format=args.format or "png", target_shard_bytes=int(args.shard_size * 1e9),
                                 workers=args.workers)
            s = run_image_set(args.images, args.out, cfg, overwrite=args.overwrite)
            print_image_set_summary(s, args.out)
        elif args.cmd == "shard":
            from ifmdm_data.shard.segment import ShardConfig
            if not args.manifests:
                raise IfmdmError("give a manifest folder (or --images INPUT for an image set)")
            only = [f for f, v in (("--min-side", args.min_side), ("--dup-bits", args.dup_bits),
                                   ("--format", args.format)) if v is not None]
            if only:
                raise IfmdmError(f"{only[0]} applies to --images only")
            args.size = 512 if args.size is None else args.size
            from ifmdm_data.shard.pipeline import run_shard
            try:
                layers = tuple(int(x) for x in args.wav2vec2_layers.split(","))
            except ValueError:
                raise IfmdmError(f"--wav2vec2-layers must be integers, got {args.wav2vec2_layers!r}") from None
            subsets = tuple(x.strip() for x in args.subsets.split(",") if x.strip())
            bad = [x for x in subsets if x not in ("coarse", "lip", "hard")]
            if bad or not subsets:
                raise IfmdmError(f"--subsets takes coarse, lip, hard; got {args.subsets!r}")
            if args.size < 16 or args.size % 2 or args.fps <= 0 or args.shard_size <= 0:
                raise IfmdmError("--size must be an even number >= 16; --fps and --shard-size > 0")
            cfg = ShardConfig(size=args.size, fps=args.fps, target_shard_bytes=int(args.shard_size * 1e9),
                              fix_av_offset=args.fix_av_offset)
            with _console(args) as logs:
                s = run_shard(args.manifests, args.out, subsets=subsets, cfg=cfg, wav2vec2_dir=args.wav2vec2,
                              layers=layers, workers=args.workers, ray_address=args.ray_address,
                              overwrite=args.overwrite, progress=not args.no_progress)
            print_shard_summary(s, args.out)
            _print_logs(logs)
        elif args.cmd == "report":
            from ifmdm_data.report import write_report
            path = write_report(args.manifests, args.out, examples_per_subset=args.examples, seed=args.seed)
            print(f"report: {path} (open it in a browser to see what was kept and why)")
        elif args.cmd == "split":
            from ifmdm_data.split import run_split
            s = run_split(args.manifests, args.out, by=args.by, test_fraction=args.test_fraction,
                          val_fraction=args.val_fraction, seed=args.seed, threshold=args.identity_threshold,
                          max_distance=args.dup_bits, progress=not args.no_progress)
            print_split_summary(s, args.out)
    except IfmdmError as e:
        print(f"ifmdm-data {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if getattr(args, "images", None):
            print(f"ifmdm-data {args.cmd}: interrupted; finished tars are kept but the set has no index: "
                  "re-run with --overwrite", file=sys.stderr)
        else:
            print(f"ifmdm-data {args.cmd}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
