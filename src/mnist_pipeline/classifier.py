"""The trained model as a function from framed pixels (N, 28, 28) to the ten class probabilities (N, 10):
from a training checkpoint (torch alone, no MLflow) or from a logged or registered MLflow model.
predict.py and the page of predict.py --serve both answer through it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mnist_pipeline.errors import PipelineError


def probabilities_from_checkpoint(pixels: np.ndarray, checkpoint_path: str | Path) -> np.ndarray:
    """Class probabilities (N, 10) for raw pixels (N, 28, 28) from a training checkpoint."""
    return checkpoint_classifier(checkpoint_path)[0](pixels)


def checkpoint_classifier(checkpoint_path: str | Path):
    """(probabilities, md5): a function from raw pixels (N, 28, 28) to class probabilities (N, 10), loaded once
    from a training checkpoint, and the checkpoint's MD5, as dvc.lock records it. Imports no MLflow."""
    import torch

    from mnist_pipeline.checkpoint import load_checkpoint, model_from_checkpoint, require_complete
    from mnist_pipeline.config import parse_config
    from mnist_pipeline.model import DigitClassifier

    checkpoint = load_checkpoint(checkpoint_path)
    require_complete(checkpoint, checkpoint_path)
    data = parse_config(checkpoint["config"]).data
    classifier = DigitClassifier(model_from_checkpoint(checkpoint), data.mean, data.std).eval()

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            # A copy: the pixels may be read-only (MNIST read with np.frombuffer, for one), which
            # torch.from_numpy warns about.
            return classifier(torch.tensor(pixels).unsqueeze(1)).numpy()

    return probabilities, hashlib.md5(Path(checkpoint_path).read_bytes()).hexdigest()


def probabilities_from_mlflow(pixels: np.ndarray, model_uri: str) -> np.ndarray:
    """Class probabilities (N, 10) for raw pixels (N, 28, 28) from a logged or registered MLflow model."""
    return mlflow_classifier(model_uri)(pixels)


def mlflow_classifier(model_uri: str):
    """A function from raw pixels (N, 28, 28) to class probabilities (N, 10): a logged or registered MLflow
    model (runs:/..., models:/...), loaded once from the store MLFLOW_TRACKING_URI or the project names."""
    import mlflow
    import mlflow.pyfunc

    from mnist_pipeline.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"{model_uri}: cannot load the model ({str(exc).splitlines()[0]}); "
                            "run dvc repro first, or pass --checkpoint models/model.pt") from None

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(pixels[:, None].astype(np.float32)))

    return probabilities
