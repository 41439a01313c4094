"""Crash safety: the real server killed with SIGKILL mid-traffic, over and over; the NDJSON log under concurrent
writers and rotation; a malformed line in the middle of a log.

The kill loop drives creates, toggles, edits (PATCH /{id} with random fields: cron, name, timezone, enabled, the
whole request, retry, success, overlap, jitter_seconds, notify) and deletes from several threads, kills the server
at a random moment and checks, with the server dead (the snapshot and journal) and again after a restart (GET of
every schedule), that every acknowledged operation holds: every field of the last acknowledged edit is there. An
operation cut off by the kill got no answer: it is "unknown" and may have happened or not -- all of it or none of
it, an edit is never half-applied -- but nothing else may. Runs in flight at the kill leave their markers
(`running/<run id>.json`): the restart records each one `interrupted`.

SIGKILL cannot tear a single small write(2) to a regular file, so the loop also tears the runs log itself
now and then (what a power cut or a full disk leaves) to check that readers skip the torn line and the next
append does not glue onto it. Every wait has a deadline; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

import schedserver
from e2e_helpers import CURL_PATH, DEFAULT_TOKEN, ServerProcess, TargetServer, wait_until
from harness import Stack
from stored import JOURNAL, SNAPSHOT, stored_by_id

CRASH_ITERATIONS = 100
CLIENT_THREADS = 3
OPS_PER_THREAD = 8
MAX_KILL_DELAY = 0.3                # seconds after the operations start
OWNED_LIMIT = 6                     # live schedules a client thread keeps at most (bounds the work per save)
EVERY_SECOND = "*/1 * * * * *"
ONCE_A_YEAR = "0 0 0 1 1 *"
RUNS_LOG_MAX_BYTES = 4096           # the smallest allowed, so the runs log rotates during the loop
RUNS_LOG_BACKUPS = 100              # and keeps every line, so every torn line can be found again
TEAR_EVERY = 10                     # iterations between torn lines written by the test itself
APPEND_WAIT = 5.0                   # seconds for the heartbeat schedule to append after a restart
SLOW_ANSWER = 0.8                   # seconds the heartbeat's target takes: a kill often finds a run in flight
CLIENT_TIMEOUT = (2.0, 5.0)         # connect, read


###############################################################################
# The kill -9 loop
###############################################################################

class SlowTarget:
    """An HTTP server on 127.0.0.1 that answers 200 after SLOW_ANSWER seconds (at once once it is stopping)."""

    def __init__(self):
        stopping = self.stopping = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stopping.wait(SLOW_ANSWER)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="crash-slow-target", daemon=True)

    def __enter__(self) -> "SlowTarget":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# The fields an edit may change (PATCH /api/v1/curl/schedule/{id}), and what a schedule holds when a create does
# not name them. The test sends every value in the form the server keeps it (the request with all its fields,
# retry with all four, ...), so what it asked for can be compared with what is stored and shown as it is.
EDITABLE = ("cron", "name", "timezone", "enabled", "request", "retry", "success", "overlap", "jitter_seconds", "notify")
DEFAULT_RETRY = {"count": 0, "min_backoff_seconds": 5, "max_backoff_seconds": 300, "max_doublings": 5}
DEFAULTS = {"timezone": "UTC", "retry": None, "success": None, "overlap": "forbid", "jitter_seconds": 0,
            "notify": None}
EDIT_CRONS = (ONCE_A_YEAR, "0 0 12 * * MON-FRI", "30 15 3 1 * *", "0 0 0 29 2 *")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")


def random_request(rng: random.Random, target_url: str, thread: int, tag: str) -> dict:
    """A whole request object, every field given (as validate_request keeps it)."""
    method = rng.choice(("GET", "POST", "PUT"))
    request = {"url": f"{target_url}/crash/{thread}/{tag}", "method": method,
               "headers": rng.choice(({}, {"X-Crash": tag}, {"X-Crash": tag, "Accept": "text/plain"})),
               "timeout": rng.choice((1, 2, 2.5)), "follow_redirects": rng.random() < 0.3}
    if method != "GET" and rng.random() < 0.5:
        request.update(rng.choice(({"json": {"tag": tag, "n": [1, 2]}}, {"body": f"body of {tag}"})))
    return request


def random_field(rng: random.Random, name: str, target_url: str, thread: int, tag: str):
    """A value for one editable field, in the form the server keeps it."""
    if name == "cron":
        return EVERY_SECOND if rng.random() < 0.1 else rng.choice(EDIT_CRONS)
    if name == "name":
        return None if rng.random() < 0.2 else f"edit-{tag}"
    if name == "timezone":
        return rng.choice(ZONES)
    if name == "enabled":
        return rng.random() < 0.6
    if name == "request":
        return random_request(rng, target_url, thread, tag)
    if name == "retry":
        return None if rng.random() < 0.25 else {
            "count": rng.randint(0, 5), "min_backoff_seconds": rng.choice((0.5, 1, 5)),
            "max_backoff_seconds": rng.choice((5, 60, 300)), "max_doublings": rng.randint(0, 5)}
    if name == "success":
        return rng.choice((None, {"status": ["2xx"]}, {"status": ["2xx", 304]},
                           {"status": [200], "body_contains": "recorded"},
                           {"status": ["2xx", "3xx"], "body_contains": "never in the answer"}))
    if name == "overlap":
        return rng.choice(("forbid", "allow", "replace"))
    if name == "jitter_seconds":
        return rng.choice((0, 0.5, 1, 30, 3600))
    assert name == "notify"
    return None if rng.random() < 0.3 else {
        "url": f"{target_url}/notify/{thread}", "on": rng.sample(["failure", "recovery", "success"], rng.randint(1, 3)),
        "after": rng.randint(1, 3)}


def random_edit(rng: random.Random, target_url: str, thread: int, tag: str) -> dict:
    """An edit body: a few of the fields, now and then all of them."""
    names = EDITABLE if rng.random() < 0.15 else rng.sample(EDITABLE, rng.randint(1, 4))
    return {name: random_field(rng, name, target_url, thread, tag) for name in names}


def canonical(view: dict | None) -> dict | None:
    """A schedule's fields as compared: no retry and the default retry are the same thing."""
    if view is None:
        return None
    shown = {name: view.get(name, DEFAULTS.get(name)) for name in EDITABLE}
    shown["retry"] = shown["retry"] or DEFAULT_RETRY
    return shown


