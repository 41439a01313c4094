"""Reliability, section 6 "Security": who may call what, which files are private, what never reaches a log,
what a script never sees, what hostile clients cannot lock up, and where HTTP runs may connect.

Grouped by concern: authorization on every route the router knows (the app in-process through
tests/harness.py's Stack, so a route added without auth fails here); private files and secrets kept out of logs
(the real server in a subprocess); script environments; hostile clients (hundreds of idle or slow connections,
the idle timeout, the connection limit, manual triggers that would take every request thread: the real server
over real sockets); log lines a file name cannot forge; a run record that cannot be written is never answered
as a success; the egress policy (EgressPolicy and its config converter as pure checks, HttpRunner in-process
behind a hand-written resolver, and real servers with deny_networks / allow_networks).
Every wait has a deadline; all traffic goes to 127.0.0.x.

Figures: `reliability: security R routes checked for auth, F files private, S secrets never logged, egress E cases`
and `reliability: security I idle + S slow-header connections, API answered within T s; idle connection dropped
after D s; L log line at the connection limit`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import selectors
import socket
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import bottle
import pytest
import requests

import schedserver
from e2e_helpers import DEFAULT_TOKEN, ServerProcess, TargetServer, run_schedserver, schedserver_argv, \
    schedserver_env, wait_until
from harness import Stack
from stored import STORE_FILES, store_files

CURL = schedserver.CURL_PREFIX
EXEC = schedserver.EXEC_PREFIX
EVERY_SECOND = "* * * * * *"
NEVER = "0 0 1 1 *"                 # does not fire while the tests run (unless on New Year)
ADMIN_TOKEN = "admin-token-0f3b"
READ_TOKEN = "read-token-9a7c"
READ_ONLY_METHODS = ("GET", "HEAD")
PLACEHOLDER = re.compile(r"<[^<>]+>")


def secret(label: str) -> str:
    """A value that can only appear somewhere if it was copied there."""
    return f"s3cr3t-{label}-{uuid.uuid4().hex[:16]}"


###############################################################################
# The figure ###################################################################
###############################################################################

@dataclass
class Tally:
    """What this file measured, for the one figure line it prints."""

    routes: int | None = None
    files: int | None = None
    secrets: int | None = None
    egress: int = 0
    # Hostile clients: connections held open while the API kept answering, the slowest of those answers,
    # how long an idle connection lived, and how many lines reaching the connection limit logged.
    idle_connections: int | None = None
    slow_connections: int = 0
    slowest_answer: float | None = None
    idle_dropped_after: float | None = None
    limit_lines: int | None = None
    record: Callable[[str], None] | None = None


@pytest.fixture(scope="module")
def tally():
    counts = Tally()
    yield counts
    if counts.record and None not in (counts.routes, counts.files, counts.secrets) and counts.egress:
        counts.record(f"reliability: security {counts.routes} routes checked for auth, {counts.files} files "
                      f"private, {counts.secrets} secrets never logged, egress {counts.egress} cases")
    if counts.record and None not in (counts.idle_connections, counts.slowest_answer, counts.idle_dropped_after,
                                      counts.limit_lines):
        counts.record(f"reliability: security {counts.idle_connections} idle + {counts.slow_connections} "
                      f"slow-header connections, API answered within {counts.slowest_answer:.2f} s; idle "
                      f"connection dropped after {counts.idle_dropped_after:.1f} s; {counts.limit_lines} log "
                      f"line at the connection limit")


@pytest.fixture(autouse=True)
def _figure_sink(tally, figure):
    tally.record = figure


###############################################################################
# Shared helpers ###############################################################
###############################################################################

def write_script(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path


def ok(response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def create(server: ServerProcess, url: str, cron: str = EVERY_SECOND, **request: Any):
    return server.api("POST", CURL, json={"cron": cron, "request": {"url": url, **request}})


def history_of(server: ServerProcess, schedule_id: str, runs: int, timeout: float = 8.0) -> list[dict]:
    """The schedule's run history (newest first) once it holds `runs` runs, or whatever it holds at the deadline."""
    def enough() -> list[dict] | None:
        found = ok(server.api("GET", f"{CURL}/{schedule_id}"))["history"]
        return found if len(found) >= runs else None
    return wait_until(enough, timeout, 0.1) or ok(server.api("GET", f"{CURL}/{schedule_id}"))["history"]


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_dir_entries(data: Path) -> dict[str, int]:
    """Every path under the data dir (the dir itself as '.') with its permission bits."""
    entries = {".": stat.S_IMODE(data.stat().st_mode)}
    for path in sorted(data.rglob("*")):
        try:
            entries[path.relative_to(data).as_posix() + ("/" if path.is_dir() else "")] = \
                stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:       # a run marker or temp file that went away meanwhile
            pass
    return entries


###############################################################################
# Authorization on every route #################################################
###############################################################################

class AppUnderTest:
    """The app as the server builds it (both services, /healthz, admin and read-only tokens) over temp dirs
    (tests/harness.py's Stack: the real Server, loaded, with a fake clock and no threads): nothing ticks, so the
    state only changes if a request changes it. Scripts really run when triggered."""

    def __init__(self, tmp_path: Path):
        self.scripts_dir = tmp_path / "scripts"
        self.triggered = tmp_path / "triggered"
        write_script(self.scripts_dir, "nightly.sh", f"# @schedule 0 0 3 * * *\necho ran >> '{self.triggered}'\n")
        self.stack = Stack(tmp_path, tokens=(ADMIN_TOKEN,), read_tokens=(READ_TOKEN,))
        self.data = self.stack.data_dir
        self.scheduler = self.stack.scheduler
        self.curl = self.stack.http
        self.scripts = self.stack.scripts
        self.schedule_id = self.curl.create({"cron": NEVER, "request": {
            "url": "http://127.0.0.1:9/hook", "headers": {"X-Api-Key": "stored-key"}}})["id"]
        # On disk but not registered: a reload that got through would register it.
        write_script(self.scripts_dir, "late.sh", "# @schedule 0 0 4 * * *\necho late\n")
        self.bottle: bottle.Bottle = self.stack.server.app
        self.app = self.stack.app
        # What a caller would send to make each route do its job (routes not listed get no body).
        self.bodies = {
            ("POST", CURL): {"cron": EVERY_SECOND, "request": {"url": "http://127.0.0.1:9/new"}},
            ("POST", EXEC + "/reload"): {},
            ("POST", EXEC + "/trigger"): {"scriptPath": "nightly.sh"},
            ("PATCH", CURL + "/<schedule_id>"): {"name": "edited"},
        }

    @property
    def routes(self) -> list[bottle.Route]:
        return list(self.bottle.routes)

    def path_for(self, route: bottle.Route) -> str:
        """The route's rule with its path parameters filled by a real value the router sends to this route."""
        if route.rule == "/static/<name>":
            return "/static/app.js"
        candidates = (self.schedule_id, "nightly.sh", f"{self.schedule_id}/extra")
        for value in candidates:
            path = PLACEHOLDER.sub(lambda _: value, route.rule)
            try:
                target, _ = self.bottle.router.match({"REQUEST_METHOD": route.method, "PATH_INFO": path})
            except bottle.HTTPError:
                continue
            if target is route:
                return path
        raise AssertionError(f"no real value fills {route.method} {route.rule}: add one to the candidates here")

    def call(self, method: str, path: str, authorization: str | None, rule: str | None = None):
        headers = {"Authorization": authorization} if authorization is not None else {}
        body = self.bodies.get((method, rule or path))
        if body is None:
            return self.app.request(path, method=method, headers=headers, expect_errors=True)
        return self.app.request(path, method=method, headers=headers, body=json.dumps(body).encode(),
                                content_type="application/json", expect_errors=True)

    def state(self) -> dict:
        """Everything a request could change: the answers to every read and every byte in the data dir."""
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        reads = {path: self.app.get(path, headers=admin).json
                 for path in (CURL, f"{CURL}/{self.schedule_id}", EXEC + "/list", EXEC + "/history")}
        files = {p.relative_to(self.data).as_posix(): p.read_bytes() for p in sorted(self.data.rglob("*"))
                 if p.is_file()}
        return {"reads": reads, "files": files, "triggered": self.triggered.exists(),
                "registered": self.scripts.count(), "jobs": len(self.scheduler)}


