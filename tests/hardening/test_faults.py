"""The fault matrix of issue 7: one test per row, real processes throughout.

Each test journals hook runs through the real runner, ships them with the real
agent over a real nats-server into the real collector's DuckDB file, and checks
that what was journaled equals what was stored, with zero duplicates.  Where a
fault touches the runner, the exit status equals the bare scripts' status.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from emitter import contract
from tests.helpers import wait_for
from tests.helpers.pipeline import Pipeline, bare_status, write_scripts

SCRIPTS = {
    "10-gpu.sh": "echo gpu ok\nexit 0\n",
    "20-fs.sh": "echo fs ok\n",
}
FAILING = {"10-gpu.sh": "echo 'GPU 3 missing' >&2\nexit 1\n", "20-fs.sh": "exit 0\n"}


def _hooks(pl: Pipeline, tmp: Path, nodes=("node001", "node002"), jobs=range(1, 4), scripts=SCRIPTS):
    d = write_scripts(tmp / "prolog.d", scripts)
    want = bare_status(d)
    for job in jobs:
        for node in nodes:
            p = pl.run_hook(node, d, job)
            assert p.returncode == want, (p.returncode, want, p.stderr)
            # at once: a live agent ships (and deletes) the file within about a
            # poll interval, and what it shipped before a snapshot would be missed
            pl.snapshot_journals()
    return d


def _age(files, seconds: float = 3600) -> None:
    """Make files look older than the agent's abandon grace (instead of sleeping)."""
    past = time.time() - seconds
    for f in files:
        os.utime(f, (past, past))


def _drain(pl: Pipeline, nodes=("node001", "node002")):
    for node in nodes:
        p = pl.agent_once(node)
        assert p.returncode == 0, p.stdout + p.stderr
        assert not pl.pending_files(node), f"agent --once left files in {node}'s journal"


# ---------------------------------------------------------------- NATS faults
def test_nats_server_restart(pl, tmp_path):
    """Long-running agents and collector; the server restarts mid-stream."""
    nodes = ("node001", "node002")
    _hooks(pl, tmp_path, nodes, jobs=range(1, 4))
    pl.snapshot_journals()
    pl.start_collector()
    for n in nodes:
        pl.start_agent(n)
    wait_for(lambda: all(not pl.pending_files(n) for n in nodes), 30, what="first batch shipped")
    pl.nats.restart()
    _hooks(pl, tmp_path, nodes, jobs=range(4, 7))
    pl.snapshot_journals()
    wait_for(lambda: all(not pl.pending_files(n) for n in nodes), 60, what="second batch shipped")
    for n in nodes:
        pl.stop(pl.node(n).agent)
    pl.stop(pl.collector)
    pl.collect_once()  # whatever the live collector had not consumed yet
    pl.assert_exact()


def test_nats_down_for_the_whole_run_then_up(pl, tmp_path):
    pl.nats.stop()
    nodes = ("node001", "node002")
    d = write_scripts(tmp_path / "prolog.d", FAILING)
    want = bare_status(d)
    t_runs = []
    for job in range(1, 4):
        for node in nodes:
            t0 = time.monotonic()
            p = pl.run_hook(node, d, job, extra_args=["--export", "direct"])
            t_runs.append(time.monotonic() - t0)
            assert p.returncode == want == 1, p.stderr
    pl.snapshot_journals()
    for node in nodes:
        p = pl.agent_once(node, timeout=60)
        assert p.returncode != 0 or pl.pending_files(node), "agent claimed success with NATS down"
        assert pl.pending_files(node), "journal files must stay while NATS is down"
    pl.nats.start()
    _drain(pl, nodes)
    pl.collect_once()
    pl.assert_exact()


