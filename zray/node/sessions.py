"""Where zray keeps its files, and the marker on everything a run of zray starts.

A *session* is one cluster's life on this node. While it runs, its sockets, its agent's log
and its broker's write-ahead log live in a session directory under ``$TMPDIR`` (short paths:
a Unix socket's path is at most 107 bytes), and its arena in /dev/shm. When it ends, its log
and write-ahead log move to ``ZRAY_HOME/sessions/`` (the newest ``kept_sessions`` are kept),
so ``zray inspect`` and a post-mortem still have them; the rest is removed.

``ZRAY_HOME`` holds all per-user state: the ended sessions now, and later the address file of
``zray node start`` and the cluster token. It defaults to ``$XDG_STATE_HOME/zray`` (i.e.
``~/.local/state/zray``); a test suite points it at a directory of its own.

``ZRAY_RUN_ID`` marks a run: every process zray starts carries it in its environment, and
every session directory and arena carries it in its name, so a test suite finds exactly what
it started (another zray program on the machine has another). ``init`` makes one up when the
environment has none.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import tempfile
import uuid

from zray.exceptions import ZrayError

SESSION_PREFIX = "zray-session-"
# What an ended session keeps: the agent's and the GCS's logs, what the workers printed,
# every shard's SQLite files, and why a shard was given up on.
_KEPT = ("agent.log", "gcs.log", "workers.log", "broker-*.wal", "broker-*.wal-wal",
         "broker-*.wal-shm", "broker-*.failed")
_RUN_ID = re.compile(r"[A-Za-z0-9_]{1,24}")


def given_run_id() -> str | None:
    """The run marker in this process's environment (``ZRAY_RUN_ID``), if any."""
    given = os.environ.get("ZRAY_RUN_ID")
    if given is not None and not _RUN_ID.fullmatch(given):
        raise ZrayError(f"ZRAY_RUN_ID={given!r} is not a valid run marker: use 1-24 letters, "
                        "digits or underscores, or unset it")
    return given


def run_id() -> str:
    """The run marker for a new cluster: the environment's, or a new one."""
    return given_run_id() or uuid.uuid4().hex[:12]


def zray_home() -> str:
    """The per-user state directory (created, private to the user, on first use)."""
    home = os.environ.get("ZRAY_HOME") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "zray")
    os.makedirs(home, mode=0o700, exist_ok=True)
    return home


def ended_sessions_dir() -> str:
    path = os.path.join(zray_home(), "sessions")
    os.makedirs(path, exist_ok=True)
    return path


def ended_path(session: str) -> str:
    """Where session directory ``session`` keeps its logs once it ends."""
    return os.path.join(ended_sessions_dir(), os.path.basename(session))


def new_session_dir(run: str) -> str:
    """A new, empty session directory of run ``run`` under ``$TMPDIR``."""
    return tempfile.mkdtemp(prefix=f"{SESSION_PREFIX}{run}-")


def live_sessions(run: str = "*") -> list[str]:
    """The session directories under ``$TMPDIR`` of run ``run`` (of every run by default)."""
    return glob.glob(os.path.join(tempfile.gettempdir(), f"{SESSION_PREFIX}{run}-*"))


def arenas(run: str) -> list[str]:
    """The /dev/shm arenas of run ``run`` (see zray.objects.store.place_arena)."""
    return glob.glob(f"/dev/shm/{SESSION_PREFIX}{run}-*")


def end_session(session: str, kept_sessions: int) -> None:
    """Move an ended session's logs to ``ZRAY_HOME/sessions/``, remove the rest of its
    directory, and forget all but the newest ``kept_sessions`` ended sessions. Both the
    agent and its driver call this; whichever comes second finds nothing left to do."""
    if not os.path.isdir(session):
        return
    try:
        ended = ended_sessions_dir()
        keep = [path for pattern in _KEPT for path in glob.glob(os.path.join(session, pattern))]
        if keep:
            destination = ended_path(session)
            os.makedirs(destination, mode=0o700, exist_ok=True)
            for path in keep:  # private: the logs hold pickled functions
                try:
                    os.chmod(path, 0o600)
                    shutil.move(path, os.path.join(destination, os.path.basename(path)))
                except FileNotFoundError:  # a shard closing its log removed its -wal file
                    continue
        _forget_old(ended, kept_sessions)
    except OSError as exc:  # the logs are lost; the session's sockets and files go all the same
        logging.getLogger(__name__).warning(
            "could not keep the logs of session %s in %s: %s; check ZRAY_HOME", session,
            os.environ.get("ZRAY_HOME", "ZRAY_HOME"), exc)
    finally:
        shutil.rmtree(session, ignore_errors=True)
        # (spill files go under ZRAY_HOME when the session is on tmpfs: zray/node/spilling.py)
        shutil.rmtree(os.path.join(zray_home(), "spill", os.path.basename(session)),
                      ignore_errors=True)


