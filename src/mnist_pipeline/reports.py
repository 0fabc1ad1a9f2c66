"""The metric files the stages hand to DVC: JSON metrics, per-epoch history, confusion data.

Each is written atomically: the pipeline's outputs persist across failed runs (dvc.yaml).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_pipeline.files import write_text_atomic
from mnist_pipeline.records import EpochResult, Mistake

HISTORY_FIELDS = ("epoch", "train_loss", "test_loss", "test_accuracy")


def _csv_text(header: Iterable, rows: Iterable[Iterable]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Pretty JSON, keys in the order given, newline-terminated (diff-friendly in git)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_run_id(path: str | Path) -> str | None:
    """The MLflow run id the train stage wrote to `path` (paths.mlflow_run); None when there is none to read."""
    try:
        run_id = read_json(path).get("run_id")
    except (OSError, ValueError, AttributeError):  # missing, half-edited, not an object
        return None
    return run_id if isinstance(run_id, str) else None


def write_history(path: str | Path, history: Iterable[EpochResult]) -> None:
    """One CSV row per epoch; dvc.yaml declares this file as the accuracy and loss plots."""
    rows = [[r.epoch, f"{r.train_loss:.6f}", f"{r.test_loss:.6f}", f"{r.test_accuracy:.6f}"] for r in history]
    write_text_atomic(path, _csv_text(HISTORY_FIELDS, rows))


def read_history(path: str | Path) -> list[EpochResult]:
    """The rows `write_history` wrote."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [
            EpochResult(int(r["epoch"]), float(r["train_loss"]), float(r["test_loss"]), float(r["test_accuracy"]))
            for r in csv.DictReader(f)
        ]


def write_confusion(path: str | Path, confusion_matrix: list[list[int]]) -> None:
    """One (actual, predicted) row per test image, the form DVC's confusion template reads."""
    rows = [
        (actual, predicted)
        for actual, row in enumerate(confusion_matrix)
        for predicted, count in enumerate(row)
        for _ in range(count)
    ]
    write_text_atomic(path, _csv_text(("actual", "predicted"), rows))


def read_confusion(path: str | Path, num_classes: int = 10) -> list[list[int]]:
    """The confusion matrix [actual][predicted] back from `write_confusion`'s rows."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    with Path(path).open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            matrix[int(r["actual"])][int(r["predicted"])] += 1
    return matrix


MISTAKE_FIELDS = ("index", "actual", "predicted", "confidence")


def write_mistakes(path: str | Path, mistakes: Iterable[Mistake]) -> None:
    """One CSV row per misclassified test image."""
    rows = [(m.index, m.actual, m.predicted, f"{m.confidence:.6f}") for m in mistakes]
    write_text_atomic(path, _csv_text(MISTAKE_FIELDS, rows))


def read_mistakes(path: str | Path) -> list[Mistake]:
    """The rows `write_mistakes` wrote."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [
            Mistake(int(r["index"]), int(r["actual"]), int(r["predicted"]), float(r["confidence"]))
            for r in csv.DictReader(f)
        ]


@dataclass(frozen=True)
class EvaluationReport:
    """metrics/eval.json: the evaluate stage's results, the one place that knows the file's shape."""

    test_accuracy: float  # fraction correct, 0..1
    test_loss: float  # mean cross-entropy per image
    test_images: int
    per_class_accuracy: dict[str, float]  # "0".."9" -> recall of that digit
    # On the held-out training images (data.validation_images); None when none are held out.
    val_accuracy: float | None = None
    val_loss: float | None = None
    val_images: int = 0

    def write(self, path: str | Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: str | Path) -> EvaluationReport:
        data = read_json(path)
        optional = {key: None if data.get(key) is None else float(data[key]) for key in ("val_accuracy", "val_loss")}
        return cls(
            float(data["test_accuracy"]),
            float(data["test_loss"]),
            int(data["test_images"]),
            {str(k): float(v) for k, v in data["per_class_accuracy"].items()},
            val_images=int(data.get("val_images", 0)),
            **optional,
        )


@dataclass(frozen=True)
class EvaluationRun:
    """metrics/eval_run.json: how the evaluation ran (it differs run to run, so it stays out of eval.json)."""

    threads: int
    seconds: float

    def write(self, path: str | Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: str | Path) -> EvaluationRun:
        data = read_json(path)
        return cls(int(data["threads"]), float(data["seconds"]))
