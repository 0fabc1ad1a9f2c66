"""Test-set metrics: per-image scores, then accuracy, loss, per-class accuracy, confusion matrix and mistakes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from mnist_pipeline.compute.shards import Workers, in_chunks
from mnist_pipeline.data import Split
from mnist_pipeline.records import Mistake

if TYPE_CHECKING:
    from mnist_pipeline.compute.kernels import ReferenceKernels

# Images per forward pass. A constant, not a param: on a CPU each chunk is computed on one thread,
# and its boundaries must not move for the logits to keep their bits (mnist_pipeline.compute.shards).
EVAL_BATCH_SIZE = 1000


@dataclass(frozen=True)
class EvalResult:
    """Metrics of a model on one split."""

    accuracy: float  # fraction correct, 0..1
    loss: float  # mean cross-entropy per image
    confusion_matrix: list[list[int]]  # [true][predicted] counts

    @property
    def per_class_accuracy(self) -> list[float]:
        """Recall of each class: correct / images of that class (0.0 for a class with no images)."""
        return [row[i] / sum(row) if sum(row) else 0.0 for i, row in enumerate(self.confusion_matrix)]


@dataclass(frozen=True)
class Scores:
    """What a model made of each image of a split, in the split's order."""

    loss: torch.Tensor  # (N,) float32 cross-entropy against the label
    predicted: torch.Tensor  # (N,) int64, the most probable digit (the first, on a tie)
    confidence: torch.Tensor  # (N,) float32, its probability


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [true, predicted] as a (num_classes, num_classes) int64 tensor."""
    flat = labels.to(torch.int64) * num_classes + predictions.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "fp32",
    workers: Workers | None = None,
) -> torch.Tensor:
    """Logits (N, classes), in fp32, for images already on the model's device, in batches.

    With `workers`, the batches run side by side, each on one thread: the same bits on any number of threads.
    """
    model.eval()

    def logits(batch: torch.Tensor) -> torch.Tensor:
        # autocast is per thread: entered by the thread that runs the batch.
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model(batch).float()

    if workers is not None:
        return torch.cat(in_chunks(len(images), batch_size, workers, lambda part: logits(images[part])))
    return torch.cat([logits(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def scores_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> Scores:
    """Scores from torch's arithmetic on logits (N, classes) against labels (N,)."""
    logits = logits.float()
    predicted = logits.argmax(dim=1)
    confidence = torch.softmax(logits, dim=1).gather(1, predicted[:, None])[:, 0]
    return Scores(F.cross_entropy(logits, labels, reduction="none"), predicted, confidence)


@torch.no_grad()
def score(
    model: nn.Module,
    split: Split,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "fp32",
    workers: Workers | None = None,
    kernels: ReferenceKernels | None = None,
) -> Scores:
    """Every image of `split` (on the model's device) scored by `model`, in fixed chunks.

    With `kernels` (the reference network on a CPU, mnist_pipeline.compute.kernels) the project's kernels score it:
    the same bits on any CPU; otherwise torch's layers do.
    """
    if kernels is None:
        return scores_from_logits(predict(model, split.images, batch_size, precision, workers), split.labels)
    workers = workers or Workers(1)
    chunks = in_chunks(
        len(split), batch_size, workers, lambda part: kernels.score(split.images[part], split.labels[part])
    )
    return Scores(*(torch.cat(columns) for columns in zip(*chunks, strict=True)))


def metrics(scores: Scores, labels: torch.Tensor, num_classes: int = 10) -> EvalResult:
    """Accuracy, mean loss and confusion matrix of `scores` against `labels`.

    The mean loss is math.fsum's correctly rounded sum of the per-image losses: a function of those
    values alone, not of the order or vector width a sum was taken in.
    """
    matrix = confusion_matrix(labels, scores.predicted, num_classes)
    correct = int(matrix.diagonal().sum())
    loss = math.fsum(scores.loss.cpu().tolist())  # one host sync for the whole pass
    return EvalResult(accuracy=correct / len(labels), loss=loss / len(labels), confusion_matrix=matrix.cpu().tolist())


def evaluate(
    model: nn.Module,
    split: Split,
    num_classes: int = 10,
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "fp32",
    workers: Workers | None = None,
    kernels: ReferenceKernels | None = None,
) -> EvalResult:
    """Accuracy, mean loss and confusion matrix of `model` on `split` (on the model's device)."""
    scores = score(model, split, batch_size=batch_size, precision=precision, workers=workers, kernels=kernels)
    return metrics(scores, split.labels, num_classes)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> EvalResult:
    """Accuracy, mean loss and confusion matrix of logits (N, classes) against labels (N,)."""
    return metrics(scores_from_logits(logits, labels), labels, num_classes)


def mistakes(scores: Scores, labels: torch.Tensor) -> list[Mistake]:
    """The misclassified images, most confident first."""
    labels, predicted, confidence = labels.cpu(), scores.predicted.cpu(), scores.confidence.cpu()
    wrong = (predicted != labels).nonzero().flatten().tolist()
    found = [Mistake(i, int(labels[i]), int(predicted[i]), round(float(confidence[i]), 6)) for i in wrong]
    return sorted(found, key=lambda m: (-m.confidence, m.index))
