"""The interop tier: the Parquet archive read by engines nobody on the project
wrote (Spark, polars, pyarrow), with their defaults, against DuckDB.

The archives are made by the real pipeline: ``dashboards.demo`` (runner,
agent, embedded nats-server, collector) for the demo archive, and the
collector's own Batch + Archive write path for an archive whose clusters are
named ``001`` and ``gpu-east``.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiers import require

ROOT = Path(__file__).resolve().parents[2]

DEMO_JOB_FAILED, DEMO_NODE_DRAINED = "1002", "node003"


def engine_missing(module: str) -> str | None:
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed (pip install -e '.[test]' installs it)"
    return None


def require_engine(module: str):
    r = engine_missing(module)
    require(r is None, r or "")


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """(archive root, DuckDB file) of one ``make demo`` run."""
    out = tmp_path_factory.mktemp("interop") / "demo"
    env = dict(os.environ, HOOKSCOPE_DEMO_DIR=str(out), HOOKSCOPE_DEMO_SERVE="0")
    p = subprocess.run([sys.executable, "-m", "dashboards.demo"], env=env, capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    return str(out / "archive"), str(out / "hookscope.duckdb")


@pytest.fixture(scope="session", params=["as written", "compacted"])
def demo_root(request, demo, tmp_path_factory):
    """The demo archive's root as the collector wrote it, and after
    ``hookscope compact`` (every day closed): files sorted by (node, time)
    with Bloom filters and ``sorting_columns`` in their footers, which every
    engine must still read as plain Parquet."""
    root, _ = demo
    if request.param == "as written":
        return root
    import shutil

    from collector.compact import compact
    out = str(tmp_path_factory.mktemp("interop") / "compacted")
    shutil.copytree(root, out)
    assert compact(out, today="2099-01-01"), "nothing was compacted"
    return out


@pytest.fixture(scope="session")
def odd_clusters(tmp_path_factory):
    """An archive written by the collector's path for clusters '001' and
    'gpu-east' (hook tables), '001' alone (gpu_samples)."""
    from tests.collector.gen import Node, gpu_message, hook_message

    from collector.archive import Archive
    from collector.columns import Batch
    from collector.decode import decode_message

    root = tmp_path_factory.mktemp("interop") / "odd"
    b = Batch("interop")
    seq = 0
    now = time.time_ns()
    for cluster in ("001", "gpu-east"):
        node = Node("n1", cluster=cluster)
        for job, fail in (("7", None), ("8", 1)):
            subj, mid, payload, _ = hook_message(node, job_id=job, fail_index=fail)
            seq += 1
            b.add(decode_message(payload, subj, seq, now), seq, subj, now, payload, mid, None)
        if cluster == "001":
            # GPU samples from cluster 001 only: a table whose every cluster
            # looks like a number is the one Hive discovery typed as an integer.
            subj, mid, payload, _ = gpu_message(node)
            seq += 1
            b.add(decode_message(payload, subj, seq, now), seq, subj, now, payload, mid, None)
    parts, _ = b.arrow()
    a = Archive(root, consumer="interop", fsync=False)
    a.write(parts, 1, seq)
    a.close()
    return str(root)
