"""APScheduler 3.x peer for the scheduling benchmarks: the same cron jobs, driving the same HTTP requests.

    python bench/aps_peer.py CONFIG.json

CONFIG: {"url": target URL, "workers": 8, "jobs": [{"id", "second", "minute", "hour", "day", "month",
"day_of_week"}, ...], "run_seconds": how long to run after start, "out": result path}.

A BackgroundScheduler (UTC, MemoryJobStore, ThreadPoolExecutor(workers), coalesce=True, misfire_grace_time=30)
runs one job per entry with a CronTrigger of the same fields. Each job sends a GET to the target with a
per-thread requests.Session (trust_env=False) as schedserver's HttpRunner sends its runs (through urllib3, the
same transport): the same two X-Schedserver-* headers, streamed, at most 64 KiB read; it records time.time() just
before the request.

APScheduler 3 does not hand the scheduled time to the job, so the executor below is ThreadPoolExecutor with one
change: it passes the run time APScheduler computed (`run_times[-1]`, the only one with coalesce=True) to the
worker thread through a thread-local before calling APScheduler's own run_job. Lateness is therefore exact, not
floor(start).

Prints "ready EPOCH" once the scheduler runs with every job added; stops at run_seconds after that, or at once
on a "stop" line on stdin; then writes {"ready", "add_s", "runs": [[slot, started, status], ...], "missed",
"max_instances", "errors"} to `out` and exits without waiting for requests still in flight.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import datetime, timezone

import requests
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.base import run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

MAX_RESPONSE_BYTES = 64 * 1024
_tls = threading.local()
runs: list = []
counts = {"missed": 0, "max_instances": 0, "errors": 0}
counts_lock = threading.Lock()


def _run_with_slot(job, jobstore_alias, run_times, logger_name):
    _tls.slot = run_times[-1].timestamp()
    return run_job(job, jobstore_alias, run_times, logger_name)


class SlotThreadPoolExecutor(ThreadPoolExecutor):
    """APScheduler's ThreadPoolExecutor, passing the scheduled run time to the job's thread."""

    def _do_submit_job(self, job, run_times):
        def callback(f):
            exc = f.exception()
            if exc:
                self._run_job_error(job.id, exc, getattr(exc, "__traceback__", None))
            else:
                self._run_job_success(job.id, f.result())

        f = self._pool.submit(_run_with_slot, job, job._jobstore_alias, run_times, self._logger.name)
        f.add_done_callback(callback)


def _session() -> requests.Session:
    session = getattr(_tls, "session", None)
    if session is None:
        session = _tls.session = requests.Session()
        session.trust_env = False
    return session


def make_job(url: str):
    def hit(job_id: str) -> None:
        started = time.time()
        slot = getattr(_tls, "slot", None)
        if slot is None:
            slot = float(int(started))
        status = 0
        try:
            scheduled = datetime.fromtimestamp(slot, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            response = _session().get(url, headers={"X-Schedserver-Schedule-Id": job_id,
                                                    "X-Schedserver-Scheduled-At": scheduled},
                                      timeout=(10.0, 30.0), stream=True, allow_redirects=False)
            try:
                read = 0
                while read < MAX_RESPONSE_BYTES:
                    chunk = response.raw.read(min(16384, MAX_RESPONSE_BYTES - read))
                    if not chunk:
                        break
                    read += len(chunk)
            finally:
                response.close()
            status = response.status_code
        except Exception:
            status = -1
        runs.append((slot, started, status))     # list.append is atomic under the GIL
    return hit


def main() -> int:
    config = json.loads(open(sys.argv[1]).read())
    logging.getLogger("apscheduler").setLevel(logging.ERROR)     # misfires etc. are counted by the listener
    hit = make_job(config["url"])
    scheduler = BackgroundScheduler(
        executors={"default": SlotThreadPoolExecutor(int(config.get("workers", 8)))},
        job_defaults={"coalesce": True, "misfire_grace_time": 30, "max_instances": 1},
        timezone=timezone.utc)

    def on_event(event):
        with counts_lock:
            if event.code == EVENT_JOB_MISSED:
                counts["missed"] += 1
            elif event.code == EVENT_JOB_MAX_INSTANCES:
                counts["max_instances"] += 1
            elif event.code == EVENT_JOB_ERROR:
                counts["errors"] += 1
    scheduler.add_listener(on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)

    t0 = time.perf_counter()
    for job in config["jobs"]:
        trigger = CronTrigger(second=job["second"], minute=job["minute"], hour=job["hour"], day=job["day"],
                              month=job["month"], day_of_week=job["day_of_week"], timezone=timezone.utc)
        scheduler.add_job(hit, trigger, args=(job["id"],), id=job["id"])
    scheduler.start()       # pending jobs are added (next fire computed) here
    add_s = time.perf_counter() - t0
    ready = time.time()
    print(f"ready {ready:.6f}", flush=True)

    stop = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()
    threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait(max(0.0, ready + float(config["run_seconds"]) - time.time()))
    scheduler.shutdown(wait=False)
    with counts_lock:
        result = {"ready": ready, "add_s": add_s, "runs": list(runs), **counts}
    tmp = config["out"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, config["out"])
    sys.stdout.flush()
    os._exit(0)      # never wait for a request still in flight


if __name__ == "__main__":
    sys.exit(main())
