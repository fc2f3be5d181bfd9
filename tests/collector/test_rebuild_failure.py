"""A rebuild that fails leaves the live store as it was and no half-built file."""

import os

import duckdb
import pytest

from collector import rebuild
from collector.schema import create_all


def test_corrupt_archive_file_fails_cleanly_and_keeps_the_live_store(tmp_path):
    db = tmp_path / "h.duckdb"
    con = duckdb.connect(str(db))
    create_all(con)
    con.execute("INSERT INTO ingest_state VALUES ('live', 7, now())")
    con.close()
    bad = tmp_path / "archive" / "hook_runs" / "cluster=c1" / "date=2026-12-01"
    bad.mkdir(parents=True)
    (bad / "x-000000000001-000000000002.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(rebuild.RebuildError, match="rebuild from .*archive.* failed"):
        rebuild.from_archive(str(tmp_path / "archive"), str(db), progress=False)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT consumer, last_seq FROM ingest_state").fetchall() == [("live", 7)]
    finally:
        con.close()
    assert sorted(os.listdir(tmp_path)) == ["archive", "h.duckdb"]
