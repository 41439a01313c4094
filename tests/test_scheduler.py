"""The scheduler and the run path behind it, driven by a fake clock.

`Scheduler.tick(now)` is pure: it answers what is due (Dues) and never starts anything, so most tests here
tick it directly and look at the Dues. What a Due turns into (a run, a `skipped` or `missed` record) is the
business of `Runs` and the `Recorder`; those tests use the in-process harness (tests/harness.py), whose
worker pool runs only when told and whose HTTP runner answers at once (or holds runs in flight).

Nothing here sleeps to test logic: the clock is a number the test moves.
"""

import json
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from schedserver import (MISSED_SCAN_LIMIT, DeadlineWatcher, Due, EgressPolicy, HttpRunner, HttpTarget, Job,
                         Scheduler, parse_cron)
from e2e_helpers import TargetServer
from fakes import FakeClock
from harness import ScriptedHttpRunner, Stack

UTC = ZoneInfo("UTC")
NOW = "2025-01-10T12:00:00Z"
GRACE = 30
HOOK = "http://127.0.0.1:9/hook"


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


###############################################################################
# The bare scheduler
###############################################################################

class CountingSpec:
    """A cron expression that counts how often the scheduler asks it for a fire instant."""

    def __init__(self, expression: str):
        self._spec = parse_cron(expression)
        self.expression = self._spec.expression
        self.fields = self._spec.fields
        self.calls = 0

    @property
    def wildcard_time(self):
        return self._spec.wildcard_time

    def next_after(self, after, tz):
        return next(self.iter_after(after, tz), None)

    def iter_after(self, after, tz):
        for instant in self._spec.iter_after(after, tz):
            self.calls += 1
            yield instant


def events(dues: list[Due]) -> list[tuple]:
    """Dues as what becomes of them, in order: (label, "missed", first slot, count), (label, "fire", slot)."""
    found = []
    for due in dues:
        if due.missed:
            found.append((due.job.ref, "missed", iso(due.first_missed), due.missed))
        if due.slot is not None:
            found.append((due.job.ref, "fire", iso(due.slot)))
    return found


class Ticker:
    """A scheduler on a fake clock; everything its ticks found lands in `events`."""

    def __init__(self, grace: float = GRACE, start: str = NOW):
        self.clock = FakeClock(start)
        self.scheduler = Scheduler(misfire_grace=grace, clock=self.clock)
        self.events: list[tuple] = []
        self.dues: list[Due] = []

    @staticmethod
    def job(key: str, cron, label: str | None = None) -> Job:
        spec = parse_cron(cron) if isinstance(cron, str) else cron
        return Job(key, "http", label or key, spec, UTC, HttpTarget({"url": HOOK}))

    def add(self, key: str, cron, label: str | None = None) -> Job:
        job = self.job(key, cron, label)
        self.scheduler.add(job, self.clock())
        return job

    def tick(self, now: float) -> list[Due]:
        self.clock.now = now
        dues = self.scheduler.tick(now)
        self.dues += dues
        self.events += events(dues)
        return dues

    def tick_at(self, text: str) -> list[Due]:
        return self.tick(ts(text))

    def next_at(self, key: str) -> str | None:
        return iso(self.scheduler.next_at(key))


# -- due, not due, idle --------------------------------------------------------------------------------------

def test_a_due_job_fires_once_at_its_slot():
    t = Ticker()
    t.add("a", "0 * * * * *")
    assert t.next_at("a") == "2025-01-10T12:01:00Z"
    t.tick_at("2025-01-10T12:01:00Z")
    t.tick_at("2025-01-10T12:01:00Z")
    t.tick_at("2025-01-10T12:01:00.900Z")
    assert t.events == [("a", "fire", "2025-01-10T12:01:00Z")]
    assert t.next_at("a") == "2025-01-10T12:02:00Z"


def test_a_fire_reached_a_little_late_still_runs_for_its_slot():
    t = Ticker()
    t.add("a", "0 * * * * *")
    t.tick_at("2025-01-10T12:01:20Z")
    assert t.events == [("a", "fire", "2025-01-10T12:01:00Z")]
    assert t.next_at("a") == "2025-01-10T12:02:00Z"


def test_a_job_that_is_not_due_does_nothing():
    t = Ticker()
    t.add("a", "0 * * * * *")
    assert t.tick(ts("2025-01-10T12:01:00Z") - 0.001) == []
    assert t.next_at("a") == "2025-01-10T12:01:00Z"


