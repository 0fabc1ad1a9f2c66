"""The project's own error type: what a user can fix, told in one line."""


class PipelineError(Exception):
    """A mistake or fault the user can act on; stages print it as one line and exit non-zero."""

