"""Scheduler.tick(now) driven by a fake clock, with a synchronous stand-in for the worker pool.

Nothing here sleeps: the clock is a number the test moves, and "submitted to a worker" means "kept in a list
until the test runs it" (or run at once, for tests that do not care about overlap).
"""

import json
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from schedserver import (MISSED_SCAN_LIMIT, CurlSchedules, HttpRunner, InFlightRuns, Job, JournalStore, NdjsonLog,
                         RunResult, Scheduler, parse_cron)
from e2e_helpers import TargetServer
from fakes import FakeClock

UTC = ZoneInfo("UTC")
NOW = "2025-01-10T12:00:00Z"
GRACE = 30


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


###############################################################################
# Fakes
###############################################################################

class RecordingPool:
    """Stands in for the worker pool: keeps submitted calls, runs them at once when `inline`, else on demand."""

    def __init__(self, inline: bool = True):
        self.inline = inline
        self.pending: list[tuple] = []
        self.submitted = 0

    def submit(self, fn, *args):
        self.submitted += 1
        self.pending.append((fn, args))
        if self.inline:
            self.run_pending()

    def run_pending(self) -> None:
        while self.pending:
            fn, args = self.pending.pop(0)
            fn(*args)


class CountingSpec:
    """A CronSpec that counts how often the scheduler asks it for a next fire."""

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


class Harness:
    """A scheduler on a fake clock and a recording pool; every fire and record lands in `events`."""

    def __init__(self, inline: bool = True, grace: float = GRACE, start: str = NOW):
        self.clock = FakeClock(start)
        self.pool = RecordingPool(inline)
        self.scheduler = Scheduler(misfire_grace=grace, clock=self.clock, submit=self.pool.submit)
        self.events: list[tuple] = []

    def job(self, key: str, cron, label: str | None = None, fail: bool = False) -> Job:
        spec = parse_cron(cron) if isinstance(cron, str) else cron
        label = label or key

        def fire(slot):
            self.events.append((label, "fire", iso(slot)))
            if fail:
                raise RuntimeError("the target blew up")

        def record(status, slot, count, last_slot):
            self.events.append((label, status, iso(slot), count))

        return Job(key, spec, UTC, fire, record)

    def add(self, key: str, cron, **kwargs) -> Job:
        job = self.job(key, cron, **kwargs)
        self.scheduler.add(job, self.clock())
        return job

    def tick_at(self, text: str) -> None:
        self.clock.set(text)
        self.scheduler.tick(self.clock())

    def next_at(self, key: str) -> str | None:
        return iso(self.scheduler.next_at(key))


###############################################################################
# Due, not due, idle
###############################################################################

def test_a_due_job_fires_once_at_its_slot():
    h = Harness()
    h.add("a", "0 * * * * *")
    assert h.next_at("a") == "2025-01-10T12:01:00Z"
    h.tick_at("2025-01-10T12:01:00Z")
    h.tick_at("2025-01-10T12:01:00Z")
    h.tick_at("2025-01-10T12:01:00.900Z")
    assert h.events == [("a", "fire", "2025-01-10T12:01:00Z")]
    assert h.next_at("a") == "2025-01-10T12:02:00Z"


def test_a_fire_reached_a_little_late_still_runs_for_its_slot():
    h = Harness()
    h.add("a", "0 * * * * *")
    h.tick_at("2025-01-10T12:01:20Z")
    assert h.events == [("a", "fire", "2025-01-10T12:01:00Z")]
    assert h.next_at("a") == "2025-01-10T12:02:00Z"


def test_a_job_that_is_not_due_does_nothing():
    h = Harness()
    h.add("a", "0 * * * * *")
    h.clock.now = ts("2025-01-10T12:01:00Z") - 0.001
    h.scheduler.tick(h.clock())
    assert h.events == []
    assert h.pool.submitted == 0
    assert h.next_at("a") == "2025-01-10T12:01:00Z"


def test_only_the_job_that_is_due_fires():
    h = Harness()
    h.add("minutely", "0 * * * * *")
    h.add("hourly", "@hourly")
    h.tick_at("2025-01-10T12:01:00Z")
    assert h.events == [("minutely", "fire", "2025-01-10T12:01:00Z")]
    assert h.next_at("hourly") == "2025-01-10T13:00:00Z"


