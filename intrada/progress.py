"""Progress of long loops: a tqdm bar (rate, ETA) on a terminal, plain periodic log
lines otherwise (DVC logs, CI, `nohup`), and nothing from processes other than the main."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("progress")

# Plain lines: one per this share of the loop.
LINE_EVERY = 0.1


def progress(items: Iterable[T], total: int, desc: str, compute=None) -> Iterator[T]:
    if compute is not None and not compute.main:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
        return
    start, next_line = time.perf_counter(), LINE_EVERY
    for done, item in enumerate(items, start=1):
        yield item
        if total and (done / total >= next_line or done == total):
            elapsed = time.perf_counter() - start
            rate = done / elapsed if elapsed > 0 else float("inf")
            eta = (total - done) / rate if rate > 0 else 0.0
            log.info(
                "%s %d/%d (%.0f%%) %.2f it/s, %.0f s elapsed, ETA %.0f s",
                desc,
                done,
                total,
                100 * done / total,
                rate,
                elapsed,
                eta,
            )
            while next_line <= done / total:
                next_line += LINE_EVERY
