"""Storage: atomic write, the JSON store, the NDJSON runs log, state rebuilt after a restart, the data-dir lock."""

import os
import stat
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

import schedserver
from schedserver import (HISTORY_SIZE, CurlSchedules, DataDirLock, JournalStore, JsonStore, NdjsonLog, RunResult, Scheduler,
                         StartupError, atomic_write)
from fakes import FakeClock

ROOT = Path(schedserver.__file__).resolve().parent
NOW = "2025-01-10T12:00:00Z"


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(epoch: float | None, ms: bool = False) -> str | None:
    return schedserver.utc_iso(epoch, ms=ms)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


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
# JsonStore
###############################################################################

def test_the_json_store_round_trips_a_document(tmp_path):
    path = str(tmp_path / "curl-schedules.json")
    document = {"version": 1, "schedules": [{"id": "x", "headers": {"Authorization": "Bearer s3cret"}, "n": 1.5}]}
    JsonStore(path).save(document)
    assert JsonStore(path).load(None) == document
    assert mode_of(path) == 0o600


def test_the_json_store_gives_the_default_when_there_is_no_file(tmp_path):
    assert JsonStore(str(tmp_path / "none.json")).load({"version": 1, "schedules": []}) == {
        "version": 1, "schedules": []}


def test_a_second_save_replaces_the_first_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "curl-schedules.json"
    store = JsonStore(str(path))
    store.save({"n": 1})
    store.save({"n": 2})
    assert JsonStore(str(path)).load(None) == {"n": 2}
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


def test_a_corrupt_store_refuses_to_load_and_is_left_as_it_is(tmp_path):
    path = tmp_path / "curl-schedules.json"
    path.write_bytes(b'{"version": 1, "schedules": [')
    before = os.stat(path)
    with pytest.raises(StartupError) as caught:
        JsonStore(str(path)).load({"version": 1, "schedules": []})
    assert str(path) in str(caught.value)
    assert "corrupt JSON" in str(caught.value)
    assert path.read_bytes() == b'{"version": 1, "schedules": ['
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns


def test_a_corrupt_store_stops_the_service_from_loading_and_is_not_overwritten(tmp_path):
    path = tmp_path / "curl-schedules.json"
    path.write_bytes(b"\x00\x01 not json")
    curl = CurlSchedules(JournalStore(str(path)), NdjsonLog(str(tmp_path / "curl-runs.log"), 1 << 20, 2),
                         Scheduler(submit=lambda fn, *args: None), runner=None)
    with pytest.raises(StartupError):
        curl.load()
    assert path.read_bytes() == b"\x00\x01 not json"


###############################################################################
# NdjsonLog
###############################################################################

def numbers(log: NdjsonLog, **kwargs) -> list[int]:
    return [record["n"] for record in log.read_newest(**kwargs)]


def test_the_log_reads_back_newest_first_one_line_per_record(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 1 << 20, 3)
    for n in range(5):
        log.append({"n": n, "text": "line\nbreak ü"})
    assert numbers(log) == [4, 3, 2, 1, 0]
    assert len(path.read_bytes().splitlines()) == 5
    assert mode_of(path) == 0o600


def test_an_empty_or_missing_log_reads_as_nothing(tmp_path):
    log = NdjsonLog(str(tmp_path / "runs.log"), 1 << 20, 3)
    assert numbers(log) == []
    (tmp_path / "runs.log").write_bytes(b"")
    assert numbers(log) == []


def test_rotation_by_size_keeps_every_line_across_the_files(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 200, 100)
    for n in range(60):
        log.append({"n": n, "pad": "x" * 10})
    rotated = sorted(name for name in os.listdir(tmp_path) if name.startswith("runs.log."))
    assert len(rotated) > 3
    for name in os.listdir(tmp_path):
        if name.startswith("runs.log") and not name.endswith(".lock"):
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
    for n in range(3000):
        log.append({"n": n, "pad": "y" * (n % 97)})         # about 200 KiB: several 64 KiB blocks
    records = list(log.read_newest())
    assert [r["n"] for r in records] == list(range(2999, -1, -1))
    assert all(r["pad"] == "y" * (r["n"] % 97) for r in records)


def test_a_torn_final_line_is_skipped_and_the_next_append_starts_on_a_new_line(tmp_path):
    path = tmp_path / "runs.log"
    log = NdjsonLog(str(path), 1 << 20, 2)
    for n in range(3):
        log.append({"n": n})
    with open(path, "ab") as f:
        f.write(b'{"n": 99, "sta')                     # the process died mid-append
    assert numbers(log) == [2, 1, 0]
    log.append({"n": 3})
    assert path.read_bytes().endswith(b'{"n": 99, "sta\n{"n":3}\n')
    assert numbers(log) == [3, 2, 1, 0]


@pytest.mark.parametrize("torn", [b'{"n": 0, "sta', b'{"n": 0, "pad": "' + b"z" * 70_000],
                         ids=["short", "longer-than-a-read-block"])
def test_a_log_holding_only_a_torn_line_reads_as_empty(tmp_path, torn):
    path = tmp_path / "runs.log"
    path.write_bytes(torn)                              # the first append ever was cut short
    log = NdjsonLog(str(path), 1 << 20, 2)
    assert numbers(log) == []
    log.append({"n": 1})
    assert numbers(log) == [1]


def test_a_malformed_line_in_the_middle_is_skipped_with_one_warning(tmp_path, caplog):
    path = tmp_path / "runs.log"
    path.write_bytes(b'{"n": 0}\nnot json at all\n{"n": 1}\n[1, 2]\n"a string"\n{"n": 2}\n')
    log = NdjsonLog(str(path), 1 << 20, 2)
    assert numbers(log) == [2, 1, 0]
    assert numbers(log) == [2, 1, 0]
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
# Run state survives a restart
###############################################################################