def test_only_the_job_that_is_due_fires():
    t = Ticker()
    t.add("minutely", "0 * * * * *")
    t.add("hourly", "@hourly")
    t.tick_at("2025-01-10T12:01:00Z")
    assert t.events == [("minutely", "fire", "2025-01-10T12:01:00Z")]
    assert t.next_at("hourly") == "2025-01-10T13:00:00Z"


def test_idle_ticks_find_nothing_and_never_evaluate_a_schedule():
    t = Ticker()
    specs = [CountingSpec("@yearly") for _ in range(100)]
    for n, spec in enumerate(specs):
        t.add(f"job-{n}", spec)
    assert all(spec.calls == 1 for spec in specs)         # once, to place it in the queue
    for second in range(3600):
        assert t.scheduler.tick(ts(NOW) + second) == []
    assert sum(spec.calls for spec in specs) == 100


def test_a_tick_with_no_jobs_is_harmless():
    t = Ticker()
    assert t.tick_at("2025-01-10T12:00:01Z") == []
    assert t.scheduler.last_tick == ts("2025-01-10T12:00:01Z")


def test_a_tick_hands_over_the_jobs_due_in_slot_order_and_jobs_of_one_slot_in_registration_order():
    t = Ticker()
    t.add("later", "2 * * * * *")
    t.add("b", "1 * * * * *")
    t.add("a", "* * * * * *")
    t.add("not-yet", "5 * * * * *")
    t.tick_at("2025-01-10T12:00:01Z")
    assert t.events == [("b", "fire", "2025-01-10T12:00:01Z"), ("a", "fire", "2025-01-10T12:00:01Z")]
    fresh = Ticker()
    for key, cron in (("at-2", "2 * * * * *"), ("at-1", "1 * * * * *")):
        fresh.add(key, cron)
    fresh.tick_at("2025-01-10T12:00:02Z")                  # a late tick: both due, the earlier slot first
    assert fresh.events == [("at-1", "fire", "2025-01-10T12:00:01Z"), ("at-2", "fire", "2025-01-10T12:00:02Z")]


def test_next_of_gives_each_keys_next_fire_as_next_at_does():
    t = Ticker()
    t.add("a", "* * * * * *")
    t.add("b", "0 0 * * * *")
    t.tick_at("2025-01-10T12:00:01Z")
    keys = ["a", "b", "gone"]
    assert t.scheduler.next_of(keys) == [t.scheduler.next_at(k) for k in keys]
    assert [iso(n) for n in t.scheduler.next_of(keys)] == ["2025-01-10T12:00:02Z", "2025-01-10T13:00:00Z", None]
    assert t.scheduler.next_of([]) == []


# -- missed slots --------------------------------------------------------------------------------------------

def test_three_hours_down_with_an_hourly_job_is_one_missed_count_of_three_and_no_burst():
    t = Ticker(start="2025-01-10T09:30:00Z")
    t.add("a", "@hourly")
    (due,) = t.tick_at("2025-01-10T12:45:00Z")           # 10:00, 11:00 and 12:00 all passed long ago
    assert (due.slot, iso(due.first_missed), iso(due.last_missed), due.missed) == (
        None, "2025-01-10T10:00:00Z", "2025-01-10T12:00:00Z", 3)
    assert t.next_at("a") == "2025-01-10T13:00:00Z"
    t.tick_at("2025-01-10T13:00:00Z")
    assert t.events == [("a", "missed", "2025-01-10T10:00:00Z", 3), ("a", "fire", "2025-01-10T13:00:00Z")]


def test_after_missed_slots_the_latest_slot_still_runs_when_it_is_within_the_grace():
    t = Ticker(start="2025-01-10T09:30:00Z")
    t.add("a", "@hourly")
    (due,) = t.tick_at("2025-01-10T13:00:10Z")           # one Due: what was missed, and the slot to run
    assert (iso(due.slot), iso(due.first_missed), iso(due.last_missed), due.missed) == (
        "2025-01-10T13:00:00Z", "2025-01-10T10:00:00Z", "2025-01-10T12:00:00Z", 3)
    assert t.next_at("a") == "2025-01-10T14:00:00Z"


