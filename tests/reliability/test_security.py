"""Reliability, section 6 "Security": who may call what, which files are private, what never reaches a log,
what a script never sees, and where HTTP runs may connect.

Grouped by concern: authorization on every route the router knows (the app in-process with webtest, so a
route added without auth fails here); private files and secrets kept out of logs (the real server in a
subprocess); script environments; the egress policy (EgressPolicy and its config converter as pure checks,
HttpRunner in-process behind a hand-written resolver, and real servers with deny_networks / allow_networks).
Every wait has a deadline; all traffic goes to 127.0.0.x.

Figure: `reliability: security R routes checked for auth, F files private, S secrets never logged, egress E cases`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import bottle
import pytest
import webtest

import schedserver
from e2e_helpers import DEFAULT_TOKEN, ServerProcess, TargetServer, run_schedserver, schedserver_argv, \
    schedserver_env, wait_until
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
    record: Callable[[str], None] | None = None


@pytest.fixture(scope="module")
def tally():
    counts = Tally()
    yield counts
    if counts.record and None not in (counts.routes, counts.files, counts.secrets) and counts.egress:
        counts.record(f"reliability: security {counts.routes} routes checked for auth, {counts.files} files "
                      f"private, {counts.secrets} secrets never logged, egress {counts.egress} cases")


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
    """The app as Server.start() builds it (both services, /healthz, admin and read-only tokens) over temp
    dirs, without threads: nothing ticks, so the state only changes if a request changes it."""

    def __init__(self, tmp_path: Path):
        self.scripts_dir = tmp_path / "scripts"
        self.data = tmp_path / "data"
        self.triggered = tmp_path / "triggered"
        self.data.mkdir()
        write_script(self.scripts_dir, "nightly.sh", f"# @schedule 0 0 3 * * *\necho ran >> '{self.triggered}'\n")
        self.submitted: list[tuple] = []
        self.scheduler = schedserver.Scheduler(submit=lambda *call: self.submitted.append(call))
        self.curl = schedserver.CurlSchedules(
            schedserver.JournalStore(str(self.data / "curl-schedules.json")),
            schedserver.NdjsonLog(str(self.data / "curl-runs.log"), 1 << 20, 3),
            self.scheduler, schedserver.HttpRunner())
        self.curl.load()
        self.scripts = schedserver.ScriptSchedules(
            str(self.scripts_dir), schedserver.NdjsonLog(str(self.data / "fires.log"), 1 << 20, 3), self.scheduler,
            schedserver.ScriptRunner(kill_grace=0.2), secret_values=(ADMIN_TOKEN, READ_TOKEN))
        self.scripts.load()
        self.schedule_id = self.curl.create({"cron": NEVER, "request": {
            "url": "http://127.0.0.1:9/hook", "headers": {"X-Api-Key": "stored-key"}}})["id"]
        # On disk but not registered: a reload that got through would register it.
        write_script(self.scripts_dir, "late.sh", "# @schedule 0 0 4 * * *\necho late\n")
        health = schedserver.Health(self.scheduler, self.curl, self.scripts)
        self.bottle = schedserver.make_app(self.curl, schedserver.Auth((ADMIN_TOKEN,), (READ_TOKEN,)), self.scripts,
                                           health)
        self.app = webtest.TestApp(self.bottle)
        # What a caller would send to make each route do its job (routes not listed get no body).
        self.bodies = {
            ("POST", CURL): {"cron": EVERY_SECOND, "request": {"url": "http://127.0.0.1:9/new"}},
            ("POST", EXEC + "/reload"): {},
            ("POST", EXEC + "/trigger"): {"scriptPath": "nightly.sh"},
        }

    @property
    def routes(self) -> list[bottle.Route]:
        return list(self.bottle.routes)

    def path_for(self, route: bottle.Route) -> str:
        """The route's rule with its path parameters filled by a real value the router sends to this route."""
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
def app(tmp_path) -> AppUnderTest:
    return AppUnderTest(tmp_path)


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
        if route.rule == "/healthz":
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
    assert checked >= len(BAD_AUTHORIZATIONS) * (len(app.routes) - 1)
    assert app.state() == before
    tally.routes = len(app.routes)


def test_the_only_route_that_answers_without_a_token_is_healthz(app):
    open_routes = {route.rule for route in app.routes
                   if app.call(route.method, app.path_for(route), None, route.rule).status_int != 401}
    assert open_routes == {"/healthz"}
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
        if route.method in READ_ONLY_METHODS and route.rule != "/healthz":
            response = app.call(route.method, app.path_for(route), f"Bearer {READ_TOKEN}", route.rule)
            assert response.status_int not in (401, 403), (route.rule, response.body)


def test_the_admin_token_reaches_every_route_with_the_values_filled_in(app):
    """The fills are real: with the admin token each route does its job (the malformed-id route answers 404)."""
    order = {"GET": 0, "HEAD": 0, "POST": 1, "PATCH": 2, "DELETE": 3}
    for route in sorted(app.routes, key=lambda r: order.get(r.method, 1)):
        path = app.path_for(route)
        response = app.call(route.method, path, f"Bearer {ADMIN_TOKEN}", route.rule)
        if ":re:" in route.rule:        # the routes for ids holding a slash: always an unknown schedule
            assert response.status_int == 404, (route.rule, response.body)
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
    # The definitions (with their request secrets) are in the journal; the snapshot appears at the first compaction,
    # and is checked too if it is there: every file present must be private.
    required = {".", "api-token", "schedserver.lock", "curl-schedules.journal", "curl-schedules.json.lock",
                "curl-runs.log", "curl-runs.log.lock", "fires.log", "fires.log.1", "fires.log.lock",
                "exec-registered.json", "exec-registered.json.lock", "running/"}
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


@pytest.mark.parametrize("host", ["127.0.0.2", "[::1]"])
def test_a_literal_address_outside_the_allow_list_is_refused_at_create(allow_server, host, tally):
    server, listener = allow_server
    response = create(server, f"http://{host}:{listener.port}/")
    assert response.status_code == 400 and response.json()["error"] == "INVALID_PARAMETER", response.text
    tally.egress += 1


def test_a_name_resolving_only_to_refused_addresses_is_created_and_recorded_as_error_at_run_time(allow_server, tally):
    """2130706434 is a host name to the URL parser (not an address literal) that the resolver turns into
    127.0.0.2: the create check cannot see it, the run-time check must."""
    server, listener = allow_server
    response = create(server, f"http://2130706434:{listener.port}/numeric")
    schedule = ok(response, 201)["id"]
    runs = history_of(server, schedule, 1)
    ok(server.api("DELETE", f"{CURL}/{schedule}"))
    assert runs and all(e["status"] == "error" and "egress policy" in (e["error"] or "") for e in runs), runs
    assert [a for a in listener.received() if a.path == "/numeric"] == []
    tally.egress += 1
