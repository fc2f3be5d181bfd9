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