@pytest.mark.parametrize("late, expected", [
    (GRACE, [("a", "fire", "2025-01-10T12:01:00Z")]),
    (GRACE + 1, [("a", "missed", "2025-01-10T12:01:00Z", 1)]),
])
def test_a_fire_is_missed_only_beyond_the_misfire_grace(late, expected):
    t = Ticker()
    t.add("a", "0 * * * * *")
    t.tick(ts("2025-01-10T12:01:00Z") + late)
    assert t.events == expected
    assert t.next_at("a") == "2025-01-10T12:02:00Z"


def test_slots_passed_within_the_grace_are_not_run_as_a_burst():
    t = Ticker()
    t.add("a", "* * * * * *")
    t.tick_at("2025-01-10T12:00:05Z")           # a 5-second stall: 12:00:01 .. 12:00:05 are all due
    assert t.events == [("a", "missed", "2025-01-10T12:00:01Z", 4), ("a", "fire", "2025-01-10T12:00:05Z")]
    assert iso(t.dues[0].last_missed) == "2025-01-10T12:00:04Z"


def test_a_day_down_with_a_minutely_job_counts_every_missed_slot():
    t = Ticker()
    t.add("a", "0 * * * * *")
    t.tick_at("2025-01-11T12:00:45Z")           # 12:01 yesterday .. 12:00 today: 1440 slots, all beyond the grace
    assert t.events == [("a", "missed", "2025-01-10T12:01:00Z", 1440)]
    assert t.next_at("a") == "2025-01-11T12:01:00Z"


def test_a_year_long_clock_jump_with_an_every_second_job_is_one_due_with_a_missed_count_and_the_slot_of_now():
    t = Ticker()
    spec = CountingSpec("* * * * * *")
    t.add("a", spec)
    dues = t.tick_at("2026-01-10T12:00:00Z")
    assert len(dues) == 1                               # one hand-over: no burst
    assert [e[:3] for e in t.events] == [("a", "missed", "2025-01-10T12:00:01Z"),
                                         ("a", "fire", "2026-01-10T12:00:00Z")]
    assert t.events[0][3] >= MISSED_SCAN_LIMIT
    assert iso(dues[0].last_missed) == "2026-01-10T11:59:59Z"
    assert spec.calls < 5 * MISSED_SCAN_LIMIT     # bounded work, not one step per second of the year
    assert t.next_at("a") == "2026-01-10T12:00:01Z"


# -- the clock going backwards -------------------------------------------------------------------------------

def test_a_backward_clock_jump_never_fires_a_slot_at_or_before_the_last_fired_one():
    t = Ticker()
    t.add("a", "0 * * * * *")
    t.tick_at("2025-01-10T12:01:00Z")
    for text in ("2025-01-10T11:01:00Z", "2025-01-10T11:59:59Z", "2025-01-10T12:00:00Z",
                 "2025-01-10T12:01:00Z", "2025-01-10T12:01:59Z"):
        t.tick_at(text)                         # the clock was set back an hour and walks forward again
    assert t.events == [("a", "fire", "2025-01-10T12:01:00Z")]
    t.tick_at("2025-01-10T12:02:00Z")
    assert t.events == [("a", "fire", "2025-01-10T12:01:00Z"), ("a", "fire", "2025-01-10T12:02:00Z")]


# -- registration changes ------------------------------------------------------------------------------------

def test_a_removed_job_does_not_fire():
    t = Ticker()
    t.add("a", "0 * * * * *")
    t.scheduler.remove("a")
    t.tick_at("2025-01-10T12:01:00Z")
    t.tick_at("2025-01-10T12:05:00Z")
    assert t.events == []
    assert t.scheduler.next_at("a") is None
    assert len(t.scheduler) == 0


def test_a_job_registered_again_under_the_same_key_uses_the_new_spec():
    t = Ticker()
    t.add("a", "0 0 13 * * *", label="old")
    t.add("a", "0 30 12 * * *", label="new")
    assert len(t.scheduler) == 1
    assert t.next_at("a") == "2025-01-10T12:30:00Z"
    t.tick_at("2025-01-10T12:30:00Z")
    t.tick_at("2025-01-10T13:00:00Z")           # the old spec's slot: nothing
    assert t.events == [("new", "fire", "2025-01-10T12:30:00Z")]
    assert t.next_at("a") == "2025-01-11T12:30:00Z"


