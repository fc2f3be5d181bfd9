"""The archive's schema cache (collector.archive.file_shapes): each file's
footer read once, in memory and in ``<root>/.shapes-<table>.json``; a file
replaced under the same name is read again; a read-only archive still reads."""

import os

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector import archive as A
from collector.columns import ARROW_SCHEMAS
from queries.source import open_source


class CountingCon:
    """A DuckDB connection that counts the footer reads (parquet_schema)."""

    def __init__(self):
        self.con = duckdb.connect(":memory:")
        self.footer_reads = 0

    def execute(self, sql, *a):
        if "parquet_schema(" in sql:
            self.footer_reads += sql.count(".parquet'")
        return self.con.execute(sql, *a)


def make_archive(root, n=5, extra_col=False):
    A.Archive(root, fsync=False).close()
    files = []
    for i in range(n):
        d = os.path.join(root, "hook_runs", f"date=2026-11-0{1 + i % 3}", "c1")
        os.makedirs(d, exist_ok=True)
        tb = ARROW_SCHEMAS["hook_runs"].empty_table()
        if extra_col and i == n - 1:
            tb = tb.append_column("later_col", pa.array([], pa.int32()))
        path = os.path.join(d, A.file_name("t", i * 10 + 1, i * 10 + 10))
        pq.write_table(tb, path)
        files.append(path)
    return files


@pytest.fixture(autouse=True)
def fresh_cache():
    A._SHAPES.clear()
    yield
    A._SHAPES.clear()


def test_each_footer_is_read_once(tmp_path):
    files = make_archive(str(tmp_path / "a"))
    con = CountingCon()
    first = A.file_shapes(con, files)
    assert con.footer_reads == len(files) and len(set(first.values())) == 1
    assert A.file_shapes(con, files) == first
    assert con.footer_reads == len(files)  # from memory


def test_the_cache_file_serves_a_new_process(tmp_path):
    root = str(tmp_path / "a")
    files = make_archive(root)
    first = A.file_shapes(CountingCon(), files)
    assert os.path.exists(os.path.join(root, ".shapes-hook_runs.json"))
    A._SHAPES.clear()  # as a new process
    con = CountingCon()
    assert A.file_shapes(con, files) == first
    assert con.footer_reads == 0


def test_a_replaced_file_is_read_again_and_shapes_differ(tmp_path):
    root = str(tmp_path / "a")
    files = make_archive(root)
    A.file_shapes(CountingCon(), files)
    tb = ARROW_SCHEMAS["hook_runs"].empty_table().append_column("later_col", pa.array([], pa.int32()))
    pq.write_table(tb, files[0] + ".new")
    os.replace(files[0] + ".new", files[0])
    con = CountingCon()
    shapes = A.file_shapes(con, files)
    assert con.footer_reads == 1
    assert len(set(shapes.values())) == 2 and "later_col" in shapes[files[0]]


def test_readers_still_merge_differing_files(tmp_path):
    """The cache decides union_by_name: a file with a later column is read."""
    root = str(tmp_path / "a")
    make_archive(root, extra_col=True)
    for _ in range(2):  # cold, then cached
        con = open_source(archive=root)
        assert con.execute("SELECT count(*) FROM hook_runs").fetchone()[0] == 0
        con.close()


def test_an_unwritable_cache_file_is_not_an_error(tmp_path, monkeypatch):
    files = make_archive(str(tmp_path / "a"))

    def refuse(*a, **k):
        raise OSError("read-only file system")
    # a read-only archive (the tests run as root, which chmod does not stop)
    monkeypatch.setattr(A.os, "replace", refuse)
    con = CountingCon()
    assert len(A.file_shapes(con, files)) == len(files)
    assert A.file_shapes(con, files) and con.footer_reads == len(files)  # memory still serves
