"""Store version 1 -> 2, when the collector opens a store: automatic, one transaction.

Version 1 gave every table a PRIMARY KEY (an in-memory index that grew with
history); version 2 has none (``collector.dedup``) and a store-only
``journal.ts``.  DuckDB cannot drop a key in place, so each keyed table is
copied into a new table without it, the old one dropped and the new one
renamed, all in ONE transaction: a collector killed mid-way leaves the
version-1 tables as they were (DuckDB's WAL), and the next start migrates
again.  ``journal.ts`` is filled from each record (``dedup.JOURNAL_TS_SQL``).

The readers' snapshot cuts tables by rowid (collector/snapshot.py); new
tables have new rowids, so its state is removed BEFORE the transaction: the
first publication after a migration cuts the whole store again, once
(a crash before the commit costs that re-cut and nothing else).  Readers
holding the old catalog must reopen.  Cost: one copy of the store, once.
"""

from __future__ import annotations

import os

from collector import schema
from collector.dedup import JOURNAL_TS_SQL

DATA = tuple(t for t in schema.TABLES if t != "ingest_state")


def pending(con) -> list[str]:
    """Tables to migrate, looked at BEFORE ``schema.create_all``: those with a
    PRIMARY KEY, and ``journal`` when it has rows but no ``ts`` yet."""
    keyed = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
        "AND database_name = current_database() AND schema_name = 'main'").fetchall()}
    out = [t for t in DATA if t in keyed]
    if "journal" not in out and _columns(con, "journal") and "ts" not in _columns(con, "journal"):
        if con.execute("SELECT count(*) FROM journal").fetchone()[0]:
            out.append("journal")
    return out


def _columns(con, table: str) -> dict:
    """{column: type} of a table in the store, in table order ({} if none)."""
    return dict(con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = ? ORDER BY column_index", [table]).fetchall())


def run(con, db_path: str, tables: list[str]) -> None:
    """Migrate ``tables`` (from :func:`pending`, after ``create_all``)."""
    if not tables:
        return
    from collector.snapshot import STATE, snapshot_dir
    state = os.path.join(snapshot_dir(db_path), STATE)
    if os.path.exists(state):
        os.unlink(state)
        fd = os.open(os.path.dirname(state), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    # probed before the transaction: a refused CREATE would abort it
    zstd = schema.zstd_for(con, tables)
    con.execute("BEGIN TRANSACTION")
    try:
        for t in tables:
            _recreate(con, t, zstd)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("CHECKPOINT")


def _recreate(con, table: str, zstd: bool = False) -> None:
    """``table`` without its key: same columns (the schema's, plus any the
    store has beyond them), same rows in the same order; being rewritten
    anyway, its ``schema.ZSTD_COLUMNS`` get zstd where the file allows."""
    old = _columns(con, table)
    new = f"_hs_v2_{table}"
    con.execute(f"CREATE TABLE {new} ({schema.table_body(table, zstd)})")
    have = _columns(con, new)
    for name, typ in [*schema.ADDED_COLUMNS.get(table, ()), *schema.STORE_COLUMNS.get(table, ()),
                      *((c, ty) for c, ty in old.items() if c not in have)]:
        con.execute(f'ALTER TABLE {new} ADD COLUMN IF NOT EXISTS "{name}" {typ}')
    cols = list(_columns(con, new))
    exprs = []
    for c in cols:
        if table == "journal" and c == "ts":
            exprs.append(f"coalesce(ts, {JOURNAL_TS_SQL})" if "ts" in old else JOURNAL_TS_SQL)
        else:
            exprs.append(f'"{c}"' if c in old else "NULL")
    names = ", ".join(f'"{c}"' for c in cols)
    # preserve_insertion_order (DuckDB's default) keeps the rowid order
    con.execute(f"INSERT INTO {new} ({names}) SELECT {', '.join(exprs)} FROM {table}")
    con.execute(f"DROP TABLE {table}")
    con.execute(f"ALTER TABLE {new} RENAME TO {table}")