def test_the_due_queue_stays_bounded_by_the_live_schedules_under_toggle_and_delete_churn(tmp_path):
    # White-box on purpose: this one test reads the scheduler's internal heap (`_heap`), because the promise
    # is about memory that no public call shows. A toggle or a delete leaves a stale queue entry behind; the
    # queue must be compacted so that it never holds more than 2 * live + 64 entries.
    with Stack(tmp_path) as stack:
        scheduler = stack.scheduler
        ids = [stack.http.create({"cron": "@yearly", "request": {"url": HOOK}})["id"] for _ in range(16)]
        largest, toggles = 0, 0
        for n in range(20_000):
            sid = ids[n % len(ids)]
            stack.http.toggle(sid)                              # no body: flip
            toggles += 1
            if n % 1000 == 999:                                 # and now and then a schedule goes, another comes
                stack.http.delete(ids.pop(0))
                ids.append(stack.http.create({"cron": "@yearly", "request": {"url": HOOK}})["id"])
            if n % 97 == 0:
                stack.clock.advance(1)
                stack.tick()                                    # yearly: never due, the ticks find nothing
            live = len(scheduler)
            assert len(scheduler._heap) <= 2 * live + 64, (n, len(scheduler._heap), live)
            largest = max(largest, len(scheduler._heap))
        live = sum(1 for sid in ids if stack.http.find(sid).enabled)
        assert toggles == 20_000 and len(scheduler) == live
        assert len(scheduler._heap) <= 2 * live + 64
        assert largest <= 2 * 16 + 64
        assert stack.pool.pending == []
        for sid in ids:                                         # and the survivors still fire as they should
            expected = "2026-01-01T00:00:00Z" if stack.http.find(sid).enabled else None
            assert stack.http.get(sid)["next_run"] == expected


###############################################################################
# Runs, through the harness: what becomes of a Due
###############################################################################

@pytest.fixture
def stack(tmp_path):
    with Stack(tmp_path) as s:
        yield s


def create(stack: Stack, cron: str, **extra) -> str:
    return stack.http.create({"cron": cron, "request": {"url": HOOK}, **extra})["id"]


def at(stack: Stack, text: str) -> None:
    """Set the clock to `text`, tick, and let the workers run what was handed over."""
    stack.clock.set(text)
    stack.run_due()


def outcomes(stack: Stack, sid: str) -> list[tuple]:
    """The schedule's history as (scheduled_at, status[, count]), oldest slot first."""
    entries = [(h["scheduled_at"], h["status"]) + ((h["count"],) if "count" in h else ())
               for h in stack.http.history(sid, limit=1000)]
    return sorted(entries)


def sent(stack: Stack) -> list[tuple[str, str]]:
    """What the HTTP runner was asked to send: (url, slot)."""
    return [(run.job.target.request["url"], iso(run.slot)) for run in stack.http_runner.runs]


def markers(stack: Stack) -> list[dict]:
    directory = stack.data_dir / "running"
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))] if directory.exists() else []


# -- overlap -------------------------------------------------------------------------------------------------

def test_it_skips_a_run_while_the_previous_one_is_running(stack):
    stack.http_runner.hold = True
    sid = create(stack, "* * * * * *")
    key = f"http:{sid}"
    at(stack, "2025-01-10T12:00:01Z")           # handed to a worker; the run has not finished
    assert [iso(run.slot) for run in stack.recorder.running(key)] == ["2025-01-10T12:00:01Z"]
    at(stack, "2025-01-10T12:00:02Z")           # due again while in flight
    assert stack.http_runner.release() == 1
    assert stack.recorder.running(key) == []
    at(stack, "2025-01-10T12:00:03Z")           # finished: the next slot runs again
    stack.http_runner.release()
    assert sent(stack) == [(HOOK, "2025-01-10T12:00:01Z"), (HOOK, "2025-01-10T12:00:03Z")]
    assert outcomes(stack, sid) == [("2025-01-10T12:00:01Z", "ok"), ("2025-01-10T12:00:02Z", "skipped", 1),
                                    ("2025-01-10T12:00:03Z", "ok")]


def test_a_slow_job_does_not_hold_back_another_job(stack):
    stack.http_runner.hold = True
    slow, other = create(stack, "* * * * * *"), create(stack, "* * * * * *")
    at(stack, "2025-01-10T12:00:01Z")
    at(stack, "2025-01-10T12:00:02Z")
    assert stack.http_runner.release() == 2
    for sid in (slow, other):
        assert outcomes(stack, sid) == [("2025-01-10T12:00:01Z", "ok"), ("2025-01-10T12:00:02Z", "skipped", 1)]


