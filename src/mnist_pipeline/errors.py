"""The project's own error types: what a user can fix, told in one line; and what such a line may show of a URL."""

from __future__ import annotations

import re
import urllib.parse

# scheme://user:PASSWORD@host...: the password as SQLAlchemy reads it (up to the first @)
_PASSWORD = re.compile(r"(//[^:/@]*:)([^@]*)@")


class PipelineError(Exception):
    """A mistake or fault the user can act on; stages print it as one line and exit non-zero."""


class DataError(PipelineError):
    """MNIST could not be fetched, verified or parsed."""


def without_password(url: str, text: str | None = None) -> str:
    """`text` (by default the URL itself) with the URL's password, wherever it appears, as ***."""
    text = url if text is None else text
    found = _PASSWORD.search(url)
    if not found or not found.group(2):
        return text
    text = text.replace(url, _PASSWORD.sub(r"\1***@", url, count=1))
    for secret in {found.group(2), urllib.parse.unquote(found.group(2))}:  # as typed, and as the driver got it
        text = text.replace(secret, "***")
    return text
