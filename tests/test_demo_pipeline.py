"""`make demo` end to end: runner -> journal -> agent -> real nats-server -> collector -> DuckDB."""

import os
import subprocess
import sys

import duckdb


def test_demo_runs_the_whole_pipeline(tmp_path):
    env = dict(os.environ, HOOKSCOPE_DEMO_DIR=str(tmp_path / "demo"), HOOKSCOPE_DEMO_SERVE="0")
    p = subprocess.run([sys.executable, "-m", "dashboards.demo"], env=env, capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 journal files left" in p.stdout
    assert "node003" in p.stdout and "20-gpu-health" in p.stdout and "Prolog error" in p.stdout
    assert "http://127.0.0.1:8765/" in p.stdout
    # the pages that tell the story (dashboards/server.py routes)
    assert "http://127.0.0.1:8765/node/node003" in p.stdout and "http://127.0.0.1:8765/job/1002" in p.stdout
    con = duckdb.connect(str(tmp_path / "demo" / "hookscope.duckdb"), read_only=True)
    try:
        # 3 jobs: ctl prolog+epilog each (6), job 1001: 2 nodes x 3 hooks, 1002: 1 failed prolog,
        # 1003: 2 nodes x 3 hooks.
        assert con.execute("SELECT count(*) FROM hook_runs").fetchone()[0] == 6 + 6 + 1 + 6
        assert con.execute("SELECT count(DISTINCT job_id) FROM hook_runs").fetchone()[0] == 3
        failed = con.execute("SELECT node, path, exit_code FROM script_runs WHERE exit_code <> 0").fetchall()
        assert [(n, os.path.basename(p), e) for n, p, e in failed] == [("node003", "20-gpu-health", 2)]
        # Live agents sample at 1 Hz while the jobs run: a series per job GPU, not one dot.
        per_gpu = con.execute("SELECT node, gpu_index, count(*) FROM gpu_samples WHERE job_id = '1001' "
                              "GROUP BY ALL ORDER BY ALL").fetchall()
        assert [(n, g) for n, g, _ in per_gpu] == [("node002", 0), ("node002", 1), ("node003", 0), ("node003", 1)]
        assert min(k for *_, k in per_gpu) >= 5, per_gpu
        # The events the pages mark, where they happened.
        assert con.execute("SELECT count(*) FROM gpu_samples WHERE node = 'node003' AND gpu_index = 0 "
                           "AND xid = 79").fetchone()[0] > 0
        assert con.execute("SELECT max(ecc_dbe) FROM gpu_samples WHERE node = 'node002' AND gpu_index = 1 "
                           "AND job_id = '1001'").fetchone()[0] == 1
        # The secret in the failing script's output was redacted before it left the node.
        assert con.execute("SELECT count(*) FROM script_runs WHERE output LIKE '%demo-not-a-real-key%'"
                           ).fetchone()[0] == 0
    finally:
        con.close()
