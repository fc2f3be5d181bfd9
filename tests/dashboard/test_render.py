"""Pure functions of the rendering layer: escaping, JSON embedding, formats."""

import json
import re

import pytest

from dashboards import data, pages


def test_render_escapes_every_argument_unless_markup():
    out = pages.render("<td>{a}</td><td>{b}</td>", a='<img src=x onerror=alert(1)>"', b=pages.Markup("<b>ok</b>"))
    assert out == '<td>&lt;img src=x onerror=alert(1)&gt;&#34;</td><td><b>ok</b></td>'
    assert isinstance(out, pages.Markup)


def test_markup_concatenation_escapes_the_plain_side():
    m = pages.Markup("<p>") + "<script>" + pages.Markup("</p>")
    assert m == "<p>&lt;script&gt;</p>" and isinstance(m, pages.Markup)
    assert ("<x>" + pages.Markup("<br>")) == "&lt;x&gt;<br>"


def test_json_block_cannot_be_closed_by_data():
    payload = {"output": "</script><script>alert(1)</script>&\u2028"}
    block = pages.json_block(payload, "charts")
    inner = block[block.index(">") + 1:block.rindex("</script>")]
    assert "<" not in inner and ">" not in inner and "&" not in inner
    assert json.loads(inner) == payload


def test_links_quote_user_strings():
    assert pages.job_url("1/../../x") == "/job/1%2F..%2F..%2Fx"
    assert pages.script_url('/etc/a&b "c".sh') == "/script?path=%2Fetc%2Fa%26b+%22c%22.sh"
    assert 'href="/node/a%22b"' in pages.link(pages.node_url('a"b'), "n")


def test_fmt_time_and_ms():
    assert pages.fmt_time("2026-12-01T09:10:00.165000Z") == "2026-12-01 09:10:00.165Z"
    assert pages.fmt_time("2026-12-01T09:10:00.000Z") == "2026-12-01 09:10:00Z"
    assert pages.fmt_ms(12.34) == "12.3 ms" and pages.fmt_ms(30000) == "30.00 s" and pages.fmt_ms(None) == ""


def test_waterfall_cuts_idle_gaps_and_escapes_labels():
    hooks = [
        {"hook_id": "a", "node": "ctl<1>", "context": "prolog_slurmctld", "t0": 0.0, "t1": 0.2, "duration_ms": 200,
         "status": 0},
        {"hook_id": "b", "node": "n1", "context": "prolog_slurmd", "t0": 0.3, "t1": 1.3, "duration_ms": 1000,
         "status": 1},
        {"hook_id": "c", "node": "n1", "context": "epilog_slurmd", "t0": 3600.0, "t1": 3600.5, "duration_ms": 500,
         "status": 0},
    ]
    scripts = [{"hook_id": "b", "script": "/p/<x>.sh", "t0": 0.3, "t1": 1.3, "duration_ms": 1000, "exit_code": 1}]
    svg = str(pages.waterfall(hooks, scripts))
    assert svg.count('class="hookbar"') == 3
    assert svg.count('class="break"') == 1  # one gap cut out between start and end bursts
    assert "ctl&lt;1&gt;" in svg and "/p/&lt;x&gt;.sh" in svg and "<x>" not in svg
    assert 'class="hook failed"' in svg and 'class="scriptbar failed"' in svg
    xs = [float(x) for x in re.findall(r'class="hookbar" x="([\d.]+)"', svg)]
    assert xs == sorted(xs) and xs[-1] < 1000


@pytest.mark.parametrize("text,ok", [("24h", True), ("2026-12-01T08:00Z", True), ("2026-12-01", True),
                                      ("30min", True), ("1.5h", True), ("now", True),
                                      ("yesterday", False), ("1; DROP TABLE x", False)])
def test_parse_time(text, ok):
    if ok:
        assert data.parse_time(text).tzinfo is not None
    else:
        with pytest.raises(data.BadRequest, match="ISO-8601"):
            data.parse_time(text)


def test_bucket_width_bounds_the_point_count():
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for span in (timedelta(seconds=30), timedelta(hours=1), timedelta(days=7), timedelta(days=400)):
        b = data._bucket_seconds(t0, t0 + span, target=240)
        assert span.total_seconds() / b <= 240
