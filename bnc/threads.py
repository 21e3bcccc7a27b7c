"""Thread control: the default thread count of every kernel call."""
from __future__ import annotations

import contextlib

from bnc._core import get_num_threads, openmp_enabled, set_num_threads

__all__ = ["get_num_threads", "set_num_threads", "num_threads", "openmp_enabled"]


@contextlib.contextmanager
def num_threads(n):
    """Context manager: use n threads by default inside the block.

    >>> with bnc.num_threads(1):
    ...     y = bnc.batch_norm(x, training=True)
    """
    previous = set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)
