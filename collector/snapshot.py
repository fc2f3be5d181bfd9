"""The readers' snapshot, split by time: no whole-file copies.

DuckDB lets one process open a file for writing and nobody else, so readers
read a snapshot the writer publishes.  Copying the whole live file every
second (the first design) costs time in proportion to history.  Here the
snapshot is made of Parquet parts cut from the live tables by ``rowid``:

* the store only appends (``collector.dedup``'s INSERTs, no UPDATE or DELETE
  outside ``ingest_state``; a migration makes new tables and removes the
  state, so the next publication starts again: ``collector.migrate``), so a table's rowids are 0..count-1 in commit order and the
  rows committed since the last cut are ``rowid >= mark`` (DuckDB prunes row
  groups on a rowid filter: the export reads only those rows);
* **sealed parts** (``p-<day>-<n>.<table>.parquet``) are immutable: rows
  ``[lo, hi)`` of each table.  A part is sealed when the hot rows exceed
  ``seal_rows`` or when the UTC day changes; :data:`FANOUT` parts of one
  level and day are re-cut from the live store as one part of the next level
  (size-tiered, so a day holds a few parts per level and each row is re-cut
  about log_FANOUT(day / seal_rows) times), at a day change the day's
  parts become one (cost: one day of rows, once a day), and when a month
  closes its parts are merged from their files in a background thread;
* the **hot part** (``h-<table>-<lo>-<hi>.parquet``) holds the rows since the
  last seal plus ``ingest_state``, re-cut at every publication (a table with
  no new rows keeps its file), so a publication costs at most ``seal_rows``
  rows, whatever the history;
* the **catalog** (``schema.snapshot_path(db)``, the file readers always
  opened) is a small DuckDB file of views, one per table, over the current
  parts' absolute paths (``read_parquet([...])``; ``union_by_name`` only
  when a part predates a column the schema added),
  written under a temporary name and renamed into place.  ``duckdb -readonly
  <catalog>``, ``queries.source`` and the dashboard open it as before.

Every row is in exactly one part: the parts' ``[lo, hi)`` ranges are
contiguous (the state file records them).  Files the catalog no longer names
are deleted after :data:`GRACE_S` seconds, so a reader that opened the
previous catalog keeps reading.  The state file (``state.json``) records the
sealed parts and the live file's inode; a collector restarted on the same
file goes on from it; on another file (a rebuild, a restored backup) or a
state that does not match the live counts it starts again with one full cut
(once).  Described in docs/store.md.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone

from collector import schema
from emitter.fsutil import replacing

#: Hot rows (all tables together) above which the hot part is sealed: the
#: most rows one publication re-cuts.
SEAL_ROWS = 50_000
#: Sealed parts of one level and day merged into one part of the next level.
FANOUT = 8
#: The level of a closed day's single part, and of a closed month's.
DAY_LEVEL = 99
MONTH_LEVEL = 100
#: Seconds an unreferenced part file is kept for readers of an older catalog.
GRACE_S = 60.0
STATE = "state.json"
TABLES = tuple(schema.TABLES)
#: Append-only tables, cut by rowid (ingest_state is updated in place: every
#: hot part holds all of it, and only the hot part is read for it).
DATA = tuple(t for t in TABLES if t != "ingest_state")


def snapshot_dir(db_path: str) -> str:
    """``hookscope.duckdb`` -> ``hookscope.snapshot.d`` (the parts)."""
    base = db_path[:-len(".duckdb")] if db_path.endswith(".duckdb") else db_path
    return base + ".snapshot.d"


def _utc_day() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SplitSnapshot:
    """Publishes the catalog and parts of one live store (writer side).

    Every method runs on the writer's connection, under the store's lock (no
    commit in between: the counts are the committed rows)."""

    def __init__(self, con, db_path: str, ident: tuple, seal_rows: int = SEAL_ROWS,
                 today=None, grace_s: float = GRACE_S, fanout: int = FANOUT):
        self.con = con
        self.catalog = schema.snapshot_path(db_path)
        self.dir = snapshot_dir(db_path)
        self.ident = list(ident)
        self.seal_rows = int(seal_rows)
        self.fanout = max(2, int(fanout))
        self.today = today or (lambda: _utc_day())  # looked up at call time (tests move the day)
        self.grace_s = grace_s
        self.gen = 0
        #: sealed parts: [{"day", "name", "lo": {t: n}, "hi": {t: n}}]
        self.parts: list[dict] = []
        self.hot_day = self.today()
        self._unref: dict[str, float] = {}  # file -> when it left the catalog
        self._hot: dict[str, str] = {}  # table -> file of the current hot part
        self.sparse: set[str] = set()
        self._pool = None  # the month merge's thread, made when first needed
        self._month_job = None
        self._month_name = None  # its files are not garbage while it runs
        #: columns per table now (a store opened after the schema grew has more)
        self.cols = {t: n for t, n in con.execute(
            "SELECT table_name, count(*) FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = 'main' GROUP BY ALL").fetchall() if t in TABLES}
        os.makedirs(self.dir, exist_ok=True)
        self._load()

    # ------------------------------------------------------------ state
    def _counts(self) -> dict:
        """Each table's rowid high mark: count(*) (metadata, O(1)) where the
        rowids are 0..count-1, max(rowid) + 1 (a scan) where rows were
        deleted by hand (the collector never deletes)."""
        return {t: self.con.execute(
            f"SELECT {'coalesce(max(rowid) + 1, 0)' if t in self.sparse else 'count(*)'} FROM main.{t}"
        ).fetchone()[0] for t in TABLES}

    def _find_sparse(self) -> None:
        """Tables whose rowids have gaps (rows deleted by hand, e.g. in the
        DuckDB CLI while the collector was stopped); checked once at start."""
        self.sparse = set()
        for t in DATA:
            n, top = self.con.execute(f"SELECT count(*), coalesce(max(rowid) + 1, 0) FROM main.{t}").fetchone()
            if n != top:
                self.sparse.add(t)

    def _mark(self) -> dict:
        return dict(self.parts[-1]["hi"]) if self.parts else {t: 0 for t in DATA}

    def _load(self) -> None:
        """Go on from the state a previous run left, when it belongs to this
        very file and its rows are all still there; else start again."""
        self._find_sparse()
        try:
            with open(os.path.join(self.dir, STATE)) as fh:
                st = json.load(fh)
            ok = st.get("version") == 1 and st.get("ident") == self.ident
            parts = st["parts"] if ok else []
            counts = self._counts()
            ok = ok and all(parts[-1]["hi"][t] <= counts[t] for t in DATA) if parts else ok
            # The rows under the parts are the rows the parts hold (none
            # deleted by hand since, e.g. in the DuckDB CLI while stopped):
            # one rowid-filtered count per table, once at start.
            ok = ok and all(self.con.execute(f"SELECT count(*) FROM main.{t} WHERE rowid < ?",
                                             [parts[-1]["hi"][t]]).fetchone()[0]
                            == sum(p["rows"][t] for p in parts) for t in DATA) if parts else ok
            ok = ok and all(os.path.exists(self._path(p["name"], t)) for p in parts for t in DATA
                            if p["hi"][t] > p["lo"][t])
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            ok = False
        if ok:
            self.parts, self.gen = parts, int(st.get("gen", 0))
            self.hot_day = parts[-1]["day"] if parts else self.today()
        else:
            self._reset()
        # Files of a killed run that no state names: unreferenced from now on.
        keep = self._referenced()
        now = time.monotonic()
        for f in os.listdir(self.dir):
            if f != STATE and f not in keep:
                self._unref.setdefault(f, now)

    def _reset(self) -> None:
        """Start again from row 0: another file's parts (or none).  Hot files
        are reused by name, so none of them may stay."""
        self.parts, self._hot, self._unref = [], {}, {}
        for f in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, f))

    def _save(self) -> None:
        path = os.path.join(self.dir, STATE)
        with replacing(path) as tmp:
            with open(tmp, "w") as fh:
                json.dump({"version": 1, "ident": self.ident, "gen": self.gen, "parts": self.parts}, fh)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync(self.dir)

    def _path(self, name: str, table: str) -> str:
        return os.path.join(self.dir, f"{name}.{table}.parquet")

    def _referenced(self) -> set[str]:
        out = {os.path.basename(self._path(p["name"], t)) for p in self.parts for t in DATA
               if p["hi"][t] > p["lo"][t]}
        out.update(self._hot.values())
        return out

    # ------------------------------------------------------------ writing
    def _copy(self, table: str, lo: int | None, hi: int | None, path: str, sync: bool) -> int:
        """The rows into ``path``; how many."""
        where = "" if lo is None else f" WHERE rowid >= {int(lo)} AND rowid < {int(hi)}"
        tmp = os.path.join(self.dir, "." + os.path.basename(path) + ".tmp")
        n = self.con.execute(f"COPY (SELECT * FROM main.{table}{where}) TO {_sql_str(tmp)} "
                             f"(FORMAT parquet, COMPRESSION zstd)").fetchone()[0]
        if sync:
            _fsync(tmp)
        os.replace(tmp, path)
        return int(n)

    def _cut(self, name: str, lo: dict, hi: dict) -> dict:
        """Rows [lo, hi) of each table into ``<name>.<table>.parquet`` (none
        when empty); the rows cut per table."""
        rows = {t: 0 for t in DATA}
        for t in DATA:
            if hi[t] > lo[t]:
                rows[t] = self._copy(t, lo[t], hi[t], self._path(name, t), sync=True)
        _fsync(self.dir)
        return rows

    def _cut_hot(self, mark: dict, counts: dict) -> None:
        """The hot part: every table's rows since the last seal (a file even
        when empty, so each view has one) and all of ingest_state.  A table
        whose range did not change keeps its file: a quiet table costs
        nothing.  Re-cut at the next publication, and a store opens with a
        publication, so it is not fsynced (sealed parts and the state are)."""
        hot = {}
        for t in DATA:
            name = f"h-{t}-{mark[t]:012d}-{counts[t]:012d}.parquet"
            if self._hot.get(t) != name:
                self._copy(t, mark[t], counts[t], os.path.join(self.dir, name), sync=False)
            hot[t] = name
        hot["ingest_state"] = f"h-ingest_state-{self.gen:08d}.parquet"
        self._copy("ingest_state", None, None, os.path.join(self.dir, hot["ingest_state"]), sync=False)
        self._hot = hot

    def _seal(self, day: str, counts: dict, merge: bool) -> None:
        """Rows since the last seal become an immutable part of ``day``
        (level 0); ``fanout`` parts of one level and day become one part of
        the next level, so a day holds at most ``fanout`` parts per level;
        with ``merge`` (the day closed), the day's parts become one."""
        mark = self._mark()
        if any(counts[t] > mark[t] for t in DATA):
            self.gen += 1
            name = f"p-{day}-{self.gen:08d}"
            hi = {t: counts[t] for t in DATA}
            rows = self._cut(name, mark, hi)
            self.parts.append({"day": day, "name": name, "lo": mark, "hi": hi, "cols": self.cols,
                               "level": 0, "rows": rows})
            while True:
                tail = self.parts[-self.fanout:]
                lv = tail[-1].get("level", 0)
                if len(tail) < self.fanout or any(p["day"] != day or p.get("level", 0) != lv for p in tail):
                    break
                self._merge(len(self.parts) - self.fanout, len(self.parts), lv + 1)
        if merge:
            mine = [i for i, p in enumerate(self.parts) if p["day"] == day]
            if len(mine) > 1:
                self._merge(mine[0], mine[-1] + 1, DAY_LEVEL)
        self._save()

    def _merge(self, i: int, j: int, level: int) -> None:
        """Parts i..j-1 (contiguous) re-cut from the live store as one part."""
        first, last = self.parts[i], self.parts[j - 1]
        self.gen += 1
        name = f"p-{first['day']}-{self.gen:08d}"
        rows = self._cut(name, first["lo"], last["hi"])
        self.parts[i:j] = [{"day": first["day"], "name": name, "lo": first["lo"], "hi": last["hi"],
                            "cols": self.cols, "level": level, "rows": rows}]

    def publish(self) -> str:
        """Cut what is new and publish a catalog over every row; the catalog path."""
        counts = self._counts()
        mark = self._mark()
        if any(counts[t] < mark[t] for t in DATA):
            # Rows gone from under the parts (a DELETE by hand: the collector
            # never deletes): the ranges no longer match, cut again from 0.
            self._find_sparse()
            self._reset()
            counts, mark = self._counts(), self._mark()
        today = self.today()
        if today != self.hot_day:
            # rows committed up to now belong to the closing day
            self._seal(self.hot_day, counts, merge=True)
            self.hot_day = today
        elif sum(counts[t] - mark[t] for t in DATA) > self.seal_rows:
            self._seal(today, counts, merge=False)
        self._months(today)
        self.gen += 1
        self._cut_hot(self._mark(), counts)
        self._write_catalog()
        self._collect()
        return self.catalog

    # ------------------------------------------------------------ months
    def _months(self, today: str) -> None:
        """A closed month's parts become one, so a reader opens about one
        file per table and month, not per day.  The month is merged from its
        parts' (immutable) Parquet files in a background thread, on its own
        DuckDB connection: the writer is not held up by a month of rows.  The
        result replaces the parts at a later publication, if they are still
        the ones it was made from (a restart or a reset drops it)."""
        fut = self._month_job
        if fut is not None:
            if not fut.done():
                return
            self._month_job = self._month_name = None
            try:
                names, part = fut.result()
            except Exception:  # noqa: BLE001 - tried again at the next publication
                names, part = None, None
            idx = [i for i, p in enumerate(self.parts) if p["name"] in (names or ())]
            if part is not None and len(idx) == len(names) and idx == list(range(idx[0], idx[0] + len(idx))):
                self.parts[idx[0]:idx[-1] + 1] = [part]
                self._save()
            return
        month = today[:7]
        runs: dict[str, list[int]] = {}
        for i, p in enumerate(self.parts):
            if p["day"][:7] < month and p.get("level", 0) != MONTH_LEVEL:
                runs.setdefault(p["day"][:7], []).append(i)
        for m, idx in sorted(runs.items()):
            if len(idx) > 1 and idx == list(range(idx[0], idx[0] + len(idx))):
                parts = [dict(self.parts[i]) for i in idx]
                self.gen += 1
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="hookscope-snapshot-merge")
                self._month_name = f"m-{m}-{self.gen:08d}"
                self._month_job = self._pool.submit(self._merge_files, m, parts, self._month_name)
                return

    def _merge_files(self, month: str, parts: list[dict], name: str):
        """(input names, merged part) from the parts' files (background)."""
        import duckdb
        con = duckdb.connect(":memory:")
        try:
            rows = {t: 0 for t in DATA}
            for t in DATA:
                files = [self._path(p["name"], t) for p in parts if p["hi"][t] > p["lo"][t]]
                if not files:
                    continue
                lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
                union = ", union_by_name=true" if any(p.get("cols") != parts[-1].get("cols") for p in parts) else ""
                tmp = os.path.join(self.dir, f".{name}.{t}.tmp")
                rows[t] = con.execute(f"COPY (SELECT * FROM read_parquet({lst}{union})) TO {_sql_str(tmp)} "
                                      f"(FORMAT parquet, COMPRESSION zstd)").fetchone()[0]
                _fsync(tmp)
                os.replace(tmp, self._path(name, t))
            _fsync(self.dir)
        finally:
            con.close()
        part = {"day": month, "name": name, "lo": parts[0]["lo"], "hi": parts[-1]["hi"],
                "cols": parts[-1].get("cols"), "level": MONTH_LEVEL, "rows": rows}
        return [p["name"] for p in parts], part

    def close(self) -> None:
        """Wait for a month merge in flight (its result is dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _write_catalog(self) -> None:
        with replacing(self.catalog, tmp=f"{self.catalog}.tmp-{os.getpid()}") as tmp:
            for p in (tmp, tmp + ".wal"):
                if os.path.exists(p):
                    os.unlink(p)
            self.con.execute(f"ATTACH {_sql_str(tmp)} AS _hs_catalog")
            try:
                self.con.execute("BEGIN TRANSACTION")
                for t in TABLES:
                    mine = [p for p in self.parts if t != "ingest_state" and p["hi"][t] > p["lo"][t]]
                    files = [self._path(p["name"], t) for p in mine]
                    files.append(os.path.join(self.dir, self._hot[t]))
                    lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
                    # Merging every file's schema costs each query a footer
                    # read per file: only when a part predates a column.
                    union = (", union_by_name=true"
                             if any(p.get("cols", {}).get(t) != self.cols[t] for p in mine) else "")
                    self.con.execute(f"CREATE VIEW _hs_catalog.main.{t} AS SELECT * FROM "
                                     f"read_parquet({lst}{union})")
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            finally:
                self.con.execute("DETACH _hs_catalog")

    def _collect(self) -> None:
        """Delete part files the catalog stopped naming more than grace_s ago."""
        keep = self._referenced()
        now = time.monotonic()
        for f in os.listdir(self.dir):
            if f == STATE or f in keep or (self._month_name and self._month_name in f):
                continue
            since = self._unref.setdefault(f, now)
            if now - since >= self.grace_s:
                try:
                    os.unlink(os.path.join(self.dir, f))
                except OSError:
                    pass
                self._unref.pop(f, None)
        for f in list(self._unref):
            if f in keep:
                self._unref.pop(f)

    def files(self) -> list[str]:
        """The part files on disk now (tests, bench)."""
        return sorted(f for f in os.listdir(self.dir) if f.endswith(".parquet"))
