"""The code paths added for scale (issue 6), held to the behaviour of the simple versions they replace:
block-wise backwards reading, the start-up scan of the runs log, history kept as trimmed lines, the shared
deadline watcher of HTTP runs, address literals resolved without a thread, the persisted preflight cache,
and listing from a maintained order."""

from __future__ import annotations

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
from schedserver import (HISTORY_SIZE, CurlSchedule, CurlSchedules, DeadlineWatcher, JournalStore, NdjsonLog,
                         Scheduler, _chunks_backwards, _history_entry, _history_line, _lines_backwards,
                         _slot_and_start, parse_iso, utc_iso)

DAY = 86400.0
T0 = 1_760_000_000.0


# -- reading backwards -----------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=60),
       torn=st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), block=st.integers(1, 64),
       needle=st.sampled_from([None, b"a", b"ab", b"\x00"]))
def test_block_wise_backwards_reading_equals_reading_the_whole_file(tmp_path_factory, lines, torn, block, needle):
    path = tmp_path_factory.mktemp("log") / "f.log"
    path.write_bytes(b"".join(line + b"\n" for line in lines) + torn)
    expected = [line for line in reversed(lines) if line.strip() and (needle is None or needle in line)]

    assert list(_lines_backwards(str(path), block=block, contains=needle)) == expected
    joined = [line for chunk in reversed(list(_chunks_backwards(str(path), block=block)))
              for line in chunk.split(b"\n")]
    assert [line for line in joined if line.strip()] == [line for line in lines if line.strip()]


def test_a_missing_file_reads_as_empty(tmp_path):
    assert list(_lines_backwards(str(tmp_path / "absent.log"))) == []
    assert list(_chunks_backwards(str(tmp_path / "absent.log"))) == []


# -- history lines -------------------------------------------------------------------------------------------
RECORDS = [
    {"ts": "2025-01-10T12:00:00.004Z", "schedule_id": str(uuid.UUID(int=1)), "run_id": "r1",
     "scheduled_at": "2025-01-10T12:00:00.000Z", "started_at": "2025-01-10T12:00:00.004Z", "status": "ok",
     "status_code": 200, "duration_ms": 12, "error": None, "trigger": "cron"},
    {"ts": "2025-01-10T12:00:01.000Z", "schedule_id": str(uuid.UUID(int=2)), "run_id": "r2",
     "scheduled_at": "2025-01-10T12:00:00.000Z", "started_at": None, "status": "missed", "status_code": None,
     "duration_ms": 0, "error": 'missed 3 runs "ts":"x", from here', "trigger": "cron", "count": 3,
     "last_scheduled_at": "2025-01-10T12:00:02.000Z"},
    {"ts": "2025-01-10T12:00:01.000Z", "schedule_id": str(uuid.UUID(int=3)), "run_id": "r3",
     "scheduled_at": "2025-01-10T12:00:00.000Z", "started_at": "2025-01-10T12:00:00.100Z", "status": "error",
     "status_code": None, "duration_ms": 30000, "error": "timed out after 30 s ,\"trigger\":\"cron\"}",
     "trigger": "cron"},
]


@pytest.mark.parametrize("record", RECORDS, ids=["ok", "missed", "tricky-error"])
def test_a_trimmed_history_line_shows_exactly_what_the_whole_record_shows(record):
    line = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    trimmed = _history_line(line)

    assert _history_entry(trimmed) == _history_entry(record)
    assert b"schedule_id" not in trimmed and len(trimmed) < len(line)


LAYOUT_RECORD = dict(RECORDS[0], run_id=str(uuid.UUID(int=7)))     # the layout _record_result writes


@pytest.mark.parametrize("record", RECORDS + [LAYOUT_RECORD], ids=["ok", "missed", "tricky-error", "layout"])
def test_the_slot_and_start_cut_from_a_line_are_what_its_record_holds(record):
    line = json.dumps(record, separators=(",", ":")).encode()
    slot = record.get("last_scheduled_at") or record["scheduled_at"]

    assert _slot_and_start(line) == (parse_iso(slot), parse_iso(record["started_at"]) if record["started_at"] else None)
    assert _slot_and_start(b'{"ts":"torn') is None
    if record is LAYOUT_RECORD:                 # torn in the middle of a file, past the fields cut by position
        assert _slot_and_start(line[:230]) is None


