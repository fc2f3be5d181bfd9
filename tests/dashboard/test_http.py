"""The HTTP layer against a real server on a free loopback port (no browser)."""

import json
import urllib.error
import urllib.request

import pytest

from tests.dashboard.dash_builder import TOKEN
from dashboards import data, server as dserver


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def get(srv, path, headers=None, method="GET"):
    req = urllib.request.Request(srv.url.rstrip("/") + path, headers=headers or {}, method=method)
    try:
        with OPENER.open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize("path,func,args", [
    ("/overview", data.overview, ()),
    ("/job/1001", data.job, ("1001",)),
    ("/node/node003", data.node, ("node003",)),
    ("/script?path=%2Fetc%2Fslurm%2Fprolog.d%2F10-mounts.sh", data.script, ("/etc/slurm/prolog.d/10-mounts.sh",)),
    ("/search?q=node", data.search, ("node",)),
])
def test_json_twins_are_the_page_data(server, store_db, path, func, args):
    base, _, qs = path.partition("?")
    st1, h1, b1 = get(server, base + ".json" + ("?" + qs if qs else ""))
    st2, _, b2 = get(server, path + ("&" if qs else "?") + "format=json")
    assert st1 == st2 == 200 and h1["Content-Type"].startswith("application/json")
    assert json.loads(b1) == json.loads(b2)
    con = data.open_store(db=store_db)
    try:
        assert json.loads(b1) == json.loads(json.dumps(func(con, *args)))
    finally:
        con.close()


def test_every_html_response_has_strict_csp(server):
    for path in ("/", "/job/1001", "/node/node003", "/search?q=x", "/job/nope"):
        status, h, body = get(server, path)
        assert status in (200, 404)
        csp = h["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert h["X-Content-Type-Options"] == "nosniff" and h["X-Frame-Options"] == "DENY"
        assert b"<script>" not in body  # no inline script at all: only src= and application/json blocks


def test_errors_are_clear_and_typed(server):
    st, _, b = get(server, "/job/4242.json")
    assert st == 404 and "job 4242 has no hook runs" in json.loads(b)["error"]
    st, _, b = get(server, "/overview.json?since=yesterday")
    assert st == 400 and "ISO-8601" in json.loads(b)["error"]
    st, _, b = get(server, "/job/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert st == 404 and b"<img src=x" not in b and b"&lt;img src=x onerror=alert(1)&gt;" in b
    st, _, _ = get(server, "/no/such/page")
    assert st == 404


def test_window_takes_the_cli_time_forms(server):
    """One parse_time (queries.source) for the CLI and the dashboard: ``30min``
    and ``1.5h`` work for ``why --since`` and so here (they were a 400)."""
    for since in ("30min", "1.5h", "30m", "2026-12-01T00:00Z"):
        st, _, b = get(server, f"/overview.json?since={since}")
        assert st == 200, (since, b)
        page = json.loads(b)
        assert page["window"]["since"] < page["window"]["until"], page["window"]
    st, _, b = get(server, "/overview.json?since=30min&until=now")
    assert st == 200, b


def test_read_only_methods(server):
    for m in ("POST", "PUT", "DELETE"):
        st, h, _ = get(server, "/overview", method=m)
        assert st == 405 and h["Allow"] == "GET, HEAD"


def test_static_assets_are_vendored_and_whitelisted(server):
    st, h, b = get(server, "/static/uPlot.iife.min.js")
    assert st == 200 and b.startswith(b"/*! https://github.com/leeoniya/uPlot") and "javascript" in h["Content-Type"]
    for bad in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/nope.js"):
        assert get(server, bad)[0] == 404
    st, _, body = get(server, "/")
    assert b"http://" not in body.replace(server.url.encode(), b"") and b"https://" not in body


def test_search_goes_straight_to_an_exact_match(server):
    st, h, _ = get(server, "/search?q=1001")
    assert st == 302 and h["Location"] == "/job/1001"
    st, h, _ = get(server, "/search?q=node004")
    assert st == 302 and h["Location"] == "/node/node004"
    assert get(server, "/search?q=node")[0] == 200


def test_token_is_required_when_set(token_server):
    st, h, b = get(token_server, "/overview")
    assert st == 401 and h["WWW-Authenticate"].startswith("Bearer") and b"token" in b
    assert get(token_server, "/job/1001.json")[0] == 401
    assert get(token_server, "/static/dash.js")[0] == 401
    assert get(token_server, "/overview", {"Authorization": "Bearer wrong-token-000000000"})[0] == 401
    assert get(token_server, "/overview", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    st, h, _ = get(token_server, f"/job/1001?token={TOKEN}&x=1")
    assert st == 303 and h["Location"] == "/job/1001?x=1"  # the token leaves the URL
    cookie = h["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in h["Set-Cookie"] and "SameSite=Strict" in h["Set-Cookie"]
    assert get(token_server, "/job/1001", {"Cookie": cookie})[0] == 200
    assert get(token_server, "/job/1001", {"Cookie": "hookscope_token=nope"})[0] == 401
    assert get(token_server, "/job/1001", {"Cookie": 'x="\\q; ' + cookie})[0] in (200, 401)  # never 500
    assert get(token_server, "/healthz")[0] == 200  # liveness only, no data


def test_non_loopback_bind_needs_a_token(store_db, monkeypatch):
    monkeypatch.delenv(dserver.TOKEN_ENV, raising=False)
    with pytest.raises(dserver.AuthConfigError, match="--token"):
        dserver.make_server(db=store_db, host="0.0.0.0", port=0)
    with pytest.raises(dserver.AuthConfigError, match="16 to 256"):
        dserver.make_server(db=store_db, port=0, token="short")
    monkeypatch.setenv(dserver.TOKEN_ENV, TOKEN)
    srv = dserver.make_server(db=store_db, host="0.0.0.0", port=0)
    try:
        assert srv.token == TOKEN
    finally:
        srv.server_close()


def test_busy_port_is_a_clear_error(server, store_db):
    with pytest.raises(dserver.DashboardError, match="cannot listen on 127.0.0.1"):
        dserver.make_server(db=store_db, port=server.server_address[1])


def test_store_is_opened_read_only(server, store_db):
    """Whatever a request does, the store cannot be written through the dashboard."""
    import duckdb

    con = server.store.cursor()
    try:
        with pytest.raises(duckdb.Error):
            con.execute("DELETE FROM hook_runs")
    finally:
        con.close()
    assert get(server, "/overview.json")[0] == 200


def test_store_locked_by_the_collector_is_503_until_its_snapshot_appears(store_db, tmp_path, monkeypatch):
    """As under 'hookscope serve': the collector holds the live file and has not
    published a snapshot yet.  The dashboard starts, answers 503, then serves."""
    import shutil
    import subprocess
    import sys

    from collector.schema import snapshot_path

    monkeypatch.setattr(dserver, "RETRY_OPEN_S", 0.0)
    live = tmp_path / "hookscope.duckdb"
    shutil.copy(store_db, live)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(120)", str(live)],
                              stdout=subprocess.PIPE, text=True)
    srv = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        srv = dserver.make_server(db=str(live), archive=str(tmp_path / "archive"))
        import threading

        threading.Thread(target=srv.serve_forever, daemon=True).start()
        st, _, b = get(srv, "/overview.json")
        assert st == 503 and "not readable yet" in json.loads(b)["error"]
        shutil.copy(store_db, snapshot_path(str(live)))
        st, _, b = get(srv, "/overview.json")
        assert st == 200 and json.loads(b)["totals"]["hook_runs"] == 54
    finally:
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        holder.kill()
        holder.wait()