@pytest.fixture
def app(tmp_path):
    under_test = AppUnderTest(tmp_path)
    yield under_test
    under_test.stack.close()


def error_problems(response, path: str, status: int, code: str) -> list[str]:
    """What is wrong with an error answer: status, JSON, the surface's shape (body checks skipped for HEAD)."""
    problems = []
    if response.status_int != status:
        return [f"answered {response.status_int}, not {status}: {response.body[:200]!r}"]
    if response.content_type != "application/json":
        problems.append(f"Content-Type {response.content_type!r}")
    if response.request.method == "HEAD":
        return problems
    body = json.loads(response.body)
    if path.startswith(EXEC):
        if set(body) != {"error", "code", "message", "timestamp"} or body["code"] != code:
            problems.append(f"body {body} is not the script surface's {code} error")
    elif set(body) != {"error", "message"} or body["error"] != code:
        problems.append(f"body {body} is not the http surface's {code} error")
    return problems


# Health for probes; the API's description and the dashboard's page and assets hold no data.
OPEN_ROUTES = {"/healthz", "/api/v1/openapi.json", "/", "/static/<name>"}
BAD_AUTHORIZATIONS = (
    None,                                   # no header at all
    "Bearer wrong-token",
    "Bearer ",                              # the scheme with no token
    f"Bearer {ADMIN_TOKEN[:-1]}",           # a prefix of the real token
    f"Bearer {ADMIN_TOKEN}x",               # the real token with more after it
    f"Basic {ADMIN_TOKEN}",                 # the real token under another scheme
    ADMIN_TOKEN,                            # the real token with no scheme
)


def test_every_api_route_answers_401_json_with_a_bearer_challenge_to_a_missing_or_wrong_token(app, tally):
    before = app.state()
    failures = []
    checked = 0
    for route in app.routes:
        if route.rule in OPEN_ROUTES:
            continue
        path = app.path_for(route)
        methods = [route.method] + (["HEAD"] if route.method == "GET" else [])
        for method in methods:
            for authorization in BAD_AUTHORIZATIONS:
                response = app.call(method, path, authorization, route.rule)
                problems = error_problems(response, path, 401, "UNAUTHORIZED")
                if response.status_int == 401 and response.headers.get("WWW-Authenticate") != "Bearer":
                    problems.append(f"WWW-Authenticate is {response.headers.get('WWW-Authenticate')!r}")
                failures += [f"{method} {route.rule} with {authorization!r}: {p}" for p in problems]
                checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= len(BAD_AUTHORIZATIONS) * (len(app.routes) - len(OPEN_ROUTES))
    assert app.state() == before
    tally.routes = len(app.routes)


def test_the_only_routes_that_answer_without_a_token_are_healthz_and_the_openapi_document(app):
    open_routes = {route.rule for route in app.routes
                   if app.call(route.method, app.path_for(route), None, route.rule).status_int != 401}
    assert open_routes == OPEN_ROUTES
    response = app.app.get("/healthz", expect_errors=True)
    assert response.status_int in (200, 503) and response.content_type == "application/json"


def test_a_read_only_token_gets_403_on_every_route_that_is_not_a_read_and_changes_nothing(app):
    writes = [route for route in app.routes if route.method not in READ_ONLY_METHODS]
    assert {(r.method, r.rule) for r in writes} >= {("POST", CURL), ("PATCH", CURL + "/<schedule_id>/toggle"),
                                                    ("DELETE", CURL + "/<schedule_id>"), ("POST", EXEC + "/reload"),
                                                    ("POST", EXEC + "/trigger")}
    before = app.state()
    failures = []
    for route in writes:
        path = app.path_for(route)
        response = app.call(route.method, path, f"Bearer {READ_TOKEN}", route.rule)
        failures += [f"{route.method} {route.rule}: {p}" for p in error_problems(response, path, 403, "FORBIDDEN")]
    assert not failures, "\n".join(failures)
    assert app.state() == before
    assert not app.triggered.exists() and app.scripts.count() == 1 and app.curl.count() == 1


def test_a_read_only_token_may_call_every_read_route(app):
    for route in app.routes:
        if route.method in READ_ONLY_METHODS and route.rule not in OPEN_ROUTES:
            response = app.call(route.method, app.path_for(route), f"Bearer {READ_TOKEN}", route.rule)
            assert response.status_int not in (401, 403), (route.rule, response.body)


def test_the_admin_token_reaches_every_route_with_the_values_filled_in(app):
    """The fills are real: with the admin token each route does its job (the malformed-id route answers 404)."""
    order = {"GET": 0, "HEAD": 0, "POST": 1, "PATCH": 2, "DELETE": 3}
    for route in sorted(app.routes, key=lambda r: order.get(r.method, 1)):
        path = app.path_for(route) + ("?expr=@hourly" if route.rule.endswith("/cron/preview") else "")
        response = app.call(route.method, path, f"Bearer {ADMIN_TOKEN}", route.rule)
        if ":re:" in route.rule:        # the routes for ids holding a slash: always an unknown schedule
            assert response.status_int == 404, (route.rule, response.body)
        elif "<run_id>" in route.rule:  # filled with a schedule's id: an unknown run, told by the route itself
            assert response.status_int == 404 and response.json.get("code", response.json["error"]) in (
                "RUN_NOT_FOUND", "NOT_FOUND"), (route.rule, response.body)
        else:
            assert response.status_int < 300, (route.method, route.rule, response.body)
    assert app.triggered.exists() and app.scripts.count() == 2
    assert app.curl.count() == 1 and app.curl.list()["items"][0]["id"] != app.schedule_id