def test_idle_ticks_submit_nothing_and_never_evaluate_a_schedule():
    h = Harness()
    specs = [CountingSpec("@yearly") for _ in range(100)]
    for n, spec in enumerate(specs):
        h.add(f"job-{n}", spec)
    assert all(spec.calls == 1 for spec in specs)         # once, to place it in the queue
    for second in range(3600):
        h.scheduler.tick(ts(NOW) + second)
    assert h.pool.submitted == 0
    assert h.events == []
    assert sum(spec.calls for spec in specs) == 100


def test_a_tick_with_no_jobs_is_harmless():
    h = Harness()
    h.tick_at("2025-01-10T12:00:01Z")
    assert h.pool.submitted == 0
    assert h.scheduler.last_tick == ts("2025-01-10T12:00:01Z")


###############################################################################
# Overlap
###############################################################################

def test_it_skips_a_run_while_the_previous_one_is_running():
    h = Harness(inline=False)
    h.add("a", "* * * * * *")
    h.tick_at("2025-01-10T12:00:01Z")           # the fire is handed to a worker, which has not finished
    assert h.scheduler.is_running("a")
    h.tick_at("2025-01-10T12:00:02Z")           # due again while in flight
    h.pool.run_pending()
    assert h.events == [("a", "fire", "2025-01-10T12:00:01Z"),
                        ("a", "skipped", "2025-01-10T12:00:02Z", 1)]
    assert not h.scheduler.is_running("a")
    h.tick_at("2025-01-10T12:00:03Z")           # finished: the next slot runs again
    h.pool.run_pending()
    assert h.events[2:] == [("a", "fire", "2025-01-10T12:00:03Z")]


def test_states_gives_each_keys_next_fire_and_whether_it_runs_as_the_one_key_calls_do():
    h = Harness(inline=False)
    h.add("a", "* * * * * *")
    h.add("b", "0 0 * * * *")
    h.tick_at("2025-01-10T12:00:01Z")           # a is handed to a worker: running
    keys = ["a", "b", "gone"]

    assert h.scheduler.states(keys) == [(h.scheduler.next_at(k), h.scheduler.is_running(k)) for k in keys]
    assert [running for _, running in h.scheduler.states(keys)] == [True, False, False]
    assert h.scheduler.states(["gone"]) == [(None, False)] and h.scheduler.states([]) == []


def test_a_slow_job_does_not_hold_back_another_job():
    h = Harness(inline=False)
    h.add("slow", "* * * * * *")
    h.add("other", "* * * * * *")
    h.tick_at("2025-01-10T12:00:01Z")
    h.tick_at("2025-01-10T12:00:02Z")
    h.pool.run_pending()
    fires = [e for e in h.events if e[1] == "fire"]
    skips = [e for e in h.events if e[1] == "skipped"]
    assert sorted(fires) == [("other", "fire", "2025-01-10T12:00:01Z"), ("slow", "fire", "2025-01-10T12:00:01Z")]
    assert sorted(skips) == [("other", "skipped", "2025-01-10T12:00:02Z", 1),
                             ("slow", "skipped", "2025-01-10T12:00:02Z", 1)]


def test_a_fire_that_raises_is_logged_and_the_job_keeps_firing(caplog):
    h = Harness()
    h.add("a", "* * * * * *", fail=True)
    h.tick_at("2025-01-10T12:00:01Z")
    assert not h.scheduler.is_running("a")
    h.tick_at("2025-01-10T12:00:02Z")
    assert h.events == [("a", "fire", "2025-01-10T12:00:01Z"), ("a", "fire", "2025-01-10T12:00:02Z")]
    assert "fire of a failed" in caplog.text


###############################################################################
# Missed runs
###############################################################################

def test_three_hours_down_with_an_hourly_job_is_one_missed_record_of_three_and_no_burst():
    h = Harness(start="2025-01-10T09:30:00Z")
    h.add("a", "@hourly")
    h.tick_at("2025-01-10T12:45:00Z")           # 10:00, 11:00 and 12:00 all passed long ago
    assert h.events == [("a", "missed", "2025-01-10T10:00:00Z", 3)]
    assert h.next_at("a") == "2025-01-10T13:00:00Z"
    h.tick_at("2025-01-10T13:00:00Z")
    assert h.events[1:] == [("a", "fire", "2025-01-10T13:00:00Z")]


def test_after_missed_slots_the_latest_slot_still_runs_when_it_is_within_the_grace():
    h = Harness(start="2025-01-10T09:30:00Z")
    h.add("a", "@hourly")
    h.tick_at("2025-01-10T13:00:10Z")
    assert h.events == [("a", "missed", "2025-01-10T10:00:00Z", 3), ("a", "fire", "2025-01-10T13:00:00Z")]
    assert h.next_at("a") == "2025-01-10T14:00:00Z"


