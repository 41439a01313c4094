"""Behaviour that has to hold at scale (issue 6): reading a big runs log newest first in blocks, history over a
big log, start-up that replays only what changed since the saved run state (and stays right after a crash or
when the saved state no longer fits the log), the shared deadline watcher of HTTP runs, address literals
resolved without a thread, the remembered preflight checks, and listing many schedules.

Schedules and logs are written straight to a data dir and served by the in-process harness (tests/harness.py).
"""

from __future__ import annotations

import builtins
import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schedserver
from schedserver import (HISTORY_SIZE, DeadlineWatcher, HttpSchedule, NdjsonLog, RunState, _lines_backwards,
                         utc_iso, validate_create)
from fakes import FakeClock
from harness import ADMIN, Stack

DAY = 86400.0
T0 = 1_760_000_000.0            # 2025-10-09T08:53:20Z


# -- reading backwards -----------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=60),
       torn=st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), block=st.integers(1, 64),
       needle=st.sampled_from([None, b"a", b"ab", b"\x00"]), cut=st.integers(0, 60))
def test_block_wise_backwards_reading_equals_reading_the_whole_file(tmp_path_factory, lines, torn, block, needle,
                                                                    cut):
    path = tmp_path_factory.mktemp("log") / "f.log"
    data = b"".join(line + b"\n" for line in lines) + torn
    path.write_bytes(data)
    expected = [line for line in reversed(lines) if line.strip() and (needle is None or needle in line)]

    with open(path, "rb") as f:
        found = list(_lines_backwards(f, block=block, contains=needle))
    assert [line for _, line in found] == expected
    for offset, line in found:          # each line's offset is where it starts in the file
        assert data[offset:offset + len(line) + 1] == line + b"\n" and (offset == 0 or data[offset - 1:offset] == b"\n")
    if found:                           # reading from a line's offset on gives exactly the lines before it
        offset = found[min(cut, len(found) - 1)][0]
        with open(path, "rb") as f:
            assert list(_lines_backwards(f, end=offset, block=block, contains=needle)) == \
                [item for item in found if item[0] < offset]


def test_a_missing_file_reads_as_empty(tmp_path):
    runs_log = NdjsonLog(str(tmp_path / "absent.log"), 1 << 20, 3)
    assert list(runs_log.read_newest()) == [] and list(runs_log.read_after(None)) == []


# -- a big runs log on disk ------------------------------------------------------------------------------------
def write_store(data_dir: Path, created: list[float]) -> list[str]:
    """HTTP schedule definitions (yearly, so none is due) as a schedules snapshot; their ids."""
    data_dir.mkdir(parents=True, exist_ok=True)
    definitions = []
    for n, at in enumerate(created):
        values = validate_create({"cron": "0 0 0 1 1 *", "request": {"url": f"http://127.0.0.1:9/{n}"}}, "UTC")
        definitions.append(HttpSchedule(id=str(uuid.UUID(int=n + 1)), created_at=at, enabled_at=at,
                                        **values).definition())
    (data_dir / "curl-schedules.json").write_text(json.dumps({"version": 1, "schedules": definitions}))
    return [d["id"] for d in definitions]


def run_line(schedule_id: str, at: float, n: int, status: str = "ok") -> bytes:
    """One record as the recorder writes it."""
    record = {"ts": utc_iso(at, ms=True), "schedule_id": schedule_id, "run_id": f"run-{n}",
              "scheduled_at": utc_iso(at, ms=True), "started_at": utc_iso(at, ms=True) if status == "ok" else None,
              "status": status, "status_code": 200 if status == "ok" else None, "duration_ms": 3, "error": None,
              "trigger": "cron", "attempt": 1}
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def runs_log(root: Path) -> Path:
    return root / "data" / "curl-runs.log"


def append(path: Path, lines: list[bytes]) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(lines))


