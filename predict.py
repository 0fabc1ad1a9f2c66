#!/usr/bin/env python
"""Classify images of digits: `.venv/bin/python predict.py digit.png photo.jpg [--checkpoint models/model.pt]`."""

from mnist_pipeline.cli import run_stage
from mnist_pipeline.serving.command import main

if __name__ == "__main__":
    run_stage(main)