def test_a_job_registered_again_while_it_runs_still_skips_the_overlapping_slot(stack):
    stack.http_runner.hold = True
    sid = create(stack, "* * * * * *")
    key = f"http:{sid}"
    at(stack, "2025-01-10T12:00:01Z")           # the old job's run in flight
    old = stack.scheduler.get(key)
    stack.scheduler.add(replace(old, cron=parse_cron("*/2 * * * * *")), stack.clock())     # as a changed script
    at(stack, "2025-01-10T12:00:02Z")
    stack.http_runner.release()
    assert outcomes(stack, sid) == [("2025-01-10T12:00:01Z", "ok"), ("2025-01-10T12:00:02Z", "skipped", 1)]
    stack.http_runner.hold = False
    at(stack, "2025-01-10T12:00:03Z")           # not a slot of the new spec
    at(stack, "2025-01-10T12:00:04Z")
    assert sent(stack)[1:] == [(HOOK, "2025-01-10T12:00:04Z")]
    assert stack.http_runner.runs[-1].job.cron.expression == "*/2 * * * * *"


class FailingOnceRunner(ScriptedHttpRunner):
    """Blows up when asked to start its first run (a bug in a runner), then behaves."""

    def start(self, run, on_end):
        if not self.runs:
            self.runs.append(run)
            raise RuntimeError("the target blew up")
        super().start(run, on_end)


def test_a_run_whose_start_raises_is_logged_recorded_as_an_error_and_the_job_keeps_firing(tmp_path, caplog):
    clock = FakeClock(NOW)
    with Stack(tmp_path, clock, http_runner=FailingOnceRunner(clock)) as stack:
        sid = create(stack, "* * * * * *")
        at(stack, "2025-01-10T12:00:01Z")
        assert stack.recorder.count() == 0                 # out of flight: it does not block the next slot
        at(stack, "2025-01-10T12:00:02Z")
        history = stack.http.history(sid)
        assert [(h["scheduled_at"], h["status"]) for h in reversed(history)] == [
            ("2025-01-10T12:00:01Z", "error"), ("2025-01-10T12:00:02Z", "ok")]
        assert "the target blew up" in history[-1]["error"]
        assert markers(stack) == []
    assert "starting run" in caplog.text and "failed" in caplog.text


# -- missed slots, as records --------------------------------------------------------------------------------

def test_downtime_and_a_late_slot_are_one_missed_record_with_a_count_then_the_run_and_no_burst(tmp_path):
    with Stack(tmp_path, FakeClock("2025-01-10T09:30:00Z")) as stack:
        sid = create(stack, "@hourly")
        stack.clock.set("2025-01-10T13:00:10Z")
        dues = stack.tick()
        assert len(dues) == 1 and len(stack.pool.pending) == 1      # one hand-over for it all
        stack.pool.run_all()
        assert outcomes(stack, sid) == [("2025-01-10T10:00:00Z", "missed", 3), ("2025-01-10T13:00:00Z", "ok")]
        (missed,) = [json.loads(line) for line in (stack.data_dir / "curl-runs.log").read_text().splitlines()
                     if json.loads(line)["status"] == "missed"]
        assert (missed["scheduled_at"], missed["last_scheduled_at"], missed["count"]) == (
            "2025-01-10T10:00:00.000Z", "2025-01-10T12:00:00.000Z", 3)
        assert sent(stack) == [(HOOK, "2025-01-10T13:00:00Z")]


def test_a_fire_that_a_worker_reaches_only_after_the_grace_is_recorded_missed_and_not_run(stack):
    sid = create(stack, "0 * * * * *")
    stack.clock.set("2025-01-10T12:01:00Z")
    stack.tick()                                 # handed over; every worker is busy
    stack.clock.set("2025-01-10T12:01:45Z")
    stack.pool.run_all()
    assert outcomes(stack, sid) == [("2025-01-10T12:01:00Z", "missed", 1)]
    assert sent(stack) == [] and stack.recorder.count() == 0 and markers(stack) == []


# -- disabled, re-enabled and deleted HTTP schedules (through the service, as the API does it) ----------------