class Spy:
    """How many run records each start replayed (RunState.load's answer), and the bytes read from files."""

    def __init__(self, monkeypatch):
        self.replayed: list[int] = []
        self.bytes_read = 0
        original_load = RunState.load
        spy = self

        def load(state):
            count = original_load(state)
            spy.replayed.append(count)
            return count
        monkeypatch.setattr(RunState, "load", load)

        class Counting:
            def __init__(self, f):
                self._f = f

            def read(self, *args):
                data = self._f.read(*args)
                spy.bytes_read += len(data)
                return data

            def __iter__(self):
                for line in self._f:
                    spy.bytes_read += len(line)
                    yield line

            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                self._f.close()

            def __getattr__(self, name):
                return getattr(self._f, name)

        def counting_open(*args, **kwargs):
            f = builtins.open(*args, **kwargs)
            return Counting(f) if "b" in (args[1] if len(args) > 1 else kwargs.get("mode", "r")) else f
        monkeypatch.setattr(schedserver, "open", counting_open, raising=False)

        real_pread = os.pread

        def counting_pread(fd, n, offset):
            data = real_pread(fd, n, offset)
            if n > NdjsonLog.HEAD_BYTES:     # a block, not a file's first bytes taken to name a position
                spy.bytes_read += len(data)
            return data
        monkeypatch.setattr(schedserver.os, "pread", counting_pread)


def shown(stack: Stack, ids: list[str]) -> dict:
    """What the API shows of each schedule."""
    return {sid: stack.http.get(sid) for sid in ids}


def test_start_up_rebuilds_the_newest_history_and_last_run_of_every_schedule_from_a_big_log(tmp_path):
    ids = write_store(tmp_path / "data", [T0 - 10 * DAY] * 3)
    lines = [run_line(ids[n % 2], T0 - 5 * DAY + n, n) for n in range(30_000)]     # ids[2] never ran
    lines.append(run_line(ids[0], T0 - 1, 99_999, status="skipped"))
    runs_log(tmp_path).write_bytes(b"".join(lines) + b'{"ts":"torn')
    with Stack(tmp_path, FakeClock(T0)) as stack:                   # no saved run state: the whole log replayed
        first = stack.http.get(ids[0])
        assert [h["run_id"] for h in first["history"]] == ["run-99999"] + [f"run-{n}" for n in
                                                                            range(29_998, 29_998 - 2 * 19, -2)]
        assert first["last_run"] == utc_iso(T0 - 5 * DAY + 29_998)        # the newest run that started
        assert first["last_status"] == "skipped"
        assert len(stack.http.get(ids[1])["history"]) == HISTORY_SIZE
        assert stack.http.get(ids[2])["history"] == [] and stack.http.get(ids[2])["last_run"] is None
        assert len(stack.http.history(ids[1], limit=1000)) == 1000        # a longer history, as asked


def test_history_reads_only_the_newest_part_of_a_big_log_and_nothing_for_a_schedule_that_never_ran(
        tmp_path, monkeypatch):
    ids = write_store(tmp_path / "data", [T0 - 10 * DAY] * 2)
    old = [run_line(ids[0], T0 - 9 * DAY + n, n) for n in range(40_000)]
    new = [run_line(ids[0], T0 - 3600 + n, 50_000 + n) for n in range(100)]
    runs_log(tmp_path).write_bytes(b"".join(old + new))
    with Stack(tmp_path, FakeClock(T0)) as stack:
        spy = Spy(monkeypatch)                                      # from here on: what the API calls read
        assert stack.http.get(ids[1])["history"] == []
        assert spy.bytes_read == 0                                  # never ran: the log is not read at all
        history = stack.http.get(ids[0])["history"]
        assert [h["run_id"] for h in history] == [f"run-{50_000 + n}" for n in range(99, 99 - HISTORY_SIZE, -1)]
        assert 0 < spy.bytes_read < len(b"".join(old)) / 4          # the newest blocks only