def test_one_of_three_clustered_servers_killed(tmp_path):
    from tests.helpers.servers import NatsCluster

    with NatsCluster(tmp_path / "cluster", 3) as cl:
        pl = Pipeline(tmp_path, servers=cl.urls)
        try:
            nodes = ("node001", "node002")
            _hooks(pl, tmp_path, nodes, jobs=range(1, 3))
            pl.snapshot_journals()
            # the collector creates the streams with 3 replicas
            pl.collect_once(extra=["--replicas", "3"])
            assert _replicas(pl.url) == 3
            for n in nodes:
                pl.start_agent(n, extra=["--no-create-streams"])
            wait_for(lambda: all(not pl.pending_files(n) for n in nodes), 60, what="shipped")
            dead = cl.servers[0].url
            cl.servers[0].kill()
            # JetStream elects a new meta/stream leader within seconds; the
            # agents retry meanwhile (the collector is run after, see below)
            cl.wait_ready(30)
            _hooks(pl, tmp_path, nodes, jobs=range(3, 6))
            pl.snapshot_journals()
            wait_for(lambda: all(not pl.pending_files(n) for n in nodes), 60, what="shipped after kill")
            for n in nodes:
                pl.stop(pl.node(n).agent)
            # the dead server stays in the URL list, as it would in a config file
            assert dead in pl.url
            pl.collect_once(extra=["--replicas", "3"])
            pl.assert_exact()
        finally:
            pl.close()


def _replicas(url: str) -> int:
    async def go():
        import nats

        nc = await nats.connect(url.split(","), connect_timeout=3, max_reconnect_attempts=1)
        try:
            return (await nc.jetstream(timeout=5).stream_info(contract.STREAM_NAME)).config.num_replicas
        finally:
            await nc.close()

    return asyncio.run(asyncio.wait_for(go(), 20))


# ---------------------------------------------------------------- process faults
def test_agent_kill_9(pl, tmp_path):
    node = "node001"
    _hooks(pl, tmp_path, (node,), jobs=range(1, 41))
    pl.snapshot_journals()
    total = len(pl.pending_files(node))
    a = pl.start_agent(node)
    wait_for(lambda: len(pl.pending_files(node)) < total, 30, interval=0.005, what="agent started shipping")
    os.killpg(a.pid, signal.SIGKILL)
    a.wait(5)
    left = len(pl.pending_files(node))
    assert left < total
    p = pl.agent_once(node)
    assert p.returncode == 0, p.stderr
    assert not pl.pending_files(node)
    pl.collect_once()
    pl.assert_exact()


def test_collector_kill_9(pl, tmp_path):
    nodes = ("node001", "node002")
    _hooks(pl, tmp_path, nodes, jobs=range(1, 31))
    _drain(pl, nodes)
    c = pl.start_collector()
    # kill as soon as the store exists: mid-way through the first batches
    wait_for(lambda: pl.db.exists() or c.poll() is not None, 30, interval=0.005,
             what="collector opened its store")
    os.killpg(c.pid, signal.SIGKILL)
    c.wait(5)
    pl.collect_once()
    pl.assert_exact()


@pytest.mark.parametrize("signals", ["term+kill", "kill"])
def test_runner_sigkill_mid_script_is_recorded(pl, tmp_path, signals):
    """slurmd's PrologEpilogTimeout: SIGTERM to the runner, SIGKILL 10 ms later
    ("term+kill"); or a bare SIGKILL ("kill", e.g. the OOM killer).

    On SIGTERM the runner forwards SIGTERM to the script's group, SIGKILLs it
    5 ms later and journals the end, usually within the 10 ms before slurmd's
    SIGKILL lands: then the script is recorded killed by signal 15 and the hook
    with status 143 (what the bare script would have given), not as a killed
    runner.  Which one happened is read from the journal, and the store must
    say the same.  A bare SIGKILL always leaves the runner killed mid-script."""
    node = "node001"
    started = tmp_path / "started"
    d = write_scripts(tmp_path / "prolog.d", {"10-hang.sh": f"echo $$ > {started}\nsleep 30\n"})
    proc = pl.run_hook(node, d, 7, background=True)
    wait_for(lambda: started.exists() and started.read_text().strip(), 15, what="script started")
    script_pgid = int(started.read_text())
    try:
        if signals == "term+kill":
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        try:  # the orphaned script of a SIGKILLed runner (its own process group)
            os.killpg(script_pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM), proc.returncode
    files = pl.pending_files(node)
    assert len(files) == 1
    _age(files)
    pl.snapshot_journals()
    kinds = {r[contract.R_KIND]: r for r in pl.node(node).journaled.values()}
    runner_finished = contract.K_HOOK_ENDED in kinds
    if signals == "kill":
        assert not runner_finished, "a SIGKILLed runner cannot have journaled the hook's end"
    p = pl.agent_once(node)
    assert p.returncode == 0, p.stderr
    pl.collect_once()
    pl.assert_exact()
    (script,) = pl.query("SELECT runner_killed, signal FROM script_runs WHERE path LIKE '%10-hang.sh'")
    (hook,) = pl.query("SELECT runner_killed, status FROM hook_runs")
    # slurmd's SIGKILL may also land between the script's end and the hook's
    if contract.K_SCRIPT_ENDED in kinds:
        assert kinds[contract.K_SCRIPT_ENDED][contract.R_SIGNAL] == signal.SIGTERM
        assert script == (False, signal.SIGTERM), script
    else:
        assert script == (True, None), script
    if runner_finished:
        assert kinds[contract.K_HOOK_ENDED][contract.R_STATUS] == 128 + signal.SIGTERM
        assert hook == (False, 128 + signal.SIGTERM), hook
    else:
        assert hook == (True, None), hook