def test_a_disabled_schedule_does_not_fire_and_reenabling_starts_from_now_without_catch_up(stack):
    created = stack.http.create({"cron": "0 * * * * *", "request": {"url": HOOK}})
    sid = created["id"]
    assert created["next_run"] == "2025-01-10T12:01:00Z"
    at(stack, "2025-01-10T12:01:00Z")
    assert sent(stack) == [(HOOK, "2025-01-10T12:01:00Z")]

    stack.clock.set("2025-01-10T12:01:30Z")
    assert stack.http.toggle(sid, {"enabled": False}) == {"id": sid, "enabled": False, "next_run": None}
    for text in ("2025-01-10T12:02:00Z", "2025-01-10T13:00:00Z", "2025-01-10T15:00:00Z"):
        at(stack, text)
    assert len(sent(stack)) == 1
    assert stack.http.get(sid)["next_run"] is None

    stack.clock.set("2025-01-10T15:00:20Z")
    assert stack.http.toggle(sid, {"enabled": True}) == {"id": sid, "enabled": True,
                                                         "next_run": "2025-01-10T15:01:00Z"}
    at(stack, "2025-01-10T15:00:20Z")
    assert len(sent(stack)) == 1                # nothing caught up, nothing recorded as missed
    at(stack, "2025-01-10T15:01:00Z")
    assert sent(stack)[1:] == [(HOOK, "2025-01-10T15:01:00Z")]
    history = stack.http.get(sid)["history"]
    assert [(h["scheduled_at"], h["status"]) for h in history] == [
        ("2025-01-10T15:01:00Z", "ok"), ("2025-01-10T12:01:00Z", "ok")]


def test_a_toggle_without_a_body_flips_the_state_and_a_schedule_created_disabled_never_fires(stack):
    created = stack.http.create({"cron": "* * * * * *", "request": {"url": HOOK}, "enabled": False})
    assert created["next_run"] is None
    at(stack, "2025-01-10T12:00:05Z")
    assert sent(stack) == []
    stack.clock.set("2025-01-10T12:00:10Z")
    assert stack.http.toggle(created["id"])["next_run"] == "2025-01-10T12:00:11Z"   # no body: flip
    at(stack, "2025-01-10T12:00:11Z")
    assert sent(stack) == [(HOOK, "2025-01-10T12:00:11Z")]
    assert stack.http.toggle(created["id"])["enabled"] is False
    at(stack, "2025-01-10T12:00:12Z")
    assert len(sent(stack)) == 1


def test_a_deleted_schedule_leaves_the_scheduler_and_records_nothing_more(stack):
    sid = create(stack, "0 * * * * *")
    stack.http.delete(sid)
    assert len(stack.scheduler) == 0
    at(stack, "2025-01-10T12:01:00Z")
    at(stack, "2025-01-10T14:00:00Z")           # long after: no missed record for a schedule that is gone
    assert sent(stack) == []
    assert list(stack.server.logs["http"].read_newest()) == []


# -- markers of runs in flight -------------------------------------------------------------------------------

def test_a_run_in_flight_has_its_marker_and_its_record_carries_the_markers_run_id(stack):
    stack.http_runner.hold = True
    sid = create(stack, "5 * * * * *")
    at(stack, "2025-01-10T12:00:05Z")
    (marker,) = markers(stack)
    assert (marker["kind"], marker["ref"], iso(marker["slot"]), marker["trigger"]) == (
        "http", sid, "2025-01-10T12:00:05Z", "cron")
    assert stack.http_runner.release() == 1
    assert markers(stack) == []                 # the run ended: its marker is gone
    (record,) = [json.loads(line) for line in (stack.data_dir / "curl-runs.log").read_text().splitlines()]
    assert (record["run_id"], record["status"], record["scheduled_at"]) == (
        marker["run_id"], "ok", "2025-01-10T12:00:05.000Z")


@pytest.mark.parametrize("change", ["deleted", "disabled", "stopped"])
def test_a_schedule_that_goes_away_before_its_second_sends_nothing_and_leaves_no_marker(tmp_path, change):
    stack = Stack(tmp_path)
    try:
        sid = create(stack, "5 * * * * *")
        at(stack, "2025-01-10T12:00:04Z")
        if change == "deleted":
            stack.http.delete(sid)
        elif change == "disabled":
            stack.http.toggle(sid, {"enabled": False})
        else:
            stack.close()                       # the server stops: no tick comes
        if change != "stopped":
            at(stack, "2025-01-10T12:00:05Z")
        assert sent(stack) == [] and markers(stack) == []
        assert not (stack.data_dir / "curl-runs.log").exists()
        stack = stack.reopen()                  # a restart (before the slot) records nothing
        assert not (stack.data_dir / "curl-runs.log").exists() and markers(stack) == []
    finally:
        stack.close()


