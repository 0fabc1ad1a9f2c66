"""The project's own error types: what a user can fix, told in one line."""


class PipelineError(Exception):
    """A mistake or fault the user can act on; stages print it as one line and exit non-zero."""


class DataError(PipelineError):
    """MNIST could not be fetched, verified or parsed."""
