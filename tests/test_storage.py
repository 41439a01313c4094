"""Storage: atomic write, JsonFile, the NDJSON runs log and its positions, the run state saved and replayed, the
state a restart rebuilds, and the data dir (private, one server at a time, only its own temp files removed)."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

import schedserver
from e2e_helpers import run_schedserver, schedserver_argv
from harness import Stack
from schedserver import (HISTORY_SIZE, TEMP_PREFIX, ConfigError, DataDir, JsonFile, NdjsonLog, RunState,
                         StartupError, atomic_write, format_record)

ROOT = Path(schedserver.__file__).resolve().parent
NOW = "2025-01-10T12:00:00Z"
NOBODY = 65534


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(epoch: float | None, ms: bool = False) -> str | None:
    return schedserver.utc_iso(epoch, ms=ms)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def temp_files(directory) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX)]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that can import schedserver; every wait has a deadline."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=60)


###############################################################################
# atomic_write
###############################################################################

def test_atomic_write_creates_the_file_with_mode_0600_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "doc.json"
    atomic_write(str(target), b'{"a": 1}\n')
    assert target.read_bytes() == b'{"a": 1}\n'
    assert mode_of(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["doc.json"]


def test_atomic_write_replaces_the_content_and_tightens_the_mode_of_an_existing_file(tmp_path):
    target = tmp_path / "doc.json"
    target.write_bytes(b"old content that is longer than the new one\n")
    os.chmod(target, 0o644)
    atomic_write(str(target), b"new\n")
    assert target.read_bytes() == b"new\n"
    assert mode_of(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["doc.json"]


def test_the_temp_file_of_a_write_in_progress_starts_with_the_prefix_only_the_server_removes(tmp_path, monkeypatch):
    target = tmp_path / "doc.json"
    seen: list[str] = []
    real_replace = os.replace

    def replace(src, dst, **kwargs):
        seen.append(os.path.basename(src))
        return real_replace(src, dst, **kwargs)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(str(target), b"x\n")
    assert len(seen) == 1
    assert seen[0].startswith(f"{TEMP_PREFIX}doc.json-{os.getpid()}-")


def test_a_write_that_fails_before_it_is_complete_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "doc.json"
    target.write_bytes(b"old\n")
    with pytest.raises(TypeError):
        atomic_write(str(target), "not bytes")      # fails after the temp file was opened
    assert target.read_bytes() == b"old\n"
    assert sorted(os.listdir(tmp_path)) == ["doc.json"]


def test_a_write_that_runs_out_of_space_midway_leaves_the_old_file_and_no_temp_file(tmp_path):
    # A file-size limit makes the kernel refuse the write after the first 4 KiB: a real failure mid-write.
    target = tmp_path / "doc.json"
    target.write_bytes(b"old\n")
    done = run_python("""
        import resource, signal, sys
        import schedserver
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            schedserver.atomic_write(sys.argv[1], b"x" * 1_000_000)
        except OSError as e:
            print("failed", e.errno)
        else:
            print("written")
    """, str(target))
    assert done.stdout.split()[0] == "failed", done.stderr
    assert target.read_bytes() == b"old\n"
    assert sorted(os.listdir(tmp_path)) == ["doc.json"]


###############################################################################
# JsonFile
###############################################################################

def test_a_json_file_round_trips_a_document(tmp_path):
    path = str(tmp_path / "curl-schedules.json")
    document = {"version": 1, "schedules": [{"id": "x", "headers": {"Authorization": "Bearer s3cret"}, "n": 1.5}]}
    JsonFile(path).save(document)
    assert JsonFile(path).load(None) == document
    assert mode_of(path) == 0o600


def test_a_json_file_gives_the_default_when_there_is_no_file(tmp_path):
    assert JsonFile(str(tmp_path / "none.json")).load({"version": 1, "schedules": []}) == {
        "version": 1, "schedules": []}


def test_a_second_save_replaces_the_first_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "curl-schedules.json"
    document = JsonFile(str(path))
    document.save({"n": 1})
    document.save({"n": 2})
    assert JsonFile(str(path)).load(None) == {"n": 2}
    assert not temp_files(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["curl-schedules.json"]


def test_a_corrupt_json_file_refuses_to_load_and_is_left_as_it_is(tmp_path):
    path = tmp_path / "curl-schedules.json"
    path.write_bytes(b'{"version": 1, "schedules": [')
    before = os.stat(path)
    with pytest.raises(StartupError) as caught:
        JsonFile(str(path)).load({"version": 1, "schedules": []})
    assert str(path) in str(caught.value)
    assert "corrupt JSON" in str(caught.value)
    assert path.read_bytes() == b'{"version": 1, "schedules": ['
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns


def test_a_corrupt_schedules_file_stops_the_server_from_loading_and_is_not_overwritten(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    path = data / "curl-schedules.json"
    path.write_bytes(b"\x00\x01 not json")
    stack = Stack(tmp_path, load=False)
    try:
        with pytest.raises(StartupError, match="curl-schedules.json"):
            stack.server.load()
    finally:
        stack.close()
    assert path.read_bytes() == b"\x00\x01 not json"


###############################################################################
# NdjsonLog: appending, rotation, reading newest first
###############################################################################

def numbers(log: NdjsonLog, **kwargs) -> list[int]:
    return [record["n"] for record, _ in log.read_newest(**kwargs)]


def test_the_log_reads_back_newest_first_one_line_per_record(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 1 << 20, 3)
    for n in range(5):
        log.append({"n": n, "text": "line\nbreak ü"})
    assert numbers(log) == [4, 3, 2, 1, 0]
    assert len(path.read_bytes().splitlines()) == 5
    assert mode_of(path) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["runs.log"]         # no lock file beside it


def test_then_runs_once_the_line_is_written_and_before_the_next_append(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 1 << 20, 3)
    seen: list[bytes] = []
    log.append({"n": 0}, then=lambda: seen.append(path.read_bytes()))
    log.append({"n": 1})
    assert seen == [b'{"n":0}\n']


def test_an_empty_or_missing_log_reads_as_nothing(tmp_path):
    log = NdjsonLog(str(tmp_path / "runs.log"), 1 << 20, 3)
    assert numbers(log) == []
    assert (log.position()["inode"], log.position()["offset"]) == (None, 0)
    (tmp_path / "runs.log").write_bytes(b"")
    assert numbers(log) == []


def test_each_record_comes_with_the_position_of_its_line(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 1 << 20, 3)
    for n in range(4):
        log.append({"n": n})
    data = path.read_bytes()
    inode = os.stat(path).st_ino
    for record, position in log.read_newest():
        assert position["inode"] == inode
        line = data[position["offset"]:data.index(b"\n", position["offset"])]
        assert json.loads(line) == record


def test_rotation_by_size_keeps_every_line_across_the_files(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 200, 100)
    for n in range(60):
        log.append({"n": n, "pad": "x" * 10})
    rotated = sorted(name for name in os.listdir(tmp_path) if name.startswith("runs.log."))
    assert len(rotated) > 3
    for name in os.listdir(tmp_path):
        assert os.path.getsize(tmp_path / name) <= 200
    assert numbers(log, include_rotated=True) == list(range(59, -1, -1))
    current = numbers(log, include_rotated=False)
    assert 0 < len(current) < 60
    assert current == list(range(59, 59 - len(current), -1))   # the current file holds the newest lines


def test_rotation_keeps_no_more_backups_than_configured(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 200, 2)
    for n in range(60):
        log.append({"n": n, "pad": "x" * 10})
    assert os.path.exists(f"{path}.1") and os.path.exists(f"{path}.2")
    assert not os.path.exists(f"{path}.3")
    kept = numbers(log)
    assert 0 < len(kept) < 60
    assert kept == list(range(59, 59 - len(kept), -1))        # the newest ones, none missing in between


def test_with_no_backups_rotation_starts_the_file_afresh(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 200, 0)
    for n in range(60):
        log.append({"n": n, "pad": "x" * 10})
    assert not os.path.exists(f"{path}.1")
    assert os.path.getsize(path) <= 200
    kept = numbers(log)
    assert kept[0] == 59 and kept == list(range(59, 59 - len(kept), -1))


def test_lines_that_straddle_the_read_blocks_come_back_whole_and_in_order(tmp_path):
    log = NdjsonLog(str(tmp_path / "runs.log"), 1 << 30, 1)
    for n in range(6000):
        log.append({"n": n, "pad": "y" * (n % 97)})         # about 400 KiB: more than one 256 KiB block
    records = [record for record, _ in log.read_newest()]
    assert [r["n"] for r in records] == list(range(5999, -1, -1))
    assert all(r["pad"] == "y" * (r["n"] % 97) for r in records)


def test_a_torn_final_line_is_skipped_and_the_next_append_starts_on_a_new_line(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 1 << 20, 2)
    for n in range(3):
        log.append({"n": n})
    with open(path, "ab") as f:
        f.write(b'{"n": 99, "sta')                     # the process died mid-append
    assert numbers(log) == [2, 1, 0]
    assert [r["n"] for r in log.read_after(None)] == [0, 1, 2]
    log.append({"n": 3})
    assert path.read_bytes().endswith(b'{"n": 99, "sta\n{"n":3}\n')
    assert numbers(log) == [3, 2, 1, 0]
    assert [r["n"] for r in log.read_after(None)] == [0, 1, 2, 3]


@pytest.mark.parametrize("torn", [b'{"n": 0, "sta', b'{"n": 0, "pad": "' + b"z" * 300_000],
                         ids=["short", "longer-than-a-read-block"])
def test_a_log_holding_only_a_torn_line_reads_as_empty(tmp_path, torn):
    path = tmp_path / "runs.log"
    path.write_bytes(torn)                              # the first append ever was cut short
    log = NdjsonLog(str(path), 1 << 20, 2)
    assert numbers(log) == []
    assert list(log.read_after(None)) == []
    log.append({"n": 1})
    assert numbers(log) == [1]


def test_a_malformed_line_in_the_middle_is_skipped_with_one_warning(tmp_path, caplog):
    path = tmp_path / "runs.log"
    path.write_bytes(b'{"n": 0}\nnot json at all\n{"n": 1}\n[1, 2]\n"a string"\n{"n": 2}\n')
    log = NdjsonLog(str(path), 1 << 20, 2)
    assert numbers(log) == [2, 1, 0]
    assert numbers(log) == [2, 1, 0]
    assert [r["n"] for r in log.read_after(None)] == [0, 1, 2]
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()


def test_contains_keeps_only_the_lines_holding_the_bytes(tmp_path):
    log = NdjsonLog(str(tmp_path / "runs.log"), 1 << 20, 2)
    for n in range(6):
        log.append({"schedule_id": "a" if n % 2 else "b", "n": n})
    assert numbers(log, contains=b'"schedule_id":"a"') == [5, 3, 1]
    assert numbers(log, contains=b'"schedule_id":"zzz"') == []


###############################################################################
# NdjsonLog.read_after: what was appended after a position
###############################################################################

PAD = "p" * 20          # about 40 bytes a line: a 300-byte log rotates every 7 lines


def append_numbers(log: NdjsonLog, numbers_: range) -> None:
    for n in numbers_:
        log.append({"n": n, "pad": PAD})


def after(log: NdjsonLog, position: dict | None) -> list[int]:
    return [record["n"] for record in log.read_after(position)]


def kept_oldest_first(log: NdjsonLog) -> list[int]:
    """Every whole record still in the log's files, read straight from them, oldest first."""
    found = []
    for path in reversed(log.files()):
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            continue
        found += [json.loads(line)["n"] for line in data[:data.rfind(b"\n") + 1].splitlines() if line.strip()]
    return found


