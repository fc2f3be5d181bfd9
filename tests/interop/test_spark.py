"""Spark reads the archive as-is: `spark.read.parquet(<archive>/<table>)`, no
schema, no options; its answers to drains / why / audit job equal DuckDB's."""

import re
import shutil
import subprocess

import pytest

from collector import schema
from tests.interop import equivalents as eq
from tests.interop.conftest import DEMO_JOB_FAILED, DEMO_NODE_DRAINED, engine_missing, require_engine
from tests.tiers import require


def _java_missing():
    java = shutil.which("java")
    if not java:
        return "no java on PATH: Spark 4 needs Java 17+ (Debian: openjdk-17-jre-headless)"
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)', out)
    if not m or int(m.group(1)) < 17:
        return f"Spark 4 needs Java 17+, found: {out.splitlines()[:1]}"
    return None


@pytest.fixture(scope="module")
def spark():
    """One local[1] session for the module: the JVM start is the expensive part."""
    require_engine("pyspark")
    r = _java_missing()
    require(r is None, r or "")
    from pyspark.sql import SparkSession

    s = (SparkSession.builder.master("local[1]").appName("hookscope-interop")
         .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "1").getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    try:
        yield s
    finally:
        s.stop()


def test_every_table_reads_with_portable_types_and_counts_match(spark, demo_root):
    root = demo_root
    ref = eq.reference(root, DEMO_NODE_DRAINED, DEMO_JOB_FAILED)
    for table in schema.ARCHIVE_TABLES:
        df = spark.read.parquet(f"{root}/{table}")  # the empty ones too: no PATH_NOT_FOUND
        types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
        from collector.columns import NAMES
        assert set(NAMES[table]) <= set(types), table
        assert not [n for n, t in types.items() if t.startswith("decimal")], (table, types)
        if "cluster" in types:
            assert types["cluster"] == "string"
        assert types["date"] == "date"
        assert df.count() == ref["counts"][table], table
    assert spark.read.parquet(f"{root}/hook_runs").select("cluster").distinct().collect()[0][0] == "demo"


def test_drains_why_and_audit_job_match_duckdb(spark, demo_root):
    root = demo_root
    ref = eq.reference(root, DEMO_NODE_DRAINED, DEMO_JOB_FAILED)
    eq.spark_views(spark, root)
    assert eq.spark_drains(spark) == ref["drains"] and ref["drains"]
    assert eq.spark_why(spark, DEMO_NODE_DRAINED) == ref["why"]
    assert eq.spark_audit(spark, DEMO_JOB_FAILED) == ref["audit"] and len(ref["audit"]) > 3


def test_cluster_named_001_stays_a_string_and_tables_join(spark, odd_clusters):
    """Hive discovery typed a cluster=001 directory as the integer 1; a join
    with a table holding gpu-east failed with CAST_INVALID_INPUT."""
    import duckdb

    root = odd_clusters
    h = spark.read.parquet(f"{root}/hook_runs")
    g = spark.read.parquet(f"{root}/gpu_samples")
    assert sorted(r[0] for r in h.select("cluster").distinct().collect()) == ["001", "gpu-east"]
    assert [r[0] for r in g.select("cluster").distinct().collect()] == ["001"]  # not 1
    assert dict(h.dtypes)["cluster"] == "string" == dict(g.dtypes)["cluster"]
    joined = h.join(g, on=["cluster", "node"]).count()
    want = duckdb.execute(f"SELECT count(*) FROM ({_sql(root, 'hook_runs')}) h "
                      f"JOIN ({_sql(root, 'gpu_samples')}) g USING (cluster, node)").fetchone()[0]
    assert joined == want > 0


def _sql(root, table):
    from collector.archive import read_sql
    return read_sql(root, table)


def test_pyspark_is_an_engine_the_tier_knows():
    assert engine_missing("definitely_not_a_module_hookscope") is not None