def stored_view(definition: dict) -> dict:
    """The editable fields of a stored definition (the snapshot and journal leave out fields at their defaults)."""
    return canonical({name: definition[name] for name in EDITABLE if name in definition})


def shown_view(answer: dict) -> dict:
    """The editable fields of an API answer (GET /{id}, the create and the edit answers)."""
    return canonical({name: answer.get(name, DEFAULTS.get(name)) for name in EDITABLE})


def differences(found: dict, wanted: dict) -> dict:
    return {name: (found.get(name), wanted.get(name)) for name in EDITABLE if found.get(name) != wanted.get(name)}


@dataclass
class Op:
    """One mutating call and what became of it: "ack" (answered as asked), "unknown" (no answer: the kill), or
    "error" (answered otherwise: a bug unless the kill explains it)."""

    kind: str                       # create | toggle | edit | delete
    thread: int
    schedule_id: str | None
    name: str | None = None         # create: the name it was created with
    body: dict | None = None        # what was sent (create, toggle, edit)
    before: dict | None = None      # the model's fields before (toggle, edit, delete)
    after: dict | None = None       # the fields the call asks for (create, toggle, edit)
    outcome: str = "unknown"
    status: int | None = None
    detail: str = ""
    ended: float = 0.0              # time.monotonic() when the outcome was known


@dataclass
class Model:
    """What the acknowledged operations say the server holds."""

    live: dict[str, tuple[int, dict]] = field(default_factory=dict)    # id -> (owning thread, fields)
    gone: set[str] = field(default_factory=set)                          # deleted for good
    acknowledged: int = 0
    edits: int = 0                                                       # acknowledged edits among them

    def owned_by(self, thread: int) -> dict[str, dict]:
        return {sid: dict(fields) for sid, (owner, fields) in self.live.items() if owner == thread}

    def expected(self) -> dict[str, dict]:
        return {sid: canonical(fields) for sid, (_, fields) in self.live.items()}