@pytest.mark.parametrize("late, expected", [
    (GRACE, [("a", "fire", "2025-01-10T12:01:00Z")]),
    (GRACE + 1, [("a", "missed", "2025-01-10T12:01:00Z", 1)]),
])
def test_a_fire_is_missed_only_beyond_the_misfire_grace(late, expected):
    h = Harness()
    h.add("a", "0 * * * * *")
    h.scheduler.tick(ts("2025-01-10T12:01:00Z") + late)
    assert h.events == expected
    assert h.next_at("a") == "2025-01-10T12:02:00Z"


def test_slots_passed_within_the_grace_are_not_run_as_a_burst():
    h = Harness()
    h.add("a", "* * * * * *")
    h.tick_at("2025-01-10T12:00:05Z")           # a 5-second stall: 12:00:01 .. 12:00:05 are all due
    assert h.events == [("a", "missed", "2025-01-10T12:00:01Z", 4), ("a", "fire", "2025-01-10T12:00:05Z")]


def test_a_day_down_with_a_minutely_job_counts_every_missed_slot():
    h = Harness()
    h.add("a", "0 * * * * *")
    h.tick_at("2025-01-11T12:00:45Z")           # 12:01 yesterday .. 12:00 today: 1440 slots, all beyond the grace
    assert h.events == [("a", "missed", "2025-01-10T12:01:00Z", 1440)]
    assert h.next_at("a") == "2025-01-11T12:01:00Z"


def test_a_year_long_clock_jump_with_an_every_second_job_is_one_missed_record_and_one_fire():
    h = Harness()
    spec = CountingSpec("* * * * * *")
    h.add("a", spec)
    h.tick_at("2026-01-10T12:00:00Z")
    assert [e[:3] for e in h.events] == [("a", "missed", "2025-01-10T12:00:01Z"),
                                         ("a", "fire", "2026-01-10T12:00:00Z")]
    assert h.events[0][3] >= MISSED_SCAN_LIMIT
    assert h.pool.submitted == 2
    assert spec.calls < 5 * MISSED_SCAN_LIMIT     # bounded work, not one step per second of the year
    assert h.next_at("a") == "2026-01-10T12:00:01Z"


###############################################################################
# Clock going backwards
###############################################################################

def test_a_backward_clock_jump_never_fires_a_slot_at_or_before_the_last_fired_one():
    h = Harness()
    h.add("a", "0 * * * * *")
    h.tick_at("2025-01-10T12:01:00Z")
    for text in ("2025-01-10T11:01:00Z", "2025-01-10T11:59:59Z", "2025-01-10T12:00:00Z",
                 "2025-01-10T12:01:00Z", "2025-01-10T12:01:59Z"):
        h.tick_at(text)                         # the clock was set back an hour and walks forward again
    assert h.events == [("a", "fire", "2025-01-10T12:01:00Z")]
    h.tick_at("2025-01-10T12:02:00Z")
    assert h.events == [("a", "fire", "2025-01-10T12:01:00Z"), ("a", "fire", "2025-01-10T12:02:00Z")]


###############################################################################
# Registration changes
###############################################################################

def test_a_removed_job_does_not_fire():
    h = Harness()
    h.add("a", "0 * * * * *")
    h.scheduler.remove("a")
    h.tick_at("2025-01-10T12:01:00Z")
    h.tick_at("2025-01-10T12:05:00Z")
    assert h.events == []
    assert h.scheduler.next_at("a") is None
    assert len(h.scheduler) == 0


def test_a_job_registered_again_under_the_same_key_uses_the_new_spec():
    h = Harness()
    h.add("a", "0 0 13 * * *", label="old")
    h.add("a", "0 30 12 * * *", label="new")
    assert len(h.scheduler) == 1
    assert h.next_at("a") == "2025-01-10T12:30:00Z"
    h.tick_at("2025-01-10T12:30:00Z")
    h.tick_at("2025-01-10T13:00:00Z")           # the old spec's slot: nothing
    assert h.events == [("new", "fire", "2025-01-10T12:30:00Z")]
    assert h.next_at("a") == "2025-01-11T12:30:00Z"


