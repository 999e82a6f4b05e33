"""Command-line tools: ssl-train, ssl-eval, ssl-export (thin layers over the engine)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from ..errors import TrainingError, UserError


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line starting with ``error:``, exit status 2
    (argparse printed the whole usage first). Sub-command parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def run_cli(fn: Callable[[], int | None]) -> int:
    """Bad input: one line on stderr, exit 2. Failed training: exit 1."""
    try:
        return fn() or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"training failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