def test_a_malformed_history_line_is_left_out_not_an_error():
    assert _history_entry(b'{"run_id":"x",') is None
    assert _history_entry(b"[1, 2]") is None


# -- the start-up scan -----------------------------------------------------------------------------------------
def make_service(tmp_path: Path, now: float) -> CurlSchedules:
    scheduler = Scheduler(misfire_grace=30, clock=lambda: now, submit=lambda fn, *args: None)
    return CurlSchedules(JournalStore(str(tmp_path / "curl-schedules.json")),
                         NdjsonLog(str(tmp_path / "curl-runs.log"), 1 << 30, 3), scheduler, None,
                         clock=lambda: now)


def write_store(tmp_path: Path, created: list[float]) -> list[str]:
    definitions = []
    for n, at in enumerate(created):
        values = schedserver.validate_create({"cron": "0 0 0 1 1 *", "request": {"url": f"http://127.0.0.1:9/{n}"}},
                                             "UTC")
        definitions.append(CurlSchedule(id=str(uuid.UUID(int=n + 1)), created_at=at, enabled_at=at,
                                        **values).definition())
    (tmp_path / "curl-schedules.json").write_text(json.dumps({"version": 1, "schedules": definitions}))
    return [d["id"] for d in definitions]


def run_line(schedule_id: str, at: float, n: int, status: str = "ok") -> bytes:
    record = {"ts": utc_iso(at, ms=True), "schedule_id": schedule_id, "run_id": f"run-{n}",
              "scheduled_at": utc_iso(at, ms=True), "started_at": utc_iso(at, ms=True) if status == "ok" else None,
              "status": status, "status_code": 200 if status == "ok" else None, "duration_ms": 3, "error": None,
              "trigger": "cron"}
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def test_start_up_rebuilds_the_newest_history_and_last_run_of_every_schedule_from_a_big_log(tmp_path):
    ids = write_store(tmp_path, [T0 - 10 * DAY] * 3)
    lines = [run_line(ids[n % 2], T0 - 5 * DAY + n, n) for n in range(30_000)]     # ids[2] never ran
    lines.append(run_line(ids[0], T0 - 1, 99_999, status="skipped"))
    (tmp_path / "curl-runs.log").write_bytes(b"".join(lines) + b'{"ts":"torn')
    service = make_service(tmp_path, T0)
    service.load()

    first = service.get(ids[0])
    assert [h["run_id"] for h in first["history"]] == ["run-99999"] + [f"run-{n}" for n in
                                                                        range(29_998, 29_998 - 2 * 19, -2)]
    assert first["last_run"] == utc_iso(T0 - 5 * DAY + 29_998)        # the newest run that started
    assert len(service.get(ids[1])["history"]) == HISTORY_SIZE
    assert service.get(ids[2])["history"] == [] and service.get(ids[2])["last_run"] is None


def test_the_start_up_scan_stops_at_blocks_older_than_every_schedule_still_wanted(tmp_path, monkeypatch):
    ids = write_store(tmp_path, [T0 - 10 * DAY, T0 - DAY])
    old = [run_line(ids[0], T0 - 9 * DAY + n, n) for n in range(20_000)]          # 9 days ago: before ids[1]
    new = [run_line(ids[0], T0 - 3600 + n, 50_000 + n) for n in range(100)]
    (tmp_path / "curl-runs.log").write_bytes(b"".join(old + new))
    read = counting_chunks(monkeypatch)          # in small blocks, so the count tells
    service = make_service(tmp_path, T0)
    service.load()

    assert service.get(ids[1])["history"] == []
    assert len(service.get(ids[0])["history"]) == HISTORY_SIZE
    assert 0 < sum(read) < len(b"".join(old)) / 4       # it did not read the whole old part for ids[1]


def child_scan_answer(monkeypatch, paths: list[Path], child: str | None = None) -> tuple[int, set | None]:
    """LogIdScan's child run to its end on `paths` (with `child` as its code, if given): (exit status, result())."""
    monkeypatch.setattr(schedserver.LogIdScan, "MIN_BYTES", 0)
    if child is not None:
        monkeypatch.setattr(schedserver.LogIdScan, "CHILD", child)
    scan = schedserver.LogIdScan.start([str(path) for path in paths])
    try:
        scan._proc.wait(timeout=30)
        return scan._proc.returncode, scan.result()
    finally:
        scan.close()


