"""params.yaml, parsed once into frozen, typed, validated config.

Every stage calls `load_config()` first, so that a typo, a wrong type or an
out-of-range value stops the run with one line before any data is touched.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_pipeline.errors import PipelineError

PARAMS_FILE = "params.yaml"


class ConfigError(PipelineError):
    """params.yaml is missing, malformed, or holds a value that is not allowed."""


def _spec(*, low=None, high=None, low_open=False, choices=None, auto=False, doc=""):
    """Field metadata: the allowed range or choices, checked on load; `auto` also allows the string "auto"."""
    return {"low": low, "high": high, "low_open": low_open, "choices": choices, "auto": auto, "doc": doc}


TRAINING_SPLIT_IMAGES = 60000  # MNIST's training split; its test split has 10000


@dataclass(frozen=True)
class DataConfig:
    """Where MNIST lives, how it is normalised, and how much of it a run uses."""

    dir: str = "data/mnist"
    mean: float = field(default=0.1307, metadata=_spec(low=0.0, high=1.0))
    std: float = field(default=0.3081, metadata=_spec(low=0.0, high=1.0, low_open=True))
    max_train_images: int | None = field(default=None, metadata=_spec(low=1, high=60000))
    max_test_images: int | None = field(default=None, metadata=_spec(low=1, high=10000))
    # The last N training images, held out: searches and model selection score on them, never on the test set.
    validation_images: int = field(default=0, metadata=_spec(low=0, high=30000))

    @property
    def training_images(self) -> int | None:
        """How many of the training split's images train: all but the held-out ones, at most max_train_images."""
        if not self.validation_images:
            return self.max_train_images
        remaining = TRAINING_SPLIT_IMAGES - self.validation_images
        return remaining if self.max_train_images is None else min(self.max_train_images, remaining)


@dataclass(frozen=True)
class PathsConfig:
    """Every file the stages hand to each other; dvc.yaml reads the same values."""

    checkpoint: str = "models/model.pt"
    train_metrics: str = "metrics/train.json"
    history: str = "metrics/history.csv"
    eval_metrics: str = "metrics/eval.json"
    confusion: str = "metrics/confusion.csv"
    mistakes: str = "metrics/mistakes.csv"
    eval_run: str = "metrics/eval_run.json"
    mlflow_run: str = "metrics/mlflow_run.json"
    plots_dir: str = "plots"
    registered: str = "models/registered.json"


@dataclass(frozen=True)
class PlotsConfig:
    """How the PNG plots look; changing these reruns the plot stage and register, which logs the PNGs."""

    dpi: int = field(default=100, metadata=_spec(low=20, high=600))
    width: float = field(default=6.0, metadata=_spec(low=1.0, high=40.0))
    height: float = field(default=4.0, metadata=_spec(low=1.0, high=40.0))
    cmap: str = "Blues"
    mistakes_shown: int = field(default=36, metadata=_spec(low=1, high=400))


# The registry alias of the best model so far. A name, not a param: predict.py and the README use it.
CHAMPION_ALIAS = "champion"


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: which experiment the runs go to, whether the model is logged, and its registry name."""

    experiment: str = "mnist-cnn"
    log_model: bool = True
    registered_model: str = "mnist-cnn"


@dataclass(frozen=True)
class AugmentConfig:
    """Random shifts and rotations of each training batch, on the device; 0 turns each off (the default)."""

    shift: float = field(default=0.0, metadata=_spec(low=0.0, high=6.0))  # most pixels moved, each axis
    rotate: float = field(default=0.0, metadata=_spec(low=0.0, high=45.0))  # most degrees turned, either way

    @property
    def enabled(self) -> bool:
        return self.shift > 0 or self.rotate > 0


ARCHITECTURES = ("reference", "compact", "wide")  # built by mnist_pipeline.model.build_model
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "onecycle", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """The knobs of one training run (the top level of params.yaml)."""

    lr: float = field(default=0.01, metadata=_spec(low=0.0, low_open=True, high=10.0))
    momentum: float = field(default=0.5, metadata=_spec(low=0.0, high=1.0, doc="SGD momentum; Adam's beta1"))
    batch_size: int = field(default=64, metadata=_spec(low=1, high=60000))
    epochs: int = field(default=10, metadata=_spec(low=1, high=1000))
    seed: int = field(default=1, metadata=_spec(low=0, high=2**32 - 1))
    device: str = field(default="auto", metadata=_spec(choices=("auto", "cpu", "cuda")))
    deterministic: bool = True  # GPU only: mnist_pipeline.compute.device.configure_determinism
    model: str = field(default="reference", metadata=_spec(choices=ARCHITECTURES))
    optimizer: str = field(default="sgd", metadata=_spec(choices=OPTIMIZERS))
    schedule: str = field(default="constant", metadata=_spec(choices=SCHEDULES))
    weight_decay: float = field(default=0.0, metadata=_spec(low=0.0, high=1.0))
    label_smoothing: float = field(default=0.0, metadata=_spec(low=0.0, high=0.5))
    precision: str = field(default="fp32", metadata=_spec(choices=("fp32", "bf16")))
    compile: bool = False
    # "auto": mnist_pipeline.compute.distributed.resolve_nproc picks the count on the machine that trains.
    nproc: int | str = field(default="auto", metadata=_spec(low=1, high=64, auto=True))
    # "auto": the reference network's first block as one fused CPU kernel where it applies (mnist_pipeline.fused).
    kernels: str = field(default="auto", metadata=_spec(choices=("auto", "torch")))
    # Every batch is split into this many parts, each computed on one thread, their gradients added
    # in order (mnist_pipeline.compute.shards): the results depend on `shards`, never on `threads`.
    shards: int = field(default=2, metadata=_spec(low=1, high=256))
    # "auto": mnist_pipeline.compute.threads picks the count from the shards and this machine's cores (never its load);
    # more than the cores here is refused on load (load_config), since it only slows a CPU training.
    threads: int | str = field(default="auto", metadata=_spec(low=1, high=1024, auto=True))


@dataclass(frozen=True)
class Config:
    """The whole of params.yaml."""

    train: TrainConfig
    augment: AugmentConfig = AugmentConfig()
    data: DataConfig = DataConfig()
    paths: PathsConfig = PathsConfig()
    plots: PlotsConfig = PlotsConfig()
    tracking: TrackingConfig = TrackingConfig()

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, shaped like params.yaml (for checkpoints and MLflow)."""
        sections = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {**sections.pop("train"), **sections}