###############################################################################
# Private files ################################################################
###############################################################################

def test_secret_files_are_0600_and_the_data_dir_0700_after_a_real_start_even_under_umask_0(tmp_path, tally):
    data, scripts, release = tmp_path / "data", tmp_path / "scripts", tmp_path / "release"
    data.mkdir()
    data.chmod(0o755)                       # as an operator might have made it
    write_script(scripts, "quick.sh", f"# @schedule {NEVER}\necho quick\n")
    write_script(scripts, "hold.sh", f"""
# @schedule {NEVER}
# @timeout 20s
i=0
while [ ! -e '{release}' ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
echo held
""")
    server = ServerProcess(data, scripts, token=None,       # no token configured: one is generated
                           env={"SCHEDSERVER_EXEC_FIRES_LOG_MAX_BYTES": "4096",
                                "SCHEDSERVER_EXEC_FIRES_LOG_BACKUPS": "2"})
    old_umask = os.umask(0)                 # the child inherits it: modes must not depend on the umask
    try:
        server.start()
    finally:
        os.umask(old_umask)
    with TargetServer() as target, server:
        server.token = (data / "api-token").read_text().strip()
        assert len(server.token) >= 32
        created = ok(create(server, target.url + "/hook", headers={"Authorization": "Bearer downstream-secret",
                                                                   "X-Api-Key": "stored-key"}), 201)
        assert history_of(server, created["id"], 1), "the schedule never ran"
        for _ in range(40):                 # fill the fires log past 4096 bytes: it rotates into fires.log.1
            ok(server.api("POST", EXEC + "/trigger", json={"scriptPath": "quick.sh"}))
            if (data / "fires.log.1").exists():
                break
        holder = threading.Thread(target=lambda: server.api("POST", EXEC + "/trigger", json={"scriptPath": "hold.sh"},
                                                            timeout=15), daemon=True)
        holder.start()
        try:
            assert wait_until(lambda: any((data / "running").glob("*.json")), 5.0), "no run marker appeared"
            entries = data_dir_entries(data)
        finally:
            release.touch()
            holder.join(15)
    assert server.token not in server.stderr_text()     # the generated token is announced by its path only
    # The run state is written at the clean stop: what is there after it counts too.
    entries = {**data_dir_entries(data), **entries}
    # The definitions (with their request secrets) are in the journal; the snapshot appears at the first compaction,
    # and is checked too if it is there: every file present must be private.
    required = {".", "api-token", "schedserver.lock", "curl-schedules.journal", "curl-runs.log", "fires.log",
                "fires.log.1", "exec-registered.json", "run-state.json", "running/"}
    assert required <= set(entries), sorted(entries)
    assert any(name.startswith("running/") and name.endswith(".json") for name in entries), sorted(entries)
    wrong = {name: oct(mode) for name, mode in entries.items()
             if mode != (0o700 if name == "." or name.endswith("/") else 0o600)}
    assert not wrong, f"not private (files must be 0600, dirs 0700): {wrong}"
    tally.files = sum(1 for name in entries if name != "." and not name.endswith("/"))


###############################################################################
# Secrets never logged #########################################################
###############################################################################

def test_tokens_and_stored_request_secrets_never_reach_stderr_or_the_run_logs(tmp_path, tally):
    data, scripts = tmp_path / "data", tmp_path / "scripts"
    write_script(scripts, "report.sh", f"# @schedule {NEVER}\necho report done\n")
    secrets = {
        "admin token": DEFAULT_TOKEN,
        "read token": secret("read-token"),
        "wrong token": secret("wrong-token"),
        "stored Authorization header": secret("authorization"),
        "stored X-Api-Key header": secret("api-key"),
        "stored Cookie header": secret("cookie"),
        "stored JSON body": secret("json-body"),
        "stored string body": secret("string-body"),
        "URL query, answering target": secret("query-ok"),
        "URL query, failing target": secret("query-500"),
        "URL query, refused port": secret("query-refused"),
        "URL query of a refused create": secret("query-bad-url"),
    }
    stored_headers = {"Authorization": "Bearer " + secrets["stored Authorization header"],
                      "X-Api-Key": secrets["stored X-Api-Key header"],
                      "Cookie": "session=" + secrets["stored Cookie header"]}
    env = {"SCHEDSERVER_ACCESS_LOG": "true", "SCHEDSERVER_LOG_LEVEL": "DEBUG",
           "SCHEDSERVER_READ_TOKEN": secrets["read token"]}
    with TargetServer() as answering, TargetServer(status=500) as failing, \
            ServerProcess(data, scripts, env=env) as server:
        ids = [
            ok(create(server, f"{answering.url}/ok?api_key={secrets['URL query, answering target']}", method="POST",
                      headers=stored_headers, json={"password": secrets["stored JSON body"]}), 201)["id"],
            ok(create(server, f"{failing.url}/fail?token={secrets['URL query, failing target']}", method="PUT",
                      headers=stored_headers, body=secrets["stored string body"]), 201)["id"],
            ok(create(server, f"http://127.0.0.1:{closed_port()}/down?sig={secrets['URL query, refused port']}",
                      headers=stored_headers, timeout=2), 201)["id"],
        ]
        # Callers getting it wrong, with secrets in hand.
        wrong = f"Bearer {secrets['wrong token']}"
        assert server.api("GET", CURL, token=secrets["wrong token"]).status_code == 401
        assert server.api("POST", CURL, token=secrets["wrong token"], json={"cron": EVERY_SECOND, "request": {
            "url": "http://127.0.0.1:9/", "headers": stored_headers}}).status_code == 401
        assert server.api("POST", EXEC + "/trigger", token=None, headers={"Authorization": wrong},
                          json={"scriptPath": "report.sh"}).status_code == 401
        assert server.api("DELETE", f"{CURL}/{ids[0]}", token=secrets["read token"]).status_code == 403
        assert server.api("GET", f"{CURL}?access_token={DEFAULT_TOKEN}", token=None).status_code == 401
        assert create(server, f"http://127.0.0.1:99999/?key={secrets['URL query of a refused create']}",
                      headers=stored_headers).status_code == 400
        assert ok(server.api("GET", f"{CURL}/{ids[0]}", token=secrets["read token"]))["id"] == ids[0]
        assert ok(server.api("POST", EXEC + "/trigger", json={"scriptPath": "report.sh"}))["status"] == "ok"
        histories = [history_of(server, sid, 3) for sid in ids]
        received = answering.received("/ok?api_key=" + secrets["URL query, answering target"])
    assert [len(h) >= 3 for h in histories] == [True] * 3, histories
    assert {e["status"] for e in histories[0]} == {"ok"}
    assert {e["status"] for e in histories[1] + histories[2]} == {"error"}
    # The secrets were really in use: the target saw every one of them.
    assert received and received[0].headers["X-Api-Key"] == secrets["stored X-Api-Key header"]
    assert json.loads(received[0].body) == {"password": secrets["stored JSON body"]}
    assert failing.received() and failing.received()[0].body == secrets["stored string body"].encode()

    stderr = server.stderr_text()
    assert " access GET " + CURL in stderr and "http run " in stderr and "script fire report.sh" in stderr
    logs = {"stderr": stderr.encode()}
    definitions = set(STORE_FILES)          # the stored definitions: where the request secrets belong
    for path in sorted(data.rglob("*")):
        if path.is_file() and path.name not in definitions:
            logs[path.relative_to(data).as_posix()] = path.read_bytes()
    assert {"curl-runs.log", "fires.log"} <= set(logs)
    assert len(logs["curl-runs.log"].splitlines()) >= 9
    leaks = [f"{what} found in {where}" for what, value in secrets.items() for where, text in logs.items()
             if value.encode() in text]
    assert not leaks, "\n".join(leaks)
    # The search finds what is there: the stored definitions do hold the header values.
    assert secrets["stored X-Api-Key header"].encode() in b"".join(filter(None, store_files(data).values()))
    tally.secrets = len(secrets)


