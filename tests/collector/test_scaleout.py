"""Scale-out as docs/collector.md ("Several collectors, and the archive from other
engines") describes it, end to end (issue 14): two collectors on one durable of an
R3 stream, a shared archive read with DuckDB's hive partitioning."""
import duckdb
import pytest

from collector.config import CollectorConfig
from collector.rebuild import from_archive
from tests.collector.harness import counts
from tests.collector.test_collector_e2e import _run_in_thread, assert_expected, workload
from tests.helpers import wait_for
from tests.helpers.pipeline import publish
from tests.helpers.servers import NatsCluster

pytestmark = pytest.mark.slow


def test_two_collectors_one_durable_r3_stream_shared_archive(tmp_path):
    """Two collectors on one durable of an R3 stream, one server SIGKILLed
    mid-ingest: each message stored by exactly one collector, archived once in
    the shared directory, and the archive read with DuckDB's hive partitioning
    gives every row once."""
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        msgs, expect = workload(n_hooks=300, n_nodes=10)
        half = len(msgs) // 2
        publish(cluster.url, msgs[:half], replicas=3)
        arch = tmp_path / "archive"  # shared: file names start with the instance name
        cols = [_run_in_thread(CollectorConfig(nats_url=cluster.url, db=str(tmp_path / f"c{i}.duckdb"),
                                               archive=str(arch), instance=f"c{i}", batch=20,
                                               replicas=3, fsync=False)) for i in range(2)]
        done = lambda: sum(c.metrics.snapshot()["messages"] for c, _ in cols)  # noqa: E731
        try:
            wait_for(lambda: done() >= 20, 30, what="first batches")
            cluster.servers[0].kill()  # SIGKILL one of three mid-ingest
            publish(",".join(s.url for s in cluster.servers[1:]), msgs[half:], replicas=3)
            wait_for(lambda: done() >= len(msgs), 120, what="all messages")
        finally:
            for _, stop in cols:
                stop()
        split = [counts(tmp_path / f"c{i}.duckdb")["hook_runs"] for i in range(2)]
        assert sum(split) == expect["hook_runs"], split  # each message went to exactly one
        con = duckdb.connect()
        g = str(arch / "raw" / "*" / "*" / "*.parquet")
        n, distinct, dates = con.execute(
            f"SELECT count(*), count(DISTINCT stream_seq), count(DISTINCT date) "
            f"FROM read_parquet('{g}', hive_partitioning = true) WHERE date > DATE '1970-01-01'").fetchone()
        assert n == distinct == len(msgs) and dates >= 1  # archived once in the union
        union = tmp_path / "union.duckdb"
        from_archive(str(arch), str(union), progress=False)
        assert_expected(union, expect)
    finally:
        cluster.stop()
