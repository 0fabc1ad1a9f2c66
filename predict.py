#!/usr/bin/env python
"""Classify images of digits: `.venv/bin/python predict.py digit.png photo.jpg [--checkpoint models/model.pt]`."""

import sys
from pathlib import Path

# The library lives in src/ and is not installed (see dvc.yaml's PYTHONPATH=src).
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from mnist_pipeline.cli import run_stage  # noqa: E402
from mnist_pipeline.predict import main  # noqa: E402

if __name__ == "__main__":
    run_stage(main)
