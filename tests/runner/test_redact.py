"""Redaction: what the built-in patterns hide, and that no output can make it
(or a failing script's record) take more than linear work.

No timing asserts: adversarial inputs run in a child process under a deadline
100x or more above what linear work needs; the quadratic patterns these
replace took 12 s on a 16 KiB word, so a 1 MiB one would take hours.
"""

import os
import subprocess
import sys

import pytest

from emitter import contract as c
from emitter import redact, runner
from emitter.redact import MASK, Redactor

from tests.runner.conftest import ROOT, mkscript, records

CASES = [
    ("password=hunter2 ok", f"password={MASK} ok"),
    ("DB_PASSWORD: 's3 cret' x", f"DB_PASSWORD: {MASK} x"),
    ('my.api-key = "abc def"', f"my.api-key = {MASK}"),
    ("AWS_ACCESS_KEY=AKIAABCDEFGHIJKLMNOP", f"AWS_ACCESS_KEY={MASK}"),
    ("found AKIAABCDEFGHIJKLMNOP here", f"found {MASK} here"),
    ("token:abc,next", f"token:{MASK},next"),
    ("user credentials=x;y", f"user credentials={MASK};y"),
    ("Authorization: Bearer abc.def", f"Authorization: Bearer {MASK}"),
    ("curl -H 'authorization: basic dXNlcjpwYXNz'", f"curl -H 'authorization: basic {MASK}'"),
    ("got bearer abcdefghijkl", f"got bearer {MASK}"),
    ("--password=x1 --token y2", f"--password={MASK} --token {MASK}"),
    ("https://bob:pw@host/x", f"https://bob:{MASK}@host/x"),
    ("ghp_" + "a" * 36, MASK),
    ("xoxb-1234567890-abc", MASK),
    ("eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJSMeKKF2Q", MASK),
    ("a\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\nb", f"a\n{MASK}\nb"),
    ("-----BEGIN PRIVATE KEY-----\nMIIE truncated", MASK),
    ("nothing to see: port=22 user=root", "nothing to see: port=22 user=root"),
]


@pytest.mark.parametrize("text,want", CASES)
def test_builtin_patterns(text, want):
    assert Redactor()(text) == want


def test_builtin_off_and_site_patterns():
    assert Redactor(builtin=False)("password=x") == "password=x"
    assert Redactor([r"site-\w+"], builtin=False)("a site-XYZ b") == f"a {MASK} b"


_ADVERSARIAL = r"""
import sys
sys.path.insert(0, {root!r})
from emitter.redact import Redactor
n = 1 << 20
r = Redactor()
for text in ("a" * n, "x-" * (n // 2), "eyJ-" * (n // 4), "-----BEGIN PRIVATE KEY-----" * (n // 27),
             'k="' * (n // 3), "password" * (n // 8), "bearer " * (n // 7), "a://" * (n // 4),
             "ab:" * (n // 3), "gh" * (n // 2)):
    r(text)
print("ok")
"""


def test_builtin_patterns_are_linear_on_adversarial_megabytes():
    code = _ADVERSARIAL.format(root=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def test_a_backtracking_site_pattern_cannot_hang_and_never_leaks():
    rd = Redactor([r"(a+)+b"], budget_s=0.2)
    out = rd("secret " + "a" * 64)
    assert rd.withheld and out == redact.WITHHELD.format(budget=0.2) and "secret" not in out


def test_failing_script_with_50_mb_of_output_is_bounded_work(tmp_path, monkeypatch, settings, jdir):
    """The 50 MB failing script: redaction sees only the kept tail; the record is bounded."""
    seen = []
    real = Redactor.__call__

    def counting(self, text):
        seen.append(len(text))
        return real(self, text)

    monkeypatch.setattr(Redactor, "__call__", counting)
    word = "x" * 16384
    mkscript(tmp_path / "d", "flood", f"i=0; while [ $i -lt 3200 ]; do echo {word}; i=$((i+1)); done; exit 3")
    status, _ = runner.run(settings(), "prolog_slurmd", [str(tmp_path / "d")], env={"PATH": os.environ["PATH"]})
    assert status == 3
    (e,) = [r for r in records(jdir) if r[c.R_KIND] == c.K_SCRIPT_ENDED]
    assert e[c.R_OUTPUT_TRUNCATED] and len(e[c.R_OUTPUT]) == 16384
    assert seen == [16384], "redaction runs once, on the kept tail only"
