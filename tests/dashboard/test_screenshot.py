"""The README's dashboard screenshots, taken in real headless Debian chromium
from the demo's own data (``python -m dashboards.demo``, the pipeline of
``make demo``), and checked before they are written.

Writes docs/img/dashboard.png (node003, the drained node: why, hooks, GPU
series with the XID 79 marker) and docs/img/job.png (job 1001: waterfall and
1 Hz GPU series with the uncorrected ECC marker).  Regenerate with:

    .venv/bin/python -m pytest tests/dashboard/test_screenshot.py
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
IMG = ROOT / "docs" / "img"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    out = tmp_path_factory.mktemp("screenshot") / "demo"
    env = dict(os.environ, HOOKSCOPE_DEMO_DIR=str(out), HOOKSCOPE_DEMO_SERVE="0")
    p = subprocess.run([sys.executable, "-m", "dashboards.demo"], env=env, capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    from dashboards.server import make_server

    srv = make_server(db=str(out / "hookscope.duckdb"), port=0)
    t = threading.Thread(target=srv.serve_forever, name="dashboard", daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def _shoot(page, srv, path, out, marker):
    page.page.set_viewport_size({"width": 1400, "height": 1000})
    resp = page.page.goto(srv.url.rstrip("/") + path)
    assert resp.status == 200
    page.page.wait_for_function("document.documentElement.hasAttribute('data-charts-ready')")
    util = page.page.locator("figure#gpu-utilization")
    # a time series, not one dot per GPU: the demo samples at 1 Hz for ~20 s
    assert int(util.get_attribute("data-rendered")) >= 2
    markers = page.page.locator("#gpu-markers tbody tr").all_text_contents()
    assert any(marker in m for m in markers), markers
    assert not page.errors and not page.csp_violations(), (page.errors, page.console)
    IMG.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(IMG / out), full_page=True)
    assert (IMG / out).stat().st_size > 20_000


def test_readme_screenshot_of_the_drained_node(demo_server, page):
    _shoot(page, demo_server, "/node/node003", "dashboard.png", "XID 79")


def test_readme_screenshot_of_a_job_with_gpu_series(demo_server, page):
    _shoot(page, demo_server, "/job/1001", "job.png", "ECC uncorrected")