# ---------------------------------------------------------------- journal faults
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_journal_disk_full(pl, tmp_path):
    node = "node001"
    j = pl.node(node).journal
    j.mkdir(parents=True)
    os.chmod(j, 0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k,mode=0700", "tmpfs", str(j)], check=True)
    try:
        d = write_scripts(tmp_path / "prolog.d", FAILING | {"30-chatty.sh": "seq 1 2000\n"})
        want = bare_status(d)
        statuses = [pl.run_hook(node, d, job).returncode for job in range(1, 13)]
        assert statuses == [want] * len(statuses), (statuses, want)
        lost = (j / "lost").read_text().split()
        assert int(lost[0]) > 0, "the runner must count the records it could not write"
        _age(pl.pending_files(node))  # runners that could not finish their file are gone: abandoned
        pl.snapshot_journals()
        _drain(pl, (node,))  # frees the space
        pl.run_hook(node, write_scripts(tmp_path / "ok.d", SCRIPTS), 99)
        pl.snapshot_journals()
        _drain(pl, (node,))
    finally:
        subprocess.run(["umount", "-l", str(j)], check=False)
    pl.collect_once()
    pl.assert_exact()
    warned = pl.query("SELECT count(*) FROM hook_runs WHERE array_to_string(warnings, ' ') LIKE '%lost%'")[0][0]
    assert warned >= 1, "the loss must be reported in the store"


def test_journal_truncated_or_corrupt(pl, tmp_path):
    node = "node001"
    _hooks(pl, tmp_path, (node,), jobs=range(1, 5))
    files = sorted(pl.pending_files(node))
    pl.snapshot_journals()
    # torn last line in one file, a corrupted record (bad JSON) in another
    torn = Path(files[1])
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) - 40])
    bad = Path(files[2])
    lines = bad.read_bytes().split(b"\n")
    lines[1] = b'{"kind": "script_started", garbage'
    bad.write_bytes(b"\n".join(lines))
    _age([torn])  # a torn file's runner is dead: abandoned once past the grace
    j = pl.node(node).journaled
    lost = {k for k, rec in j.items() if not _intact(rec, torn, bad)}
    assert len(lost) == 2  # the torn hook_ended and the garbled script_started
    for k in lost:
        del j[k]
    p = pl.agent_once(node)
    assert p.returncode == 0, p.stderr
    assert not pl.pending_files(node), "damaged files are shipped (what is left of them), not kept forever"
    pl.collect_once()
    n_err = pl.query("SELECT count(*) FROM journal WHERE kind = ?", [contract.K_JOURNAL_ERROR])[0][0]
    assert n_err >= 2, "both damaged files must be reported"
    got = pl.stored()
    assert got["dups"] == 0
    assert pl.stored_keys() >= set(j), "every intact record is recovered"
    assert got["journal"] == len(j) + n_err
    assert got["hook_runs"] == 4


def _intact(rec, *files) -> bool:
    line = contract.canonical_json(rec).encode()
    for f in files:
        if rec[contract.R_HOOK_ID] in f.name:
            return line in f.read_bytes().split(b"\n")
    return True


