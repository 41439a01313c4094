"""Reliability, section 5 "Faults": the disk, the scripts and the HTTP targets misbehave; schedserver copes.

- Disk: the data dir fills up or turns read-only, first simulated in-process (an OS call fails for files in the
  data dir only), then for real on a 64 KiB tmpfs when the test may mount one. Mutating routes answer 500 with
  the surface's error code, reads keep working, the schedules snapshot and journal stay byte-identical (a failed
  append is cut back), and once the fault clears writes work again without a restart. A compaction that fails
  loses nothing, stops no change, and works once the fault clears. The server is the real one, loaded by
  tests/harness.py's Stack; "a restart" is a second server started on a copy of the data dir's files (the first
  one keeps holding the data dir's lock).
- Scripts: real subprocesses that hang, ignore SIGTERM, leave children behind, print 1 GB, cannot start or die
  with 137. Each gets the right status; afterwards no process carrying the run's marker is alive, none of our
  children is left a zombie, and this process's RSS has grown by less than 50 MB.
- HTTP targets: loopback peers that refuse, never answer, dribble, never stop, gzip-bomb, redirect for ever or
  speak plain HTTP to TLS. Each run is recorded with the right status and a clear error within its timeout
  plus one second, in bounded memory.

Each section prints a figure line. Every wait has a deadline; nothing leaves the loopback interface.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import schedserver
from fakes import FakeClock
from harness import Stack
from peers import PEER_STOP_TIMEOUT, RawPeer, read_request_head
from schedserver import (MAX_OUTPUT_BYTES, MAX_RESPONSE_BYTES, TEMP_PREFIX, DeadlineWatcher, HttpRunner, Job,
                         JsonFile, Run, RunResult, ScriptRunner, ScriptTarget)
from stored import JOURNAL, SNAPSHOT, store_files, stored_definitions

BASE = "/api/v1/curl/schedule"
ADMIN = {"Authorization": "Bearer admin-token"}        # the harness's tokens
READER = {"Authorization": "Bearer read-token"}
NOW = datetime(2025, 1, 15, 10, 30, 0, tzinfo=timezone.utc).timestamp()
RSS_LIMIT_MB = 50


def rss_mb() -> float:
    """This process's resident set size in MB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


@dataclass
class Tally:
    """One section's counters, printed as its figure line once the module's tests are done."""

    template: Callable[["Tally"], str]
    cases: int = 0
    false_successes: int = 0
    damaged_files: int = 0
    survivors: int = 0
    rss_growth_mb: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)


class Tallies:
    """The three sections' tallies and where their figure lines go (the `figure` fixture)."""

    def __init__(self):
        self.disk = Tally(lambda t: f"reliability: disk faults {t.cases} cases, {t.false_successes} false "
                                    f"successes, {t.damaged_files} damaged files")
        self.scripts = Tally(lambda t: f"reliability: script faults {t.cases} cases, {t.survivors} survivors, "
                                       f"RSS +{max(t.rss_growth_mb, default=0):.1f} MB")
        self.http = Tally(lambda t: f"reliability: http faults {t.cases} cases, "
                                    f"max duration {max(t.durations, default=0):.2f} s")
        self.figure: Callable[[str], None] | None = None

    def report(self) -> None:
        for tally in (self.disk, self.scripts, self.http):
            if tally.cases and self.figure is not None:
                self.figure(tally.template(tally))


@pytest.fixture(scope="module")
def tallies():
    kept = Tallies()
    yield kept
    kept.report()


@pytest.fixture(autouse=True)
def _figure_lines_go_to_the_run_summary(tallies, figure):
    tallies.figure = figure


@pytest.fixture
def disk_tally(tallies) -> Tally:
    return tallies.disk


@pytest.fixture
def script_tally(tallies) -> Tally:
    return tallies.scripts


@pytest.fixture
def http_tally(tallies) -> Tally:
    return tallies.http


###############################################################################
# Disk #########################################################################
###############################################################################

_OPEN: list["DiskHarness"] = []         # closed after each test (autouse below), after monkeypatch's undo


@pytest.fixture(autouse=True)
def _close_what_a_test_left_open():
    yield
    while _OPEN:
        _OPEN.pop().close()


class DiskHarness:
    """The real server over `root`/data (tests/harness.py's Stack: fake clock, no threads), its HTTP schedule
    routes through webtest."""

    def __init__(self, root: Path):
        self.root = root
        self.stack = Stack(root, FakeClock(NOW))
        _OPEN.append(self)
        self.data_dir = self.stack.data_dir
        self.path = self.data_dir / SNAPSHOT
        self.store = self.stack.http.store
        self.scheduler = self.stack.scheduler
        self.app = self.stack.app

    def close(self) -> None:
        if self in _OPEN:
            _OPEN.remove(self)
        self.stack.close()

    def create(self, name: str):
        return self.app.post_json(BASE, {"cron": "0 0 9 * * *", "name": name,
                                         "request": {"url": "https://api.example.com/hook"}},
                                  headers=ADMIN, expect_errors=True)

    def toggle(self, schedule_id: str, enabled: bool):
        return self.app.patch_json(f"{BASE}/{schedule_id}/toggle", {"enabled": enabled}, headers=ADMIN,
                                   expect_errors=True)

    def delete(self, schedule_id: str):
        return self.app.delete(f"{BASE}/{schedule_id}", headers=ADMIN, expect_errors=True)

    def reads(self) -> list:
        """What the read routes answer now, for an admin and a read-only token."""
        answers = []
        for headers in (ADMIN, READER):
            listing = self.app.get(BASE, headers=headers, expect_errors=True)
            answers.append((listing.status_int, listing.json))
            for item in listing.json.get("items", []):
                one = self.app.get(f"{BASE}/{item['id']}", headers=headers, expect_errors=True)
                answers.append((one.status_int, one.json))
        return answers

    def leftovers(self) -> list[str]:
        """Temp files of interrupted writes left in the data dir."""
        return sorted(name for name in os.listdir(self.data_dir) if name.startswith(TEMP_PREFIX))


