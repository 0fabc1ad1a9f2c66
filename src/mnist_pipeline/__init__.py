"""MNIST CNN pipeline: the library behind the DVC stages in `stages/`."""

# First, before any module of the package imports torch or MLflow: the stages' quick exit must be the
# first exit handler registered, so that it runs after all the others (mnist_pipeline.cli).
from mnist_pipeline import cli as _cli  # noqa: F401
