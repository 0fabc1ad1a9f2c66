"""Test-set metrics: accuracy, loss, per-class accuracy, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from mnist_pipeline.data import Split
from mnist_pipeline.history import Mistake
from mnist_pipeline.shards import Workers, predict_in_chunks

# Images per forward pass. A constant, not a param: on a CPU each chunk is computed on one thread,
# and its boundaries must not move for the logits to keep their bits (mnist_pipeline.shards).
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


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [true, predicted] as a (num_classes, num_classes) int64 tensor."""
    flat = labels.to(torch.int64) * num_classes + predictions.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
            precision: str = "fp32", workers: Optional[Workers] = None) -> torch.Tensor:
    """Logits (N, classes), in fp32, for images already on the model's device, in batches.

    With `workers`, the batches run side by side, each on one thread: the same bits on any number of threads.
    """
    model.eval()

    def logits(batch: torch.Tensor) -> torch.Tensor:
        # autocast is per thread: entered by the thread that runs the batch.
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model(batch).float()

    if workers is not None:
        return predict_in_chunks(images, workers, logits, batch_size)
    return torch.cat([logits(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, num_classes: int = 10, batch_size: int = EVAL_BATCH_SIZE,
             precision: str = "fp32", workers: Optional[Workers] = None) -> EvalResult:
    """Accuracy, mean loss and confusion matrix of `model` on `split` (on the model's device)."""
    return metrics_from_logits(predict(model, split.images, batch_size, precision, workers), split.labels, num_classes)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> EvalResult:
    """Accuracy, mean loss and confusion matrix of logits (N, classes) against labels (N,)."""
    loss = F.cross_entropy(logits, labels, reduction="sum")
    matrix = confusion_matrix(labels, logits.argmax(dim=1), num_classes)
    correct = matrix.diagonal().sum()
    # One host sync for the whole pass, not one per batch.
    loss, correct, matrix = loss.item(), correct.item(), matrix.cpu().tolist()
    return EvalResult(accuracy=correct / len(labels), loss=loss / len(labels), confusion_matrix=matrix)


def mistakes_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> list[Mistake]:
    """The misclassified rows of logits (N, classes) against labels (N,), most confident first."""
    confidence, predicted = torch.softmax(logits, dim=1).max(dim=1)
    wrong = (predicted != labels).nonzero().flatten().tolist()
    mistakes = [Mistake(i, int(labels[i]), int(predicted[i]), round(float(confidence[i]), 6)) for i in wrong]
    return sorted(mistakes, key=lambda m: (-m.confidence, m.index))
