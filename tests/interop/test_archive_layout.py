"""Archives written before the cluster column moved into the files
(``<table>/cluster=<c>/date=<d>/``, cluster only in the path, unsigned
sequences) still read, alone or mixed with the current layout, and a copy of
the same rows in both layouts counts once."""

import os
import shutil

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector import schema
from collector.archive import SCHEMA_FILE, Archive, read_sql, table_files
from queries.source import open_source


def _to_old_layout(path: str, root: str, table: str, keep_new: bool) -> None:
    """The file as the collector wrote it before: cluster in the path only, UBIGINT as uint64."""
    rel = os.path.relpath(path, os.path.join(root, table)).split(os.sep)  # date=D, <cluster>, name
    t = pq.read_table(path)
    if "cluster" in t.column_names:
        t = t.drop_columns(["cluster"])
    for i, f in enumerate(t.schema):
        if f.name in ("stream_seq", "seq"):
            t = t.set_column(i, f.name, t.column(i).cast(pa.uint64()))
    d = os.path.join(root, table, f"cluster={rel[1]}", rel[0])
    os.makedirs(d, exist_ok=True)
    pq.write_table(t, os.path.join(d, rel[2]))
    if not keep_new:
        os.unlink(path)


@pytest.mark.parametrize("keep_new", [False, True], ids=["half-migrated", "copies-in-both"])
def test_old_and_new_layouts_read_together(tmp_path, odd_clusters, keep_new):
    root = str(tmp_path / "archive")
    shutil.copytree(odd_clusters, root)
    want = {t: sorted(map(repr, duckdb.execute(read_sql(odd_clusters, t)).fetchall()))
            for t in schema.ARCHIVE_TABLES}
    for table in schema.ARCHIVE_TABLES:
        data = [f for f in table_files(root, table) if os.path.basename(f) != SCHEMA_FILE]
        for f in data:
            if "gpu-east" in f or keep_new:  # one cluster moves back to the old layout (or is copied)
                _to_old_layout(f, root, table, keep_new)
    for table in schema.ARCHIVE_TABLES:
        got = sorted(map(repr, duckdb.execute(read_sql(root, table)).fetchall()))
        assert got == want[table], table
    con = open_source(archive=root, quiet=True)
    try:
        assert sorted(r[0] for r in con.execute("SELECT DISTINCT cluster FROM hook_runs").fetchall()) == \
            ["001", "gpu-east"]
        for table in ("hook_runs", "script_runs", "gpu_samples", "journal"):
            n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert n == len(want[table]), table
    finally:
        con.close()


def test_schema_file_tracks_a_grown_schema(tmp_path):
    a = Archive(tmp_path, fsync=False)
    path = tmp_path / "node_events" / "date=1970-01-01" / SCHEMA_FILE
    pq.write_table(pa.table({"event_id": pa.array([], pa.string())}), path)  # as an older version wrote it
    a.write_schemas()
    assert "cluster" in pq.read_schema(path).names and pq.read_metadata(path).num_rows == 0
    assert a.files("node_events") == []