def kept_files(log: NdjsonLog) -> list[str]:
    return [path for path in log.files() if os.path.exists(path)]


def where(log: NdjsonLog, position: dict) -> str | None:
    """The name of the log file that holds the position's inode now (None when it is no longer kept)."""
    for path in log.files():
        try:
            if os.stat(path).st_ino == position["inode"]:
                return os.path.basename(path)
        except FileNotFoundError:
            continue
    return None


def test_read_after_gives_exactly_the_records_appended_after_a_position(tmp_path):
    log = NdjsonLog(str(tmp_path / "runs.log"), 1 << 20, 3)
    start = log.position()
    append_numbers(log, range(5))
    middle = log.position()
    append_numbers(log, range(5, 12))
    end = log.position()

    assert after(log, middle) == list(range(5, 12))
    assert after(log, end) == []
    assert after(log, start) == list(range(12))         # taken before the log existed: everything
    assert after(log, None) == list(range(12))


def test_read_after_follows_the_positions_file_as_it_is_renamed_to_dot_1_and_dot_2(tmp_path):
    log = NdjsonLog(str(tmp_path / "runs.log"), 300, 10)
    append_numbers(log, range(3))
    position = log.position()
    assert where(log, position) == "runs.log"
    n = 3
    for expected_place in ("runs.log.1", "runs.log.2", "runs.log.3"):
        while where(log, position) != expected_place:
            append_numbers(log, range(n, n + 1))
            n += 1
            assert n < 200, f"the position's file never became {expected_place}"
        assert after(log, position) == list(range(3, n)), expected_place
    assert kept_oldest_first(log) == list(range(n))     # nothing was rotated out


