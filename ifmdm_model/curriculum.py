"""The training curriculum (manifests/curriculum.yaml): dataclasses, loading, validation.

The default file and the fitting of its levels to the subsets `filter` found live on the data
side (ifmdm_data/filter/curriculum_template.py, ifmdm_data/configs/curriculum.yaml): the data
package never imports this one."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import List, Optional

import yaml

from ifmdm_data.filter.curriculum_template import DEFAULT_CURRICULUM
from ifmdm_data.errors import ConfigError
from ifmdm_data.shard.image_set import IMAGE_SUBSET
from ifmdm_data.reasons import SUBSETS

# what a stage-1 level may train on: the video subsets, or the still images of an image set
# (`ifmdm-data shard --images`; point `shards:` / --shards at that folder)
LEVEL_SUBSETS = SUBSETS + (IMAGE_SUBSET,)


@dataclass
class Level:
    name: str
    subsets: List[str]
    steps: int
    lr: float
    shards: Optional[Path | str] = None   # this level's shard folder or s3:// URL (default: the curriculum's `shards`)

    def record(self) -> dict:
        """The level as checkpoints store it (no `shards` key when it has none, so runs saved
        before levels could name a folder resume unchanged)."""
        d = {"name": self.name, "subsets": list(self.subsets), "steps": self.steps, "lr": self.lr}
        if self.shards is not None:
            d["shards"] = str(self.shards)
        return d


@dataclass
class LossWeights:
    l1: float = 1.0
    perceptual: float = 10.0
    local_flow: float = 0.1
    gan: float = 0.0


# Paper ablations that curriculum.yaml may set on top of the named model size (None: the
# size's default). They are recorded in every checkpoint's `model_config`, which extraction,
# eval and inference read back, so a run is always rebuilt as it was trained.
STAGE1_ABLATIONS = ("groups", "motion_dim", "mask_norm", "motion_decoder", "coarse_to_fine")
STAGE2_ABLATIONS = ("modulation", "speech_residual", "conditioning", "motion_stats",
                    "p_drop_speech", "p_drop_stats", "p_drop_hint")


@dataclass
class Stage1Plan:
    model: str = "S1-256"
    groups: Optional[int] = None          # G of the local flow module (paper: 16 best)
    motion_dim: Optional[int] = None      # D (paper: 20)
    mask_norm: Optional[str] = None       # spatial | separable | paper (ifmdm_model/stage1/local_flow.py)
    motion_decoder: Optional[str] = None  # directions (LIA's latent axis) | mapping (MLP)
    coarse_to_fine: Optional[bool] = None  # flows refined from the scale below (ours; off)
    batch_size: int = 8
    pairs_per_clip: int = 16
    num_workers: int = 4
    augment: bool = True
    ema: float = 0.999
    warmup_steps: int = 500
    log_every: int = 50
    image_every: int = 1000
    checkpoint_every: int = 2000
    loss: LossWeights = field(default_factory=LossWeights)
    levels: List[Level] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return sum(lv.steps for lv in self.levels)

    def model_overrides(self) -> dict:
        """The ablation keys set in curriculum.yaml (those left out keep the size's default)."""
        return {k: getattr(self, k) for k in STAGE1_ABLATIONS if getattr(self, k) is not None}

    def model_config(self, where: str = "stage1"):
        """The Stage1Config this plan trains: the named size with the ablations applied
        (validated: a bad value is a one-line ConfigError naming the key)."""
        from dataclasses import replace
        from ifmdm_model.stage1.model import STAGE1_CONFIGS
        if self.model not in STAGE1_CONFIGS:
            raise ConfigError(f"{where}.model: unknown stage-1 model {self.model!r}; "
                              f"known: {sorted(STAGE1_CONFIGS)}")
        base = STAGE1_CONFIGS[self.model]
        return replace(base, **_typed_overrides(base, self.model_overrides(), where)).validate(where)

    def position(self, global_step: int) -> tuple[int, int]:
        """(level index, step within the level) of a global step."""
        for i, lv in enumerate(self.levels):
            if global_step < lv.steps:
                return i, global_step
            global_step -= lv.steps
        return len(self.levels), 0


@dataclass
class Stage2Plan:
    model: str = "M2-A0"            # M2-tiny (tests), M2-A0 (ifmdm_model/stage2/model.py)
    # paper ablations (None: the model's default; ifmdm_model/stage2/model.py Stage2Config)
    modulation: Optional[str] = None        # framewise | global
    speech_residual: Optional[bool] = None  # speech projection added into each block's residual
    conditioning: Optional[str] = None      # sum | tokens (hint / mean / std as extra tokens)
    motion_stats: Optional[str] = None      # clip | window: what m_mu, m_sigma are computed over
    p_drop_speech: Optional[float] = None   # per-condition drop probabilities (CFG)
    p_drop_stats: Optional[float] = None
    p_drop_hint: Optional[float] = None
    batch_size: int = 64            # windows per GPU
    window: int = 32                # n_f frames per window
    steps: int = 200000
    lr: float = 1.0e-4
    warmup_steps: int = 1000
    ema: float = 0.9999
    num_workers: int = 4
    beta_schedule: str = "linear"   # DDPM betas: linear (1e-4 .. 0.02) or cosine
    num_timesteps: int = 1000
    log_every: int = 50
    checkpoint_every: int = 5000
    extract_batch: int = 64         # frames per stage-1 encoder batch during motion extraction

    def model_overrides(self) -> dict:
        """The ablation keys set in curriculum.yaml (those left out keep the model's default)."""
        return {k: getattr(self, k) for k in STAGE2_ABLATIONS if getattr(self, k) is not None}


@dataclass
class Curriculum:
    path: Path | str                   # the curriculum.yaml read (an object-storage URL stays a str)
    shards: Path | str                 # a local folder, or an object-storage URL (str, s3://...)
    stage1: Stage1Plan
    stage2: Stage2Plan = field(default_factory=Stage2Plan)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "shards": str(self.shards), "stage1": asdict(self.stage1),
                "stage2": asdict(self.stage2)}


