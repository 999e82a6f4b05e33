"""Command-line tools: ssl-train, ssl-eval, ssl-export (thin layers over the engine)."""

from __future__ import annotations

import sys
from typing import Callable

from ..errors import TrainingError, UserError


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
