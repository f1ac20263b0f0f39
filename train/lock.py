"""Run lock for an output directory: two launches on the same ``output_dir`` never both run.

Two runs writing one output_dir would interleave checkpoints, logs and exports and corrupt each
other. So a run first creates ``output_dir/.lock`` with ``O_CREAT|O_EXCL`` (atomic: one creator
wins) holding JSON ``{pid, host, started, argv, pid_start}``; a second launch refuses with one
line naming the holder. A lock left by a dead run is stale — holder on this host and its pid gone
or reused (start time, /proc/<pid>/stat field 22, differs), or the file unreadable and older than
``TORN_AFTER_S`` — and is taken over: renamed to a unique name (only one contender's rename
wins), checked to be the file judged stale (else a slow contender moved a fresh lock: put it
back), then the exclusive create is retried; losers report the winner. A lock held on another
host is never taken over: we cannot tell whether that process is alive.

Multi-process launches share one lock: only the main process (env RANK, else LOCAL_RANK, == 0,
or ``is_main``) takes it, *before* the other ranks proceed — the caller puts a barrier right
after entering ``run_lock`` (a refused main process exits and the launcher stops the others).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from longctx.errors import LongctxError

LOCK_NAME = ".lock"
TORN_AFTER_S = 60.0


class RunLockError(LongctxError, RuntimeError):
    """Another launch holds the output_dir lock; ``str`` is one line naming the holder."""


def _pid_start(pid: int) -> int | None:
    """Process start time (clock ticks since boot, /proc/<pid>/stat field 22); None if unavailable."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, pid_start: int | None) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _pid_start(pid)
    return pid_start is None or now is None or now == pid_start  # differs: the pid was reused


def _read(lock: Path) -> tuple[dict | None, os.stat_result, bytes]:
    """(holder or None when torn/unreadable, stat, raw bytes); FileNotFoundError when gone."""
    with open(lock, "rb") as f:
        st, raw = os.fstat(f.fileno()), f.read()
    try:
        holder = json.loads(raw)
    except ValueError:
        return None, st, raw
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and holder["pid"] > 0
    return (holder if ok and isinstance(holder.get("host"), str) else None), st, raw


def _stale(holder: dict | None, st: os.stat_result) -> bool:
    if holder is None:
        return time.time() - st.st_mtime > TORN_AFTER_S
    return holder["host"] == socket.gethostname() and not _alive(holder["pid"], holder.get("pid_start"))


def _describe(output_dir: Path, lock: Path, holder: dict | None, st: os.stat_result) -> str:
    """One line naming the holder (its fields come from a file: line breaks are dropped)."""
    if holder is None:
        age = time.time() - st.st_mtime
        msg = f"{output_dir} is being locked by another launch (lock file {lock} unreadable, written {age:.0f} s ago)"
        return f"{msg}; wait for it or use another output_dir"
    other = holder["host"] != socket.gethostname()
    msg = (
        f"{output_dir} is in use by pid {holder['pid']} on host {holder['host']}"
        + (" (another host: never taken over automatically)" if other else "")
        + f" since {holder.get('started', '?')} (lock file {lock}); wait for it or use another output_dir"
        + ("; if that run is gone, delete the lock file" if other else "")
    )
    return " ".join(msg.splitlines())


def _create(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "argv": sys.argv}
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({**info, "pid_start": _pid_start(os.getpid())}, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(lock)
        raise
    return True


def _take_over(lock: Path, st: os.stat_result, raw: bytes) -> None:
    """Move the stale lock aside (one contender's rename wins); put back a file that is not it."""
    aside = lock.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{time.time_ns()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # another contender moved it first
    moved = os.stat(aside)
    same = (moved.st_dev, moved.st_ino, moved.st_mtime_ns) == (st.st_dev, st.st_ino, st.st_mtime_ns)
    if not (same and aside.read_bytes() == raw):  # a winner re-created the lock meanwhile
        with contextlib.suppress(FileExistsError):
            os.link(aside, lock)  # restore it, never over a newer lock
    os.unlink(aside)


def acquire_run_lock(output_dir: Path) -> Path:
    """Create ``output_dir/.lock`` naming this process (taking over a stale one); RunLockError if held."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_NAME
    for attempt in range(50):
        if _create(lock):
            return lock
        try:
            holder, st, raw = _read(lock)
        except FileNotFoundError:
            continue  # released or moved aside meanwhile
        if _stale(holder, st):
            _take_over(lock, st, raw)
        elif holder is None and attempt < 49 and time.time() - st.st_mtime < 1:
            time.sleep(0.01)  # just created, not yet written: read the holder once it is
        else:
            raise RunLockError(_describe(output_dir, lock, holder, st))
    raise RunLockError(f"{output_dir}: lock file {lock} kept changing while taking it; retry the launch")


def release_run_lock(lock_path: Path) -> None:
    """Remove the lock file only if it still names this process (pid, start time and host)."""
    try:
        holder, _, _ = _read(Path(lock_path))
    except FileNotFoundError:
        return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _pid_start(os.getpid())}
    if holder is not None and all(holder.get(k) == v for k, v in me.items()):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)


@contextlib.contextmanager
def run_lock(output_dir: Path, is_main: bool | None = None) -> Iterator[Path | None]:
    """Hold the output_dir lock in the main process; other ranks get None and take nothing.

    ``is_main`` defaults to env RANK (else LOCAL_RANK, as launchers set them; a plain run is 0) == 0.
    """
    if is_main is None:
        is_main = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
    if not is_main:
        yield None
        return
    lock = acquire_run_lock(output_dir)
    try:
        yield lock
    finally:
        release_run_lock(lock)
