"""search.yaml, the space a search samples: each param of params.yaml with a range, a list of choices, or a grid.

    lr: {low: 0.001, high: 0.3, log: true}   # a range; log: true samples log-uniformly
    epochs: {low: 1, high: 3}                # a range of integers (both ends integers)
    batch_size: [32, 64, 128]                # choices: the sampler picks among them
    momentum: {grid: [0.5, 0.9]}             # a grid: every value is tried (every entry must then be a grid)

Parsed once, checked against the params' own rules (config.parse_config) before any training:
an unknown param, an empty range or a value the param does not allow stops with one line naming the entry.
Standard library and yaml only; Optuna is imported where trials are sampled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_pipeline.config import SECTIONS, ConfigError, TrainConfig, parse_config, read_yaml

SPACE_FILE = "search.yaml"


class SearchSpaceError(ConfigError):
    """search.yaml (or a fixed -S value of a search) is missing, malformed or not allowed."""


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high`, integers when both ends are; `log` samples log-uniformly."""

    low: int | float
    high: int | float
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


@dataclass(frozen=True)
class Choices:
    """One of `values`, as the sampler sees fit."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Grid:
    """Every one of `values`, exhaustively (with the other entries' grids)."""

    values: tuple[Any, ...]


Entry = Range | Choices | Grid


@dataclass(frozen=True)
class SearchSpace:
    """The params a search varies (dotted names, as `dvc exp run -S` takes them) and how."""

    entries: dict[str, Entry]

    @property
    def is_grid(self) -> bool:
        return all(isinstance(entry, Grid) for entry in self.entries.values())

    def grid(self) -> dict[str, list[Any]]:
        """Optuna's GridSampler's search space, of a grid search (`is_grid`)."""
        grids = {name: entry for name, entry in self.entries.items() if isinstance(entry, Grid)}
        if len(grids) < len(self.entries):
            raise ValueError("not a grid search: it has ranges or choices to sample")
        return {name: list(grid.values) for name, grid in grids.items()}

    def suggest(self, trial) -> dict[str, Any]:
        """One value per entry, asked of an Optuna trial."""
        values: dict[str, Any] = {}
        for name, entry in self.entries.items():
            if isinstance(entry, Range) and entry.integer:
                values[name] = trial.suggest_int(name, entry.low, entry.high, log=entry.log)
            elif isinstance(entry, Range):
                values[name] = trial.suggest_float(name, float(entry.low), float(entry.high), log=entry.log)
            else:
                values[name] = trial.suggest_categorical(name, list(entry.values))
        return values


def known_params() -> set[str]:
    """Every param params.yaml may hold, dotted as DVC names them."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    names |= {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    return names


def nested(assignments: dict[str, Any]) -> dict[str, Any]:
    """{"data.validation_images": 5000} -> {"data": {"validation_images": 5000}}, as params.yaml nests them."""
    out: dict[str, Any] = {}
    for key, value in assignments.items():
        *sections, leaf = key.split(".")
        target = out
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    return out


def _entry(name: str, raw: Any, source: str) -> Entry:
    where = f"{source}: {name}"
    if isinstance(raw, list):
        if not raw:
            raise SearchSpaceError(f"{where}: an empty list of choices; give at least one value")
        return Choices(tuple(raw))
    if not isinstance(raw, dict):
        raise SearchSpaceError(
            f"{where}: got {raw!r}; expected a range {{low: ..., high: ...}}, a list of choices, or {{grid: [...]}}"
        )
    if set(raw) == {"grid"}:
        if not isinstance(raw["grid"], list) or not raw["grid"]:
            raise SearchSpaceError(f"{where}: an empty grid; give at least one value")
        return Grid(tuple(raw["grid"]))
    unknown = set(raw) - {"low", "high", "log"}
    if unknown or not {"low", "high"} <= set(raw):
        raise SearchSpaceError(f"{where}: a range takes low, high and optionally log (got {', '.join(map(str, raw))})")
    low, high, log = raw["low"], raw["high"], raw.get("log", False)
    for end in (low, high):
        if isinstance(end, bool) or not isinstance(end, (int, float)):
            raise SearchSpaceError(f"{where}: low and high must be numbers (got {end!r})")
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{where}: log must be true or false (got {log!r})")
    if not low < high:
        raise SearchSpaceError(f"{where}: an empty range (low {low} is not below high {high})")
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: a log range needs low > 0 (got {low})")
    return Range(low, high, log)


def _values_to_check(entry: Entry) -> list[Any]:
    if isinstance(entry, Range):
        return [entry.low, entry.high]
    return list(entry.values)


def parse_space(raw: Any, source: str = SPACE_FILE) -> SearchSpace:
    """Validate a search space mapping (as loaded from `source`, the file every message names) and return it."""
    if not isinstance(raw, dict) or not raw:
        raise SearchSpaceError(f"{source}: expected a mapping of params to ranges, choices or grids, got {raw!r}")
    known = known_params()
    entries: dict[str, Entry] = {}
    for name, spec in raw.items():
        if name not in known:
            raise SearchSpaceError(
                f"{source}: {name}: not a param of params.yaml (dotted, as dvc exp run -S "
                "takes it: lr, data.max_train_images, ...)"
            )
        entry = _entry(name, spec, source)
        for value in _values_to_check(entry):
            try:
                parse_config(nested({name: value}))
            except ConfigError as exc:
                raise SearchSpaceError(f"{source}: {name}: {exc}") from None
        entries[name] = entry
    kinds = {isinstance(entry, Grid) for entry in entries.values()}
    if kinds == {True, False}:
        raise SearchSpaceError(
            f"{source}: a grid cannot be mixed with ranges or choices; make every entry "
            "a grid, or turn the grids into lists of choices"
        )
    return SearchSpace(entries)


def load_space(path: str | Path = SPACE_FILE) -> SearchSpace:
    """Read and validate search.yaml (or the --space file `path`); one line naming it when it is missing or wrong."""
    return parse_space(read_yaml(path, "give --space, or run from the repository root", SearchSpaceError), str(path))


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`-S key=value` pairs as DVC reads them (YAML values), each checked against the params' rules."""
    import yaml

    known = known_params()
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or key not in known:
            raise SearchSpaceError(
                f"-S {assignment}: expected param=value with a param of params.yaml "
                "(dotted: data.max_train_images=2000)"
            )
        values[key] = yaml.safe_load(text)
        try:
            parse_config(nested({key: values[key]}))
        except ConfigError as exc:
            raise SearchSpaceError(f"-S {assignment}: {exc}") from None
    return values