def drive_client(url: str, thread: int, owned: dict[str, dict], go: threading.Event, rng: random.Random,
                 iteration: int, target_url: str, ops: list[Op]) -> None:
    """Mutate this thread's own schedules until the budget is spent or the server stops answering."""
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {DEFAULT_TOKEN}"
    go.wait(10)
    try:
        for n in range(OPS_PER_THREAD):
            roll = rng.random()
            tag = f"{iteration}-{thread}-{n}"
            if not owned or (len(owned) < OWNED_LIMIT and roll < 0.3):
                body = {"cron": EVERY_SECOND if rng.random() < 0.15 else ONCE_A_YEAR, "name": f"crash-{tag}",
                        "enabled": rng.random() < 0.8, "timezone": "UTC",
                        "request": random_request(rng, target_url, thread, tag)}
                for name in ("retry", "success", "overlap", "jitter_seconds", "notify"):
                    if rng.random() < 0.3:
                        body[name] = random_field(rng, name, target_url, thread, tag)
                op = Op("create", thread, None, name=body["name"], body=body, after={**DEFAULTS, **body})
                call = lambda: session.post(url + CURL_PATH, json=op.body, timeout=CLIENT_TIMEOUT)
                expected = 201
            elif roll < 0.5:
                sid = rng.choice(sorted(owned))
                enabled = rng.random() < 0.5
                op = Op("toggle", thread, sid, body={"enabled": enabled}, before=owned[sid],
                        after={**owned[sid], "enabled": enabled})
                call = lambda: session.patch(f"{url}{CURL_PATH}/{op.schedule_id}/toggle", json=op.body,
                                             timeout=CLIENT_TIMEOUT)
                expected = 200
            elif roll < 0.8:
                sid = rng.choice(sorted(owned))
                edit = random_edit(rng, target_url, thread, tag)
                op = Op("edit", thread, sid, body=edit, before=owned[sid], after={**owned[sid], **edit})
                call = lambda: session.patch(f"{url}{CURL_PATH}/{op.schedule_id}", json=op.body,
                                             timeout=CLIENT_TIMEOUT)
                expected = 200
            else:
                sid = rng.choice(sorted(owned))
                op = Op("delete", thread, sid, before=owned[sid])
                call = lambda: session.delete(f"{url}{CURL_PATH}/{op.schedule_id}", timeout=CLIENT_TIMEOUT)
                expected = 200
            ops.append(op)
            try:
                answer = call()
            except requests.RequestException as e:
                op.outcome, op.detail, op.ended = "unknown", type(e).__name__, time.monotonic()
                return                  # the server is gone (or going): stop here
            op.ended, op.status = time.monotonic(), answer.status_code
            if answer.status_code != expected:
                op.outcome, op.detail = "error", answer.text[:300]
                continue
            op.outcome = "ack"
            body_answer = answer.json()
            if op.kind == "create":
                op.schedule_id = body_answer["id"]
            if op.kind in ("create", "edit"):
                owned[op.schedule_id] = op.after
                wrong = differences(shown_view(body_answer), canonical(op.after))
                if wrong:
                    op.outcome, op.detail = "error", f"{op.kind} {op.body} answered with other fields " \
                                                     f"(answered, asked): {wrong}"
            elif op.kind == "toggle":
                owned[op.schedule_id] = op.after
                if body_answer["enabled"] is not op.body["enabled"]:
                    op.outcome, op.detail = "error", f"toggled to {op.body['enabled']}, answered {body_answer}"
            else:
                owned.pop(op.schedule_id)
    finally:
        session.close()


def fold_and_check(model: Model, ops: list[Op], stored: dict[str, dict], killed_at: float) -> list[str]:
    """Fold one iteration's operations into `model`, checking each against `stored` (id -> definition, from the
    snapshot and journal after the kill). Returns the violations; unknown outcomes are resolved from them.

    A client thread stops at its first call without an answer, so an unknown call is the last one on its
    schedule: the store must hold the fields from before it or those it asked for, all of them (an edit is
    never half-applied), and nothing else."""
    violations: list[str] = []
    unknown_creates: dict[str, tuple[int, dict]] = {}           # name -> (thread, fields asked for)
    allowed: dict[str, list] = {}                               # id -> what an unknown op allows (None: absent)
    for op in ops:
        if op.outcome == "error":
            violations.append(f"{op.kind} {op.schedule_id or op.name} answered {op.status}: {op.detail}")
        elif op.outcome == "unknown" and op.ended < killed_at:
            violations.append(f"{op.kind} {op.schedule_id or op.name} failed before the kill: {op.detail}")
        elif op.outcome == "ack":
            model.acknowledged += 1
            if op.kind == "delete":
                model.live.pop(op.schedule_id, None)
                model.gone.add(op.schedule_id)
            else:
                model.live[op.schedule_id] = (op.thread, op.after)
                model.edits += op.kind == "edit"
        elif op.kind == "create":
            unknown_creates[op.name] = (op.thread, op.after)
        elif op.kind in ("toggle", "edit"):
            allowed[op.schedule_id] = [op.before, op.after]
        else:
            allowed[op.schedule_id] = [op.before, None]

    for sid, (owner, fields) in list(model.live.items()):
        found = stored_view(stored[sid]) if sid in stored else None
        options = allowed.get(sid, [fields])
        matched = [option for option in options if canonical(option) == found]
        if not matched:
            if found is None:
                violations.append(f"{sid}: acknowledged schedule is missing")
            else:
                violations.append(f"{sid}: the store holds other fields than the acknowledged ones (stored, "
                                  f"acknowledged): {differences(found, canonical(fields))}"
                                  + (f"; the edit cut off by the kill asked for {options[-1]}"
                                     if len(options) > 1 else ""))
        elif found is None:             # a delete cut off by the kill that did happen
            model.live.pop(sid)
            model.gone.add(sid)
        else:
            model.live[sid] = (owner, matched[0])
    for sid in model.gone & stored.keys():
        violations.append(f"{sid}: deleted, yet back in the store")
    for sid in stored.keys() - model.live.keys() - model.gone:
        name = stored[sid].get("name")
        asked = unknown_creates.get(name) if name is not None else None
        if asked is not None and canonical(asked[1]) == stored_view(stored[sid]):
            model.live[sid] = (unknown_creates.pop(name)[0], asked[1])     # a create cut off by the kill
        else:
            violations.append(f"{sid}: stored but never created ({stored[sid]})")
    return violations


