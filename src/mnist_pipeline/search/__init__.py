"""Hyper-parameter searches: each trial a DVC experiment, the space from search.yaml, the study in MLflow."""
