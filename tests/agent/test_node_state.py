"""The optional node-state observer: scontrol output -> node_event records."""

import stat

from tests.agent.agentkit import journal_files

from emitter import contract as c
from emitter import spool
from emitter.agent import Agent, AgentSettings, bad_flags, parse_scontrol_node

LINE = ("NodeName=node001 Arch=x86_64 CoresPerSocket=16 CPUAlloc=0 CPUTot=32 Gres=gpu:8 "
        "NodeAddr=node001 Version=22.05.8 RealMemory=1000 State={state} ThreadsPerCore=1 "
        "Partitions=gpu BootTime=2025-11-18T09:00:00 CfgTRES=cpu=32,mem=1000M {reason}")


def test_parse_scontrol_line():
    st, why = parse_scontrol_node(LINE.format(state="IDLE+DRAIN",
                                              reason="Reason=Prolog error [root@2025-11-18T10:05:00]"))
    assert st == "IDLE+DRAIN" and why == "Prolog error" and bad_flags(st) == {"DRAIN"}
    st, why = parse_scontrol_node(LINE.format(state="MIXED", reason=""))
    assert st == "MIXED" and why is None and not bad_flags(st)
    assert bad_flags("DOWN*") == {"DOWN", "NOT_RESPONDING"}


def test_observer_records_drain_and_resume(tmp_path):
    """Runs a real command in place of scontrol that prints a recorded line."""
    out = tmp_path / "scontrol.out"
    cmd = tmp_path / "fake-scontrol"
    cmd.write_text(f"#!/bin/sh\ncat {out}\n")
    cmd.chmod(cmd.stat().st_mode | stat.S_IXUSR)
    j = tmp_path / "journal"
    s = AgentSettings.resolve({}, env={}, journal=str(j), node="node001", cluster="c1", gpu="none",
                              node_state_cmd=f"{cmd} {{node}}")
    a = Agent(s, log=lambda m: None)
    try:
        out.write_text(LINE.format(state="IDLE", reason="") + "\n")
        assert a.observe_node_state() is None  # healthy at start: silent
        out.write_text(LINE.format(state="IDLE+DRAIN", reason="Reason=Epilog error [slurm@x]") + "\n")
        rec = a.observe_node_state()
        assert rec[c.R_STATE] == "IDLE+DRAIN" and rec[c.R_REASON] == "Epilog error"
        assert a.observe_node_state() is None  # unchanged: no repeat
        out.write_text(LINE.format(state="IDLE", reason="") + "\n")
        assert a.observe_node_state()[c.R_STATE] == "IDLE"  # resumed
        files = spool.scan(str(j))
        assert len(files) == 2 and all(f.state == spool.COMPLETE for f in files)
        kinds = [f.records[0][c.R_KIND] for f in files]
        assert kinds == [c.K_NODE_EVENT] * 2 and len(journal_files(j)) == 2
    finally:
        a.close()
