"""Reliability, section 4 "Time": UTC instants, DST with Vixie-cron semantics, clock jumps and downtime.

Each promise is checked through both feature surfaces where it applies: an HTTP schedule with its own
`timezone`, and a script schedule under the server timezone (`[scheduler] timezone`, read from a real TOML
file). Nothing sleeps: a fake clock is set to each second (or slot) in turn and the server is ticked, as the
ticker thread would (tests/harness.py: the real services, recorder and run state over a temporary data dir;
the worker pool runs what a tick handed over; runners finish at once). The evidence is what the services
wrote to their logs, so a test sees exactly what an operator would see.

Every case is audited the same way against an independently written list of the slots that exist:
a *double fire* is a fire of a slot already fired or counted missed, or of an instant that is not a slot at
all (the repeated 01:00 of a fall-back night); a *silent skip* is a slot neither fired nor inside a `missed`
record. The section's figure sums them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest

from schedserver import MISSED_SCAN_LIMIT, Due, HttpTarget, Job, RunResult, Scheduler, load_config, parse_cron
from fakes import FakeClock
from harness import Stack

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
GRACE = 30
HOUR = 3600


def at(text: str) -> float:
    """An ISO 8601 UTC instant as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local(epoch: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch, tz).isoformat()


def every(first: str, last: str, step: int) -> list[float]:
    """Slots from `first` to `last` inclusive, `step` seconds apart (written out, not asked of croniter)."""
    return [float(t) for t in range(int(at(first)), int(at(last)) + 1, step)]


###############################################################################
# The tally behind the figure ##################################################
###############################################################################

@dataclass
class Tally:
    """The section's counters, printed as its figure line once the module's tests are done."""

    cases: int = 0
    double_fires: int = 0
    silent_skips: int = 0
    year_jump_ms: list[float] = field(default_factory=list)
    figure: Callable[[str], None] | None = None

    def line(self) -> str:
        worst = f"{max(self.year_jump_ms):.0f} ms" if self.year_jump_ms else "not run"
        return (f"reliability: time {self.cases} DST/clock cases, {self.double_fires} double fires, "
                f"{self.silent_skips} silent skips, year jump tick {worst}")


@pytest.fixture(scope="module")
def tally():
    counts = Tally()
    yield counts
    if counts.cases and counts.figure is not None:
        counts.figure(counts.line())


@pytest.fixture(autouse=True)
def _figure_line_goes_to_the_run_summary(tally, figure):
    tally.figure = figure


###############################################################################
# Fakes ########################################################################
###############################################################################

class InstantScriptRunner:
    """Finishes every script run at once (the HTTP runner of the harness already does)."""

    kind = "script"

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def start(self, run, on_end) -> None:
        on_end(RunResult("ok", self.clock(), 3, return_preview="done", exit_code=0))

    def cancel(self, run) -> None:
        pass

    def close(self) -> None:
        pass


def job(key: str, expression: Any, tz: ZoneInfo) -> Job:
    """A job for the bare scheduler (its target is never used: nothing runs)."""
    spec = parse_cron(expression) if isinstance(expression, str) else expression
    return Job(key, "http", key, spec, tz, HttpTarget({"url": "http://127.0.0.1:9/hook"}))


@dataclass
class Outcome:
    """What a service logged: slots that ran, `missed` records as (first, count, last), anything else."""

    fired: list[float]
    missed: list[tuple[float, int, float]]
    other: list[dict]


###############################################################################
# The two surfaces #############################################################
###############################################################################

