"""emitter.fsutil.replacing: a reader sees the old file or the new one, never a torn one."""

import os

import pytest

from emitter.fsutil import replacing


class Boom(Exception):
    pass


def test_success_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with replacing(str(p)) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
        assert p.read_text() == "old"  # not visible before the rename
    assert p.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


def test_oserror_becomes_callers_error_and_old_file_survives(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(Boom, match="out.txt"):
        with replacing(str(p), lambda e: Boom(f"cannot write {p}: {e.strerror}")) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise OSError(28, "No space left on device")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_any_other_failure_removes_the_temp_too(tmp_path):
    p = tmp_path / "out.txt"
    with pytest.raises(KeyError):
        with replacing(str(p)) as tmp:
            open(tmp, "w").close()
            raise KeyError("x")
    assert os.listdir(tmp_path) == []
