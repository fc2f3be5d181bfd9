"""Layout knobs and ordering, against real glob(3) and Debian run-parts."""

import glob
import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from emitter import layouts as L

from conftest import mkscript

NAMES = ["10-a", "2-b", "B_upper", "a.sh", "Z", "_under", "-dash", "x~", "ümlaut", "99", ".hidden",
         "10-a.dpkg-old", "zz-last", "AA"]


@pytest.fixture
def tricky(tmp_path):
    d = tmp_path / "hooks"
    for n in NAMES:
        mkscript(d, n)
    return d


def _runs(entries):
    return [os.path.basename(e.path) for e in entries if e.action == L.RUN]


def test_slurm_order_is_reverse_of_glob(tricky):
    entries, _ = L.plan([str(tricky)], L.knobs_for("slurm"))
    want = [os.path.basename(p) for p in reversed(sorted(glob.glob(str(tricky / "*")), key=os.fsencode))]
    assert _runs(entries) == want
    assert ".hidden" not in want  # glob(3) never matches dotfiles


@pytest.mark.skipif(not shutil.which("run-parts"), reason="Debian run-parts (debianutils) is not installed")
def test_run_parts_order_and_filter_match_real_run_parts(tricky):
    # A non-executable valid name: run-parts --test omits it, and so do we (skip).
    (tricky / "50-noexec").write_text("#!/bin/sh\n")
    os.chmod(tricky / "50-noexec", 0o644)
    out = subprocess.run(["run-parts", "--test", str(tricky)], capture_output=True, text=True,
                         env={"LC_ALL": "C", "PATH": os.environ["PATH"]}, check=True).stdout.split()
    entries, _ = L.plan([str(tricky)], L.knobs_for("run-parts"))
    assert [str(tricky / n) for n in _runs(entries)] == out
    skipped = {os.path.basename(e.path): e.reason for e in entries if e.action == L.SKIP}
    assert "name filter" in skipped["a.sh"] and "not executable" in skipped["50-noexec"]


@pytest.mark.skipif(not shutil.which("run-parts"), reason="Debian run-parts (debianutils) is not installed")
def test_run_parts_reverse_knob_matches_run_parts_reverse(tricky):
    out = subprocess.run(["run-parts", "--test", "--reverse", str(tricky)], capture_output=True, text=True,
                         env={"LC_ALL": "C", "PATH": os.environ["PATH"]}, check=True).stdout.split()
    entries, _ = L.plan([str(tricky)], L.knobs_for("run-parts", order="reverse"))
    assert [str(tricky / n) for n in _runs(entries)] == out


def test_ascending_layouts(tricky):
    for layout in ("slinky", "tensorwave"):
        entries, _ = L.plan([str(tricky)], L.knobs_for(layout))
        names = _runs(entries)
        assert names == sorted(names, key=os.fsencode) and names[0] == "-dash" and names[-1] == "ümlaut"


def test_name_filter_knob():
    assert L.name_ok("10-x", "run-parts") and not L.name_ok("x.sh", "run-parts") and not L.name_ok("", "run-parts")
    assert L.name_ok("x.sh", "glob") and not L.name_ok(".x", "glob")
    assert L.name_ok(".x", "none")
    assert L.name_ok("10-x.sh", r"\d+-.*\.sh") and not L.name_ok("x.sh", r"\d+-.*\.sh")


def test_non_executable_knob(tmp_path):
    mkscript(tmp_path, "a", mode=0o644)
    for value, action, warn in (("fail", L.FAIL, False), ("skip", L.SKIP, False), ("skip_warn", L.SKIP, True)):
        (e,), _ = L.plan([str(tmp_path)], L.knobs_for("slurm", non_executable=value))
        assert (e.action, e.warn) == (action, warn)
        assert "not executable (mode 0o644)" in e.reason


def test_directory_and_dangling_symlink_in_hook_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    entries, _ = L.plan([str(tmp_path)], L.knobs_for("slurm"))
    assert {os.path.basename(e.path): e.action for e in entries} == {"sub": L.FAIL, "dangling": L.FAIL}
    entries, _ = L.plan([str(tmp_path)], L.knobs_for("run-parts"))
    assert {e.action for e in entries} == {L.SKIP}


def test_require_shebang_knob(tmp_path):
    mkscript(tmp_path, "bare", body="echo hi", shebang="")
    (e,), _ = L.plan([str(tmp_path)], L.knobs_for("tensorwave"))
    assert e.action == L.REFUSE and "no '#!' first line" in e.reason and str(tmp_path / "bare") in e.reason
    (e,), _ = L.plan([str(tmp_path)], L.knobs_for("tensorwave", require_shebang=False))
    assert e.action == L.RUN


