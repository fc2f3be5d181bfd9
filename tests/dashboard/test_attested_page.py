"""The node page says who the node attests wrote each hook run: root's journal
or a per-owner spool (issue 12: user-attested records shown as such)."""

import shutil

from dashboards import data, pages


def test_node_page_marks_user_attested_hook_runs(store_db, tmp_path):
    db = tmp_path / "attested.duckdb"
    shutil.copy(store_db, db)
    import duckdb

    con = duckdb.connect(str(db))
    hid = con.execute("SELECT hook_id FROM hook_runs WHERE node = 'node001' ORDER BY start_ts DESC LIMIT 1").fetchone()[0]
    con.execute("UPDATE hook_runs SET attested_uid = 1001 WHERE hook_id = ?", [hid])
    con.close()
    c = data.open_store(db=str(db))
    try:
        n = data.node(c, "node001")
    finally:
        c.close()
    by_id = {h["hook_id"]: h for h in n["hooks"]}
    assert by_id[hid]["attested"].startswith("uid 1001")
    assert {h["attested"] for h in n["hooks"] if h["hook_id"] != hid} == {"root"}
    html = str(pages.node_page(n, {"css": "", "js": ""}))
    assert "uid 1001" in html and ">attested<" in html
