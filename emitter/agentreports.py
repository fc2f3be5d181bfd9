"""The agent's journal_error reports: damaged, untrusted and stuck files.

Each writes one chained ``journal_error`` record (``journal.write_standalone``)
naming the file and what to do, once per file, and never raises into the
shipping loop.  Called as ``report_*(agent, jf)``.
"""

from __future__ import annotations

import os

from emitter import contract as c
from emitter import spool


def report_damage(agent, jf: spool.JournalFile) -> None:
    if not jf.damage or jf.path in agent._reported:
        return
    agent._reported.add(jf.path)
    agent.log(f"journal file {jf.path} is damaged ({'; '.join(jf.damage)}); shipping what is "
             "readable and recording a journal_error")
    try:
        from emitter.journal import write_standalone

        recs = spool.damage_records(jf)
        first = jf.entries[0][1] if jf.entries else {}
        write_standalone(agent.s.journal, recs, node=first.get(c.R_NODE) or agent.s.node,
                         cluster=first.get(c.R_CLUSTER) or agent._cluster)
        agent.stats.damage_reports += 1
    except Exception as exc:  # noqa: BLE001 - a report must not stop shipping
        agent.log(f"could not record the damage of {jf.path}: {exc}")

def report_untrusted(agent, jf: spool.JournalFile) -> None:
    """Record a ``journal_error`` for a file a user could have written, then
    move it to ``<name>.untrusted`` so neither this run nor the next reports
    it again (once per file).  Never shipped, never deleted."""
    if jf.path in agent._untrusted:
        return
    agent._untrusted.add(jf.path)  # if the move fails: once per agent run
    # In a per-uid spool the name is the user's to swap: nothing is moved there.
    kept_as = None if jf.attested_uid else spool.aside_path(jf.path)
    agent.log(f"journal file {jf.path} {jf.untrusted}: not shipped (a non-root user could have "
             f"written it); recording a journal_error" + (f" and moving it to {kept_as}" if kept_as else ""))
    try:
        from emitter.journal import write_standalone

        # Node and cluster are ours, never the untrusted file's.
        write_standalone(agent.s.journal, [spool.untrusted_record(jf, kept_as)], node=agent.s.node,
                         cluster=agent._cluster or None)
        agent.stats.untrusted_reports += 1
    except Exception as exc:  # noqa: BLE001 - a report must not stop shipping
        agent.log(f"could not record the untrusted file {jf.path}: {exc}; it stays where it is, "
                 "unshipped, and is reported again on the next start")
        return
    # Report first, then move: a crash in between reports it twice, never zero times.
    if kept_as and not spool.set_aside(jf.path, kept_as) and os.path.lexists(jf.path):
        agent.log(f"could not move {jf.path} to {kept_as}; it stays, unshipped, and is "
                 "reported again on the next start")

def report_stuck(agent, jf: spool.JournalFile) -> None:
    """A file that cannot be shipped even split and cut: it stays (never
    deleted unshipped), a journal_error says why (once per file), and it
    counts as left behind (``--once`` exits 1)."""
    if jf.path in agent._stuck:
        return
    agent._stuck.add(jf.path)
    agent.stats.stuck += 1
    why = (f"journal file {jf.path} ({jf.size} bytes) is too large to ship: {agent.exporter.last_error}; "
           "it stays in the journal (the spool bound evicts it). Raise the server's max_payload "
           "or shorten the oversized value")
    agent.log(why)
    try:
        from emitter.journal import write_standalone

        first = jf.entries[0][1] if jf.entries else {}
        write_standalone(agent.s.journal, [{c.R_KIND: c.K_JOURNAL_ERROR, c.R_PATH: jf.path,
                                           c.R_REASON: why}],
                         node=first.get(c.R_NODE) or agent.s.node,
                         cluster=first.get(c.R_CLUSTER) or agent._cluster or None)
    except Exception as exc:  # noqa: BLE001 - a report must not stop shipping
        agent.log(f"could not record that {jf.path} is stuck: {exc}")



def scan_user_spools(agent, **scan_kw) -> list:
    """The files of every per-uid spool (emitter/userspool.py), each marked
    with the uid that owns its spool.  A spool that fails the checks is
    reported once (journal_error), moved to ``<uid>.untrusted`` when it can
    be (the uid's next run creates a fresh one) and never read."""
    from emitter import userspool

    trusted, refused = userspool.user_spools(agent.s.journal)
    for path, why in refused:
        _report_spool(agent, path, why)
    files = []
    for path, uid, ident in trusted:
        found = spool.scan(path, owner=uid, **scan_kw)
        if not userspool.same_spool(path, ident):
            continue  # swapped while it was read: nothing from it this round
        for jf in found:
            jf.spool_ident = ident  # deletes go through this very directory (spool.remove)
        files.extend(found)
    return files


def _report_spool(agent, path: str, why: str) -> None:
    from emitter.userspool import is_spool_name

    done = agent.__dict__.setdefault("_bad_spools", set())  # once per agent run
    if path in done:
        return
    done.add(path)
    movable = is_spool_name(os.path.basename(path))  # a uid's spool, not the parent
    kept_as = spool.aside_path(path) if movable else None
    where = (f"It is moved to {kept_as} (the uid's next hook run creates a fresh spool)" if movable
             else "Non-root hook runs cannot journal until it is fixed")
    reason = (f"untrusted per-uid spool {path}: it {why}, so its files could have been written by "
              f"another user; nothing in it was shipped. {where}; find out who made it, then remove it")
    agent.log(reason)
    try:
        from emitter.journal import write_standalone

        write_standalone(agent.s.journal, [{c.R_KIND: c.K_JOURNAL_ERROR, c.R_PATH: path, c.R_REASON: reason}],
                         node=agent.s.node, cluster=agent._cluster or None)
        agent.stats.untrusted_reports += 1
    except Exception as exc:  # noqa: BLE001 - a report must not stop shipping
        agent.log(f"could not record the untrusted spool {path}: {exc}")
        return
    if movable:
        spool.set_aside(path, kept_as)


def foreign_identity(agent, jf: spool.JournalFile) -> str | None:
    """Why a user-attested file must not be shipped although its spool is
    good: a record naming another node or cluster than this agent's.  Shipped,
    it would go to a subject these credentials may not publish on, and that
    refusal would hold up every later file."""
    cluster = agent._cluster
    for _, rec in jf.entries:
        if rec.get(c.R_NODE) != agent.s.node:
            return f"names node {str(rec.get(c.R_NODE))[:80]!r}, not this node {agent.s.node!r}"
        if cluster and rec.get(c.R_CLUSTER) != cluster:
            return f"names cluster {str(rec.get(c.R_CLUSTER))[:80]!r}, not this node's {cluster!r}"
    return None