def test_a_job_registered_again_while_it_runs_still_skips_the_overlapping_slot():
    h = Harness(inline=False)
    h.add("a", "* * * * * *", label="old")
    h.tick_at("2025-01-10T12:00:01Z")           # old run in flight
    h.add("a", "*/2 * * * * *", label="new")
    h.tick_at("2025-01-10T12:00:02Z")
    h.pool.run_pending()
    assert h.events == [("old", "fire", "2025-01-10T12:00:01Z"), ("new", "skipped", "2025-01-10T12:00:02Z", 1)]
    h.tick_at("2025-01-10T12:00:04Z")
    h.pool.run_pending()
    assert h.events[2:] == [("new", "fire", "2025-01-10T12:00:04Z")]


###############################################################################
# Disabled and re-enabled HTTP schedules (through the service, as the API does it)
###############################################################################

###############################################################################
# Runs the ticker begins itself
###############################################################################

def test_a_job_with_start_is_begun_during_the_tick_and_the_rest_of_its_run_goes_to_a_worker():
    h = Harness(inline=False)
    job = h.add("a", "* * * * * *")
    begun, rests = [], []
    job.start = lambda slot: (begun.append(iso(slot)), lambda: rests.append(iso(slot)))[1]
    h.tick_at("2025-01-10T12:00:01Z")
    assert begun == ["2025-01-10T12:00:01Z"] and rests == []        # begun by tick() itself
    assert h.scheduler.is_running("a")
    h.tick_at("2025-01-10T12:00:02Z")                               # still running: skipped, not begun
    assert begun == ["2025-01-10T12:00:01Z"]
    h.pool.run_pending()
    assert rests == ["2025-01-10T12:00:01Z"] and not h.scheduler.is_running("a")
    assert h.events == [("a", "skipped", "2025-01-10T12:00:02Z", 1)]      # never fired whole


@pytest.mark.parametrize("outcome", ["none", "raises"])
def test_a_start_that_declines_or_fails_leaves_the_whole_run_to_a_worker(outcome, caplog):
    h = Harness()
    job = h.add("a", "* * * * * *")

    def start(slot):
        if outcome == "raises":
            raise RuntimeError("no connection")
        return None
    job.start = start
    h.tick_at("2025-01-10T12:00:01Z")
    assert h.events == [("a", "fire", "2025-01-10T12:00:01Z")]
    assert not h.scheduler.is_running("a")
    assert ("no connection" in caplog.text) == (outcome == "raises")


def test_runs_begun_by_the_ticker_are_handed_to_workers_before_whole_runs():
    h = Harness(inline=False)
    h.add("whole", "* * * * * *")
    begun = h.add("begun", "* * * * * *")
    begun.start = lambda slot: lambda: None
    h.tick_at("2025-01-10T12:00:01Z")
    assert [fn.__name__ for fn, _ in h.pool.pending] == ["_run_started", "_run_fire"]


def test_after_each_tick_on_upcoming_is_told_the_jobs_due_within_the_lookahead():
    h = Harness()
    told = []
    h.scheduler.on_upcoming = lambda jobs: told.append(sorted(job.key for job in jobs))
    for key, cron in (("next-second", "* * * * * *"), ("in-ten", "10 * * * * *"), ("hourly", "0 0 * * * *")):
        h.add(key, cron)
    h.tick_at("2025-01-10T12:00:00.001Z")
    h.tick_at("2025-01-10T12:00:09.001Z")
    assert told == [["next-second"], ["in-ten", "next-second"]]


###############################################################################
# Runs readied ahead of their second
###############################################################################

def readying(h: Harness, job: Job, label: str | None = None, refuse: bool = False) -> set:
    """Give `job` a prepare/unprepare logged in h.events, and a fire that takes what was readied for its slot;
    returns the slots readied and not yet taken or let go."""
    label = label or job.key
    readied: set = set()
    released: set = set()
    fire = job.fire

    def prepare(slot):
        h.events.append((label, "prepare", iso(slot)))
        if refuse:
            return False
        readied.add(slot)
        return True

    def unprepare(slot):
        if slot in readied:
            readied.discard(slot)
            released.add(slot)
            h.events.append((label, "let go", iso(slot)))
        elif slot in released:
            h.events.append((label, "let go twice", iso(slot)))

    def take_and_fire(slot):
        readied.discard(slot)
        fire(slot)
    job.prepare, job.unprepare, job.fire = prepare, unprepare, take_and_fire
    return readied