def rotate_out(log: NdjsonLog, position: dict, last_in_it: int, first_new: int) -> int:
    """Append until the file holding records up to `last_in_it` is rotated out, and then on until a kept file has
    its inode number again (ext4 hands a freed inode to the next new file at once) or enough more rotations passed
    (a file system that does not). Returns the next record number."""
    n, gone_at = first_new, None
    while n < first_new + 2000:
        append_numbers(log, range(n, n + 1))
        n += 1
        if gone_at is None and kept_oldest_first(log)[0] > last_in_it:
            gone_at = n
        if gone_at is not None and (where(log, position) is not None or n - gone_at > 8 * (log.backups + 2)):
            return n
    raise AssertionError("the position's file was never rotated out")


@pytest.mark.parametrize("backups", [1, 2, 5])
def test_read_after_gives_every_kept_record_when_the_positions_file_was_rotated_out(tmp_path, backups):
    """The saved position's file is gone (rotated past the last backup): every record still kept comes back, oldest
    first, even when a newer file was given the gone file's inode number."""
    log = NdjsonLog(str(tmp_path / "runs.log"), 300, backups)
    append_numbers(log, range(3))
    position = log.position()
    rotate_out(log, position, 2, 3)
    kept = kept_oldest_first(log)
    assert kept[0] > 2, "the position's file is still kept"

    assert after(log, position) == kept


