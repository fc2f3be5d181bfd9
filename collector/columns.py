"""Arrow side of the store schema, and the per-batch accumulator.

Column names and types come from ``schema.TABLES`` (one definition); rows
arrive from ``decode`` as tuples in that column order and are turned into
Arrow once per batch (``zip(*rows)`` then one ``pa.array`` per column), the
same table feeding the Parquet archive and the DuckDB insert.
"""

from __future__ import annotations

import re
import time

import pyarrow as pa

from collector import schema
from collector.decode import DeadLetter, Decoded

_TYPES = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    # Stream sequences: signed in Arrow and Parquet (Spark reads unsigned
    # 64-bit Parquet as decimal(20,0)); DuckDB casts back on insert.
    "UBIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "BLOB": pa.binary(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "VARCHAR[]": pa.list_(pa.string()),
}
_COL_RE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s+([A-Z]+(?:\[\])?)(.*)$")


def _parse(body: str):
    cols = []
    for line in body.splitlines():
        line = line.split("--", 1)[0].strip().rstrip(",")
        if not line or line.upper().startswith("PRIMARY KEY"):
            continue
        m = _COL_RE.match(line)
        if not m:
            raise ValueError(f"cannot parse column definition {line!r}")
        name, typ, rest = m.groups()
        cols.append((name, typ, "NOT NULL" in rest or "PRIMARY KEY" in rest))
    return cols


#: table -> [(column, duckdb type, not null)]
COLUMNS = {name: _parse(body) for name, body in schema.TABLES.items()}
COLUMNS["raw"] = _parse(schema.RAW_COLUMNS)
#: table -> pa.schema
ARROW_SCHEMAS = {t: pa.schema([pa.field(c, _TYPES[ty]) for c, ty, _ in cols])
                 for t, cols in COLUMNS.items()}
NAMES = {t: [c for c, _, _ in cols] for t, cols in COLUMNS.items()}
_NS_TS = pa.timestamp("ns", tz="UTC")


def to_arrow(table: str, rows: list) -> pa.Table:
    """Tuples in schema column order -> a typed Arrow table (raises on bad types).

    The tuples go to pyarrow as one struct array (its converter walks them
    in C++: 1.9x faster than a Python transpose and an array per column,
    docs/benchmarks.md "The collector and the GIL, session 11").
    Any failure is raised by the column-wise conversion, whose errors name
    the value and type (``check_rows`` reports them in dead letters)."""
    if not rows:
        return ARROW_SCHEMAS[table].empty_table()
    try:
        st = pa.array(rows, type=_STRUCTS[table])
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return to_arrow_columns(table, rows)
    return _typed(table, st.flatten())


def to_arrow_columns(table: str, rows: list) -> pa.Table:
    """``to_arrow`` one column at a time: the reference, and the errors."""
    sch = ARROW_SCHEMAS[table]
    if not rows:
        return sch.empty_table()
    return _typed(table, [pa.array(col, type=_INT_TS.get(f.type, f.type)) for f, col in zip(sch, zip(*rows))])


def _typed(table: str, arrays) -> pa.Table:
    """Timestamp columns arrive as integer ns, as the node wrote them;
    DuckDB and Parquet readers (Spark) want microseconds: truncated once, here."""
    sch = ARROW_SCHEMAS[table]
    out = []
    for f, arr in zip(sch, arrays):
        if pa.types.is_timestamp(f.type):
            arr = arr.cast(_NS_TS).cast(f.type, safe=False)
        out.append(arr)
    return pa.Table.from_arrays(out, schema=sch)


#: time columns are integer ns on the way in (cast by ``_typed``)
_INT_TS = {pa.timestamp("us", tz="UTC"): pa.int64()}
_STRUCTS = {t: pa.struct([pa.field(f.name, _INT_TS.get(f.type, f.type)) for f in sch])
            for t, sch in ARROW_SCHEMAS.items()}


_PARTITION_CACHE: dict = {}
#: Cluster names come from payloads: past this many the cache starts over.
_PARTITION_CACHE_MAX = 4096