def read_definitions(data_dir: Path) -> dict[str, dict]:
    """What a start reads from the snapshot and the journal after a kill, as id -> definition (the data dir is
    left as the kill left it, for the restart to find); AssertionError if it would not load. Every complete
    journal line must parse and carry a sequence number above the one before: a repeated number is skipped
    at load, so it would drop a change silently."""
    snapshot, journal = data_dir / SNAPSHOT, data_dir / JOURNAL
    if snapshot.exists():
        raw = snapshot.read_bytes()
        try:
            document = json.loads(raw)
        except ValueError as e:
            raise AssertionError(f"{snapshot} does not parse after a kill ({e}): {raw[:300]!r}") from None
        assert document["version"] == 1
    if journal.exists():
        raw = journal.read_bytes()
        numbers = []
        for line in raw[:raw.rfind(b"\n") + 1].splitlines():     # a torn last line was never acknowledged
            try:
                numbers.append(json.loads(line)["seq"])
            except (ValueError, KeyError, TypeError):
                raise AssertionError(f"{journal}: a complete line that is not a change after a kill: "
                                     f"{line[:300]!r}") from None
        repeated = [(a, b) for a, b in zip(numbers, numbers[1:]) if b <= a]
        assert not repeated, f"{journal}: sequence numbers out of order: {repeated[:10]}"
    try:
        return stored_by_id(data_dir)
    except schedserver.StartupError as e:
        raise AssertionError(f"the definitions would not load after a kill: {e}") from None


def ends_with_newline(path: Path) -> bool:
    """True once the file's last line is complete (False while a rotation has it briefly missing)."""
    try:
        return path.read_bytes().endswith(b"\n")
    except FileNotFoundError:
        return False


def check_runs_log(log_path: Path, fragments: set[bytes]) -> tuple[list[str], int]:
    """Every line of the runs log and its backups parses, or is a torn line already known; the current file may
    end with one new torn line, which joins `fragments`. Readers must skip torn lines and return every record.
    Returns (violations, records)."""
    violations: list[str] = []
    runs = schedserver.NdjsonLog(str(log_path), RUNS_LOG_MAX_BYTES, RUNS_LOG_BACKUPS)
    whole = 0
    for name in runs.files():
        try:
            data = Path(name).read_bytes()
        except FileNotFoundError:
            continue
        lines = data.split(b"\n")
        tail = lines.pop()
        for line in lines:
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                whole += 1
            elif line not in fragments:
                violations.append(f"{name}: a line that is neither a record nor a known torn line "
                                  f"(glued?): {line[:200]!r}")
        if tail:
            if name == str(log_path):
                fragments.add(tail)     # torn by this crash (or by the test): readers must skip it
            elif tail not in fragments:
                violations.append(f"{name}: a rotated file ends with an unknown torn line {tail[:200]!r}")
    records = list(runs.read_newest())
    if len(records) != whole:
        violations.append(f"readers returned {len(records)} records, the files hold {whole} whole lines")
    return violations, whole


