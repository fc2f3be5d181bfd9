"""``hookscope-hook``: what slurm.conf names in every hook slot, with no arguments.

The context comes from ``SLURM_SCRIPT_CONTEXT``, the directories and every
setting from the config file.  Whatever goes wrong in hookscope itself, the
scripts still run and their status is returned: a broken config file falls
back to its valid keys and the defaults (with a stderr line and a journal warning), a
journal that cannot be written only loses records.
"""

import os
import sys


def main():
    from emitter import EmitterError, contract
    from emitter import config as cf
    from emitter.journal import ensure_std_fds, say

    ensure_std_fds()

    context = os.environ.get("SLURM_SCRIPT_CONTEXT")
    if context not in contract.CONTEXTS:
        say(
            f"hookscope-hook: SLURM_SCRIPT_CONTEXT is {context!r}, not one of {', '.join(contract.CONTEXTS)}; "
            "hookscope-hook must be started by Slurm (21.08+) from a hook slot, or use "
            "'hookscope run --context CTX --dir DIR'\n")
        return 1
    warnings = []
    try:
        cfg = cf.load_config()
    except EmitterError as exc:
        # Running the scripts from the default directories beats failing the
        # hook (and draining the node) over a typo in our own config.
        msg = f"{exc} -- ignoring what is invalid until it is fixed"
        say(f"hookscope-hook: {msg}\n")
        warnings.append(msg)
        cfg = cf.salvage_config()
    settings = cf.runner_settings(cfg)
    if os.environ.get("HOOKSCOPE_JOURNAL_DIR"):
        settings["journal_dir"] = os.environ["HOOKSCOPE_JOURNAL_DIR"]
    dirs = cf.context_dirs(settings, context)
    from emitter import runner

    status, journal = runner.run(settings, context, dirs, extra_warnings=warnings)
    if settings["export"] == "direct" and journal.problem is None:
        from emitter.runcli import export_direct

        export_direct(journal, settings, cfg)
    return status


if __name__ == "__main__":
    sys.exit(main())