###############################################################################
# Script environments ##########################################################
###############################################################################

def test_scripts_never_receive_an_api_token_in_their_environment_by_name_or_inside_a_value(tmp_path):
    data, scripts, dumps = tmp_path / "data", tmp_path / "scripts", tmp_path / "dumps"
    dumps.mkdir()
    admin_1, admin_2, reader, from_file = (secret(n) for n in ("admin-1", "admin-2", "reader", "file-token"))
    token_file = tmp_path / "tokens"
    token_file.write_text(from_file + "\n")
    token_file.chmod(0o600)
    write_script(scripts, "env.py", f"""
# @schedule {EVERY_SECOND}
import json, os
name = os.environ["SCHEDSERVER_TRIGGER"] + "-" + os.environ["SCHEDSERVER_RUN_ID"] + ".json"
with open(os.path.join({str(dumps)!r}, name), "w") as f:
    json.dump(dict(os.environ), f)
print("dumped")
""")
    env = {"SCHEDSERVER_READ_TOKEN": reader, "SCHEDSERVER_TOKEN_FILE": str(token_file),
           "DEPLOY_NOTE": f"rotate {admin_2} before friday", "READ_COPY": reader,
           "FILE_TOKEN_COPY": f"x{from_file}x", "HARMLESS_SETTING": "kept"}
    with ServerProcess(data, scripts, token=f"{admin_1},{admin_2}", env=env) as server:
        server.token = admin_1
        assert ok(server.api("POST", EXEC + "/trigger", json={"scriptPath": "env.py"}))["status"] == "ok"
        assert ok(server.api("GET", EXEC + "/list", token=from_file))["total"] == 1     # the file token works
        assert wait_until(lambda: list(dumps.glob("cron-*.json")), 5.0), "the cron fire never dumped"
    environments = {path.name: json.loads(path.read_text()) for path in sorted(dumps.glob("*.json"))}
    assert any(n.startswith("manual-") for n in environments) and any(n.startswith("cron-") for n in environments)
    for name, environment in environments.items():
        assert environment.get("HARMLESS_SETTING") == "kept", name          # the dump is the real environment
        assert environment["SCHEDSERVER_SCRIPT"] == "env.py"
        for variable in ("SCHEDSERVER_TOKEN", "SCHEDSERVER_READ_TOKEN", "DEPLOY_NOTE", "READ_COPY", "FILE_TOKEN_COPY"):
            assert variable not in environment, (name, variable)
        for token in (admin_1, admin_2, reader, from_file):
            assert not [k for k, v in environment.items() if token in v or token in k], (name, token)


###############################################################################
# Hostile clients: idle, slow and too many connections #########################
###############################################################################

IDLE_CONNECTIONS = 500
SLOW_CONNECTIONS = 20
# A request head sent one byte a second that never ends (it would take minutes to send it whole).
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 600


