"""The one exception type that reaches the user as a single line, without a traceback, and
the range checks that raise it."""

import contextlib
import sys
from typing import Any, Iterator, NoReturn


class GancliError(Exception):
    """A problem the user can fix: the message names it and says how."""


class Diverged(GancliError):
    """Training diverged (NaN, inf, or losses beyond the run's limit) and was stopped."""


class SweepInterrupted(KeyboardInterrupt):
    """A signal stopped a sweep's job (its checkpoint saved): the sweep ends, with the signal's
    exit status (130 for Ctrl-C, 143 for SIGTERM) and the report of what ran."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def fail(message: str) -> NoReturn:
    """The one line a user error ends in, on stderr, and exit status 2."""
    print(f"gancli: error: {message}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a GancliError into `fail`'s one line."""
    try:
        yield
    except GancliError as exc:
        fail(str(exc))


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Fail with `key=value is not allowed: allowed` unless `ok`."""
    if not ok:
        raise GancliError(f"{key}={value} is not allowed: {allowed}")


def at_least(obj: Any, prefix: str, minimum: int, *keys: str, off: bool = False) -> None:
    """Each of `obj`'s `keys` must be a whole number >= `minimum` (`off`: 0 turns it off)."""
    allowed = f"a whole number >= {minimum}" + (" (0 turns it off)" if off else "")
    for key in keys:
        value = getattr(obj, key)
        require(value >= minimum, f"{prefix}.{key}" if prefix else key, value, allowed)
