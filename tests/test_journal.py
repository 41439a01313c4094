"""JournalStore: the HTTP schedule definitions as a snapshot (`curl-schedules.json`) plus an append-only journal
(`curl-schedules.journal`) of the changes made since it.

What it promises: a change costs one fsync'd journal line, whatever the number of definitions; what load() returns
is the snapshot with every later journal line replayed; a line torn by a crash is cut off, a corrupt complete one
stops the start and is left for inspection; a failed append raises and changes nothing, on disk or in memory; a
compaction (in the background once the journal is long) loses no change, even one made while it runs, and a
crash half-way through it replays nothing twice; both files are private. There is no file lock: one server
process owns the data dir (DataDir), so nothing beside the two files is created.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

import schedserver
from harness import Stack
from schedserver import TEMP_PREFIX, JournalStore, JsonFile, StartupError

THREAD_TIMEOUT = 20.0


def item(n: int, **extra) -> dict:
    return {"id": f"id-{n:04d}", "n": n, **extra}


def new_store(tmp_path: Path) -> JournalStore:
    store = JournalStore(str(tmp_path / "curl-schedules.json"))
    assert store.load() == []
    return store


def fresh_load(store: JournalStore) -> list[dict]:
    """What a restart reads: a new store on the same files."""
    return JournalStore(store.path).load()


def journal_bytes(store: JournalStore) -> bytes | None:
    try:
        return Path(store.journal_path).read_bytes()
    except FileNotFoundError:
        return None


def journal_entries(store: JournalStore) -> list[dict]:
    return [json.loads(line) for line in (journal_bytes(store) or b"").splitlines()]


def snapshot_document(store: JournalStore) -> dict:
    return json.loads(Path(store.path).read_bytes())


def stamp(path: str) -> tuple[int, int, bytes] | None:
    """(inode, mtime_ns, bytes) of a file; None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, Path(path).read_bytes()


def line(seq: int, **change) -> bytes:
    return json.dumps({"seq": seq, **change}, sort_keys=True).encode() + b"\n"


def join_compactions() -> None:
    """Wait (bounded) for background compactions to finish."""
    for thread in threading.enumerate():
        if thread.name == "schedserver-compact":
            thread.join(THREAD_TIMEOUT)
            assert not thread.is_alive(), "a compaction hung"


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def temp_files(directory: Path) -> list[str]:
    """Temp files atomic_write left behind (named `.schedserver-tmp-<name>-<pid>-<tid>`)."""
    return [name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX)]


###############################################################################
# Loading: snapshot plus replay
###############################################################################

def test_with_no_files_load_is_empty_and_creates_nothing(tmp_path):
    assert JournalStore(str(tmp_path / "curl-schedules.json")).load() == []
    assert os.listdir(tmp_path) == []


def test_the_journal_is_named_after_the_snapshot(tmp_path):
    store = JournalStore(str(tmp_path / "curl-schedules.json"))
    assert store.journal_path == str(tmp_path / "curl-schedules.journal")


def test_load_replays_puts_and_deletes_after_the_snapshots_seq_and_ignores_the_lines_it_holds(tmp_path):
    snapshot, journal = tmp_path / "curl-schedules.json", tmp_path / "curl-schedules.journal"
    snapshot.write_text(json.dumps({"version": 1, "seq": 3, "schedules": [item(1), item(2), item(3)]}))
    journal.write_bytes(
        line(2, put=item(9))                        # held by the snapshot (a compaction left it): ignored
        + line(3, delete=item(1)["id"])             # the same: item 1 must not be deleted by it
        + line(4, put=item(2, enabled=False))       # a new version of item 2: keeps its place
        + line(5, delete=item(3)["id"])
        + line(6, put=item(4))
        + line(7, delete="id-never-was")            # deleting what is not there is no error
        + line(8, put=item(5))
        + line(9, delete=item(5)["id"]))

    assert JournalStore(str(snapshot)).load() == [item(1), item(2, enabled=False), item(4)]


