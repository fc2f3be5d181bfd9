"""Archive statements bounded by ``_date >= D`` read only the files of days >= D.

A view over a year of daily Parquet files costs every statement that names it
about 3 ms of binding and Hive-path handling, even when the statement's
``_date`` bound rules out all but a few of the files: ``why`` runs about 18
statements (docs/benchmarks.md "Archive queries at 10 M script runs").  A
statement that says its lower date bound (``rows(..., floor=D)``) is run over
views of the same tables restricted to the files of days >= D, made once per
(connection, D) in a schema of their own, with the same deduplication as the
full views.  The answer is the same: the caller promises that every archive
table the statement names is filtered by ``_date >= D`` (or a later day), so
the files left out hold no row it could return.  On a DuckDB store (no
archive index) nothing changes.

The index is kept per connection (a weak reference: it goes with the
connection); :func:`cursor` gives a cursor that shares it.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from datetime import date

from collector import schema
from collector.archive import partition_key

#: Scopes (distinct lower dates) one connection keeps views for; past this a
#: statement runs over the full views (same answer, unscoped cost), so a
#: long-lived dashboard connection cannot grow its catalog without end.
MAX_SCOPES = 64

_TABLE_REF = re.compile(r"\b(FROM|JOIN)(\s+)(" + "|".join(schema.ARCHIVE_TABLES) + r")\b(?!\s*\()",
                        re.IGNORECASE)


class ArchiveIndex:
    """The archive's files per table, as listed when the source was opened.

    ``view_sql(con, table, files)``: the body of the table's view over those
    files (the same function that built the full views), or None for a table
    whose files must not be split by day (then it is never scoped)."""

    def __init__(self, files: dict[str, list[str]], view_sql):
        self._days = {t: [(partition_key(f)[1], f) for f in fs] for t, fs in files.items()}
        self._view_sql = view_sql
        self._made: dict[tuple[str, str], str | None] = {}
        self._scopes: set[str] = set()
        self._lock = threading.Lock()

    def files_since(self, table: str, day: date) -> list[str]:
        """The table's files of days >= ``day``; a file whose path names no
        day (not the layout) is always kept."""
        lo = day.isoformat()
        return [f for d, f in self._days.get(table, ()) if not d or d >= lo]

    def newest_day(self, table: str) -> date | None:
        """The table's newest partition day; None when it has no files or a
        file whose path names no day (then nothing is known of its end)."""
        days = [d for d, _ in self._days.get(table, ())]
        if not days or not all(days):
            return None
        return date.fromisoformat(max(days))

    def view(self, con, table: str, day: date) -> str | None:
        """The qualified name of ``table`` restricted to days >= ``day``
        (made on first use), or None to use the full view."""
        name = f"_hs_since_{day:%Y%m%d}"
        key = (name, table)
        with self._lock:
            if key in self._made:
                return self._made[key]
            if name not in self._scopes and len(self._scopes) >= MAX_SCOPES:
                return None
            body = self._view_sql(con, table, self.files_since(table, day))
            made = None
            if body is not None:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
                con.execute(f"CREATE OR REPLACE VIEW {name}.{table} AS {body}")
                made = f"{name}.{table}"
            self._scopes.add(name)
            self._made[key] = made
            return made


_INDEX: "weakref.WeakKeyDictionary[object, ArchiveIndex]" = weakref.WeakKeyDictionary()


def register(con, index: ArchiveIndex) -> None:
    _INDEX[con] = index


def cursor(con):
    """``con.cursor()`` (its own DuckDB connection, for another thread) that
    keeps ``con``'s archive scopes."""
    cur = con.cursor()
    index = _INDEX.get(con)
    if index is not None:
        _INDEX[cur] = index
    return cur


def newest_day(con, table: str) -> date | None:
    """The newest partition day of an archive table read through ``con``;
    None for a DuckDB store (whose rows have no day) or when unknown."""
    index = _INDEX.get(con)
    return None if index is None else index.newest_day(table)


def scoped(con, sql: str, floor) -> str:
    """``sql`` with each archive table it reads after FROM or JOIN replaced by
    the table's view over the files of days >= ``floor``."""
    index = _INDEX.get(con) if floor is not None else None
    if index is None:
        return sql
    day = floor if type(floor) is date else floor.date()

    def sub(m):
        name = index.view(con, m.group(3).lower(), day)
        return m.group(0) if name is None else f"{m.group(1)}{m.group(2)}{name}"

    return _TABLE_REF.sub(sub, sql)


#: Sections of one question that run at once (``together``): DuckDB releases
#: the GIL, so independent sections of ``why`` overlap on the cores.  Two on
#: two cores measured best (each statement also uses DuckDB's own threads).
WORKERS = max(2, min(4, os.cpu_count() or 1))


def together(con, calls: dict):
    """``{name: fn(con)}`` for independent sections of one question, run at
    once on cursors of ``con`` (its own DuckDB connection each, as a thread
    needs); the results as a dict in the same order.  An exception in any
    section is raised here, after the others finished."""
    from concurrent.futures import ThreadPoolExecutor

    def run(fn):
        cur = cursor(con)
        try:
            return fn(cur)
        finally:
            cur.close()

    if len(calls) <= 1 or WORKERS <= 1:
        return {name: fn(con) for name, fn in calls.items()}
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(calls)),
                            thread_name_prefix="hookscope-query") as pool:
        futures = {name: pool.submit(run, fn) for name, fn in calls.items()}
    return {name: f.result() for name, f in futures.items()}