def test_history_spans_the_rotated_files_of_a_runs_log(tmp_path):
    ids = write_store(tmp_path / "data", [T0 - 10 * DAY])
    lines = [run_line(ids[0], T0 - DAY + n, n) for n in range(3_000)]
    with Stack(tmp_path, FakeClock(T0), runs_log_max_bytes=64 * 1024, runs_log_backups=20) as stack:
        for line in lines:                          # as the recorder appends: rotated by size as it goes
            record = json.loads(line)
            stack.server.logs["http"].append(record, then=lambda r=record: stack.state.apply("http", r))
        assert (tmp_path / "data" / "curl-runs.log.3").exists()
        assert [h["run_id"] for h in stack.http.history(ids[0], limit=2_000)] == \
            [f"run-{n}" for n in range(2_999, 999, -1)]


def test_a_malformed_line_in_the_runs_log_is_left_out_of_history_and_run_state_not_an_error(tmp_path):
    ids = write_store(tmp_path / "data", [T0 - DAY])
    sid = ids[0].encode()
    runs_log(tmp_path).write_bytes(run_line(ids[0], T0 - 30, 1) + b'{"schedule_id":"' + sid + b'","run_id":\n'
                                   + b'["' + sid + b'"]\n' + b"\x00\xff" + sid + b"\n" + run_line(ids[0], T0 - 20, 2))
    with Stack(tmp_path, FakeClock(T0)) as stack:
        shown_ = stack.http.get(ids[0])
        assert [h["run_id"] for h in shown_["history"]] == ["run-2", "run-1"]
        assert shown_["last_run"] == utc_iso(T0 - 20)


# -- start-up replays only what changed since the saved run state ------------------------------------------------
def big_log_stack(tmp_path: Path, monkeypatch, lines: int = 20_000) -> tuple[list[str], Spy]:
    """Three yearly schedules created long ago (ids[1] and ids[2] never ran) and a big log of ids[0]'s runs."""
    ids = write_store(tmp_path / "data", [T0 - 30 * DAY] * 3)
    runs_log(tmp_path).write_bytes(b"".join(run_line(ids[0], T0 - 20 * DAY + n, n) for n in range(lines)))
    return ids, Spy(monkeypatch)


def test_a_start_after_a_clean_stop_replays_none_of_a_big_log_and_shows_the_same(tmp_path, monkeypatch):
    ids, spy = big_log_stack(tmp_path, monkeypatch)
    size = runs_log(tmp_path).stat().st_size
    with Stack(tmp_path, FakeClock(T0)) as first:
        before = shown(first, ids)
    assert spy.replayed == [20_000]                                 # the first start: no saved state yet
    assert spy.bytes_read >= size                                   # ...so it read the whole log
    assert (tmp_path / "data" / "run-state.json").exists()          # saved by the clean stop

    spy.bytes_read = 0
    with Stack(tmp_path, FakeClock(T0)) as second:
        assert spy.replayed[1:] == [0]
        assert spy.bytes_read < size / 4                            # the log was not read through at start-up
        assert shown(second, ids) == before


def test_after_a_crash_a_start_replays_only_the_lines_logged_since_the_last_save_and_loses_no_run(
        tmp_path, monkeypatch):
    ids, spy = big_log_stack(tmp_path, monkeypatch)
    first = Stack(tmp_path, FakeClock(T0))
    before = shown(first, ids)
    busy = first.http.create({"cron": "* * * * * *", "request": {"url": "http://127.0.0.1:9/busy"}})["id"]
    first.pass_seconds(3)
    first.server.save_state()                                       # the periodic save
    first.pass_seconds(5)                                           # five more runs, then the process dies:
    first.server.data_dir.release()                                 # nothing stopped, saved or recorded
    first.script_runner.close()                                     # (idle: only its descriptors go)
    first.deadlines.close()
    first._closed = True

    with Stack(tmp_path, FakeClock(T0 + 8.5)) as second:
        assert spy.replayed == [20_000, 5]
        got = second.http.get(busy)
        assert [h["scheduled_at"] for h in got["history"]] == [utc_iso(T0 + n) for n in range(8, 0, -1)]
        assert got["last_run"] == utc_iso(T0 + 8) and got["next_run"] == utc_iso(T0 + 9)
        assert shown(second, ids) == before
        second.clock.set(T0 + 9)
        second.run_due()                                            # on from the next slot: none again, none missed
        assert [h["status"] for h in second.http.history(busy)] == ["ok"] * 9