class Surface:
    """One schedule on one surface of a server (the harness Stack) on a fake clock."""

    log_name = ""
    slot_field = last_slot_field = started_field = ""

    def __init__(self, root: Path, clock: FakeClock, tz_name: str, **config: Any):
        self.root, self.clock, self.tz_name, self.config = root, clock, tz_name, config
        self.stack = self._open()
        self.log_path = self.stack.data_dir / self.log_name

    def _open(self) -> Stack:
        raise NotImplementedError

    def walk(self, first: float, last: float, step: float = 1.0) -> None:
        """Tick at every `step` seconds from `first` to `last` inclusive, as the ticker thread would, and let
        the workers run what each tick handed over."""
        now = first
        while now <= last:
            self.clock.now = now
            self.stack.run_due()
            now += step

    def tick_at(self, now: float) -> int:
        """One tick at `now`; how many calls it handed to the worker pool (then they run)."""
        self.clock.now = now
        before = len(self.stack.pool.pending)
        self.stack.tick()
        handed_over = len(self.stack.pool.pending) - before
        self.stack.pool.run_all()
        return handed_over

    def close(self) -> None:
        """A clean stop (the run state is saved)."""
        self.stack.close()

    def restart(self) -> "Surface":
        """A clean stop, then a start on the same files at the clock's now."""
        self.close()
        return type(self)(self.root, self.clock, self.tz_name, **self.config)

    def records(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def outcome(self) -> Outcome:
        fired, missed, other = [], [], []
        for record in self.records():
            assert record[self.slot_field].endswith("Z"), record          # stored as UTC instants
            if record["status"] == "ok":
                fired.append(at(record[self.slot_field]))
            elif record["status"] == "missed":
                missed.append((at(record[self.slot_field]), record["count"], at(record[self.last_slot_field])))
            else:
                other.append(record)
        return Outcome(fired, missed, other)


class HttpSurface(Surface):
    """An HTTP schedule carrying its own `timezone`; the server default stays UTC."""

    label = "HTTP schedule, per-schedule timezone"
    log_name = "curl-runs.log"
    slot_field, last_slot_field, started_field = "scheduled_at", "last_scheduled_at", "started_at"

    def _open(self) -> Stack:
        return Stack(self.root, self.clock, timezone="UTC", **self.config)

    def add(self, cron: str) -> None:
        created = self.stack.http.create({"cron": cron, "request": {"url": "http://127.0.0.1:9/hook"},
                                         "timezone": self.tz_name})
        assert created["timezone"] == self.tz_name


class ScriptSurface(Surface):
    """A script schedule under the server timezone, which comes from `[scheduler] timezone` in a TOML file."""

    label = "script schedule, [scheduler] timezone"
    log_name = "fires.log"
    slot_field, last_slot_field, started_field = "ts", "lastSlot", "startedAt"

    def _open(self) -> Stack:
        config_file = self.root / "schedserver.toml"
        if not config_file.exists():
            config_file.write_text(f'[server]\ndata_dir = "data"\nscripts_dir = "scripts"\n\n'
                                   f'[scheduler]\ntimezone = "{self.tz_name}"\n')
        config = load_config({"config": str(config_file)}, environ={})
        assert config.timezone == self.tz_name
        assert (config.data_dir, config.scripts_dir) == (str(self.root / "data"), str(self.root / "scripts"))
        return Stack(self.root, self.clock, script_runner=InstantScriptRunner(self.clock),
                     timezone=config.timezone, **self.config)

    def add(self, cron: str) -> None:
        (self.stack.scripts_dir / "job.sh").write_text(f"# @schedule {cron}\ntrue\n")
        assert self.stack.scripts.reload()["added"] == ["job.sh"]


SURFACES = [HttpSurface, ScriptSurface]
SURFACE_IDS = ["http-timezone", "scripts-server-timezone"]


@pytest.fixture(params=SURFACES, ids=SURFACE_IDS)
def surface_class(request):
    return request.param


@pytest.fixture
def surfaces():
    """Every surface a test opened is closed at its end (`opened.append(surface)`)."""
    opened: list[Surface] = []
    yield opened
    for surface in opened:
        surface.close()


def audit(outcome: Outcome, slots: list[float], tally: Tally) -> None:
    """Count double fires and silent skips against the slots that exist, add them to the tally, assert none."""
    covered = set()
    doubles = []
    for first, count, last in outcome.missed:
        inside = [s for s in slots if first <= s <= last]
        if count < MISSED_SCAN_LIMIT:
            assert count == len(inside), f"missed record from {iso(first)} says {count}, slots are {len(inside)}"
        doubles += [iso(s) for s in inside if s in covered]
        covered.update(inside)
    for fired in outcome.fired:
        if fired in covered or fired not in slots:
            doubles.append(iso(fired))
        covered.add(fired)
    skips = [iso(s) for s in slots if s not in covered]
    tally.cases += 1
    tally.double_fires += len(doubles)
    tally.silent_skips += len(skips)
    assert outcome.other == [], outcome.other
    assert doubles == [], f"double fires: {doubles}"
    assert skips == [], f"silent skips: {skips}"


###############################################################################
# UTC instants #################################################################
###############################################################################

def test_python_orders_aware_datetimes_of_one_zone_by_wall_clock_so_the_fall_back_hour_would_misorder():
    # New York, 2025-11-02: 02:00 EDT becomes 01:00 EST, so 01:00-01:59 happens twice.
    first_pass = datetime(2025, 11, 2, 1, 45, tzinfo=NEW_YORK)               # 01:45 EDT = 05:45Z
    second_pass = datetime(2025, 11, 2, 1, 10, tzinfo=NEW_YORK, fold=1)      # 01:10 EST = 06:10Z
    assert second_pass.timestamp() - first_pass.timestamp() == 25 * 60     # really 25 minutes later...
    assert second_pass < first_pass                                          # ...yet "earlier": fold ignored
    assert datetime(2025, 11, 2, 1, 45, tzinfo=NEW_YORK, fold=1) == first_pass   # an hour apart, "equal"
    # As UTC instants (what schedserver keeps) the order is the real one.
    assert second_pass.astimezone(timezone.utc) > first_pass.astimezone(timezone.utc)


@pytest.mark.parametrize("expression", ["0 */15 * * * *", "0 0 1 * * *", "0 10,45 * * * *", "0 0,30 1-3 * * *",
                                        "*/20 * 1 * * *"])
def test_next_fire_instants_across_the_fall_back_hour_are_strictly_increasing_floats(expression):
    spec = parse_cron(expression)
    start, end = at("2025-11-02T03:00:00Z"), at("2025-11-02T09:00:00Z")
    chain = []
    for instant in spec.iter_after(start, NEW_YORK):
        if instant > end:
            break
        chain.append(instant)
    assert chain, "no fire in the window"
    assert all(isinstance(instant, float) for instant in chain)
    assert all(a < b for a, b in zip(chain, chain[1:])), [local(x, NEW_YORK) for x in chain]
    # next_after from each instant gives the next one of the chain: no instant is revisited.
    assert [spec.next_after(a, NEW_YORK) for a in chain[:-1]] == chain[1:]


def test_the_scheduler_fires_across_the_fall_back_hour_in_utc_order_not_wall_clock_order(tally):
    clock = FakeClock(at("2025-11-02T04:30:00Z"))                              # 00:30 EDT
    fired: list[tuple[str, float]] = []
    scheduler = Scheduler(misfire_grace=GRACE, clock=clock)
    for key, expression in (("fixed-01:45", "0 45 1 * * *"), ("every-hour-at-10", "0 10 * * * *")):
        scheduler.add(job(key, expression, NEW_YORK), clock())
        assert isinstance(scheduler.next_at(key), float)
    for now in range(int(at("2025-11-02T04:30:00Z")), int(at("2025-11-02T07:30:00Z")) + 1):
        clock.now = now
        for due in scheduler.tick(now):
            assert due.missed == 0, f"unexpected missed slots {due}"
            fired.append((due.job.key, due.slot))

    audit(Outcome([s for k, s in fired if k == "every-hour-at-10"], [], []),
          every("2025-11-02T05:10:00Z", "2025-11-02T07:10:00Z", HOUR), tally)
    assert [(key, local(slot, NEW_YORK)) for key, slot in fired] == [
        ("every-hour-at-10", "2025-11-02T01:10:00-04:00"),      # 05:10Z
        ("fixed-01:45", "2025-11-02T01:45:00-04:00"),           # 05:45Z
        ("every-hour-at-10", "2025-11-02T01:10:00-05:00"),      # 06:10Z, the repeated 01:10
        ("every-hour-at-10", "2025-11-02T02:10:00-05:00"),      # 07:10Z
    ]
    instants = [slot for _, slot in fired]
    assert instants == sorted(instants)
    # The same fires ordered as aware datetimes of one zone come out in a different, wrong order.
    as_wall_clock = sorted(fired, key=lambda item: datetime.fromtimestamp(item[1], NEW_YORK))
    assert as_wall_clock != fired


###############################################################################
# DST, Vixie-cron semantics ####################################################
###############################################################################

def test_a_fixed_time_in_the_hour_skipped_by_spring_forward_fires_once_right_after_the_jump(
        tmp_path, surface_class, surfaces, tally):
    # Berlin, 2025-03-30: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that night.
    clock = FakeClock(at("2025-03-29T22:00:00Z"))
    surface = surface_class(tmp_path, clock, "Europe/Berlin")
    surfaces.append(surface)
    surface.add("0 30 2 * * *")
    surface.walk(at("2025-03-29T22:00:00Z"), at("2025-03-31T00:40:00Z"))

    outcome = surface.outcome()
    audit(outcome, [at("2025-03-30T01:00:00Z"), at("2025-03-31T00:30:00Z")], tally)
    assert [local(s, BERLIN) for s in outcome.fired] == ["2025-03-30T03:00:00+02:00",     # 01:00Z
                                                         "2025-03-31T02:30:00+02:00"]
    assert outcome.missed == []


def test_a_fixed_time_in_the_repeated_hour_of_fall_back_fires_once_in_the_first_pass(
        tmp_path, surface_class, surfaces, tally):
    # New York, 2025-11-02: 02:00 EDT becomes 01:00 EST; 01:00 happens at 05:00Z and again at 06:00Z.
    clock = FakeClock(at("2025-11-02T03:00:00Z"))
    surface = surface_class(tmp_path, clock, "America/New_York")
    surfaces.append(surface)
    surface.add("0 0 1 * * *")
    surface.walk(at("2025-11-02T03:00:00Z"), at("2025-11-02T08:00:00Z"))

    outcome = surface.outcome()
    audit(outcome, [at("2025-11-02T05:00:00Z")], tally)
    assert [local(s, NEW_YORK) for s in outcome.fired] == ["2025-11-02T01:00:00-04:00"]
    assert [iso(s) for s in outcome.fired] == ["2025-11-02T05:00:00Z"]
    assert outcome.missed == []


def test_a_quarter_hourly_job_fires_in_both_passes_of_the_repeated_hour(tmp_path, surface_class, surfaces, tally):
    clock = FakeClock(at("2025-11-02T04:50:00Z"))
    surface = surface_class(tmp_path, clock, "America/New_York")
    surfaces.append(surface)
    surface.add("0 */15 * * * *")
    surface.walk(at("2025-11-02T04:50:00Z"), at("2025-11-02T07:05:00Z"))

    outcome = surface.outcome()
    audit(outcome, every("2025-11-02T05:00:00Z", "2025-11-02T07:00:00Z", 15 * 60), tally)
    in_repeated_hour = [s for s in outcome.fired if at("2025-11-02T05:00:00Z") <= s <= at("2025-11-02T06:45:00Z")]
    assert [local(s, NEW_YORK) for s in in_repeated_hour] == [
        "2025-11-02T01:00:00-04:00", "2025-11-02T01:15:00-04:00", "2025-11-02T01:30:00-04:00",
        "2025-11-02T01:45:00-04:00",
        "2025-11-02T01:00:00-05:00", "2025-11-02T01:15:00-05:00", "2025-11-02T01:30:00-05:00",
        "2025-11-02T01:45:00-05:00"]


###############################################################################
# Clock jumps ##################################################################
###############################################################################

def test_a_clock_jump_forward_by_hours_is_one_missed_record_with_a_count_and_no_burst(
        tmp_path, surface_class, surfaces, tally):
    clock = FakeClock(at("2025-01-10T09:30:00Z"))
    surface = surface_class(tmp_path, clock, "UTC")
    surfaces.append(surface)
    surface.add("0 0 * * * *")
    surface.walk(at("2025-01-10T09:30:00Z"), at("2025-01-10T10:00:05Z"))       # 10:00 runs

    handed_over = surface.tick_at(at("2025-01-10T14:45:00Z"))                  # the clock jumps 4 h 45 min
    after_jump = surface.outcome()
    surface.walk(at("2025-01-10T14:45:01Z"), at("2025-01-10T15:00:05Z"))

    audit(surface.outcome(), every("2025-01-10T10:00:00Z", "2025-01-10T15:00:00Z", HOUR), tally)
    assert handed_over == 1                                                    # one record, not a burst
    assert [iso(s) for s in after_jump.fired] == ["2025-01-10T10:00:00Z"]
    assert [(iso(a), n, iso(b)) for a, n, b in after_jump.missed] == [
        ("2025-01-10T11:00:00Z", 4, "2025-01-10T14:00:00Z")]


class CountingSpec:
    """A cron expression that counts the fire instants the scheduler draws from it, and stops a runaway scan."""

    def __init__(self, expression: str, limit: int):
        self._spec = parse_cron(expression)
        self.expression, self.fields = self._spec.expression, self._spec.fields
        self.evaluations = 0
        self.limit = limit

    @property
    def wildcard_time(self) -> bool:
        return self._spec.wildcard_time

    def next_after(self, after, tz):
        return next(self.iter_after(after, tz), None)

    def iter_after(self, after, tz):
        for instant in self._spec.iter_after(after, tz):
            self.evaluations += 1
            if self.evaluations > self.limit:
                raise AssertionError(f"more than {self.limit} cron evaluations: the scan is not bounded")
            yield instant


def audit_every_second(outcome: Outcome, first: float, last: float, tally: Tally) -> None:
    """audit() for an every-second job over a span too long to list: fires and `missed` ranges must tile
    [first, last] second by second, with no overlap (a double fire) and no hole (a silent skip)."""
    spans = sorted([(s, s) for s in outcome.fired] + [(a, b) for a, _, b in outcome.missed])
    expected_next, doubles, skips = first, 0, 0
    for start, end in spans:
        doubles += int(start < expected_next)
        skips += int(start > expected_next)
        expected_next = max(expected_next, end + 1)
    skips += int(expected_next <= last)
    tally.cases += 1
    tally.double_fires += doubles
    tally.silent_skips += skips
    assert (doubles, skips) == (0, 0), spans


def due_outcome(dues: list[Due]) -> Outcome:
    """What the scheduler found, as the runs it would start and the `missed` records it would cause."""
    return Outcome([d.slot for d in dues if d.slot is not None],
                   [(d.first_missed, d.missed, d.last_missed) for d in dues if d.missed], [])


def test_a_clock_jump_forward_by_a_year_with_an_every_second_job_costs_bounded_evaluation(tally):
    clock = FakeClock(at("2025-01-10T12:00:00Z"))
    spec = CountingSpec("* * * * * *", limit=20 * MISSED_SCAN_LIMIT)
    scheduler = Scheduler(misfire_grace=GRACE, clock=clock)
    scheduler.add(job("a", spec, UTC), clock())
    clock.now = at("2025-01-10T12:00:01Z")
    dues = scheduler.tick(clock.now)
    before = spec.evaluations

    clock.now = at("2026-01-10T12:00:00Z")
    started = time.perf_counter()
    jump = scheduler.tick(clock.now)
    tally.year_jump_ms.append((time.perf_counter() - started) * 1000)     # for the figure; not asserted

    audit_every_second(due_outcome(dues + jump), at("2025-01-10T12:00:01Z"), at("2026-01-10T12:00:00Z"), tally)
    evaluations = spec.evaluations - before
    assert evaluations <= MISSED_SCAN_LIMIT + 2 * GRACE + 10, evaluations    # not one per second of the year
    [due] = jump                                                                # one hand-over: no burst
    assert (iso(due.first_missed), iso(due.last_missed)) == ("2025-01-10T12:00:02Z", "2026-01-10T11:59:59Z")
    assert due.missed >= MISSED_SCAN_LIMIT                                      # recorded as "at least"
    assert due.slot == at("2026-01-10T12:00:00Z")
    assert scheduler.next_at("a") == at("2026-01-10T12:00:01Z")


def test_a_clock_jump_forward_by_a_year_is_recorded_as_at_least_through_a_service(tmp_path, surfaces, tally):
    clock = FakeClock(at("2025-01-10T12:00:00Z"))
    surface = HttpSurface(tmp_path, clock, "UTC")
    surfaces.append(surface)
    surface.add("* * * * * *")
    surface.tick_at(at("2025-01-10T12:00:01Z"))

    started = time.perf_counter()
    handed_over = surface.tick_at(at("2026-01-10T12:00:00Z"))
    tally.year_jump_ms.append((time.perf_counter() - started) * 1000)     # for the figure; not asserted

    outcome = surface.outcome()
    audit_every_second(outcome, at("2025-01-10T12:00:01Z"), at("2026-01-10T12:00:00Z"), tally)
    assert handed_over == 1                     # the missed count and the run for now together: no burst
    assert [iso(s) for s in outcome.fired] == ["2025-01-10T12:00:01Z", "2026-01-10T12:00:00Z"]
    [missed] = [record for record in surface.records() if record["status"] == "missed"]
    assert missed["count"] >= MISSED_SCAN_LIMIT
    assert missed["error"].startswith(f"missed at least {missed['count']} runs from 2025-01-10T12:00:02Z")


def test_after_a_backward_clock_jump_no_slot_at_or_before_the_last_fired_one_fires_again(
        tmp_path, surface_class, surfaces, tally):
    clock = FakeClock(at("2025-01-10T11:59:30Z"))
    surface = surface_class(tmp_path, clock, "UTC")
    surfaces.append(surface)
    surface.add("0 * * * * *")
    surface.walk(at("2025-01-10T11:59:30Z"), at("2025-01-10T12:10:00Z"))       # 12:00 .. 12:10 run

    # The clock is set back two hours and walks through the whole repeated period, and on.
    surface.walk(at("2025-01-10T10:10:00Z"), at("2025-01-10T12:15:00Z"))

    outcome = surface.outcome()
    audit(outcome, every("2025-01-10T12:00:00Z", "2025-01-10T12:15:00Z", 60), tally)
    assert [iso(s) for s in outcome.fired] == [iso(s) for s in every("2025-01-10T12:00:00Z",
                                                                     "2025-01-10T12:15:00Z", 60)]
    assert outcome.missed == []


###############################################################################
# Downtime #####################################################################
###############################################################################

def test_three_hours_of_downtime_with_an_hourly_job_is_one_missed_record_of_three_and_nothing_twice(
        tmp_path, surface_class, surfaces, tally):
    clock = FakeClock(at("2025-01-10T09:30:00Z"))
    first = surface_class(tmp_path, clock, "UTC")
    first.add("0 0 * * * *")
    first.walk(at("2025-01-10T09:30:00Z"), at("2025-01-10T10:30:00Z"))        # 10:00 runs; stopped at 10:30

    first.close()
    clock.now = at("2025-01-10T13:30:00Z")                                     # back three hours later
    second = first.restart()
    second.walk(at("2025-01-10T13:30:00Z"), at("2025-01-10T14:10:00Z"))
    after_downtime = second.outcome()

    clock.now = at("2025-01-10T14:10:00Z")                                     # a quick restart: nothing new
    third = second.restart()
    surfaces.append(third)
    third.walk(at("2025-01-10T14:10:00Z"), at("2025-01-10T15:00:05Z"))

    outcome = third.outcome()
    audit(outcome, every("2025-01-10T10:00:00Z", "2025-01-10T15:00:00Z", HOUR), tally)
    assert [(iso(a), n, iso(b)) for a, n, b in after_downtime.missed] == [
        ("2025-01-10T11:00:00Z", 3, "2025-01-10T13:00:00Z")]
    assert [iso(s) for s in after_downtime.fired] == ["2025-01-10T10:00:00Z", "2025-01-10T14:00:00Z"]
    assert len(outcome.missed) == 1


def test_after_a_clean_restart_a_slot_only_seven_seconds_late_fires_once_and_older_ones_are_one_missed_record(
        tmp_path, surface_class, surfaces, tally):
    clock = FakeClock(at("2025-01-10T11:59:30Z"))
    first = surface_class(tmp_path, clock, "UTC", misfire_grace_seconds=30)
    first.add("0 * * * * *")
    first.walk(at("2025-01-10T11:59:30Z"), at("2025-01-10T12:01:30Z"))        # 12:00 and 12:01 run

    first.close()                                                              # a clean stop at 12:01:30
    clock.now = at("2025-01-10T12:05:07Z")                                     # back 7 s after the 12:05 slot
    second = first.restart()
    surfaces.append(second)
    handed_over = second.tick_at(clock.now)
    second.walk(at("2025-01-10T12:05:08Z"), at("2025-01-10T12:06:05Z"))

    outcome = second.outcome()
    audit(outcome, every("2025-01-10T12:00:00Z", "2025-01-10T12:06:00Z", 60), tally)
    assert handed_over == 1                                                    # the count and the late run
    assert [(iso(a), n, iso(b)) for a, n, b in outcome.missed] == [
        ("2025-01-10T12:02:00Z", 3, "2025-01-10T12:04:00Z")]
    assert [iso(s) for s in outcome.fired] == ["2025-01-10T12:00:00Z", "2025-01-10T12:01:00Z",
                                               "2025-01-10T12:05:00Z", "2025-01-10T12:06:00Z"]
    (late,) = [r for r in second.records() if r[second.slot_field].startswith("2025-01-10T12:05:00")]
    assert (late["status"], late[second.started_field]) == ("ok", "2025-01-10T12:05:07.000Z")    # late, once