# Sections of params.yaml besides the top-level training knobs.
SECTIONS = {
    "augment": AugmentConfig,
    "data": DataConfig,
    "paths": PathsConfig,
    "plots": PlotsConfig,
    "tracking": TrackingConfig,
}


def _show_key(key: Any) -> str:
    """A key as the user typed it, quoted when it holds spaces or control characters (one line, always)."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key and key else repr(key)


def _type_name(tp) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names[tp]


def _check_value(key: str, value: Any, f: dataclasses.Field, hints: dict) -> Any:
    """Return `value` converted to the field's type, or raise ConfigError naming `key`."""
    tp = hints[f.name]
    spec: Mapping[str, Any] = f.metadata or {}
    auto = spec.get("auto", False)
    if auto and value == "auto":
        return value
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        optional = type(None) in args
        # Union[int, str] with `auto` is an int or the one string "auto", checked above.
        tp = next(a for a in args if a is not type(None) and not (auto and a is str))
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: got null; expected {_type_name(tp)}{' or auto' if auto else ''}")
    # bool is a subclass of int in Python; `epochs: true` must not pass as 1.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            value = float(value)
    else:
        ok = isinstance(value, tp)
    if not ok:
        allowed = _type_name(tp) + (" or null" if optional else "") + (" or auto" if auto else "")
        raise ConfigError(f"{key}: got {value!r}; expected {allowed}")

    choices = spec.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: got {value!r}; allowed: {', '.join(choices)}")
    low, high = spec.get("low"), spec.get("high")
    too_low = low is not None and (value <= low if spec.get("low_open") else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lower = f"> {low}" if spec.get("low_open") else f">= {low}"
        bounds = " and ".join(
            b for b in (lower if low is not None else "", f"<= {high}" if high is not None else "") if b
        )
        raise ConfigError(f"{key}: got {value!r}; must be {bounds}")
    return value


def _build(cls, raw: Any, prefix: str):
    """Build dataclass `cls` from mapping `raw`, rejecting unknown keys and bad values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'params.yaml'}: expected a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ConfigError(f"{prefix}{_show_key(unknown[0])}: unknown key; allowed here: {', '.join(fields)}")
    values = {name: _check_value(prefix + name, raw[name], fields[name], hints) for name in fields if name in raw}
    return cls(**values)


def parse_config(raw: Any) -> Config:
    """Validate a params mapping (as loaded from YAML) and return the typed Config."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: expected a mapping of keys to values, got {type(raw).__name__}")
    top_level = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in raw if k not in top_level and k not in SECTIONS]
    if unknown:
        allowed = ", ".join([*top_level, *SECTIONS])
        raise ConfigError(f"{_show_key(unknown[0])}: unknown key; allowed at the top level: {allowed}")
    train = _build(TrainConfig, {k: v for k, v in raw.items() if k in top_level}, "")
    if train.shards > train.batch_size:
        raise ConfigError(
            f"shards: got {train.shards}; a batch of {train.batch_size} images (batch_size) "
            f"cannot be split into more parts than it has images, so at most {train.batch_size}"
        )
    sections = {
        name: _build(cls, raw[name] if raw.get(name) is not None else {}, name + ".") for name, cls in SECTIONS.items()
    }
    data = sections["data"]
    remaining = TRAINING_SPLIT_IMAGES - data.validation_images
    if data.validation_images and data.max_train_images is not None and data.max_train_images > remaining:
        raise ConfigError(
            f"data.max_train_images: got {data.max_train_images}; with data.validation_images "
            f"{data.validation_images} held out, {remaining} training images remain, so at most {remaining}"
        )
    return Config(train=train, **sections)


def load_config(path: str | Path = PARAMS_FILE) -> Config:
    """Read and validate params.yaml; raise ConfigError (one line) when it is missing or wrong."""
    return parse_config(read_yaml(path, "run from the repository root, where params.yaml lives"))


def read_yaml(path: str | Path, where_it_is: str, error: type[ConfigError] = ConfigError) -> Any:
    """The YAML in the file at `path`; `error` (one line) when it is missing, saying `where_it_is`, or not YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: not found; {where_it_is}") from None
    # Imported here so that the training core runs where only torch is installed.
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise error(f"{path}: invalid YAML{where}: {problem}") from None


# Settings that cannot change a training's numbers (`threads`, the speed; plots; where files go; where MLflow
# logs): the checkpoint keeps none of them, so that it is a function of what trains alone, and a resume ignores them.
NOT_TRAINING = ("threads", "plots", "paths", "tracking")


def training_config(config: dict[str, Any]) -> dict[str, Any]:
    """The params that decide a training's numbers: `config` (params.yaml's form) without NOT_TRAINING."""
    return {key: value for key, value in config.items() if key not in NOT_TRAINING}


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"data": {"mean": 0.1}}` -> `{"data.mean": 0.1}`, the way DVC and MLflow name params."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
