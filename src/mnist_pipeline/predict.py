"""Classify images of digits (PNG or JPEG, any size) with the registered champion model or a checkpoint;
`--serve` starts the page (serve.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.images import load_digit


def probabilities_from_checkpoint(pixels: np.ndarray, checkpoint_path: str | Path) -> np.ndarray:
    """Class probabilities (N, 10) for raw pixels (N, 28, 28) from a training checkpoint."""
    return checkpoint_classifier(checkpoint_path)[0](pixels)


def checkpoint_classifier(checkpoint_path: str | Path):
    """(probabilities, run id): a function from raw pixels (N, 28, 28) to class probabilities (N, 10), loaded once
    from a training checkpoint, and the MLflow run the checkpoint names (None without one). Imports no MLflow."""
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

    return probabilities, checkpoint.get("mlflow_run_id")


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
    """`predict.py digit.png ...`: print the predicted digit and its confidence for each image; `--serve`: the page."""
    # From config, not the registry: with --checkpoint, nothing here may import MLflow.
    from mnist_pipeline.config import CHAMPION_ALIAS, load_config

    parser = argparse.ArgumentParser(description="Classify images of handwritten digits, one digit per image, "
                                                 "or serve a page to draw or drop them on (--serve).")
    parser.add_argument("images", nargs="*", help="PNG or JPEG files, one digit each: any size, grey, RGB or RGBA, "
                        "either polarity; framed as MNIST framed its digits (docs/predict.md)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoint such as models/model.pt (no MLflow needed)")
    source.add_argument("--model", help=f"an MLflow model URI (default: models:/<registered_model>@{CHAMPION_ALIAS})")
    page = parser.add_argument_group("the page (docs/serve.md)")
    page.add_argument("--serve", action="store_true", help="serve a page to draw or drop a digit on, and POST /predict, "
                      f"answered by the {CHAMPION_ALIAS} (followed when its alias moves) or --checkpoint")
    page.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)")
    page.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    page.add_argument("--mlflow-ui", help="the MLflow UI's address, such as http://127.0.0.1:5000, for a link to the "
                      "model's run (default: MLFLOW_TRACKING_URI when it is a server)")
    args = parser.parse_args(argv)

    if args.serve:
        from mnist_pipeline.serve import serve

        if args.images:
            raise PipelineError(f"--serve classifies what the page sends; leave out the files ({args.images[0]} ...)")
        if args.model:
            raise PipelineError("--serve answers with the champion or with --checkpoint; --model is for files")
        serve(args.host, args.port, checkpoint=args.checkpoint, mlflow_ui=args.mlflow_ui)
        return
    if not args.images:
        raise PipelineError("give one or more image files to classify, or --serve to start the page")
    given = [flag for flag, value in (("--host", args.host != "127.0.0.1"), ("--port", args.port != 8000),
                                      ("--mlflow-ui", args.mlflow_ui)) if value]
    if given:
        raise PipelineError(f"{given[0]} is for --serve; leave it out when classifying files")

    pixels = np.stack([load_digit(path) for path in args.images])  # every file checked before the model loads
    if args.checkpoint:
        probabilities = probabilities_from_checkpoint(pixels, args.checkpoint)
    else:
        model_uri = args.model or f"models:/{load_config().tracking.registered_model}@{CHAMPION_ALIAS}"
        probabilities = probabilities_from_mlflow(pixels, model_uri)
    for path, row in zip(args.images, probabilities):
        print(f"{path}: {int(row.argmax())} ({float(row.max()):.1%})")