@contextlib.contextmanager
def restarted(h: DiskHarness) -> Iterator[DiskHarness]:
    """A server started on a copy of what `h`'s data dir holds now: what a restart would load and show."""
    root = Path(tempfile.mkdtemp(prefix="restart-", dir=h.root))
    shutil.copytree(h.data_dir, root / "data", ignore=shutil.ignore_patterns("schedserver.lock", "filler"))
    again = DiskHarness(root)
    try:
        yield again
    finally:
        again.close()
        shutil.rmtree(root, ignore_errors=True)


# Where the stored definitions are when a fault strikes.
STARTS = {
    "journal": "in the journal only, as after creating them",
    "snapshot": "in a compacted snapshot with an empty journal, as right after a compaction",
    "old-file": "in a schedules file written by the previous version (one document, no sequence number) and no "
                "journal, as right after an upgrade",
}


def harness_with_two_schedules(root: Path, start: str) -> DiskHarness:
    """A harness holding two schedules, "first" and "second", stored as STARTS[start] says."""
    h = DiskHarness(root)
    for name in ("first", "second"):
        assert h.create(name).status_int == 201
    if start == "snapshot":
        h.store.compact()
        assert (h.data_dir / JOURNAL).read_bytes() == b""
    elif start == "old-file":
        items = h.store.items()
        h.close()
        JsonFile(str(h.path)).save({"version": 1, "schedules": items})      # the previous version's save
        (h.data_dir / JOURNAL).unlink()
        h = DiskHarness(root)
    assert [d["name"] for d in stored_definitions(h.data_dir)] == ["first", "second"]
    return h


def on_disk(data_dir: Path) -> dict[str, bytes | None]:
    """The bytes of the snapshot and the journal. A missing journal counts as an empty one: both hold no change,
    and a failed first append may leave the journal it created, cut back to nothing."""
    files = store_files(data_dir)
    files[JOURNAL] = files[JOURNAL] or b""
    return files


def error_code(response) -> str | None:
    """The API code of a JSON error in this surface's shape; None when the answer is something else."""
    if response.content_type != "application/json":
        return None
    body = response.json
    if set(body) != {"error", "message"} or not body["message"]:
        return None
    return body["error"]


def check_writes_fail_safely(h: DiskHarness, counts: Tally, arm: Callable[[], None] = lambda: None) -> None:
    """With the fault in place: every mutation answers 500 with its code; reads, memory, the files and what a
    restart loads stay as they were."""
    items = h.app.get(BASE, headers=ADMIN).json["items"]
    toggled, deleted = items[-1], items[0]         # the oldest and the newest schedule
    files, stored, held, reads = on_disk(h.data_dir), stored_definitions(h.data_dir), h.store.items(), h.reads()
    registered = {s["id"]: h.scheduler.next_at("http:" + s["id"]) for s in items}

    answers = []
    for label, request, code in (("create", lambda: h.create("during the fault"), "SCHEDULE_CREATION_FAILED"),
                                 ("toggle", lambda: h.toggle(toggled["id"], not toggled["enabled"]), "STORAGE_ERROR"),
                                 ("delete", lambda: h.delete(deleted["id"]), "STORAGE_ERROR")):
        arm()
        response = request()
        counts.cases += 1
        counts.false_successes += int(200 <= response.status_int < 300)
        damaged = on_disk(h.data_dir) != files or bool(h.leftovers())
        try:
            damaged = damaged or stored_definitions(h.data_dir) != stored
        except schedserver.StartupError:
            damaged = True
        counts.damaged_files += int(damaged)
        answers.append((label, response.status_int, error_code(response)))

    assert answers == [("create", 500, "SCHEDULE_CREATION_FAILED"), ("toggle", 500, "STORAGE_ERROR"),
                       ("delete", 500, "STORAGE_ERROR")]
    assert h.reads() == reads                       # reads keep working and show the state as it was
    assert h.store.items() == held                  # and the store's memory did not take the failed changes
    assert {s["id"]: h.scheduler.next_at("http:" + s["id"]) for s in items} == registered
    # What a restart reads is what the API showed: no create answered 500 comes back, no delete takes effect.
    with restarted(h) as again:
        shown_again = again.app.get(BASE, headers=ADMIN).json["items"]
        assert [(s["name"], s["enabled"]) for s in shown_again] == [(s["name"], s["enabled"]) for s in items]
        assert again.reads() == reads
    assert on_disk(h.data_dir) == files, "the schedules files changed although every write answered 500"
    assert stored_definitions(h.data_dir) == stored
    assert h.leftovers() == []