# --- who a session belongs to, and reaping the dead ones ----------------------------------

_OWNER = "owner.json"  # {"processes": [[pid, start time], ...], "arena": path}


def claim(session: str, arena: str) -> None:
    """Record this process (the driver) as the session's owner, and where its arena is."""
    _write_owner(session, {"processes": [process_identity(os.getpid())], "arena": arena})


def add_processes(session: str, pids: list[int]) -> None:
    """Record more processes of the session (its agent, its GCS supervisor): while any of
    them lives, the session is not dead."""
    owner = _read_owner(session)
    if owner is not None:
        owner["processes"] += [process_identity(pid) for pid in pids]
        _write_owner(session, owner)


def hand_over(session: str, pids: list[int]) -> None:
    """The session is these processes' alone now (a node started, its starter may live
    on, as a test or a Cluster's driver does): once they are all gone it is dead."""
    owner = _read_owner(session)
    if owner is not None:
        owner["processes"] = [process_identity(pid) for pid in pids]
        _write_owner(session, owner)


def reap_dead_sessions(kept_sessions: int) -> list[str]:
    """End every session of this user whose processes are all gone (a process group killed
    with SIGKILL leaves its session directory and its arena): keep its logs in ZRAY_HOME,
    remove the rest. A process is known by its pid and start time, so a reused pid does not
    keep a dead session alive. Returns the sessions reaped."""
    reaped = []
    for session in live_sessions():
        try:
            if os.stat(session).st_uid != os.getuid():
                continue
        except OSError:
            continue
        owner = _read_owner(session)
        if owner is None or any(process_alive(pid, started) for pid, started in owner["processes"]):
            continue  # (no owner file: one being made this moment, or an older zray's)
        arena = owner.get("arena")
        if isinstance(arena, str) and os.path.basename(arena).startswith(SESSION_PREFIX):
            try:
                os.unlink(arena)
            except OSError:
                pass
        end_session(session, kept_sessions)
        reaped.append(session)
    return reaped


def process_identity(pid: int) -> list[int]:
    return [pid, _start_time(pid)]


def _start_time(pid: int) -> int:
    """The process's start time (clock ticks since boot; -1 if it is gone, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return -1
    fields = stat.rsplit(b")", 1)[1].split()  # (after the name, which may hold spaces)
    return -1 if fields[0] == b"Z" else int(fields[19])  # fields 3 and 22: state, start


def process_alive(pid: int, started: int) -> bool:
    return _start_time(pid) == started != -1


def _read_owner(session: str) -> dict | None:
    try:
        with open(os.path.join(session, _OWNER)) as f:
            owner = json.load(f)
        if isinstance(owner, dict) and isinstance(owner.get("processes"), list):
            return owner
    except (OSError, ValueError):
        pass
    return None


def _write_owner(session: str, owner: dict) -> None:
    path = os.path.join(session, _OWNER)
    with open(path + ".new", "w") as f:
        json.dump(owner, f)
    os.replace(path + ".new", path)


def ended_sessions(run: str = "*") -> list[str]:
    """The ended sessions kept in ``ZRAY_HOME`` of run ``run`` (of every run by default)."""
    return glob.glob(os.path.join(ended_sessions_dir(), f"{SESSION_PREFIX}{run}-*"))


def newest(paths: list[str]) -> str | None:
    """The most recently changed of ``paths``."""
    return max(paths, key=_mtime, default=None)


def _forget_old(ended: str, kept_sessions: int) -> None:
    sessions = sorted(glob.glob(os.path.join(ended, SESSION_PREFIX + "*")), key=_mtime,
                      reverse=True)
    for old in sessions[max(kept_sessions, 0):]:
        shutil.rmtree(old, ignore_errors=True)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:  # removed meanwhile (another cluster ending)
        return 0.0