def tear_runs_log(log_path: Path, iteration: int) -> bytes | None:
    """Cut an append short, as a power cut would: half a record and no newline. None if already torn."""
    if log_path.exists() and log_path.stat().st_size and not log_path.read_bytes().endswith(b"\n"):
        return None
    record = json.dumps({"ts": "2000-01-01T00:00:00.000Z", "schedule_id": f"torn-{iteration}",
                         "run_id": f"torn-{iteration}", "status": "ok", "status_code": 200},
                        separators=(",", ":")).encode()
    fragment = record[:len(record) // 2 + iteration % 7]
    with open(log_path, "ab") as f:
        f.write(fragment)
    return fragment


INTERRUPTED_AT_START = "interrupted: the server stopped before the run ended"


def leftover_markers(data_dir: Path) -> set[str]:
    """The run ids of the markers a kill left in `running/` (runs that had begun and not ended)."""
    running = data_dir / "running"
    try:
        names = os.listdir(running)
    except FileNotFoundError:
        return set()
    return {name[:-5] for name in names if name.endswith(".json") and not name.startswith(schedserver.TEMP_PREFIX)}


def temp_files_left(data_dir: Path) -> set[Path]:
    """atomic_write temp files a kill left in the data dir or in running/."""
    found = set()
    for directory in (data_dir, data_dir / "running"):
        if directory.is_dir():
            found |= {directory / name for name in os.listdir(directory) if name.startswith(schedserver.TEMP_PREFIX)}
    return found


def check_leftovers_recorded(data_dir: Path, run_ids: set[str], temp_files: set[Path]) -> list[str]:
    """After a restart: each run a kill left in flight is recorded `interrupted` (at the start, before any new
    run), its marker is gone, and the temp files the kill left are removed."""
    violations = []
    records: dict[str, list[dict]] = collections.defaultdict(list)
    runs = schedserver.NdjsonLog(str(data_dir / "curl-runs.log"), RUNS_LOG_MAX_BYTES, RUNS_LOG_BACKUPS)
    for record, _ in runs.read_newest():
        if record.get("run_id") in run_ids:
            records[record["run_id"]].append(record)
    for run_id in sorted(run_ids):
        if not [r for r in records[run_id] if r.get("status") == "interrupted" and r.get("error") == INTERRUPTED_AT_START]:
            violations.append(f"run {run_id} was in flight at the kill but is not recorded interrupted: "
                              f"{records[run_id]}")
        if (data_dir / "running" / f"{run_id}.json").exists():
            violations.append(f"run {run_id}: its marker is still there after the restart")
    violations += [f"{path}: a temp file left by the kill is still there after the restart"
                   for path in sorted(temp_files) if path.exists()]
    return violations


def newest_start(data_dir: Path, schedule_id: str) -> str | None:
    """The latest started_at of a schedule's runs in the runs log, at second precision (as listings show it)."""
    runs = schedserver.NdjsonLog(str(data_dir / "curl-runs.log"), RUNS_LOG_MAX_BYTES, RUNS_LOG_BACKUPS)
    starts = [record["started_at"][:19] + "Z" for record, _ in runs.read_newest(contains=schedule_id.encode())
              if record.get("schedule_id") == schedule_id and record.get("started_at")]
    return max(starts, default=None)


def listed_last_run(server: ServerProcess, schedule_id: str) -> str | None:
    answer = server.api("GET", f"{CURL_PATH}/{schedule_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()["last_run"]


def shown_state(server: ServerProcess) -> dict[str, dict]:
    """What the server shows after a restart: every listed schedule, each as GET /{id} answers it (the list
    leaves out the request's details and the operating fields)."""
    answer = server.api("GET", CURL_PATH)
    assert answer.status_code == 200, answer.text
    shown = {}
    for item in answer.json()["items"]:
        one = server.api("GET", f"{CURL_PATH}/{item['id']}")
        assert one.status_code == 200, one.text
        shown[item["id"]] = shown_view(one.json())
        if item["enabled"] is not shown[item["id"]]["enabled"]:
            shown[item["id"]]["enabled"] = f"listed {item['enabled']}, shown {shown[item['id']]['enabled']}"
    return shown


def state_differences(shown: dict[str, dict], expected: dict[str, dict]) -> list[str]:
    """How what the server shows differs from the model, schedule by schedule."""
    found = [f"{sid}: shown but not in the model" for sid in sorted(shown.keys() - expected.keys())]
    found += [f"{sid}: in the model but not shown" for sid in sorted(expected.keys() - shown.keys())]
    found += [f"{sid}: (shown, model) {differences(shown[sid], expected[sid])}"
              for sid in sorted(shown.keys() & expected.keys()) if shown[sid] != expected[sid]]
    return found


def test_acknowledged_operations_survive_a_hundred_kill_9s_at_random_moments(tmp_path, figure):
    data_dir, scripts_dir = tmp_path / "data", tmp_path / "scripts"
    runs_log = data_dir / "curl-runs.log"
    env = {"SCHEDSERVER_CURL_RUNS_LOG_MAX_BYTES": str(RUNS_LOG_MAX_BYTES),
           "SCHEDSERVER_CURL_RUNS_LOG_BACKUPS": str(RUNS_LOG_BACKUPS)}
    seed = int(os.environ.get("RELIABILITY_SEED") or random.randrange(2**32))    # printed on failure
    rng = random.Random(seed)
    model, fragments, torn_by_test = Model(), set(), []
    violations: list[str] = []
    left_runs: set[str] = set()             # runs in flight at the last kill (their markers)
    left_temp: set[Path] = set()
    interrupted = 0
    heartbeat_id, heartbeat_last = None, None   # the heartbeat's newest run start in the log the kill left
    server: ServerProcess | None = None
    started = time.monotonic()
    with TargetServer() as target, SlowTarget() as slow:
        try:
            for iteration in range(CRASH_ITERATIONS):
                server = ServerProcess(data_dir, scripts_dir, env=env).start()
                if iteration == 0:      # fires every second, so the runs log grows whenever a restart waits, and
                    #                     takes a while, so kills find runs in flight
                    body = {"cron": EVERY_SECOND, "name": "heartbeat", "enabled": True,
                            "request": {"url": slow.url + "/heartbeat", "method": "GET", "headers": {},
                                        "timeout": 5, "follow_redirects": False}}
                    heartbeat = server.api("POST", CURL_PATH, json=body)
                    assert heartbeat.status_code == 201, heartbeat.text
                    heartbeat_id = heartbeat.json()["id"]
                    model.live[heartbeat_id] = (-1, {**DEFAULTS, **body})
                    model.acknowledged += 1
                last_run = listed_last_run(server, heartbeat_id)
                if heartbeat_last is not None and (last_run is None or last_run < heartbeat_last):
                    violations.append(f"iteration {iteration}: the heartbeat's last_run is {last_run} after the "
                                      f"restart, but the runs log holds a run started at {heartbeat_last}")
                violations += [f"iteration {iteration}: {v}"
                               for v in check_leftovers_recorded(data_dir, left_runs, left_temp)]
                interrupted += len(left_runs)
                violations += [f"iteration {iteration}: after the restart {v}"
                               for v in state_differences(shown_state(server), model.expected())]
                if torn_by_test and iteration % TEAR_EVERY == TEAR_EVERY // 2 + 1:
                    appended = wait_until(lambda: ends_with_newline(runs_log), timeout=APPEND_WAIT)
                    assert appended, f"no run appended after the torn line; stderr:\n{server.stderr_text()}"

                go = threading.Event()
                ops_by_thread: list[list[Op]] = [[] for _ in range(CLIENT_THREADS)]
                clients = [threading.Thread(target=drive_client, name=f"crash-client-{t}",
                                            args=(server.url, t, model.owned_by(t), go, random.Random(rng.random()),
                                                  iteration, target.url, ops_by_thread[t]))
                           for t in range(CLIENT_THREADS)]
                for client in clients:
                    client.start()
                go.set()
                time.sleep(rng.uniform(0, MAX_KILL_DELAY))
                killed_at = time.monotonic()
                server.kill()
                for client in clients:
                    client.join(timeout=15)
                    assert not client.is_alive(), "a client thread hung past its request timeouts"

                found = fold_and_check(model, [op for ops in ops_by_thread for op in ops],
                                       read_definitions(data_dir), killed_at)
                found += check_runs_log(runs_log, fragments)[0]
                violations += [f"iteration {iteration}: {v}" for v in found]
                left_runs, left_temp = leftover_markers(data_dir), temp_files_left(data_dir)
                heartbeat_last = newest_start(data_dir, heartbeat_id)
                if iteration % TEAR_EVERY == TEAR_EVERY // 2:
                    fragment = tear_runs_log(runs_log, iteration)
                    if fragment is not None:
                        fragments.add(fragment)
                        torn_by_test.append(fragment)
            loop_seconds = time.monotonic() - started

            # One more start: the heartbeat appends a few runs, then the server stops cleanly.
            server = ServerProcess(data_dir, scripts_dir, env=env).start()
            violations += [f"last restart: {v}" for v in check_leftovers_recorded(data_dir, left_runs, left_temp)]
            interrupted += len(left_runs)
            violations += [f"after the last restart {v}"
                           for v in state_differences(shown_state(server), model.expected())]
            before = check_runs_log(runs_log, set(fragments))[1]
            grew = wait_until(lambda: check_runs_log(runs_log, set(fragments))[1] >= before + 2, timeout=2 * APPEND_WAIT)
            assert grew, f"the runs log did not grow after the last restart; stderr:\n{server.stderr_text()}"
            assert server.stop() == 0, server.stderr_text()
        finally:
            if server is not None:
                server.kill()

    final_violations, records = check_runs_log(runs_log, fragments)
    violations += [f"after the loop: {v}" for v in final_violations]
    assert runs_log.read_bytes().endswith(b"\n"), "the last append left a torn line"
    lines = collections.Counter()
    for name in schedserver.NdjsonLog(str(runs_log), RUNS_LOG_MAX_BYTES, RUNS_LOG_BACKUPS).files():
        if os.path.exists(name):
            lines.update(Path(name).read_bytes().split(b"\n"))
    for fragment in torn_by_test:       # each one a line of its own: no record was glued onto it
        if lines[fragment] != 1:
            violations.append(f"the torn line {fragment!r} is not a line of its own (glued onto, or lost)")

    figure(f"reliability: crash loop {CRASH_ITERATIONS} iterations, {model.acknowledged} acknowledged ops, "
           f"{len(violations)} lost")
    assert not violations, f"seed {seed}:\n" + "\n".join(violations[:40])
    assert len(torn_by_test) == CRASH_ITERATIONS // TEAR_EVERY
    assert records > 0 and model.acknowledged >= CRASH_ITERATIONS
    assert interrupted > 0, "no kill found a run in flight: the interrupted path was not exercised"
    assert model.edits > 0, "no edit was acknowledged: the edit path was not exercised"
    print(f"kill loop: {loop_seconds:.1f} s for {CRASH_ITERATIONS} iterations, {model.edits} acknowledged edits, "
          f"{records} run records, "
          f"{len(fragments)} torn lines, {interrupted} runs interrupted by a kill, "
          f"{'a' if (data_dir / SNAPSHOT).exists() else 'no'} compacted snapshot")


###############################################################################
# The fires log: concurrent writers and rotation
###############################################################################

# One NdjsonLog object writes each log (the server makes one per file, and DataDir lets one process at a time own
# the data dir): its appends and rotations are serialised by its own lock. There is no file lock between objects.

FIRES_MAX_BYTES = 2048
RECORDS_PER_WRITER = 150
WRITERS = 8


def fire_record(writer: str, n: int) -> dict:
    """A record shaped like a script fire."""
    return {"ts": "2025-01-10T12:00:00.000Z", "scriptPath": f"jobs/{writer}.sh", "runId": f"{writer}-{n}",
            "writer": writer, "n": n, "status": "ok", "durationMs": n % 97, "trigger": "cron"}


def backups_for(writers: int, per_writer: int) -> int:
    """Enough backups that rotation never drops a line (lines are about 160 bytes)."""
    return writers * per_writer * 200 // FIRES_MAX_BYTES + 20


def read_fires(path: Path, backups: int) -> tuple[list[dict], int]:
    """Every line of the log and its backups, oldest first (each line must parse), and the rotation count."""
    assert not os.path.exists(f"{path}.{backups}"), "the last backup slot is used: lines may have been dropped"
    rotated = [Path(f"{path}.{n}") for n in range(backups, 0, -1) if os.path.exists(f"{path}.{n}")]
    records = []
    for file in rotated + [path]:
        data = file.read_bytes()
        assert len(data) <= FIRES_MAX_BYTES, f"{file} holds {len(data)} bytes, more than the limit"
        assert data.endswith(b"\n"), f"{file} ends with a torn line"
        records += [json.loads(line) for line in data.splitlines()]
    return records, len(rotated)


def assert_every_record_once_in_order(records: list[dict], writers: list[str], per_writer: int) -> None:
    seen = collections.Counter((r["writer"], r["n"]) for r in records)
    missing = [(w, n) for w in writers for n in range(per_writer) if seen[(w, n)] == 0]
    doubled = [key for key, count in seen.items() if count > 1]
    assert not missing and not doubled, f"missing {missing[:10]}, doubled {doubled[:10]}"
    assert len(records) == len(writers) * per_writer
    for writer in writers:          # one writer's appends are sequential: rotation must not reorder them
        numbers = [r["n"] for r in records if r["writer"] == writer]
        assert numbers == list(range(per_writer)), f"{writer}'s records are out of order"


def run_writers(target: callable, count: int) -> None:
    threads = [threading.Thread(target=target, args=(n,), name=f"fires-writer-{n}") for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a writer hung"


def test_eight_threads_sharing_one_fires_log_lose_no_line_across_rotations(tmp_path, figure):
    path, backups = tmp_path / "fires.log", backups_for(WRITERS, RECORDS_PER_WRITER)
    fires = schedserver.NdjsonLog(str(path), FIRES_MAX_BYTES, backups)
    writers = [f"t{n}" for n in range(WRITERS)]
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(RECORDS_PER_WRITER):
                fires.append(fire_record(writers[n], i))
        except BaseException as e:      # surfaced below, not lost in the thread
            errors.append(e)

    run_writers(write, WRITERS)
    assert not errors, errors
    records, rotations = read_fires(path, backups)
    assert_every_record_once_in_order(records, writers, RECORDS_PER_WRITER)
    assert rotations >= 20
    assert [record for record, _ in fires.read_newest()] == records[::-1]
    figure(f"reliability: fires log {WRITERS} writers, {len(records)} lines, "
           f"{WRITERS * RECORDS_PER_WRITER - len(records)} lost, {rotations} rotations")


###############################################################################
# A malformed line in the middle of a log
###############################################################################

def malformed_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "schedserver" and "malformed" in r.getMessage()]


def test_a_malformed_line_in_the_middle_is_reported_once_and_reading_goes_on_past_it(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="schedserver")
    path = tmp_path / "fires.log"
    fires = schedserver.NdjsonLog(str(path), 1 << 20, 3)
    for n in range(3):
        fires.append({"n": n})
    with open(path, "ab") as f:
        f.write(b'{"n": 99, "status": "o\n')           # a torn line some append already moved past
        f.write(b"\x00\x00\x00\x00\n")                  # what a crashed filesystem can leave
    for n in range(3, 6):
        fires.append({"n": n})

    assert [r["n"] for r, _ in fires.read_newest()] == [5, 4, 3, 2, 1, 0]
    assert [r["n"] for r, _ in fires.read_newest()] == [5, 4, 3, 2, 1, 0]
    assert [r["n"] for r in fires.read_after(None)] == [0, 1, 2, 3, 4, 5]
    warnings = malformed_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0]


def test_a_malformed_line_in_a_rotated_file_is_reported_for_that_file_and_older_files_are_still_read(
        tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="schedserver")
    path = tmp_path / "fires.log"
    (tmp_path / "fires.log.2").write_bytes(b'{"n": 0}\n{"n": 1}\n')
    (tmp_path / "fires.log.1").write_bytes(b'{"n": 2}\nnot json\n{"n": 3}\n')
    path.write_bytes(b'{"n": 4}\n[4, 5]\n{"n": 5}\n')
    fires = schedserver.NdjsonLog(str(path), 1 << 20, 3)

    assert [r["n"] for r, _ in fires.read_newest()] == [5, 4, 3, 2, 1, 0]
    warnings = malformed_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert str(path) in warnings[0] and f"{path}.1" in warnings[1]


def test_a_malformed_line_straddling_read_blocks_does_not_end_the_reading(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="schedserver")
    path = tmp_path / "fires.log"
    fires = schedserver.NdjsonLog(str(path), 1 << 30, 1)
    for n in range(500):
        fires.append({"n": n, "pad": "a" * 150})
    with open(path, "ab") as f:
        f.write(b"{" + b"x" * 150_000 + b"\n")           # garbage longer than two 64 KiB read blocks
    for n in range(500, 1000):
        fires.append({"n": n, "pad": "b" * 150})

    assert [r["n"] for r, _ in fires.read_newest()] == list(range(999, -1, -1))
    assert [r["n"] for r in fires.read_after(None)] == list(range(1000))
    assert len(malformed_warnings(caplog)) == 1


def test_run_history_is_rebuilt_from_records_on_both_sides_of_a_malformed_line(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="schedserver")
    first = Stack(tmp_path)
    sid = first.http.create({"cron": ONCE_A_YEAR, "request": {"url": "http://127.0.0.1:9/hook"}})["id"]
    first.close()                                       # run state saved: the lines below are replayed at the start
    runs = schedserver.NdjsonLog(str(first.data_dir / "curl-runs.log"), 1 << 20, 3)

    def run(n: int) -> dict:
        at = f"2025-01-10T12:0{n}:00.000Z"
        return {"ts": at, "schedule_id": sid, "run_id": f"run-{n}", "scheduled_at": at, "started_at": at,
                "status": "ok", "status_code": 200, "duration_ms": 5, "error": None, "trigger": "cron", "attempt": 1}

    runs.append(run(1))
    runs.append(run(2))
    with open(runs.path, "ab") as f:
        f.write(b'{"ts":"2025-01-10T12:02:30.000Z","schedule_id":"' + sid.encode() + b'","run_\n')
    runs.append(run(3))

    with Stack(tmp_path, first.clock) as second:
        shown = second.http.get(sid)
    assert [h["run_id"] for h in shown["history"]] == ["run-3", "run-2", "run-1"]
    assert shown["last_run"] == "2025-01-10T12:03:00Z"
    assert shown["last_status"] == "ok"
    assert len(malformed_warnings(caplog)) == 1
