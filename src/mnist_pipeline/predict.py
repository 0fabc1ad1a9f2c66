"""Classify images of digits (PNG or JPEG, any size) with the registered champion model or a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.images import load_digit


def probabilities_from_checkpoint(pixels: np.ndarray, checkpoint_path: str | Path) -> np.ndarray:
    """Class probabilities (N, 10) for raw pixels (N, 28, 28) from a training checkpoint."""
    import torch

    from mnist_pipeline.checkpoint import load_checkpoint, model_from_checkpoint, require_complete
    from mnist_pipeline.config import parse_config
    from mnist_pipeline.model import DigitClassifier

    checkpoint = load_checkpoint(checkpoint_path)
    require_complete(checkpoint, checkpoint_path)
    data = parse_config(checkpoint["config"]).data
    classifier = DigitClassifier(model_from_checkpoint(checkpoint), data.mean, data.std).eval()
    with torch.no_grad():
        # A copy: the pixels may be read-only (MNIST read with np.frombuffer, for one), which
        # torch.from_numpy warns about.
        return classifier(torch.tensor(pixels).unsqueeze(1)).numpy()


def probabilities_from_mlflow(pixels: np.ndarray, model_uri: str) -> np.ndarray:
    """Class probabilities (N, 10) for raw pixels (N, 28, 28) from a logged or registered MLflow model."""
    import mlflow
    import mlflow.pyfunc

    from mnist_pipeline.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"{model_uri}: cannot load the model ({str(exc).splitlines()[0]}); "
                            "run dvc repro first, or pass --checkpoint models/model.pt") from None
    return np.asarray(model.predict(pixels[:, None].astype(np.float32)))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`predict.py digit.png ...`: print the predicted digit and its confidence for each image."""
    # From config, not the registry: with --checkpoint, nothing here may import MLflow.
    from mnist_pipeline.config import CHAMPION_ALIAS, load_config

    parser = argparse.ArgumentParser(description="Classify images of handwritten digits, one digit per image.")
    parser.add_argument("images", nargs="+", help="PNG or JPEG files, one digit each: any size, grey, RGB or RGBA, "
                        "either polarity; framed as MNIST framed its digits (docs/predict.md)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoint such as models/model.pt (no MLflow needed)")
    source.add_argument("--model", help=f"an MLflow model URI (default: models:/<registered_model>@{CHAMPION_ALIAS})")
    args = parser.parse_args(argv)

    pixels = np.stack([load_digit(path) for path in args.images])  # every file checked before the model loads
    if args.checkpoint:
        probabilities = probabilities_from_checkpoint(pixels, args.checkpoint)
    else:
        model_uri = args.model or f"models:/{load_config().tracking.registered_model}@{CHAMPION_ALIAS}"
        probabilities = probabilities_from_mlflow(pixels, model_uri)
    for path, row in zip(args.images, probabilities):
        print(f"{path}: {int(row.argmax())} ({float(row.max()):.1%})")