@pytest.mark.parametrize("change", ["rotated", "truncated", "garbage"])
def test_a_saved_run_state_that_no_longer_fits_the_log_still_gives_every_run(tmp_path, monkeypatch, change):
    ids, spy = big_log_stack(tmp_path, monkeypatch, lines=5_000)
    with Stack(tmp_path, FakeClock(T0)) as first:
        before = shown(first, ids)
    log_path, state_path = runs_log(tmp_path), tmp_path / "data" / "run-state.json"
    later = [run_line(ids[1], T0 - 3 * DAY, 42), run_line(ids[0], T0 - 2 * DAY, 43)]
    newest = [run_line(ids[2], T0 - DAY, 77)]
    if change == "rotated":             # runs after the save, then the log moved to .1 and a new one began
        append(log_path, later)
        os.replace(log_path, tmp_path / "data" / "curl-runs.log.1")
        log_path.write_bytes(b"".join(newest))
        expected = len(later) + len(newest)
    elif change == "truncated":         # cut short below the saved position (by hand), then written on
        log_path.write_bytes(b"".join(later + newest))
        expected = len(later) + len(newest)
    else:                               # the saved state is unreadable: rebuilt from the logs
        append(log_path, later + newest)
        state_path.write_text("{not json")
        expected = 5_000 + len(later) + len(newest)
    with Stack(tmp_path, FakeClock(T0)) as second:
        assert spy.replayed[1:] == [expected]
        assert [h["run_id"] for h in second.http.get(ids[1])["history"]] == ["run-42"]
        assert second.http.get(ids[1])["last_run"] == utc_iso(T0 - 3 * DAY)
        assert [h["run_id"] for h in second.http.get(ids[2])["history"]] == ["run-77"]
        assert second.http.get(ids[0])["last_run"] == utc_iso(T0 - 2 * DAY)
        assert second.http.get(ids[0])["last_run"] != before[ids[0]]["last_run"]


# -- HTTP runs -------------------------------------------------------------------------------------------------
def test_the_deadline_watcher_runs_actions_in_deadline_order_and_never_a_cancelled_one():
    watcher = DeadlineWatcher()
    done: list[str] = []
    finished = threading.Event()
    try:
        now = time.monotonic()
        watcher.add(now + 0.20, lambda: (done.append("late"), finished.set()))
        cancelled = watcher.add(now + 0.05, lambda: done.append("cancelled"))
        watcher.add(now + 0.10, lambda: done.append("early"))
        watcher.add(now + 0.01, lambda: 1 / 0)             # a failing action is logged; the watcher goes on
        watcher.cancel(cancelled)

        assert finished.wait(5)
        assert done == ["early", "late"]
    finally:
        watcher.close()


def test_an_address_literal_resolves_without_a_lookup_thread(monkeypatch):
    started = []
    monkeypatch.setattr(schedserver.threading, "Thread", lambda *a, **k: started.append(k) or threading.Thread(*a, **k))
    assert schedserver.resolve("127.0.0.1", 80, 1.0) == ["127.0.0.1"]
    assert schedserver.resolve("::1", 80, 1.0) == ["::1"]
    assert started == []


