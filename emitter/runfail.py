"""What the runner says for a planned script that does not run as a script:
execve failed, the plan marked it failed (not executable, a dangling link) or
refused (strict permissions), or nothing was planned at all.  Pure functions
of the layout's knobs; the runner writes and journals what they return.

Off the hot path: a hook whose scripts all run never imports this module.
"""

from emitter import layouts

_ENOENT = 2


def exec_failed(knobs, path, exc):
    """(status, output) of a script whose execve failed with ``exc`` (OSError)."""
    if knobs.get("report_exit"):
        # run-parts' child: error("failed to exec ..."); exit(1).
        return 1, f"run-parts: failed to exec {path}: {exc.strerror}\n".encode()
    code = layouts.EXIT_NOT_EXECUTABLE
    if knobs.get("shell_statuses") and exc.errno != _ENOENT:
        code = layouts.EXIT_REFUSED  # the shell's 126: found, but cannot be executed
    return code, f"hookscope: cannot execute {path}: {exc.strerror}\n".encode()


def not_run(knobs, entry):
    """(status, output, refused reason or None) of a FAIL or REFUSE plan entry."""
    if entry.action == layouts.REFUSE:
        return layouts.EXIT_REFUSED, f"hookscope: refused {entry.path}: {entry.reason}\n".encode(), entry.reason
    code = layouts.EXIT_NOT_EXECUTABLE
    if knobs.get("shell_statuses") and entry.st is not None:
        code = layouts.EXIT_REFUSED  # the shell's 126: it exists (a directory, no x bit)
    if knobs.get("report_exit"):
        return 1, f"run-parts: {entry.reason.split(' (run-parts')[0]}\n".encode(), None
    out = f"hookscope: {entry.path}: {entry.reason}\n".encode()
    if code == layouts.EXIT_REFUSED:
        out = out.replace(b"status 127", b"status 126")
    return code, out, None


def empty(knobs, layout, empty_ok, dirs, warnings):
    """(status, stderr text or None) of a hook with no script to run; appends
    the hook_started warning to ``warnings``."""
    where = ", ".join(dirs) or "(no directory)"
    if knobs.get("shell_statuses"):  # hookscope exec: the one script is not there
        warnings.append(f"{where}: not found (status 127, as a shell gives)")
        return layouts.EXIT_NOT_EXECUTABLE, f"hookscope exec: {where}: not found\n"
    if knobs["empty"] == "fail" and not empty_ok:
        warnings.append(f"no scripts in {where}: the {layout} layout fails an empty hook "
                        "(status 1); set runner.empty_ok = true to allow it")
        return 1, None
    warnings.append(f"no scripts in {where}; nothing ran")
    return 0, None


def run_parts_line(path, exit_code, signal):
    """run-parts' own stderr line for a failing part."""
    if signal is not None:
        return f"run-parts: {path} exited because of uncaught signal {signal}\n"
    return f"run-parts: {path} exited with return code {exit_code}\n"