def test_knob_presets_and_overrides():
    assert L.knobs_for("slurm")["stop_on_failure"] and L.knobs_for("slurm")["failure_status"] == "script"
    k = L.knobs_for("run-parts", keep_going=True)
    assert k["stop_on_failure"] is False and k["failure_status"] == "one"
    assert L.knobs_for("slurm", empty="ok")["empty"] == "ok"
    with pytest.raises(L.LayoutError, match="choose one of"):
        L.knobs_for("slurm", order="random")
    with pytest.raises(L.LayoutError, match="unknown layout"):
        L.knobs_for("nope")
    with pytest.raises(L.LayoutError, match="unknown layout knob"):
        L.knobs_for("slurm", colour="red")


def test_missing_dir_plans_empty_with_warning(tmp_path):
    entries, warnings = L.plan([str(tmp_path / "none")], L.knobs_for("slurm"))
    assert entries == [] and "cannot be read" in warnings[0] and str(tmp_path / "none") in warnings[0]


def test_single_script_instead_of_dir(tmp_path):
    p = mkscript(tmp_path, "prolog.sh")
    (e,), _ = L.plan([str(p)], L.knobs_for("slurm"))
    assert e.action == L.RUN and e.path == str(p)


def test_multiple_dirs_keep_dir_order(tmp_path):
    mkscript(tmp_path / "a", "1")
    mkscript(tmp_path / "a", "2")
    mkscript(tmp_path / "b", "1")
    entries, _ = L.plan([str(tmp_path / "b"), str(tmp_path / "a")], L.knobs_for("slinky"))
    assert [e.path for e in entries] == [str(tmp_path / "b/1"), str(tmp_path / "a/1"), str(tmp_path / "a/2")]


def _st(mode, uid=0):
    return SimpleNamespace(st_mode=mode, st_uid=uid)


def test_check_strict_is_pure_and_names_file_and_bit():
    ok = _st(0o100755)
    assert L.check_strict("/d/s", ok, "/d", _st(0o40755), euid=0) is None
    why = L.check_strict("/d/s", _st(0o100757), "/d", _st(0o40755), euid=0)
    assert "script /d/s" in why and "others" in why and "o+w" in why
    why = L.check_strict("/d/s", _st(0o100775), "/d", _st(0o40755), euid=0)
    assert "group" in why and "g+w" in why
    why = L.check_strict("/d/s", ok, "/d", _st(0o40777), euid=0)
    assert why.startswith("directory /d")
    why = L.check_strict("/d/s", _st(0o100755, uid=1000), "/d", _st(0o40755), euid=0)
    assert "owned by uid 1000" in why


def test_strict_refuses_symlink_outside_dir(tmp_path):
    outside = mkscript(tmp_path / "elsewhere", "real")
    d = tmp_path / "hooks"
    d.mkdir()
    os.symlink(outside, d / "link")
    inside = mkscript(d, "target")
    os.symlink(inside, d / "inlink")
    entries, _ = L.plan([str(d)], L.knobs_for("slurm"), strict=True, euid=os.geteuid())
    by = {os.path.basename(e.path): e for e in entries}
    assert by["link"].action == L.REFUSE and "points outside" in by["link"].reason
    assert by["inlink"].action == L.RUN and by["target"].action == L.RUN


def test_strict_refuses_writable_script_in_plan(tmp_path):
    p = mkscript(tmp_path, "s", mode=0o777)
    os.chmod(tmp_path, 0o755)
    (e,), _ = L.plan([str(tmp_path)], L.knobs_for("slurm"), strict=True, euid=os.geteuid())
    assert e.action == L.REFUSE and str(p) in e.reason and "o+w" in e.reason


def test_strict_accepts_configmap_style_symlinks(tmp_path):
    """Kubernetes ConfigMap volume: 10-gpu.sh -> ..data/10-gpu.sh, ..data -> ..2024_x/."""
    d = tmp_path / "prolog.d"
    real = mkscript(d / "..2024_01_01_00_00_00.1", "10-gpu.sh")
    os.symlink("..2024_01_01_00_00_00.1", d / "..data")
    os.symlink("..data/10-gpu.sh", d / "10-gpu.sh")
    entries, _ = L.plan([str(d)], L.knobs_for("slinky"), strict=True, euid=os.geteuid())
    runs = [e for e in entries if e.action == L.RUN]
    assert [e.path for e in runs] == [str(d / "10-gpu.sh")]
    assert all(e.action == L.SKIP for e in entries if e.path.startswith(str(d / "..")))
    assert real.exists()
