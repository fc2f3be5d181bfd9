"""Slurm node state for the agent: a node_event record when drain/down flags change.

``observe(agent)`` runs ``scontrol show node <node> -o`` (the agent's
``node_state_cmd``) and writes a ``node_event`` journal record (shipped like
any journal file) when the node's bad flags change.  Pure helpers
(``parse_scontrol_node``, ``bad_flags``) are re-exported by emitter.agent.
"""

from __future__ import annotations

from emitter import contract as c


#: Slurm node state flags worth a node_event (the rest, IDLE/ALLOCATED/MIXED, change per job).
BAD_STATE_FLAGS = ("DOWN", "DRAIN", "DRAINING", "DRAINED", "FAIL", "FAILING", "NOT_RESPONDING",
                   "REBOOT_REQUESTED", "REBOOT_ISSUED", "INVALID_REG")


def parse_scontrol_node(line: str) -> tuple[str, str | None]:
    """(State, Reason) from one `scontrol show node NAME -o` line.  Pure.
    Reason is the last field and may hold spaces; its "[user@time]" suffix is dropped."""
    state = reason = None
    for tok in line.split():
        if tok.startswith("State="):
            state = tok[6:]
    if " Reason=" in line:
        reason = line.split(" Reason=", 1)[1].strip()
        if reason.endswith("]") and " [" in reason:
            reason = reason.rsplit(" [", 1)[0]
    return state or "UNKNOWN", reason or None


def bad_flags(state: str) -> frozenset:
    parts = state.replace("*", "+NOT_RESPONDING").split("+")
    return frozenset(p for p in parts if p in BAD_STATE_FLAGS)


def observe(agent) -> dict | None:
    """One look at this node's Slurm state; writes a node_event record
    (shipped like any journal file) when its drain/down flags change."""
    import shlex
    import subprocess

    cmd = shlex.split(agent.s.node_state_cmd.format(node=agent.s.node))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        agent.log(f"node state: {cmd[0]} failed ({exc}); next try in {agent.s.node_state_interval_s}s")
        return None
    line = next((x for x in out.splitlines() if "State=" in x), None)
    if line is None:
        return None
    state, reason = parse_scontrol_node(line)
    flags = bad_flags(state)
    if flags == agent._node_flags:
        return None
    first = agent._node_flags is None
    agent._node_flags = flags
    if first and not flags:
        return None  # a healthy node at start: nothing to report
    rec = {c.R_KIND: c.K_NODE_EVENT, c.R_STATE: state, c.R_REASON: reason, c.R_SOURCE: "scontrol"}
    try:
        from emitter.journal import write_standalone

        write_standalone(agent.s.journal, [rec], node=agent.s.node, cluster=agent._cluster or None)
    except Exception as exc:  # noqa: BLE001
        agent.log(f"node state {state}: could not record it ({exc})")
        return None
    return rec
