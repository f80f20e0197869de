"""The one exception type that reaches the user as a single line, without a traceback."""

import contextlib
import sys
from typing import Iterator


class GancliError(Exception):
    """A problem the user can fix: the message names it and says how."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a GancliError into one line on stderr and exit status 2."""
    try:
        yield
    except GancliError as exc:
        print(f"gancli: error: {exc}", file=sys.stderr)
        sys.exit(2)