def _rewrite_chain(journal: Path, shift_ns: int) -> None:
    """Shift every record's ts by shift_ns (the node's clock is off) and re-seal
    the node's hash chain, as a runner on that node would have written it."""
    files = sorted(journal.glob(f"*{contract.JOURNAL_SUFFIX}"))
    recs = [(f, json.loads(line)) for f in files for line in f.read_text().splitlines() if line]
    recs.sort(key=lambda fr: fr[1][contract.R_SEQ])
    prev = contract.CHAIN_GENESIS
    out: dict[Path, list[str]] = {f: [] for f in files}
    for f, r in recs:
        r[contract.R_TS] += shift_ns
        r[contract.R_PREV] = prev
        r[contract.R_HASH] = contract.record_hash(r)
        prev = r[contract.R_HASH]
        out[f].append(contract.canonical_json(r))
    for f, lines in out.items():
        f.write_text("\n".join(lines) + "\n")
    last = recs[-1][1]
    (journal / contract.CHAIN_HEAD_FILE).write_text(f"{last[contract.R_SEQ]} {prev} {last[contract.R_CHAIN]}\n")


@pytest.mark.parametrize("hours", [+1, -1])
def test_clock_skew_one_hour(pl, tmp_path, hours):
    nodes = ("node001",)
    _hooks(pl, tmp_path, nodes, jobs=range(1, 3))
    _rewrite_chain(pl.node("node001").journal, hours * 3600 * 10**9)
    pl.snapshot_journals()
    _drain(pl, nodes)
    pl.collect_once()
    pl.assert_exact()
    for (hook_id, start, skew) in pl.query("SELECT hook_id, epoch_ns(start_ts), skew_ms FROM hook_runs"):
        rec = next(r for r in pl.node("node001").journaled.values()
                   if r[contract.R_HOOK_ID] == hook_id and r[contract.R_KIND] == contract.K_HOOK_STARTED)
        # TIMESTAMPTZ keeps microseconds: the node's time, truncated to the us
        assert start == rec[contract.R_TS] // 1000 * 1000, "times are stored as the node saw them"
        assert abs(skew + hours * 3600_000) < 120_000, f"skew {skew} ms not flagged as {-hours} h"


def test_malformed_message_is_dead_lettered(pl, tmp_path):
    nodes = ("node001",)
    _hooks(pl, tmp_path, nodes, jobs=range(1, 3))
    pl.snapshot_journals()
    _drain(pl, nodes)

    async def publish_garbage():
        import nats

        nc = await nats.connect(pl.url, connect_timeout=3, max_reconnect_attempts=1)
        try:
            js = nc.jetstream(timeout=5)
            subj = contract.subject(contract.SIGNAL_SPANS, pl.cluster, "node001")
            await js.publish(subj, b"\x0a\xff\xffnot protobuf", headers={contract.HDR_MSG_ID: "garbage-1"})
            await js.publish(subj, b"", headers={contract.HDR_MSG_ID: "garbage-2"})
        finally:
            await nc.close()

    asyncio.run(asyncio.wait_for(publish_garbage(), 20))
    _hooks(pl, tmp_path, nodes, jobs=range(3, 5))
    pl.snapshot_journals()
    _drain(pl, nodes)
    pl.collect_once()
    pl.assert_exact()
    assert pl.stored()["dead_letters"] == 2


def test_gpu_library_hang_does_not_stall_export(pl, tmp_path):
    node = "node001"
    _hooks(pl, tmp_path, (node,), jobs=range(1, 4))
    pl.snapshot_journals()
    fixture = sorted((Path(__file__).resolve().parents[2] / "emitter/fixtures/gpu").glob("*.xml"))[0]
    cfg = tmp_path / "gpu-hang.toml"
    cfg.write_text(f'[agent]\ngpu = "replay"\ngpu_replay = "{fixture}"\ngpu_replay_block_s = 120.0\n'
                   'gpu_timeout_s = 0.5\n')
    t0 = time.monotonic()
    p = pl.agent_once(node, timeout=60, extra=["--config", str(cfg)])
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert not pl.pending_files(node)
    assert took < 20, f"agent --once took {took:.1f}s with a hung GPU library"
    assert "did not return within" in p.stderr, "the hung backend must be reported"
    pl.collect_once()
    pl.assert_exact()