def test_prepare_readies_the_runs_due_by_the_second_in_firing_order_and_the_fire_takes_them():
    h = Harness()
    readied_b = readying(h, h.add("b", "1 * * * * *"))
    readied_a = readying(h, h.add("a", "* * * * * *"))
    readying(h, h.add("later", "5 * * * * *"))
    h.clock.set("2025-01-10T12:00:00.900Z")
    assert h.scheduler.prepare(ts("2025-01-10T12:00:01Z")) == 2
    assert h.events == [("b", "prepare", "2025-01-10T12:00:01Z"), ("a", "prepare", "2025-01-10T12:00:01Z")]
    h.events.clear()
    h.tick_at("2025-01-10T12:00:01Z")
    assert h.events == [("b", "fire", "2025-01-10T12:00:01Z"), ("a", "fire", "2025-01-10T12:00:01Z")]
    assert readied_a == readied_b == set()


def test_a_job_that_declines_to_prepare_is_not_counted_and_fires_the_ordinary_way():
    h = Harness()
    readying(h, h.add("a", "* * * * * *"), refuse=True)
    assert h.scheduler.prepare(ts("2025-01-10T12:00:01Z")) == 0
    h.tick_at("2025-01-10T12:00:01Z")
    assert h.events == [("a", "prepare", "2025-01-10T12:00:01Z"), ("a", "fire", "2025-01-10T12:00:01Z")]


@pytest.mark.parametrize("change", ["removed", "registered again", "running"])
def test_a_run_readied_for_a_slot_that_does_not_fire_is_let_go_at_that_slots_tick(change):
    h = Harness(inline=False)
    job = h.add("a", "* * * * * *")
    readied = readying(h, job)
    assert h.scheduler.prepare(ts("2025-01-10T12:00:01Z")) == 1
    if change == "removed":
        h.scheduler.remove("a")
    elif change == "registered again":
        h.scheduler.add(h.job("a", "30 * * * * *"), h.clock())
    else:
        assert h.scheduler.claim("a")                   # a manual run began meanwhile
    h.tick_at("2025-01-10T12:00:01Z")
    h.pool.run_pending()
    assert readied == set()
    assert ("a", "let go", "2025-01-10T12:00:01Z") in h.events
    assert ("a", "fire", "2025-01-10T12:00:01Z") not in h.events


def test_nothing_is_readied_for_a_job_still_running_or_once_the_clock_passed_until():
    h = Harness()
    readying(h, h.add("a", "* * * * * *"))
    assert h.scheduler.claim("a")
    assert h.scheduler.prepare(ts("2025-01-10T12:00:01Z")) == 0
    h.scheduler.release("a")
    h.clock.set("2025-01-10T12:00:00.995Z")
    assert h.scheduler.prepare(ts("2025-01-10T12:00:01Z"), until=ts("2025-01-10T12:00:00.99Z")) == 0
    assert h.events == []
    assert h.scheduler.prepare(ts("2025-01-10T12:00:01Z"), until=ts("2025-01-10T12:00:00.999Z")) == 1


def test_a_ticker_late_past_the_readied_slot_fires_the_latest_slot_and_lets_the_readied_one_go():
    h = Harness()
    readied = readying(h, h.add("a", "* * * * * *"))
    h.scheduler.prepare(ts("2025-01-10T12:00:01Z"))
    h.tick_at("2025-01-10T12:00:03Z")
    assert h.events[1:] == [("a", "missed", "2025-01-10T12:00:01Z", 2), ("a", "fire", "2025-01-10T12:00:03Z"),
                            ("a", "let go", "2025-01-10T12:00:01Z")]
    assert readied == set() and h.next_at("a") == "2025-01-10T12:00:04Z"


def test_the_next_slot_of_a_readied_run_is_worked_out_when_it_is_readied_not_at_its_second():
    h = Harness()
    spec = CountingSpec("*/5 * * * * *")
    readying(h, h.add("a", spec))
    h.scheduler.prepare(ts("2025-01-10T12:00:05Z"))
    asked = spec.calls
    h.tick_at("2025-01-10T12:00:05Z")
    assert spec.calls == asked and h.next_at("a") == "2025-01-10T12:00:10Z"
    assert h.events[-1] == ("a", "fire", "2025-01-10T12:00:05Z")


def test_a_readied_fire_that_a_worker_reaches_only_after_the_grace_is_recorded_missed_and_let_go():
    h = Harness(inline=False)
    readied = readying(h, h.add("a", "0 * * * * *"))
    h.scheduler.prepare(ts("2025-01-10T12:01:00Z"))
    h.tick_at("2025-01-10T12:01:00Z")
    h.clock.set("2025-01-10T12:01:45Z")                 # every worker was busy
    h.pool.run_pending()
    assert h.events[1:] == [("a", "missed", "2025-01-10T12:01:00Z", 1), ("a", "let go", "2025-01-10T12:01:00Z")]
    assert readied == set() and not h.scheduler.is_running("a")


