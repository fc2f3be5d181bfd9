"""emitter/runfail.py: the status and message of a script that does not run as a
script (execve failed, not executable, refused, an empty hook), pure."""

import errno
import os

from emitter import layouts
from emitter.runfail import empty, exec_failed, not_run, run_parts_line


def test_runfail_statuses_and_messages_are_the_platforms():
    """Per layout; the runner journals and prints what these return."""
    slurm, rp, ex = (layouts.knobs_for(n) for n in ("slurm", "run-parts", "exec"))
    eacces, enoent = OSError(errno.EACCES, "Permission denied"), OSError(errno.ENOENT, "No such file or directory")
    assert exec_failed(slurm, "/d/a", eacces) == (127, b"hookscope: cannot execute /d/a: Permission denied\n")
    assert exec_failed(ex, "/d/a", eacces)[0] == 126 and exec_failed(ex, "/d/a", enoent)[0] == 127
    assert exec_failed(rp, "/d/a", eacces) == (1, b"run-parts: failed to exec /d/a: Permission denied\n")

    refused = layouts.Entry("/d/a", layouts.REFUSE, "writable by others")
    assert not_run(slurm, refused) == (126, b"hookscope: refused /d/a: writable by others\n", "writable by others")
    st = os.stat("/")
    noexec = layouts.Entry("/d/b", layouts.FAIL, "not executable (status 127)", st=st)
    assert not_run(slurm, noexec) == (127, b"hookscope: /d/b: not executable (status 127)\n", None)
    assert not_run(ex, noexec) == (126, b"hookscope: /d/b: not executable (status 126)\n", None)
    link = layouts.Entry("/d/c", layouts.FAIL, "failed to stat component /d/c (run-parts: exit 1)")
    assert not_run(rp, link) == (1, b"run-parts: failed to stat component /d/c\n", None)

    w = []
    assert empty(slurm, "slurm", False, ["/d"], w) == (1, None) and "fails an empty hook" in w[-1]
    assert empty(slurm, "slurm", True, ["/d"], w) == (0, None) and w[-1] == "no scripts in /d; nothing ran"
    assert empty(ex, "exec", False, ["/d/x"], w) == (127, "hookscope exec: /d/x: not found\n")
    assert run_parts_line("/d/a", 3, None) == "run-parts: /d/a exited with return code 3\n"
    assert run_parts_line("/d/a", 143, 15) == "run-parts: /d/a exited because of uncaught signal 15\n"
