"""``hookscope doctor``: the per-owner spools of non-root hook runs.

TaskProlog/SrunProlog run as the job's user and PrologSlurmctld as SlurmUser;
they journal to ``<journal_dir>.users/<uid>/`` (docs/journal.md "Per-owner
spools").  The agent ships a spool only when its parent is root-owned (sticky
if others may write it) and the spool is a 0700 directory owned by the uid it
is named for; doctor says the same thing before the agent has to refuse.
"""

from __future__ import annotations

import os

from emitter import userspool
from emitter.doctor_checks import FAIL, OK, WARN, Check, Setup

NAME = "user spools"


def check_user_spools(s: Setup) -> list[Check]:
    parent = userspool.users_dir(s.journal_dir)
    try:
        pst = os.lstat(parent)
    except FileNotFoundError:
        return [Check(NAME, WARN, f"{parent} does not exist yet: hooks that run as a user (TaskProlog, "
                                  "SrunProlog) or as SlurmUser (PrologSlurmctld) lose their records until "
                                  "the agent has started once (it creates it)",
                      f"start the agent, or: install -d -m 1733 -o root -g root {parent}")]
    except OSError as exc:
        return [Check(NAME, FAIL, f"{parent}: {exc.strerror}", f"make {parent} accessible to root")]
    why = userspool.parent_problem(pst)
    if why:
        return [Check(NAME, FAIL, f"{parent} {why}: the agent ships none of its spools",
                      f"inspect it, then: rm -r {parent} and restart the agent (it re-creates it root 1733)")]
    trusted, refused = userspool.user_spools(s.journal_dir)
    if refused:
        listed = ", ".join(f"{p} {w}" for p, w in refused[:5])
        return [Check(NAME, FAIL, f"{len(refused)} per-uid spool(s) the agent will refuse: {listed}",
                      "a spool must be a 0700 directory owned by the uid it is named for: "
                      "chown UID <dir> && chmod 0700 <dir>, or remove it")]
    return [Check(NAME, OK, f"{parent}: root, sticky; {len(trusted)} per-uid spool(s), each 0700 and "
                            "owned by its uid")]
