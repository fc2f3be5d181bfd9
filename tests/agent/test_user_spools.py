"""Every context journaled (issue 12.7): a hook run that is not root journals
to its own per-uid spool ``<journal_dir>.users/<uid>/`` (0700, created by the
runner); the agent ships it marked with the uid that owns the spool, as it
stat()ed it, and refuses a spool or a file another user could have made.
The collector stores the uid (``attested_uid``) and ``audit`` shows it.

The runner side runs as ``nobody`` through Debian's /usr/bin/python3 (the
hook's hot path is stdlib only), as a site's TaskProlog would."""

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from tests.agent.agentkit import job_env, journal_files, stream_messages, write_hooks_fast
from tests.helpers.pipeline import ROOT, agent_cmd
from tests.helpers.pipeline import write_scripts as make_hooks

from emitter import contract as c
from emitter import otlp, userspool

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs hooks as nobody: needs root")
NOBODY = 65534
SYSPY = "/usr/bin/python3"


def _st(mode, uid=0):
    return os.stat_result((mode, 1, 1, 1, uid, uid, 10, 0, 0, 0))


def test_spool_and_parent_checks_are_pure_and_name_the_problem():
    d = stat.S_IFDIR
    assert userspool.spool_problem("1000", _st(d | 0o700, 1000)) is None
    assert "uid 1001, not uid 1000" in userspool.spool_problem("1000", _st(d | 0o700, 1001))
    assert "0750" in userspool.spool_problem("1000", _st(d | 0o750, 1000))
    assert userspool.spool_problem("1000", _st(stat.S_IFLNK | 0o777, 1000)) == "is a symlink"
    assert "not a directory" in userspool.spool_problem("1000", _st(stat.S_IFREG | 0o700, 1000))
    assert userspool.parent_problem(_st(d | 0o1733)) is None
    assert userspool.parent_problem(_st(d | 0o755)) is None
    assert "sticky" in userspool.parent_problem(_st(d | 0o777))
    assert "uid 5, not root" in userspool.parent_problem(_st(d | 0o1733, 5))
    assert userspool.users_dir("/var/spool/hookscope/journal/") == "/var/spool/hookscope/journal.users"
    assert userspool.spool_for("/x/journal", euid=0) == ("/x/journal", None)


def _as_nobody(code: str, **env) -> subprocess.CompletedProcess:
    """Run ``code`` as nobody on Debian's Python with this checkout importable."""
    prog = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + code
    e = {"PATH": "/usr/bin:/bin", **{k: str(v) for k, v in env.items()}}
    return subprocess.run([SYSPY, "-IS", "-c", prog], user=NOBODY, group=NOBODY, extra_groups=[],
                          env=e, capture_output=True, text=True, timeout=60, cwd="/")


@pytest.fixture
def base():
    """A world-traversable base (pytest's tmp dirs are 0700), with root's journal in it."""
    if not os.path.exists(SYSPY):
        pytest.skip("needs Debian's /usr/bin/python3 to run the hook as nobody")
    b = Path(tempfile.mkdtemp(prefix="hookscope-userspool-"))
    os.chmod(b, 0o755)
    (b / "journal").mkdir(mode=0o700)
    try:
        yield b
    finally:
        shutil.rmtree(b, ignore_errors=True)


def _hook_as_nobody(base: Path, journal: Path, context="prolog_task", job=7):
    hooks = base / "hooks"
    if not hooks.exists():
        make_hooks(hooks, {"50-ok": "echo ok-$(id -u)"})
        os.chmod(hooks, 0o755)
    cfg = base / "hookscope.toml"
    cfg.write_text(f'[runner]\njournal_dir = "{journal}"\n\n[runner.dirs]\n{context} = "{hooks}"\n')
    os.chmod(cfg, 0o644)
    env = {k: v for k, v in job_env(job).items() if k.startswith("SLURM_")}
    code = "from emitter.hook import main; sys.exit(main())"
    return _as_nobody(code, SLURM_SCRIPT_CONTEXT=context, HOOKSCOPE_CONFIG=cfg, **env)


@needs_root
def test_nobody_without_the_parent_loses_records_not_its_status(base):
    j = base / "journal"
    r = _hook_as_nobody(base, j)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"ok-{NOBODY}\n"  # TaskProlog's stdout passes through to slurmd, as bare
    lines = [x for x in r.stderr.splitlines() if x.startswith("hookscope:")]
    assert len(lines) == 1, r.stderr
    assert f"{j}.users is missing" in lines[0] and "hookscope agent" in lines[0]
    assert journal_files(j) == []


@needs_root
def test_nobody_journals_to_its_own_0700_spool_with_its_own_chain(base):
    j = base / "journal"
    assert userspool.ensure_parent(str(j)) is None  # what the agent does at start
    pst = os.lstat(f"{j}.users")
    assert (pst.st_uid, stat.S_IMODE(pst.st_mode)) == (0, 0o1733)
    for job in (7, 8):
        r = _hook_as_nobody(base, j, job=job)
        assert r.returncode == 0 and "hookscope:" not in r.stderr, r.stderr
    mine = Path(f"{j}.users/{NOBODY}")
    st = os.lstat(mine)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o700)
    files = journal_files(mine)
    assert len(files) == 2 and journal_files(j) == []
    recs = [json.loads(x) for f in files for x in (mine / f).read_text().splitlines()]
    assert [r[c.R_SEQ] for r in recs] == list(range(1, len(recs) + 1))
    assert len({r[c.R_CHAIN] for r in recs}) == 1
    assert all(os.stat(mine / f).st_uid == NOBODY for f in files)
    assert {r[c.R_CONTEXT] for r in recs if r[c.R_KIND] == c.K_HOOK_STARTED} == {"prolog_task"}


