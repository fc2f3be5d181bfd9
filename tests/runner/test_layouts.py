"""Layout knobs and ordering, against real glob(3) and Debian run-parts."""

import glob
import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from emitter import layouts as L

from tests.runner.conftest import mkscript

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
    # run-parts skips a directory, but a dangling link is "failed to stat component": exit 1
    assert {os.path.basename(e.path): e.action for e in entries} == {"sub": L.SKIP, "dangling": L.FAIL}


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


def test_symlink_is_judged_by_its_target_and_the_targets_directories(tmp_path):
    """sshd's StrictModes: a root-owned 0755 script linked from outside the hook
    directory is fine; a link into a directory anybody can write is not."""
    safe = mkscript(tmp_path / "opt" / "bin", "real")
    open_dir = tmp_path / "scratch"
    risky = mkscript(open_dir, "real2")
    os.chmod(open_dir, 0o777)
    d = tmp_path / "hooks"
    d.mkdir()
    os.symlink(safe, d / "link")
    os.symlink(risky, d / "risky")
    inside = mkscript(d, "target")
    os.symlink(inside, d / "inlink")
    for strict in ("record", "enforce"):
        entries, warnings = L.plan([str(d)], L.knobs_for("slurm"), strict=strict, euid=os.geteuid())
        by = {os.path.basename(e.path): e for e in entries}
        assert by["link"].action == L.RUN and by["link"].findings == []
        assert by["inlink"].action == L.RUN and by["target"].action == L.RUN
        (f,) = by["risky"].findings
        assert f == (f"directory {open_dir} is writable by others (mode 0777, bit o+w), above "
                     f"{d / 'risky'} (-> {risky})")
        if strict == "enforce":
            assert by["risky"].action == L.REFUSE and f in by["risky"].reason
        else:
            assert by["risky"].action == L.RUN and warnings == [L.FINDING_PREFIX + f]


def test_findings_are_recorded_not_refused_by_default(tmp_path):
    p = mkscript(tmp_path / "d", "s", mode=0o775)
    os.chmod(tmp_path / "d", 0o755)
    (e,), warnings = L.plan([str(tmp_path / "d")], L.knobs_for("slurm"), strict="record", euid=os.geteuid())
    assert e.action == L.RUN
    assert e.findings == [f"script {p} is writable by group (mode 0775, bit g+w)"]
    assert warnings == [L.FINDING_PREFIX + e.findings[0]]
    (e,), warnings = L.plan([str(tmp_path / "d")], L.knobs_for("slurm"), strict="off", euid=os.geteuid())
    assert e.action == L.RUN and e.findings == [] and warnings == []


def test_writable_hook_directory_is_a_finding_and_refused_under_enforcement(tmp_path):
    d = tmp_path / "d"
    mkscript(d, "a")
    mkscript(d, "b")
    os.chmod(d, 0o1777)  # sticky does not help the directory the scripts are listed from
    entries, warnings = L.plan([str(d)], L.knobs_for("slurm"), strict="record", euid=os.geteuid())
    assert [e.action for e in entries] == [L.RUN, L.RUN]
    assert warnings == [f"{L.FINDING_PREFIX}hook directory {d} is writable by others (mode 1777, bit o+w)"]
    entries, _ = L.plan([str(d)], L.knobs_for("slurm"), strict=True, euid=os.geteuid())
    assert [e.action for e in entries] == [L.REFUSE, L.REFUSE]
    assert all("hook directory" in e.reason for e in entries)


def test_chain_walk_is_pure_and_accepts_root_sticky_parents():
    from emitter import trust

    tree = {"/": _st(0o40755), "/tmp": _st(0o41777), "/tmp/u": _st(0o40755, uid=1000),
            "/srv": _st(0o40775), "/srv/h": _st(0o40755)}

    def fake_stat(p):
        return tree[p]

    assert trust.chain_problems("/tmp", 0, fake_stat) == []
    assert trust.chain_problems("/tmp/u", 0, fake_stat) == ["directory /tmp/u is owned by uid 1000, not root"]
    assert trust.chain_problems("/srv/h", 0, fake_stat) == [
        "directory /srv is writable by group (mode 0775, bit g+w)"]
    assert trust.chain_problems("/srv/h", 0, fake_stat, stop={"/srv"}) == []
    assert trust.chain_problems("/tmp/u", 1000, fake_stat) == []  # its own user's directory


def test_broken_symlink_in_each_layout(tmp_path):
    d = tmp_path / "d"
    mkscript(d, "10a")
    mkscript(d, "30c")
    os.symlink(tmp_path / "nonexistent", d / "20b")
    entries, _ = L.plan([str(d)], L.knobs_for("run-parts"))
    (b,) = [e for e in entries if e.path.endswith("20b")]
    assert b.action == L.FAIL and "failed to stat component" in b.reason
    entries, _ = L.plan([str(d)], L.knobs_for("run-parts", keep_going=True))
    (b,) = [e for e in entries if e.path.endswith("20b")]
    assert b.action == L.SKIP and b.warn and "failed to stat component" in b.reason
    entries, _ = L.plan([str(d)], L.knobs_for("slurm"))
    (b,) = [e for e in entries if e.path.endswith("20b")]
    assert b.action == L.FAIL and "127" in b.reason


@pytest.mark.skipif(not shutil.which("run-parts"), reason="Debian run-parts not installed")
def test_broken_symlink_matches_debian_run_parts(tmp_path):
    """run-parts --exit-on-error stops with 1 at a dangling link; without it, it goes on and returns 0."""
    d = tmp_path / "d"
    mkscript(d, "10a", "echo 10a")
    mkscript(d, "30c", "echo 30c")
    os.symlink(tmp_path / "nonexistent", d / "20b")
    for keep_going, args in ((False, ["--exit-on-error"]), (True, [])):
        p = subprocess.run(["run-parts", *args, str(d)], capture_output=True, text=True)
        entries, _ = L.plan([str(d)], L.knobs_for("run-parts", keep_going=keep_going))
        ran, status = [], 0
        for e in entries:
            if e.action == L.RUN:
                ran.append(os.path.basename(e.path))
            elif e.action == L.FAIL:
                status = 1
                break
        assert p.stdout.split() == ran and p.returncode == status, (keep_going, p)


def test_run_parts_process_knobs():
    k = L.knobs_for("run-parts")
    assert k["umask"] == 0o022 and k["report_exit"] is True
    assert L.knobs_for("slurm")["umask"] is None and L.knobs_for("slurm")["report_exit"] is False


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


def test_finding_prefix_is_the_contracts():
    from emitter import contract

    assert L.FINDING_PREFIX == contract.FINDING_PREFIX