def _typed(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(known)})")
    out = {}
    for k, v in data.items():
        default = getattr(cls(), k) if k in known and k not in ("levels", "loss") else None
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise ConfigError(f"{where}.{k} must be true/false, got {v!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{where}.{k} must be a number >= 0, got {v!r}")
            v = type(default)(v)
        out[k] = v
    return out


def _split_hint(split_file: Path | str) -> str:
    """One line for `--curriculum splits/train.parquet` (or splits/): a split reaches training
    through its shards, with the curriculum of the manifests it was split from (local or
    object storage)."""
    from ifmdm_data.io import storage

    folder = "manifests/"
    try:
        src = set(storage.read_parquet(str(split_file), columns=["source_manifest"]).column(0).to_pylist()) - {None}
        folder = sorted(src)[0] if len(src) == 1 else folder
    except Exception:  # noqa: BLE001 - not a split file or no source column: the generic hint
        pass
    name = storage.name(split_file).rsplit(".", 1)[0]
    return (f"{split_file} is a manifest, not a curriculum: shard it (`ifmdm-data shard {split_file} "
            f"-o shards/{name}`), then `ifmdm-train --curriculum {folder} --shards shards/{name} ...`")


def _find_remote_curriculum(url: str) -> str:
    """The curriculum.yaml object of `url` (the file, or a prefix holding one); ConfigError
    with the same hints as on disk otherwise (a split file, nothing there)."""
    from ifmdm_data.io import storage

    url = url.rstrip("/")
    cur = storage.join(url, "curriculum.yaml")
    is_file_name = url.endswith((".yaml", ".yml", ".parquet"))
    has_cur = not is_file_name and storage.isfile(cur)
    split_file = url if url.endswith(".parquet") else storage.join(url, "train.parquet")
    if not has_cur and not url.endswith((".yaml", ".yml")) and storage.isfile(split_file):
        raise ConfigError(_split_hint(split_file))
    if has_cur:
        return cur
    if storage.isfile(url):
        return url
    missing = url if url.endswith((".yaml", ".yml")) else cur
    raise ConfigError(f"no curriculum at {missing}: run `ifmdm-data filter ... -o {storage.parent(missing)}` "
                      f"(it writes the default) or copy {DEFAULT_CURRICULUM} there")


