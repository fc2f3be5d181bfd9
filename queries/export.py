"""Export query results to a file for an auditor: csv, parquet or json.

Results are plain data (lists of dicts, or one dict).  JSON keeps them as
they are; CSV and Parquet need flat rows, so nested values (lists, dicts)
are written as JSON text in their cell, and a single dict becomes one row.
"""

from __future__ import annotations

import csv
import json
import os

from emitter.fsutil import replacing

from queries import QueryError
from queries.safetext import csv_cell, json_text

FORMATS = ("csv", "parquet", "json")


class ExportError(QueryError):
    """The export file cannot be written (bad format, unwritable path)."""


def _flat_rows(data) -> list[dict]:
    if isinstance(data, dict):
        data = [data]
    out = []
    for r in data:
        out.append({k: (json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v)
                    for k, v in r.items()})
    return out


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    seen = set()
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def export(data, fmt: str, path) -> str:
    """Write ``data`` to ``path`` as ``fmt``; returns the path written.

    Written to a temporary name and renamed, so a failed export never leaves
    a half-written file where the auditor expects the result.
    """
    fmt = (fmt or "").lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    path = os.fspath(path)

    def fail(exc):
        return ExportError(f"cannot write the export file {path}: {exc.strerror or exc}; "
                           f"check the directory exists and is writable")

    with replacing(path, fail) as tmp:
        if fmt == "json":
            with open(tmp, "w", encoding="utf-8") as f:
                # Lossless, and no raw control character (safetext.json_text).
                f.write(json_text(data, indent=2, sort_keys=False))
                f.write("\n")
        elif fmt == "csv":
            # A spreadsheet or a terminal shows CSV: controls made visible,
            # formula-like cells quoted (safetext.csv_cell).  Parquet and
            # JSON are the lossless exports.
            rows = [{k: csv_cell(v) for k, v in r.items()} for r in _flat_rows(data)]
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                w = csv.DictWriter(f, fieldnames=_columns(rows))
                w.writeheader()
                w.writerows(rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows = _flat_rows(data)
            cols = _columns(rows)
            table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows]) if rows \
                else pa.table({})
            pq.write_table(table, tmp)
    return path
