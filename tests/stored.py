"""What the HTTP schedule definitions hold on disk: a snapshot `curl-schedules.json` plus the append-only journal
`curl-schedules.journal` of the changes made since it (schedserver.JournalStore).

A plain module (not a conftest) so that any test file can import it: ``from stored import ...``. Use these only
while nothing writes (the service idle, or the server stopped or killed): a compaction rewrites both files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import schedserver

SNAPSHOT = "curl-schedules.json"
JOURNAL = "curl-schedules.journal"
STORE_FILES = (SNAPSHOT, JOURNAL)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def store_files(data_dir: str | os.PathLike) -> dict[str, bytes | None]:
    """The bytes of the snapshot and of the journal; None for a file that does not exist."""
    return {name: _read(Path(data_dir) / name) for name in STORE_FILES}


def store_file_stamps(data_dir: str | os.PathLike) -> dict[str, tuple[int, bytes] | None]:
    """(mtime_ns, bytes) of the snapshot and of the journal; None for a file that does not exist."""
    stamps: dict[str, tuple[int, bytes] | None] = {}
    for name in STORE_FILES:
        path = Path(data_dir) / name
        try:
            stamps[name] = (path.stat().st_mtime_ns, path.read_bytes())
        except FileNotFoundError:
            stamps[name] = None
    return stamps


def stored_definitions(data_dir: str | os.PathLike) -> list[dict]:
    """The definitions a start would read, in creation order (JournalStore.load), without touching `data_dir`:
    the files are loaded from a copy, so a torn last line is cut off there only. Raises StartupError as a start
    would."""
    with tempfile.TemporaryDirectory(prefix="stored-") as tmp:
        for name in STORE_FILES:
            try:
                shutil.copyfile(Path(data_dir) / name, Path(tmp) / name)
            except FileNotFoundError:
                pass
        return schedserver.JournalStore(str(Path(tmp) / SNAPSHOT)).load()


def stored_by_id(data_dir: str | os.PathLike) -> dict[str, dict]:
    """stored_definitions as id -> definition."""
    return {d["id"]: d for d in stored_definitions(data_dir)}