class ScriptedRunner:
    """Answers each scheduled request with the next canned (status, status_code, error)."""

    def __init__(self, clock, answers):
        self.clock = clock
        self.answers = list(answers)
        self.calls = 0

    def run(self, spec, extra_headers):
        self.calls += 1
        status, code, error = self.answers.pop(0)
        return RunResult(status, self.clock(), 40, code, error)


def start_service(data_dir: Path, clock, runner) -> CurlSchedules:
    """What Server.start does for the HTTP schedules: fresh objects on the same files, then load()."""
    scheduler = Scheduler(misfire_grace=30, clock=clock, submit=lambda fn, *args: fn(*args))
    curl = CurlSchedules(JournalStore(str(data_dir / "curl-schedules.json")),
                         NdjsonLog(str(data_dir / "curl-runs.log"), 1 << 20, 3),
                         scheduler, runner, clock=clock)
    curl.load()
    return curl


def tick_at(curl: CurlSchedules, text: str) -> None:
    curl.clock.now = ts(text)
    curl.scheduler.tick(curl.clock())


def test_last_run_status_and_history_are_rebuilt_from_the_runs_log_after_a_restart(tmp_path):
    clock = FakeClock(NOW)
    first = start_service(tmp_path, clock, ScriptedRunner(clock, [("ok", 200, None),
                                                                  ("error", 503, "HTTP 503 Service Unavailable")]))
    sid = first.create({"cron": "0 * * * * *", "request": {"url": "http://127.0.0.1:9/hook"},
                        "name": "ping"})["id"]
    tick_at(first, "2025-01-10T12:01:00Z")
    tick_at(first, "2025-01-10T12:02:00Z")
    before = first.get(sid)

    clock.now = ts("2025-01-10T12:02:10Z")             # "restart": new objects, same files
    second = start_service(tmp_path, clock, ScriptedRunner(clock, [("ok", 200, None)]))
    after = second.get(sid)
    assert after == before
    assert after["last_run"] == "2025-01-10T12:02:00Z"
    assert after["last_status"] == "error"
    assert [(h["scheduled_at"], h["status"], h["status_code"]) for h in after["history"]] == [
        ("2025-01-10T12:02:00Z", "error", 503), ("2025-01-10T12:01:00Z", "ok", 200)]
    assert after["next_run"] == "2025-01-10T12:03:00Z"
    assert second.list()["items"][0]["name"] == "ping"


def test_runs_missed_while_the_server_was_down_become_one_missed_record_after_a_restart(tmp_path):
    clock = FakeClock(NOW)
    first = start_service(tmp_path, clock, ScriptedRunner(clock, [("ok", 200, None)]))
    sid = first.create({"cron": "0 * * * * *", "request": {"url": "http://127.0.0.1:9/hook"}})["id"]
    tick_at(first, "2025-01-10T12:01:00Z")

    clock.now = ts("2025-01-10T15:00:45Z")             # down from just after 12:01 until 15:00:45
    runner = ScriptedRunner(clock, [])
    second = start_service(tmp_path, clock, runner)
    tick_at(second, "2025-01-10T15:00:45Z")
    assert runner.calls == 0
    newest = second.get(sid)["history"][0]
    assert (newest["status"], newest["scheduled_at"], newest["count"]) == ("missed", "2025-01-10T12:02:00Z", 179)
    assert second.get(sid)["next_run"] == "2025-01-10T15:01:00Z"


def test_history_after_a_restart_is_the_newest_runs_even_when_they_were_skipped(tmp_path):
    clock = FakeClock(NOW)
    first = start_service(tmp_path, clock, ScriptedRunner(clock, []))
    sid = first.create({"cron": "0 * * * * *", "request": {"url": "http://127.0.0.1:9/hook"}})["id"]
    runs = NdjsonLog(str(tmp_path / "curl-runs.log"), 1 << 20, 3)
    slots = [ts("2025-01-10T12:01:00Z") + 60 * n for n in range(2 * HISTORY_SIZE + 5)]
    for n, slot in enumerate(slots):
        ran = n < HISTORY_SIZE                          # the older runs ran; the newest 25 were all skipped
        runs.append({"ts": iso(slot, ms=True), "schedule_id": sid, "run_id": f"run-{n}",
                     "scheduled_at": iso(slot, ms=True), "started_at": iso(slot, ms=True) if ran else None,
                     "status": "ok" if ran else "skipped", "status_code": 200 if ran else None,
                     "duration_ms": 5 if ran else 0, "error": None if ran else "previous run still in progress",
                     "trigger": "cron"})
    clock.now = slots[-1] + 10
    history = start_service(tmp_path, clock, ScriptedRunner(clock, [])).get(sid)["history"]
    assert [h["run_id"] for h in history] == [f"run-{n}" for n in range(len(slots) - 1,
                                                                         len(slots) - 1 - HISTORY_SIZE, -1)]


###############################################################################
# One server per data dir
###############################################################################

ACQUIRE = """
    import sys
    import schedserver
    lock = schedserver.DataDirLock(sys.argv[1])
    try:
        lock.acquire()
    except schedserver.StartupError as e:
        print(e)
        sys.exit(3)
    print("acquired")
"""


def test_a_second_process_cannot_take_a_data_dir_that_is_in_use(tmp_path):
    lock = DataDirLock(str(tmp_path))
    lock.acquire()
    try:
        refused = run_python(ACQUIRE, str(tmp_path))
    finally:
        lock.release()
    assert refused.returncode == 3, refused.stderr
    assert refused.stdout.strip() == f"data dir {tmp_path} is in use by another schedserver process"

    accepted = run_python(ACQUIRE, str(tmp_path))      # released: free again
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == "acquired"