def reuse_inode(monkeypatch, path: str, inode: int) -> None:
    """Make the file at `path` report inode number `inode`, as when the file system hands a freed inode number to
    the next new file (ext4 often does), whether asked by path or by an open descriptor."""
    real_stat, real_fstat = os.stat, os.fstat

    def renumbered(st: os.stat_result) -> os.stat_result:
        fields = {name: getattr(st, name) for name in dir(st) if name.startswith("st_")}
        return os.stat_result([st[0], inode, *tuple(st)[2:]], fields)

    def stat(target, *args, **kwargs):
        st = real_stat(target, *args, **kwargs)
        return renumbered(st) if not isinstance(target, int) and os.fspath(target) == path else st

    def fstat(fd):
        st = real_fstat(fd)
        try:
            same = os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            same = False
        return renumbered(st) if same else st
    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "fstat", fstat)


def rotate_until_gone(log: NdjsonLog, last_in_it: int, first_new: int) -> int:
    n = first_new
    while kept_oldest_first(log)[0] <= last_in_it:
        append_numbers(log, range(n, n + 1))
        n += 1
        assert n < first_new + 500
    return n


def test_read_after_does_not_take_a_newer_file_given_the_gone_files_inode_number_for_it(tmp_path, monkeypatch):
    log = NdjsonLog(str(tmp_path / "runs.log"), 300, 2)
    append_numbers(log, range(3))
    position = log.position()
    n = rotate_until_gone(log, 2, 3)
    append_numbers(log, range(n, n + 3))                # the new current file is longer than the position's offset
    kept = kept_oldest_first(log)
    reuse_inode(monkeypatch, log.path, position["inode"])

    assert after(log, position) == kept


def test_with_no_backups_read_after_gives_every_record_of_a_log_started_afresh_since_the_position(tmp_path):
    log = NdjsonLog(str(tmp_path / "runs.log"), 300, 0)
    append_numbers(log, range(3))
    position = log.position()
    append_numbers(log, range(3, 20))       # the file is cut back to nothing (same inode) and fills up again
    kept = kept_oldest_first(log)
    assert kept[0] > 2 and os.path.getsize(log.path) > position["offset"]

    assert after(log, position) == kept


###############################################################################
# NdjsonLog.read_newest(before=...): paging backwards
###############################################################################

