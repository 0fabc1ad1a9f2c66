"""MNIST CNN pipeline: the library behind the DVC stages in `stages/`."""
