"""polars and pyarrow read the archive as-is (`pl.read_parquet(dir)`,
`pq.read_table(dir)`, defaults only); their answers equal DuckDB's."""

import pytest

from collector import schema
from collector.columns import NAMES
from tests.interop import equivalents as eq
from tests.interop.conftest import DEMO_JOB_FAILED, DEMO_NODE_DRAINED, require_engine


@pytest.fixture(scope="module")
def pl():
    require_engine("polars")
    import polars
    return polars


def test_polars_reads_every_table_with_portable_types(pl, demo_root):
    root = demo_root
    ref = eq.reference(root, DEMO_NODE_DRAINED, DEMO_JOB_FAILED)
    for table in schema.ARCHIVE_TABLES:
        df = pl.read_parquet(f"{root}/{table}")
        assert set(NAMES[table]) <= set(df.columns), table
        assert not [n for n, t in df.schema.items() if t in (pl.UInt64, pl.UInt32) or t == pl.Decimal], table
        if "cluster" in df.columns:
            assert df.schema["cluster"] == pl.String
        assert df.height == ref["counts"][table], table


def test_polars_drains_why_and_audit_job_match_duckdb(pl, demo_root):
    root = demo_root
    ref = eq.reference(root, DEMO_NODE_DRAINED, DEMO_JOB_FAILED)
    t = eq.polars_tables(root)
    assert eq.polars_drains(t) == ref["drains"] and ref["drains"]
    assert eq.polars_why(t, DEMO_NODE_DRAINED) == ref["why"]
    assert eq.polars_audit(t, DEMO_JOB_FAILED) == ref["audit"]


def test_pyarrow_reads_every_table_and_answers_match_duckdb(demo_root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = demo_root
    ref = eq.reference(root, DEMO_NODE_DRAINED, DEMO_JOB_FAILED)
    rows = {}
    for table in schema.ARCHIVE_TABLES:
        t = pq.read_table(f"{root}/{table}")
        assert set(NAMES[table]) <= set(t.column_names), table
        assert not [f.name for f in t.schema if pa.types.is_unsigned_integer(f.type)
                    or pa.types.is_decimal(f.type)], table
        if "cluster" in t.column_names:
            assert t.schema.field("cluster").type == pa.string()
        assert t.num_rows == ref["counts"][table], table
        rows[table] = eq.dedup(t.to_pylist(), table) if table in eq.TABLES else None
    h, s = rows["hook_runs"], rows["script_runs"]
    assert eq.rows_drains(h, s) == ref["drains"]
    assert eq.rows_why(h, s, DEMO_NODE_DRAINED) == ref["why"]
    assert eq.rows_audit(h, s, DEMO_JOB_FAILED) == ref["audit"]


def test_cluster_001_is_a_string_in_polars_and_pyarrow(pl, odd_clusters):
    import pyarrow.parquet as pq

    for table, want in (("hook_runs", ["001", "gpu-east"]), ("journal", ["001", "gpu-east"]),
                        ("gpu_samples", ["001"])):
        assert sorted(pl.read_parquet(f"{odd_clusters}/{table}")["cluster"].unique().to_list()) == want
        assert sorted(set(pq.read_table(f"{odd_clusters}/{table}").column("cluster").to_pylist())) == want
    h = pl.read_parquet(f"{odd_clusters}/hook_runs")
    g = pl.read_parquet(f"{odd_clusters}/gpu_samples")
    assert h.join(g, on=["cluster", "node"]).height > 0
