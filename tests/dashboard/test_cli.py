"""``hookscope report`` and ``hookscope dashboard``: click layer and real subprocesses."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from tests.dashboard import dash_builder as B
from dashboards import cli

ROOT = Path(__file__).resolve().parents[2]


def test_report_job_is_self_contained(store_db, tmp_path):
    out = tmp_path / "job.html"
    r = CliRunner().invoke(cli.report, ["job", "1002", "-o", str(out), "--db", store_db])
    assert r.exit_code == 0, r.output
    html = out.read_text()
    # Everything inline: no external script, stylesheet, image or font.
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', html)
    assert "http-equiv=\"Content-Security-Policy\"" in html and "unsafe-inline" not in html
    assert "uPlot" in html and "--bad:" in html
    # User strings escaped, page data embedded for the auditor.
    assert B.XSS not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script>window.__pwned" not in html
    assert 'id="page-data"' in html and "\\u003cimg src=x" in html
    assert re.search(r'<a href=', html) is None  # no dashboard links without --base-url


def test_report_links_to_a_dashboard_when_asked(store_db, tmp_path):
    out = tmp_path / "node.html"
    r = CliRunner().invoke(cli.report, ["node", "node003", "-o", str(out), "--db", store_db,
                                        "--base-url", "https://hookscope.example/"])
    assert r.exit_code == 0, r.output
    assert 'href="https://hookscope.example/job/1002"' in out.read_text()


def test_report_errors_are_clear(store_db, tmp_path):
    r = CliRunner().invoke(cli.report, ["job", "4242", "-o", str(tmp_path / "x.html"), "--db", store_db])
    assert r.exit_code == 1 and "job 4242 has no hook runs" in r.output
    assert not (tmp_path / "x.html").exists()
    r = CliRunner().invoke(cli.report, ["job", "1", "-o", str(tmp_path / "x.html"), "--db",
                                        str(tmp_path / "missing.duckdb")])
    assert r.exit_code == 1 and "missing.duckdb" in r.output
    r = CliRunner().invoke(cli.report, ["job", "1001", "-o", str(tmp_path / "no" / "dir" / "x.html"),
                                        "--db", store_db])
    assert r.exit_code == 1 and "cannot write the report" in r.output
    r = CliRunner(env={"HOOKSCOPE_DB": None, "HOOKSCOPE_ARCHIVE": None}).invoke(
        cli.report, ["job", "1", "-o", str(tmp_path / "x.html")])
    assert r.exit_code == 2 and "--db FILE or --archive DIR" in r.output


def test_help_has_examples():
    for cmd, args in ((cli.dashboard, []), (cli.report, []), (cli.report, ["job"]), (cli.report, ["node"])):
        r = CliRunner().invoke(cmd, args + ["--help"])
        assert r.exit_code == 0 and "Example:" in r.output


def test_dashboard_refuses_open_bind_without_token(store_db):
    r = CliRunner(env={"HOOKSCOPE_DASHBOARD_TOKEN": None}).invoke(
        cli.dashboard, ["--db", store_db, "--host", "0.0.0.0", "--port", "0"])
    assert r.exit_code == 1 and "without a token" in r.output


def test_hookscope_dashboard_subprocess_serves_and_stops(store_db):
    """The real console script: starts, serves the overview, exits on SIGINT."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HOOKSCOPE_DASHBOARD_TOKEN", None)
    exe = Path(sys.executable).with_name("hookscope")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "emitter.cli"]
    # As from a terminal: a test run started in the background (nohup, `&`)
    # would otherwise hand SIGINT on ignored, and Ctrl-C would do nothing.
    p = subprocess.Popen(cmd + ["dashboard", "--db", store_db, "--port", "0"], stderr=subprocess.PIPE,
                         text=True, env=env, cwd=str(ROOT),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "http://" not in line:
            line = p.stderr.readline()
            if not line and p.poll() is not None:
                break
        m = re.search(r"http://\S+", line)
        assert m, f"no URL printed: {line!r}"
        with urllib.request.urlopen(m.group(0) + "overview.json", timeout=30) as r:
            assert r.status == 200 and b'"hook_runs": 54' in r.read()
        p.send_signal(2)
        assert p.wait(timeout=15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
