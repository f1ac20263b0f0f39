"""The output_dir run lock: refuse a live holder, take over a dead one, exactly one racer wins."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longctx.train import lock as lk
from longctx.train.lock import RunLockError, acquire_run_lock, release_run_lock, run_lock

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LIVE = 1  # init: a live process on this host that is never us


def _holder(path: Path) -> dict:
    return json.loads((path / ".lock").read_text())


def _write_lock(out: Path, pid: int, host: str | None = None, **extra) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "started": "2026-12-01T21:05:56Z",
        "argv": ["x"],
    }
    (out / ".lock").write_text(json.dumps({**info, **extra}))
    return out / ".lock"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"timed out waiting for {path}"
        time.sleep(0.01)


def test_live_holder_in_another_process_is_refused_with_one_line(tmp_path):
    out, ready = tmp_path / "out", tmp_path / "ready"
    code = (
        "import sys, time; from pathlib import Path; from longctx.train.lock import acquire_run_lock\n"
        f"acquire_run_lock(Path({str(out)!r})); Path({str(ready)!r}).touch(); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], env=ENV)
    try:
        _wait_for(ready)
        held = _holder(out)
        assert held["pid"] == child.pid and held["host"] == socket.gethostname()
        with pytest.raises(RunLockError) as err:
            acquire_run_lock(out)
        msg = str(err.value)
        assert "\n" not in msg
        assert f"pid {child.pid}" in msg and socket.gethostname() in msg and held["started"] in msg
        assert str(out / ".lock") in msg
        assert _holder(out)["pid"] == child.pid  # a refused launch leaves the holder's lock alone
    finally:
        child.kill()
        child.wait()


def test_stale_lock_of_dead_pid_is_taken_over(tmp_path):
    out = tmp_path / "out"
    _write_lock(out, _dead_pid())
    lock = acquire_run_lock(out)
    assert lock == out / ".lock" and _holder(out)["pid"] == os.getpid()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the moved-aside file is gone


def test_reused_pid_is_stale_when_start_time_differs(tmp_path):
    out = tmp_path / "out"
    if lk._pid_start(LIVE) is None:
        pytest.skip("no /proc/<pid>/stat here")
    _write_lock(out, LIVE, pid_start=lk._pid_start(LIVE) + 1)  # live pid, other process
    acquire_run_lock(out)
    assert _holder(out)["pid"] == os.getpid()
    _write_lock(out, LIVE, pid_start=lk._pid_start(LIVE))  # the same process: alive
    with pytest.raises(RunLockError, match=f"pid {LIVE} "):
        acquire_run_lock(out)


def test_torn_lock_is_stale_only_when_old(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text('{"pid": 12')
    with pytest.raises(RunLockError, match="unreadable"):
        acquire_run_lock(out)
    old = time.time() - lk.TORN_AFTER_S - 5
    os.utime(out / ".lock", (old, old))
    acquire_run_lock(out)
    assert _holder(out)["pid"] == os.getpid()


def test_lock_on_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "out"
    _write_lock(out, _dead_pid(), host="some-other-node")
    with pytest.raises(RunLockError) as err:
        acquire_run_lock(out)
    assert "another host" in str(err.value) and "some-other-node" in str(err.value)
    assert _holder(out)["host"] == "some-other-node"


def test_release_removes_only_our_own_lock(tmp_path):
    out = tmp_path / "out"
    lock = acquire_run_lock(out)
    release_run_lock(lock)
    assert not lock.exists()
    release_run_lock(lock)  # already gone: no error

    lock = acquire_run_lock(out)
    _write_lock(out, LIVE)  # someone else's lock now
    release_run_lock(lock)
    assert _holder(out)["pid"] == LIVE

    me = _holder(out) | {"pid": os.getpid(), "pid_start": -1}  # our pid, but another process's start
    lock.write_text(json.dumps(me))
    release_run_lock(lock)
    assert lock.exists()


RACER = """
import sys, time
from pathlib import Path
from longctx.train.lock import RunLockError, acquire_run_lock
root, i, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
while not (root / "go").exists():
    time.sleep(0.001)
results = []
for r in range(rounds):  # one race per output dir, all racers walking the dirs in step
    try:
        acquire_run_lock(root / f"out{r}")
        results.append("WIN")
    except RunLockError as e:
        results.append("LOSE " + str(e))
(root / f"tmp.{i}").write_text("\\n".join(results))
(root / f"tmp.{i}").rename(root / f"result.{i}")  # appears complete
while not (root / "done").exists():  # hold the won locks until every racer has answered
    time.sleep(0.01)
"""


def test_concurrent_takeover_of_a_stale_lock_has_exactly_one_winner(tmp_path):
    n, rounds = 6, 50
    dead = _dead_pid()
    for r in range(rounds):
        _write_lock(tmp_path / f"out{r}", dead)
    argv = [sys.executable, "-c", RACER, str(tmp_path)]
    racers = [subprocess.Popen([*argv, str(i), str(rounds)], env=ENV) for i in range(n)]
    try:
        time.sleep(0.3)  # let them all start and spin on the go file
        (tmp_path / "go").touch()
        for i in range(n):
            _wait_for(tmp_path / f"result.{i}")
        results = [(tmp_path / f"result.{i}").read_text().split("\n") for i in range(n)]
        for r in range(rounds):
            answers = [res[r] for res in results]
            assert sum(a == "WIN" for a in answers) == 1, (r, answers)
            winner = racers[answers.index("WIN")].pid
            assert _holder(tmp_path / f"out{r}")["pid"] == winner
            assert all(f"pid {winner} " in a for a in answers if a != "WIN"), (r, answers)
            assert sorted(p.name for p in (tmp_path / f"out{r}").iterdir()) == [".lock"]
    finally:
        (tmp_path / "done").touch()
        for p in racers:
            p.wait(timeout=10)


def test_slow_contender_puts_back_a_fresh_lock_it_moved(tmp_path, monkeypatch):
    """A contender judged the lock stale, then a winner re-created it before the rename."""
    out = tmp_path / "out"
    _write_lock(out, _dead_pid())
    rename = os.rename

    def winner_first(src, dst):
        monkeypatch.setattr(os, "rename", rename)
        os.unlink(src)
        _write_lock(out, LIVE)  # the winner's fresh, live lock
        rename(src, dst)

    monkeypatch.setattr(os, "rename", winner_first)
    with pytest.raises(RunLockError, match=f"pid {LIVE} "):
        acquire_run_lock(out)
    assert _holder(out)["pid"] == LIVE
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_context_manager_releases_on_exception_and_skips_other_ranks(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(ValueError), run_lock(out, is_main=True) as lock:
        assert _holder(out)["pid"] == os.getpid()
        raise ValueError("boom")
    assert not lock.exists()

    with run_lock(out, is_main=False) as lock:
        assert lock is None and not (out / ".lock").exists()
    monkeypatch.setenv("RANK", "1")
    with run_lock(out) as lock:
        assert lock is None and not (out / ".lock").exists()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with run_lock(out) as lock:
        assert lock is None and not (out / ".lock").exists()
    monkeypatch.setenv("RANK", "0")
    with run_lock(out) as lock:
        assert lock == out / ".lock" and lock.exists()
    assert not lock.exists()