def test_the_child_scan_finds_every_id_the_log_files_hold(tmp_path, monkeypatch):
    ids = [str(uuid.UUID(int=n)) for n in range(1, 6)]
    (tmp_path / "runs.log").write_bytes(b"".join(run_line(ids[n % 2], T0 + n, n) for n in range(3000))
                                        + run_line(ids[4], T0, 9).rstrip(b"\n"))      # torn, still counted
    (tmp_path / "runs.log.1").write_bytes(run_line(ids[2], T0, 1) + b'{"schedule_id": "' + ids[3].encode() + b'"}\n')
    paths = [tmp_path / name for name in ("runs.log", "runs.log.1", "runs.log.2")]
    assert child_scan_answer(monkeypatch, paths) == (0, {i.encode() for i in ids})


def test_a_child_that_ends_well_without_the_whole_answer_counts_as_no_answer(tmp_path, monkeypatch):
    assert child_scan_answer(monkeypatch, [tmp_path / "absent.log"], "print('not python, or cut short')") == (0, None)


def test_closing_a_child_scan_still_running_stops_it(tmp_path, monkeypatch):
    monkeypatch.setattr(schedserver.LogIdScan, "MIN_BYTES", 0)
    monkeypatch.setattr(schedserver.LogIdScan, "CHILD", "import time; time.sleep(60)")
    scan = schedserver.LogIdScan.start([str(tmp_path / "absent.log")])
    assert scan.result() is None
    scan.close()
    assert scan._proc.returncode is not None


def test_a_log_below_the_threshold_or_a_child_that_cannot_start_gets_no_child_scan(tmp_path, monkeypatch):
    (tmp_path / "runs.log").write_bytes(run_line(str(uuid.UUID(int=1)), T0, 1))
    assert schedserver.LogIdScan.start([str(tmp_path / "runs.log")]) is None
    monkeypatch.setattr(schedserver.LogIdScan, "MIN_BYTES", 0)
    monkeypatch.setattr(schedserver.sys, "executable", str(tmp_path / "no-such-python"))
    assert schedserver.LogIdScan.start([str(tmp_path / "runs.log")]) is None
    monkeypatch.undo()
    monkeypatch.setattr(schedserver.LogIdScan, "MIN_BYTES", 0)
    monkeypatch.setattr(schedserver.tempfile, "TemporaryFile", lambda: (_ for _ in ()).throw(OSError(28, "No space")))
    assert schedserver.LogIdScan.start([str(tmp_path / "runs.log")]) is None


def start_up_reads(tmp_path: Path, monkeypatch, child: str) -> tuple[CurlSchedules, list[str], int]:
    """A start with no checkpoint on a log where ids[1] never ran; `child` is how the id scan goes: "done"
    (answered before the scan needs it), "failed", or "none" (no child at all). Answers the bytes read."""
    ids = write_store(tmp_path, [T0 - 10 * DAY] * 2)
    (tmp_path / "curl-runs.log").write_bytes(b"".join(run_line(ids[0], T0 - 5 * DAY + n, n) for n in range(20_000)))
    monkeypatch.setattr(schedserver.LogIdScan, "MIN_BYTES", 0 if child != "none" else 1 << 60)
    if child == "failed":
        monkeypatch.setattr(schedserver.LogIdScan, "CHILD", "import sys; sys.exit(3)")
    original_result = schedserver.LogIdScan.result
    monkeypatch.setattr(schedserver.LogIdScan, "result", lambda self: self._proc.wait(timeout=30) is None
                        or original_result(self))
    read = counting_chunks(monkeypatch)
    service = make_service(tmp_path, T0)
    service.load()
    return service, ids, sum(read)


