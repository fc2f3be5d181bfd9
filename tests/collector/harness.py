"""Helpers for the collector's tests that read stores back: row counts,
duplicate checks, store comparisons and the metrics endpoint.

Publishing and running a collector (in-process or as a process) are pipeline
wiring: tests.helpers.pipeline (publish, collect_once, start_collect_process).
"""

from __future__ import annotations

import duckdb

from collector import schema


def counts(db) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in schema.TABLES}
    finally:
        con.close()


def no_duplicates(db) -> None:
    con = duckdb.connect(str(db), read_only=True)
    try:
        for t, keys in schema.KEYS.items():
            if t == "raw":
                continue
            k = ", ".join(keys)
            n, d = con.execute(f"SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT {k} FROM {t})) "
                               f"FROM {t}").fetchone()
            assert n == d, f"{t}: {n} rows, {d} distinct keys"
    finally:
        con.close()


def compare_stores(a, b, tables=None) -> dict:
    """{table: (rows only in a, rows only in b)} - empty dict when identical."""
    con = duckdb.connect()
    diffs = {}
    try:
        con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
        con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
        for t in tables or [t for t in schema.TABLES if t != "ingest_state"]:
            x = con.execute(f"SELECT count(*) FROM (SELECT * FROM a.{t} EXCEPT ALL SELECT * FROM b.{t})").fetchone()[0]
            y = con.execute(f"SELECT count(*) FROM (SELECT * FROM b.{t} EXCEPT ALL SELECT * FROM a.{t})").fetchone()[0]
            if x or y:
                diffs[t] = (x, y)
    finally:
        con.close()
    return diffs


def http_get(url, timeout=2.0) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