@needs_root
def test_a_spool_another_user_made_is_not_written(base):
    j = base / "journal"
    userspool.ensure_parent(str(j))
    trap = Path(f"{j}.users/{NOBODY}")
    trap.mkdir()
    os.chown(trap, 1000, 1000)
    os.chmod(trap, 0o777)  # uid 1000 could read and rewrite what nobody writes here
    r = _hook_as_nobody(base, j)
    assert r.returncode == 0
    assert f"{trap} is owned by uid 1000, not uid {NOBODY}" in r.stderr
    assert os.listdir(trap) == []


@needs_root
def test_agent_ships_user_spools_attested_by_owner_and_refuses_forgeries(base, nats_server):
    from collector.decode import Decoded, decode_message

    j = base / "journal"
    userspool.ensure_parent(str(j))
    write_hooks_fast(j, 1, node="n1", cluster="c1")  # root's Prolog
    r = _hook_as_nobody(base, j)  # nobody's TaskProlog
    assert r.returncode == 0 and "hookscope:" not in r.stderr, r.stderr
    users = Path(f"{j}.users")
    mine = users / str(NOBODY)
    # Forgeries: a spool named for uid 1000 but owned by 1001, and a root-owned
    # file (root's records re-labelled as nobody's?) inside nobody's spool.
    bad = users / "1000"
    bad.mkdir(mode=0o700)
    os.chown(bad, 1001, 1001)
    write_hooks_fast(bad, 1)
    # nobody's own file speaking for another node: its spool is fine, its records are not
    write_hooks_fast(mine, 1, node="nodeB", cluster="c1")
    foreign = [mine / f for f in journal_files(mine) if "nodeB" in (mine / f).read_text()]
    for p in mine.iterdir():
        os.chown(p, NOBODY, NOBODY)
    odd = mine / ("0" * 20 + "-rootowned.jsonl")
    odd.write_bytes((j / journal_files(j)[0]).read_bytes())
    os.chmod(odd, 0o600)
    # (the agent reads --node/--cluster; nobody's runner took them from its env)
    p = subprocess.run(agent_cmd(nats_server.url, j, "--once", "--node", os.uname().nodename.split(".")[0]),
                       env=job_env(0), capture_output=True, text=True, timeout=60)
    assert "untrusted per-uid spool" in p.stderr and "owned by uid 1001, not uid 1000" in p.stderr
    assert "rootowned" in p.stderr and f"not uid {NOBODY}" in p.stderr
    assert "names node 'nodeB', not this node" in p.stderr
    assert journal_files(mine) == sorted([odd.name, foreign[0].name])  # shipped and deleted; the others left
    assert not bad.exists() and list(users.glob("1000*.untrusted"))  # set aside
    msgs = stream_messages(nats_server.url)
    by_uid = {}
    for m in msgs:
        req = otlp.decode_trace(m.data)
        uid = otlp.attributes_dict(req.resource_spans[0].resource.attributes).get(c.A_ATTESTED_UID)
        recs = [json.loads(x) for x in otlp.journal_lines(req)]
        by_uid.setdefault(uid, []).extend(recs)
        dec = decode_message(m.data, m.subject, 1, recs[0][c.R_TS] + 1)
        if isinstance(dec, Decoded) and "hook_runs" in dec.rows:
            assert {row[-1] for row in dec.rows["hook_runs"]} == {uid}
            assert {row[-1] for row in dec.rows["script_runs"]} == {uid}
            assert {row[-1] for row in dec.rows["journal"]} == {uid}
    assert set(by_uid) == {0, NOBODY}, by_uid.keys()
    ctx = {uid: {r[c.R_CONTEXT] for r in recs if r[c.R_KIND] == c.K_HOOK_STARTED} for uid, recs in by_uid.items()}
    assert ctx == {0: {"prolog_slurmd"}, NOBODY: {"prolog_task"}}
    errs = [r for r in by_uid[0] if r[c.R_KIND] == c.K_JOURNAL_ERROR]
    assert {e[c.R_PATH] for e in errs} == {str(bad), str(odd), str(foreign[0])}  # in root's own chain


def test_a_shipped_file_is_deleted_only_through_the_spool_it_was_read_from(tmp_path):
    from emitter import spool

    real, other = tmp_path / "1000", tmp_path / "elsewhere"
    real.mkdir()
    other.mkdir()
    st = os.lstat(real)
    ident = (st.st_dev, st.st_ino)
    name = "00000000000000000001-abc.jsonl"
    (real / name).write_text("x\n")
    assert spool.remove(str(real / name), ident) and not (real / name).exists()
    # the user swaps the spool for a symlink to a directory holding that name
    (other / name).write_text("not yours\n")
    real.rename(tmp_path / "moved")  # (kept: its inode is not reused below)
    real.symlink_to(other)
    assert spool.remove(str(real / name), ident) is False
    assert (other / name).read_text() == "not yours\n"
    real.unlink()
    real.mkdir()  # a new directory under the same name is not the one read either
    (real / name).write_text("x\n")
    assert spool.remove(str(real / name), ident) is False and (real / name).exists()
