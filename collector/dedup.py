"""Exact dedup in bounded memory: no key index (issue 14).

Until store version 2 every table had a PRIMARY KEY and rows went in with
``INSERT OR IGNORE``: DuckDB keeps that key index (an ART) in memory, about
57 bytes a row, for ever.  Now the tables have no key (``ingest_state``
keeps its tiny one) and each batch is inserted by :func:`insert`:

1. within the batch, one row per key (``schema.KEYS``): the lowest
   ``stream_seq`` first where the table has one, else the first
   (:func:`first_per_key`);
2. ``INSERT ... WHERE NOT EXISTS`` a stored row with the same key **among
   the stored rows whose time column** (:data:`TIME`) **is within the
   batch's times** (widened by :data:`SLACK`).  A duplicate is the same
   record, so it carries the same time: the dedup stays exact, and the time
   filter is a constant range DuckDB checks against each row group's min/max
   (zone maps), so the probe reads the row groups of that time range, not
   history.
3. A batch whose times are far apart (an agent's backlog after an outage
   next to today's rows) is probed range by range (:func:`time_ranges`: a
   new range where consecutive times are more than :data:`GAP` apart), so
   it does not read everything in between.

``journal`` has no time column of its own in the decoder's rows: ``journal.ts``
is derived from the record (its ``ts``, integer ns; the record is canonical
JSON and hashed, so a copy has the same one) by :func:`with_journal_ts`
(``schema.STORE_COLUMNS``): by the collector's ``build_batch`` on its event
loop's thread (:func:`journal_ts`, marked in the schema metadata), else at
insert.  ``dead_letters`` is
bounded by its key, ``stream_seq``, which rises in insertion order.

Exactness rests on one property per table, documented with :data:`TIME`:
every copy of a key has its time within ``SLACK`` of the first copy's.
"""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pyarrow.compute as pc

from collector import schema

#: The column bounding each table's probe, and why a copy has the same value.
TIME = {
    "hook_runs": "start_ts",      # from the hook_started record (a row exists only with it)
    "script_runs": "start_ts",    # script_started's ts; see SLACK
    "span_events": "ts",          # part of the key
    "gpu_samples": "ts",          # part of the key
    "node_events": "ts",          # event_id is the record's hash, which covers ts
    "journal": "ts",              # derived from the hashed record (with_journal_ts)
    "chain_heads": "ts",          # part of the key
    "dead_letters": "stream_seq",  # the key itself
}
_HOUR_US = 3_600_000_000
#: How far a later copy's time may be from the first copy's (microseconds).
#: script_runs: a run split across two messages gets, from the message with
#: only its script_ended, start = end - duration (clock steps aside, the same
#: start), or start = end when no duration was recorded: a script runs at
#: most Slurm's largest PrologEpilogTimeout (65,533 s), so one day covers it.
SLACK = {"script_runs": 24 * _HOUR_US}
#: Times further apart than this start a new probe range (microseconds; for
#: dead_letters, stream sequences).
GAP = {"dead_letters": 100_000}
DEFAULT_GAP = _HOUR_US
#: At most this many ranges per batch and table: beyond, the closest ranges
#: are merged (a batch of rows hours apart each, over months).
MAX_RANGES = 64

#: SQL giving journal.ts (TIMESTAMPTZ, microseconds, as columns.to_arrow
#: truncates) from the record, for rows stored without it (migration,
#: rebuild from an archive: archive files do not carry journal.ts).
JOURNAL_TS_SQL = "timezone('UTC', make_timestamp((CAST(record->>'$.ts' AS BIGINT)) // 1000))"
_US_TS = pa.timestamp("us", tz="UTC")


def first_per_key(tb: pa.Table, keys) -> pa.Table:
    """One row per key: the lowest ``stream_seq`` (then the earliest row)
    where the table has a stream_seq, else the earliest row.  The table
    itself when no key repeats (the usual case: one hash aggregate)."""
    n = tb.num_rows
    keys = list(keys)
    if n < 2 or tb.select(keys).group_by(keys, use_threads=False).aggregate([]).num_rows == n:
        return tb
    if "stream_seq" in tb.column_names:
        tb = tb.take(pc.sort_indices(tb, [("stream_seq", "ascending")]))  # stable
    idx = pa.array(range(n), pa.int64())
    first = (tb.select(keys).append_column("_hs_i", idx)
             .group_by(keys, use_threads=False).aggregate([("_hs_i", "min")]))
    keep = first.column("_hs_i_min")
    return tb.take(pc.take(keep, pc.sort_indices(keep)))  # in batch order


_LOCAL = threading.local()
#: Schema metadata key marking a journal table whose ``ts`` :func:`journal_ts`
#: derived (any other ``ts`` column is derived again at insert).
DERIVED = b"hookscope.journal_ts"


def journal_ts(tb: pa.Table) -> pa.Table:
    """:func:`with_journal_ts` on a DuckDB connection of this thread's own
    (in memory): the collector derives ``ts`` on its event loop's thread, so
    the writer thread, which every batch waits for, does not (:func:`insert`
    keeps a derived ``ts``)."""
    con = getattr(_LOCAL, "con", None)
    if con is None:
        import duckdb
        con = _LOCAL.con = duckdb.connect(":memory:")
    out = with_journal_ts(con, tb)
    return out.replace_schema_metadata({**(out.schema.metadata or {}), DERIVED: b"1"})


