"""Issue 16 on the dashboard: the job page's ``why job`` verdict and the node
page's consequence row, from the page data (both sources) to the escaped HTML."""

import pytest

from tests.dashboard import dash_builder as B
from dashboards import data, pages

LAUNCH_HELD = "launch failed requeued held"


@pytest.fixture(params=["db", "archive"])
def con(request, store_db, store_archive):
    c = data.open_store(db=store_db) if request.param == "db" else data.open_store(archive=store_archive)
    yield c
    c.close()


def test_job_page_data_has_the_verdict(con):
    w = data.job(con, "1002")["why"]
    dec, out = w["decided_by"], w["outcome"]
    assert (dec["hook"], dec["node"], dec["script"]) == ("Prolog", "node003", "/etc/slurm/prolog.d/20-check-gpu.sh")
    assert dec["sha256"] == B.SHA[dec["script"]] and B.XSS in dec["output"]
    assert (out["job"], out["reason"], out["drain_reason"]) == ("requeued held", LAUNCH_HELD, "Prolog error")
    assert w["verdict"].startswith("Job 1002 (user bob)") and LAUNCH_HELD in w["verdict"]
    ok = data.job(con, "1001")["why"]
    assert ok["decided_by"] is None and "succeeded" in ok["verdict"]


def test_job_page_html_shows_the_verdict_escaped(con):
    html = pages.job_page(data.job(con, "1002"), pages.server_assets())
    assert 'id="job-verdict"' in html and 'id="job-why"' in html
    assert LAUNCH_HELD in html and "what Slurm did to the job" in html
    assert B.XSS not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'href="/node/node003"' in html


def test_job_page_survives_a_failing_verdict(con, monkeypatch):
    from dashboards import jobdata

    def boom(*a, **k):
        raise RuntimeError("<b>kaput</b>")

    monkeypatch.setattr(jobdata, "why_job", boom)
    d = data.job(con, "1002")
    assert d["why"]["error"].startswith("why job failed") and d["hooks"]
    html = pages.job_page(d, pages.server_assets())
    assert "&lt;b&gt;kaput&lt;/b&gt;" in html and "<b>kaput</b>" not in html


def test_node_page_says_what_slurm_did(con):
    d = data.node(con, "node003")
    assert d["why"]["cause"]["consequence"]["job"] == "requeued held"
    html = pages.node_page(d, pages.server_assets())
    assert "what Slurm did" in html and LAUNCH_HELD in html