def test_slots_already_past_are_not_readied_and_a_clock_set_back_lets_go_of_what_was():
    h = Harness()
    readied = readying(h, h.add("a", "* * * * * *"))
    h.clock.set("2025-01-10T12:00:03.500Z")                 # the ticker is late: 12:00:01 is overdue
    assert h.scheduler.prepare(ts("2025-01-10T12:00:04Z")) == 0 and h.events == []
    h.tick_at("2025-01-10T12:00:04Z")
    h.clock.set("2025-01-10T12:00:04.900Z")
    assert h.scheduler.prepare(ts("2025-01-10T12:00:05Z")) == 1
    h.tick_at("2025-01-10T11:00:00Z")                       # the clock was set back an hour
    assert readied == set() and h.events[-1] == ("a", "let go", "2025-01-10T12:00:05Z")


def test_a_prepare_that_raises_is_logged_and_the_run_still_fires(caplog):
    h = Harness()
    job = h.add("a", "* * * * * *")
    job.prepare = lambda slot: 1 / 0
    job.unprepare = lambda slot: None
    assert h.scheduler.prepare(ts("2025-01-10T12:00:01Z")) == 0
    h.tick_at("2025-01-10T12:00:01Z")
    assert h.events == [("a", "fire", "2025-01-10T12:00:01Z")]
    assert "preparing a run of a failed" in caplog.text


def test_stopping_lets_go_of_runs_readied_for_a_second_not_reached():
    h = Harness()
    readied = readying(h, h.add("a", "* * * * * *"))
    h.scheduler.prepare(ts("2025-01-10T12:00:01Z"))
    h.scheduler.stop_ticking()
    assert readied == set() and h.events[-1] == ("a", "let go", "2025-01-10T12:00:01Z")


def test_the_ticker_thread_readies_each_seconds_runs_shortly_before_it_and_fires_them_at_it():
    scheduler = Scheduler(misfire_grace=GRACE)
    seen: list[tuple[str, float, float]] = []       # (what, slot, when)
    job = Job("a", parse_cron("* * * * * *"), UTC, fire=lambda slot: seen.append(("fire", slot, time.time())),
              record=lambda *args: None,
              prepare=lambda slot: seen.append(("prepare", slot, time.time())) or True,
              unprepare=lambda slot: None)
    scheduler.add(job, time.time())
    scheduler.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                fire[0] == "fire" and ("prepare", fire[1]) in [(p[0], p[1]) for p in seen] for fire in seen):
            time.sleep(0.01)
    finally:
        scheduler.stop()
    pairs = [(prepare, fire) for fire in seen if fire[0] == "fire"      # the first pass may start too late
             for prepare in seen if prepare[0] == "prepare" and prepare[1] == fire[1]]  # to ready its second
    assert pairs
    prepare, fire = pairs[0]
    assert fire[1] - Scheduler.PREPARE_AHEAD - 0.05 <= prepare[2] < fire[1] <= fire[2]


class RecordingRunner:
    """Stands in for HttpRunner: remembers each request it was asked to send and answers 200."""

    def __init__(self, clock):
        self.clock = clock
        self.calls: list[tuple[str, str]] = []

    def run(self, spec, extra_headers):
        self.calls.append((spec["url"], extra_headers["X-Schedserver-Scheduled-At"]))
        return RunResult("ok", self.clock(), 12, 200)


class Service:
    """CurlSchedules wired to a fake clock, a recording pool and a recording runner, with files in tmp_path."""

    def __init__(self, data_dir, runner=None, inflight=None):
        self.clock = FakeClock(NOW)
        self.scheduler = Scheduler(misfire_grace=GRACE, clock=self.clock, submit=RecordingPool(inline=True).submit)
        self.runner = runner or RecordingRunner(self.clock)
        self.curl = CurlSchedules(JournalStore(str(data_dir / "curl-schedules.json")),
                                  NdjsonLog(str(data_dir / "curl-runs.log"), 1 << 20, 2),
                                  self.scheduler, self.runner, clock=self.clock, inflight=inflight)

    def tick_at(self, text: str) -> None:
        self.clock.set(text)
        self.scheduler.tick(self.clock())


@pytest.fixture
def service(tmp_path):
    return Service(tmp_path)


