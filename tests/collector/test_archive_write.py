"""The archive's Parquet writes (collector.archive.write_parquet): through a
native file, synced on a descriptor opened before the first byte, nothing
left open or behind on a failure, and the archive's error names the file."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector import archive as A
from collector.columns import ARROW_SCHEMAS

TB = pa.table({"node": ["n1", "n2", "n3"], "ts": [1, 2, 3]})


class Spy:
    """``os.open``, ``os.close`` and ``os.fdatasync`` on files under
    ``under``, as write_parquet calls them (not the process's whole
    descriptor table: other threads of the test session open and close
    descriptors meanwhile)."""

    def __init__(self, monkeypatch, under):
        self.opened, self.closed, self.synced = [], [], []
        real_open, real_close, real_sync = os.open, os.close, os.fdatasync
        mine = set()

        def spy_open(path, flags, *a):
            fd = real_open(path, flags, *a)
            if str(path).startswith(str(under)):
                mine.add(fd)
                self.opened.append((str(path), fd, os.path.getsize(path)))
            return fd

        def spy_close(fd):
            if fd in mine:
                mine.discard(fd)
                self.closed.append(fd)
            return real_close(fd)

        def spy_sync(fd):
            if fd in mine:
                self.synced.append(fd)
            return real_sync(fd)

        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "close", spy_close)
        monkeypatch.setattr(os, "fdatasync", spy_sync)

    def all_closed(self) -> bool:
        return sorted(fd for _, fd, _ in self.opened) == sorted(self.closed)


@pytest.mark.parametrize("fsync", [True, False])
def test_write_parquet_round_trips_and_syncs_only_when_asked(tmp_path, monkeypatch, fsync):
    spy = Spy(monkeypatch, tmp_path)
    path = str(tmp_path / "f.parquet")
    A.write_parquet(TB, path, fsync, compression="zstd")
    assert pq.read_table(path).equals(TB)
    assert spy.all_closed()
    if fsync:
        # the descriptor that syncs was opened on the empty file, before pyarrow wrote
        assert [(p, size) for p, _, size in spy.opened] == [(path, 0)]
        assert spy.synced == [spy.opened[0][1]]
    else:
        assert spy.synced == [] and spy.opened == []


def test_write_parquet_passes_options_through(tmp_path):
    path = str(tmp_path / "f.parquet")
    A.write_parquet(pa.table({"x": list(range(10))}), path, False, row_group_size=4, compression="snappy")
    md = pq.ParquetFile(path).metadata
    assert md.num_row_groups == 3 and md.row_group(0).column(0).compression == "SNAPPY"


def test_write_parquet_failure_leaves_no_descriptor_open(tmp_path, monkeypatch):
    spy = Spy(monkeypatch, tmp_path)
    with pytest.raises((ValueError, pa.ArrowException)):
        A.write_parquet(TB, str(tmp_path / "f.parquet"), True, compression="no-such-codec")
    assert len(spy.opened) == 1 and spy.all_closed() and spy.synced == []


def test_archive_write_error_names_the_file_and_leaves_nothing(tmp_path):
    """A directory where the file should go: the write fails with the path
    and what to do, and no temporary file is left in the partition."""
    root = tmp_path / "archive"
    arch = A.Archive(str(root), consumer="t", fsync=True)
    tb = ARROW_SCHEMAS["hook_runs"].empty_table()
    part = ("c1", "2026-12-07")
    d = root / "hook_runs" / "date=2026-12-07" / "c1"
    name = A.file_name("t", 1, 10)
    os.makedirs(d / name)  # the final name is taken by a directory: the rename fails
    with pytest.raises(A.ArchiveError) as exc:
        arch.write({part: {"hook_runs": _one_row(tb)}}, 1, 10)
    assert str(d / name) in str(exc.value) and "nothing was acknowledged" in str(exc.value)
    assert sorted(os.listdir(d)) == [name]  # no .tmp left beside it
    arch.close()


def _one_row(empty):
    return pa.Table.from_pylist([{c: None for c in empty.column_names}], schema=empty.schema)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_is_an_oserror_with_its_errno():
    """What ``replacing`` turns into the archive's error: pyarrow's native
    file raises OSError (ENOSPC), as the Python file object did."""
    import errno

    with pytest.raises(OSError) as exc:
        A.write_parquet(pa.table({"x": list(range(200_000))}), "/dev/full", True)
    assert exc.value.errno == errno.ENOSPC
