"""One run per workdir: an exclusive lock file ``WORKDIR/run.lock`` naming its holder.

The lock is a file created with ``O_CREAT | O_EXCL``, which is atomic on local disks and on
the shared filesystems clusters use (NFSv3 and later, Lustre, GPFS), unlike ``flock``. It
holds the holder's host, PID, boot id, process start time and command line. A lock is
*stale*, and is taken over, when its holder cannot be running any more:

* same host (same hostname and boot id): the PID is not alive, or is alive but started at
  another time (the PID was reused, e.g. by a restarted container);
* another host: the holder refreshes the file's modification time every
  :data:`HEARTBEAT_S` seconds, and a lock not refreshed for :data:`STALE_AFTER_S` seconds
  (measured on the filesystem's own clock) is stale.

So a run killed by SIGKILL, or on a machine that died, never blocks the workdir for good.
Taking over a stale lock goes through a short-lived ``run.lock.break`` file, so that two
runs breaking the same stale lock cannot both end up holding the workdir. With several JAX
processes only process 0 takes the lock and tells the others whether it got it. Remote
workdirs (``gs://``) get the same file, written without the atomic create (object stores
have no ``O_EXCL``): it still stops a second run started after the first.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from ebm_vs_score.errors import WorkdirBusyError

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
_BREAK_STALE_S = 60.0  # a ".break" file this old belongs to a process that died breaking
_HELD: dict[str, list] = {}  # lock path -> [RunLock, depth]: re-entrant within a process
_LIVE_TOKENS: set[str] = set()  # tokens of the locks this process holds now


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "boot_id": _boot_id(),
            "start_ticks": _start_ticks(pid), "token": uuid.uuid4().hex,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:500]}


def _fs_now(directory: str) -> float:
    """The filesystem's clock (a file's mtime just written), robust to host clock skew."""
    probe = os.path.join(directory, f".{LOCK_FILE}.clock_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    try:
        with open(probe, "w"):
            pass
        return os.stat(probe).st_mtime
    except OSError:
        return time.time()
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)


def _read(path: str) -> dict | None:
    """The holder recorded in ``path``; None if missing or not (yet) a complete record."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and "token" in holder else None


def _age(path: str) -> float:
    try:
        return _fs_now(os.path.dirname(path)) - os.stat(path).st_mtime
    except OSError:
        return 0.0


def is_stale(holder: dict | None, path: str) -> bool:
    """Whether the lock at ``path`` (recorded ``holder``) belongs to no running process."""
    if holder is None:  # being written right now, or cut short: only age tells
        return _age(path) > _BREAK_STALE_S
    mine = _identity()
    same_host = holder.get("host") == mine["host"] and holder.get("boot_id") == mine["boot_id"]
    if not same_host:
        return _age(path) > STALE_AFTER_S
    pid = int(holder.get("pid", -1))
    if pid == mine["pid"]:  # this process: stale unless it holds it (else a reused PID)
        return holder.get("token") not in _LIVE_TOKENS
    if pid <= 0 or not _pid_alive(pid):
        return True
    ticks = _start_ticks(pid)
    return ticks is not None and holder.get("start_ticks") not in (None, ticks)


def _break(path: str, holder: dict | None) -> None:
    """Removes the stale lock ``holder`` at ``path``, unless another process is doing so."""
    breaker = path + ".break"
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if _age(breaker) > _BREAK_STALE_S:
            with contextlib.suppress(OSError):
                os.remove(breaker)
        time.sleep(0.05)
        return
    try:
        current = _read(path)
        if current == holder or (current is None and holder is None):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    finally:
        os.close(fd)
        os.remove(breaker)


def held_message(workdir: str, holder: dict | None, path: str) -> str:
    """One sentence naming the run that holds ``workdir`` and what to do."""
    if holder is None:
        return (f"--workdir={workdir} is being locked by another run right now ({path}); "
                "wait for it, or use another --workdir")
    host, pid = holder.get("host", "?"), holder.get("pid", "?")
    here = holder.get("host") == socket.gethostname()
    stop = f"stop it (kill {pid})" if here else f"stop it on {host}"
    return (f"--workdir={workdir} is in use by another run (host {host}, PID {pid}, started "
            f"{holder.get('started', '?')}; its command is in {path}); wait for it to finish "
            f"or {stop}, or use another --workdir (the lock of a run that died is taken over "
            f"by itself, from another host after {STALE_AFTER_S / 60:.0f} minutes)")


class RunLock:
    """The lock of one workdir, held by this process until :meth:`release`."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.record = _identity()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Takes the lock; raises :class:`WorkdirBusyError` naming the holder if it is held."""
        if "://" in self.workdir:
            return self._acquire_remote()
        _LIVE_TOKENS.add(self.record["token"])  # before the file exists: never "stale"
        try:
            self._acquire_local()
        except BaseException:
            _LIVE_TOKENS.discard(self.record["token"])
            raise

    def _acquire_local(self) -> None:
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if not is_stale(holder, self.path):
                    if holder is None:  # its creator is writing it: look again shortly
                        time.sleep(0.1)
                        continue
                    raise WorkdirBusyError(held_message(self.workdir, holder, self.path)) from None
                _break(self.path, holder)
                continue
            self._write(fd)
            self._start_heartbeat()
            return
        raise WorkdirBusyError(held_message(self.workdir, _read(self.path), self.path))

    def _write(self, fd: int) -> None:
        try:
            os.write(fd, json.dumps(self.record, sort_keys=True).encode())
            os.fsync(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(self.path)
            raise
        os.close(fd)

    def _acquire_remote(self) -> None:
        from etils import epath

        path = epath.Path(self.path)
        if path.exists():
            try:
                holder = json.loads(path.read_text())
            except ValueError:
                holder = None
            age = time.time() - path.stat().mtime
            if age < STALE_AFTER_S:
                raise WorkdirBusyError(held_message(self.workdir, holder, self.path))
        path.write_text(json.dumps(self.record, sort_keys=True))

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name="run.lock heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Removes the lock file if it is still this process's."""
        self._stop.set()
        _LIVE_TOKENS.discard(self.record["token"])
        if "://" in self.workdir:
            from etils import epath

            with contextlib.suppress(Exception):
                epath.Path(self.path).unlink()
            return
        current = _read(self.path)
        if current is not None and current.get("token") == self.record["token"]:
            with contextlib.suppress(OSError):
                os.remove(self.path)


def _acquire_on_process_zero(workdir: str) -> RunLock | None:
    """Process 0 takes the lock; with several processes every one learns the outcome."""
    import jax

    error, lock = None, None
    if jax.process_index() == 0:
        lock = RunLock(workdir)
        try:
            lock.acquire()
        except WorkdirBusyError as e:
            error, lock = e, None
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not int(ok) and error is None:
            error = WorkdirBusyError(f"--workdir={workdir} is in use by another run (process 0's "
                                 "log names it); wait for it or use another --workdir")
    if error is not None:
        raise error
    return lock


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds ``workdir``'s lock for the block (re-entrant within one process).

    The workdir must exist (``workdir.prepare_for_writing``).

    Raises:
      WorkdirBusyError: another run holds it (one sentence naming that run).
    """
    key = workdir if "://" in workdir else os.path.realpath(workdir)
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        _HELD[key] = [_acquire_on_process_zero(workdir), 1]
    try:
        yield
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            lock = _HELD.pop(key)[0]
            if lock is not None:
                lock.release()
