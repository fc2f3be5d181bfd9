"""The collector's own compactor: the archive's file count per day stays
bounded whatever the fetch rate, with no operator cron.

A background thread (never the writer: commits and acks do not wait for it)
runs :func:`collector.compact.compact`, the same crash-safe steps and the
same ``<archive>/.compact.lock`` as ``hookscope compact``:

* after each committed batch (:meth:`AutoCompactor.poke`), a pass over the
  open partitions (the days from ``now - grace``, UTC): one holding more than
  ``open_files`` files of this collector gets them merged into one ``@compact``
  file (another collector sharing the archive merges its own: it may yet
  delete a batch file its store refused, so the bound is per collector),
  and ``compact.FANOUT`` ``@compact`` files of one size level become one of
  the next (``compact.plan``: size-tiered, each row rewritten about once per
  level);
* every ``closed_interval`` seconds (and at start), a pass over every
  partition: a day closed for ``grace`` seconds becomes one file; late data
  (a redelivery) lands as a small file and is folded in by the next pass.

While another process holds the lock (an operator's ``hookscope compact``,
another collector on a shared archive) the pass is skipped and tried at the
next poke.  An error (a full disk) is logged and counted
(``compact_errors``); the archive stays consistent (see compact.py) and the
collector goes on.  A batch's files are not touched until its DuckDB commit
succeeded (:meth:`hold` / :meth:`release`): a batch refused by the store has
its files deleted and written again message by message.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
import threading
import time
from datetime import datetime, timedelta, timezone

from collector import compact as cp
from collector.archive import ArchiveError

log = logging.getLogger("hookscope.collector")

#: Default ``open_files``: collector files an open partition may hold.
OPEN_FILES = 64
#: Default seconds after a UTC midnight before the day is compacted into one file.
GRACE_S = 3600.0
#: Seconds between passes over every partition (closed days).
CLOSED_INTERVAL_S = 300.0


def first_open_day(now: datetime, grace_s: float) -> str:
    """The first day (``YYYY-MM-DD``) still open: a day closes ``grace_s``
    seconds after its UTC midnight."""
    return (now.astimezone(timezone.utc) - timedelta(seconds=grace_s)).date().isoformat()


class _Stopped(Exception):
    pass


class AutoCompactor:
    def __init__(self, root: str, *, open_files: int = OPEN_FILES, grace_s: float = GRACE_S,
                 closed_interval: float = CLOSED_INTERVAL_S, metrics=None, clock=None,
                 own: str | None = None):
        self.root = root
        #: this collector's instance name: open partitions merge only its files
        self.own = own
        self.open_files = open_files
        self.grace_s = grace_s
        self.closed_interval = closed_interval
        self.metrics = metrics
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._held: set[str] = set()
        self._last_error = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hookscope-compactor", daemon=True)
        #: passes run and partitions compacted (tests wait on them)
        self.passes = 0
        self.compacted = 0

    @classmethod
    def for_collector(cls, cfg, metrics=None) -> "AutoCompactor | None":
        """The started compactor of a collector's archive, or None (no archive,
        or ``compact_files`` 0)."""
        if not cfg.archive or not cfg.compact_files:
            return None
        return cls(cfg.archive, open_files=cfg.compact_files, grace_s=cfg.compact_grace,
                   metrics=metrics, own=cfg.instance).start()

    @contextmanager
    def holding(self, name: str):
        """Around a batch's archive write and commit: its files (``name``) are
        left alone until the commit succeeded or they were deleted; then a pass."""
        self.hold(name)
        try:
            yield
        finally:
            self.release(name)
            self.poke()

    def start(self) -> "AutoCompactor":
        self._thread.start()
        return self

    def hold(self, name: str) -> None:
        """Leave files of this name alone (a batch not yet committed)."""
        self._held.add(name)

    def release(self, name: str) -> None:
        self._held.discard(name)

    def poke(self) -> None:
        """A batch was committed: check the open partitions (returns at once)."""
        self._wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop after the current step (a merge in progress finishes: it is
        crash-safe anyway, and finishing it leaves fewer files)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self):
        next_closed = 0.0
        while not self._stop.is_set():
            closed = time.monotonic() >= next_closed
            if closed:
                next_closed = time.monotonic() + self.closed_interval
            self.run_pass(closed=closed)
            self._wake.wait(max(0.0, next_closed - time.monotonic()))
            self._wake.clear()

    def run_pass(self, closed: bool = False) -> list[dict]:
        """One pass (the thread's step; tests call it directly)."""
        held = self._held
        try:
            done = cp.compact(self.root, today=first_open_day(self._clock(), self.grace_s),
                              open_files=self.open_files, closed=closed,
                              skip=lambda n: n in held, progress=self._progress,
                              on_error=self._error, own=self.own)
        except _Stopped:  # closing: stop between two directories (each is consistent)
            done = []
        except ArchiveError as exc:
            if "another compaction" not in str(exc):
                self._error(exc)
            done = []
        except Exception as exc:  # never take the collector down: the archive stays consistent
            self._error(exc)
            done = []
        self.passes += 1
        self.compacted += len(done)
        if done:
            self._count("compacted_partitions", len(done))
            self._count("compacted_files", sum(r["inputs"] for r in done))
        return done

    def _error(self, exc):
        """Counted each time; logged when it differs from the last one (a
        full disk would otherwise log at every batch).  The pass goes on with
        the next directory: one bad directory does not unbound the others."""
        self._count("compact_errors")
        if str(exc) != self._last_error:
            self._last_error = str(exc)
            log.warning("automatic compaction: %s", exc)

    def _progress(self, _res):
        if self._stop.is_set():
            raise _Stopped

    def _count(self, name, n=1):
        if self.metrics is not None:
            self.metrics.inc(name, n)
