"""User-facing errors: one clear line and exit code 2, never a traceback for bad input."""

from __future__ import annotations

import functools
import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input from the user. The message names the file, the row or id, and the fix."""


def cli_main(func):
    """Decorate a CLI ``main``: a UserError becomes ``error: <message>`` on stderr and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
