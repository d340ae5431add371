"""The fault injector itself: it counts every kind of call and fails exactly the one chosen."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from faults import count_calls, inject

from ebr.io import atomic_write_text


def test_every_call_of_an_atomic_write_is_counted_and_each_one_can_fail(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    n = count_calls(lambda: atomic_write_text(target, "new"))
    assert n == 5  # write, flush, fsync, rename, fsync of the folder
    target.write_text("old")
    for fail_at in range(1, n + 1):
        with inject(fail_at) as faults, pytest.raises(OSError) as err:
            atomic_write_text(target, "new")
        assert err.value.errno == errno.ENOSPC
        assert faults.failed is not None
        # before the rename nothing changed; a failed folder fsync after it leaves the new content
        assert target.read_text() == ("old" if fail_at <= 4 else "new")
        assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_sticky_faults_fail_every_later_call(tmp_path: Path) -> None:
    with inject(1, sticky=True) as faults:
        for _ in range(3):
            with pytest.raises(OSError):
                (tmp_path / "b").write_text("x")
    assert len(faults.calls) == 3
    assert (tmp_path / "b").read_text() == ""