def test_a_snapshot_written_by_the_previous_version_without_seq_loads_and_takes_new_changes(tmp_path):
    path = tmp_path / "curl-schedules.json"
    JsonFile(str(path)).save({"version": 1, "schedules": [item(1), item(2)]})       # how it used to be saved
    before = path.read_bytes()
    store = JournalStore(str(path))
    assert store.load() == [item(1), item(2)]

    store.put(item(3))
    store.delete(item(1)["id"])

    assert path.read_bytes() == before
    assert journal_entries(store) == [{"seq": 1, "put": item(3)}, {"seq": 2, "delete": item(1)["id"]}]
    assert fresh_load(store) == [item(2), item(3)]


def test_changes_round_trip_through_a_restart_in_creation_order(tmp_path):
    store = new_store(tmp_path)
    for n in range(5):
        store.put(item(n))
    store.put(item(1, enabled=False))
    store.delete(item(3)["id"])
    store.put(item(5))

    expected = [item(0), item(1, enabled=False), item(2), item(4), item(5)]
    assert store.items() == expected
    assert fresh_load(store) == expected


@pytest.mark.parametrize("tail", [b"{", b'{"seq": 3, "put": {"id": "id-0009", "n"', b'{"seq": 3, "delete": "id-0001"}'],
                         ids=["one-byte", "half-a-put", "a-whole-delete-without-its-newline"])
def test_a_torn_last_line_is_cut_off_at_load_and_the_next_append_starts_on_a_clean_line(tmp_path, tail):
    store = new_store(tmp_path)
    store.put(item(1))
    store.put(item(2))
    whole = journal_bytes(store)
    with open(store.journal_path, "ab") as f:
        f.write(tail)                               # what a crash mid-append (or a power cut) leaves

    reopened = JournalStore(store.path)
    assert reopened.load() == [item(1), item(2)]    # the torn change was never acknowledged: it did not happen
    assert journal_bytes(reopened) == whole

    reopened.put(item(3))
    after = journal_bytes(reopened)
    assert after.startswith(whole) and after.endswith(b"\n") and after[len(whole):].count(b"\n") == 1
    assert json.loads(after[len(whole):]) == {"seq": 3, "put": item(3)}
    assert fresh_load(reopened) == [item(1), item(2), item(3)]


@pytest.mark.parametrize("bad, number", [
    (b"not json at all\n", 2),
    (b'["seq", 3]\n', 2),                           # JSON, but not an object
    (b'{"seq": 3}\n', 2),                           # neither a put nor a delete
    (b'{"seq": 3, "put": {"n": 1}}\n', 2),          # a put without an id
    (b'{"put": {"id": "x"}}\n', 2),                 # no sequence number
    (b'{"seq": "3", "delete": "x"}\n', 2),          # a sequence number that is not a number
    (b"\x00\x00\x00\x00\n", 2),                     # a block of zeros, as some file systems leave after a crash
], ids=["not-json", "not-an-object", "no-change", "put-without-id", "no-seq", "string-seq", "zeros"])
def test_a_corrupt_complete_line_is_a_startup_error_naming_the_journal_and_line_and_no_file_is_touched(
        tmp_path, bad, number):
    store = new_store(tmp_path)
    store.put(item(1))
    store.compact()
    store.put(item(2))                              # line 1, seq 2
    with open(store.journal_path, "ab") as f:
        f.write(bad + line(4, put=item(3)))         # a corrupt line in the middle, not only at the end
    before = {path: stamp(path) for path in (store.path, store.journal_path)}

    with pytest.raises(StartupError) as caught:
        JournalStore(store.path).load()

    assert store.journal_path in str(caught.value)
    assert f"line {number}" in str(caught.value)
    assert {path: stamp(path) for path in before} == before
    assert sorted(os.listdir(tmp_path)) == ["curl-schedules.journal", "curl-schedules.json"]


def test_a_corrupt_complete_line_followed_by_a_torn_one_leaves_the_journal_as_it_was(tmp_path):
    store = new_store(tmp_path)
    store.put(item(1))
    with open(store.journal_path, "ab") as f:
        f.write(b"garbage\n" + b'{"seq": 3, "put"')
    before = journal_bytes(store)

    with pytest.raises(StartupError):
        JournalStore(store.path).load()

    assert journal_bytes(store) == before


