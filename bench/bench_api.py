"""API benchmarks: mutation latency, read throughput, fires-log history queries, start-up with a big data dir,
and a data dir of 100,000 HTTP schedules.

mutations   create / toggle / edit / delete p50 at 100 and 10,000 stored schedules (<= 10 ms, within 2x), and an
            edit (PATCH /{id}) within 1.5x of a toggle at 10,000 stored
reads       list routes under wrk, against bare Bottle on waitress answering the same bytes (>= 0.5x)
history     exec history on a 1,000,000-line fires log: named script p50 <= 20 ms, absent <= 1 s, flat memory
startup     10,000 HTTP schedules, 1,000 scripts, a 1,000,000-line runs log: start after a clean stop and after
            SIGKILL, spawn to 'listening' <= 3 s, RSS <= 150 MB
scale100k   100,000 HTTP schedules: start <= 5 s, RSS <= 400 MB, mutations p50 <= 10 ms, idle tick < 1 ms
runs        GET /{id}/runs?limit=50 following next_cursor on a 1,000,000-line curl-runs.log: p50 <= 20 ms a page

BENCHMARKS maps a name to function(quick, reps) -> list[Figure], one value per repetition in each Figure.
Every server runs in its own process (common.Server, or bench/bare_app.py for the reference), one at a time,
and is stopped in a finally. Data dirs live under common.workdir() (bench/.work, removed by run.py at the end).

Stored schedules are written as data_dir/curl-schedules.json (the JournalStore snapshot) before start, each
definition built with schedserver.validate_create + HttpSchedule(...).definition() (common.http_definition), so
the format is the server's own. Run logs are written in the layout of schedserver.format_record (checked against
it line by line on a sample). Crons are far in the future (a month about six months away), so nothing fires while
we measure.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import common
from common import BENCH, REPO, TOKEN, Figure, Server, free_port, median, workdir, write_store

if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

WRK = shutil.which("wrk") or "/usr/bin/wrk"
BIG_LOG_MAX = 2 ** 40       # the highest value the config accepts: logs never rotate


# -- helpers -------------------------------------------------------------------------------------------------
def _far_month() -> int:
    """A month about six months from now: a cron in it cannot come due while a benchmark runs."""
    return (datetime.now(timezone.utc).month + 5) % 12 + 1



class _MsIso:
    """schedserver.utc_iso(ms / 1000, ms=True) for many increasing whole-millisecond instants: strftime once per
    second. Log generators keep their instants in whole milliseconds, so the text is exact."""

    def __init__(self) -> None:
        self.second = None
        self.prefix = ""

    def __call__(self, ms: int) -> str:
        sec, frac = divmod(ms, 1000)
        if sec != self.second:
            self.second = sec
            self.prefix = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
        return f"{self.prefix}{frac:03d}Z"


def _layout_check(kind: str, line: str, run: dict) -> None:
    """A generated log line must be, byte for byte, the line the server writes for `run` (NdjsonLog.append of
    schedserver.format_record): the benchmarks read what the server reads, in the layout it writes today."""
    import schedserver
    expected = json.dumps(schedserver.format_record(kind, run), separators=(",", ":"), ensure_ascii=False)
    if line.rstrip("\n") != expected:
        raise RuntimeError(f"the generated {kind} runs-log line is not in schedserver.format_record's layout:\n"
                           f"  generated: {line.rstrip()}\n  server:    {expected}")


def _checked(i: int) -> bool:
    """Which generated lines are compared with format_record: the first hundred, then one in 9,973."""
    return i < 100 or i % 9973 == 0


def _run_id(i: int, variant: int) -> str:
    return f"{i >> 16 & 0xffffffff:08x}-{i & 0xffff:04x}-4000-{variant:04x}-{(i * 2654435761) & 0xffffffffffff:012x}"


def curl_definitions(n: int, *, varied: bool = False, created_from: float | None = None) -> list[dict]:
    """n stored HTTP schedule definitions in the server's own format (validate_create + HttpSchedule)."""
    month = _far_month()
    now = time.time()
    start = created_from if created_from is not None else now - n - 3600
    defs = []
    for i in range(n):
        cron = (f"{i % 60} {(i // 60) % 60} {(i // 3600) % 24} {1 + i % 28} {month} *" if varied
                else f"0 0 0 1 {month} *")
        payload = {"cron": cron, "name": f"bench schedule {i:05d}",
                   "request": {"url": f"http://127.0.0.1:9/bench/hook/{i}", "method": "POST",
                               "headers": {"X-Bench": str(i)}, "json": {"n": i}}}
        defs.append(common.http_definition(payload, start + i * 0.5))
    return defs


def write_scripts(scripts_dir: Path, names: list[str], cron_of: Callable[[int], str]) -> None:
    for i, rel in enumerate(names):
        path = scripts_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n# @schedule {cron_of(i)}\n# @description bench script {i}\nexit 0\n")
        os.chmod(path, 0o755)


