"""`make demo` end to end: runner -> journal -> agent -> real nats-server -> collector -> DuckDB."""

import os
import subprocess
import sys

import duckdb


def test_demo_runs_the_whole_pipeline(tmp_path):
    env = dict(os.environ, HOOKSCOPE_DEMO_DIR=str(tmp_path / "demo"), HOOKSCOPE_DEMO_SERVE="0")
    p = subprocess.run([sys.executable, "-m", "collector.demo"], env=env, capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 journal files left" in p.stdout
    assert "node003" in p.stdout and "20-gpu-health" in p.stdout and "Prolog error" in p.stdout
    assert "http://127.0.0.1:8765/" in p.stdout
    con = duckdb.connect(str(tmp_path / "demo" / "hookscope.duckdb"), read_only=True)
    try:
        # 3 jobs: ctl prolog+epilog each (6), job 1001: 2 nodes x 3 hooks, 1002: 1 failed prolog,
        # 1003: 2 nodes x 3 hooks.
        assert con.execute("SELECT count(*) FROM hook_runs").fetchone()[0] == 6 + 6 + 1 + 6
        assert con.execute("SELECT count(DISTINCT job_id) FROM hook_runs").fetchone()[0] == 3
        failed = con.execute("SELECT node, path, exit_code FROM script_runs WHERE exit_code <> 0").fetchall()
        assert [(n, os.path.basename(p), e) for n, p, e in failed] == [("node003", "20-gpu-health", 2)]
        assert con.execute("SELECT count(*) FROM gpu_samples").fetchone()[0] > 0
        # The secret in the failing script's output was redacted before it left the node.
        assert con.execute("SELECT count(*) FROM script_runs WHERE output LIKE '%demo-not-a-real-key%'"
                           ).fetchone()[0] == 0
    finally:
        con.close()
