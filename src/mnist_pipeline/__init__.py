"""The MNIST pipeline: the core modules here, the subsystems in compute/, tracking/, serving/ and search/."""
