"""The dashboard in real headless Debian chromium (Playwright, executable_path).

One browser per session; each test gets a fresh context.  Screenshots go to
artifacts/dashboard/."""

import json
import urllib.request

import pytest

from tests.dashboard import dash_builder as B
from tests.dashboard.dash_builder import TOKEN

pytestmark = pytest.mark.browser

PAGES = {
    "overview": ("/", 1),
    "job": ("/job/1001", 5),
    "node": ("/node/node001", 6),
    "script": ("/script?path=%2Fetc%2Fslurm%2Fprolog.d%2F10-mounts.sh", 1),
    "search": ("/search?q=node", 0),
}


def open_page(pw, srv, path):
    resp = pw.page.goto(srv.url.rstrip("/") + path)
    pw.page.wait_for_function("document.documentElement.hasAttribute('data-charts-ready')")
    return resp


def twin(srv, path):
    base, _, qs = path.partition("?")
    with urllib.request.urlopen(srv.url.rstrip("/") + base + ".json" + ("?" + qs if qs else ""), timeout=30) as r:
        return json.loads(r.read())


def embedded(pw, id_="charts"):
    return json.loads(pw.page.locator(f"script#{id_}").text_content())


@pytest.mark.parametrize("name", list(PAGES))
def test_page_loads_and_charts_render(server, page, shots, name):
    path, n_charts = PAGES[name]
    resp = open_page(page, server, path)
    assert resp.status == 200
    assert page.page.evaluate("document.documentElement.getAttribute('data-charts-ready')") == str(n_charts)
    figs = page.page.locator("figure.chart")
    assert figs.count() == n_charts
    for i in range(n_charts):
        fig = figs.nth(i)
        assert fig.get_attribute("data-rendered") == fig.get_attribute("data-series")
        assert fig.locator("canvas").count() == 1
        box = fig.locator("canvas").bounding_box()
        assert box["width"] > 200 and box["height"] > 100
    page.page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert not page.errors and not page.csp_violations(), (page.errors, page.console)


def test_job_gpu_charts_have_one_series_per_gpu(server, page):
    open_page(page, server, "/job/1001")
    n_gpus = sum(B.GPUS.values())
    for metric in ("utilization", "memory_used", "power_w", "temperature_c", "sm_clock_mhz"):
        fig = page.page.locator(f"figure#gpu-{metric}")
        assert fig.get_attribute("data-rendered") == str(n_gpus)
        # uPlot's legend: one row for time plus one per series.
        assert fig.locator(".u-legend .u-series").count() == n_gpus + 1
        labels = fig.locator(".u-legend .u-series .u-label").all_text_contents()[1:]
        assert labels == [f"{n} GPU{g}" for n, k in B.GPUS.items() for g in range(k)]
    markers = page.page.locator("#gpu-markers tbody tr").all_text_contents()
    assert any("XID 79" in m for m in markers) and any("ECC uncorrected" in m for m in markers)


def test_job_page_shows_what_its_json_twin_says(server, page):
    open_page(page, server, "/job/1001")
    d = twin(server, "/job/1001")
    charts = {c["id"]: c for c in embedded(page)}
    for col in d["gpu"]["metrics"]:
        c = charts[f"gpu-{col}"]
        assert c["x"] == d["gpu"]["t"]
        assert [s["values"] for s in c["series"]] == d["gpu"]["metrics"][col]
    rows = page.page.locator("#runs tbody tr")
    table_rows = d["audit"] if d["audit"] is not None else d["scripts"]
    assert rows.count() == len(table_rows)
    assert [rows.nth(i).locator("td").nth(3).inner_text() for i in range(rows.count())] == \
        [r["script"] for r in table_rows]
    meta = dict(zip(page.page.locator("#meta td:first-child").all_inner_texts(),
                    page.page.locator("#meta td:nth-child(2)").all_inner_texts()))
    assert meta["job name"] == d["meta"]["job_name"] and meta["user"] == d["meta"]["user_name"]
    assert page.page.locator("#waterfall .hookbar").count() == len(d["hooks"])


def test_overview_shows_what_its_json_twin_says(server, page):
    open_page(page, server, "/")
    d = twin(server, "/overview")
    stats = page.page.locator(".stat .v").all_inner_texts()
    assert stats[:4] == [str(d["totals"][k]) for k in ("hook_runs", "failed_hooks", "jobs", "nodes")]
    lat = page.page.locator("#latency tbody tr td:first-child").all_inner_texts()
    assert lat == [r["context"] for r in d["latency"]]
    assert page.page.locator("#problem-nodes tbody tr td:first-child").all_inner_texts() == \
        [", ".join(p["nodes"]) for p in d["problems"]]
    assert page.page.locator("#problem-nodes tbody tr td:last-child").all_inner_texts() == \
        [p["verdict"] for p in d["problems"]]
    chart = embedded(page)[0]
    assert chart["x"] == d["runs_over_time"]["t"]
    assert [s["values"] for s in chart["series"]] == [d["runs_over_time"]["runs"], d["runs_over_time"]["failures"]]


@pytest.mark.parametrize("path", ["/node/node003", "/script?path=%2Fetc%2Fslurm%2Fprolog.d%2F20-check-gpu.sh",
                                  "/job/1002", "/search?q=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"])
def test_xss_payloads_are_text_never_executed(server, page, shots, path):
    # A handler that ran would show as a dialog or as window.__pwned.
    page.page.add_init_script("window.alert = function () { window.__pwned = 'alert'; };")
    open_page(page, server, path)
    page.page.locator("details").evaluate_all("ds => ds.forEach(d => d.open = true)")
    page.page.wait_for_timeout(100)
    assert page.dialogs == []
    assert page.page.evaluate("window.__pwned === undefined")
    assert page.page.locator("img").count() == 0  # no <img> made it into the DOM
    assert page.page.locator("main script").count() == 0
    text = page.page.locator("main").inner_text()
    if path != "/job/1002":
        assert B.XSS in text  # shown, as text
    else:
        assert B.XSS_JOB_NAME in text
    assert not page.csp_violations(), page.console
    page.page.screenshot(path=str(shots / f"xss-{path.strip('/').split('/')[0].split('?')[0]}.png"), full_page=True)


def test_token_refuses_then_admits_via_cookie(token_server, page, shots):
    resp = page.page.goto(token_server.url.rstrip("/") + "/job/1001")
    assert resp.status == 401
    assert "needs a token" in page.page.locator("body").inner_text()
    resp = page.page.goto(token_server.url.rstrip("/") + f"/job/1001?token={TOKEN}")
    assert resp.status == 200 and "token=" not in page.page.url
    page.page.wait_for_function("document.documentElement.getAttribute('data-charts-ready') === '5'")
    assert page.page.locator("figure#gpu-utilization canvas").count() == 1  # static assets came via the cookie


def test_report_file_renders_offline(store_db, page, shots, tmp_path):
    from dashboards.report import write_report

    out = write_report("job", "1001", tmp_path / "job-1001.html", db=store_db)
    page.page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://") else r.abort())
    page.page.goto("file://" + out)
    page.page.wait_for_function("document.documentElement.getAttribute('data-charts-ready') === '5'")
    assert page.page.locator("figure#gpu-power_w").get_attribute("data-rendered") == "12"
    assert page.page.locator("main a").count() == 0  # dashboard links mean nothing in a file
    assert not page.errors and not page.csp_violations(), page.console
    page.page.screenshot(path=str(shots / "report-job.png"), full_page=True)
