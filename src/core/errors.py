"""User-facing errors: one clear line and exit code 2, never a traceback for bad input."""

from __future__ import annotations

import argparse
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


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (not the whole usage, which for the trainer is 80 lines)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
