"""The store's checkpoint interval (collector/store.py): a share of DuckDB's
memory limit, between MIN_CHECKPOINT_WAL_BYTES and CHECKPOINT_WAL_BYTES,
read back from DuckDB's own setting; and the store checkpointing at it."""

import os
import time

import pytest

from collector import store as S
from collector.columns import Batch
from collector.decode import decode_message
from collector.store import Store
from tests.collector.gen import Node, hook_message

MB = 1 << 20
NOW = time.time_ns()


@pytest.mark.parametrize("text, want", [
    ("488.2 MiB", int(488.2 * MB)), ("1.8 GiB", int(1.8 * (1 << 30))), ("18.8 GiB", int(18.8 * (1 << 30))),
    ("0 bytes", 0), ("12 KB", 12_000), ("2 TiB", 2 << 40),
    ("", None), ("lots", None), ("12 parsecs", None), ("1,5 GiB", None),
])
def test_parse_size_reads_duckdb_sizes(text, want):
    assert S.parse_size(text) == want


@pytest.mark.parametrize("limit, want", [
    (None, 64 * MB), (0, 64 * MB), (36 * MB, 64 * MB), (512 * MB, 64 * MB), (1 << 30, 128 * MB),
    (2 << 30, 256 * MB), (12 << 30, 256 * MB), (1 << 40, 256 * MB),
])
def test_interval_is_a_share_of_the_limit_within_bounds(limit, want):
    assert S.checkpoint_wal_bytes(limit) == want


def test_a_lower_maximum_wins_over_the_minimum(monkeypatch):
    """tests/bench/bench_ingest.py --checkpoint-mb sets CHECKPOINT_WAL_BYTES alone."""
    monkeypatch.setattr(S, "CHECKPOINT_WAL_BYTES", 16 * MB)
    assert S.checkpoint_wal_bytes(12 << 30) == 16 * MB


@pytest.mark.parametrize("limit, want", [("512MB", 64 * MB), ("1GB", 10**9 // 8), ("4GB", 256 * MB)])
def test_the_store_takes_its_interval_from_duckdbs_limit(tmp_path, limit, want):
    st = Store(tmp_path / "c.duckdb", consumer="t", memory_limit=limit, threads=1)
    try:
        # DuckDB prints its limit rounded ("953.6 MiB" for 1GB): within a MiB
        assert abs(st.checkpoint_wal_bytes - want) < MB
    finally:
        st.close(snapshot=False)


def test_the_store_checkpoints_once_the_wal_reaches_its_interval(tmp_path):
    db = tmp_path / "c.duckdb"
    st = Store(db, consumer="t", snapshot_interval=3600, threads=1)
    st.checkpoint_wal_bytes = 1 * MB
    node = Node("ck01")
    try:
        walled = []
        for k in range(12):  # about 0.4 MB of WAL a batch
            b = Batch("t")
            for i in range(20):
                subj, mid, payload, _ = hook_message(node, n_scripts=8)
                seq = k * 20 + i + 1
                b.add(decode_message(payload, subj, seq, NOW), seq, subj, NOW, payload, mid, "gpu1")
            st.commit(b.arrow()[1], seq)
            walled.append(os.path.getsize(str(db) + ".wal") if os.path.exists(str(db) + ".wal") else 0)
        # after each commit the WAL is below the interval (it checkpointed
        # when a commit took it past), and it did checkpoint on the way
        assert max(walled) < 1 * MB, walled
        assert any(b < a for a, b in zip(walled, walled[1:])), walled
        assert st.counts()["hook_runs"] == 240
    finally:
        st.close(snapshot=False)