@pytest.fixture
def descriptors():
    """room_for(n): raise this process's soft RLIMIT_NOFILE (within the hard limit) so that n more sockets fit;
    the limit is put back afterwards."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)

    def room_for(extra: int) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = len(os.listdir("/proc/self/fd")) + extra + 256
        if soft != resource.RLIM_INFINITY and soft < wanted:
            if hard != resource.RLIM_INFINITY and hard < wanted:
                pytest.skip(f"{extra} sockets need {wanted} descriptors; the hard limit is {hard}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield room_for
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.url.rsplit("//", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


def connect(server: ServerProcess, count: int, into: list[socket.socket]) -> None:
    """Open `count` connections that send nothing, appending each to `into` at once (the caller closes them)."""
    for _ in range(count):
        into.append(socket.create_connection(address(server), timeout=5))


def server_sockets(server: ServerProcess) -> int:
    """How many sockets the server process holds: its listener and every connection it has accepted (one the
    kernel has queued but the server has not accepted does not count)."""
    assert server.proc is not None
    found = 0
    for fd in os.listdir(f"/proc/{server.proc.pid}/fd"):
        try:
            found += os.readlink(f"/proc/{server.proc.pid}/fd/{fd}").startswith("socket:")
        except OSError:         # closed meanwhile
            pass
    return found


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither closed `sock` nor sent anything (more) on it; never waits."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)
    return False


class Dribbler:
    """Sends the next byte of SLOW_HEAD to each of its sockets once a second, from a thread of its own."""

    def __init__(self, sockets: list[socket.socket]):
        self.sockets = sockets
        self.sent = 0                   # bytes sent on each socket so far
        self.failures: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="security-dribbler", daemon=True)

    def _run(self) -> None:
        for position in range(len(SLOW_HEAD)):
            for sock in self.sockets:
                try:
                    sock.sendall(SLOW_HEAD[position:position + 1])
                except OSError as e:
                    self.failures.append(repr(e))
            self.sent = position + 1
            if self._stopping.wait(1.0):
                return

    def __enter__(self) -> "Dribbler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stopping.set()
        self._thread.join(5)


def test_500_idle_connections_and_slow_header_clients_do_not_lock_out_the_api(tmp_path, descriptors, tally):
    """waitress reads requests asynchronously: connections that send nothing, or a header byte a second, hold no
    request thread, so /healthz and authenticated routes keep answering while hundreds of them are open."""
    descriptors(IDLE_CONNECTIONS + SLOW_CONNECTIONS)
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    answer_times: list[float] = []
    # An idle timeout longer than the test: the server keeps every connection the whole time.
    with ServerProcess(tmp_path / "data", tmp_path / "scripts",
                       env={"SCHEDSERVER_IDLE_TIMEOUT_SECONDS": "600"}) as server:
        schedule = ok(create(server, "http://127.0.0.1:9/hook", cron=NEVER), 201)["id"]
        before = server_sockets(server)
        try:
            connect(server, IDLE_CONNECTIONS, idle)
            connect(server, SLOW_CONNECTIONS, slow)
            with Dribbler(slow) as dribbler:
                accepted = wait_until(lambda: server_sockets(server) >= before + len(idle) + len(slow), 20.0, 0.1)
                assert accepted, (f"the server accepted {server_sockets(server) - before} of "
                                  f"{len(idle) + len(slow)} connections")
                for _ in range(5):      # over a few seconds, while the slow clients keep sending
                    started = time.monotonic()
                    health = server.api("GET", "/healthz", token=None, timeout=5)
                    listing = server.api("GET", CURL, timeout=5)
                    one = server.api("GET", f"{CURL}/{schedule}", token="wrong-token", timeout=5)
                    answer_times.append(time.monotonic() - started)
                    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
                    assert [item["id"] for item in ok(listing)["items"]] == [schedule]
                    assert one.status_code == 401           # auth is still checked, promptly
                    time.sleep(0.5)
                assert dribbler.sent >= 3 and dribbler.failures == [], (dribbler.sent, dribbler.failures[:3])
                assert server_sockets(server) >= before + len(idle) + len(slow), "connections were dropped"
                assert all(still_open(sock) for sock in idle + slow)
        finally:
            for sock in idle + slow:
                sock.close()
        assert ok(server.api("GET", "/healthz", token=None))["status"] == "ok"
        assert server.returncode is None
    tally.idle_connections = len(idle)
    tally.slow_connections = len(slow)
    tally.slowest_answer = max(answer_times)


def read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer with a Content-Length, head and body."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + int(
            re.search(rb"(?i)content-length:\s*(\d+)", answer).group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def closed_by_the_server(sock: socket.socket, timeout: float) -> bool:
    """Wait (at most `timeout`) for the server to close `sock`; False if it is still open then."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_connection_that_goes_silent_is_closed_after_the_idle_timeout(tmp_path, tally):
    """server.idle_timeout_seconds (2 here): a connection that never sends a byte, and a keep-alive connection
    silent after its answer, are both closed by the server; the API goes on answering."""
    with ServerProcess(tmp_path / "data", tmp_path / "scripts",
                       env={"SCHEDSERVER_IDLE_TIMEOUT_SECONDS": "2"}) as server:
        with socket.create_connection(address(server), timeout=5) as silent, \
                socket.create_connection(address(server), timeout=5) as kept_alive:
            started = time.monotonic()
            kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_answer(kept_alive).startswith(b"HTTP/1.1 200 ")
            assert still_open(kept_alive)
            silent_closed = closed_by_the_server(silent, 15.0)
            dropped_after = time.monotonic() - started
            kept_alive_closed = closed_by_the_server(kept_alive, 15.0)
        assert silent_closed, "a connection that sent nothing was still open 15 s after it was made"
        assert kept_alive_closed, "a keep-alive connection silent after its answer was never closed"
        assert dropped_after >= 1.5, f"closed after {dropped_after:.2f} s: before the 2 s idle timeout"
        assert ok(server.api("GET", "/healthz", token=None))["status"] == "ok"
    tally.idle_dropped_after = dropped_after


LIMIT_REACHED = "reached the connection limit"
LIMIT_LEFT = "dropped below the connection limit"


def test_reaching_the_connection_limit_again_and_again_logs_one_line_not_one_per_connection(
        tmp_path, descriptors, tally):
    """server.connection_limit 50 and twice as many silent connections: the server accepts up to the limit, the
    idle timeout (2 s) drops that batch, it accepts the next one up to the limit, and so on until every
    connection has had its turn (each one sees the server close it). Reaching the limit several times logs it
    once."""
    limit, count = 50, 100
    descriptors(count)
    held: list[socket.socket] = []
    env = {"SCHEDSERVER_CONNECTION_LIMIT": str(limit), "SCHEDSERVER_IDLE_TIMEOUT_SECONDS": "2"}
    with ServerProcess(tmp_path / "data", tmp_path / "scripts", env=env) as server:
        before = server_sockets(server)
        selector = selectors.DefaultSelector()
        closed: set[int] = set()
        most_held = 0
        try:
            connect(server, count, held)        # the kernel queues the ones the server does not accept yet
            for n, sock in enumerate(held):
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, n)
            deadline = time.monotonic() + 60
            while len(closed) < count and time.monotonic() < deadline:
                most_held = max(most_held, server_sockets(server) - before)
                for key, _ in selector.select(0.05):
                    try:
                        data = key.fileobj.recv(1)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    assert data == b"", f"the server sent {data!r} to a connection that sent nothing"
                    selector.unregister(key.fileobj)
                    closed.add(key.data)
        finally:
            selector.close()
            for sock in held:
                sock.close()
        assert len(closed) == count, f"{count - len(closed)} connections were never accepted and closed"
        assert 0 < most_held <= limit, f"the server held {most_held} connections with a limit of {limit}"
        assert ok(server.api("GET", "/healthz", token=None))["status"] == "ok"     # listening again
        lines = server.stderr_text().splitlines()
    # Each batch of at most `limit` connections reached the limit: at least twice for `count` = 2 * limit.
    reached = [line for line in lines if LIMIT_REACHED in line]
    assert len(reached) == 1, reached
    assert len([line for line in lines if LIMIT_LEFT in line]) <= 1, lines
    tally.limit_lines = len(reached)


###############################################################################
# Manual triggers cannot take every request thread #############################
###############################################################################

