"""The training curriculum (manifests/curriculum.yaml): dataclasses, loading, validation."""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import List, Optional

import yaml

from ifmdm_data.errors import ConfigError

DEFAULT_CURRICULUM = Path(__file__).parent / "configs" / "curriculum.yaml"
SUBSETS = ("coarse", "lip", "hard")


@dataclass
class Level:
    name: str
    subsets: List[str]
    steps: int
    lr: float


@dataclass
class LossWeights:
    l1: float = 1.0
    perceptual: float = 10.0
    local_flow: float = 0.1
    gan: float = 0.0


@dataclass
class Stage1Plan:
    model: str = "S1-256"
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

    def position(self, global_step: int) -> tuple[int, int]:
        """(level index, step within the level) of a global step."""
        for i, lv in enumerate(self.levels):
            if global_step < lv.steps:
                return i, global_step
            global_step -= lv.steps
        return len(self.levels), 0


@dataclass
class Stage2Plan:
    model: str = "M2-A0"            # M2-tiny (tests), M2-A0 (ifmdm_model/stage2.py)
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


@dataclass
class Curriculum:
    path: Path
    shards: Path
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


def load_curriculum(path: str | Path) -> Curriculum:
    """Load `path` (a curriculum.yaml, or a manifests folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "curriculum.yaml"
    if not path.is_file():
        raise ConfigError(f"no curriculum at {path}: run `ifmdm-data filter ... -o {path.parent}` "
                          f"(it writes the default) or copy {DEFAULT_CURRICULUM}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    where = str(path)
    s1 = data.get("stage1") or {}
    s1 = _typed(Stage1Plan, s1, f"{where}: stage1")
    loss = LossWeights(**_typed(LossWeights, s1.pop("loss", {}) or {}, f"{where}: stage1.loss"))
    levels = []
    for i, lv in enumerate(s1.pop("levels", []) or []):
        w = f"{where}: stage1.levels[{i}]"
        if not isinstance(lv, dict) or set(lv) != {"name", "subsets", "steps", "lr"}:
            raise ConfigError(f"{w} needs exactly name, subsets, steps, lr")
        subs = lv["subsets"] if isinstance(lv["subsets"], list) else [lv["subsets"]]
        bad = [s for s in subs if s not in SUBSETS]
        if bad or not subs:
            raise ConfigError(f"{w}.subsets: unknown subset {bad[0] if bad else '(empty)'!r} (use {SUBSETS})")
        if not isinstance(lv["steps"], int) or lv["steps"] < 1:
            raise ConfigError(f"{w}.steps must be an integer >= 1")
        if not isinstance(lv["lr"], (int, float)) or lv["lr"] <= 0:
            raise ConfigError(f"{w}.lr must be > 0")
        levels.append(Level(str(lv["name"]), subs, int(lv["steps"]), float(lv["lr"])))
    if not levels:
        raise ConfigError(f"{where}: stage1.levels is empty")
    plan = Stage1Plan(**s1, loss=loss, levels=levels)
    s2 = _typed(Stage2Plan, data.get("stage2") or {}, f"{where}: stage2")
    plan2 = Stage2Plan(**s2)
    if plan2.beta_schedule not in ("linear", "cosine"):
        raise ConfigError(f"{where}: stage2.beta_schedule must be linear or cosine")
    shards = Path(data.get("shards", "../shards"))
    if not shards.is_absolute():
        shards = (path.parent / shards).resolve()
    return Curriculum(path=path, shards=shards, stage1=plan, stage2=plan2)


def write_default_curriculum(manifest_dir: str | Path) -> Optional[Path]:
    """Copy the default curriculum into a manifests folder unless one is there."""
    dst = Path(manifest_dir) / "curriculum.yaml"
    if dst.exists():
        return None
    tmp = dst.with_name(".curriculum.yaml.tmp")
    shutil.copyfile(DEFAULT_CURRICULUM, tmp)
    tmp.replace(dst)
    return dst