@pytest.mark.parametrize("child", ["done", "failed", "none"])
def test_with_the_child_scans_answer_start_up_stops_reading_once_only_never_ran_schedules_are_left(
        tmp_path, monkeypatch, child):
    service, ids, read = start_up_reads(tmp_path, monkeypatch, child)
    size = (tmp_path / "curl-runs.log").stat().st_size

    assert [h["run_id"] for h in service.get(ids[0])["history"]] == [f"run-{n}" for n in range(19_999, 19_979, -1)]
    assert service.get(ids[1])["history"] == [] and service.get(ids[1])["last_run"] is None
    if child == "done":
        assert 0 < read < size / 10
    else:
        assert read >= size - 1024         # every line read here


# -- HTTP runs -------------------------------------------------------------------------------------------------
def test_the_deadline_watcher_runs_actions_in_deadline_order_and_never_a_cancelled_one():
    watcher = DeadlineWatcher()
    done: list[str] = []
    finished = threading.Event()
    now = time.monotonic()
    watcher.add(now + 0.20, lambda: (done.append("late"), finished.set()))
    cancelled = watcher.add(now + 0.05, lambda: done.append("cancelled"))
    watcher.add(now + 0.10, lambda: done.append("early"))
    watcher.add(now + 0.01, lambda: 1 / 0)             # a failing action is logged; the watcher goes on
    watcher.cancel(cancelled)

    assert finished.wait(5)
    assert done == ["early", "late"]


def test_an_address_literal_resolves_without_a_lookup_thread(monkeypatch):
    started = []
    monkeypatch.setattr(schedserver.threading, "Thread", lambda *a, **k: started.append(k) or threading.Thread(*a, **k))
    assert schedserver.resolve("127.0.0.1", 80, 1.0) == ["127.0.0.1"]
    assert schedserver.resolve("::1", 80, 1.0) == ["::1"]
    assert started == []


# -- scripts: the preflight cache survives a restart -----------------------------------------------------------
def test_a_restart_does_not_rerun_the_syntax_check_of_unchanged_scripts(tmp_path, monkeypatch):
    scripts_dir, data_dir = tmp_path / "scripts", tmp_path / "data"
    scripts_dir.mkdir()
    data_dir.mkdir()
    for n in range(3):
        path = scripts_dir / f"job{n}.sh"
        path.write_text(f"#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho {n}\n")
        path.chmod(0o755)
    (scripts_dir / "broken.sh").write_text("#!/bin/sh\n# @schedule 0 0 0 1 1 *\nif then fi (\n")
    (scripts_dir / "broken.sh").chmod(0o755)
    checked: list[str] = []
    original = schedserver.ScriptSchedules._run_preflight
    monkeypatch.setattr(schedserver.ScriptSchedules, "_run_preflight",
                        lambda self, path, interpreter=None: checked.append(os.path.basename(path))
                        or original(self, path, interpreter))

    def start() -> schedserver.ScriptSchedules:
        scripts = schedserver.ScriptSchedules(
            str(scripts_dir), NdjsonLog(str(data_dir / "fires.log"), 1 << 20, 3),
            Scheduler(submit=lambda *a: None), schedserver.ScriptRunner())
        scripts.load()
        return scripts

    first = start()
    assert sorted(checked) == ["broken.sh", "job0.sh", "job1.sh", "job2.sh"]
    assert first.count() == 3
    checked.clear()
    second = start()                                  # a restart: nothing changed, nothing checked again
    assert checked == [] and second.count() == 3
    assert os.stat(data_dir / "exec-registered.json").st_mode & 0o077 == 0
    path = scripts_dir / "job1.sh"
    path.write_text("#!/bin/sh\n# @schedule 0 0 0 1 1 *\nif then fi (\n")     # changed, and now broken
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    checked.clear()
    third = start()
    assert checked == ["job1.sh"] and third.count() == 2


