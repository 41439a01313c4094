"""Scheduling benchmarks: how late fires start, under sparse, bursty and sustained load, against APScheduler.

floor       how late a bare Python thread wakes at the top of a second (the floor for everything below)
sparse      10,000 HTTP schedules (~20 due per second): run-start lateness, ours vs APScheduler 3
idle_tick   Scheduler.tick(now) with nothing due, at 100 / 1,000 / 10,000 jobs (in-process)
burst       1,000 HTTP schedules due in the same second: arrival delay at the target, ours vs APScheduler 3
scripts     200 scripts due in the same second: start delay from fires.log (all within 500 ms)
sustained   100 every-second HTTP schedules: no skipped/missed, lateness, server CPU

Lateness is a run's started_at minus its scheduled second, from the server's own run log (curl-runs.log,
fires.log). Those timestamps are ISO with milliseconds, truncated, so a lateness figure is whole milliseconds
rounded down; APScheduler's start times are truncated the same way before comparing. Arrival delay is when the
loopback target (its own process) received the request minus the scheduled second, at full precision.

HTTP schedules are written to data_dir/curl-schedules.json before the server starts (built with
schedserver.validate_create + HttpSchedule(...).definition(), the server's own format; common.http_definition).
Their enabled_at is set a few seconds ahead, at the first second the benchmark wants, so no slot falls due before
the server is up (a slot due before start would be a catch-up run or a `missed` record, an artefact of the set-up,
not of the scheduler).
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import Figure, Server, median, percentile, read_ndjson, workdir  # noqa: E402

import schedserver  # noqa: E402

WORKERS = int(os.environ.get("BENCH_WORKERS", "8"))  # schedserver scheduler.workers; APScheduler gets the same pool size
SKIP_S = 2.0                # seconds after start left out of lateness windows
SETTLE_S = 1.5              # after a window, time for its last runs to end and be logged
APS_PEER = common.BENCH / "aps_peer.py"


# -- helpers ---------------------------------------------------------------------------------------------------
def _sleep_until(t: float) -> None:
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 1.0))


def _iso(ts: float) -> str:
    return schedserver.utc_iso(ts)


def _parse(text: str) -> float:
    return schedserver.parse_iso(text)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _definitions(crons: list[str], url: str, created: float, enabled_at: float) -> list[dict]:
    """Schedule definitions exactly as the server stores them (validate_create + HttpSchedule.definition())."""
    return [common.http_definition({"cron": cron, "request": {"url": url}}, created, enabled_at) for cron in crons]


_write_definitions = common.write_store


def _curl_runs(data_dir: Path) -> list[dict]:
    return read_ndjson(data_dir / "curl-runs.log")


def _curl_lateness(records: list[dict], lo: float, hi: float) -> list[float]:
    """Run-start lateness (ms) of cron runs whose slot is in [lo, hi)."""
    out = []
    for r in records:
        if r.get("trigger", "cron") != "cron" or not r.get("started_at") or not r.get("scheduled_at"):
            continue
        slot = _parse(r["scheduled_at"])
        if lo <= slot < hi:
            out.append(_ms(_parse(r["started_at"]) - slot))
    return out


def _arrival_delays(arrivals: list[dict], lo: float, hi: float) -> list[float]:
    """Arrival delay (ms) at the target of requests whose X-Schedserver-Scheduled-At is in [lo, hi)."""
    out = []
    for a in arrivals:
        if not a.get("scheduled"):
            continue
        slot = _parse(a["scheduled"])
        if lo <= slot < hi:
            out.append(_ms(a["at"] - slot))
    return out


Target = common.Target


class ApsPeer:
    """bench/aps_peer.py in its own process: APScheduler 3 BackgroundScheduler running the same cron jobs."""

    def __init__(self, directory: Path, url: str, jobs: list[dict], run_seconds: float, workers: int = WORKERS):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.out = self.directory / "aps-result.json"
        self.config = self.directory / "aps-config.json"
        self.config.write_text(json.dumps({"url": url, "workers": workers, "jobs": jobs,
                                           "run_seconds": run_seconds, "out": str(self.out)}))
        self.proc: subprocess.Popen | None = None
        self.ready = float("nan")

    def start(self, timeout: float = 120.0) -> "ApsPeer":
        self.proc = subprocess.Popen([sys.executable, str(APS_PEER), str(self.config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                break
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"APScheduler peer did not start (said {line!r})")
        self.ready = float(line.split()[1])
        return self

    def finish(self, timeout: float = 60.0) -> dict:
        """Tell the peer to stop, wait for its result file (bounded), and return it."""
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.stop()
        if not self.out.exists():
            raise RuntimeError("APScheduler peer wrote no result")
        return json.loads(self.out.read_text())

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass


def _aps_lateness(result: dict, lo: float, hi: float) -> list[float]:
    """APScheduler run-start lateness (ms, start truncated to whole ms like schedserver's logs) in [lo, hi)."""
    out = []
    for slot, started, _status in result["runs"]:
        if lo <= slot < hi:
            out.append(float(math.floor(started * 1000.0) - round(slot * 1000.0)))
    return out


def _aps_job(job_id: str, second: str, minute: str = "*") -> dict:
    return {"id": job_id, "second": second, "minute": minute, "hour": "*", "day": "*", "month": "*",
            "day_of_week": "*"}


# -- floor -----------------------------------------------------------------------------------------------------
def bench_floor(quick: bool, reps: int) -> list[Figure]:
    samples = 3 if quick else 10
    p50 = Figure("thread wake-up lateness p50", "ms", "informative")
    p99 = Figure("thread wake-up lateness p99", "ms", "informative (~0.4 ms expected)",
                 note=f"a bare thread sleeping until each whole second, time.time() minus that second; {samples} "
                      "samples per repetition (so p99 is the worst of them). The floor under every lateness below.")
    for _ in range(reps):
        values: list[float] = []

        def wake() -> None:
            for _ in range(samples):
                target = math.floor(time.time()) + 1.0
                time.sleep(max(0.0, target - time.time()))
                values.append(_ms(time.time() - target))
        thread = threading.Thread(target=wake, name="bench-floor", daemon=True)
        thread.start()
        thread.join(samples + 5)
        p50.add(percentile(values, 50))
        p99.add(percentile(values, 99))
    return [p50, p99]


# -- sparse ----------------------------------------------------------------------------------------------------
def _sparse_mix(n: int, rng: random.Random) -> list[tuple[str, int, int, int]]:
    """(cron, second, minute step, minute offset): 50% `S M/5`, 30% `S M/15`, 20% `S M` (hourly), random S, M."""
    out = []
    for i in range(n):
        step = 5 if i < n * 0.5 else 15 if i < n * 0.8 else 60
        second, offset = rng.randrange(60), rng.randrange(step)
        minute = f"{offset}/{step}" if step < 60 else str(offset)
        out.append((f"{second} {minute} * * * *", second, step, offset))
    rng.shuffle(out)
    return out


def _sparse_expected(mix: list[tuple[str, int, int, int]], lo: float, hi: float) -> int:
    by_second: dict[int, list[tuple[int, int]]] = {}
    for _, second, step, offset in mix:
        by_second.setdefault(second, []).append((step, offset))
    count = 0
    for t in range(int(lo), int(hi)):
        minute = (t // 60) % 60
        count += sum(1 for step, offset in by_second.get(t % 60, ()) if minute % step == offset)
    return count


def bench_sparse(quick: bool, reps: int) -> list[Figure]:
    n = 1_000 if quick else 10_000
    window = 10.0 if quick else 25.0        # per system and repetition; 25 s keeps a full run near 8 minutes
    rate_fig = Figure("expected fires per second", "/s", "~20 at 10,000 schedules (informative)")
    ours50 = Figure("ours run-start lateness p50", "ms", "informative")
    ours99 = Figure("ours run-start lateness p99", "ms", "<= 20 ms", lambda v: v <= 20.0)
    aps50 = Figure("APScheduler run-start lateness p50", "ms", "informative")
    aps99 = Figure("APScheduler run-start lateness p99", "ms", "informative")
    ratio = Figure("ours p99 / APScheduler p99", "x", "<= 0.5", lambda v: v <= 0.5)
    ours_arr = Figure("ours arrival delay p99", "ms", "informative")
    aps_arr = Figure("APScheduler arrival delay p99", "ms", "informative")
    ours_done = Figure("ours runs recorded / expected", "%", "informative (100)")
    aps_done = Figure("APScheduler runs recorded / expected", "%", "informative (100)")
    problems: list[str] = []
    with Target() as target:
        url = target.url + "/sparse"
        for rep in range(reps):
            mix = _sparse_mix(n, random.Random(1000 + rep))
            rate_fig.add(sum(60 / step for _, _, step, _ in mix) / 3600.0)

            # ours
            base = workdir("sparse")
            server = None
            try:
                now = time.time()
                first = math.ceil(now + 3.0)       # enabled_at: no slot falls due before the server is up
                _write_definitions(base / "data", _definitions([m[0] for m in mix], url, now, first))
                target.arrivals(clear=True)
                server = Server(base / "data", workers=WORKERS).start()
                if time.time() > first:
                    problems.append(f"rep {rep + 1}: our server took {server.started_in:.1f} s to start (after "
                                    "enabled_at)")
                lo = max(first, math.ceil(time.time())) + SKIP_S
                hi = lo + window
                _sleep_until(hi + SETTLE_S)
            finally:
                if server is not None:
                    server.stop()
            records = _curl_runs(base / "data")
            late = _curl_lateness(records, lo, hi)
            expected = _sparse_expected(mix, lo, hi)
            bad = Counter(r.get("status") for r in records if r.get("status") != "ok")
            if bad:
                problems.append(f"rep {rep + 1}: ours non-ok records {dict(bad)}")
            ours50.add(percentile(late, 50))
            ours99.add(percentile(late, 99))
            ours_arr.add(percentile(_arrival_delays(target.arrivals(clear=True), lo, hi), 99))
            ours_done.add(100.0 * len(late) / expected if expected else float("nan"))

            # APScheduler, after ours has stopped
            jobs = [_aps_job(f"job-{i}", str(second), f"{offset}/{step}" if step < 60 else str(offset))
                    for i, (_, second, step, offset) in enumerate(mix)]
            peer = ApsPeer(workdir("sparse-aps"), url, jobs, run_seconds=1.0 + SKIP_S + window + SETTLE_S + 1.0)
            target.arrivals(clear=True)
            try:
                peer.start()
                alo = math.ceil(peer.ready) + SKIP_S
                ahi = alo + window
                _sleep_until(ahi + SETTLE_S)
                result = peer.finish()
            finally:
                peer.stop()
            alate = _aps_lateness(result, alo, ahi)
            aexpected = _sparse_expected(mix, alo, ahi)
            if result["missed"] or result["max_instances"] or result["errors"]:
                problems.append(f"rep {rep + 1}: APScheduler missed={result['missed']} "
                                f"max_instances={result['max_instances']} errors={result['errors']}")
            aps50.add(percentile(alate, 50))
            aps99.add(percentile(alate, 99))
            aps_arr.add(percentile(_arrival_delays(target.arrivals(clear=True), alo, ahi), 99))
            aps_done.add(100.0 * len(alate) / aexpected if aexpected else float("nan"))
            ratio.add(ours99.values[-1] / aps99.values[-1] if aps99.values[-1] > 0 else
                      (0.0 if ours99.values[-1] == 0 else float("inf")))
    ours99.note = (f"{n:,} HTTP schedules (50% `S M/5 * * * *`, 30% `S M/15 * * * *`, 20% `S M * * * *`, random "
                   f"S and M), all GET to a loopback target; lateness of runs whose slot is in a {window:.0f} s "
                   f"window starting {SKIP_S:.0f} s after start, from curl-runs.log (whole ms, truncated). "
                   f"{WORKERS} workers." + (" Problems: " + "; ".join(problems) if problems else ""))
    ratio.note = ("APScheduler 3.11 BackgroundScheduler in its own process, ThreadPoolExecutor(8), coalesce, "
                  "misfire_grace_time=30, the same CronTriggers and the same window, run after ours (never at the "
                  "same time); its start times truncated to whole ms like ours. A 0 ms APScheduler p99 would make "
                  "the ratio inf.")
    return [rate_fig, ours50, ours99, aps50, aps99, ratio, ours_arr, aps_arr, ours_done, aps_done]


# -- idle tick -------------------------------------------------------------------------------------------------
def far_month() -> int:
    """A month about six months from now: a cron in it cannot come due while a benchmark runs."""
    return (time.gmtime().tm_mon + 5) % 12 + 1


def idle_jobs(n: int, rng: random.Random) -> list:
    """n HTTP jobs `S M H D <month ~half a year ahead> *` (random S M H D), as HttpSchedules registers them."""
    utc = schedserver.load_timezone("UTC")
    target = schedserver.HttpTarget(schedserver.validate_request({"url": "http://127.0.0.1:9/bench/idle"}))
    month = far_month()
    jobs = []
    for i in range(n):
        cron = f"{rng.randrange(60)} {rng.randrange(60)} {rng.randrange(24)} {rng.randrange(1, 29)} {month} *"
        ref = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        jobs.append(schedserver.Job(key=schedserver.job_key("http", ref), kind="http", ref=ref,
                                    cron=schedserver.parse_cron(cron), tz=utc, target=target))
    return jobs


def time_idle_ticks(jobs: list, ticks: int) -> tuple[float, float]:
    """(seconds to add every job, median microseconds of one tick(now) with nothing due) for an in-process
    Scheduler holding `jobs` (its ticker thread is never started: tick() is called here)."""
    scheduler = schedserver.Scheduler(misfire_grace=30.0, clock=time.time)
    now = time.time()
    t0 = time.perf_counter()
    for job in jobs:
        scheduler.add(job, now)
    added = time.perf_counter() - t0
    if len(scheduler) != len(jobs):
        raise RuntimeError(f"idle_tick: the scheduler holds {len(scheduler)} jobs, expected {len(jobs)}")
    nexts = [at for at in scheduler.next_of([job.key for job in jobs]) if at is not None]
    if len(nexts) != len(jobs) or min(nexts) < time.time() + 3600:
        raise RuntimeError(f"idle_tick: a job is due within the hour or never "
                           f"({_iso(min(nexts)) if nexts else 'none scheduled'})")
    durations = []
    for _ in range(ticks):
        now = time.time()
        t0 = time.perf_counter()
        due = scheduler.tick(now)
        durations.append(time.perf_counter() - t0)
        if due:
            raise RuntimeError(f"idle_tick: tick() found {len(due)} due ({due[0].job.key})")
    return added, median(durations) * 1e6


def bench_idle_tick(quick: bool, reps: int) -> list[Figure]:
    sizes = (100, 1_000, 10_000)
    ticks = 500 if quick else 3_000
    tick_figs = {n: Figure(f"tick, {n:,} jobs, nothing due", "us", "< 1 ms (1,000 us)", lambda v: v < 1000.0)
                 for n in sizes}
    add_figs = {n: Figure(f"add {n:,} jobs", "s", "informative") for n in sizes}
    for rep in range(reps):
        rng = random.Random(2000 + rep)
        for n in sizes:
            added, tick_us = time_idle_ticks(idle_jobs(n, rng), ticks)
            add_figs[n].add(added)
            tick_figs[n].add(tick_us)
    tick_figs[sizes[-1]].note = (f"in-process Scheduler(misfire_grace=30) with its ticker thread not started; "
                                 f"HTTP jobs `S M H D <month ~half a year ahead> *`; median of {ticks} tick(now) "
                                 "calls, each answering no Due. The add figure is scheduler.add(job, now) for every "
                                 "job (first next-fire computation), cron parsing not included.")
    return [*tick_figs.values(), *add_figs.values()]


# -- burst -----------------------------------------------------------------------------------------------------
def _wait_arrivals(target: Target, count: int, slot: float, limit: float) -> None:
    """Sleep past the burst, then poll the target (rarely, to not disturb it) until `count` arrived or time is up."""
    _sleep_until(slot + 1.2)
    while time.time() < slot + limit:
        if len(target.arrivals(clear=False)) >= count:
            return
        time.sleep(0.5)


def bench_burst(quick: bool, reps: int) -> list[Figure]:
    n = 200 if quick else 1_000
    lead = 4.0
    limit = 15.0
    ours_count = Figure("ours requests arrived", "", f"all {n}", lambda v, n=n: v >= n)
    ours_max = Figure("ours max arrival delay", "ms", "<= 1,000 ms", lambda v: v <= 1000.0)
    ours_p50 = Figure("ours p50 arrival delay", "ms", "<= 250 ms", lambda v: v <= 250.0)
    aps_count = Figure("APScheduler requests arrived", "", "informative")
    aps_max = Figure("APScheduler max arrival delay", "ms", "informative")
    aps_p50 = Figure("APScheduler p50 arrival delay", "ms", "informative")
    ratio = Figure("ours p50 / APScheduler p50", "x", "<= 1 (ours no slower)", lambda v: v <= 1.0)
    ours_start = Figure("ours max run-start lateness", "ms", "informative")
    problems: list[str] = []

    def delays_of(arrivals: list[dict], slot: float) -> list[float]:
        got = _arrival_delays(arrivals, slot, slot + 1)
        return got + [float("inf")] * max(0, n - len(got))     # a request that never came counts as infinitely late

    with Target() as target:
        url = target.url + "/burst"
        for rep in range(reps):
            # ours
            base = workdir("burst")
            server = None
            try:
                now = time.time()
                slot = float(math.ceil(now + lead))
                second = int(slot) % 60
                _write_definitions(base / "data", _definitions([f"{second} * * * * *"] * n, url, now, now))
                target.arrivals(clear=True)
                server = Server(base / "data", workers=WORKERS).start()
                if time.time() > slot - 0.5:
                    problems.append(f"rep {rep + 1}: our server was up only {slot - time.time():.2f} s before "
                                    "the burst")
                _wait_arrivals(target, n, slot, limit)
            finally:
                if server is not None:
                    server.stop()
            got = delays_of(target.arrivals(clear=True), slot)
            ours_count.add(sum(1 for d in got if d != float("inf")))
            ours_max.add(max(got))
            ours_p50.add(percentile(got, 50))
            records = _curl_runs(base / "data")
            late = _curl_lateness(records, slot, slot + 1)
            ours_start.add(max(late) if late else float("nan"))
            bad = Counter(r.get("status") for r in records if r.get("status") != "ok")
            if bad:
                problems.append(f"rep {rep + 1}: ours non-ok records {dict(bad)}")

            # APScheduler
            now = time.time()
            slot = float(math.ceil(now + lead))
            jobs = [_aps_job(f"job-{i}", str(int(slot) % 60)) for i in range(n)]
            peer = ApsPeer(workdir("burst-aps"), url, jobs, run_seconds=lead + limit + 5)
            target.arrivals(clear=True)
            try:
                peer.start()
                if time.time() > slot - 0.5:
                    problems.append(f"rep {rep + 1}: APScheduler was up only {slot - time.time():.2f} s before "
                                    "the burst")
                _wait_arrivals(target, n, slot, limit)
                result = peer.finish()
                if result["missed"] or result["max_instances"] or result["errors"]:
                    problems.append(f"rep {rep + 1}: APScheduler missed={result['missed']} "
                                    f"max_instances={result['max_instances']} errors={result['errors']}")
            finally:
                peer.stop()
            got = delays_of(target.arrivals(clear=True), slot)
            aps_count.add(sum(1 for d in got if d != float("inf")))
            aps_max.add(max(got))
            aps_p50.add(percentile(got, 50))
            ratio.add(ours_p50.values[-1] / aps_p50.values[-1] if aps_p50.values[-1] > 0 else float("inf"))
    ours_max.note = (f"{n:,} HTTP schedules `S * * * * *` due in the same second, {WORKERS} workers, GET to a "
                     "loopback target in its own process; delay = arrival at the target minus the scheduled second "
                     "(a request that never arrived counts as infinite). One burst per repetition."
                     + (" Problems: " + "; ".join(problems) if problems else ""))
    ratio.note = (f"APScheduler 3.11, {n:,} jobs with CronTrigger(second=S), ThreadPoolExecutor({WORKERS}), the same "
                  "requests GET (per-thread Session), run after ours.")
    return [ours_count, ours_max, ours_p50, aps_count, aps_max, aps_p50, ratio, ours_start]


# -- scripts ---------------------------------------------------------------------------------------------------
def bench_scripts(quick: bool, reps: int) -> list[Figure]:
    n = 40 if quick else 200
    limit = 30.0
    count = Figure("scripts fired", "", f"all {n}", lambda v, n=n: v >= n)
    worst = Figure("max start delay", "ms", "<= 500 ms", lambda v: v <= 500.0)
    p50 = Figure("p50 start delay", "ms", "informative")
    reload_fig = Figure(f"reload registering {n} scripts", "s", "informative")
    problems: list[str] = []
    for rep in range(reps):
        base = workdir("scripts")
        data, scripts = base / "data", base / "scripts"
        scripts.mkdir(parents=True)
        server = None
        try:
            server = Server(data, scripts_dir=scripts).start()
            slot = float(math.ceil(time.time() + 3.0 + n * 0.01))
            second = int(slot) % 60
            for i in range(n):
                path = scripts / f"job{i:03d}.sh"
                path.write_text(f"#!/bin/sh\n# @schedule {second} * * * * *\n# @description bench {i}\necho ok\n")
                os.chmod(path, 0o755)
            t0 = time.perf_counter()
            answer = server.api("POST", "/api/v1/exec/schedules/reload", {"dry_run": False})
            reload_fig.add(time.perf_counter() - t0)
            if len(answer.get("added", [])) != n or answer.get("failed"):
                problems.append(f"rep {rep + 1}: reload added {len(answer.get('added', []))}, failed "
                                f"{answer.get('failed', [])[:2]}")
            if time.time() > slot - 0.5:
                problems.append(f"rep {rep + 1}: reload ended only {slot - time.time():.2f} s before the slot")
            _sleep_until(slot + 1.0)
            fires = data / "fires.log"
            while time.time() < slot + limit:
                done = [r for r in read_ndjson(fires) if r.get("trigger") == "cron"]
                if len(done) >= n:
                    break
                time.sleep(0.5)
        finally:
            if server is not None:
                server.stop()
        records = [r for r in read_ndjson(data / "fires.log") if r.get("trigger") == "cron"]
        delays = []
        for r in records:
            if r.get("startedAt") and r.get("ts") and _parse(r["ts"]) == slot:
                delays.append(_ms(_parse(r["startedAt"]) - slot))
        bad = Counter(r.get("status") for r in records if r.get("status") != "ok")
        if bad:
            problems.append(f"rep {rep + 1}: non-ok fires {dict(bad)}")
        count.add(len(delays))
        padded = delays + [float("inf")] * max(0, n - len(delays))
        worst.add(max(padded))
        p50.add(percentile(padded, 50))
    worst.note = (f"{n} `#!/bin/sh` scripts `# @schedule S * * * * *` (the same S), body `echo ok`, registered by "
                  f"one reload; delay = startedAt - ts from fires.log (whole ms), {WORKERS} workers."
                  + (" Problems: " + "; ".join(problems) if problems else ""))
    return [count, worst, p50, reload_fig]


# -- sustained -------------------------------------------------------------------------------------------------
def bench_sustained(quick: bool, reps: int) -> list[Figure]:
    n = 100
    window = 10.0 if quick else 60.0
    skipped = Figure("skipped records", "", "0", lambda v: v == 0)
    missed = Figure("missed records", "", "0", lambda v: v == 0)
    p50 = Figure("run-start lateness p50", "ms", "informative")
    p99 = Figure("run-start lateness p99", "ms", "<= 20 ms", lambda v: v <= 20.0)
    cpu = Figure("server CPU", "%", "informative")
    done = Figure("runs recorded / expected", "%", "informative (100)")
    problems: list[str] = []
    with Target() as target:
        url = target.url + "/sustained"
        for rep in range(reps):
            base = workdir("sustained")
            server = None
            try:
                now = time.time()
                first = math.ceil(now + 3.0)
                _write_definitions(base / "data", _definitions(["* * * * * *"] * n, url, now, first))
                server = Server(base / "data", workers=WORKERS).start()
                if time.time() > first:
                    problems.append(f"rep {rep + 1}: server took {server.started_in:.1f} s to start")
                lo = max(first, math.ceil(time.time())) + SKIP_S
                hi = lo + window
                _sleep_until(lo)
                c0, w0 = server.cpu_seconds(), time.time()
                _sleep_until(hi)
                c1, w1 = server.cpu_seconds(), time.time()
                _sleep_until(hi + SETTLE_S)
            finally:
                if server is not None:
                    server.stop()
            target.arrivals(clear=True)
            records = _curl_runs(base / "data")
            statuses = Counter(r.get("status") for r in records)
            skipped.add(statuses.get("skipped", 0))
            missed.add(statuses.get("missed", 0))
            others = {k: v for k, v in statuses.items() if k not in ("ok", "skipped", "missed")}
            if others:
                problems.append(f"rep {rep + 1}: {others}")
            late = _curl_lateness(records, lo, hi)
            p50.add(percentile(late, 50))
            p99.add(percentile(late, 99))
            cpu.add(100.0 * (c1 - c0) / (w1 - w0))
            done.add(100.0 * len(late) / (n * window))
    p99.note = (f"{n} HTTP schedules `* * * * * *` to a loopback target for {window:.0f} s (after {SKIP_S:.0f} s "
                "of warm-up); skipped/missed counted over the whole curl-runs.log; CPU = server process user+sys "
                "seconds over the window / wall seconds." + (" Problems: " + "; ".join(problems) if problems else ""))
    return [skipped, missed, p50, p99, cpu, done]


# -- cron ------------------------------------------------------------------------------------------------------

CRON_FORMS = ("{s} {m} {h} * * *", "*/{n} * * * * *", "0 */{n} * * * *", "{s} {m} {h} * * MON-FRI",
              "0 {m} {h} {d} * *", "0 {m} {h} 1-7 * 1", "{s} {m} * * * *", "0 0 {h} * {mo} *")


def cron_expressions(n: int, rng: random.Random) -> list[str]:
    """n random expressions of common forms (fixed times, steps, weekdays, day-of-month, both day fields)."""
    return [rng.choice(CRON_FORMS).format(s=rng.randrange(60), m=rng.randrange(60), h=rng.randrange(24),
                                          d=rng.randrange(1, 29), mo=rng.randrange(1, 13), n=rng.choice((2, 5, 15)))
            for _ in range(n)]


def bench_cron(quick: bool, reps: int) -> list[Figure]:
    """What one next-fire computation costs: steady (an expression already in use, walking its fires forward)
    and on first use (parsing a new expression included)."""
    count = 300 if quick else 3_000
    steps = 20
    zones = {name: schedserver.load_timezone(name) for name in ("UTC", "Europe/Berlin")}
    steady = {z: Figure(f"next fire, steady, {z}", "us", "about 10 us", lambda v: v <= 15.0) for z in zones}
    first = {z: Figure(f"parse + first next fire, {z}", "us", "about 25 us", lambda v: v <= 40.0) for z in zones}
    for rep in range(reps):
        rng = random.Random(3000 + rep)
        start = time.time()
        for name, tz in zones.items():
            texts = cron_expressions(count, rng)        # new ones for each zone: nothing parsed before
            t0 = time.perf_counter()
            parsed = [schedserver.parse_cron(text) for text in texts]
            firsts = [c.next_after(start, tz) for c in parsed]
            first[name].add((time.perf_counter() - t0) / count * 1e6)
            t0 = time.perf_counter()
            for c, at in zip(parsed, firsts):
                for _ in range(steps):
                    at = c.next_after(at, tz)
            steady[name].add((time.perf_counter() - t0) / (count * steps) * 1e6)
    steady["UTC"].note = (f"{count:,} random expressions of {len(CRON_FORMS)} common forms; steady: each walked "
                          f"{steps} fires forward with next_after (every call a new instant, so the engine's "
                          "one-entry memo never answers); first use: parse_cron plus the first next_after, "
                          "divided by the expressions.")
    return [*steady.values(), *first.values()]


BENCHMARKS = {
    "floor": bench_floor,
    "sparse": bench_sparse,
    "idle_tick": bench_idle_tick,
    "cron": bench_cron,
    "burst": bench_burst,
    "scripts": bench_scripts,
    "sustained": bench_sustained,
}
