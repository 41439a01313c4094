"""Several replicas on PostgreSQL: python bench/cluster.py [--quick] [--db URL]

Writes bench/RESULTS-cluster.md. Without --db it starts its own PostgreSQL server (tests/pg.py: Debian's
postgresql package, a temporary directory, a loopback port); each part takes a fresh database.

- anchor: two processes sharing one database, one job every second, N seconds: how many runs? schedserver (two
  replicas) and APScheduler 3.x with its SQLAlchemy job store on the same PostgreSQL, side by side.
- sustained: three replicas, 10,000 HTTP schedules, 500 runs a second for 60 s: doubles, gaps, lateness.
- failover: three replicas, 300 schedules every second; one is SIGKILLed: how long until its schedules' next
  slots start on the survivors.

Every request goes to bench/target.py (its own process), which stamps each arrival with the slot it carries.
"""

from __future__ import annotations

import argparse
import collections
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
sys.path.insert(2, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg  # noqa: E402

import common  # noqa: E402
from common import Figure, Server, Target, median, percentile, workdir  # noqa: E402

import schedserver  # noqa: E402


def sleep_until(instant: float) -> None:
    time.sleep(max(0.0, instant - time.time()))


class Databases:
    """Fresh databases on the server at --db, or on a PostgreSQL server of our own."""

    def __init__(self, url: str | None):
        self.url, self.server = url, None
        if url is None:
            from pg import PostgresServer
            self.server = PostgresServer()
            self.server.start()

    def new(self) -> str:
        if self.server is not None:
            return self.server.new_database()
        name = "bench_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def replicas(n: int, url: str, name: str, **settings) -> list[Server]:
    base = workdir(name)
    scripts = base / "scripts"
    for i in range(n):
        (base / f"replica{i}").mkdir(parents=True)
    return [Server(base / f"replica{i}" / "data", scripts, storage_url=url, **settings) for i in range(n)]


def load_schedules(url: str, name: str, crons: list[str], target: str) -> None:
    """Store the schedules (one path each) through `schedserver migrate`, as an operator moving a data dir would."""
    data = workdir(name) / "seed" / "data"
    now = time.time()
    common.write_store(data, [common.http_definition({"cron": cron, "request": {"url": f"{target}/c/{i}"}},
                                                     now, now) for i, cron in enumerate(crons)])
    subprocess.run([sys.executable, "-m", "schedserver", "migrate", "--to", url, "--data-dir", str(data)],
                   check=True, capture_output=True, cwd=str(common.REPO), env={**common.Server(data).env})


def tally(arrivals: list[dict], paths: int, lo: int, hi: int) -> tuple[int, int, int, list[float]]:
    """(arrived, doubled, gaps, lateness ms) of slots lo..hi-1 of schedules /c/0.. /c/paths-1, each due every
    second it names in `due`."""
    counts = collections.Counter()
    lateness = []
    for a in arrivals:
        if a["scheduled"] is None or not a["path"].startswith("/c/"):
            continue
        slot = schedserver.parse_iso(a["scheduled"])
        if lo <= slot < hi:
            counts[(a["path"], slot)] += 1
            lateness.append((a["at"] - slot) * 1000)
    doubled = sum(1 for c in counts.values() if c > 1)
    return len(counts), doubled, 0, lateness


def bench_anchor(dbs: Databases, quick: bool, reps: int) -> list[Figure]:
    seconds = 8
    ours = Figure(f"schedserver, 2 replicas: runs of a job every second for {seconds} s", "", f"{seconds}",
                  lambda v: v == seconds)
    theirs = Figure(f"APScheduler 3.x + SQLAlchemyJobStore, 2 processes: runs in {seconds} s", "",
                    f"informative ({seconds} would be right)")
    with Target() as target:
        for _ in range(reps):
            url = dbs.new()
            servers = replicas(2, url, "anchor")
            try:
                for server in servers:
                    server.start()
                servers[0].api("POST", "/api/v1/curl/schedule",
                               {"cron": "* * * * * *", "request": {"url": target.url + "/c/0"}}, expect=201)
                lo = math.ceil(time.time()) + 3
                target.arrivals()
                sleep_until(lo + seconds + 2)
                arrived = [a for a in target.arrivals() if a["scheduled"]
                           and lo <= schedserver.parse_iso(a["scheduled"]) < lo + seconds]
                ours.add(len(arrived))
            finally:
                for server in servers:
                    server.stop()
            # APScheduler: the same job added by two processes on one job store.
            aps_url = dbs.new().replace("postgresql://", "postgresql+psycopg://", 1)
            peers = []
            for _ in range(2):          # one after the other: two at once race to create its table
                peers.append(subprocess.Popen([sys.executable, str(common.BENCH / "aps_cluster_peer.py"), aps_url,
                                               target.url + "/aps", str(seconds + 6)], stdout=subprocess.PIPE,
                                              text=True))
                assert peers[-1].stdout.readline().strip() == "ready", "the APScheduler peer did not start"
            lo = time.time() + 2
            target.arrivals()
            sleep_until(lo + seconds)
            arrived = [a for a in target.arrivals() if a["path"] == "/aps" and lo <= a["at"] < lo + seconds]
            theirs.add(len(arrived))
            for peer in peers:
                peer.wait(30)
    return [ours, theirs]


def bench_sustained(dbs: Databases, quick: bool, reps: int, rate: int = 500) -> list[Figure]:
    every = 20                                          # each schedule fires every 20 s: count / 20 runs a second
    count, window = (2000, 15) if quick else (rate * every, 60)
    expected = Figure("slots expected", "", "informative")
    arrived_f = Figure("slots arrived / expected", "%", "100", lambda v: v == 100)
    doubled_f = Figure("slots doubled", "", "0", lambda v: v == 0)
    p50 = Figure("run-start lateness p50 (arrival at the target)", "ms", "informative")
    p99 = Figure("run-start lateness p99 (arrival at the target)", "ms",
                 "<= 50 ms" if count == 10000 else "informative (the target is at 500 runs/s)",
                 (lambda v: v <= 50) if count == 10000 else None)
    cpu = Figure("CPU per replica", "%", "informative")
    with Target() as target:
        for _ in range(reps):
            url = dbs.new()
            crons = [f"{i % every}/{every} * * * * *" for i in range(count)]
            load_schedules(url, "sustained", crons, target.url)
            servers = replicas(3, url, "sustained", workers=16)
            try:
                for server in servers:
                    server.start()
                lo = math.ceil(time.time()) + 5
                hi = lo + window
                sleep_until(lo - 0.5)
                target.arrivals()           # forget what came before the window
                c0 = [s.cpu_seconds() for s in servers]
                sleep_until(hi)
                c1 = [s.cpu_seconds() for s in servers]
                sleep_until(hi + 15)        # the late ones arrive too
                arrivals = target.arrivals()
            finally:
                for server in servers:
                    server.stop()
            wanted = count * window // every
            arrived, doubled, _, lateness = tally(arrivals, count, lo, hi)
            with psycopg.connect(url) as conn:
                print("   records by status:", conn.execute(
                    "SELECT line::json->>'status', count(*) FROM runs GROUP BY 1").fetchall(),
                    "claims by state:", conn.execute("SELECT state, count(*) FROM claims GROUP BY 1").fetchall(),
                    flush=True)
            expected.add(wanted)
            arrived_f.add(100.0 * arrived / wanted)
            doubled_f.add(doubled)
            p50.add(percentile(lateness, 50))
            p99.add(percentile(lateness, 99))
            cpu.add(100.0 * median([b - a for a, b in zip(c0, c1)]) / window)
    return [expected, arrived_f, doubled_f, p50, p99, cpu]


def bench_failover(dbs: Databases, quick: bool, reps: int) -> list[Figure]:
    count = 300
    failover = Figure("SIGKILL to the dead replica's next slots started on survivors (the last of them)", "s",
                      "informative (cluster.takeover_seconds = 2)")
    doubled_f = Figure("slots doubled around the kill", "", "0", lambda v: v == 0)
    with Target() as target:
        for _ in range(reps):
            url = dbs.new()
            load_schedules(url, "failover", ["* * * * * *"] * count, target.url)
            servers = replicas(3, url, "failover", workers=16)
            try:
                for server in servers:
                    server.start()
                kill_at = math.ceil(time.time()) + 8.5
                sleep_until(kill_at)
                servers[0].kill()
                sleep_until(kill_at + 8)
                arrivals = target.arrivals()
            finally:
                for server in servers:
                    server.stop()
            first_after: dict[str, float] = {}
            for a in sorted(arrivals, key=lambda a: a["at"]):
                slot = schedserver.parse_iso(a["scheduled"]) if a["scheduled"] else 0
                if slot > kill_at and a["path"] not in first_after:
                    first_after[a["path"]] = a["at"] - kill_at
            _, doubled, _, _ = tally(arrivals, count, math.floor(kill_at) - 5, math.floor(kill_at) + 6)
            failover.add(max(first_after.values()))
            doubled_f.add(doubled)
    return [failover, doubled_f]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--db", default=None, help="a PostgreSQL server URL to make databases on")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="anchor, sustained, failover")
    parser.add_argument("--rate", type=int, default=500, help="runs a second in the sustained part (with --only)")
    args = parser.parse_args(argv)
    if args.rate != 500 and not args.only:
        parser.error("--rate is for a part alone (--only sustained): the published table is at 500 runs/s")
    reps = args.reps or (1 if args.quick else 3)
    info = common.machine()
    dbs = Databases(args.db)
    started = time.time()
    rows = ["| benchmark | figure | median | spread (min-max) | n | target | met |", "|---|---|---:|---:|---:|---|---|"]
    try:
        for name, bench in (("anchor", bench_anchor), ("sustained", bench_sustained), ("failover", bench_failover)):
            if args.only and name not in args.only:
                continue
            print(f"-- {name} ...", flush=True)
            extra = {"rate": args.rate} if name == "sustained" else {}
            for f in bench(dbs, args.quick, reps, **extra):
                met = "" if f.ok is None else ("yes" if f.ok(median(f.values)) else "**no**")
                row = (f"| {name} | {f.name} | {median(f.values):.4g} {f.unit} | {min(f.values):.4g}-"
                       f"{max(f.values):.4g} | {len(f.values)} | {f.target} | {met} |")
                print(row, flush=True)
                rows.append(row)
    finally:
        dbs.close()
        common.cleanup()
    if args.only:
        return 0            # a part alone is not the published table
    out = common.BENCH / ("RESULTS-cluster-quick.md" if args.quick else "RESULTS-cluster.md")
    out.write_text("\n".join([
        "# schedserver cluster benchmark results", "",
        f"Written by `python bench/cluster.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {time.time() - started:.0f} s in all.", "",
        f"Machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, {info['system']}; PostgreSQL, "
        "the replicas and the target all on this one machine. Each figure is the median over "
        f"{reps} repetition(s).", "", *rows, ""]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