def test_eight_concurrent_triggers_run_at_most_four_the_rest_answer_503_at_once_and_healthz_answers(tmp_path):
    """A manual trigger holds a request thread until its script ends: with server.threads = 8 at most 4 may
    (max(1, threads // 2)); the others answer 503 ERROR_503 at once, and /healthz still gets a thread."""
    data, scripts, release = tmp_path / "data", tmp_path / "scripts", tmp_path / "release"
    for n in range(8):      # eight scripts of up to 8 s each (over as soon as `release` exists)
        write_script(scripts, f"slow{n}.sh", f"""
# @schedule {NEVER}
i=0
while [ ! -e '{release}' ] && [ $i -lt 160 ]; do sleep 0.05; i=$((i+1)); done
echo slow {n} done
""")
    answers: dict[int, Any] = {}

    def trigger(server: ServerProcess, n: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            try:
                answers[n] = session.post(server.url + EXEC + "/trigger", json={"scriptPath": f"slow{n}.sh"},
                                          headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}, timeout=30)
            except requests.RequestException as e:
                answers[n] = e

    def refused() -> list[int]:
        return [n for n, a in list(answers.items()) if getattr(a, "status_code", None) == 503]

    with ServerProcess(data, scripts, env={"SCHEDSERVER_THREADS": "8"}) as server:
        threads = [threading.Thread(target=trigger, args=(server, n), name=f"security-trigger-{n}", daemon=True)
                   for n in range(8)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(refused()) >= 4, 6.0)
            answered_meanwhile = dict(answers)
            wait_until(lambda: len(list((data / "running").glob("*.json"))) >= 4, 5.0)
            markers = len(list((data / "running").glob("*.json")))
            health = server.api("GET", "/healthz", token=None, timeout=5)
        finally:
            release.touch()
            for thread in threads:
                thread.join(30)
    assert sorted(n for n, a in answered_meanwhile.items() if getattr(a, "status_code", None) == 503) == \
        sorted(refused()), answered_meanwhile
    assert len(answered_meanwhile) == 4, f"answered while four scripts ran: {answered_meanwhile}"
    assert markers == 4, f"{markers} runs in flight"
    assert health.status_code == 200, health.text
    assert health.json()["running"] == 4, health.json()
    statuses = sorted(getattr(a, "status_code", repr(a)) for a in answers.values())
    assert statuses == [200] * 4 + [503] * 4, statuses
    for n in refused():
        body = answers[n].json()
        assert (body["error"], body["code"]) == ("Service unavailable", "ERROR_503"), body
        assert set(body) == {"error", "code", "message", "timestamp"} and body["message"], body
    ran = [answers[n].json() for n in answers if n not in refused()]
    assert [r["status"] for r in ran] == ["ok"] * 4, ran


###############################################################################
# Log lines cannot be forged ###################################################
###############################################################################

FORGED = "forged: all clear"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_script_name_holding_a_newline_cannot_split_or_forge_a_server_log_line(tmp_path, log_format):
    data, scripts = tmp_path / "data", tmp_path / "scripts"
    good, broken = f"report\nINFO {FORGED}.sh", f"broken\nWARNING {FORGED}.sh"
    write_script(scripts, good, f"# @schedule {NEVER}\necho done\n")
    write_script(scripts, broken, "# @schedule every blue moon\necho never\n")
    env = {"SCHEDSERVER_LOG_FORMAT": log_format, "SCHEDSERVER_ACCESS_LOG": "true"}
    with ServerProcess(data, scripts, env=env) as server:
        assert [s["scriptRel"] for s in ok(server.api("GET", EXEC + "/list"))["schedules"]] == [good]
        assert ok(server.api("POST", EXEC + "/trigger", json={"scriptPath": good}))["status"] == "ok"
        # A newline in a request path reaches the access log decoded.
        assert server.api("GET", EXEC + "/list%0AINFO%20" + FORGED.replace(" ", "%20")).status_code == 404
        stderr = server.stderr_text()
    lines = [line for line in stderr.splitlines() if line.strip()]
    fired = f"script fire {good} trigger=manual status=ok"
    refused = f"script {broken} not scheduled"
    if log_format == "json":
        entries = [json.loads(line) for line in lines]      # every line is one whole JSON object
        assert all(isinstance(e, dict) and {"ts", "level", "message"} <= set(e) for e in entries), lines
        messages = [e["message"] for e in entries]
        assert any(m.startswith(fired) for m in messages), messages
        assert any(m.startswith(refused) for m in messages), messages
        return
    escaped = [text.replace("\n", "\\n") for text in (fired, refused)]
    assert any(escaped[0] in line for line in lines), stderr
    assert any(escaped[1] in line for line in lines), stderr
    forged = [line for line in lines if FORGED in line and not any(
        legit in line for legit in ("report\\nINFO", "broken\\nWARNING", "%0AINFO"))]
    assert forged == [], forged
    assert not [line for line in lines if line.startswith(("INFO ", "WARNING "))], stderr


###############################################################################
# Failures answered honestly ###################################################
###############################################################################

def test_a_trigger_whose_fires_log_cannot_be_written_answers_500_naming_the_run_never_200(tmp_path, caplog):
    """A directory in place of fires.log: no append can open it, for root too. The script runs, its record
    cannot be written, and the caller hears so (500 ERROR_500 with the run id), not a success nobody can find."""
    scripts, ran = tmp_path / "scripts", tmp_path / "ran"
    write_script(scripts, "report.sh", f"# @schedule {NEVER}\necho \"$SCHEDSERVER_RUN_ID\" >> '{ran}'\necho done\n")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    caplog.set_level(logging.ERROR, logger="schedserver")
    with Stack(tmp_path, tokens=(ADMIN_TOKEN,)) as stack:
        fires = stack.data_dir / "fires.log"
        fires.mkdir()
        response = stack.app.post_json(EXEC + "/trigger", {"scriptPath": "report.sh"}, headers=admin,
                                       expect_errors=True)
        run_ids = ran.read_text().split() if ran.exists() else []
        in_flight = stack.recorder.count()
        markers = list((stack.data_dir / "running").glob("*.json"))
        body = response.json
        assert response.status_int == 500, body
        assert set(body) == {"error", "code", "message", "timestamp"}, body
        assert (body["error"], body["code"]) == ("Internal server error", "ERROR_500"), body
        assert len(run_ids) == 1, f"the script ran {len(run_ids)} times"
        assert run_ids[0] in body["message"], (run_ids, body)
        assert in_flight == 0 and markers == [], (in_flight, markers)
        assert "cannot append to" in caplog.text and run_ids[0] in caplog.text, caplog.text
        # Once the log can be written again, so can the next run's record.
        fires.rmdir()
        again = stack.app.post_json(EXEC + "/trigger", {"scriptPath": "report.sh"}, headers=admin,
                                    expect_errors=True)
        assert again.status_int == 200 and again.json["status"] == "ok", again.body
        assert [json.loads(line)["runId"] for line in fires.read_text().splitlines()] == [again.json["runId"]]


###############################################################################
# Egress policy: pure checks ###################################################
###############################################################################

PERMITS_CASES = [
    # (allow, deny, address, permitted)
    ((), (), "10.0.0.1", True),                                         # off: everything goes
    ((), (), "::1", True),
    (("127.0.0.1/32",), (), "127.0.0.1", True),
    (("127.0.0.1/32",), (), "127.0.0.2", False),
    (("127.0.0.1/32",), (), "::1", False),
    (("127.0.0.1/32",), (), "::ffff:127.0.0.1", True),                  # IPv4-mapped IPv6 is the IPv4 address
    ((), ("127.0.0.2/32",), "127.0.0.2", False),
    ((), ("127.0.0.2/32",), "127.0.0.1", True),
    ((), ("127.0.0.2/32",), "::ffff:127.0.0.2", False),
    ((), ("127.0.0.2/32",), "::ffff:7f00:2", False),                    # the same, written in hex
    (("10.0.0.0/8",), ("10.1.0.0/16",), "10.2.3.4", True),
    (("10.0.0.0/8",), ("10.1.0.0/16",), "10.1.2.3", False),             # deny wins over allow
    (("10.0.0.0/8",), ("10.1.0.0/16",), "::ffff:10.1.2.3", False),
    (("0.0.0.0/0", "::/0"), ("169.254.169.254/32",), "169.254.169.254", False),
    (("fd00::/8",), (), "fd12:3456::1", True),                          # IPv6
    (("fd00::/8",), (), "fe80::1", False),
    (("fd00::/8",), (), "fd00::1%eth0", True),                          # a scoped address
    ((), ("::1/128",), "::1", False),
    ((), ("::1/128",), "0:0:0:0:0:0:0:1", False),
    ((), ("::1/128",), "127.0.0.1", True),
    ((), ("fe80::/10",), "fe80::1%eth0", False),
    ((), ("::ffff:127.0.0.0/104",), "::ffff:127.0.0.2", False),         # a deny written as IPv4-mapped IPv6 ...
    ((), ("::ffff:127.0.0.0/104",), "127.0.0.2", False),                # ... covers the IPv4 addresses it maps
]


