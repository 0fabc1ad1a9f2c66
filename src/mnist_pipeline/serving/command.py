"""Classify images of digits (PNG or JPEG, any size) with the registered champion model or a checkpoint;
`--serve` starts the page (server.py)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.serving.classifier import probabilities_from_checkpoint, probabilities_from_mlflow
from mnist_pipeline.serving.framing import load_digit


def main(argv: Sequence[str] | None = None) -> None:
    """`predict.py digit.png ...`: print the predicted digit and its confidence for each image; `--serve`: the page."""
    # From config, not the registry: with --checkpoint, nothing here may import MLflow.
    from mnist_pipeline.config import CHAMPION_ALIAS, load_config

    parser = argparse.ArgumentParser(
        description="Classify images of handwritten digits, one digit per image, "
        "or serve a page to draw or drop them on (--serve)."
    )
    parser.add_argument(
        "images",
        nargs="*",
        help="PNG or JPEG files, one digit each: any size, grey, RGB or RGBA, "
        "either polarity; framed as MNIST framed its digits (docs/predict.md)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a checkpoint such as models/model.pt (no MLflow needed)")
    source.add_argument(
        "--model",
        help="an MLflow model URI, a model the train stage logged "
        f"(default: models:/<registered_model>@{CHAMPION_ALIAS})",
    )
    page = parser.add_argument_group("the page (docs/serve.md)")
    page.add_argument(
        "--serve",
        action="store_true",
        help="serve a page to draw or drop a digit on, and POST /predict, "
        f"answered by the {CHAMPION_ALIAS} (followed when its alias moves) or --checkpoint",
    )
    page.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)"
    )
    page.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    page.add_argument(
        "--mlflow-ui",
        help="the MLflow UI's address, such as http://127.0.0.1:5000, for a link to the "
        "model's run (default: MLFLOW_TRACKING_URI when it is a server)",
    )
    args = parser.parse_args(argv)

    if args.serve:
        from mnist_pipeline.serving.server import serve

        if args.images:
            raise PipelineError(f"--serve classifies what the page sends; leave out the files ({args.images[0]} ...)")
        if args.model:
            raise PipelineError("--serve answers with the champion or with --checkpoint; --model is for files")
        serve(args.host, args.port, checkpoint=args.checkpoint, mlflow_ui=args.mlflow_ui)
        return
    if not args.images:
        raise PipelineError("give one or more image files to classify, or --serve to start the page")
    given = [
        flag
        for flag, value in (
            ("--host", args.host != "127.0.0.1"),
            ("--port", args.port != 8000),
            ("--mlflow-ui", args.mlflow_ui),
        )
        if value
    ]
    if given:
        raise PipelineError(f"{given[0]} is for --serve; leave it out when classifying files")

    pixels = np.stack([load_digit(path) for path in args.images])  # every file checked before the model loads
    if args.checkpoint:
        probabilities = probabilities_from_checkpoint(pixels, args.checkpoint)
    else:
        model_uri = args.model or f"models:/{load_config().tracking.registered_model}@{CHAMPION_ALIAS}"
        probabilities = probabilities_from_mlflow(pixels, model_uri)
    for path, row in zip(args.images, probabilities, strict=True):
        print(f"{path}: {int(row.argmax())} ({float(row.max()):.1%})")