def test_a_disabled_schedule_does_not_fire_and_reenabling_starts_from_now_without_catch_up(service):
    created = service.curl.create({"cron": "0 * * * * *", "request": {"url": "http://127.0.0.1:9/hook"}})
    sid = created["id"]
    assert created["next_run"] == "2025-01-10T12:01:00Z"
    service.tick_at("2025-01-10T12:01:00Z")
    assert service.runner.calls == [("http://127.0.0.1:9/hook", "2025-01-10T12:01:00Z")]

    service.clock.set("2025-01-10T12:01:30Z")
    assert service.curl.toggle(sid, {"enabled": False}) == {"id": sid, "enabled": False, "next_run": None}
    for text in ("2025-01-10T12:02:00Z", "2025-01-10T13:00:00Z", "2025-01-10T15:00:00Z"):
        service.tick_at(text)
    assert len(service.runner.calls) == 1
    assert service.curl.get(sid)["next_run"] is None

    service.clock.set("2025-01-10T15:00:20Z")
    assert service.curl.toggle(sid, {"enabled": True}) == {"id": sid, "enabled": True,
                                                           "next_run": "2025-01-10T15:01:00Z"}
    service.tick_at("2025-01-10T15:00:20Z")
    assert len(service.runner.calls) == 1       # nothing caught up, nothing recorded as missed
    service.tick_at("2025-01-10T15:01:00Z")
    assert service.runner.calls[1:] == [("http://127.0.0.1:9/hook", "2025-01-10T15:01:00Z")]
    history = service.curl.get(sid)["history"]
    assert [(h["scheduled_at"], h["status"]) for h in history] == [
        ("2025-01-10T15:01:00Z", "ok"), ("2025-01-10T12:01:00Z", "ok")]


def test_a_toggle_without_a_body_flips_the_state_and_a_schedule_created_disabled_never_fires(service):
    created = service.curl.create({"cron": "* * * * * *", "request": {"url": "http://127.0.0.1:9/hook"},
                                   "enabled": False})
    assert created["next_run"] is None
    service.tick_at("2025-01-10T12:00:05Z")
    assert service.runner.calls == []
    service.clock.set("2025-01-10T12:00:10Z")
    assert service.curl.toggle(created["id"])["next_run"] == "2025-01-10T12:00:11Z"   # no body: flip
    service.tick_at("2025-01-10T12:00:11Z")
    assert service.runner.calls == [("http://127.0.0.1:9/hook", "2025-01-10T12:00:11Z")]
    assert service.curl.toggle(created["id"])["enabled"] is False
    service.tick_at("2025-01-10T12:00:12Z")
    assert len(service.runner.calls) == 1


def test_a_deleted_schedule_leaves_the_scheduler_and_records_nothing_more(service):
    created = service.curl.create({"cron": "0 * * * * *", "request": {"url": "http://127.0.0.1:9/hook"}})
    service.curl.delete(created["id"])
    assert len(service.scheduler) == 0
    service.tick_at("2025-01-10T12:01:00Z")
    service.tick_at("2025-01-10T14:00:00Z")         # long after: no missed record for a schedule that is gone
    assert service.runner.calls == []
    assert list(service.curl.runs.read_newest()) == []


def test_a_real_run_is_begun_by_the_ticker_on_a_connection_opened_the_second_before(tmp_path):
    with TargetServer(keep_alive=True) as target:
        service = Service(tmp_path, runner=HttpRunner())
        service.scheduler.on_upcoming = service.curl.prepare_upcoming
        sid = service.curl.create({"cron": "5 * * * * *", "request": {"url": target.url + "/hook"}})["id"]
        origin = service.runner.origin({"url": target.url + "/hook"})
        service.tick_at("2025-01-10T12:00:03Z")
        assert service.runner.kept(origin) == 0                     # not due within the look-ahead yet
        service.tick_at("2025-01-10T12:00:04Z")
        assert service.runner.kept(origin) == 1                     # opened for the run due next second
        assert target.received() == []
        service.tick_at("2025-01-10T12:00:05Z")
        (arrival,) = target.wait_for(1, 5.0)
    assert arrival.headers["X-Schedserver-Scheduled-At"] == "2025-01-10T12:00:05Z"
    history = service.curl.get(sid)["history"]
    assert [(h["scheduled_at"], h["status"], h["status_code"]) for h in history] == [
        ("2025-01-10T12:00:05Z", "ok", 200)]
    assert service.runner.kept(origin) == 1                         # kept again for the next minute
    assert len((tmp_path / "curl-runs.log").read_text().splitlines()) == 1


def marker_contents(marker_dir) -> list[dict]:
    """The run markers on disk that hold a run (empty slot files hold none)."""
    return [json.loads(path.read_text()) for path in sorted(marker_dir.iterdir()) if path.read_text()]


