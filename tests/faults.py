"""Fault injection for the durability tests: make the N-th write, flush, fsync, truncate or rename fail.

Every fallible file-system call the platform makes from Python is counted while `inject()` is active:
`write` and `flush` of files opened for writing with `open` / `Path.open` / `Path.write_*`, and `os.write`,
`os.fsync`, `os.ftruncate`, `os.replace`, `os.rename`, `os.link`. The call numbered `fail_at` (1-based) raises
the given OSError (ENOSPC by default) instead of running; with `sticky=True` every later call fails too, as a
full disk does. A test sweeps N over every call an action makes:

    n = count_calls(lambda: action(fresh_state()))
    for fail_at in range(1, n + 1):
        state = fresh_state()
        with inject(fail_at) as faults, pytest.raises(OSError):
            action(state)
        assert faults.failed, faults.calls
        check_last_good_state(state)

Writes made by C++ code (DuckDB, faiss) are not seen; test those at the renames and fsyncs that publish them.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

KINDS = frozenset({"write", "flush", "fsync", "truncate", "rename"})


class Faults:
    """The counter behind `inject`: `calls` lists (kind, detail) of every counted call in order; `failed` the
    (kind, detail) of the call that was made to fail, or None."""

    def __init__(self, fail_at: int | None, kinds: Collection[str], error: OSError, sticky: bool):
        unknown = set(kinds) - KINDS
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {sorted(KINDS)}")
        self.fail_at = fail_at
        self.kinds = frozenset(kinds)
        self.error = error
        self.sticky = sticky
        self.calls: list[tuple[str, str]] = []
        self.failed: tuple[str, str] | None = None

    def hit(self, kind: str, detail: Any) -> None:
        """Count one call; raise if it is the one (or, sticky, after the one) chosen to fail."""
        if kind not in self.kinds:
            return
        self.calls.append((kind, str(detail)))
        n = len(self.calls)
        if self.fail_at is not None and (n == self.fail_at or (self.sticky and n > self.fail_at)):
            if self.failed is None:
                self.failed = self.calls[-1]
            raise OSError(self.error.errno, f"{self.error.strerror} (injected at call {n}: {kind} {detail})")


class _File:
    """A file opened for writing whose write and flush are counted; everything else is the real file's."""

    def __init__(self, real: Any, faults: Faults, name: str):
        self._real = real
        self._faults = faults
        self._name = name

    def write(self, data: Any) -> int:
        self._faults.hit("write", self._name)
        return self._real.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._faults.hit("flush", self._name)
        self._real.flush()

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._real.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._real)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def inject(
    fail_at: int | None = None,
    kinds: Collection[str] = KINDS,
    error: OSError | None = None,
    sticky: bool = False,
) -> Iterator[Faults]:
    """Count (and with `fail_at`, fail) the file-system calls made inside the block (see the module)."""
    faults = Faults(fail_at, kinds, error or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), sticky)
    real_open = builtins.open
    real = {name: getattr(os, name) for name in ("write", "fsync", "ftruncate", "replace", "rename", "link")}

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+"):
            return _File(f, faults, os.path.basename(str(file)))
        return f

    def counted(kind: str, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            faults.hit(kind, args[0] if name in ("write", "fsync", "ftruncate") else args[:2])
            return real[name](*args, **kwargs)

        return call

    kind_of = {"write": "write", "fsync": "fsync", "ftruncate": "truncate"}
    kind_of |= {"replace": "rename", "rename": "rename", "link": "rename"}
    builtins.open = io.open = open_  # type: ignore[assignment]
    for name, kind in kind_of.items():
        setattr(os, name, counted(kind, name))
    try:
        yield faults
    finally:
        builtins.open = io.open = real_open  # type: ignore[assignment]
        for name, fn in real.items():
            setattr(os, name, fn)


def count_calls(action: Callable[[], Any], kinds: Collection[str] = KINDS) -> int:
    """How many counted calls `action` makes when nothing fails (the range of N to sweep)."""
    with inject(None, kinds) as faults:
        action()
    return len(faults.calls)