@pytest.mark.parametrize("allow, deny, address, permitted", PERMITS_CASES, ids=[
    f"{address}-{'permitted' if permitted else 'refused'}-allow:{','.join(allow) or 'none'}"
    f"-deny:{','.join(deny) or 'none'}" for allow, deny, address, permitted in PERMITS_CASES])
def test_the_egress_policy_permits_an_address_only_when_allowed_and_not_denied(allow, deny, address, permitted, tally):
    policy = schedserver.EgressPolicy(allow, deny)
    assert policy.active == bool(allow or deny)
    assert policy.permits(address) is permitted
    tally.egress += 1


@pytest.mark.parametrize("variable, value", [
    ("SCHEDSERVER_CURL_DENY_NETWORKS", "not-a-net"),
    ("SCHEDSERVER_CURL_DENY_NETWORKS", "10.0.0.0/8,10.0.0.0/33"),
    ("SCHEDSERVER_CURL_ALLOW_NETWORKS", "127.0.0.1/32,localhost"),
    ("SCHEDSERVER_CURL_ALLOW_NETWORKS", "fd00::/129"),
])
def test_a_network_that_is_not_a_cidr_is_a_config_error_naming_the_setting(variable, value, tally):
    with pytest.raises(schedserver.ConfigError) as raised:
        schedserver.load_config(environ={variable: value})
    assert variable in str(raised.value) and "not a network" in str(raised.value)
    tally.egress += 1


def test_networks_from_the_environment_are_kept_as_written_and_an_empty_list_is_off(tally):
    config = schedserver.load_config(environ={"SCHEDSERVER_CURL_ALLOW_NETWORKS": " 10.0.0.0/8 , fd00::/8 ",
                                              "SCHEDSERVER_CURL_DENY_NETWORKS": ""})
    assert (config.allow_networks, config.deny_networks) == (("10.0.0.0/8", "fd00::/8"), ())
    assert not schedserver.EgressPolicy().active
    tally.egress += 1


def test_a_bad_network_in_the_config_file_is_refused_naming_the_key(tmp_path, tally):
    config_file = tmp_path / "schedserver.toml"
    config_file.write_text('[curl]\ndeny_networks = ["10.0.0.0/8", "internal.example"]\n')
    with pytest.raises(schedserver.ConfigError, match=r"curl\.deny_networks: .*'internal\.example' is not a network"):
        schedserver.load_config(flags={"config": str(config_file)}, environ={})
    tally.egress += 1


def test_the_server_does_not_start_without_its_policy_when_a_network_is_bad(tmp_path, tally):
    """Fail closed: a typo in deny_networks stops the server instead of serving with no policy."""
    done = run_schedserver(schedserver_argv(tmp_path / "data", tmp_path / "scripts"),
                           schedserver_env(SCHEDSERVER_CURL_DENY_NETWORKS="10.0.0.0/8,not-a-net"))
    assert done.returncode == 2, done.stderr
    assert "SCHEDSERVER_CURL_DENY_NETWORKS" in done.stderr and "Traceback" not in done.stderr
    tally.egress += 1


###############################################################################
# Egress policy: the runner behind a hand-written resolver #####################
###############################################################################

@dataclass
class Arrival:
    local_address: str          # which loopback address the request came in on
    path: str
    host: str | None


class Listener:
    """A real HTTP server on 0.0.0.0:<free port> that records which address each request reached; paths in
    `redirects` answer 302 to their URL (`{port}` filled in), every other path 200."""

    def __init__(self, redirects: dict[str, str] | None = None):
        self.redirects = dict(redirects or {})
        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with listener._lock:
                    listener.arrivals.append(Arrival(self.connection.getsockname()[0], self.path,
                                                     self.headers.get("Host")))
                location = listener.redirects.get(self.path)
                self.send_response(302 if location else 200)
                if location:
                    self.send_header("Location", location.format(port=listener.port))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="security-listener", daemon=True)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def received(self, local_address: str | None = None) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if local_address is None or a.local_address == local_address]

    def __enter__(self) -> "Listener":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class FakeResolver:
    """socket.getaddrinfo knowing a few made-up names (a list of answers, the last one repeating, so a name can
    change its answer between lookups); every other host goes to the real resolver."""

    def __init__(self, names: dict[str, list[list[str]]]):
        self.names = names
        self.lookups: list[str] = []
        self.real = socket.getaddrinfo

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        if host not in self.names:
            return self.real(host, port, family, type, proto, flags)
        answers = self.names[host]
        addresses = answers[min(self.lookups.count(host), len(answers) - 1)]
        self.lookups.append(host)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]


def run_once(policy: schedserver.EgressPolicy, url: str, **spec: Any) -> schedserver.RunResult:
    return schedserver.HttpRunner(policy=policy).run({"method": "GET", "url": url, "timeout": 5, **spec}, {})