def readied_service(tmp_path, target, cron: str = "5 * * * * *") -> tuple[Service, str, tuple]:
    """A service with markers on disk and one schedule on `target` whose run due at 12:00:05 has its connection
    opened (the tick of the second before) and is readied ahead of its slot."""
    service = Service(tmp_path, runner=HttpRunner(), inflight=InFlightRuns(str(tmp_path / "running")))
    service.scheduler.on_upcoming = service.curl.prepare_upcoming
    sid = service.curl.create({"cron": cron, "request": {"url": target.url + "/hook"}})["id"]
    origin = service.runner.origin({"url": target.url + "/hook"})
    service.tick_at("2025-01-10T12:00:04Z")
    assert service.runner.kept(origin) == 1
    service.clock.set("2025-01-10T12:00:04.900Z")
    assert service.scheduler.prepare(ts("2025-01-10T12:00:05Z")) == 1
    return service, sid, origin


def test_a_run_readied_ahead_has_its_marker_written_and_at_its_second_only_its_request_is_sent(tmp_path):
    with TargetServer(keep_alive=True) as target:
        service, sid, origin = readied_service(tmp_path, target)
        assert service.runner.kept(origin) == 0                     # taken for the readied run
        (marker,) = marker_contents(tmp_path / "running")           # written ahead, its start the slot
        assert (marker["schedule_id"], marker["scheduled_at"], marker["started_at"]) == (
            sid, "2025-01-10T12:00:05.000Z", "2025-01-10T12:00:05.000Z")
        assert target.received() == []
        service.tick_at("2025-01-10T12:00:05Z")
        (arrival,) = target.wait_for(1, 5.0)
    assert arrival.headers["X-Schedserver-Scheduled-At"] == "2025-01-10T12:00:05Z"
    assert arrival.headers["X-Schedserver-Schedule-Id"] == sid
    (record,) = [json.loads(line) for line in (tmp_path / "curl-runs.log").read_text().splitlines()]
    assert (record["run_id"], record["status"], record["status_code"]) == (marker["run_id"], "ok", 200)
    assert marker_contents(tmp_path / "running") == []              # the run ended: its marker emptied
    assert service.runner.kept(origin) == 1


@pytest.mark.parametrize("change", ["deleted", "disabled", "stopped"])
def test_a_readied_run_whose_schedule_goes_away_before_its_second_sends_nothing_and_leaves_no_marker(tmp_path, change):
    with TargetServer(keep_alive=True) as target:
        service, sid, origin = readied_service(tmp_path, target)
        if change == "deleted":
            service.curl.delete(sid)
        elif change == "disabled":
            service.curl.toggle(sid, {"enabled": False})
        else:
            service.scheduler.stop_ticking()                        # the server stops: no tick comes
        if change != "stopped":
            service.tick_at("2025-01-10T12:00:05Z")
        time.sleep(0.2)
        assert target.received() == []
    assert marker_contents(tmp_path / "running") == []
    assert InFlightRuns(str(tmp_path / "running")).recover() == []     # a restart records nothing
    assert service.runner.kept(origin) == 1                         # the connection is kept for later
    assert not (tmp_path / "curl-runs.log").exists()


def test_a_readied_run_whose_connection_closed_meanwhile_is_run_the_ordinary_way(tmp_path):
    with TargetServer(keep_alive=True) as target:
        service, sid, origin = readied_service(tmp_path, target)
        ((readied_key, readied),) = service.curl._prepared.items()
        readied.conn.close()                                        # as when the target hangs up
        service.tick_at("2025-01-10T12:00:05Z")
        (arrival,) = target.wait_for(1, 5.0)
    assert arrival.headers["X-Schedserver-Scheduled-At"] == "2025-01-10T12:00:05Z"
    assert [(h["status"], h["status_code"]) for h in service.curl.get(sid)["history"]] == [("ok", 200)]
    assert marker_contents(tmp_path / "running") == []
    assert service.curl._prepared == {}


def test_a_readied_runs_marker_left_by_a_crash_before_its_second_is_found_at_the_next_start(tmp_path):
    with TargetServer(keep_alive=True) as target:
        service, sid, origin = readied_service(tmp_path, target)
    (found,) = InFlightRuns(str(tmp_path / "running")).recover()   # what a restart after SIGKILL reads
    assert (found["schedule_id"], found["scheduled_at"]) == (sid, "2025-01-10T12:00:05.000Z")