def with_journal_ts(con, tb: pa.Table) -> pa.Table:
    """``tb`` (journal rows) with the store-only column ``ts`` from each
    record's ``ts`` (integer ns -> microseconds, truncated like every other
    time column).  Parsed by DuckDB's JSON reader (exact: top-level key)."""
    if "ts" in tb.column_names:  # derived again, the same way
        tb = tb.drop_columns(["ts"])
    con.register("_hs_journal", tb.select(["record"]))
    try:
        # one value per row in row order (DuckDB's preserve_insertion_order,
        # on by default and never changed by the store)
        ns = con.sql("SELECT CAST(record->>'$.ts' AS BIGINT) FROM _hs_journal").to_arrow_table()
    finally:
        con.unregister("_hs_journal")
    ts = ns.column(0).cast(pa.timestamp("ns", tz="UTC")).cast(_US_TS, safe=False)
    return tb.append_column(pa.field("ts", _US_TS), ts)


def _as_int(v) -> int:
    """A time column's scalar as an integer (µs since the epoch, or a sequence)."""
    return v.cast(pa.int64()).as_py() if pa.types.is_timestamp(v.type) else int(v.as_py())


def time_ranges(values: pa.Array | pa.ChunkedArray, gap: int, max_ranges: int = MAX_RANGES) -> list:
    """[(lo, hi)] covering every non-null value (as integers): a new range
    where sorted values are more than ``gap`` apart; merged down to
    ``max_ranges`` by dropping the smallest gaps.  Pure."""
    mm = pc.min_max(values)
    lo, hi = mm["min"], mm["max"]
    if not lo.is_valid:
        return []
    lo, hi = _as_int(lo), _as_int(hi)
    if hi - lo <= gap:
        return [(lo, hi)]
    if pa.types.is_timestamp(values.type):
        values = values.cast(pa.int64())
    vals = sorted(pc.unique(pc.drop_null(values)).to_pylist())
    cuts = [i for i in range(1, len(vals)) if vals[i] - vals[i - 1] > gap]
    if len(cuts) >= max_ranges:  # keep the largest gaps only
        cuts = sorted(sorted(cuts, key=lambda i: vals[i] - vals[i - 1])[-(max_ranges - 1):])
    starts = [0] + cuts
    ends = [c - 1 for c in cuts] + [len(vals) - 1]
    return [(vals[a], vals[b]) for a, b in zip(starts, ends)]


def _lit(table: str, v: int) -> str:
    if TIME[table] == "stream_seq":
        return str(max(int(v), 0))
    s, us = divmod(int(v), 1_000_000)
    return "TIMESTAMPTZ '" + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s)) + f".{us:06d}+00'"


def statements(table: str, tb: pa.Table, cols: list[str]) -> list[str]:
    """The INSERT statements for one batch of ``table`` registered as
    ``_hs_batch`` (already one row per key): one per time range, plus one
    for rows with a NULL time (probed against every row: never from the
    decoder, whose time columns are NOT NULL)."""
    tcol = TIME[table]
    slack = SLACK.get(table, 0)
    match = " AND ".join(f"y.{k} = x.{k}" for k in schema.KEYS[table])
    names = ", ".join(cols)
    head = f"INSERT INTO {table} ({names}) SELECT {', '.join('x.' + c for c in cols)} FROM _hs_batch x WHERE "
    ranges = time_ranges(tb.column(tcol), GAP.get(table, DEFAULT_GAP))
    nulls = tb.column(tcol).null_count
    out = []
    for lo, hi in ranges:
        alone = len(ranges) == 1 and not nulls  # every row is in this range
        own = "" if alone else f"x.{tcol} BETWEEN {_lit(table, lo)} AND {_lit(table, hi)} AND "
        out.append(head + own + f"NOT EXISTS (SELECT 1 FROM {table} y WHERE y.{tcol} BETWEEN "
                   f"{_lit(table, lo - slack)} AND {_lit(table, hi + slack)} AND {match})")
    if nulls:
        out.append(head + f"x.{tcol} IS NULL AND NOT EXISTS (SELECT 1 FROM {table} y WHERE {match})")
    return out


def insert(con, table: str, tb: pa.Table, cols: list[str]) -> None:
    """Insert the rows of ``tb`` whose key is not stored yet (see the module
    docstring), inside the caller's transaction."""
    tb = first_per_key(tb, schema.KEYS[table])
    if table in schema.STORE_COLUMNS:
        if (tb.schema.metadata or {}).get(DERIVED) != b"1":
            tb = with_journal_ts(con, tb)
        cols = cols + [c for c, _ in schema.STORE_COLUMNS[table]]
    con.register("_hs_batch", tb)
    try:
        for sql in statements(table, tb, cols):
            con.execute(sql)
    finally:
        try:
            con.unregister("_hs_batch")
        except Exception:  # noqa: BLE001 - an aborted transaction: keep the real error
            pass