def test_a_name_resolving_to_ipv6_and_ipv4_connects_to_the_permitted_ipv4_address(monkeypatch, tally):
    resolver = FakeResolver({"dual.test": [["::1", "127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with Listener() as listener:
        result = run_once(schedserver.EgressPolicy(allow=("127.0.0.1/32",)), f"http://dual.test:{listener.port}/x")
    assert (result.status, result.status_code) == ("ok", 200), result
    assert [(a.local_address, a.host) for a in listener.received()] == [("127.0.0.1", f"dual.test:{listener.port}")]
    tally.egress += 1


def test_a_name_resolving_only_to_refused_addresses_is_accepted_at_create_and_an_error_at_run_time(monkeypatch, tally):
    resolver = FakeResolver({"inside.test": [["127.0.0.2", "::1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    policy = schedserver.EgressPolicy(allow=("127.0.0.1/32",))
    with Listener() as listener:
        url = f"http://inside.test:{listener.port}/x"
        assert schedserver.validate_create({"cron": NEVER, "request": {"url": url}}, "UTC", policy)
        result = run_once(policy, url)
    assert result.status == "error" and "egress policy refuses inside.test" in result.error, result
    assert listener.received() == []
    tally.egress += 1


def test_a_name_that_changes_its_answer_after_the_check_is_connected_to_the_checked_address(monkeypatch, tally):
    """DNS rebinding: the check and the connect use one lookup, so a second answer is never used."""
    resolver = FakeResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with Listener() as listener:
        result = run_once(schedserver.EgressPolicy(deny=("127.0.0.2/32",)), f"http://rebind.test:{listener.port}/x")
    assert result.status == "ok", result
    assert [a.local_address for a in listener.received()] == ["127.0.0.1"]
    assert resolver.lookups == ["rebind.test"]
    tally.egress += 1


def test_a_redirect_hop_to_a_refused_address_is_an_error_and_never_connected(tally):
    with Listener({"/redirect": "http://127.0.0.2:{port}/landing"}) as listener:
        result = run_once(schedserver.EgressPolicy(deny=("127.0.0.2/32",)), listener.url() + "/redirect",
                          follow_redirects=True)
    assert result.status == "error" and "egress policy" in result.error, result
    assert [(a.local_address, a.path) for a in listener.received()] == [("127.0.0.1", "/redirect")]
    tally.egress += 1


###############################################################################
# Egress policy: the real server ###############################################
###############################################################################

def test_with_the_policy_off_runs_reach_internal_addresses(tmp_path, tally):
    with Listener() as listener, ServerProcess(tmp_path / "data", tmp_path / "scripts") as server:
        local = ok(create(server, listener.url("127.0.0.1") + "/local"), 201)["id"]
        other = ok(create(server, listener.url("127.0.0.2") + "/other"), 201)["id"]     # a literal is fine too
        runs = [history_of(server, local, 1), history_of(server, other, 1)]
    assert all(h and {e["status"] for e in h} == {"ok"} for h in runs), runs
    assert {(a.local_address, a.path) for a in listener.received()} == {("127.0.0.1", "/local"),
                                                                         ("127.0.0.2", "/other")}
    tally.egress += 1


@pytest.fixture(scope="module")
def deny_server(tmp_path_factory):
    """A server with deny_networks = 127.0.0.2/32, and one listener on 0.0.0.0 that redirects."""
    root = tmp_path_factory.mktemp("deny")
    redirects = {"/redirect": "http://127.0.0.2:{port}/landing", "/hop": "http://127.0.0.1:{port}/final"}
    with Listener(redirects) as listener, \
            ServerProcess(root / "data", root / "scripts",
                          env={"SCHEDSERVER_CURL_DENY_NETWORKS": "127.0.0.2/32"}) as server:
        yield server, listener


@pytest.mark.parametrize("host", ["127.0.0.2", "[::ffff:127.0.0.2]"])
def test_a_url_whose_host_is_a_denied_literal_address_is_refused_at_create(deny_server, host, tally):
    server, listener = deny_server
    response = create(server, f"http://{host}:{listener.port}/")
    body = response.json()
    assert response.status_code == 400 and body["error"] == "INVALID_PARAMETER", body
    assert "egress policy" in body["message"]
    assert all(item["request"]["url"].find("127.0.0.2") < 0 for item in ok(server.api("GET", CURL))["items"])
    tally.egress += 1


def test_a_redirect_to_a_denied_address_is_recorded_as_error_and_the_denied_listener_sees_nothing(deny_server, tally):
    server, listener = deny_server
    schedule = ok(create(server, listener.url() + "/redirect", follow_redirects=True), 201)["id"]
    runs = history_of(server, schedule, 2)
    ok(server.api("DELETE", f"{CURL}/{schedule}"))
    assert runs and all(e["status"] == "error" and "egress policy" in (e["error"] or "") for e in runs), runs
    assert listener.received("127.0.0.2") == []
    assert any(a.path == "/redirect" for a in listener.received("127.0.0.1"))
    tally.egress += 1


def test_a_redirect_to_a_permitted_address_is_followed(deny_server, tally):
    server, listener = deny_server
    schedule = ok(create(server, listener.url() + "/hop", follow_redirects=True), 201)["id"]
    runs = history_of(server, schedule, 1)
    ok(server.api("DELETE", f"{CURL}/{schedule}"))
    assert runs and (runs[-1]["status"], runs[-1]["status_code"]) == ("ok", 200), runs
    assert any(a.path == "/final" for a in listener.received("127.0.0.1"))
    tally.egress += 1


@pytest.fixture(scope="module")
def allow_server(tmp_path_factory):
    """A server with allow_networks = 127.0.0.1/32, and one listener on 0.0.0.0."""
    root = tmp_path_factory.mktemp("allow")
    with Listener() as listener, \
            ServerProcess(root / "data", root / "scripts",
                          env={"SCHEDSERVER_CURL_ALLOW_NETWORKS": "127.0.0.1/32"}) as server:
        yield server, listener


def test_localhost_still_works_under_an_allow_list_of_127_0_0_1(allow_server, tally):
    server, listener = allow_server
    schedule = ok(create(server, listener.url("localhost") + "/by-name"), 201)["id"]
    runs = history_of(server, schedule, 1)
    ok(server.api("DELETE", f"{CURL}/{schedule}"))
    assert runs and runs[-1]["status"] == "ok", runs
    assert [a.local_address for a in listener.received() if a.path == "/by-name"][:1] == ["127.0.0.1"]
    tally.egress += 1


@pytest.mark.parametrize("host", ["127.0.0.2", "[::1]", "2130706434", "0x7f000002", "017700000002"])
def test_a_literal_address_outside_the_allow_list_is_refused_at_create(allow_server, host, tally):
    """Short and numeric IPv4 forms (2130706434, 0x7f000002 and 017700000002 are 127.0.0.2 to the resolver) are
    address literals too: the create check sees through them."""
    server, listener = allow_server
    response = create(server, f"http://{host}:{listener.port}/")
    assert response.status_code == 400 and response.json()["error"] == "INVALID_PARAMETER", response.text
    assert "egress policy" in response.json()["message"]
    tally.egress += 1


def test_a_name_resolving_only_to_refused_addresses_is_created_and_recorded_as_error_at_run_time(tmp_path, tally):
    """`localhost` is a name, not an address literal: the create check cannot see where it goes, the run-time
    check must (every loopback address is denied, whichever ones the machine's resolver gives)."""
    with Listener() as listener, \
            ServerProcess(tmp_path / "data", tmp_path / "scripts",
                          env={"SCHEDSERVER_CURL_DENY_NETWORKS": "127.0.0.0/8,::1/128"}) as server:
        schedule = ok(create(server, listener.url("localhost") + "/by-name"), 201)["id"]
        runs = history_of(server, schedule, 1)
    assert runs and all(e["status"] == "error" and "egress policy" in (e["error"] or "") for e in runs), runs
    assert listener.received() == []
    tally.egress += 1