class Client:
    """One keep-alive HTTP/1.1 connection; request() answers (status, body bytes, seconds)."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {TOKEN}"}

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, float]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        t0 = time.perf_counter()
        try:
            self.conn.request(method, path, body=data, headers=headers)
            response = self.conn.getresponse()
            payload = response.read()
        except (http.client.HTTPException, ConnectionError):
            self.conn.close()       # the server dropped the connection: say so, the caller decides
            raise
        return response.status, payload, time.perf_counter() - t0

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, payload, _ = self.request(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
        return json.loads(payload) if payload else None

    def close(self) -> None:
        self.conn.close()


def _stop_all(*things: Any) -> None:
    """Stop servers and close clients (whichever of them exist), each even if another fails."""
    for thing in things:
        if thing is None:
            continue
        try:
            (thing.stop if hasattr(thing, "stop") else thing.close)()
        except Exception as e:     # keep stopping the others
            print(f"   warning: could not stop {thing!r}: {e}", file=sys.stderr)


def _with_log(exc: Exception, server: Server | None) -> Exception:
    """`exc` with the last lines the server logged, so a failure says what the server saw."""
    tail = "\n".join(server.stderr_lines[-15:]) if server is not None else ""
    if not tail:
        return exc
    return RuntimeError(f"{type(exc).__name__}: {exc}\n-- server log, last lines:\n{tail}")


def _ms(values: list[float]) -> float:
    return median(values) * 1000


def _lower(limit: float) -> Callable[[float], bool]:
    return lambda v, limit=limit: v == v and v <= limit


def _higher(limit: float) -> Callable[[float], bool]:
    return lambda v, limit=limit: v == v and v >= limit


# -- 5. mutations --------------------------------------------------------------------------------------------
def _created_payload() -> dict:
    return {"cron": f"0 0 0 1 {_far_month()} *", "name": "bench created",
            "request": {"url": "http://127.0.0.1:9/bench/created", "method": "POST",
                        "headers": {"X-Bench": "1"}, "json": {"n": 1}}}


def _edit_payload(k: int) -> dict:
    """An edit (PATCH /{id}) of four fields, different each round: a new cron (so the schedule is scheduled
    again), name, retry and overlap."""
    return {"cron": f"{k % 60} {k // 60 % 60} 0 1 {_far_month()} *", "name": f"bench edited {k}",
            "retry": {"count": k % 4, "min_backoff_seconds": 5}, "overlap": ("forbid", "allow")[k % 2]}


class Mutator:
    """Rounds of create, toggle (a stored schedule, explicit enabled flip), with `edit` an edit (another stored
    schedule, PATCH /{id} of four fields), delete (the one just created) over one keep-alive connection, so the
    store stays at its size (+1). Client-side latency of each request."""

    def __init__(self, client: Client, stored: list[str], edit: bool = False):
        self.client = client
        self.stored = stored
        self.enabled = {sid: True for sid in stored}
        self.cursor = 0
        self.edit = edit
        self.payload = _created_payload()

    def warm_up(self, rounds: int = 5) -> None:
        """Code paths, connection, file cache."""
        for _ in range(rounds):
            created = self.client.json("POST", "/api/v1/curl/schedule", self.payload, expect=201)
            self.client.json("DELETE", f"/api/v1/curl/schedule/{created['id']}")

    def rounds(self, ops: int, budget: float) -> dict[str, list[float]]:
        """Up to `ops` rounds, stopping early (after at least 20) once `budget` seconds have passed."""
        client = self.client
        times: dict[str, list[float]] = {"create": [], "toggle": [], **({"edit": []} if self.edit else {}),
                                         "delete": []}
        deadline = time.monotonic() + budget
        for k in range(ops):
            status, body, dt = client.request("POST", "/api/v1/curl/schedule", self.payload)
            if status != 201:
                raise RuntimeError(f"create: {status} {body[:200]!r}")
            times["create"].append(dt)
            new_id = json.loads(body)["id"]
            sid = self.stored[self.cursor % len(self.stored)]
            self.cursor += 1
            status, body, dt = client.request("PATCH", f"/api/v1/curl/schedule/{sid}/toggle",
                                              {"enabled": not self.enabled[sid]})
            if status != 200 or json.loads(body)["enabled"] == self.enabled[sid]:
                raise RuntimeError(f"toggle: {status} {body[:200]!r}")
            self.enabled[sid] = not self.enabled[sid]
            times["toggle"].append(dt)
            if self.edit:
                edited = self.stored[(self.cursor + len(self.stored) // 2) % len(self.stored)]
                change = _edit_payload(self.cursor)
                status, body, dt = client.request("PATCH", f"/api/v1/curl/schedule/{edited}", change)
                if status != 200 or json.loads(body)["name"] != change["name"]:
                    raise RuntimeError(f"edit: {status} {body[:200]!r}")
                times["edit"].append(dt)
            status, body, dt = client.request("DELETE", f"/api/v1/curl/schedule/{new_id}")
            if status != 200:
                raise RuntimeError(f"delete: {status} {body[:200]!r}")
            times["delete"].append(dt)
            if k >= 19 and time.monotonic() > deadline:
                break
        return times


def _stored_ids(data: Path) -> list[str]:
    return [d["id"] for d in json.loads((data / "curl-schedules.json").read_bytes())["schedules"]]


def _check_total(client: Client, expected: int, when: str) -> None:
    total = client.json("GET", "/api/v1/curl/schedule?limit=1")["meta"]["total"]
    if total != expected:
        raise RuntimeError(f"{when} the server holds {total} schedules, expected {expected}")


def bench_mutations(quick: bool, reps: int) -> list[Figure]:
    big = 2_000 if quick else 10_000
    sizes = (100, big)
    ops = 50 if quick else 200
    budget = 8.0 if quick else 25.0         # seconds per repetition and size, so a slow build cannot run away
    ops_measured = ("create", "toggle", "edit", "delete")
    figs: dict[tuple[str, int], Figure] = {}
    for op in ops_measured:
        for size in sizes:
            figs[op, size] = Figure(f"{op} p50, {size:,} stored", "ms", "<= 10 ms", _lower(10.0))
    measured: dict[int, list[int]] = {size: [] for size in sizes}
    for size in sizes:
        root = workdir(f"mutations-{size}")
        write_store(root / "data", curl_definitions(size))
        server = client = None
        try:
            server = Server(root / "data", root / "scripts", misfire_grace_seconds=30).start()
            client = Client(server.port)
            _check_total(client, size, "after start")
            mutator = Mutator(client, _stored_ids(root / "data"), edit=True)
            mutator.warm_up()
            for _ in range(reps):
                times = mutator.rounds(ops, budget)
                measured[size].append(len(times["create"]))
                for op, values in times.items():
                    figs[op, size].add(_ms(values))
            _check_total(client, size, "after the run")
        except Exception as e:
            raise _with_log(e, server)
        finally:
            _stop_all(client, server)
            shutil.rmtree(root, ignore_errors=True)
    out = []
    for op in ops_measured:
        small, large = figs[op, sizes[0]], figs[op, sizes[1]]
        ratio = Figure(f"{op} p50 ratio {big:,} / 100", "x", "<= 2x", _lower(2.0),
                       values=[b / a for a, b in zip(small.values, large.values)])
        out += [small, large, ratio]
        if op == "edit":
            out.append(Figure(f"edit p50 / toggle p50, {big:,} stored", "x", "<= 1.5x", _lower(1.5),
                              values=[e / t for e, t in zip(large.values, figs["toggle", big].values)]))
    capped = {size: n for size, n in measured.items() if any(v < ops for v in n)}
    out[0].note = (f"one keep-alive client, sequential; each round is create, toggle (a stored schedule, "
                   f"explicit enabled flip), edit (another stored schedule: PATCH /{{id}} of cron, name, retry "
                   f"and overlap, answered with the whole schedule), delete (the one just created), so the store "
                   f"stays at its size; "
                   f"{ops} rounds per repetition (capped at {budget:.0f} s, at least 20)"
                   + (f"; rounds measured where capped: {capped}" if capped else "")
                   + "; latency is client-side (request sent to body read); crons far in the future.")
    return out


# -- 6. reads ------------------------------------------------------------------------------------------------
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def run_wrk(url: str, seconds: int, connections: int = 16) -> dict:
    """wrk -t1 -cN -dS --latency with our token; answers rps, p50/p99 ms, requests, errors (text)."""
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {TOKEN}",
            url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or out}")
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    count = re.search(r"(\d+) requests in", out)
    if not (rps and p99 and count):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    errors = []
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        errors.append(f"{non2xx.group(1)} non-2xx")
    sock = re.search(r"Socket errors:\s+(.*)", out)
    if sock:
        errors.append("socket errors " + sock.group(1).strip())
    return {"rps": float(rps.group(1)), "p50": _wrk_ms(p50.group(1)) if p50 else float("nan"),
            "p99": _wrk_ms(p99.group(1)), "requests": int(count.group(1)), "errors": "; ".join(errors)}


class BareApp:
    """bench/bare_app.py in its own process: bare Bottle routes on waitress answering the given bodies."""

    def __init__(self, bodies: dict[str, Path], threads: int = 8):
        self.bodies = bodies
        self.threads = threads
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "BareApp":
        argv = [sys.executable, str(BENCH / "bare_app.py"), str(self.port), str(self.threads),
                *(f"{route}={path}" for route, path in self.bodies.items())]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + timeout
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)     # "ready", or EOF if it died
        if not ready or self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("bare app did not start")
        while time.monotonic() < deadline:     # waitress binds in create_server, before "ready"; check anyway
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", next(iter(self.bodies)))
                c.getresponse().read()
                c.close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("bare app does not answer")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_reads(quick: bool, reps: int) -> list[Figure]:
    n = 2_000 if quick else 10_000
    n_scripts = 50
    seconds = 3 if quick else 8
    month = _far_month()
    routes = {"curl list ?limit=20": ("/api/v1/curl/schedule", "?limit=20"),
              "exec list": ("/api/v1/exec/schedules/list", "")}
    figs: dict[str, dict[str, Figure]] = {}
    for label in routes:
        figs[label] = {
            "rps": Figure(f"{label}: req/s", "req/s", "informative"),
            "p99": Figure(f"{label}: p99", "ms", "informative"),
            "bare_rps": Figure(f"{label}: bare bottle+waitress req/s", "req/s", "(reference)"),
            "bare_p99": Figure(f"{label}: bare bottle+waitress p99", "ms", "(reference)"),
            "ratio": Figure(f"{label}: ours / bare req/s", "x", ">= 0.5", _higher(0.5)),
        }
    root = workdir("reads")
    errors: list[str] = []
    sizes: dict[str, int] = {}
    try:
        write_store(root / "data", curl_definitions(n))
        write_scripts(root / "scripts", [f"team-{i % 5}/job-{i:03d}.sh" for i in range(n_scripts)],
                      lambda i: f"{i % 60} 0 0 1 {month} *")
        bodies: dict[str, Path] = {}
        for _ in range(reps):
            ours: dict[str, dict] = {}
            server = client = None
            try:
                server = Server(root / "data", root / "scripts").start()
                client = Client(server.port)
                listed = client.json("GET", "/api/v1/exec/schedules/list")
                if listed["total"] != n_scripts:
                    raise RuntimeError(f"{listed['total']} scripts registered, expected {n_scripts}")
                for label, (path, query) in routes.items():
                    for _ in range(50):     # warm-up, and the body the bare app will serve
                        status, body, _ = client.request("GET", path + query)
                        if status != 200:
                            raise RuntimeError(f"GET {path}{query}: {status} {body[:200]!r}")
                    if label not in bodies:
                        bodies[label] = root / f"body-{len(bodies)}.json"
                        bodies[label].write_bytes(body)
                        sizes[label] = len(body)
                client.close()
                client = None
                for label, (path, query) in routes.items():
                    ours[label] = run_wrk(server.url + path + query, seconds)
            except Exception as e:
                raise _with_log(e, server)
            finally:
                _stop_all(client, server)
            bare = None
            try:
                bare = BareApp({path: bodies[label] for label, (path, _) in routes.items()}, threads=8).start()
                for label, (path, query) in routes.items():
                    result = run_wrk(bare.url + path + query, seconds)
                    f = figs[label]
                    f["rps"].add(ours[label]["rps"])
                    f["p99"].add(ours[label]["p99"])
                    f["bare_rps"].add(result["rps"])
                    f["bare_p99"].add(result["p99"])
                    f["ratio"].add(ours[label]["rps"] / result["rps"])
                    for who, r in (("ours", ours[label]), ("bare", result)):
                        if r["errors"]:
                            errors.append(f"{label} {who}: {r['errors']}")
            finally:
                _stop_all(bare)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = [f for label in routes for f in figs[label].values()]
    out[0].note = (f"wrk 4.1 -t1 -c16 -d{seconds}s --latency with a bearer token, {n:,} HTTP schedules stored "
                   f"and {n_scripts} registered #!/bin/sh scripts (far-future @schedule); bodies "
                   + ", ".join(f"{label} {size:,} B" for label, size in sizes.items())
                   + "; the reference is bench/bare_app.py (bare Bottle routes on waitress, threads=8, answering "
                   "the same bytes from memory, no auth), run after ours, never at the same time; wrk takes one "
                   "of the 2 cores" + (f"; errors: {'; '.join(errors)}" if errors else "; no errors") + ".")
    return out


# -- 7. history ----------------------------------------------------------------------------------------------
TARGET_SCRIPT = "jobs/target.sh"
ABSENT_SCRIPT = "jobs/absent.sh"
OTHER_SCRIPTS = [f"jobs/task-{i:02d}.sh" for i in range(19)]


def _fires_log(path: Path, lines: int, expression: str, end: float) -> list[int]:
    """Write a fires log of `lines` lines in the layout ScriptSchedules writes (format_record("script", ...)):
    one cron fire started every 0.1 s up to `end` (`ts` its whole-second slot, `loggedAt` when it ended); every
    100th line is TARGET_SCRIPT's, the rest cycle through OTHER_SCRIPTS. Answers the byte offset of the start of
    every line whose index is a multiple of lines // 6 (for splitting into rotated files)."""
    iso = _MsIso()
    start_ms = int(end * 1000) - lines * 100
    cut = max(1, lines // 6)
    offsets = []
    written = 0
    chunk: list[str] = []
    with open(path, "wb") as f:
        for i in range(lines):
            if i % cut == 0:
                if chunk:
                    data = "".join(chunk).encode()
                    f.write(data)
                    written += len(data)
                    chunk = []
                offsets.append(written)
            started = start_ms + i * 100
            slot = started // 1000 * 1000
            logged = started + 2 + i % 40
            duration = logged - started
            rel = TARGET_SCRIPT if i % 100 == 50 else OTHER_SCRIPTS[i % len(OTHER_SCRIPTS)]
            run_id = _run_id(i, 0x8000)
            preview = f"processed {i % 977} items"
            line = (f'{{"ts":"{iso(slot)}","scriptPath":"{rel}","expression":"{expression}","runId":"{run_id}",'
                    f'"status":"ok","durationMs":{duration},"trigger":"cron","attempt":1,'
                    f'"startedAt":"{iso(started)}","returnPreview":"{preview}","exitCode":0,'
                    f'"loggedAt":"{iso(logged)}"}}\n')
            if _checked(i):
                _layout_check("script", line, {
                    "slot": slot / 1000, "ref": rel, "expression": expression, "run_id": run_id, "status": "ok",
                    "duration_ms": duration, "trigger": "cron", "attempt": 1, "started": started / 1000,
                    "return_preview": preview, "exit_code": 0, "signal": None, "output_dropped": 0,
                    "now": logged / 1000})
            chunk.append(line)
            if len(chunk) >= 50_000:
                data = "".join(chunk).encode()
                f.write(data)
                written += len(data)
                chunk = []
        data = "".join(chunk).encode()
        f.write(data)
    return offsets


def _copy_range(src: Path, dst: Path, start: int, end: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fin.seek(start)
        left = end - start
        while left > 0:
            block = fin.read(min(left, 8 << 20))
            if not block:
                break
            fout.write(block)
            left -= len(block)
    os.chmod(dst, 0o600)


def _history_dir(root: Path, cached: Path, offsets: list[int], rotated: bool, month: int) -> Path:
    """A data dir whose fires log is `cached`: in fires.log alone, or spread over fires.log + .1 .. .5."""
    data = root / "data"
    data.mkdir(parents=True, mode=0o700)
    size = cached.stat().st_size
    if not rotated:
        _copy_range(cached, data / "fires.log", 0, size)
    else:
        bounds = offsets[:6] + [size]       # six parts, oldest first
        names = ["fires.log.5", "fires.log.4", "fires.log.3", "fires.log.2", "fires.log.1", "fires.log"]
        for name, a, b in zip(names, bounds, bounds[1:]):
            _copy_range(cached, data / name, a, b)
    write_scripts(root / "scripts", [TARGET_SCRIPT, *OTHER_SCRIPTS], lambda i: f"{i % 60} 0 0 1 {month} *")
    return data


def _time_history(client: Client, script: str, count: int, rotated: bool, expect: int) -> list[float]:
    path = f"/api/v1/exec/schedules/history?scriptPath={script}&limit=100" + ("&includeRotated=true" if rotated else "")
    times = []
    for _ in range(count):
        status, body, dt = client.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        got = json.loads(body)["total"]
        if got != expect:
            raise RuntimeError(f"GET {path}: {got} entries, expected {expect}")
        times.append(dt)
    return times


def bench_history(quick: bool, reps: int) -> list[Figure]:
    big = 100_000 if quick else 1_000_000
    small = 10_000 if quick else 100_000
    n_target, n_absent = (10, 3) if quick else (20, 5)
    month = _far_month()
    expression = f"0 0 0 1 {month} *"
    settings = {"exec_fires_log_max_bytes": BIG_LOG_MAX, "exec_fires_log_backups": 5}
    f_target = Figure(f"history target script, {big:,} lines, p50", "ms", "<= 20 ms", _lower(20.0))
    f_absent = Figure(f"history absent script, {big:,} lines, p50", "ms", "<= 1,000 ms", _lower(1000.0))
    f_target_rot = Figure(f"history target script, includeRotated, {big:,} lines in 6 files, p50", "ms",
                          "<= 20 ms", _lower(20.0))
    f_absent_rot = Figure(f"history absent script, includeRotated, {big:,} lines in 6 files, p50", "ms",
                          "<= 1,000 ms", _lower(1000.0))
    f_rss_small = Figure(f"server RSS after history, {small:,}-line log", "MB", "(informs)")
    f_rss_big = Figure(f"server RSS after history, {big:,}-line log", "MB", "(informs)")
    f_rss_diff = Figure(f"RSS difference {big:,} - {small:,} lines", "MB", "<= 5 MB", _lower(5.0))
    cache = common.WORK / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    end = time.time() - 60
    logs = {}
    t0 = time.perf_counter()
    for lines in (small, big):
        path = cache / f"fires-{lines}.log"
        offsets_path = cache / f"fires-{lines}.offsets.json"
        meta = None
        if path.exists() and offsets_path.exists():
            meta = json.loads(offsets_path.read_text())
        if meta is None or meta.get("expression") != expression:   # none yet, or made in another month
            # written under temporary names and renamed, so a concurrent run never reads half a file
            tmp, tmp_meta = (p.with_name(f"{p.name}.tmp{os.getpid()}") for p in (path, offsets_path))
            meta = {"offsets": _fires_log(tmp, lines, expression, end), "expression": expression}
            tmp_meta.write_text(json.dumps(meta))
            os.replace(tmp, path)
            os.replace(tmp_meta, offsets_path)
        logs[lines] = (path, meta["offsets"])
    generated = time.perf_counter() - t0
    dirs: dict[str, Path] = {}
    try:
        dirs["small"] = workdir("history-small")
        _history_dir(dirs["small"], *logs[small], rotated=False, month=month)
        dirs["big"] = workdir("history-big")
        _history_dir(dirs["big"], *logs[big], rotated=False, month=month)
        dirs["rot"] = workdir("history-rot")
        _history_dir(dirs["rot"], *logs[big], rotated=True, month=month)
        per_file = [(dirs["rot"] / "data" / n).stat().st_size for n in
                    ("fires.log", "fires.log.1", "fires.log.2", "fires.log.3", "fires.log.4", "fires.log.5")]
        for _ in range(reps):
            for key in ("small", "big", "rot"):
                server = client = None
                try:
                    server = Server(dirs[key] / "data", dirs[key] / "scripts", **settings).start()
                    client = Client(server.port)
                    rotated = key == "rot"
                    # one untimed request of each kind first (connection, code paths)
                    _time_history(client, TARGET_SCRIPT, 1, rotated, 100)
                    target = _time_history(client, TARGET_SCRIPT, n_target, rotated, 100)
                    absent = _time_history(client, ABSENT_SCRIPT, n_absent, rotated, 0)
                    rss = server.rss_mb()
                    if key == "small":
                        f_rss_small.add(rss)
                    elif key == "big":
                        f_target.add(_ms(target))
                        f_absent.add(_ms(absent))
                        f_rss_big.add(rss)
                    else:
                        f_target_rot.add(_ms(target))
                        f_absent_rot.add(_ms(absent))
                    files = sorted(p.name for p in (dirs[key] / "data").glob("fires.log*")
                                   if not p.name.endswith(".lock"))
                    if (key == "rot") != (len(files) == 6):
                        raise RuntimeError(f"fires log files changed during the run: {files}")
                except Exception as e:
                    raise _with_log(e, server)
                finally:
                    _stop_all(client, server)
        f_rss_diff.values = [b - a for a, b in zip(f_rss_small.values, f_rss_big.values)]
    finally:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
    f_target.note = (f"fires log in the server's format ({logs[big][0].stat().st_size / 1e6:.0f} MB for "
                     f"{big:,} lines), {TARGET_SCRIPT} on every 100th line, 19 other scripts on the rest, all 20 "
                     f"registered (far-future cron), no rotation (fires_log_max_bytes=2^40); limit=100; "
                     f"p50 over {n_target} requests (target) and {n_absent} (absent script: scans every line); "
                     f"includeRotated: the same lines over fires.log + .1..5 (sizes "
                     f"{', '.join(f'{s / 1e6:.0f}' for s in per_file)} MB, newest first); RSS read after the "
                     f"requests; log generated in {generated:.1f} s (cached per run).")
    return [f_target, f_absent, f_target_rot, f_absent_rot, f_rss_small, f_rss_big, f_rss_diff]


# -- 8. startup ----------------------------------------------------------------------------------------------
STATE_FILES = ("curl-schedules.json", "run-state.json", "exec-registered.json")


def _runs_log(path: Path, ids: list[str], first: int, last: int, start_ms: int) -> None:
    """Append lines first .. last-1 of a curl-runs.log in the layout HTTP runs are recorded in
    (format_record("http", ...)): run i started at start_ms + 100 * i ms (one every 0.1 s), its slot the whole
    second before, cycling through `ids` (the schedules that have runs); a few errors and timeouts among the oks;
    each line with when the run finished and the failure streak the alert policy keeps (no response kept)."""
    iso = _MsIso()
    n = len(ids)
    chunk: list[str] = []
    # The streak each schedule reached before line `first` (lines are appended in two goes for the same ids).
    streaks = {sid: 0 for sid in ids}
    for i in range(first):
        streaks[ids[i % n]] = streaks[ids[i % n]] + 1 if _startup_status(i)[0] != "ok" else 0
    with open(path, "ab") as f:
        for i in range(first, last):
            started = start_ms + i * 100
            slot = started // 1000 * 1000
            sid = ids[i % n]
            run_id = _run_id(i, 0x9000)
            status, code, error, duration = _startup_status(i)
            streak = streaks[sid] = streaks[sid] + 1 if status != "ok" else 0
            at = iso(started)
            line = (f'{{"ts":"{at}","schedule_id":"{sid}","run_id":"{run_id}","scheduled_at":"{iso(slot)}",'
                    f'"started_at":"{at}","status":"{status}","status_code":{"null" if code is None else code},'
                    f'"duration_ms":{duration},"error":{"null" if error is None else chr(34) + error + chr(34)},'
                    f'"trigger":"cron","attempt":1,"finished_at":"{iso(started + duration)}",'
                    f'"streak":{streak},"failing":{"true" if streak else "false"}}}\n')
            if _checked(i):
                _layout_check("http", line, {
                    "started": started / 1000, "now": (started + duration) / 1000, "ref": sid, "run_id": run_id,
                    "slot": slot / 1000, "status": status, "status_code": code, "duration_ms": duration,
                    "error": error, "trigger": "cron", "attempt": 1, "streak": streak, "failing": bool(streak)})
            chunk.append(line)
            if len(chunk) >= 50_000:
                f.write("".join(chunk).encode())
                chunk = []
        f.write("".join(chunk).encode())
    os.chmod(path, 0o600)


def _startup_status(i: int) -> tuple[str, int | None, str | None, int]:
    """(status, status_code, error, duration_ms) of line i of the start-up benchmark's runs log."""
    if i % 50 == 7:
        return "error", None, "connection refused", 3 + i % 50
    if i % 50 == 19:
        return "error", 503, "HTTP 503 Service Unavailable", 3 + i % 50
    if i % 500 == 33:
        return "timeout", None, "timed out after 30 s", 30_000
    return "ok", 200, None, 3 + i % 50


def _snapshot(data: Path, into: Path) -> None:
    """Copy what a server left in `data` (besides the runs log) aside, to start later servers from."""
    into.mkdir(mode=0o700)
    for name in STATE_FILES:
        if (data / name).exists():
            shutil.copy2(data / name, into / name)


def _data_from(root: Path, name: str, runs_log: Path, snapshot: Path) -> Path:
    """A fresh data dir holding a snapshot's files and the runs log, hard-linked: the same inode, so the log
    positions saved in run-state.json name it (a copy would be another file, and the whole log replayed)."""
    data = root / name
    data.mkdir(mode=0o700)
    for file in snapshot.iterdir():
        shutil.copy2(file, data / file.name)
    os.link(runs_log, data / "curl-runs.log")
    return data


def _start(data: Path, scripts: Path, n_sched: int, n_scripts: int, replayed: int | None,
           then: str = "stop", during: Callable[[], None] | None = None) -> tuple[float, float]:
    """Start a server on `data`; answer (spawn-to-'listening' seconds, RSS MB right then). Checks what it loaded,
    how many run records it replayed (when `replayed` is given) and that start-up fired nothing; runs `during`
    while it is up; then stops it cleanly (SIGTERM: it saves run-state.json) or with SIGKILL (`then="kill"`)."""
    server = None
    try:
        server = Server(data, scripts, curl_runs_log_max_bytes=BIG_LOG_MAX, misfire_grace_seconds=30)
        server.start(timeout=300)
        rss = server.rss_mb()
        counts = server.api("GET", "/healthz").get("schedules", {})
        if counts.get("http") != n_sched or counts.get("scripts") != n_scripts:
            raise RuntimeError(f"loaded {counts}, expected {n_sched} http and {n_scripts} scripts")
        loaded = server.loaded()
        if replayed is not None and loaded.get("replayed") != replayed:
            raise RuntimeError(f"replayed {loaded.get('replayed')} run records at start, expected {replayed}")
        fired = [line for line in server.stderr_lines
                 if "missed" in line or "http run" in line or "script fire" in line or "interrupted" in line]
        if fired:
            raise RuntimeError(f"start-up fired or recorded runs: {fired[:3]}")
        if during is not None:
            during()
        started = server.started_in
        if then == "kill":
            server.kill()
        return started, rss
    except Exception as e:
        raise _with_log(e, server)
    finally:
        _stop_all(server)


def bench_startup(quick: bool, reps: int) -> list[Figure]:
    n_sched = 2_000 if quick else 10_000
    n_scripts = 200 if quick else 1_000
    n_runs = 100_000 if quick else 1_000_000
    n_after = n_runs // 10          # records the killed server wrote after its last run-state save
    f_clean = Figure("after a clean stop: spawn to 'listening'", "s", "<= 3 s", _lower(3.0))
    f_clean_rss = Figure("after a clean stop: RSS right after", "MB", "<= 150 MB", _lower(150.0))
    f_kill = Figure("after SIGKILL: spawn to 'listening'", "s", "<= 3 s", _lower(3.0))
    f_kill_rss = Figure("after SIGKILL: RSS right after", "MB", "<= 150 MB", _lower(150.0))
    f_fresh = Figure("no run-state.json, no preflight cache: spawn to 'listening'", "s", "informative")
    f_fresh_rss = Figure("no run-state.json, no preflight cache: RSS right after", "MB", "informative")
    root = workdir("startup")
    now = datetime.now(timezone.utc)
    try:
        t0 = time.perf_counter()
        seed, scripts = root / "seed", root / "scripts"
        end_ms = int((time.time() - 30) * 1000)
        start_ms = end_ms - n_runs * 100
        # created before the first run in the log; yearly crons about six months away (varied second/minute/
        # hour/day), so the last slot handled is recent and nothing is due at start
        defs = curl_definitions(n_sched, varied=True, created_from=start_ms / 1000 - n_sched - 3600)
        write_store(seed, defs)
        with_runs = [d["id"] for d in defs[: n_sched * 9 // 10]]
        runs_log = seed / "curl-runs.log"
        _runs_log(runs_log, with_runs, 0, n_runs - n_after, start_ms)
        # hourly scripts, minutes at least 15 min ahead of now, so none comes due while we measure
        write_scripts(scripts, [f"team-{i % 10}/job-{i:04d}.sh" for i in range(n_scripts)],
                      lambda i: f"{i % 60} {(now.minute + 15 + i % 45) % 60} * * * *")
        generated = time.perf_counter() - t0

        # The data dirs the measured starts begin from, each left by a real server:
        # 1. the first start ever (no run-state.json, no preflight cache), then a clean stop: run-state.json saved
        started, rss = _start(seed, scripts, n_sched, n_scripts, replayed=n_runs - n_after)
        f_fresh.add(started)
        f_fresh_rss.add(rss)
        if not (seed / "run-state.json").exists():
            raise RuntimeError("a clean stop left no run-state.json")
        # 2. a server that goes on recording runs past its last save and is killed (SIGKILL): its state is older
        #    than its runs log
        _start(seed, scripts, n_sched, n_scripts, replayed=0, then="kill",
               during=lambda: _runs_log(runs_log, with_runs, n_runs - n_after, n_runs, start_ms))
        _snapshot(seed, root / "after-kill")
        # 3. the start after that replays what the state lacks and stops cleanly: run-state.json covers the log
        _start(seed, scripts, n_sched, n_scripts, replayed=n_after)
        _snapshot(seed, root / "after-clean")
        runs_size = runs_log.stat().st_size

        for rep in range(reps):
            for name, snapshot, replayed, figs in (
                    ("clean", root / "after-clean", 0, (f_clean, f_clean_rss)),
                    ("kill", root / "after-kill", n_after, (f_kill, f_kill_rss))):
                data = _data_from(root, f"{name}-{rep}", runs_log, snapshot)
                try:
                    started, rss = _start(data, scripts, n_sched, n_scripts, replayed)
                    figs[0].add(started)
                    figs[1].add(rss)
                finally:
                    shutil.rmtree(data, ignore_errors=True)
                if runs_log.stat().st_size != runs_size:
                    raise RuntimeError("the server wrote to curl-runs.log during start-up")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    f_clean.note = (f"{n_sched:,} HTTP schedules in curl-schedules.json (yearly crons ~6 months ahead), "
                    f"{n_scripts:,} #!/bin/sh scripts (hourly, 0755, none due), curl-runs.log of {n_runs:,} lines "
                    f"({runs_size / 1e6:.0f} MB, no rotation, format_record's layout) for 90% of the schedules. "
                    f"After a clean stop: run-state.json written by a real server's clean stop (SIGTERM), covering "
                    f"the whole log (0 records replayed). After SIGKILL: a real server killed after {n_after:,} "
                    f"more records were appended past its last save, so its run-state.json is older than the log "
                    f"and the start replays those {n_after:,} records (checked from its start-up line). Each "
                    f"repetition starts from a fresh data dir holding those files (the log hard-linked: read only, "
                    f"checked) and the preflight cache the server left; files just written, so the page cache is "
                    f"warm; data generated in {generated:.1f} s; the server started as `python -m schedserver` from "
                    f"compiled bytecode, as the installed command runs it; RSS read as soon as 'listening' is "
                    f"logged.")
    f_fresh.note = (f"once per run, not a target: the very first start on that data dir (no run-state.json, so "
                    f"all {n_runs - n_after:,} records then in the log are replayed; no preflight cache, so each "
                    f"script is syntax-checked), as after an upgrade from a version without run-state.json.")
    return [f_clean, f_clean_rss, f_kill, f_kill_rss, f_fresh, f_fresh_rss]


# -- 9. scale100k --------------------------------------------------------------------------------------------
def _job_of(definition: dict) -> Any:
    """The scheduler's Job for a stored definition, built as HttpSchedules registers one."""
    import schedserver
    s = schedserver.HttpSchedule.from_definition(definition)
    return schedserver.Job(key=s.key, kind="http", ref=s.id, cron=schedserver.parse_cron(s.cron),
                           tz=schedserver.load_timezone(s.timezone), target=schedserver.HttpTarget(s.request))


def bench_scale100k(quick: bool, reps: int) -> list[Figure]:
    import bench_sched
    n = 20_000 if quick else 100_000
    ops = 50 if quick else 200
    budget = 8.0 if quick else 25.0
    ticks = 500 if quick else 3_000
    stored = f"{n:,} stored"
    f_start = Figure(f"start, {stored}: spawn to 'listening'", "s", "<= 5 s", _lower(5.0))
    f_rss = Figure(f"RSS right after 'listening', {stored}", "MB", "<= 400 MB", _lower(400.0))
    f_ops = {op: Figure(f"{op} p50, {stored}", "ms", "<= 10 ms", _lower(10.0))
             for op in ("create", "toggle", "delete")}
    f_rss_after = Figure(f"RSS after the mutations, {stored}", "MB", "informative")
    f_tick = Figure(f"tick, {n:,} jobs, nothing due (in-process)", "us", "< 1 ms (1,000 us)",
                    lambda v: v == v and v < 1000.0)
    f_add = Figure(f"add {n:,} jobs (in-process)", "s", "informative")
    measured: list[int] = []
    root = workdir("scale100k")
    try:
        t0 = time.perf_counter()
        defs = curl_definitions(n, varied=True)
        write_store(root / "seed", defs)
        ids = [d["id"] for d in defs]
        jobs = [_job_of(d) for d in defs]
        generated = time.perf_counter() - t0
        for rep in range(reps):
            data = root / f"data-{rep}"
            data.mkdir(mode=0o700)
            shutil.copy2(root / "seed" / "curl-schedules.json", data / "curl-schedules.json")
            server = client = None
            try:
                server = Server(data, root / "scripts", misfire_grace_seconds=30).start(timeout=300)
                f_start.add(server.started_in)
                f_rss.add(server.rss_mb())
                if server.loaded().get("http") != n:
                    raise RuntimeError(f"the server loaded {server.loaded()}, expected {n} http schedules")
                client = Client(server.port)
                _check_total(client, n, "after start")
                mutator = Mutator(client, ids)
                mutator.warm_up()
                times = mutator.rounds(ops, budget)
                measured.append(len(times["create"]))
                for op, values in times.items():
                    f_ops[op].add(_ms(values))
                f_rss_after.add(server.rss_mb())
                _check_total(client, n, "after the run")
            except Exception as e:
                raise _with_log(e, server)
            finally:
                _stop_all(client, server)
                shutil.rmtree(data, ignore_errors=True)
            added, tick_us = bench_sched.time_idle_ticks(jobs, ticks)     # the server is stopped by now
            f_add.add(added)
            f_tick.add(tick_us)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    f_start.note = (f"{n:,} HTTP schedules in curl-schedules.json (POST requests with a header and a JSON body, "
                    f"yearly crons with varied second/minute/hour/day ~6 months ahead), no runs log, no "
                    f"run-state.json, no scripts; a fresh data dir per repetition; RSS read as soon as 'listening' "
                    f"is logged. Mutations as in `mutations` ({ops} rounds of create, toggle, delete, capped at "
                    f"{budget:.0f} s, at least 20; rounds measured: {measured}). The tick is an in-process "
                    f"Scheduler holding a Job for each of the same {n:,} definitions (built as HttpSchedules "
                    f"registers them), median of {ticks} tick(now) calls with nothing due, run after the server "
                    f"stopped; data generated in {generated:.1f} s.")
    return [f_start, f_rss, *f_ops.values(), f_rss_after, f_tick, f_add]


# -- 10. runs -------------------------------------------------------------------------------------------------
RUNS_EVERY = 100            # the paged schedule has every 100th line of the runs log
RUNS_OTHERS = 99            # the other lines cycle through 99 other schedules
RUNS_PAGE = 50
# What is kept of an answer (_answer_preview): a webhook target's headers and its small JSON body.
_RUNS_ANSWERS = {code: json.dumps({"headers": {"Server": "nginx/1.24.0", "Content-Type": "application/json",
                                               "Content-Length": str(len(body)), "Connection": "keep-alive"},
                                   "body_preview": body, "truncated": False}, separators=(",", ":"))
                 for code, body in ((200, '{"status":"ok"}'), (503, '{"error":"upstream unavailable"}'))}


def _runs_status(i: int) -> tuple[str, int | None, str | None, int]:
    """(status, status_code, error, duration_ms) of line i: about 2% refused, 2% HTTP 503, 0.2% timeouts."""
    h = i * 7919 % 1000
    if h < 20:
        return "error", None, "connection refused", 1 + i % 5
    if h < 40:
        return "error", 503, "HTTP 503 Service Unavailable", 5 + i % 20
    if h < 42:
        return "timeout", None, "timed out after 30 s", 30_000
    return "ok", 200, None, 3 + i % 50


def _paged_runs_log(path: Path, target: str, others: list[str], lines: int, end_ms: int) -> list[str]:
    """Write a curl-runs.log of `lines` lines in the layout format_record("http", ...) writes today: one cron run
    started every 0.1 s up to `end_ms`, its slot the whole second before, with finished_at, the kept answer
    (`response`) when there was one, and the failure streak; every RUNS_EVERY-th line is `target`'s, the rest
    cycle through `others`. Answers the target's run ids, oldest first."""
    iso = _MsIso()
    start_ms = end_ms - lines * 100
    streaks = {sid: 0 for sid in [target, *others]}
    target_runs = []
    chunk: list[str] = []
    with open(path, "wb") as f:
        for i in range(lines):
            started = start_ms + i * 100
            slot = started // 1000 * 1000
            if i % RUNS_EVERY == RUNS_EVERY // 2:
                sid = target
                target_runs.append(run_id := _run_id(i, 0xa000))
            else:
                sid, run_id = others[i % len(others)], _run_id(i, 0xa000)
            status, code, error, duration = _runs_status(i)
            streak = streaks[sid] = streaks[sid] + 1 if status != "ok" else 0
            at = iso(started)
            answer = f',"response":{_RUNS_ANSWERS[code]}' if code is not None else ""
            line = (f'{{"ts":"{at}","schedule_id":"{sid}","run_id":"{run_id}","scheduled_at":"{iso(slot)}",'
                    f'"started_at":"{at}","status":"{status}","status_code":{"null" if code is None else code},'
                    f'"duration_ms":{duration},"error":{"null" if error is None else chr(34) + error + chr(34)},'
                    f'"trigger":"cron","attempt":1,"finished_at":"{iso(started + duration)}"{answer},'
                    f'"streak":{streak},"failing":{"true" if streak else "false"}}}\n')
            if _checked(i):
                _layout_check("http", line, {
                    "started": started / 1000, "now": (started + duration) / 1000, "ref": sid, "run_id": run_id,
                    "slot": slot / 1000, "status": status, "status_code": code, "duration_ms": duration,
                    "error": error, "trigger": "cron", "attempt": 1, "streak": streak, "failing": bool(streak),
                    "response": json.loads(_RUNS_ANSWERS[code]) if code is not None else None})
            chunk.append(line)
            if len(chunk) >= 50_000:
                f.write("".join(chunk).encode())
                chunk = []
        f.write("".join(chunk).encode())
    os.chmod(path, 0o600)
    return target_runs


def _walk_runs(client: Client, sid: str, expected: list[str]) -> list[float]:
    """Page through `sid`'s runs (limit=RUNS_PAGE, following next_cursor to the end); the seconds each page took.
    Checks that the pages hold every expected run once, newest first, each page full but the last."""
    path = f"/api/v1/curl/schedule/{sid}/runs?limit={RUNS_PAGE}"
    seen: list[str] = []
    times = []
    cursor = None
    while True:
        status, body, dt = client.request("GET", path + (f"&cursor={cursor}" if cursor else ""))
        if status != 200:
            raise RuntimeError(f"GET {path} (page {len(times) + 1}): {status} {body[:200]!r}")
        times.append(dt)
        page = json.loads(body)
        seen += [item["run_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        if len(page["items"]) != RUNS_PAGE:
            raise RuntimeError(f"page {len(times)} holds {len(page['items'])} runs and a next_cursor")
        if len(times) > len(expected) // RUNS_PAGE + 2:
            raise RuntimeError("next_cursor does not come to an end")
    if seen != expected[::-1]:
        missing = len(set(expected) - set(seen))
        raise RuntimeError(f"paged through {len(seen)} runs ({len(set(seen))} different, {missing} missing), "
                           f"expected the {len(expected)} of the log newest first")
    return times


def bench_runs(quick: bool, reps: int) -> list[Figure]:
    lines = 100_000 if quick else 1_000_000
    label = f"{lines:,}-line log"
    f_page = Figure(f"runs page p50, limit={RUNS_PAGE} following next_cursor, {label}", "ms", "<= 20 ms",
                    _lower(20.0))
    f_p95 = Figure(f"runs page p95, {label}", "ms", "informative")
    f_first = Figure(f"runs first page (no cursor), {label}", "ms", "informative")
    f_walk = Figure(f"runs: every page, first to last, {label}", "s", "informative")
    f_rss = Figure(f"server RSS after paging, {label}", "MB", "informative")
    root = workdir("runs")
    server = client = None
    try:
        t0 = time.perf_counter()
        data = root / "data"
        end_ms = int((time.time() - 60) * 1000)
        defs = curl_definitions(1 + RUNS_OTHERS, created_from=(end_ms - lines * 100) / 1000 - 7200)
        write_store(data, defs)
        target, others = defs[0]["id"], [d["id"] for d in defs[1:]]
        expected = _paged_runs_log(data / "curl-runs.log", target, others, lines, end_ms)
        generated = time.perf_counter() - t0
        size = (data / "curl-runs.log").stat().st_size
        # No run-state.json: the start replays the whole log (not measured here; see startup).
        server = Server(data, root / "scripts", curl_runs_log_max_bytes=BIG_LOG_MAX,
                        misfire_grace_seconds=30).start(timeout=600)
        client = Client(server.port)
        _walk_runs(client, target, expected)        # untimed: connection, code paths, page cache
        pages = 0
        for _ in range(reps):
            t1 = time.perf_counter()
            times = _walk_runs(client, target, expected)
            f_walk.add(time.perf_counter() - t1)
            pages = len(times)
            f_page.add(_ms(times))
            f_p95.add(common.percentile(times, 95) * 1000)
            f_first.add(times[0] * 1000)
        f_rss.add(server.rss_mb())
        if (data / "curl-runs.log").stat().st_size != size:
            raise RuntimeError("the server wrote to curl-runs.log while paging")
    except Exception as e:
        raise _with_log(e, server)
    finally:
        _stop_all(client, server)
        shutil.rmtree(root, ignore_errors=True)
    f_page.note = (f"curl-runs.log of {lines:,} lines ({size / 1e6:.0f} MB, no rotation) in format_record's layout "
                   f"(finished_at, the kept answer's headers and body preview on runs that had one, the failure "
                   f"streak); {1 + RUNS_OTHERS} schedules stored, the paged one on every {RUNS_EVERY}th line "
                   f"({len(expected):,} runs, about 4% failed); one keep-alive client walks from the first page "
                   f"(runs in flight, then the newest) to the last, {pages} pages of {RUNS_PAGE}, following "
                   f"next_cursor, checking every run comes once, newest first; a walk per repetition after an "
                   f"untimed one; log generated in {generated:.1f} s.")
    return [f_page, f_p95, f_first, f_walk, f_rss]


BENCHMARKS = {"mutations": bench_mutations, "reads": bench_reads, "history": bench_history,
              "startup": bench_startup, "scale100k": bench_scale100k, "runs": bench_runs}