def page(log: NdjsonLog, size: int, before: dict | None, during=None) -> list[tuple[dict, dict]]:
    """The next `size` records before `before`, newest first; `during()` runs after the first third of them."""
    taken = []
    for record, position in log.read_newest(before=before):
        taken.append((record, position))
        if during is not None and len(taken) == max(1, size // 3):
            during()
        if len(taken) == size:
            break
    return taken


def page_through(log: NdjsonLog, size: int, appender, during_page: bool) -> tuple[list[int], list[tuple]]:
    """Every record, a page at a time; `appender()` adds lines between pages or while a page is read. Returns the
    numbers in the order seen and, for each cursor, (its file when it was handed out, its file when used)."""
    seen: list[int] = []
    moves: list[tuple] = []
    cursor, place = None, None
    for _ in range(1000):
        if cursor is not None:
            moves.append((place, where(log, cursor) or "gone"))
        taken = page(log, size, cursor, during=appender if during_page else None)
        if not taken:
            return seen, moves
        seen += [record["n"] for record, _ in taken]
        cursor = taken[-1][1]
        place = where(log, cursor)
        if not during_page:
            appender()
    raise AssertionError("paging never ended")


@pytest.mark.parametrize("during_page", [False, True], ids=["between-pages", "while-a-page-is-read"])
def test_paging_backwards_has_no_duplicates_and_no_gaps_while_lines_are_appended_and_the_log_rotates(
        tmp_path, during_page):
    log = NdjsonLog(str(tmp_path / "runs.log"), 300, 200)
    append_numbers(log, range(60))
    counter = itertools.count(1000)

    def appender() -> None:
        for _ in range(5):
            log.append({"n": next(counter), "pad": PAD})

    files_before = len(kept_files(log))
    seen, moves = page_through(log, 6, appender, during_page)

    assert len(seen) == len(set(seen)), f"duplicates: {sorted(n for n in set(seen) if seen.count(n) > 1)}"
    assert seen == list(range(59, -1, -1))
    assert not [move for move in moves if "gone" in move]
    assert len(kept_files(log)) >= files_before + 3     # the log rotated while it was paged through
    if not during_page:
        renamed = [move for move in moves if move[0] != move[1]]
        assert len(renamed) >= 3, moves     # cursors were followed into the files their lines were renamed to


def test_paging_stops_at_a_cursor_whose_file_was_rotated_out_and_never_goes_back_to_newer_records(tmp_path):
    log = NdjsonLog(str(tmp_path / "runs.log"), 300, 1)
    append_numbers(log, range(10))
    taken = page(log, 3, None)
    assert [record["n"] for record, _ in taken] == [9, 8, 7]
    cursor = taken[-1][1]
    rotate_out(log, cursor, 9, 10)                      # its file is rotated out; new files come and go

    older = [record["n"] for record, _ in log.read_newest(before=cursor)]

    assert all(n < 7 for n in older), older             # nothing newer than the cursor (already shown)


def test_paging_from_a_cursor_whose_inode_number_was_given_to_a_newer_file_returns_nothing_newer(
        tmp_path, monkeypatch):
    log = NdjsonLog(str(tmp_path / "runs.log"), 300, 1)
    append_numbers(log, range(10))
    cursor = page(log, 3, None)[-1][1]                  # record 7
    n = rotate_until_gone(log, 9, 10)
    append_numbers(log, range(n, n + 5))
    reuse_inode(monkeypatch, log.path, cursor["inode"])

    older = [record["n"] for record, _ in log.read_newest(before=cursor)]

    assert all(n < 7 for n in older), older


###############################################################################
# RunState: saved with log positions, replayed from there
###############################################################################

HTTP_ID = "3f1c2b7e-0000-4000-8000-000000000001"
SCRIPT_REL = "jobs/backup.sh"
KEYS = (f"http:{HTTP_ID}", f"script:{SCRIPT_REL}")


def run_logs(root: Path, max_bytes: int = 1 << 20, backups: int = 5) -> dict[str, NdjsonLog]:
    return {"http": NdjsonLog(str(root / "curl-runs.log"), max_bytes, backups),
            "script": NdjsonLog(str(root / "fires.log"), max_bytes, backups)}


def new_state(root: Path, logs: dict[str, NdjsonLog]) -> RunState:
    return RunState(str(root / "run-state.json"), logs)


def record_run(logs: dict[str, NdjsonLog], state: RunState, kind: str, n: int, status: str = "ok",
               trigger: str = "cron") -> dict:
    """Write run `n` (slot 12:00 + n minutes) as the recorder does: its line, taken into `state` under the lock."""
    slot = ts(NOW) + 60 * n
    run = {"ref": HTTP_ID if kind == "http" else SCRIPT_REL, "expression": "0 * * * * *", "run_id": f"{kind}-{n}",
           "slot": slot, "trigger": trigger, "attempt": 1, "started": slot + 1, "status": status,
           "duration_ms": 5, "status_code": 200 if kind == "http" else None, "error": None,
           "exit_code": 0 if kind == "script" else None, "return_preview": "done", "now": slot + 2}
    record = format_record(kind, run)
    logs[kind].append(record, then=functools.partial(state.apply, kind, record))
    return record


def states(state: RunState) -> dict[str, dict]:
    return {key: state.get(key) for key in KEYS}


def write_runs(logs, state, numbers_: range) -> None:
    for n in numbers_:
        record_run(logs, state, "http" if n % 3 else "script", n, status="error" if n % 4 == 0 else "ok")


def test_a_state_loaded_right_after_a_save_replays_nothing_and_is_the_saved_state(tmp_path):
    logs = run_logs(tmp_path)
    state = new_state(tmp_path, logs)
    assert state.load() == 0
    write_runs(logs, state, range(10))
    state.save()
    saved = states(state)
    assert all(saved.values())

    restarted = new_state(tmp_path, run_logs(tmp_path))
    assert restarted.load() == 0
    assert states(restarted) == saved
    assert saved[KEYS[0]] == {"slot": ts(NOW) + 8 * 60, "run_at": ts(NOW) + 8 * 60 + 1, "status": "error",
                              "run_id": "http-8", "at": iso(ts(NOW) + 8 * 60, ms=True)}
    assert not temp_files(tmp_path)


@pytest.mark.parametrize("rotations", [False, True], ids=["same-file", "across-rotations"])
def test_lines_appended_after_a_save_are_replayed_at_load(tmp_path, rotations):
    logs = run_logs(tmp_path, max_bytes=4096 if rotations else 1 << 20, backups=20)
    state = new_state(tmp_path, logs)
    state.load()
    write_runs(logs, state, range(6))
    state.save()
    saved = states(state)
    write_runs(logs, state, range(6, 60 if rotations else 9))     # not saved: the process died
    live = states(state)
    assert live != saved
    if rotations:
        assert os.path.exists(tmp_path / "curl-runs.log.1") and os.path.exists(tmp_path / "fires.log.1")

    restarted = new_state(tmp_path, run_logs(tmp_path, max_bytes=4096 if rotations else 1 << 20, backups=20))
    assert restarted.load() == (54 if rotations else 3)
    assert states(restarted) == live


def test_a_manual_run_after_a_save_moves_the_last_run_but_not_the_last_cron_slot(tmp_path):
    logs = run_logs(tmp_path)
    state = new_state(tmp_path, logs)
    state.load()
    record_run(logs, state, "http", 1)
    state.save()
    record_run(logs, state, "http", 5, trigger="manual")

    restarted = new_state(tmp_path, run_logs(tmp_path))
    assert restarted.load() == 1
    assert restarted.get(KEYS[0]) == state.get(KEYS[0])
    assert restarted.get(KEYS[0])["slot"] == ts(NOW) + 60 and restarted.get(KEYS[0])["run_id"] == "http-5"


@pytest.mark.parametrize("content", [b'{"version": 1, "logs": {"http": {"inode": 1', b"", b"\x00" * 64],
                         ids=["torn", "empty", "zeros"])
def test_a_corrupt_run_state_file_is_reported_and_the_state_is_rebuilt_from_the_runs_logs(tmp_path, caplog, content):
    caplog.set_level(logging.WARNING, logger="schedserver")
    logs = run_logs(tmp_path)
    state = new_state(tmp_path, logs)
    state.load()
    write_runs(logs, state, range(12))
    state.save()
    live = states(state)
    (tmp_path / "run-state.json").write_bytes(content)

    rebuilt = new_state(tmp_path, run_logs(tmp_path))
    assert rebuilt.load() == 12                         # every line of both logs, replayed
    assert states(rebuilt) == live
    reports = [r.getMessage() for r in caplog.records if "run-state.json" in r.getMessage()]
    assert len(reports) == 1 and "rebuilt" in reports[0], caplog.text

    rebuilt.save()                                      # a good file again: the next start replays nothing
    assert new_state(tmp_path, run_logs(tmp_path)).load() == 0


@pytest.mark.parametrize("document", [
    [1, 2],
    {"version": 1, "logs": [], "states": []},
    {"version": 1, "logs": {"http": "end", "script": 7}, "states": {}},
    {"version": 1, "logs": {"http": {"inode": "x", "offset": "y"}}, "states": {"http:x": "ok"}},
], ids=["a-list", "lists-for-maps", "positions-not-maps", "bad-values"])
def test_a_run_state_file_of_the_wrong_shape_is_rebuilt_from_the_runs_logs_instead_of_stopping_the_start(
        tmp_path, document):
    logs = run_logs(tmp_path)
    state = new_state(tmp_path, logs)
    state.load()
    write_runs(logs, state, range(12))
    live = states(state)
    (tmp_path / "run-state.json").write_text(json.dumps(document))

    rebuilt = new_state(tmp_path, run_logs(tmp_path))
    rebuilt.load()
    assert states(rebuilt) == live


###############################################################################
# Run state survives a restart of the server
###############################################################################

def create_hourly(stack: Stack, **extra) -> str:
    return stack.http.create({"cron": "0 * * * * *", "request": {"url": "http://127.0.0.1:9/hook"}, **extra})["id"]


def at(stack: Stack, text: str) -> None:
    """Set the clock to `text`, tick and run what is due."""
    stack.clock.set(text)
    stack.run_due()


@pytest.mark.parametrize("stop", ["clean", "run-state-lost"])
def test_last_run_status_and_history_are_rebuilt_after_a_restart(tmp_path, stop):
    stack = Stack(tmp_path)
    stack.http_runner.script = [("ok", 200, None), ("error", 503, "HTTP 503 Service Unavailable")]
    sid = create_hourly(stack, name="ping")
    at(stack, "2025-01-10T12:01:00Z")
    at(stack, "2025-01-10T12:02:00Z")
    before = stack.http.get(sid)

    stack.clock.set("2025-01-10T12:02:10Z")
    stack.close()
    if stop == "run-state-lost":                        # killed before the state was ever saved
        (stack.data_dir / "run-state.json").unlink()
    with Stack(tmp_path, stack.clock) as second:
        after_restart = second.http.get(sid)
        assert after_restart == before
        assert after_restart["last_run"] == "2025-01-10T12:02:00Z"
        assert after_restart["last_status"] == "error"
        assert [(h["scheduled_at"], h["status"], h["status_code"]) for h in after_restart["history"]] == [
            ("2025-01-10T12:02:00Z", "error", 503), ("2025-01-10T12:01:00Z", "ok", 200)]
        assert after_restart["next_run"] == "2025-01-10T12:03:00Z"
        assert second.http.list()["items"][0]["name"] == "ping"


def test_runs_missed_while_the_server_was_down_become_one_missed_record_after_a_restart(tmp_path):
    stack = Stack(tmp_path)
    sid = create_hourly(stack)
    at(stack, "2025-01-10T12:01:00Z")
    assert len(stack.http_runner.runs) == 1
    stack.close()

    stack.clock.set("2025-01-10T15:00:45Z")             # down from just after 12:01 until 15:00:45
    with Stack(tmp_path, stack.clock) as second:
        second.run_due()
        assert second.http_runner.runs == []
        newest = second.http.get(sid)["history"][0]
        assert (newest["status"], newest["scheduled_at"], newest["count"]) == ("missed", "2025-01-10T12:02:00Z", 179)
        assert second.http.get(sid)["next_run"] == "2025-01-10T15:01:00Z"


def test_history_after_a_restart_is_the_newest_runs_even_when_they_were_skipped(tmp_path):
    stack = Stack(tmp_path)
    sid = create_hourly(stack)
    stack.close()
    runs = NdjsonLog(str(stack.data_dir / "curl-runs.log"), 1 << 20, 3)
    slots = [ts("2025-01-10T12:01:00Z") + 60 * n for n in range(2 * HISTORY_SIZE + 5)]
    for n, slot in enumerate(slots):
        ran = n < HISTORY_SIZE                          # the older runs ran; the newest 25 were all skipped
        runs.append({"ts": iso(slot, ms=True), "schedule_id": sid, "run_id": f"run-{n}",
                     "scheduled_at": iso(slot, ms=True), "started_at": iso(slot, ms=True) if ran else None,
                     "status": "ok" if ran else "skipped", "status_code": 200 if ran else None,
                     "duration_ms": 5 if ran else 0, "error": None if ran else "previous run still in progress",
                     "trigger": "cron", "attempt": 1})
    stack.clock.now = slots[-1] + 10
    with Stack(tmp_path, stack.clock) as second:
        history = second.http.get(sid)["history"]
    assert [h["run_id"] for h in history] == [f"run-{n}" for n in range(len(slots) - 1,
                                                                         len(slots) - 1 - HISTORY_SIZE, -1)]


###############################################################################
# The data dir: private, one server at a time, only its own temp files removed
###############################################################################

def test_prepare_creates_a_missing_data_dir_0700_even_under_umask_0(tmp_path):
    path = tmp_path / "a" / "data"
    old = os.umask(0)
    try:
        DataDir(str(path)).prepare()
    finally:
        os.umask(old)
    assert mode_of(path) == 0o700
    assert os.listdir(path) == []                       # the write probe is gone


def test_prepare_makes_a_group_or_world_readable_data_dir_of_ours_private(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    os.chmod(path, 0o755)
    DataDir(str(path)).prepare()
    assert mode_of(path) == 0o700


@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o722], ids=["1777", "0777", "0722"])
def test_prepare_refuses_a_data_dir_every_user_may_write_to_and_leaves_it_as_it_is(tmp_path, mode):
    path = tmp_path / "shared"
    path.mkdir()
    os.chmod(path, mode)
    with pytest.raises(ConfigError) as caught:
        DataDir(str(path)).prepare()
    assert str(path) in str(caught.value) and "writable by every user" in str(caught.value)
    assert f"{mode:o}" in str(caught.value)
    assert mode_of(path) == mode                        # refused, not "fixed" behind the owner's back
    assert os.listdir(path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the data dir to another user (os.chown) needs root")
def test_prepare_refuses_a_data_dir_owned_by_another_user_and_leaves_it_as_it_is(tmp_path):
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(ConfigError) as caught:
        DataDir(str(path)).prepare()
    assert str(path) in str(caught.value) and f"owned by uid {NOBODY}" in str(caught.value)
    assert os.stat(path).st_uid == NOBODY and mode_of(path) == 0o700
    assert os.listdir(path) == []


def test_a_server_given_a_world_writable_data_dir_exits_2_naming_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o1777)
    done = run_schedserver(schedserver_argv(data, tmp_path / "scripts"))
    assert done.returncode == 2, done.stderr
    assert f"data dir {data}" in done.stderr and "writable by every user" in done.stderr
    assert "listening" not in done.stderr
    assert os.listdir(data) == []


