"""A dashboard over an archive alone keeps answering after a compaction
unlinks the files its views name (issue 14: the collector now compacts by
itself): collector.compact touches the archive's marker after every merge and
the dashboard's Store reopens when it moves."""
from collector.compact import MARKER, compact
from dashboards import server
from tests.queries.queries_scenario import build_scenario


def test_archive_dashboard_reopens_after_compaction(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "RELOAD_CHECK_S", 0.0)
    root = build_scenario().write_archive(tmp_path / "archive", duplicate=True)
    st = server.Store(archive=root)
    try:
        q = "SELECT count(*), count(DISTINCT span_id) FROM script_runs"
        before = st.cursor().execute(q).fetchone()
        assert before[0] == before[1] > 0
        done = compact(root, include_today=True)
        assert done and (tmp_path / "archive" / MARKER).exists()
        # the views named the unlinked inputs: without the reopen this is an IO error
        assert st.cursor().execute(q).fetchone() == before
    finally:
        st.close()


def test_a_request_right_after_a_merge_is_answered(tmp_path, monkeypatch):
    """Between a merge and the next stamp check (RELOAD_CHECK_S), the views
    still name the unlinked inputs: a request then reopens at once and runs
    again instead of failing (the merge's output holds the same rows)."""
    import duckdb
    import pytest

    monkeypatch.setattr(server, "RELOAD_CHECK_S", 3600.0)  # the stamp check never runs here
    root = build_scenario().write_archive(tmp_path / "archive", duplicate=True)
    st = server.Store(archive=root)
    try:
        q = "SELECT count(*), count(DISTINCT span_id) FROM script_runs"
        before = st.run(lambda c: c.execute(q).fetchone())
        assert compact(root, include_today=True)
        with pytest.raises(duckdb.IOException):  # the window: the old views fail
            st.cursor().execute(q).fetchone()
        assert st.run(lambda c: c.execute(q).fetchone()) == before
        calls = []

        def other_error(con):  # not a vanished file: reported, not retried
            calls.append(con)
            raise duckdb.IOException("IO Error: Could not read from file: Input/output error")
        with pytest.raises(duckdb.IOException):
            st.run(other_error)
        assert len(calls) == 1
    finally:
        st.close()


def test_the_server_answers_a_page_right_after_a_merge(tmp_path, monkeypatch):
    import json
    import threading
    import urllib.request

    monkeypatch.setattr(server, "RELOAD_CHECK_S", 3600.0)
    root = build_scenario().write_archive(tmp_path / "archive", duplicate=True)
    srv = server.make_server(archive=root)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        def get():
            with urllib.request.urlopen(srv.url + "overview.json", timeout=60) as r:
                return r.status, json.loads(r.read())["totals"]
        status, before = get()
        assert status == 200 and before["hook_runs"] > 0
        assert compact(root, include_today=True)
        assert get() == (200, before)
    finally:
        srv.shutdown()
        srv.server_close()