# -- listing from cached items -------------------------------------------------------------------------------
def test_a_listed_item_follows_its_schedule_through_runs_and_toggles(tmp_path):
    clock = {"now": T0}
    scheduler = Scheduler(misfire_grace=30, clock=lambda: clock["now"], submit=lambda fn, *args: fn(*args))

    class Runner:
        def run(self, spec, headers):
            return schedserver.RunResult("ok", clock["now"], 5, 200, None)
    service = CurlSchedules(JournalStore(str(tmp_path / "curl-schedules.json")),
                            NdjsonLog(str(tmp_path / "curl-runs.log"), 1 << 20, 3), scheduler, Runner(),
                            clock=lambda: clock["now"])
    sid = service.create({"cron": "* * * * * *", "request": {"url": "http://127.0.0.1:9/x"}})["id"]

    def item() -> dict:
        listed = json.loads(service.list_json(1, 20))
        assert listed == service.list(1, 20)
        return listed["items"][0]
    before = item()
    assert (before["last_run"], before["next_run"]) == (None, utc_iso(T0 + 1))
    clock["now"] = T0 + 1
    scheduler.tick(T0 + 1)
    after = item()
    assert (after["last_run"], after["next_run"]) == (utc_iso(T0 + 1), utc_iso(T0 + 2))
    service.toggle(sid, {"enabled": False})
    assert (item()["enabled"], item()["next_run"]) == (False, None)
    assert item() is not item()         # every caller gets its own copy


# -- the run-state checkpoint ----------------------------------------------------------------------------------
def counting_chunks(monkeypatch) -> list[int]:
    read: list[int] = []
    original = schedserver._chunks_backwards_at

    def counting(path, block=64 * 1024):
        for offset, chunk in original(path, block=64 * 1024):
            read.append(len(chunk))
            yield offset, chunk
    monkeypatch.setattr(schedserver, "_chunks_backwards_at", counting)
    return read


def test_a_checkpoint_from_a_clean_stop_spares_the_next_start_the_whole_log_and_changes_nothing(tmp_path,
                                                                                               monkeypatch):
    ids = write_store(tmp_path, [T0 - 30 * DAY] * 3)         # old: the creation cut-off does not help
    old = [run_line(ids[0], T0 - 20 * DAY + n, n) for n in range(20_000)]
    (tmp_path / "curl-runs.log").write_bytes(b"".join(old))
    first = make_service(tmp_path, T0)
    first.load()
    expected = {sid: first.get(sid) for sid in ids}
    first.write_checkpoint()                                  # ids[1] and ids[2] never ran
    with open(tmp_path / "curl-runs.log", "ab") as f:        # after the stop: ids[2] runs once
        f.write(run_line(ids[2], T0 - 10, 77_777))
    read = counting_chunks(monkeypatch)
    second = make_service(tmp_path, T0)
    second.load()

    assert sum(read) < len(b"".join(old)) / 4                 # the old part was not read for ids[1], ids[2]
    assert second.get(ids[0]) == expected[ids[0]]
    assert second.get(ids[1])["history"] == [] and second.get(ids[1])["last_run"] is None
    assert [h["run_id"] for h in second.get(ids[2])["history"]] == ["run-77777"]
    assert not (tmp_path / "curl-runs.checkpoint.json").exists()      # consumed: a crash later reads it all


@pytest.mark.parametrize("change", ["rotated", "truncated", "garbage"])
def test_a_checkpoint_that_does_not_fit_the_log_is_ignored_and_the_whole_log_is_read(tmp_path, monkeypatch, change):
    ids = write_store(tmp_path, [T0 - 30 * DAY] * 2)
    lines = [run_line(ids[0], T0 - 20 * DAY + n, n) for n in range(5_000)]
    (tmp_path / "curl-runs.log").write_bytes(b"".join(lines))
    first = make_service(tmp_path, T0)
    first.load()
    first.write_checkpoint()                                  # says: ids[1] never ran
    log_path, checkpoint = tmp_path / "curl-runs.log", tmp_path / "curl-runs.checkpoint.json"
    if change == "rotated":             # the log moved to .1 and was replaced, by one that says ids[1] did run
        os.replace(log_path, tmp_path / "curl-runs.log.1")
        (tmp_path / "curl-runs.log.1").write_bytes(run_line(ids[1], T0 - 20 * DAY - 1, 42) + b"".join(lines))
        log_path.write_bytes(b"".join(lines[:3000]))
    elif change == "truncated":
        log_path.write_bytes(b"".join(lines[:10]))
    else:
        checkpoint.write_text("{not json")
    second = make_service(tmp_path, T0)
    second.load()

    if change == "rotated":                                   # the checkpoint would have hidden this run
        assert [h["run_id"] for h in second.get(ids[1])["history"]] == ["run-42"]
    assert not checkpoint.exists()