@pytest.mark.parametrize("numbers", [[1, 2, 2], [1, 3, 2]], ids=["repeated", "decreasing"])
def test_a_journal_line_not_numbered_above_the_one_before_it_is_a_startup_error(tmp_path, numbers):
    journal = tmp_path / "curl-schedules.journal"
    journal.write_bytes(b"".join(line(seq, put=item(n)) for n, seq in enumerate(numbers)))
    with pytest.raises(StartupError, match="curl-schedules.journal"):
        JournalStore(str(tmp_path / "curl-schedules.json")).load()


def test_a_corrupt_snapshot_is_a_startup_error_and_neither_file_is_touched(tmp_path):
    store = new_store(tmp_path)
    store.put(item(1))
    Path(store.path).write_bytes(b'{"version": 1, "seq": 4, "schedules": [')
    before = {path: stamp(path) for path in (store.path, store.journal_path)}
    with pytest.raises(StartupError, match="curl-schedules.json"):
        JournalStore(store.path).load()
    assert {path: stamp(path) for path in before} == before


###############################################################################
# Changes: one line each
###############################################################################

def test_a_put_appends_exactly_one_line_and_does_not_rewrite_the_snapshot(tmp_path):
    store = new_store(tmp_path)
    for n in range(50):
        store.put(item(n))
    store.compact()
    snapshot = stamp(store.path)
    assert snapshot is not None and journal_bytes(store) == b""

    for change, entry in ((lambda: store.put(item(50)), {"seq": 51, "put": item(50)}),
                          (lambda: store.put(item(7, enabled=False)), {"seq": 52, "put": item(7, enabled=False)}),
                          (lambda: store.delete(item(8)["id"]), {"seq": 53, "delete": item(8)["id"]})):
        before = journal_bytes(store)
        change()
        after = journal_bytes(store)
        assert after.startswith(before) and after.endswith(b"\n")
        added = after[len(before):]
        assert added.count(b"\n") == 1
        assert json.loads(added) == entry
        assert stamp(store.path) == snapshot         # same inode, same mtime, same bytes

    assert len(fresh_load(store)) == 50


def test_create_toggle_and_delete_each_append_one_journal_line_and_leave_the_snapshot_alone(tmp_path):
    with Stack(tmp_path) as stack:
        store = stack.http.store
        ids = [stack.http.create({"cron": "0 0 0 1 1 *", "request": {"url": "http://127.0.0.1:9/"}})["id"]
               for _ in range(20)]
        store.compact()
        snapshot = stamp(store.path)

        stack.http.create({"cron": "0 0 0 1 1 *", "request": {"url": "http://127.0.0.1:9/new"}})
        stack.http.toggle(ids[3], {"enabled": False})
        stack.http.toggle(ids[3], {"enabled": False})       # no change: nothing written
        stack.http.delete(ids[5])

        assert [sorted(set(entry) - {"seq"}) for entry in journal_entries(store)] == [["put"], ["put"], ["delete"]]
        assert stamp(store.path) == snapshot
        stored = {d["id"]: d for d in fresh_load(store)}
        assert len(stored) == 20 and ids[5] not in stored and stored[ids[3]]["enabled"] is False


def test_after_a_compaction_and_a_restart_new_changes_are_numbered_above_the_snapshot_and_survive(tmp_path):
    store = new_store(tmp_path)
    for n in range(3):
        store.put(item(n))
    store.compact()
    assert snapshot_document(store)["seq"] == 3

    reopened = JournalStore(store.path)
    assert reopened.load() == [item(0), item(1), item(2)]
    reopened.delete(item(0)["id"])
    reopened.put(item(3))

    assert [entry["seq"] for entry in journal_entries(reopened)] == [4, 5]
    assert fresh_load(reopened) == [item(1), item(2), item(3)]


###############################################################################
# A failing append
###############################################################################