def partition_value(cluster) -> str:
    """The archive's cluster directory name: the name %-escaped, a leading
    ``_`` or ``.`` too (Spark and pyarrow skip such paths).  Only groups
    files: the ``cluster`` column inside the files is the identity.
    Cached: it runs once per message, for a handful of names."""
    if type(cluster) is not str:  # None, or a payload's odd value: not cached (True == 1)
        return _partition_value(cluster)
    v = _PARTITION_CACHE.get(cluster)
    if v is None:
        v = _partition_value(cluster)
        if len(_PARTITION_CACHE) >= _PARTITION_CACHE_MAX:
            _PARTITION_CACHE.clear()
        _PARTITION_CACHE[cluster] = v
    return v


def _partition_value(cluster) -> str:
    from urllib.parse import quote
    if not cluster:
        return "%5Funknown"
    q = quote(str(cluster), safe="")
    return ("%5F" if q[0] == "_" else "%2E") + q[1:] if q[0] in "_." else q


#: Hive partition columns of the archive.  ``cluster`` was one (only in the
#: path, so engines guessed its type: "001" became 1); it is now a column in
#: the files and ``date`` is the only partition.
PARTITION_COLUMNS = ("date",)


_DATE_CACHE: dict = {}


def date_of(ns: int) -> str:
    day = ns // 86_400_000_000_000
    d = _DATE_CACHE.get(day)
    if d is None:
        d = _DATE_CACHE[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    return d


class Batch:
    """Everything one fetch produced: rows per (partition, table) incl. dead letters and raw."""

    def __init__(self, consumer: str, keep_raw: bool = True):
        self.consumer = consumer
        self.keep_raw = keep_raw
        self.parts: dict = {}     # (cluster_dir, date) -> table -> list of rows
        self.first_seq = None
        self.last_seq = 0
        self.n_messages = 0
        self.n_spans = 0
        self.n_gpu = 0
        self.dead: list = []      # (reason, subject, seq) for counting and DLQ publish
        self.skews_ms: list = []

    def add(self, result, seq: int, subject: str, received_ns: int, payload: bytes,
            msg_id: str | None = None, subject_cluster: str | None = None):
        if self.first_seq is None or seq < self.first_seq:
            self.first_seq = seq
        if seq > self.last_seq:
            self.last_seq = seq
        self.n_messages += 1
        date = date_of(received_ns)
        if type(result) is DeadLetter:
            part = (partition_value(subject_cluster), date)
            dst = self.parts.setdefault(part, {})
            dst.setdefault("dead_letters", []).append(
                (seq, subject, result.reason, result.detail, received_ns, len(payload), payload))
            self.dead.append((result.reason, subject, seq))
            version = None
        else:
            part = (partition_value(result.cluster or subject_cluster), date)
            self.n_spans += result.n_spans
            self.n_gpu += len(result.rows.get("gpu_samples", ()))
            if result.max_end_ns is not None:
                self.skews_ms.append((received_ns - result.max_end_ns) / 1e6)
            dst = self.parts.get(part)
            if dst is None:
                dst = self.parts[part] = {}
            for t, rows in result.rows.items():
                lst = dst.get(t)
                if lst is None:
                    dst[t] = list(rows)
                else:
                    lst.extend(rows)
            version = result.schema_version
        if self.keep_raw:
            self.parts[part].setdefault("raw", []).append((seq, subject, msg_id, received_ns, version, payload))

    def arrow_by_partition(self):
        """{(cluster_dir, date): {table: pa.Table}} for the archive."""
        return {part: {t: to_arrow(t, rows) for t, rows in tables.items() if rows}
                for part, tables in self.parts.items()}

    def arrow(self):
        """(per-partition tables for the archive, merged tables for the store).

        Converted once; the store's tables are zero-copy concatenations.
        """
        parts = self.arrow_by_partition()
        merged: dict = {}
        archive: dict = {}
        for part, tables in parts.items():
            out = archive[part] = {}
            for t, tb in tables.items():
                if t != "raw":
                    merged.setdefault(t, []).append(tb)
                out[t] = tb  # with its cluster column: the identity is in the file
        store = {t: (tbs[0] if len(tbs) == 1 else pa.concat_tables(tbs)) for t, tbs in merged.items()}
        return archive, store


def check_rows(result) -> str | None:
    """None when every row of one decoded message converts to Arrow, else why not."""
    if type(result) is DeadLetter:
        return None
    for t, rows in result.rows.items():
        try:
            to_arrow(t, rows)
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
            return f"{t}: {type(exc).__name__}: {exc}"[:500]
    return None


__all__ = ["COLUMNS", "ARROW_SCHEMAS", "NAMES", "to_arrow", "Batch", "Decoded", "DeadLetter"]