def check_writes_work_again(h: DiskHarness) -> None:
    """The fault has cleared: the same process writes again, and a restart reads what the API showed."""
    items = h.app.get(BASE, headers=ADMIN).json["items"]
    toggled, deleted = items[-1], items[0]
    created = h.create("after the fault")
    assert created.status_int == 201, created.body
    assert h.toggle(toggled["id"], not toggled["enabled"]).status_int == 200
    assert h.delete(deleted["id"]).status_int == 200
    shown = h.app.get(BASE, headers=ADMIN).json
    assert sorted((s["name"], s["enabled"]) for s in shown["items"]) == sorted(
        [(s["name"], s["enabled"] != (s["id"] == toggled["id"])) for s in items if s["id"] != deleted["id"]]
        + [("after the fault", True)])
    assert stored_definitions(h.data_dir) == h.store.items()
    with restarted(h) as again:
        assert again.app.get(BASE, headers=ADMIN).json["items"] == shown["items"]


class DataDirFault:
    """Makes one OS call fail with `err` for the data dir while `active`, leaving every other path alone; with
    `only`, just for the files in it whose names start with `only`."""

    def __init__(self, monkeypatch, data_dir: Path, only: str | None = None):
        self.monkeypatch = monkeypatch
        self.root = os.path.realpath(data_dir)
        self.only = only
        self.active = False
        self.fresh = False      # armed, and not struck yet since
        self.calls = 0

    def arm(self) -> None:
        self.active = self.fresh = True

    def _ours(self, path: str) -> bool:
        if not (path == self.root or path.startswith(self.root + os.sep)):
            return False
        return self.only is None or os.path.basename(path).startswith(self.only)

    def _in_ours(self, path) -> bool:
        """Whether `path`, a file that may not exist yet, is ours."""
        path = os.fspath(path)
        return self._ours(os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)))

    def _fd_path(self, fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def _fail(self, err: int) -> None:
        self.calls += 1
        self.fresh = False
        raise OSError(err, os.strerror(err))

    def fsync_of_files(self, err: int, once: bool = False) -> None:
        real = os.fsync

        def fsync(fd):
            path = self._fd_path(fd)
            if self.active and self._ours(path) and path != self.root:
                if once:
                    self.active = False
                self._fail(err)
            return real(fd)
        self.monkeypatch.setattr(os, "fsync", fsync)

    def fsync_of_the_dir(self, err: int) -> None:
        real = os.fsync

        def fsync(fd):
            if self.active and self._fd_path(fd) == self.root:
                self._fail(err)
            return real(fd)
        self.monkeypatch.setattr(os, "fsync", fsync)

    def replace(self, err: int) -> None:
        real = os.replace

        def replace(src, dst, **kwargs):
            if self.active and self._in_ours(dst):
                self._fail(err)
            return real(src, dst, **kwargs)
        self.monkeypatch.setattr(os, "replace", replace)

    def write(self, err: int, partial: bool = False) -> None:
        real = os.write

        def write(fd, data):
            if self.active and self._ours(self._fd_path(fd)):
                if partial and self.fresh:
                    self.fresh = False      # the disk fills up half-way through this write
                    return real(fd, bytes(data)[: max(1, len(data) // 2)])
                self._fail(err)
            return real(fd, data)
        self.monkeypatch.setattr(os, "write", write)

    def open_for_writing(self, err: int) -> None:
        real = os.open
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

        def open_(path, flags, *args, **kwargs):
            if self.active and flags & writing and self._in_ours(path):
                self._fail(err)
            return real(path, flags, *args, **kwargs)
        self.monkeypatch.setattr(os, "open", open_)


# Faults on the way of a change: the journal append (open, write, fsync, and the directory fsync that makes a new
# journal file durable). A change opens no other file for writing today; "open-erofs" would strike one first.
DISK_FAULTS = {
    "fsync-enospc": lambda f: f.fsync_of_files(errno.ENOSPC),
    "fsync-fails-once": lambda f: f.fsync_of_files(errno.EIO, once=True),
    "fsync-of-the-dir-eio": lambda f: f.fsync_of_the_dir(errno.EIO),
    "write-erofs": lambda f: f.write(errno.EROFS),
    "short-write-then-enospc": lambda f: f.write(errno.ENOSPC, partial=True),
    "open-erofs": lambda f: f.open_for_writing(errno.EROFS),            # any file in the data dir
    "open-of-the-journal-erofs": lambda f: (f.open_for_writing(errno.EROFS), setattr(f, "only", JOURNAL)),
}
# The directory is fsync'd only when an append starts a new (or empty) journal: not once it holds lines.
DISK_CASES = [(fault, start) for fault in DISK_FAULTS for start in STARTS
              if not (fault == "fsync-of-the-dir-eio" and start == "journal")]


@pytest.mark.parametrize("fault_name, start", DISK_CASES, ids=[f"{fault}-{start}" for fault, start in DISK_CASES])
def test_a_failing_disk_write_answers_500_keeps_reads_and_the_file_and_recovers_without_restart(
        tmp_path, monkeypatch, fault_name, start, disk_tally):
    h = harness_with_two_schedules(tmp_path, start)
    fault = DataDirFault(monkeypatch, h.data_dir)
    DISK_FAULTS[fault_name](fault)

    check_writes_fail_safely(h, disk_tally, arm=fault.arm)      # armed again before each request
    assert fault.calls >= 3, "the fault never struck: the test did not test anything"

    fault.active = False
    check_writes_work_again(h)


def test_an_fsync_failure_is_never_retried_into_a_false_success(tmp_path, monkeypatch, disk_tally):
    h = DiskHarness(tmp_path)
    fault = DataDirFault(monkeypatch, h.data_dir)
    fault.fsync_of_files(errno.EIO, once=True)      # a retry would succeed: it must not be tried
    before = on_disk(h.data_dir)
    fault.arm()
    response = h.create("first")
    disk_tally.cases += 1
    disk_tally.false_successes += int(response.status_int == 201)
    assert (response.status_int, error_code(response)) == (500, "SCHEDULE_CREATION_FAILED")
    assert fault.calls == 1
    assert on_disk(h.data_dir) == before
    assert stored_definitions(h.data_dir) == []
    assert h.app.get(BASE, headers=ADMIN).json["meta"]["total"] == 0
    assert len(h.scheduler) == 0


# Faults on the way of a compaction (the snapshot written whole, then the journal rewritten without the lines it
# holds), which runs in a background thread after a change and answers nobody.
COMPACTION_FAULTS = {
    "snapshot-open-erofs": lambda f: (f.open_for_writing(errno.EROFS), setattr(f, "only", TEMP_PREFIX + SNAPSHOT)),
    "snapshot-write-enospc": lambda f: (f.write(errno.ENOSPC), setattr(f, "only", TEMP_PREFIX + SNAPSHOT)),
    "snapshot-fsync-eio": lambda f: (f.fsync_of_files(errno.EIO), setattr(f, "only", TEMP_PREFIX + SNAPSHOT)),
    "snapshot-rename-enospc": lambda f: (f.replace(errno.ENOSPC), setattr(f, "only", SNAPSHOT)),
    # the snapshot is in place, the journal not yet rewritten: what a crash between the two leaves
    "dir-fsync-after-the-snapshot-eio": lambda f: f.fsync_of_the_dir(errno.EIO),
    "journal-rewrite-fsync-eio": lambda f: (f.fsync_of_files(errno.EIO), setattr(f, "only", TEMP_PREFIX + JOURNAL)),
    "journal-rewrite-rename-erofs": lambda f: (f.replace(errno.EROFS), setattr(f, "only", JOURNAL)),
}


@pytest.mark.parametrize("fault_name", list(COMPACTION_FAULTS))
def test_a_failing_compaction_loses_nothing_keeps_writes_working_and_succeeds_once_the_fault_clears(
        tmp_path, monkeypatch, caplog, fault_name, disk_tally):
    h = DiskHarness(tmp_path)
    for name in ("first", "second", "third"):
        assert h.create(name).status_int == 201
    items = h.app.get(BASE, headers=ADMIN).json["items"]
    assert h.toggle(items[0]["id"], False).status_int == 200
    assert h.delete(items[1]["id"]).status_int == 200
    shown, reads = h.app.get(BASE, headers=ADMIN).json, h.reads()
    fault = DataDirFault(monkeypatch, h.data_dir)
    COMPACTION_FAULTS[fault_name](fault)
    caplog.set_level(logging.ERROR, logger="schedserver")

    fault.arm()
    h.store.compact()                               # what the background thread runs: it must not raise
    assert fault.calls >= 1, "the fault never struck: the test did not test anything"
    assert "compaction failed" in caplog.text
    disk_tally.cases += 1
    disk_tally.damaged_files += int(stored_definitions(h.data_dir) != h.store.items() or bool(h.leftovers()))
    assert h.leftovers() == []
    assert h.reads() == reads
    assert stored_definitions(h.data_dir) == h.store.items()
    with restarted(h) as again:
        assert again.app.get(BASE, headers=ADMIN).json == shown

    check_writes_work_again(h)                      # changes go on while compactions fail
    h.store.compact()
    assert stored_definitions(h.data_dir) == h.store.items()

    fault.active = False
    h.store.compact()
    assert stored_definitions(h.data_dir) == h.store.items()
    assert json.loads(h.path.read_bytes())["schedules"] == h.store.items()
    assert (h.data_dir / JOURNAL).read_bytes() == b"", "the compaction kept lines its snapshot holds"
    assert h.leftovers() == []
    with restarted(h) as again:
        assert again.reads() == h.reads()


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)


def fill_up(filler: Path) -> None:
    """Write zeros to `filler` until its file system is full."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def leave_the_journals_last_page_nearly_full(h: DiskHarness, page: int, room: int = 20) -> None:
    """Create schedules, their names sized to measure, until the journal's last page has between 1 and 2 * `room`
    bytes free: fewer than any change takes (the shortest, a delete, takes about 60)."""
    journal = h.data_dir / JOURNAL
    size = journal.stat().st_size
    base = None                         # the length of a create's line with an empty name
    for n in range(40):
        free = -size % page
        if 0 < free <= 2 * room:
            return
        wanted = free - room            # the line's length that leaves `room` free
        if base is None or wanted < base:
            length = 0                  # (or: into the next page, to start there with plenty of room)
        else:
            length = min(wanted - base, schedserver.MAX_NAME_LENGTH)
        assert h.create("p" * length).status_int == 201
        grown = journal.stat().st_size
        base, size = grown - size - length, grown
    raise AssertionError(f"could not bring the journal's last page near full: {size} bytes")


class ShortWrites:
    """Counts the writes to files in `data_dir` that wrote less than they were given (a spy, it fails nothing)."""

    def __init__(self, monkeypatch, data_dir: Path):
        self.root = os.path.realpath(data_dir) + os.sep
        self.count = 0
        real = os.write

        def write(fd, data):
            done = real(fd, data)
            if done < len(data) and os.readlink(f"/proc/self/fd/{fd}").startswith(self.root):
                self.count += 1
            return done
        monkeypatch.setattr(os, "write", write)


def test_on_a_real_tmpfs_that_fills_up_or_turns_read_only_writes_fail_safely_and_recover(
        tmp_path, monkeypatch, disk_tally):
    if os.geteuid() != 0:
        pytest.skip("mounting a 64 KiB tmpfs needs root; the in-process disk faults above still ran")
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    try:
        mounted = _mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(data_dir))
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot run mount here ({e}); the in-process disk faults above still ran")
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({mounted.stderr.strip()}); "
                    "the in-process disk faults above still ran")
    page = os.sysconf("SC_PAGE_SIZE")       # tmpfs hands out space a page at a time
    try:
        h = DiskHarness(tmp_path)           # its data dir is tmp_path / "data": the tmpfs
        for name in ("first", "second"):
            assert h.create(name).status_int == 201

        # The disk fills up. An append that fits in the free end of the journal's last page needs no new space
        # and succeeds (durably): only appends that need a new page can fail. First a journal left empty by a
        # compaction: the append fails at its first byte.
        h.store.compact()
        assert (data_dir / JOURNAL).read_bytes() == b""
        fill_up(data_dir / "filler")
        check_writes_fail_safely(h, disk_tally)
        (data_dir / "filler").unlink()
        check_writes_work_again(h)

        # Then a journal whose last page has less room than any change takes: the append writes what fits, then
        # fails (a short write, then ENOSPC), and must be cut back.
        leave_the_journals_last_page_nearly_full(h, page)
        short = ShortWrites(monkeypatch, data_dir)
        fill_up(data_dir / "filler")
        check_writes_fail_safely(h, disk_tally)
        assert short.count >= 3, "no append was cut short by the full disk: the test did not test anything"
        (data_dir / "filler").unlink()
        check_writes_work_again(h)

        # The file system turns read-only. A running server holds its data dir lock file open for writing, and
        # Linux refuses to remount a file system read-only under an open writer: EROFS under a running server is
        # the in-process cases above ("write-erofs", "open-erofs"). Here the server stops, the file system goes
        # read-only, and the next start refuses the data dir in one clear line instead of serving writes that
        # cannot succeed; remounted writable, a start on the same files writes again.
        h.close()
        remounted = _mount("-o", "remount,ro", str(data_dir))
        assert remounted.returncode == 0, remounted.stderr
        try:
            with pytest.raises(schedserver.ConfigError, match=r"data dir .*: not writable"):
                Stack(tmp_path, FakeClock(NOW))
            disk_tally.cases += 1
        finally:
            assert _mount("-o", "remount,rw", str(data_dir)).returncode == 0
        h = DiskHarness(tmp_path)
        assert h.create("another").status_int == 201
        check_writes_work_again(h)
    finally:
        while _OPEN:                        # let go of the data dir (its lock file) before unmounting it
            _OPEN.pop().close()
        done = subprocess.run(["umount", str(data_dir)], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(data_dir)], capture_output=True, timeout=10)


###############################################################################
# Scripts ######################################################################
###############################################################################

def survivors(marker: str) -> list[str]:
    """Live processes (zombies aside) whose command line or environment carries `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            if state in (b"Z", b"X"):
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline or marker.encode() in environ:
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {shown}")
    return found


def our_zombies() -> list[int]:
    """Children of this process that exited and were never reaped."""
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == b"Z" and int(fields[1]) == os.getpid():
            zombies.append(int(entry))
    return zombies


def run_script(runner: ScriptRunner, argv: list[str], path: Path, timeout_ms: int, within: float) -> RunResult:
    """One run of `argv` through runner.start(), as the server starts every script run (the script at `path`,
    its directory the scripts dir); the test fails instead of hanging if on_end is not called in `within` s."""
    target = ScriptTarget(path.name, str(path), tuple(argv), timeout_ms, str(path.parent))
    job = Job(f"script:{path.name}", "script", path.name, schedserver.parse_cron("0 0 1 1 *"),
              schedserver.load_timezone("UTC"), target)
    run = Run(str(uuid.uuid4()), job, time.time(), "manual", 1, time.time())
    ended = threading.Event()
    results: list[RunResult] = []

    def on_end(result: RunResult) -> None:
        results.append(result)
        ended.set()
    runner.start(run, on_end)
    assert ended.wait(within), f"the run had not ended {within} s after it started"
    assert len(results) == 1, results
    return results[0]


@dataclass
class ScriptCase:
    script: str                 # shell text (run as /bin/sh -c), or a file's text for the `file` cases
    timeout_ms: int
    status: str
    error: Callable[[str | None], bool]
    file_mode: int | None = None    # run as a file with this mode instead of through /bin/sh -c
    check: Callable[[Any, float], None] = lambda result, elapsed: None


KILL_GRACE = 0.5
ONE_GB = 1_000_000_000


def _ignored_term_waited_for_the_grace(result, elapsed: float) -> None:
    assert elapsed >= 0.3 + KILL_GRACE * 0.9, f"killed after {elapsed:.2f} s: SIGKILL did not wait for the grace"


def _a_gigabyte_was_read_and_dropped(result, elapsed: float) -> None:
    assert result.output_dropped == ONE_GB - MAX_OUTPUT_BYTES


SCRIPT_CASES = {
    "hangs": ScriptCase("sleep 300", 300, "timeout", lambda e: e == "timed out after 300 ms"),
    "children-ignore-sigterm": ScriptCase("trap '' TERM; sleep 300 & sleep 300 & wait", 300, "timeout",
                                          lambda e: e == "timed out after 300 ms",
                                          check=_ignored_term_waited_for_the_grace),
    "leaves-sleep-300-behind": ScriptCase("sleep 300 & echo started", 5000, "ok", lambda e: e is None,
                                          check=lambda r, _: r.return_preview == "started"),
    "prints-1-gb": ScriptCase(f"head -c {ONE_GB} /dev/zero", 60000, "ok", lambda e: e is None,
                              check=_a_gigabyte_was_read_and_dropped),
    "not-executable": ScriptCase("#!/bin/sh\necho never\n", 5000, "error",
                                 lambda e: e == "cannot start: Permission denied", file_mode=0o644),
    "bad-interpreter": ScriptCase("#!/nonexistent/interpreter\necho never\n", 5000, "error",
                                  lambda e: bool(e) and e.startswith("cannot start: "), file_mode=0o755),
    "exits-137": ScriptCase("exit 137", 5000, "error", lambda e: e == "exit status 137",
                            check=lambda r, _: r.exit_code == 137),
    "killed-by-sigkill": ScriptCase("kill -9 $$", 5000, "error", lambda e: e == "killed by signal SIGKILL"),
}


@pytest.mark.parametrize("name", list(SCRIPT_CASES))
def test_a_misbehaving_script_gets_its_status_and_leaves_no_process_behind(tmp_path, name, script_tally):
    case = SCRIPT_CASES[name]
    marker = f"reliability-{uuid.uuid4().hex}"
    env = {"PATH": os.environ["PATH"], "RELIABILITY_MARKER": marker}
    path = tmp_path / f"script-{marker}"
    if case.file_mode is None:
        argv = ["/bin/sh", "-c", f": {marker}; {case.script}"]
    else:
        path.write_text(case.script)
        path.chmod(case.file_mode)
        argv = [str(path)]
    deadlines = DeadlineWatcher()
    runner = ScriptRunner(deadlines, kill_grace=KILL_GRACE, environment=lambda extra: {**env, **extra})

    rss_before = rss_mb()
    started = time.monotonic()
    try:
        result = run_script(runner, argv, path, case.timeout_ms, case.timeout_ms / 1000 + KILL_GRACE + 15)
        elapsed = time.monotonic() - started
    finally:
        runner.close()
        deadlines.close()
    wait_until(lambda: not survivors(marker), timeout=3.0)      # SIGKILL takes effect asynchronously
    left = survivors(marker)
    growth = rss_mb() - rss_before

    script_tally.cases += 1
    script_tally.survivors += len(left)
    script_tally.rss_growth_mb.append(growth)
    assert result.status == case.status and case.error(result.error), result
    case.check(result, elapsed)
    assert elapsed < case.timeout_ms / 1000 + KILL_GRACE + 2
    assert left == [], f"still running after the run ended: {left}"
    assert our_zombies() == []
    assert growth < RSS_LIMIT_MB, f"RSS grew by {growth:.1f} MB"


def test_misbehaving_scheduled_scripts_are_recorded_with_their_status_and_leave_nothing_behind(
        tmp_path, monkeypatch, script_tally):
    marker = f"reliability-{uuid.uuid4().hex}"
    monkeypatch.setenv("RELIABILITY_MARKER", marker)        # scripts inherit the server's environment
    root = tmp_path / "scripts"
    root.mkdir()
    every_second = "# @schedule * * * * * *\n"
    scripts = {
        "hang.sh": (every_second + "# @timeout 300ms\nsleep 300\n", None),
        "stubborn.sh": (every_second + "# @timeout 300ms\ntrap '' TERM\nsleep 300 &\nsleep 300\n", None),
        "background.sh": (every_second + "sleep 300 &\necho started\n", None),
        "loud.sh": (every_second + f"# @timeout 60s\nhead -c {ONE_GB} /dev/zero\n", None),
        "exit137.sh": (every_second + "exit 137\n", None),
        "bad-interpreter": ("#!/nonexistent/interpreter\n" + every_second + "echo never\n", 0o755),
        "lost-exec-bit": ("#!/bin/sh\n" + every_second + "echo never\n", 0o755),
        "not-executable": ("#!/bin/sh\n" + every_second + "echo never\n", 0o644),
    }
    for rel, (text, mode) in scripts.items():
        (root / rel).write_text(text)
        if mode is not None:
            (root / rel).chmod(mode)
    clock = FakeClock(NOW)
    deadlines = DeadlineWatcher()
    # The real server over tmp_path, its script runner the real one with a short kill grace.
    stack = Stack(tmp_path, clock, script_runner=ScriptRunner(deadlines, clock, kill_grace=KILL_GRACE))
    log = stack.data_dir / "fires.log"

    def records() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    try:
        reloaded = stack.scripts.reload()
        assert [f["path"] for f in reloaded["failed"]] == ["not-executable"]
        assert "no way to run it" in reloaded["failed"][0]["reason"]
        (root / "lost-exec-bit").chmod(0o644)               # registered, then someone drops its exec bit

        rss_before = rss_mb()
        clock.advance(1)                                    # every script's first slot: all fire at once
        stack.run_due(until=lambda: len(records()) >= 7, timeout=30)
        assert len(records()) >= 7, records()
        in_flight = stack.recorder.count()
    finally:
        stack.close()                                       # closes the script runner too
        deadlines.close()
    wait_until(lambda: not survivors(marker), timeout=3.0)
    left = survivors(marker)
    growth = rss_mb() - rss_before

    by_script = {r["scriptPath"]: r for r in records()}
    script_tally.cases += len(by_script) + len(reloaded["failed"])
    script_tally.survivors += len(left)
    script_tally.rss_growth_mb.append(growth)
    assert {rel: r["status"] for rel, r in by_script.items()} == {
        "hang.sh": "timeout", "stubborn.sh": "timeout", "background.sh": "ok", "loud.sh": "ok",
        "exit137.sh": "error", "bad-interpreter": "error", "lost-exec-bit": "error"}
    errors = {rel: r.get("error") for rel, r in by_script.items()}
    assert errors["hang.sh"] == errors["stubborn.sh"] == "timed out after 300 ms"
    assert errors["exit137.sh"] == "exit status 137"
    assert errors["lost-exec-bit"] == "cannot start: Permission denied"
    assert errors["bad-interpreter"].startswith("cannot start: ")
    assert by_script["background.sh"]["returnPreview"] == "started"
    assert by_script["loud.sh"]["outputDropped"] == ONE_GB - MAX_OUTPUT_BYTES
    assert by_script["stubborn.sh"]["durationMs"] >= 300 + KILL_GRACE * 1000 * 0.9
    assert (by_script["hang.sh"].get("signal"), by_script["stubborn.sh"].get("signal")) == ("SIGTERM", "SIGKILL")
    assert by_script["exit137.sh"]["exitCode"] == 137
    assert left == [], f"still running after the runs ended: {left}"
    assert our_zombies() == []
    assert growth < RSS_LIMIT_MB, f"RSS grew by {growth:.1f} MB"
    assert in_flight == 0, f"{in_flight} runs still in flight once all seven were recorded"


###############################################################################
# HTTP targets #################################################################
###############################################################################

def never_answer(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    stopping.wait(30)


def a_byte_every_half_second(conn: socket.socket, stopping: threading.Event) -> None:
    """The whole answer, status line included, one byte every 0.5 s: each read succeeds, the answer never ends."""
    read_request_head(conn)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000000
    for byte in answer:
        if stopping.wait(0.5):
            return
        conn.sendall(bytes([byte]))


def body_byte_every_half_second(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    while not stopping.wait(0.5):
        conn.sendall(b"x")


class Flood:
    """200, then `chunk` again and again until the client goes away; counts what it managed to send."""

    def __init__(self, headers: bytes, chunk: bytes):
        self.headers, self.chunk = headers, chunk
        self.sent = 0

    def __call__(self, conn: socket.socket, stopping: threading.Event) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + self.headers + b"Connection: close\r\n\r\n")
        conn.settimeout(0.1)
        while not stopping.is_set():
            try:
                self.sent += conn.send(self.chunk)
            except TimeoutError:
                continue
            except OSError:
                return


def endless_body() -> Flood:
    return Flood(b"Content-Type: application/octet-stream\r\n", bytes(64 * 1024))


def gzip_bomb() -> Flood:
    """Concatenated gzip members of 16 MiB of zeros each (~16 KiB compressed): endless once decompressed."""
    member = gzip.compress(bytes(16 * 1024 * 1024), compresslevel=9)
    return Flood(b"Content-Type: text/plain\r\nContent-Encoding: gzip\r\n", member * 4)


class RedirectLoop:
    """http.server on 127.0.0.1 whose /loop answers 302 to itself; counts the hits."""

    def __init__(self):
        loop = self
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                loop.hits += 1
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-redirect-loop", daemon=True)

    def __enter__(self) -> "RedirectLoop":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=PEER_STOP_TIMEOUT)


def plain_http(conn: socket.socket, stopping: threading.Event) -> None:
    """Whatever arrives (a TLS ClientHello here) gets a plain-text HTTP 400."""
    conn.settimeout(5.0)
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def tls_handshake_dribbled(conn: socket.socket, stopping: threading.Event) -> None:
    """Answers a ClientHello with the header of a 16 KiB handshake record, then one byte every 0.5 s."""
    conn.settimeout(5.0)
    conn.recv(4096)
    conn.sendall(b"\x16\x03\x03\x40\x00")
    while not stopping.wait(0.5):
        conn.sendall(b"\x00")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HttpHarness:
    """The real server over `root`/data (tests/harness.py's Stack) with the real HttpRunner: one HTTP schedule
    per run, fired by a tick, sent in this thread, recorded by the recorder."""

    def __init__(self, root: Path):
        self.clock = FakeClock(NOW)
        self.deadlines = DeadlineWatcher()
        self.stack = Stack(root, self.clock, http_runner=HttpRunner(deadlines=self.deadlines, clock=self.clock))
        self.runs_log = self.stack.data_dir / "curl-runs.log"

    def fire(self, request: dict) -> tuple[dict, dict, float, int]:
        """Create a schedule, tick at its first slot and run what is due; its history entry, its log record, the
        wall time the run took and the peak traced memory during it."""
        created = self.stack.http.create({"cron": "* * * * * *", "request": request})
        self.clock.advance(1)
        tracemalloc.start()
        started = time.monotonic()
        try:
            self.stack.run_due()
            elapsed = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        [entry] = self.stack.http.get(created["id"])["history"]
        records = [json.loads(line) for line in self.runs_log.read_text().splitlines()]
        [record] = [r for r in records if r["schedule_id"] == created["id"]]
        return entry, record, elapsed, peak

    def close(self) -> None:
        self.stack.close()
        self.deadlines.close()


@pytest.fixture
def http_harness(tmp_path) -> Iterator[HttpHarness]:
    harness = HttpHarness(tmp_path)
    yield harness
    harness.close()


@dataclass
class HttpCase:
    peer: Callable[[], Any] | None          # a context manager giving .port, or None for no peer
    url: str                                # formatted with {port}
    timeout: float
    status: str
    status_code: int | None
    error: Callable[[str | None], bool]
    follow_redirects: bool = False
    check: Callable[[Any], None] = lambda peer: None


def _client_went_away(peer) -> None:
    assert peer.finished.wait(PEER_STOP_TIMEOUT), "the runner kept reading after its run ended"
    assert peer.behave.sent < 16 * 1024 * 1024, f"the peer got {peer.behave.sent} bytes out"


HTTP_CASES = {
    "connection-refused": HttpCase(None, "http://127.0.0.1:{closed}/hook", 5, "error", None,
                                   lambda e: "refused" in e.lower()),
    "dns-failure": HttpCase(None, "http://no-such-host.invalid/hook", 5, "error", None,
                            lambda e: "resolve" in e.lower() and "no-such-host.invalid" in e),
    "accepts-and-never-answers": HttpCase(lambda: RawPeer(never_answer), "http://127.0.0.1:{port}/", 1.5,
                                          "timeout", None, lambda e: e == "timed out after 1.5 s"),
    "a-byte-every-half-second": HttpCase(lambda: RawPeer(a_byte_every_half_second), "http://127.0.0.1:{port}/", 2,
                                         "timeout", None, lambda e: e == "timed out after 2 s"),
    "body-byte-every-half-second": HttpCase(lambda: RawPeer(body_byte_every_half_second),
                                            "http://127.0.0.1:{port}/", 2, "timeout", 200,
                                            lambda e: e == "timed out after 2 s"),
    "endless-body": HttpCase(lambda: RawPeer(endless_body()), "http://127.0.0.1:{port}/", 10, "ok", 200,
                             lambda e: e is None, check=_client_went_away),
    "gzip-bomb": HttpCase(lambda: RawPeer(gzip_bomb()), "http://127.0.0.1:{port}/", 10, "ok", 200,
                          lambda e: e is None, check=_client_went_away),
    "redirect-loop": HttpCase(RedirectLoop, "http://127.0.0.1:{port}/loop", 10, "error", None,
                              lambda e: "redirects" in e.lower(), follow_redirects=True,
                              check=lambda peer: peer.hits <= schedserver.MAX_REDIRECTS + 1),
    "tls-to-a-plain-http-port": HttpCase(lambda: RawPeer(plain_http), "https://127.0.0.1:{port}/", 5, "error", None,
                                         lambda e: "SSL" in e),
    "tls-handshake-dribbled": HttpCase(lambda: RawPeer(tls_handshake_dribbled), "https://127.0.0.1:{port}/", 2,
                                       "timeout", None, lambda e: e == "timed out after 2 s"),
}


class _NoPeer:
    port = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


@pytest.mark.parametrize("name", list(HTTP_CASES))
def test_a_misbehaving_http_target_is_recorded_with_its_status_and_a_clear_error_in_bounded_time_and_memory(
        http_harness, name, http_tally):
    case = HTTP_CASES[name]
    h = http_harness
    rss_before = rss_mb()
    with (case.peer() if case.peer else _NoPeer()) as peer:
        url = case.url.format(port=peer.port, closed=closed_port())
        entry, record, elapsed, peak = h.fire({"url": url, "timeout": case.timeout,
                                               "follow_redirects": case.follow_redirects})
        case.check(peer)
    growth = rss_mb() - rss_before

    http_tally.cases += 1
    http_tally.durations.append(elapsed)
    assert (record["status"], record["status_code"]) == (case.status, case.status_code), record
    assert case.error(record["error"]), record["error"]
    assert (entry["status"], entry["status_code"], entry["error"]) == (case.status, case.status_code,
                                                                       record["error"])
    assert elapsed <= case.timeout + 1, f"the run took {elapsed:.2f} s with a {case.timeout} s timeout"
    assert record["duration_ms"] <= (case.timeout + 1) * 1000
    assert peak < 4 * MAX_RESPONSE_BYTES + 4 * 1024 * 1024, f"peak traced memory {peak} bytes"
    assert growth < RSS_LIMIT_MB, f"RSS grew by {growth:.1f} MB"


def test_a_name_resolution_that_hangs_cannot_hold_a_run_past_its_deadline(http_harness, monkeypatch, http_tally):
    # A resolver that does not answer (a dead nameserver: glibc waits 5 s per try and server) looks like this.
    real_getaddrinfo = socket.getaddrinfo
    release = threading.Event()

    def getaddrinfo(host, *args, **kwargs):
        if host == "slow-dns.invalid":
            release.wait(5)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real_getaddrinfo(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    h = http_harness
    try:
        entry, record, elapsed, _ = h.fire({"url": "http://slow-dns.invalid/hook", "timeout": 1})
    finally:
        release.set()

    http_tally.cases += 1
    http_tally.durations.append(elapsed)
    assert record["status"] in ("timeout", "error"), record
    assert record["error"], record
    assert elapsed <= 1 + 1, f"the run took {elapsed:.2f} s with a 1 s timeout: name resolution is not bounded"