def load_curriculum(path: str | Path) -> Curriculum:
    """Load `path` (a curriculum.yaml, or a manifests folder holding one; a local path or an
    object-storage URL: s3://bucket/manifests/ or .../curriculum.yaml). A relative `shards:`
    is relative to the curriculum's folder in both cases (`../shards` of
    s3://bucket/manifests/curriculum.yaml is s3://bucket/shards)."""
    from ifmdm_data.io import storage

    if storage.is_url(str(path)):
        path = _find_remote_curriculum(str(path))
        try:
            text = storage.read_text(path)
        except (OSError, UnicodeDecodeError) as e:   # no permission, endpoint gone since the listing
            raise ConfigError(f"cannot read {path}: {type(e).__name__}: {e}".splitlines()[0][:400]) from None
    else:
        path = Path(path)
        split_file = path if path.suffix == ".parquet" else path / "train.parquet"
        if split_file.is_file() and not (path.is_dir() and (path / "curriculum.yaml").is_file()):
            raise ConfigError(_split_hint(split_file))
        if path.is_dir():
            path = path / "curriculum.yaml"
        if not path.is_file():
            raise ConfigError(f"no curriculum at {path}: run `ifmdm-data filter ... -o {path.parent}` "
                              f"(it writes the default) or copy {DEFAULT_CURRICULUM}")
        text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a curriculum (a YAML mapping with stage1.levels)")
    where = str(path)
    s1 = data.get("stage1") or {}
    s1 = _typed(Stage1Plan, s1, f"{where}: stage1")
    loss = LossWeights(**_typed(LossWeights, s1.pop("loss", {}) or {}, f"{where}: stage1.loss"))
    levels = []
    for i, lv in enumerate(s1.pop("levels", []) or []):
        w = f"{where}: stage1.levels[{i}]"
        if not isinstance(lv, dict) or not {"name", "subsets", "steps", "lr"} <= set(lv) <= {
                "name", "subsets", "steps", "lr", "shards"}:
            raise ConfigError(f"{w} needs name, subsets, steps, lr (and optionally shards)")
        subs = lv["subsets"] if isinstance(lv["subsets"], list) else [lv["subsets"]]
        bad = [s for s in subs if s not in LEVEL_SUBSETS]
        if bad or not subs:
            raise ConfigError(f"{w}.subsets: unknown subset {bad[0] if bad else '(empty)'!r} (use {LEVEL_SUBSETS})")
        if not isinstance(lv["steps"], int) or lv["steps"] < 1:
            raise ConfigError(f"{w}.steps must be an integer >= 1")
        if not isinstance(lv["lr"], (int, float)) or lv["lr"] <= 0:
            raise ConfigError(f"{w}.lr must be > 0")
        lv_shards = None
        if "shards" in lv:
            if not isinstance(lv["shards"], str) or not lv["shards"].strip():
                raise ConfigError(f"{w}.shards must be a folder path (relative to {storage.parent(path)}), "
                                  f"got {lv['shards']!r}")
            lv_shards = _shards_location(lv["shards"], path)
        levels.append(Level(str(lv["name"]), subs, int(lv["steps"]), float(lv["lr"]), lv_shards))
    if not levels:
        raise ConfigError(f"{where}: stage1.levels is empty")
    plan = Stage1Plan(**s1, loss=loss, levels=levels)
    plan.model_config(f"{where}: stage1")          # unknown size or bad ablation value: one line now
    s2 = _typed(Stage2Plan, data.get("stage2") or {}, f"{where}: stage2")
    plan2 = Stage2Plan(**s2)
    if plan2.beta_schedule not in ("linear", "cosine"):
        raise ConfigError(f"{where}: stage2.beta_schedule must be linear or cosine")
    _check_stage2(plan2, f"{where}: stage2")
    shards = _shards_location(data.get("shards", "../shards"), path)
    return Curriculum(path=path, shards=shards, stage1=plan, stage2=plan2)


def _shards_location(value, curriculum: Path | str) -> Path | str:
    """A `shards:` value: an object-storage URL stays a str (s3://bucket/shards, no trailing
    '/'); a local path becomes absolute, relative to the curriculum's folder; a relative path
    in a curriculum on object storage is a URL relative to the curriculum's prefix."""
    import posixpath

    from ifmdm_data.io import storage

    if isinstance(value, str) and storage.is_url(value):
        return value.rstrip("/")
    p = Path(value)
    if p.is_absolute():
        return p
    if storage.is_url(str(curriculum)):
        scheme, rest = str(curriculum).split("://", 1)
        bucket, _, key = rest.partition("/")
        folder = posixpath.dirname(key)
        rel = posixpath.normpath(posixpath.join(folder, str(value)))
        if rel == ".." or rel.startswith("../"):
            raise ConfigError(f"{curriculum}: shards {value!r} is outside the bucket {scheme}://{bucket}; "
                              f"give a full URL ({scheme}://{bucket}/shards)")
        return f"{scheme}://{bucket}" if rel == "." else f"{scheme}://{bucket}/{rel}"
    return (curriculum.parent / p).resolve()


def _check_stage2(plan: Stage2Plan, where: str) -> None:
    """Build the stage-2 config the plan names (without weights) so that a bad model name or
    ablation value fails when the curriculum is read, not hours later after stage 1."""
    from dataclasses import replace
    from ifmdm_model.stage2.model import STAGE2_CONFIGS
    if plan.model not in STAGE2_CONFIGS:
        raise ConfigError(f"{where}.model: unknown stage-2 model {plan.model!r}; known: {sorted(STAGE2_CONFIGS)}")
    base = STAGE2_CONFIGS[plan.model]
    try:
        cfg = replace(base, **_typed_overrides(base, plan.model_overrides(), where))
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    cfg.validate(where)


def _typed_overrides(base, overrides: dict, where: str) -> dict:
    """`overrides` checked against the types of the model config `base`'s defaults (a string
    where an integer belongs is a one-line ConfigError naming the key, not a TypeError deep
    inside the model's validation); integers are accepted where a float belongs."""
    out = {}
    for k, v in overrides.items():
        if not hasattr(base, k):
            out[k] = v                      # the model's config rejects it by name
            continue
        d = getattr(base, k)
        if isinstance(d, bool):
            ok = isinstance(v, bool)
            want = "true or false"
        elif isinstance(d, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
            want = "an integer"
        elif isinstance(d, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            want = "a number"
            v = float(v) if ok else v
        elif isinstance(d, str):
            ok = isinstance(v, str)
            want = "a string"
        else:
            ok, want = True, ""
        if not ok:
            raise ConfigError(f"{where}.{k} must be {want}, got {v!r}")
        out[k] = v
    return out
