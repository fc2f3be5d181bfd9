"""Write-then-rename, shared by every writer of a file a reader may open.

A reader sees the old file or the new one, never half of one; on failure the
temporary file is removed and the caller's own error (which names the file
and says what to do) is raised.  Not for the journal's hot path, which
manages its descriptors itself.
"""

import os
from contextlib import contextmanager


@contextmanager
def replacing(path, error=None, tmp=None):
    """Yield a temporary name beside ``path``; rename it over ``path`` on success.

    ``error(exc)`` turns an ``OSError`` into the caller's exception; without
    it the ``OSError`` propagates.  ``tmp`` overrides the temporary name
    (default ``<path>.tmp-<pid>``).  The temporary file never outlives a failure.
    """
    tmp = tmp or f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if error is None:
            raise
        raise error(exc) from exc
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
