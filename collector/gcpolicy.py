"""Garbage collection and thread switching while a collector consumes.

A batch allocates millions of acyclic objects (rows, Arrow inputs, protobuf
messages): with the automatic collector on, they are walked again and again
while alive (issue 14 measured ~8 % of the main thread).  While a collector
runs, the objects that exist at its start are frozen out of collection
(``gc.freeze``) and collection runs explicitly (``maybe_collect``): at most
every ``GC_INTERVAL_S`` while busy, and about every second when idle.
Several collectors in one process nest: the last to release restores the
state the first found.

The thread switch interval is shortened to ``SWITCH_INTERVAL_S`` while a
collector runs.  Its event loop decodes in pure Python and holds the GIL;
the writer thread, between its many short DuckDB and Arrow calls, had to
wait up to the default 5 ms for it each time, and the main thread then
waited for the writer's commit.  Committing beside a busy Python thread took
2.86x as long as alone at 5 ms, 1.24x at 0.5 ms and 1.09x at 20 us
(``tests/bench/bench_gil.py``); end to end, 20 us gave 1.22x the rate
of 0.5 ms in the same run, and 5 us no more
(docs/benchmarks.md "The collector and the GIL, session 11").
"""

from __future__ import annotations

import gc
import sys
import threading
import time

#: Longest time between two collections while ingest is busy (cycles are rare:
#: asyncio and NATS error paths; everything else is freed by reference counts).
GC_INTERVAL_S = 10.0
#: The thread switch interval while ingest runs (seconds; Python's default is 0.005).
SWITCH_INTERVAL_S = 0.00002
_state = {"holders": 0, "was_enabled": True, "last": 0.0, "switch": 0.005}
_lock = threading.Lock()


def hold():
    """Collect, freeze what exists now, switch automatic collection off."""
    with _lock:
        if _state["holders"] == 0:
            _state["was_enabled"] = gc.isenabled()
            gc.collect()
            gc.freeze()
            gc.disable()
            _state["switch"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_state["switch"], SWITCH_INTERVAL_S))
            _state["last"] = time.monotonic()
        _state["holders"] += 1


def release():
    """Undo ``hold`` (the last holder restores automatic collection)."""
    with _lock:
        _state["holders"] -= 1
        if _state["holders"] == 0:
            gc.unfreeze()
            sys.setswitchinterval(_state["switch"])
            if _state["was_enabled"]:
                gc.enable()


def maybe_collect(idle: bool = False):
    """A full collection when the last one is old enough (called between batches)."""
    now = time.monotonic()
    if now - _state["last"] >= (1.0 if idle else GC_INTERVAL_S):
        _state["last"] = now
        gc.collect()