def crash(stack: Stack) -> None:
    """The process dies: nothing is stopped, saved or recorded. What the OS takes back with a dead process goes:
    the data dir's lock, and the idle script runner's and deadline watcher's descriptors (no run uses them)."""
    stack.server.data_dir.release()
    stack.script_runner.close()
    stack.deadlines.close()
    stack._closed = True


def test_a_run_in_flight_when_the_process_dies_is_recorded_interrupted_at_the_next_start_and_never_rerun(tmp_path):
    first = Stack(tmp_path)
    first.http_runner.hold = True
    sid = create(first, "5 * * * * *")
    at(first, "2025-01-10T12:00:05Z")
    (marker,) = markers(first)
    first.clock.set("2025-01-10T12:00:06Z")
    crash(first)

    with Stack(tmp_path, FakeClock("2025-01-10T12:00:08Z")) as second:
        assert markers(second) == []
        for text in ("2025-01-10T12:00:09Z", "2025-01-10T12:00:30Z"):
            at(second, text)
        assert sent(second) == []                               # never run again
        (entry,) = second.http.get(sid)["history"]
        assert (entry["run_id"], entry["scheduled_at"], entry["status"], entry["error"]) == (
            marker["run_id"], "2025-01-10T12:00:05Z", "interrupted",
            "interrupted: the server stopped before the run ended")
        assert second.http.get(sid)["next_run"] == "2025-01-10T12:01:05Z"
        at(second, "2025-01-10T12:01:05Z")
        assert sent(second) == [(HOOK, "2025-01-10T12:01:05Z")]
        assert [h["status"] for h in second.http.history(sid)] == ["ok", "interrupted"]


# -- a real run ----------------------------------------------------------------------------------------------

def test_a_real_run_sends_its_request_at_its_slot_and_records_the_answer(tmp_path):
    clock = FakeClock(NOW)
    deadlines = DeadlineWatcher()
    try:
        with TargetServer(keep_alive=True) as target, \
                Stack(tmp_path, clock, http_runner=HttpRunner(EgressPolicy(), deadlines, clock)) as stack:
            sid = stack.http.create({"cron": "5 * * * * *", "request": {"url": target.url + "/hook"}})["id"]
            at(stack, "2025-01-10T12:00:04Z")
            assert target.received() == []
            at(stack, "2025-01-10T12:00:05Z")
            (arrival,) = target.wait_for(1, 5.0)
            assert arrival.headers["X-Schedserver-Scheduled-At"] == "2025-01-10T12:00:05Z"
            assert arrival.headers["X-Schedserver-Schedule-Id"] == sid
            history = stack.http.get(sid)["history"]
            assert [(h["scheduled_at"], h["status"], h["status_code"]) for h in history] == [
                ("2025-01-10T12:00:05Z", "ok", 200)]
            assert len((stack.data_dir / "curl-runs.log").read_text().splitlines()) == 1
            assert markers(stack) == []
    finally:
        deadlines.close()


###############################################################################
# The ticker thread
###############################################################################

def test_the_ticker_thread_hands_each_due_slot_over_no_earlier_than_its_second_then_calls_on_tick():
    seen: list[tuple] = []              # ("due", slot, when) and ("tick", now)
    first_due = threading.Event()

    def on_due(due: Due) -> None:
        seen.append(("due", due.slot, time.time()))
        first_due.set()

    scheduler = Scheduler(misfire_grace=GRACE, on_due=on_due, on_tick=lambda now: seen.append(("tick", now)))
    scheduler.add(Job("a", "http", "a", parse_cron("* * * * * *"), UTC, HttpTarget({"url": HOOK})), time.time())
    scheduler.start()
    try:
        assert first_due.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and seen[-1][0] != "tick":
            time.sleep(0.01)
    finally:
        scheduler.stop()
    dues = [item for item in seen if item[0] == "due"]
    _, slot, handed_at = dues[0]
    assert slot == int(slot) and slot <= handed_at          # a whole second, never handed over early
    ticks = [item[1] for item in seen if item[0] == "tick"]
    assert any(now >= slot for now in ticks)                 # the tick that found it was reported after it
    assert seen.index(dues[0]) < max(i for i, item in enumerate(seen) if item[0] == "tick")