LEFT_BEHIND = {
    f"{TEMP_PREFIX}curl-schedules.json-4242-139872": "removed",
    f"{TEMP_PREFIX}run-state.json-4242-1": "removed",
    f"running/{TEMP_PREFIX}0b7e.json-4242-1": "removed",
    "report.tmp-2024.txt": "kept",                      # "tmp" in the name is not ours
    "curl-schedules.json.tmp-4242-139872": "kept",      # the old naming: not a prefix the server owns
    f"notes{TEMP_PREFIX}x": "kept",                     # the prefix, but not at the start
    ".schedserver-tmp": "kept",                         # almost the prefix
    "running/report.tmp-2024.txt": "kept",
    f"running/{TEMP_PREFIX}": "removed",
}


def lay_out(data: Path) -> None:
    (data / "running").mkdir(parents=True, exist_ok=True)
    for name in LEFT_BEHIND:
        (data / name).write_bytes(b"secret copy\n")


def remaining(data: Path) -> set[str]:
    return {name for name in LEFT_BEHIND if (data / name).exists()}


def test_acquire_removes_only_files_starting_with_the_temp_prefix(tmp_path):
    data = tmp_path / "data"
    DataDir(str(data)).prepare()
    lay_out(data)
    owner = DataDir(str(data))
    owner.acquire()
    try:
        assert remaining(data) == {name for name, fate in LEFT_BEHIND.items() if fate == "kept"}
    finally:
        owner.release()


ACQUIRE = """
    import sys
    import schedserver
    data_dir = schedserver.DataDir(sys.argv[1])
    try:
        data_dir.acquire()
    except schedserver.StartupError as e:
        print(e)
        sys.exit(3)
    print("acquired")
"""


def test_a_second_process_cannot_take_a_data_dir_that_is_in_use_and_removes_nothing_in_it(tmp_path):
    data = tmp_path / "data"
    DataDir(str(data)).prepare()
    owner = DataDir(str(data))
    owner.acquire()
    try:
        lay_out(data)                                   # the owner's writes in progress, among other files
        refused = run_python(ACQUIRE, str(data))
        assert refused.returncode == 3, refused.stderr
        assert refused.stdout.strip() == f"data dir {data} is in use by another schedserver process"
        assert remaining(data) == set(LEFT_BEHIND)      # not its files to remove
    finally:
        owner.release()

    accepted = run_python(ACQUIRE, str(data))          # released: free again
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == "acquired"
    assert remaining(data) == {name for name, fate in LEFT_BEHIND.items() if fate == "kept"}
