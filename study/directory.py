"""A study directory: whether it holds a study, whether one can be written there, the next free one beside it,
and the lock that lets one driver at a time run a study.

A directory belongs to one study. ``selfd run`` never writes into a directory that holds one (finished or not):
it says what to do instead (``selfd report``, ``selfd resume``, another ``--study-dir`` or ``--if-exists``).

The lock is ``<study dir>/driver.lock``, held with ``flock`` by the ``selfd run`` or ``selfd resume`` process
that drives the study. The kernel drops it when that process ends, however it ends (a ``kill -9`` or a reboot
included), so a killed driver never leaves it stuck. The file keeps the holder's host and pid for the message a
second driver gets. ``flock`` is per host on network file systems that do not forward it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import tempfile
from pathlib import Path

from study.state import STUDY_FILE, StudyState
from trainables.errors import ConfigError

LOCK_FILE = "driver.lock"
# what a study's commands write into its directory: any of these means the directory holds (part of) a study
STUDY_FILES = (STUDY_FILE, "spec.yaml", "tune", "mlflow.db")


def holds_study(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in STUDY_FILES)


def refusal(folder: Path) -> str:
    """Why ``selfd run`` does not write into ``folder``, and what to run instead."""
    others = "or start another with a new --study-dir or --if-exists beside (nothing of this one is touched)"
    if not (folder / STUDY_FILE).is_file():
        return (f"{folder} holds part of a study ({', '.join(n for n in STUDY_FILES if (folder / n).exists())}) "
                f"but no {STUDY_FILE}; {others}")
    if StudyState.read(folder).finished:
        return (f"{folder} holds a finished study: `selfd report {folder}` rebuilds its report; {others}")
    return f"{folder} holds an unfinished study: `selfd resume {folder}` continues it; {others}"


def beside(folder: Path) -> Path:
    """The first of ``folder``-2, ``folder``-3, … that holds no study."""
    folder, number = folder.resolve(), 2  # `.` has no name to number
    while holds_study(candidate := folder.with_name(f"{folder.name}-{number}")):
        number += 1
    return candidate


def check_writable(folder: Path) -> None:
    """A study can be written at ``folder``: a directory (or nothing yet) whose nearest existing ancestor takes a
    new file. Checked by writing one, since permission bits do not tell (root, read-only mounts, /proc)."""
    name_max = 255
    if "\0" in str(folder):
        raise ConfigError(f"--study-dir {str(folder)!r} holds a NUL character; no file system takes it")
    for part in folder.parts:
        if len(part.encode()) > name_max:
            raise ConfigError(f"--study-dir: the name {part[:40]}… is {len(part.encode())} bytes; a file system "
                              f"takes at most {name_max}")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--study-dir {folder} is a file; name a directory")
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise ConfigError(f"--study-dir {folder}: {existing} is a file, not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".selfd-write-check-"):
            pass
    except OSError as error:
        raise ConfigError(f"--study-dir {folder}: cannot write in {existing} ({error.strerror}); name a "
                          "directory you can write") from None


@contextlib.contextmanager
def driving(folder: Path):
    """Hold ``folder``'s driver lock while the body runs; ConfigError when another process holds it."""
    path = folder / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"{folder} is being run by {holder}; one driver at a time: wait for it to end, or "
                              "stop it (it stays resumable) and then `selfd resume`") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"selfd pid {os.getpid()} on {platform.node()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
