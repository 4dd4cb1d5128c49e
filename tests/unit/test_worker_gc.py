"""A worker collects the young generation less often than CPython's default (worker.py)."""
from __future__ import annotations

import gc

from remora.proxy.process.worker import YOUNG_GC_THRESHOLD, collect_young_less_often


def test_young_threshold_is_raised_but_never_lowered_nor_enabled():
    """The default 700 becomes YOUNG_GC_THRESHOLD; a higher one stays; 0 (disabled) stays 0."""
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        collect_young_less_often()
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 10, 10)
        gc.set_threshold(50_000, 10, 10)
        collect_young_less_often()
        assert gc.get_threshold()[0] == 50_000
        gc.set_threshold(0, 10, 10)
        collect_young_less_often()
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*saved)
