"""What every stage entry point shares: logging set-up and one-line user errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from intrada.errors import IntradaError


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a user error prints one line `error: ...` and exits 1."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        main()
    except IntradaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