class JournalFault:
    """Makes an OS call fail for the journal (by its path, or the path of the descriptor) while `active`."""

    def __init__(self, monkeypatch, store: JournalStore):
        self.monkeypatch = monkeypatch
        self.journal = os.path.realpath(store.journal_path)
        self.directory = os.path.dirname(self.journal)
        self.active = True
        self.struck = 0

    def _path(self, fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def _fail(self, err: int):
        self.struck += 1
        raise OSError(err, os.strerror(err))

    def write(self, err: int, short: bool = False) -> None:
        real = os.write

        def write(fd, data):
            if self.active and self._path(fd) == self.journal:
                if short and not self.struck:
                    self.struck += 1
                    return real(fd, bytes(data)[:len(data) // 2])   # half the line, then the disk is full
                self._fail(err)
            return real(fd, data)
        self.monkeypatch.setattr(os, "write", write)

    def fsync(self, err: int, of_the_dir: bool = False) -> None:
        real = os.fsync

        def fsync(fd):
            if self.active and self._path(fd) == (self.directory if of_the_dir else self.journal):
                self._fail(err)
            return real(fd)
        self.monkeypatch.setattr(os, "fsync", fsync)

    def open(self, err: int) -> None:
        real = os.open

        def open_(path, flags, *args, **kwargs):
            if self.active and os.path.realpath(path) == self.journal:
                self._fail(err)
            return real(path, flags, *args, **kwargs)
        self.monkeypatch.setattr(os, "open", open_)


APPEND_FAULTS = {
    "write-enospc": lambda f: f.write(errno.ENOSPC),
    "short-write-then-enospc": lambda f: f.write(errno.ENOSPC, short=True),
    "write-eio": lambda f: f.write(errno.EIO),
    "fsync-eio": lambda f: f.fsync(errno.EIO),
    "open-erofs": lambda f: f.open(errno.EROFS),
    "open-eacces": lambda f: f.open(errno.EACCES),
}


@pytest.mark.parametrize("fault_name", list(APPEND_FAULTS))
@pytest.mark.parametrize("change", ["put-new", "put-update", "delete"])
def test_a_failing_append_raises_and_leaves_the_journal_bytes_memory_and_load_unchanged(
        tmp_path, monkeypatch, fault_name, change):
    store = new_store(tmp_path)
    for n in range(3):
        store.put(item(n))
    journal, held, loaded = journal_bytes(store), store.items(), fresh_load(store)
    fault = JournalFault(monkeypatch, store)
    APPEND_FAULTS[fault_name](fault)
    attempt = {"put-new": lambda: store.put(item(9)), "put-update": lambda: store.put(item(1, enabled=False)),
               "delete": lambda: store.delete(item(1)["id"])}[change]

    with pytest.raises(OSError):
        attempt()

    assert fault.struck >= 1
    assert journal_bytes(store) == journal
    assert store.items() == held
    assert fresh_load(store) == loaded

    fault.active = False                            # the fault clears: the same store works, numbering goes on
    attempt()
    assert [entry["seq"] for entry in journal_entries(store)] == [1, 2, 3, 4]
    assert fresh_load(store) == store.items() != held


@pytest.mark.parametrize("start", ["no-journal", "empty-journal"])
def test_a_failing_directory_fsync_for_a_new_journal_raises_and_keeps_no_change(tmp_path, monkeypatch, start):
    path = tmp_path / "curl-schedules.json"
    JsonFile(str(path)).save({"version": 1, "schedules": [item(1)]})
    if start == "empty-journal":
        (tmp_path / "curl-schedules.journal").write_bytes(b"")
    store = JournalStore(str(path))
    assert store.load() == [item(1)]
    fault = JournalFault(monkeypatch, store)
    fault.fsync(errno.EIO, of_the_dir=True)

    with pytest.raises(OSError):
        store.put(item(2))

    assert fault.struck == 1
    assert journal_bytes(store) in (None, b"")      # a journal it created is left empty: it holds no change
    assert store.items() == [item(1)] == fresh_load(store)
    fault.active = False
    store.put(item(2))
    assert fresh_load(store) == [item(1), item(2)]


def _fail_ftruncate(monkeypatch, store: JournalStore):
    journal = os.path.realpath(store.journal_path)
    real = os.ftruncate

    def ftruncate(fd, length):
        if os.readlink(f"/proc/self/fd/{fd}") == journal:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, length)
    monkeypatch.setattr(os, "ftruncate", ftruncate)


def test_when_a_failed_append_cannot_be_cut_back_the_next_acknowledged_change_still_loads(tmp_path, monkeypatch):
    store = new_store(tmp_path)
    store.put(item(1))
    fault = JournalFault(monkeypatch, store)
    fault.write(errno.ENOSPC, short=True)
    _fail_ftruncate(monkeypatch, store)
    with pytest.raises(OSError):
        store.put(item(2))
    monkeypatch.undo()                              # the disk is fine again

    store.put(item(3))                              # acknowledged: it must survive a restart

    assert fresh_load(store) == [item(1), item(3)]


def test_when_a_failed_append_cannot_be_cut_back_the_failed_change_never_takes_effect(tmp_path, monkeypatch):
    store = new_store(tmp_path)
    store.put(item(1))
    fault = JournalFault(monkeypatch, store)
    fault.fsync(errno.EIO)
    _fail_ftruncate(monkeypatch, store)
    with pytest.raises(OSError):
        store.put(item(2))                          # answered as failed: must never appear
    monkeypatch.undo()

    store.delete(item(1)["id"])                     # acknowledged: must hold after a restart

    assert store.items() == []
    assert fresh_load(store) == []


###############################################################################
# Compaction
###############################################################################

def test_compact_writes_a_snapshot_that_loads_as_the_state_and_leaves_only_later_lines(tmp_path):
    store = new_store(tmp_path)
    for n in range(6):
        store.put(item(n))
    store.delete(item(2)["id"])
    store.put(item(4, enabled=False))
    state = store.items()

    store.compact()

    assert snapshot_document(store) == {"version": 1, "seq": 8, "schedules": state}
    assert journal_bytes(store) == b""
    assert fresh_load(store) == state
    assert not temp_files(tmp_path)

    store.put(item(6))
    store.delete(item(0)["id"])
    assert [entry["seq"] for entry in journal_entries(store)] == [9, 10]
    assert fresh_load(store) == store.items() == [item(1), item(3), item(4, enabled=False), item(5), item(6)]

    store.compact()                                 # again, over a snapshot
    assert snapshot_document(store)["seq"] == 10 and journal_bytes(store) == b""
    assert fresh_load(store) == store.items()


def test_reaching_the_threshold_compacts_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr(JournalStore, "COMPACT_MIN_LINES", 5)
    store = new_store(tmp_path)
    for n in range(4):
        store.put(item(n))
    join_compactions()
    assert not os.path.exists(store.path), "compacted before the journal reached the threshold"

    store.put(item(4))                              # the fifth line
    join_compactions()

    assert snapshot_document(store)["seq"] == 5
    assert journal_bytes(store) == b""
    assert fresh_load(store) == [item(n) for n in range(5)]


def test_the_threshold_grows_with_the_number_of_definitions(tmp_path, monkeypatch):
    monkeypatch.setattr(JournalStore, "COMPACT_MIN_LINES", 4)
    path = tmp_path / "curl-schedules.json"
    JsonFile(str(path)).save({"version": 1, "seq": 0, "schedules": [item(n) for n in range(10)]})
    store = JournalStore(str(path))
    store.load()
    snapshot = stamp(store.path)

    for n in range(9):                              # fewer lines than definitions: no rewrite of the snapshot
        store.put(item(n, enabled=False))
    join_compactions()
    assert stamp(store.path) == snapshot
    assert len(journal_entries(store)) == 9

    store.put(item(9, enabled=False))               # as many lines as definitions: compact
    join_compactions()
    assert snapshot_document(store)["seq"] == 10 and journal_bytes(store) == b""
    assert fresh_load(store) == [item(n, enabled=False) for n in range(10)]


def test_a_compaction_that_fails_in_the_background_keeps_every_change_and_writes_go_on(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.ERROR, logger="schedserver")
    monkeypatch.setattr(JournalStore, "COMPACT_MIN_LINES", 3)
    store = new_store(tmp_path)
    real_replace = os.replace

    def replace(src, dst, **kwargs):
        if os.fspath(dst) == store.path:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, **kwargs)
    monkeypatch.setattr(os, "replace", replace)

    for n in range(8):
        store.put(item(n))
        join_compactions()

    assert "compaction failed" in caplog.text
    assert not os.path.exists(store.path)
    assert not temp_files(tmp_path)
    assert fresh_load(store) == [item(n) for n in range(8)]

    monkeypatch.setattr(os, "replace", real_replace)
    store.compact()
    assert fresh_load(store) == [item(n) for n in range(8)] and journal_bytes(store) == b""


def test_changes_made_while_the_snapshot_is_being_written_are_kept_in_the_journal(tmp_path, monkeypatch):
    """The snapshot write is held open until other threads have made their changes: they must all survive, as
    journal lines numbered after the snapshot's seq."""
    store = new_store(tmp_path)
    for n in range(10):
        store.put(item(n))
    writing, changed = threading.Event(), threading.Event()
    real_atomic_write = schedserver.atomic_write

    def atomic_write(path, data, *args, **kwargs):
        if path == store.path:
            writing.set()
            assert changed.wait(THREAD_TIMEOUT), "the writers never finished"
        return real_atomic_write(path, data, *args, **kwargs)
    monkeypatch.setattr(schedserver, "atomic_write", atomic_write)

    compactor = threading.Thread(target=store.compact, name="test-compactor")
    compactor.start()
    assert writing.wait(THREAD_TIMEOUT)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for k in range(10):
                store.put(item(100 + 10 * w + k))
            store.delete(item(w)["id"])             # in the snapshot being written, deleted after it
            store.put(item(5 + w, edited=True))     # the same, edited after it
        except BaseException as e:
            errors.append(e)
    writers = [threading.Thread(target=writer, args=(w,), name=f"test-writer-{w}") for w in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(THREAD_TIMEOUT)
        assert not thread.is_alive()
    changed.set()
    compactor.join(THREAD_TIMEOUT)
    assert not compactor.is_alive() and not errors, errors

    assert snapshot_document(store) == {"version": 1, "seq": 10, "schedules": [item(n) for n in range(10)]}
    assert [entry["seq"] for entry in journal_entries(store)] == list(range(11, 11 + 4 * 12))
    expected = [item(4)] + [item(n, edited=True) for n in range(5, 9)] + [item(9)] + sorted(
        (d for d in store.items() if d["n"] >= 100), key=lambda d: d["n"])
    assert sorted(store.items(), key=lambda d: d["n"]) == expected
    assert sorted(fresh_load(store), key=lambda d: d["n"]) == expected
    assert fresh_load(store) == store.items()


def test_changes_from_many_threads_while_background_compactions_run_over_and_over_are_all_kept(
        tmp_path, monkeypatch):
    monkeypatch.setattr(JournalStore, "COMPACT_MIN_LINES", 25)
    compactions = []
    real_compact = JournalStore.compact

    def compact(self) -> None:
        compactions.append(threading.current_thread().name)
        real_compact(self)
    monkeypatch.setattr(JournalStore, "compact", compact)
    store = new_store(tmp_path)
    errors: list[BaseException] = []
    expected: dict[int, dict[str, dict]] = {}

    def writer(w: int) -> None:
        try:
            mine: dict[str, dict] = {}
            for k in range(150):
                new = item(1000 * w + k)
                store.put(new)
                mine[new["id"]] = new
                if k % 3 == 0:
                    victim = sorted(mine)[0]
                    store.delete(victim)
                    del mine[victim]
                if k % 5 == 0 and mine:
                    edited = dict(mine[sorted(mine)[-1]], edited=k)
                    store.put(edited)
                    mine[edited["id"]] = edited
            expected[w] = mine
        except BaseException as e:
            errors.append(e)

    writers = [threading.Thread(target=writer, args=(w,), name=f"test-writer-{w}") for w in range(6)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(THREAD_TIMEOUT)
        assert not thread.is_alive()
    join_compactions()
    assert not errors, errors

    wanted = {i: d for mine in expected.values() for i, d in mine.items()}
    assert {d["id"]: d for d in store.items()} == wanted
    loaded = fresh_load(store)
    assert len(loaded) == len(wanted) and {d["id"]: d for d in loaded} == wanted
    assert compactions and set(compactions) == {"schedserver-compact"}     # at 25 lines at least: the first one
    after = snapshot_document(store)["seq"]
    assert after > 0 and all(entry["seq"] > after for entry in journal_entries(store))


def test_two_compactions_at_once_lose_no_change(tmp_path, monkeypatch):
    store = new_store(tmp_path)
    for n in range(3):
        store.put(item(n))
    first_writing, release_first = threading.Event(), threading.Event()
    real_atomic_write = schedserver.atomic_write

    def atomic_write(path, data, *args, **kwargs):
        if path == store.path and threading.current_thread().name == "test-first":
            first_writing.set()
            assert release_first.wait(THREAD_TIMEOUT)
        return real_atomic_write(path, data, *args, **kwargs)
    monkeypatch.setattr(schedserver, "atomic_write", atomic_write)

    first = threading.Thread(target=store.compact, name="test-first")
    first.start()
    assert first_writing.wait(THREAD_TIMEOUT)       # the first has its copy (seq 3) and is writing it
    store.put(item(3))
    store.put(item(4))
    second = threading.Thread(target=store.compact, name="test-second")     # asked for while the first writes
    second.start()
    second.join(0.2)
    assert second.is_alive()                        # it waits for the first instead of racing it
    release_first.set()
    first.join(THREAD_TIMEOUT)
    second.join(THREAD_TIMEOUT)
    assert not first.is_alive() and not second.is_alive()
    assert snapshot_document(store)["seq"] == 5 and journal_entries(store) == []

    assert fresh_load(store) == [item(n) for n in range(5)]


@pytest.mark.parametrize("at", ["end", "middle"])
def test_a_crash_between_the_snapshot_write_and_the_journal_rewrite_loads_the_same_state(tmp_path, at):
    """Simulated: the snapshot is written (with its seq) as compact() writes it, the journal is left whole."""
    store = new_store(tmp_path)
    for n in range(6):
        store.put(item(n))
    store.delete(item(1)["id"])                     # deleted before the snapshot: must not come back
    store.put(item(2, enabled=False))
    seq, state = len(journal_entries(store)), store.items()
    if at == "middle":                              # changes after the compaction took its copy, before the crash
        store.delete(item(3)["id"])                 # in the snapshot, deleted after it: must stay deleted
        store.put(item(6))
        store.delete(item(6)["id"])                 # created and deleted after it: must not appear
        store.put(item(7))
        store.put(item(0, enabled=False))
    journal = journal_bytes(store)
    schedserver.atomic_write(store.path, json.dumps({"version": 1, "seq": seq, "schedules": state}).encode())

    assert journal_bytes(store) == journal
    loaded = JournalStore(store.path)
    assert loaded.load() == store.items()
    ids = [d["id"] for d in loaded.items()]
    assert len(ids) == len(set(ids))
    assert item(1)["id"] not in ids
    if at == "middle":
        assert item(3)["id"] not in ids and item(6)["id"] not in ids

    loaded.put(item(8))                             # numbering goes on above every line already there
    numbers = [entry["seq"] for entry in journal_entries(loaded)]
    assert numbers == list(range(1, len(numbers) + 1))
    loaded.compact()
    assert fresh_load(loaded) == loaded.items() and journal_bytes(loaded) == b""


###############################################################################
# Private files
###############################################################################

def test_the_snapshot_and_the_journal_are_0600_even_under_umask_0(tmp_path):
    old = os.umask(0)
    try:
        store = new_store(tmp_path)
        store.put(item(1, headers={"Authorization": "Bearer secret"}))
        journal_mode = mode_of(store.journal_path)        # created by the first append
        store.compact()
        store.put(item(2))
        modes = {"journal at its creation": journal_mode, "snapshot": mode_of(store.path),
                 "journal after a compaction": mode_of(store.journal_path)}
    finally:
        os.umask(old)
    assert modes == {"journal at its creation": 0o600, "snapshot": 0o600, "journal after a compaction": 0o600}
