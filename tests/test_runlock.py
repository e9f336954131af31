"""The workdir lock (``runlock``): exclusive, naming its holder, stale-safe after SIGKILL,
PID reuse and a dead host, and safe when two runs break the same stale lock at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from ebm_vs_score import errors, runlock


def _lock_file(workdir) -> dict:
    with open(os.path.join(workdir, runlock.LOCK_FILE)) as f:
        return json.load(f)


def _write_holder(workdir, **fields) -> str:
    record = runlock._identity()
    record.update(fields)
    path = os.path.join(workdir, runlock.LOCK_FILE)
    with open(path, "w") as f:
        json.dump(record, f)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_lock_is_refused_naming_the_holder_and_release_frees_it(tmp_path):
    first = runlock.RunLock(str(tmp_path))
    first.acquire()
    holder = _lock_file(tmp_path)
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
    with pytest.raises(errors.WorkdirBusyError) as refused:
        runlock.RunLock(str(tmp_path)).acquire()
    message = str(refused.value)
    assert f"PID {os.getpid()}" in message and socket.gethostname() in message
    assert f"kill {os.getpid()}" in message and len(message.splitlines()) == 1
    first.release()
    assert not os.path.exists(os.path.join(tmp_path, runlock.LOCK_FILE))
    again = runlock.RunLock(str(tmp_path))
    again.acquire()  # the advice "wait for it to finish" works
    again.release()


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path):
    _write_holder(tmp_path, pid=_dead_pid(), token="dead")
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire()
    assert _lock_file(tmp_path)["token"] == lock.record["token"]
    lock.release()


def test_a_reused_pid_does_not_keep_the_lock(tmp_path):
    """Same host and a live PID, but a process that started at another time (a PID reused
    after a restart): the lock is stale."""
    parent = os.getppid()
    ticks = runlock._start_ticks(parent)
    if ticks is None:
        pytest.skip("no /proc start times on this system")
    _write_holder(tmp_path, pid=parent, start_ticks=ticks + 1, token="old")
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire()
    lock.release()
    _write_holder(tmp_path, pid=parent, start_ticks=ticks, token="live")  # the real one
    with pytest.raises(errors.WorkdirBusyError, match=f"PID {parent}"):
        runlock.RunLock(str(tmp_path)).acquire()


def test_a_lock_from_another_host_is_stale_only_without_its_heartbeat(tmp_path):
    path = _write_holder(tmp_path, host="elsewhere", boot_id="other", pid=1, token="far")
    with pytest.raises(errors.WorkdirBusyError, match="host elsewhere.*stop it on elsewhere"):
        runlock.RunLock(str(tmp_path)).acquire()
    old = time.time() - runlock.STALE_AFTER_S - 60
    os.utime(path, (old, old))
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire()
    lock.release()


def test_a_half_written_lock_waits_then_is_broken_when_old(tmp_path):
    path = os.path.join(tmp_path, runlock.LOCK_FILE)
    open(path, "w").close()  # created, not yet written by its creator
    with pytest.raises(errors.WorkdirBusyError, match="being locked by another run"):
        runlock.RunLock(str(tmp_path)).acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire()
    lock.release()


def _take(workdir, outcomes: list, locks: list) -> None:
    lock = runlock.RunLock(workdir)
    try:
        lock.acquire()
        locks.append(lock)
        outcomes.append("held")
    except errors.WorkdirBusyError:
        outcomes.append("refused")


def test_two_runs_breaking_one_stale_lock_do_not_both_get_it(tmp_path):
    for _ in range(5):
        _write_holder(tmp_path, pid=_dead_pid(), token="dead")
        outcomes, locks = [], []
        threads = [threading.Thread(target=_take, args=(str(tmp_path), outcomes, locks))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["held", "refused", "refused", "refused"]
        locks[0].release()


def test_hold_is_reentrant_and_releases_at_the_outermost_exit(tmp_path):
    path = os.path.join(tmp_path, runlock.LOCK_FILE)
    with runlock.hold(str(tmp_path)):
        with runlock.hold(str(tmp_path)):
            assert os.path.exists(path)
        assert os.path.exists(path)
    assert not os.path.exists(path)
