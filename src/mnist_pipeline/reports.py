"""The metric files the stages hand to DVC: JSON metrics, per-epoch history, confusion data."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

from mnist_pipeline.training import EpochResult

HISTORY_FIELDS = ("epoch", "train_loss", "test_loss", "test_accuracy")


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Pretty JSON, keys in the order given, newline-terminated (diff-friendly in git)."""
    _prepare(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_history(path: str | Path, history: Iterable[EpochResult]) -> None:
    """One CSV row per epoch; dvc.yaml declares this file as the accuracy and loss plots."""
    with _prepare(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HISTORY_FIELDS)
        for row in history:
            writer.writerow([row.epoch, f"{row.train_loss:.6f}", f"{row.test_loss:.6f}", f"{row.test_accuracy:.6f}"])


def read_history(path: str | Path) -> list[EpochResult]:
    """The rows `write_history` wrote."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [
            EpochResult(int(r["epoch"]), float(r["train_loss"]), float(r["test_loss"]), float(r["test_accuracy"]))
            for r in csv.DictReader(f)
        ]


def write_confusion(path: str | Path, confusion_matrix: list[list[int]]) -> None:
    """One (actual, predicted) row per test image, the form DVC's confusion template reads."""
    with _prepare(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("actual", "predicted"))
        for actual, row in enumerate(confusion_matrix):
            for predicted, count in enumerate(row):
                writer.writerows([(actual, predicted)] * count)


def read_confusion(path: str | Path, num_classes: int = 10) -> list[list[int]]:
    """The confusion matrix [actual][predicted] back from `write_confusion`'s rows."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    with Path(path).open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            matrix[int(r["actual"])][int(r["predicted"])] += 1
    return matrix