# -- scripts: the preflight checks survive a restart -----------------------------------------------------------
def test_a_restart_does_not_rerun_the_syntax_check_of_unchanged_scripts(tmp_path, monkeypatch):
    scripts_dir = tmp_path / "scripts"
    scripts_dir.mkdir()
    for n in range(3):
        path = scripts_dir / f"job{n}.sh"
        path.write_text(f"#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho {n}\n")
        path.chmod(0o755)
    (scripts_dir / "broken.sh").write_text("#!/bin/sh\n# @schedule 0 0 0 1 1 *\nif then fi (\n")
    (scripts_dir / "broken.sh").chmod(0o755)
    checked: list[str] = []
    original = schedserver.ScriptRunner.check
    monkeypatch.setattr(schedserver.ScriptRunner, "check",
                        lambda self, argv, cwd, env, timeout: checked.append(os.path.basename(argv[-1]))
                        or original(self, argv, cwd, env, timeout))

    stack = Stack(tmp_path)
    try:
        assert sorted(checked) == ["broken.sh", "job0.sh", "job1.sh", "job2.sh"]
        assert stack.scripts.count() == 3
        checked.clear()
        stack = stack.reopen()                        # a restart: nothing changed, nothing checked again
        assert checked == [] and stack.scripts.count() == 3
        assert os.stat(tmp_path / "data" / "exec-registered.json").st_mode & 0o077 == 0
        path = scripts_dir / "job1.sh"
        path.write_text("#!/bin/sh\n# @schedule 0 0 0 1 1 *\nif then fi (\n")     # changed, and now broken
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
        stack = stack.reopen()
        assert checked == ["job1.sh"] and stack.scripts.count() == 2
    finally:
        stack.close()


# -- listing ---------------------------------------------------------------------------------------------------
def test_a_listed_item_follows_its_schedule_through_runs_and_toggles(tmp_path):
    with Stack(tmp_path, FakeClock(T0)) as stack:
        sid = stack.http.create({"cron": "* * * * * *", "request": {"url": "http://127.0.0.1:9/x"}})["id"]

        def item() -> dict:
            listed = stack.http.list(1, 20)
            assert stack.app.get("/api/v1/curl/schedule?page=1&limit=20", headers=ADMIN).json == listed
            return listed["items"][0]
        before = item()
        assert (before["last_run"], before["next_run"]) == (None, utc_iso(T0 + 1))
        stack.pass_seconds(1)
        after = item()
        assert (after["last_run"], after["next_run"]) == (utc_iso(T0 + 1), utc_iso(T0 + 2))
        stack.http.toggle(sid, {"enabled": False})
        assert (item()["enabled"], item()["next_run"]) == (False, None)
        mine = item()
        mine["request"]["url"] = "changed by a caller"
        assert item()["request"]["url"] == "http://127.0.0.1:9/x"     # every caller gets its own copy


def test_listing_many_schedules_pages_through_each_one_once_newest_first(tmp_path):
    with Stack(tmp_path, FakeClock(T0)) as stack:
        created = []
        for n in range(1_500):
            if n % 100 == 0:
                stack.clock.advance(1)                  # some share a creation second: then by arrival
            created.append(stack.http.create({"cron": "0 0 0 1 1 *", "request": {"url": f"http://127.0.0.1:9/{n}"},
                                              "enabled": n % 7 != 0})["id"])
        newest_first = list(reversed(created))
        pages = [stack.http.list(page, 100) for page in range(1, 17)]
        assert [item["id"] for page in pages for item in page["items"]] == newest_first
        assert pages[-1]["items"] == [] and all(page["meta"]["total"] == 1_500 for page in pages)
        everything = stack.app.get("/api/v1/curl/schedule", headers=ADMIN).json
        assert [item["id"] for item in everything["items"]] == newest_first
        assert everything["meta"] == {"page": 1, "limit": 1_500, "total": 1_500}
        assert [item["next_run"] is None for item in everything["items"]] == \
            [n % 7 == 0 for n in range(1_499, -1, -1)]
