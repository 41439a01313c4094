"""Reliability, section 3 "Bad input": every route of both surfaces, fed whatever a hostile or careless client sends.

The routes are enumerated from the Bottle app's router (`app.routes`), so a route added later is fuzzed too, and
a success it answers must be added to SUCCESS below (that is, documented) before this file passes.

The promise, checked on every answer: it is either a success documented for its route, or a 4xx JSON error in
its surface's shape -- HTTP schedules `{error: CODE, message}`, script schedules `{error: title, code, message,
timestamp}` with the contract's titles; never a 5xx, never HTML or a traceback, always `application/json`; and
a rejected request changes nothing that is stored (the bytes of the schedules snapshot and journal, the logs, and
what the services list are snapshotted before and compared after).

Most cases go through webtest to the real server's app, loaded in-process by tests/harness.py's Stack (a fake
clock, a worker pool that never runs, real files in a temporary data dir and scripts dir). A smaller batch of
the same kinds goes over raw sockets to the real server in a subprocess, which must keep running.

The operating features (issue 16) get cases of their own besides: create and edit bodies with the operating fields
(retry, success, overlap, jitter_seconds, notify) valid, refused by docs/api.md (then a 400) or left open by it;
run history query strings (limit, status, since, cursor: real cursors, altered ones and garbage); run now with any
`wait`; and paging through a schedule's runs with next_cursor, with a run in flight and while runs are added. The
world holds a schedule with runs (run now through the service), so run ids that exist are fuzzed too. A run
started with `wait=false` stays in flight here (the pool never runs it), so later run-now cases meet 409
RUN_IN_PROGRESS as well.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import string
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import pytest
import webtest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import schedserver
from e2e_helpers import DEFAULT_TOKEN, ServerProcess
from fakes import FakeClock
from harness import Stack
from stored import store_files

CURL = schedserver.CURL_PREFIX
EXEC = schedserver.EXEC_PREFIX
ADMIN_TOKEN = "admin-token"
MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NOW = datetime.fromisoformat("2026-01-15T11:59:30.250+00:00").timestamp()
FORMAT_HINT = "second minute hour day month weekday"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")

# What each route answers on success: {status: keys every such answer carries}. From docs/api.md and the README's
# route table. A route missing here has no documented success, so any 2xx from it fails the test.
OPERATING = {"retry", "success", "overlap", "jitter_seconds", "notify"}
SCHEDULE = {"id", "cron", "enabled", "created_at", "last_run", "name", "next_run", "request"}
RUN = {"run_id", "schedule_id", "trigger", "attempt", "scheduled_at", "started_at", "finished_at", "status",
       "status_code", "duration_ms", "error"}
SUCCESS = {
    ("GET", CURL): {200: {"items", "meta"}},
    ("POST", CURL): {201: {"id", "cron", "enabled", "created_at", "request"} | OPERATING},
    ("GET", CURL + "/<schedule_id>"): {200: SCHEDULE | OPERATING},
    ("PATCH", CURL + "/<schedule_id>"): {200: SCHEDULE | OPERATING | {"history"}},
    ("PATCH", CURL + "/<schedule_id>/toggle"): {200: {"id", "enabled"}},
    ("POST", CURL + "/<schedule_id>/run"): {200: RUN, 202: {"run_id"}},
    ("GET", CURL + "/<schedule_id>/runs"): {200: {"items", "next_cursor"}},
    ("GET", CURL + "/<schedule_id>/runs/<run_id>"): {200: RUN},
    ("DELETE", CURL + "/<schedule_id>"): {200: {"id"}},
    ("GET", EXEC + "/list"): {200: {"total", "schedules"}},
    ("GET", EXEC + "/history"): {200: {"total", "limit", "includeRotated", "entries"}},
    ("POST", EXEC + "/reload"): {200: {"dry_run", "added", "kept", "removed", "failed"}},
    ("POST", EXEC + "/trigger"): {200: {"triggered", "scriptPath", "runId", "status", "durationMs"}},
    ("GET", EXEC + "/runs/<run_id>"): {200: {"ts", "scriptPath", "runId", "status", "trigger", "attempt"}},
    ("GET", "/healthz"): {200: {"status", "version"}},
    ("GET", "/api/v1/openapi.json"): {200: {"openapi", "info", "paths"}},
    ("GET", "/api/v1/cron/preview"): {200: {"expression", "description", "timezone", "next"}},
    ("GET", "/metrics"): {200: set()},          # Prometheus' text format, not JSON
    ("GET", "/"): {200: set()},                 # the dashboard: HTML, its script and style sheet
    ("GET", "/static/<name>"): {200: set()},
}
TEXT_ROUTES = {("GET", "/metrics"), ("GET", "/"), ("GET", "/static/<name>")}
# The script surface's contract: the title and code of each documented error status.
EXEC_CONTRACT = {400: ("Invalid parameter format", "VALIDATION_ERROR"), 403: ("Access denied", "FORBIDDEN"),
                 404: ("Resource not found", "NOT_FOUND")}
# The HTTP schedule surface's codes per status (contract and README).
CURL_CODES = {400: {"INVALID_PARAMETER", "INVALID_CRON_EXPRESSION"}, 401: {"UNAUTHORIZED"}, 403: {"FORBIDDEN"},
              404: {"SCHEDULE_NOT_FOUND", "NOT_FOUND", "RUN_NOT_FOUND"}, 405: {"METHOD_NOT_ALLOWED"},
              409: {"RUN_IN_PROGRESS"}, 413: {"PAYLOAD_TOO_LARGE"}, 431: {"HEADERS_TOO_LARGE"}}

HOURLY = "#!/bin/sh\n# @schedule 0 * * * *\necho hourly\n"
LOCKED = "#!/bin/sh\n# @schedule 0 0 * * *\n# @token\necho locked\n"
BROKEN = "#!/bin/sh\n# @schedule every blue moon\necho broken\n"
EVIL = "#!/bin/sh\n# @schedule * * * * *\ntouch {marker}\necho escaped\n"

STATS = {"cases": 0, "5xx": 0, "changed": 0}
HISTORY_RUNS = 120


###############################################################################
# The world: both services over real files, the app over them #################
###############################################################################

def build_scripts_tree(root: Path) -> tuple[Path, Path, Path]:
    """scripts/ with a schedule, a @token one and a broken one; outside/ with a script that leaves a marker when
    run, reachable from inside the scripts dir only through symlinks (a file link and a directory link)."""
    scripts, outside = root / "scripts", root / "outside"
    (scripts / "cron").mkdir(parents=True)
    outside.mkdir()
    marker = outside / "ran"
    for rel, text in {"cron/hourly.sh": HOURLY, "locked.sh": LOCKED, "broken.sh": BROKEN}.items():
        (scripts / rel).write_text(text)
        (scripts / rel).chmod(0o755)
    (outside / "evil.sh").write_text(EVIL.format(marker=marker))
    (outside / "evil.sh").chmod(0o755)
    (scripts / "escape.sh").symlink_to(outside / "evil.sh")
    (scripts / "linkdir").symlink_to(outside, target_is_directory=True)
    return scripts, outside, marker


class World:
    """Both services over one tmp dir and the app over them: the real server, loaded (tests/harness.py's Stack:
    a fake clock, a worker pool that never runs, no threads; scripts really run when triggered)."""

    def __init__(self, root: Path):
        self.scripts_dir, self.outside, self.marker = build_scripts_tree(root)
        self.stack = Stack(root, FakeClock(NOW), load=False, tokens=(ADMIN_TOKEN,), read_tokens=())
        self.data = self.stack.data_dir
        self.clock = self.stack.clock
        # Nothing ticks here: /healthz must not call the scheduler stalled however long the module runs.
        self.stack.scheduler.monotonic = lambda: 0.0
        # No compaction: it rewrites both files from a background thread at any moment (without changing what
        # they hold), which would race the byte comparison below. It is tested in test_journal.py.
        self.stack.http.store.COMPACT_MIN_LINES = 1 << 62
        self.stack.server.load()
        self.scheduler = self.stack.scheduler
        self.curl = self.stack.http
        self.scripts = self.stack.scripts
        self.bottle_app = self.stack.server.app
        self.app = self.stack.app
        self.routes = sorted((route.method, route.rule) for route in self.bottle_app.routes)
        self.registered = {s["scriptRel"] for s in self.scripts.list()["schedules"]}
        self.ensure_schedules()
        self._history_id: str | None = None
        self.run_ids: list[str] = []            # HTTP runs in the runs log, oldest first
        self.cursors: list[str] = []            # next_cursor values the server gave
        self.history_id()
        self.script_run_ids = [self.scripts.trigger({"scriptPath": "cron/hourly.sh"})["runId"]]

    def close(self) -> None:
        self.stack.close()

    def known_run_ids(self) -> list[str]:
        """Runs of both surfaces that exist (in the logs)."""
        return self.run_ids + self.script_run_ids

    def history_id(self) -> str:
        """A schedule with HISTORY_RUNS runs in the runs log (run now through the service, one in five failing),
        so that run ids that exist, pages and cursors get fuzzed too; made again when a case deleted it."""
        if self._history_id is not None:
            try:
                return self.curl.find(self._history_id).id
            except schedserver.NotFound:
                pass
        sid = self.curl.create({"cron": "0 0 0 1 1 *", "request": {"url": "http://127.0.0.1:9/history"},
                                "name": "history", "retry": {"count": 2}, "overlap": "forbid"})["id"]
        self.stack.http_runner.script = [("error", 503, "HTTP 503") if n % 5 == 2 else ("ok", 200, None)
                                         for n in range(HISTORY_RUNS)]
        for _ in range(HISTORY_RUNS):
            self.run_ids.append(self.curl.run_now(sid)[1]["run_id"])
        self.stack.http_runner.script = []
        cursor = None
        while True:
            page = self.curl.list_runs(sid, 17, cursor=cursor)
            cursor = page["next_cursor"]
            if cursor is None:
                break
            self.cursors.append(cursor)
        self._history_id = sid
        return sid

    def ensure_schedules(self) -> None:
        """Keep an enabled and a disabled schedule around, so ids that exist get fuzzed too."""
        while self.curl.count() < 2:
            self.curl.create({"cron": "0 0 0 1 1 *", "request": {"url": "http://127.0.0.1:9/fixture"},
                              "enabled": self.curl.count() == 0, "name": "fixture"})

    def ids(self) -> list[str]:
        self.ensure_schedules()
        return [item["id"] for item in self.curl.list()["items"]]

    def snapshot(self) -> dict:
        """Everything stored, as bytes and as the services list it."""
        files = {}
        for name in ("curl-schedules.json", "curl-schedules.journal", "curl-runs.log", "fires.log",
                     "exec-registered.json", "run-state.json", "alerts-outbox.ndjson"):
            path = self.data / name
            files[name] = path.read_bytes() if path.exists() else None
        for directory in ("running", "output"):
            files[directory + "/"] = sorted(p.name for p in (self.data / directory).glob("*"))
        return {"files": files, "curl": json.dumps(self.curl.list(), sort_keys=True),
                "scripts": json.dumps(self.scripts.list(), sort_keys=True)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    built = World(tmp_path_factory.mktemp("fuzz"))
    yield built
    built.close()


###############################################################################
# Sending a case and checking its answer #######################################
###############################################################################

@dataclass
class Case:
    """One request: method, a path already percent-encoded, a raw query string, body bytes and Content-Type."""

    method: str
    path: str
    query: str = ""
    body: bytes = b""
    content_type: str | None = "application/json"

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    def path_info(self) -> str:
        """PATH_INFO as Bottle sees it (percent-decoded, UTF-8)."""
        return urllib.parse.unquote(self.path, errors="ignore")


def route_for(app, method: str, path_info: str):
    """The route Bottle's router picks for a request, or None when it answers 404/405 itself."""
    try:
        route, _ = app.router.match({"PATH_INFO": path_info, "REQUEST_METHOD": method})
        return route
    except Exception:
        return None


def check_answer(app, case: Case, status: int, content_type: str, body: bytes) -> dict | None:
    """The promise for one answer; returns the parsed JSON (None for HEAD, which has no body)."""
    STATS["cases"] += 1
    where = f"{case.method} {case.target[:300]!r} (Content-Type {case.content_type!r}, body {case.body[:200]!r})"
    if status >= 500:
        STATS["5xx"] += 1
    assert status < 500, f"{where} answered {status}: {body[:500]!r}"
    path_info = case.path_info()
    if 200 <= status < 300:
        route = route_for(app, case.method, path_info)
        if route is not None and (route.method, route.rule) in TEXT_ROUTES:
            assert content_type.startswith("text/"), f"{where} answered {status} as {content_type!r}"
            return None
    assert content_type == "application/json", f"{where} answered {status} as {content_type!r}: {body[:300]!r}"
    if case.method == "HEAD":
        assert body == b""
        return None
    assert b"Traceback" not in body and b"<html" not in body.lower(), f"{where}: {body[:500]!r}"
    answer = json.loads(body.decode("utf-8"), parse_constant=lambda name: pytest.fail(f"{where}: {name} in JSON"))
    path_info = case.path_info()
    if 200 <= status < 300:
        route = route_for(app, case.method, path_info)
        key = (route.method, route.rule) if route is not None else None
        assert key in SUCCESS, f"{where} answered {status} from route {key}, which has no documented success"
        assert status in SUCCESS[key], f"{where}: {status}, documented {sorted(SUCCESS[key])}"
        keys = SUCCESS[key][status]
        assert isinstance(answer, dict) and keys <= set(answer), f"{where}: {answer!r} lacks {keys - set(answer)}"
        return answer
    assert 400 <= status < 500, f"{where} answered {status}"
    assert isinstance(answer, dict), f"{where}: {answer!r}"
    assert isinstance(answer.get("message"), str) and answer["message"].strip(), f"{where}: {answer!r}"
    if path_info.startswith(EXEC):
        assert set(answer) == {"error", "code", "message", "timestamp"}, f"{where}: {answer!r}"
        assert MS_UTC.match(answer["timestamp"]), f"{where}: {answer!r}"
        if status in EXEC_CONTRACT:
            assert (answer["error"], answer["code"]) == EXEC_CONTRACT[status], f"{where}: {answer!r}"
        else:
            assert isinstance(answer["error"], str) and answer["error"] and answer["code"], f"{where}: {answer!r}"
    else:
        assert set(answer) == {"error", "message"}, f"{where}: {answer!r}"
        assert answer["error"] in CURL_CODES.get(status, set()), f"{where}: {status} {answer!r}"
    return answer


def send(world: World, case: Case):
    """Send a case through webtest, check the answer, check a rejection changed nothing; the response."""
    world.ensure_schedules()
    before = world.snapshot()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    response = world.app.request(case.target, method=case.method, body=case.body, headers=headers,
                                 expect_errors=True)
    answer = check_answer(world.bottle_app, case, response.status_int, response.content_type, response.body)
    assert not world.marker.exists(), f"{case.method} {case.target!r} {case.body[:200]!r} ran a script outside"
    if 200 <= response.status_int < 300:
        if case.method == "POST" and case.path == CURL:
            world.curl.delete(answer["id"])       # keep the store small; a create is not what is under test
        if case.method == "POST" and case.path == EXEC + "/trigger":
            assert answer["scriptPath"] in world.registered, answer
    else:
        after = world.snapshot()
        if after != before:
            STATS["changed"] += 1
        changed = [name for name in after["files"] if after["files"][name] != before["files"][name]]
        assert after == before, (f"{case.method} {case.target!r} {case.body[:200]!r} was rejected with "
                                 f"{response.status_int} but changed {changed or 'what the services list'}")
    return response


###############################################################################
# Strategies ###################################################################
###############################################################################

# Every kind of text: NUL and other controls, lone surrogates, astral characters, right-to-left marks.
any_char = st.characters(codec=None, categories=None)
texts = st.one_of(st.text(any_char, max_size=40), st.text(max_size=12),
                  st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "\udfff", "\U0001f600", "\u202e", "é", "ß",
                                   "\r\n", "null", "true", "0", "-1", "1e309", "NaN", "Infinity", "{}", "[]",
                                   "America", "Europe/", "zone.tab", "../../etc/passwd", "Etc/../UTC"]))
huge_strings = st.builds(lambda piece, n: piece * n, st.sampled_from(["a", "é", "\x00", "*", "\U0001f600", "0 ", "/"]),
                         st.integers(1_000, 200_000))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-10**40, 10**40),
                         st.floats(allow_nan=False, allow_infinity=False), texts)
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)), max_leaves=16)

KINDS = {
    "null": st.none(), "bool": st.booleans(), "int": st.integers(-10**6, 10**6) | st.sampled_from([0, -1, 10**30]),
    "float": st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, -0.0, 1e308, 0.5]),
    "str": texts, "list": st.lists(json_scalars, max_size=3),
    "object": st.dictionaries(texts, json_scalars, max_size=3),
}


def of_kinds_other_than(*accepted: str) -> st.SearchStrategy:
    # JSON does not tell 6.0 from 6: where a whole number is accepted, a whole float is that number, not a wrong type.
    def kind_of(kind: str) -> st.SearchStrategy:
        if kind == "float" and "int" in accepted:
            return KINDS[kind].filter(lambda v: not v.is_integer())
        return KINDS[kind]
    return st.sampled_from([k for k in KINDS if k not in accepted]).flatmap(kind_of)


def base_operating() -> dict:
    """The operating fields, each set (valid)."""
    return {"retry": {"count": 2, "min_backoff_seconds": 1, "max_backoff_seconds": 60, "max_doublings": 3},
            "success": {"status": ["2xx", 304], "body_contains": "ok"}, "overlap": "allow", "jitter_seconds": 5,
            "notify": {"url": "http://127.0.0.1:9/notify", "on": ["failure", "recovery"], "after": 2}}


def base_create() -> dict:
    return {"cron": "0 0 9 * * MON-FRI", "name": "report", "enabled": True, "timezone": "UTC",
            "request": {"url": "http://127.0.0.1:9/report", "method": "POST", "headers": {"X-A": "1"},
                        "json": {"a": [1, 2]}, "timeout": 10, "follow_redirects": False}, **base_operating()}


def base_edit() -> dict:
    """An edit naming every field it may change."""
    return {**base_create(), "name": "edited", "cron": "0 30 9 * * MON-FRI", "timezone": "Europe/Berlin"}


EDIT = ("PATCH", CURL + "/<schedule_id>")
BASE_BODIES = {
    ("POST", CURL): base_create,
    EDIT: base_edit,
    ("PATCH", CURL + "/<schedule_id>/toggle"): lambda: {"enabled": False},
    ("POST", EXEC + "/reload"): lambda: {"dry_run": True},
    ("POST", EXEC + "/trigger"): lambda: {"scriptPath": "cron/hourly.sh", "force": False},
}
# (route, field path, the JSON kinds the field accepts). request.json takes any JSON value, so it has no wrong type.
FIELDS = [
    (("POST", CURL), ("cron",), {"str"}),
    (("POST", CURL), ("request",), {"object"}),
    (("POST", CURL), ("name",), {"str", "null"}),
    (("POST", CURL), ("enabled",), {"bool"}),
    (("POST", CURL), ("timezone",), {"str", "null"}),
    (("POST", CURL), ("request", "url"), {"str"}),
    (("POST", CURL), ("request", "method"), {"str"}),
    (("POST", CURL), ("request", "headers"), {"object", "null"}),
    (("POST", CURL), ("request", "body"), {"str"}),
    (("POST", CURL), ("request", "timeout"), {"int", "float"}),
    (("POST", CURL), ("request", "follow_redirects"), {"bool"}),
    *[(route, path, kinds) for route in (("POST", CURL), EDIT) for path, kinds in [
        (("retry",), {"object", "null"}), (("retry", "count"), {"int"}),
        (("retry", "min_backoff_seconds"), {"int", "float"}), (("retry", "max_backoff_seconds"), {"int", "float"}),
        (("retry", "max_doublings"), {"int"}), (("success",), {"object", "null"}), (("success", "status"), {"list"}),
        (("success", "body_contains"), {"str"}), (("overlap",), {"str"}), (("jitter_seconds",), {"int", "float"}),
        (("notify",), {"object", "null"}), (("notify", "url"), {"str"}), (("notify", "on"), {"list"}),
        (("notify", "after"), {"int"})]],
    (EDIT, ("cron",), {"str"}),
    (EDIT, ("request",), {"object"}),
    (EDIT, ("name",), {"str", "null"}),
    (EDIT, ("enabled",), {"bool"}),
    (EDIT, ("timezone",), {"str", "null"}),
    (EDIT, ("request", "url"), {"str"}),
    (EDIT, ("request", "timeout"), {"int", "float"}),
    (("PATCH", CURL + "/<schedule_id>/toggle"), ("enabled",), {"bool"}),
    (("POST", EXEC + "/reload"), ("dry_run",), {"bool"}),
    (("POST", EXEC + "/trigger"), ("scriptPath",), {"str"}),
    (("POST", EXEC + "/trigger"), ("force",), {"bool"}),
]
STRING_FIELDS = [(route, path) for route, path, kinds in FIELDS if "str" in kinds] + [
    (("POST", CURL), ("request", "headers", "X-A")), (("POST", CURL), ("request", "json", "a"))]


def set_field(body: dict, path: tuple[str, ...], value) -> dict:
    target = body
    for key in path[:-1]:
        target = target[key]
    if path[-1] == "body":
        target.pop("json", None)        # body and json together are refused anyway; test the type alone
    target[path[-1]] = value
    return body


def encode_body(value, ascii_only: bool = True) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def existing_id(ids: Callable[[], list[str]]) -> st.SearchStrategy[str]:
    """One of the schedules that exist when the case is drawn. Drawn as an index, so that what Hypothesis draws
    does not depend on which ids exist (a replayed or shrunk case must draw the same way)."""
    return st.integers(0, 7).map(lambda n: (current := ids())[n % len(current)])


def wildcard_ids(known: Callable[[], list[str]]) -> st.SearchStrategy[str]:
    return st.one_of(existing_id(known), st.uuids().map(str), texts.filter(bool),
                     st.sampled_from(["..", "../..", ".", "%2e%2e", "a/b", "../../etc/passwd", "toggle", "\x00",
                                      "A1B2C3D4-E5F6-7890-ABCD-EF1234567890", "0" * 300]))


def concrete_path(draw, known_ids: Callable[[], list[str]], rule: str,
                  known_runs: Callable[[], list[str]] | None = None) -> str:
    """The rule with each wildcard replaced by a drawn id (one that exists, or not), percent-encoded; with a
    slash in it where the rule's filter wants one. A run id is now and then one of `known_runs`."""
    def fill(match: re.Match) -> str:
        if match.group(0) == "<run_id>" and known_runs is not None and known_runs() and draw(st.booleans()):
            ident = draw(existing_id(known_runs))
        else:
            ident = draw(wildcard_ids(known_ids))
        if "/" in match.group(0):           # a filter such as `re:.+/.+`
            ident = ident + "/" + draw(texts.filter(bool))
            return urllib.parse.quote(ident.encode("utf-8", "surrogatepass"), safe="/")
        return urllib.parse.quote(ident.encode("utf-8", "surrogatepass"), safe="")
    return re.sub(r"<[^>]+>", fill, rule)


def draw_route(draw, world: World, known_ids: Callable[[], list[str]] | None = None) -> tuple[str, str]:
    """(method, path) for any route of the app: mostly the route's own method, sometimes another one."""
    method, rule = draw(st.sampled_from(world.routes))
    if draw(st.integers(0, 5)) == 0:
        method = draw(st.sampled_from(METHODS))
    return method, concrete_path(draw, known_ids or world.ids, rule, world.known_run_ids)


QUERY_NAMES = ["page", "limit", "since", "includeRotated", "scriptPath", "dry_run", "force", "id", "status", "cursor",
               "wait", ""]
query_values = st.one_of(texts, huge_strings.map(lambda s: s[:5000]),
                         st.sampled_from(["0", "1", "-1", "1000", "1001", "999999999999", "9" * 40, "1.5", "0x10",
                                          " 1", "1 ", "true", "false", "TRUE", "yes", "2026-01-15T00:00:00Z",
                                          "2026-13-45T99:99:99Z", "../../etc/passwd", "/etc/passwd", "cron/hourly.sh",
                                          "escape.sh", "linkdir/evil.sh", "%", "%ff", "%zz", "&", "=", "ok",
                                          "error,timeout", "running", "ok,,", ",", "OK", "bogus", "eyJvZmZzZXQiOjB9",
                                          "eyJvZmZzZXQiOi0xfQ", "e30", "!!!", "=" * 8]))


@st.composite
def query_strings(draw) -> str:
    pairs = draw(st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_NAMES), texts), query_values), max_size=5))
    if pairs and draw(st.booleans()):
        pairs.append(pairs[0])          # a repeated parameter
    query = "&".join(f"{urllib.parse.quote(k.encode('utf-8', 'surrogatepass'), safe='')}="
                     f"{urllib.parse.quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in pairs)
    raw = draw(st.sampled_from(["", "", "&", "&&", "=", "page", "limit=%ff", "since=%zz", "scriptPath=%00",
                                "includeRotated=%", ";limit=1", "limit=1;limit=2"]))
    return "&".join(part for part in (query, raw) if part)


CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.x+json",
                 "text/plain", "text/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/xml", "application/jsonx", "json", "", ";", "application/json;;;", "*/*",
                 "application/json; charset=latin-1", "application/octet-stream", "text/html"]
content_types = st.one_of(st.sampled_from(CONTENT_TYPES), st.none(),
                          st.text(string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "")
                                  .replace("\x0c", ""), max_size=40))


def is_json_media_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media in ("", "application/json") or media.endswith("+json")


###############################################################################
# The properties ###############################################################
###############################################################################

def fuzz(examples: int) -> settings:
    """Bounded examples and no per-example deadline: the whole module stays within its time budget."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@fuzz(300)
@given(data=st.data())
def test_random_json_values_as_bodies_on_every_route_get_a_documented_answer(world, data):
    method, path = draw_route(data.draw, world)
    value = data.draw(st.one_of(json_values, st.builds(lambda extra: {**base_create(), **extra},
                                                       st.dictionaries(texts, json_values, max_size=3))))
    body = encode_body(value, ascii_only=data.draw(st.booleans()))

    send(world, Case(method, path, body=body))


@fuzz(250)
@given(data=st.data())
def test_a_wrong_type_for_any_known_field_is_a_400_and_changes_nothing(world, data):
    route, field, accepted = data.draw(st.sampled_from(FIELDS))
    value = data.draw(of_kinds_other_than(*accepted))
    body = set_field(BASE_BODIES[route](), field, value)
    path = route[1].replace("<schedule_id>", data.draw(existing_id(world.ids)))

    response = send(world, Case(route[0], path, body=encode_body(body)))

    assert response.status_int == 400, f"{'.'.join(field)} = {value!r}: {response.status_int} {response.body[:300]!r}"


@fuzz(120)
@given(data=st.data())
def test_missing_and_unknown_fields_are_a_400(world, data):
    route = data.draw(st.sampled_from(sorted(BASE_BODIES)))
    body = BASE_BODIES[route]()
    if data.draw(st.booleans()):
        body[data.draw(texts.filter(lambda key: key not in body))] = data.draw(json_values)
    elif route == ("POST", CURL):
        del body[data.draw(st.sampled_from(["cron", "request"]))]
    elif route == EDIT:
        body = {}                       # an edit must name at least one field
    else:
        assume(route == ("POST", EXEC + "/trigger"))
        del body["scriptPath"]
    path = route[1].replace("<schedule_id>", data.draw(existing_id(world.ids)))

    assert send(world, Case(route[0], path, body=encode_body(body))).status_int == 400


@fuzz(120)
@given(data=st.data())
def test_huge_strings_unicode_and_nul_in_any_string_field_get_a_documented_answer(world, data):
    route, field = data.draw(st.sampled_from(STRING_FIELDS))
    value = data.draw(st.one_of(huge_strings, texts))
    body = set_field(BASE_BODIES[route](), field, value)
    path = route[1].replace("<schedule_id>", data.draw(existing_id(world.ids)))

    send(world, Case(route[0], path, body=encode_body(body, ascii_only=data.draw(st.booleans()))))


HOSTILE_STRINGS = ["", " ", "\x00", "a\x00b", "\ud800", "\u202e\U0001f600", "é" * 1000, "a" * 300, "a" * 200_000,
                   "America", "Europe/", "zone.tab", "../../etc/passwd", "/etc/passwd", "Etc/../UTC", "%00", "\r\nX: y"]


@pytest.mark.parametrize("value", HOSTILE_STRINGS, ids=[ascii(v)[:24] for v in HOSTILE_STRINGS])
@pytest.mark.parametrize("route, field", STRING_FIELDS, ids=[f"{r[1].rsplit('/', 1)[-1]}:{'.'.join(f)}"
                                                             for r, f in STRING_FIELDS])
def test_each_hostile_string_in_each_string_field_gets_a_documented_answer(world, route, field, value):
    body = set_field(BASE_BODIES[route](), field, value)
    path = route[1].replace("<schedule_id>", world.ids()[0])

    send(world, Case(route[0], path, body=encode_body(body)))


def nested(depth: int, kind: str) -> str:
    return {"list": "[" * depth + "]" * depth, "object": '{"a":' * depth + "null" + "}" * depth}[kind]


@fuzz(60)
@given(data=st.data())
def test_deep_nesting_as_the_body_or_inside_request_json_gets_a_documented_answer(world, data):
    depth = data.draw(st.sampled_from([2, 63, 64, 65, 100, 1_000, 10_000, 100_000, 300_000]))
    kind = data.draw(st.sampled_from(["list", "object"]))
    if data.draw(st.booleans()):
        method, path = draw_route(data.draw, world)
        body = nested(depth, kind)
    else:
        method, path = "POST", CURL
        body = '{"cron": "0 * * * * *", "request": {"url": "http://127.0.0.1:9/x", "json": %s}}' % nested(depth, kind)

    response = send(world, Case(method, path, body=body.encode()))

    if (method, path) == ("POST", CURL) and depth > schedserver.MAX_JSON_DEPTH:
        assert response.status_int in (400, 413), response.body[:300]


@fuzz(150)
@given(data=st.data())
def test_invalid_cron_expressions_are_refused_on_create_with_the_six_field_format(world, data):
    cron = data.draw(st.one_of(
        st.sampled_from(["", " ", "* * * *", "* * * * * * *", "60 * * * * *", "* 60 * * * *", "* * 24 * * *",
                         "* * * 0 * *", "* * * 32 * *", "* * * * 13 *", "* * * * * 8", "*/0 * * * * *",
                         "*/61 * * * * *", "5-1 * * * * *", "L * * * * *", "0 0 0 30 2 *", "@reboot", "@every 5m",
                         "\x00 * * * * *", "* * * * * MON-", "0 0 9 * * MON-FRI extra", "٣ * * * * *"]),
        st.lists(st.sampled_from(list("0123456789*/,-?@ LW#") + ["MON", "JAN", "60", "\x00", "é"]),
                 max_size=20).map("".join),
        texts, huge_strings.map(lambda s: s[:50_000])))
    try:
        schedserver.parse_cron(cron)
        assume(False)       # a valid expression by chance
    except schedserver.InvalidCron:
        pass
    body = base_create()
    body["cron"] = cron

    response = send(world, Case("POST", CURL, body=encode_body(body)))

    assert response.status_int == 400, response.body[:300]
    answer = json.loads(response.body)
    assert answer["error"] == "INVALID_CRON_EXPRESSION" and FORMAT_HINT in answer["message"], answer


###############################################################################
# The operating fields, run now and run history (issue 16) #####################
###############################################################################

# Values for each operating field, by what docs/api.md says of them: "valid" (accepted), "invalid" (refused: 400
# INVALID_PARAMETER) and "either" (the docs do not say; any documented answer will do).
EVENTS = ["failure", "recovery", "success"]
HOOKS = ["http://127.0.0.1:9/hook", "https://127.0.0.1:9/hook?key=secret", "http://[::1]:9/alerts"]


def with_one(valid: st.SearchStrategy, replacements: list[tuple[str, object]]) -> st.SearchStrategy:
    """A valid object with one of its keys given a value the docs refuse."""
    return st.tuples(valid, st.sampled_from(replacements)).map(lambda t: {**t[0], t[1][0]: t[1][1]})


valid_retry = st.fixed_dictionaries({}, optional={
    "count": st.integers(0, 5),
    "min_backoff_seconds": st.one_of(st.integers(1, 30), st.floats(0.1, 30)),
    "max_backoff_seconds": st.one_of(st.integers(30, 86400), st.floats(30, 86400)),
    "max_doublings": st.integers(0, 16)})
valid_success = st.fixed_dictionaries(
    {"status": st.lists(st.one_of(st.integers(100, 599), st.sampled_from(["1xx", "2xx", "3xx", "4xx", "5xx"])),
                        min_size=1, max_size=8)},
    optional={"body_contains": st.text(string.ascii_letters + string.digits + " -_.:", min_size=1, max_size=60)})
valid_notify = st.fixed_dictionaries({"url": st.sampled_from(HOOKS)}, optional={
    "on": st.lists(st.sampled_from(EVENTS), min_size=1, max_size=3, unique=True), "after": st.integers(1, 1000)})
NOT_OBJECTS = [[], [1], "x", 3, 2.5, True, False]

OPERATING_VALUES = {
    "retry": {
        "valid": st.one_of(st.none(), valid_retry),
        "invalid": st.one_of(st.sampled_from(NOT_OBJECTS), with_one(valid_retry, [
            *[("count", v) for v in (-1, 6, 100, 10**30, 2.5, True, "3", [1])],
            *[("min_backoff_seconds", v) for v in (0, 0.05, -1, 3601, 1e308, "5", True, {})],
            *[("max_backoff_seconds", v) for v in (0, 0.09, -5, 86401, "300", False, [])],
            *[("max_doublings", v) for v in (-1, 17, 1.5, True, "5")],
            ("every", 5), ("", 1), ("Count", 1)])),
        "either": st.one_of(with_one(valid_retry, [("count", None), ("min_backoff_seconds", None),
                                                   ("max_doublings", None), ("count", 3.0)]),
                            st.just({"min_backoff_seconds": 100, "max_backoff_seconds": 50}), st.just({})),
    },
    "success": {
        "valid": st.one_of(st.none(), valid_success),
        "invalid": st.one_of(st.sampled_from(NOT_OBJECTS + ["2xx", 200]), with_one(valid_success, [
            *[("status", v) for v in ([], "2xx", 200, [99], [600], ["6xx"], ["0xx"], ["2x"], ["xx"], [True],
                                      [200.5], [None], [[200]], [{}], {"2xx": True})],
            *[("body_contains", v) for v in (5, [], True, {"a": 1})],
            ("codes", [200]), ("Status", ["2xx"])])),
        "either": st.one_of(with_one(valid_success, [("status", ["2XX"]), ("status", [200.0]), ("status", ["200"]),
                                                     ("body_contains", ""),
                                                     ("body_contains", "x" * 5000), ("status", [200] * 150),
                                                     ("body_contains", None), ("status", None)]),
                            st.just({})),
    },
    "overlap": {
        "valid": st.sampled_from(["forbid", "allow", "replace"]),
        "invalid": st.sampled_from(["FORBID", "Allow", "", " forbid", "skip", "queue", "replace ", 1, True, [], {},
                                    ["forbid"]]),
        "either": st.none(),
    },
    "jitter_seconds": {
        "valid": st.one_of(st.integers(0, 3600), st.floats(0, 3600)),
        "invalid": st.sampled_from([-1, -0.5, 3600.5, 3601, 10**9, 1e308, "5", True, False, [], {}, [5]]),
        "either": st.none(),
    },
    "notify": {
        "valid": st.one_of(st.none(), valid_notify),
        "invalid": st.one_of(st.sampled_from(NOT_OBJECTS + ["http://127.0.0.1:9/hook"]), st.just({}), with_one(
            valid_notify, [
                *[("url", v) for v in ("", " ", "ftp://127.0.0.1/x", "not a url", "http://", "//127.0.0.1/x", 5, None,
                                       ["http://127.0.0.1:9/hook"], "http://127.0.0.1:99999/x", "http://a b/")],
                *[("on", v) for v in ([], ["never"], "failure", [1], [None], ["failure", "sometimes"], {})],
                *[("after", v) for v in (0, -1, 1.5, True, "2", [])],
                ("events", ["failure"]), ("URL", "http://127.0.0.1:9/hook")])),
        "either": with_one(valid_notify, [("on", ["failure", "failure"]), ("after", 1001), ("after", 10**6),
                                          ("on", None), ("after", None), ("after", 2.0)]),
    },
}
RETRY_DEFAULTS = {"count": 0, "min_backoff_seconds": 5, "max_backoff_seconds": 300, "max_doublings": 5}


@st.composite
def operating_value(draw, name: str) -> tuple[object, str]:
    verdict = draw(st.sampled_from(["valid", "valid", "invalid", "either"]))
    return draw(OPERATING_VALUES[name][verdict]), verdict


def assert_kept(name: str, given, shown) -> None:
    """An accepted operating field is shown as it was given, with the documented defaults filled in."""
    if name == "retry":
        assert shown == {**RETRY_DEFAULTS, **(given or {})}, (given, shown)
    elif name == "success":
        assert shown == (None if given is None else {**given, "status": [c.lower() if isinstance(c, str) else c
                                                                          for c in given["status"]]}), (given, shown)
    elif name == "notify":
        assert shown == (None if given is None else {"on": ["failure", "recovery"], "after": 1, **given}), \
            (given, shown)
    else:
        assert shown == given and type(shown) is type(given), (given, shown)


@fuzz(300)
@given(data=st.data())
def test_operating_fields_the_docs_refuse_are_a_400_on_create_and_edit_and_accepted_ones_are_kept(world, data):
    route = data.draw(st.sampled_from([("POST", CURL), EDIT]))
    names = data.draw(st.lists(st.sampled_from(sorted(OPERATING_VALUES)), min_size=1, max_size=5, unique=True))
    drawn = {name: data.draw(operating_value(name), label=name) for name in names}
    body = {k: v for k, v in base_create().items() if k not in OPERATING} if route == ("POST", CURL) else {}
    body.update({name: value for name, (value, _) in drawn.items()})
    sid = data.draw(existing_id(world.ids))
    path = route[1].replace("<schedule_id>", sid)

    response = send(world, Case(route[0], path, body=encode_body(body)))

    verdicts = {verdict for _, verdict in drawn.values()}
    event(f"{route[0]} {'/'.join(sorted(verdicts))} -> {response.status_int}")
    if "invalid" in verdicts:
        assert response.status_int == 400, f"{body!r}: {response.status_int} {response.body[:300]!r}"
        assert response.json["error"] == "INVALID_PARAMETER", response.json
    elif verdicts == {"valid"}:
        assert response.status_int == (201 if route[0] == "POST" else 200), \
            f"{body!r}: {response.status_int} {response.body[:300]!r}"
        for name, (value, _) in drawn.items():
            assert_kept(name, value, response.json[name])
        if route == EDIT:
            shown = world.curl.get(sid)
            assert {name: shown[name] for name in OPERATING} == {name: response.json[name] for name in OPERATING}


def run_queries(world: World) -> st.SearchStrategy[tuple[list[tuple[str, str]], set[str]]]:
    """Query parameters for GET .../runs: (pairs, the verdicts of their values)."""
    statuses = ["ok", "error", "timeout", "skipped", "missed", "interrupted", "running"]    # docs/api.md
    cursor_index = st.integers(0, 10**6).map(lambda n: world.cursors[n % len(world.cursors)])

    def mutated(cursor_and_change) -> str:
        cursor, (key, value) = cursor_and_change
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position[key] = value
        return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")

    def encoded(value) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()

    values = {
        "limit": {"valid": st.integers(1, 1000).map(str),
                  "invalid": st.sampled_from(["0", "-1", "1001", "10000000000000", "abc", "1.5", "", " ", "1e3",
                                              "0x10", "٣"])},
        "status": {"valid": st.lists(st.sampled_from(statuses), min_size=1, max_size=4, unique=True).map(",".join),
                   "invalid": st.sampled_from(["bogus", "OK", "ok,bogus", "", ",", "success", "ok;error", "ok error"])},
        "since": {"valid": st.sampled_from(["2026-01-15T00:00:00Z", "2026-01-15T11:59:30.250Z", "2026-01-15T11:59:31Z",
                                            "2000-01-01T00:00:00+02:00", "2030-01-01T00:00:00Z"]),
                  "invalid": st.sampled_from(["yesterday", "2026-13-45T99:99:99Z", "", "now", "2026-01-15T25:00:00Z",
                                              "1" * 70])},
        "cursor": {"valid": cursor_index,
                   "invalid": st.one_of(st.sampled_from(["!!!", "%%%", "", "a", "null", "e30"]),
                                        st.sampled_from([[1], "x", 5, None, {"offset": "x"}, {"offset": 1.5},
                                                         {"inode": 1}]).map(encoded)),
                   "either": st.one_of(
                       st.tuples(cursor_index, st.sampled_from([
                           ("offset", -1), ("offset", 0), ("offset", 10**12), ("offset", 1), ("offset", True),
                           ("inode", None), ("inode", "x"), ("head", ""), ("head", "zz"), ("head", "00" * 100),
                           ("extra", 1)])).map(mutated),
                       st.sampled_from([{"offset": 0}, {"offset": 10**20}, {"offset": -5, "head": "ab"}]).map(encoded),
                       texts.filter(bool))},
    }

    @st.composite
    def draw(draw_one):
        pairs, verdicts = [], set()
        for name in draw_one(st.lists(st.sampled_from(sorted(values)), max_size=4, unique=True)):
            kinds = sorted(values[name])
            verdict = draw_one(st.sampled_from(["valid"] * 2 + kinds))
            pairs.append((name, draw_one(values[name][verdict])))
            verdicts.add(verdict)
        if draw_one(st.integers(0, 9)) == 0:
            pairs.append((draw_one(st.sampled_from(["page", "wait", "Limit", "offset", "id"])), "1"))
            verdicts.add("invalid")     # an unknown parameter
        if pairs and draw_one(st.integers(0, 9)) == 0:
            pairs.append(pairs[0])      # a repeated parameter (status may be repeated; the others the docs omit)
            verdicts.add("either")
        return pairs, verdicts

    return draw()


@fuzz(300)
@given(data=st.data())
def test_run_history_with_any_limit_status_since_and_cursor_is_a_page_or_a_400(world, data):
    sid = data.draw(st.one_of(st.just(world.history_id()), existing_id(world.ids)))
    pairs, verdicts = data.draw(run_queries(world))
    query = "&".join(f"{urllib.parse.quote(k)}={urllib.parse.quote(v.encode('utf-8', 'surrogatepass'), safe='')}"
                     for k, v in pairs)

    response = send(world, Case("GET", f"{CURL}/{sid}/runs", query=query, body=b"", content_type=None))

    event(f"{'/'.join(sorted(verdicts)) or 'no query'} -> {response.status_int}")
    if "invalid" in verdicts:
        assert response.status_int == 400, f"{query!r}: {response.status_int} {response.body[:300]!r}"
        assert response.json["error"] == "INVALID_PARAMETER", response.json
    elif verdicts <= {"valid"}:
        assert response.status_int == 200, f"{query!r}: {response.status_int} {response.body[:300]!r}"
        given = dict(pairs)
        page = response.json
        assert len(page["items"]) <= int(given.get("limit", 50)), (query, len(page["items"]))
        assert page["next_cursor"] is None or isinstance(page["next_cursor"], str), page
        for item in page["items"]:
            assert RUN <= set(item) and item["schedule_id"] == sid, item
            if "status" in given:
                assert item["status"] in given["status"].split(","), (query, item)
            if "since" in given and item["finished_at"] is not None:
                assert schedserver.parse_iso(item["finished_at"]) >= schedserver.parse_iso(given["since"]), (query, item)
        run_ids = [item["run_id"] for item in page["items"]]
        assert len(run_ids) == len(set(run_ids)), run_ids


def page_through(world: World, sid: str, limit: int, between: Callable[[], None] = lambda: None) -> tuple[list, int]:
    """Follow next_cursor from the first page to the last: (the finished runs seen, in order; pages)."""
    seen, cursor, pages = [], None, 0
    while True:
        query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = send(world, Case("GET", f"{CURL}/{sid}/runs", query=query, body=b"", content_type=None))
        assert response.status_int == 200, response.body[:300]
        seen += [item["run_id"] for item in response.json["items"] if item["status"] != "running"]
        cursor, pages = response.json["next_cursor"], pages + 1
        if cursor is None:
            return seen, pages
        assert pages <= 10 * HISTORY_RUNS, "next_cursor never ends"
        between()


def logged_runs(world: World, sid: str) -> list[str]:
    """The run ids of a schedule in the runs log, newest first (what paging must give)."""
    return [record["run_id"] for record, _ in world.stack.server.logs["http"].read_newest()
            if record.get("schedule_id") == sid]


@pytest.mark.parametrize("limit", [1, 7, 50, 1000])
def test_following_next_cursor_pages_through_every_run_in_the_log_once_newest_first_with_a_run_in_flight(world,
                                                                                                         limit):
    sid = world.history_id()
    started = send(world, Case("POST", f"{CURL}/{sid}/run", query="wait=false", body=b"", content_type=None))
    assert started.status_int in (202, 409), started.body[:300]       # 409: one is in flight already

    seen, pages = page_through(world, sid, limit)

    assert len(seen) == len(set(seen)), "a run was on two pages"
    in_log = logged_runs(world, sid)
    assert len(in_log) >= HISTORY_RUNS
    assert seen == in_log, (f"limit={limit}: {len(seen)} runs paged through in {pages} pages, {len(in_log)} in the "
                            f"log; first missing: {[r for r in in_log if r not in set(seen)][:3]}")


@pytest.mark.parametrize("limit", [1, 7, 50])
def test_following_next_cursor_while_runs_are_added_gives_every_earlier_run_once_and_no_gap(world, limit):
    sid = world.curl.create({"cron": "0 0 0 1 1 *", "request": {"url": "http://127.0.0.1:9/paged"},
                             "overlap": "allow", "name": "paged"})["id"]
    try:
        for _ in range(60):
            world.curl.run_now(sid)
        before = logged_runs(world, sid)

        seen, pages = page_through(world, sid, limit, between=lambda: world.curl.run_now(sid))

        added = [run_id for run_id in logged_runs(world, sid) if run_id not in set(before)]
        assert len(added) == pages - 1
        assert len(seen) == len(set(seen)), "a run was on two pages"
        assert [run_id for run_id in seen if run_id not in set(added)] == before, \
            f"limit={limit}: the runs there at the first page, paged through: {len(seen)} of {len(before)}"
    finally:
        world.curl.delete(sid)


@fuzz(120)
@given(data=st.data())
def test_run_now_with_any_wait_value_answers_the_run_its_run_id_or_a_documented_error(world, data):
    ids = world.ids()
    sid = data.draw(st.one_of(existing_id(lambda: ids), existing_id(lambda: ids), st.uuids().map(str),
                              st.sampled_from(["x", "0" * 300])))
    wait = data.draw(st.one_of(st.none(), st.sampled_from(["true", "false"]),
                               st.sampled_from(["1", "0", "TRUE", " false", "no", "", "maybe", "falsey", "2"]), texts))
    query = "" if wait is None else "wait=" + urllib.parse.quote(wait.encode("utf-8", "surrogatepass"), safe="")
    body = data.draw(st.sampled_from([b""] * 6 + [b"{}", b'{"wait": false}', b"null"]))
    exists = sid in ids

    response = send(world, Case("POST", f"{CURL}/{urllib.parse.quote(sid, safe='')}/run", query=query, body=body))

    status = response.status_int
    event(f"{'existing' if exists else 'unknown'} schedule -> {status}")
    if not exists:
        assert status == 404 and response.json["error"] == "SCHEDULE_NOT_FOUND", response.body[:300]
    elif body.strip() not in (b"", b"null"):
        pass                            # the docs do not say what a body does here: any documented answer
    elif wait is not None and wait.strip().lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off", ""):
        assert status == 400 and response.json["error"] == "INVALID_PARAMETER", \
            f"wait={wait!r}: {status} {response.body[:300]!r}"
    elif wait in (None, "true", "false"):
        documented = {409} | ({202} if wait == "false" else {200})
        assert status in documented, f"wait={wait!r}: {status} {response.body[:300]!r}"
        if status == 409:
            assert response.json["error"] == "RUN_IN_PROGRESS", response.json
        elif status == 202:
            shown = send(world, Case("GET", f"{CURL}/{sid}/runs/{response.json['run_id']}", body=b"",
                                     content_type=None))
            assert shown.status_int == 200 and shown.json["run_id"] == response.json["run_id"], shown.body[:300]
            world.run_ids.append(response.json["run_id"])
        else:
            assert response.json["schedule_id"] == sid and response.json["trigger"] == "manual", response.json
            assert response.json["attempt"] == 1 and response.json["finished_at"], response.json
            world.run_ids.append(response.json["run_id"])


def escapes(script_path: str, scripts_dir: Path) -> bool:
    """Whether a scriptPath names something outside the scripts dir, by its text alone (as the API reads it)."""
    text = script_path.strip()
    if not text or "\x00" in text:
        return True
    full = os.path.normpath(os.path.join(str(scripts_dir), text))
    return full == str(scripts_dir) or os.path.commonpath([str(scripts_dir), full]) != str(scripts_dir)


def listed_script_paths(world: World) -> list[str]:
    """Paths that try to leave the scripts dir (or look as if they might), and a few that are fine."""
    inside, outside = str(world.scripts_dir), str(world.outside)
    return ["../", "..", "../../etc/passwd", "/etc/passwd", "/", ".", "./", "./../x", "cron/../../outside/evil.sh",
             f"{outside}/evil.sh", "escape.sh", "linkdir/evil.sh", f"{inside}/linkdir/evil.sh", f"{inside}/escape.sh",
             f"{inside}/../outside/evil.sh", f"{inside}/cron/hourly.sh", f"{inside}/cron/../cron/hourly.sh",
             "cron/./../../../../etc/passwd", "..\\..\\etc\\passwd", "%2e%2e/%2e%2e/etc/passwd",
             "....//....//etc/passwd",
             "cron/hourly.sh/..", "cron//hourly.sh", "cron/hourly.sh\x00.txt", "~/.ssh/id_rsa", "//etc/passwd",
             f"{inside}", f"{inside}/", f"{inside}x/evil.sh", "cron/hourly.sh", " cron/hourly.sh ", "locked.sh",
             "broken.sh", "/proc/self/environ", "\u2025/etc/passwd", "cron/../locked.sh"]


def traversal_paths(world: World) -> st.SearchStrategy[str]:
    fixed = listed_script_paths(world)
    segments = st.sampled_from(["..", ".", "", "cron", "hourly.sh", "escape.sh", "linkdir", "evil.sh", "etc",
                                "passwd", "outside", "scripts", "\x00", "é"])
    built = st.lists(segments | texts, min_size=1, max_size=6).map("/".join)
    return st.one_of(st.sampled_from(fixed), built, built.map(lambda p: "/" + p), texts)


@fuzz(200)
@given(data=st.data())
def test_script_paths_that_leave_the_scripts_dir_are_refused_and_never_run(world, data):
    script_path = data.draw(traversal_paths(world))
    if data.draw(st.booleans()):
        case = Case("POST", EXEC + "/trigger",
                    body=encode_body({"scriptPath": script_path, "force": data.draw(st.booleans())}))
    else:
        query = urllib.parse.urlencode({"scriptPath": script_path.encode("utf-8", "surrogatepass")})
        case = Case("GET", EXEC + "/history", query=query)

    response = send(world, case)

    if escapes(script_path, world.scripts_dir):
        assert response.status_int == 400, f"{script_path!r}: {response.status_int} {response.body[:300]!r}"
    if case.path.endswith("/trigger") and response.status_int == 200:
        assert response.json["scriptPath"] in world.registered      # never escape.sh or linkdir/evil.sh
    assert not world.marker.exists()


@pytest.mark.parametrize("how", ["trigger", "trigger with force", "history"])
def test_each_listed_script_path_is_refused_when_it_leaves_the_scripts_dir_and_never_runs_a_script_outside(world, how):
    for script_path in listed_script_paths(world):
        if how == "history":
            case = Case("GET", EXEC + "/history", query=urllib.parse.urlencode({"scriptPath": script_path}))
        else:
            case = Case("POST", EXEC + "/trigger",
                        body=encode_body({"scriptPath": script_path, "force": how == "trigger with force"}))

        response = send(world, case)

        if escapes(script_path, world.scripts_dir):
            assert response.status_int == 400, f"{script_path!r}: {response.status_int} {response.body[:300]!r}"
        elif script_path.strip() in ("escape.sh", "linkdir/evil.sh") or script_path.endswith("/evil.sh"):
            assert response.status_int in (200, 404) and (how == "history" or response.status_int == 404), \
                f"{script_path!r} points outside through a symlink: {response.status_int} {response.body[:300]!r}"
        assert not world.marker.exists()


@fuzz(200)
@given(data=st.data())
def test_bad_query_strings_on_every_route_get_a_documented_answer(world, data):
    method, path = draw_route(data.draw, world)

    send(world, Case(method, path, query=data.draw(query_strings())))


@fuzz(150)
@given(data=st.data())
def test_a_body_sent_with_a_content_type_that_is_not_json_is_a_400(world, data):
    route = data.draw(st.sampled_from(sorted(BASE_BODIES)))
    content_type = data.draw(content_types)
    path = route[1].replace("<schedule_id>", data.draw(existing_id(world.ids)))

    response = send(world, Case(route[0], path, body=encode_body(BASE_BODIES[route]()), content_type=content_type))

    if not is_json_media_type(content_type):
        assert response.status_int == 400, f"{content_type!r}: {response.status_int} {response.body[:300]!r}"


@fuzz(150)
@given(data=st.data())
def test_a_truncated_body_is_a_400_and_changes_nothing(world, data):
    route = data.draw(st.sampled_from(sorted(BASE_BODIES)))
    whole = encode_body(BASE_BODIES[route](), ascii_only=False)
    cut = whole[:data.draw(st.integers(0, len(whole) - 1))]
    path = route[1].replace("<schedule_id>", data.draw(existing_id(world.ids)))

    response = send(world, Case(route[0], path, body=cut))

    if cut.strip():
        assert response.status_int == 400, f"{cut!r}: {response.status_int} {response.body[:300]!r}"


@fuzz(80)
@given(data=st.data())
def test_bytes_that_are_not_json_or_not_utf8_get_a_documented_answer(world, data):
    method, path = draw_route(data.draw, world)
    body = data.draw(st.one_of(st.binary(max_size=200), st.sampled_from([
        b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b'{"cron": "\xff"}', b"{'cron': 1}", b"NaN", b"[Infinity]",
        b'{"a": -Infinity}', b"1" * 5000, b'{"enabled": tru}', b"\x00", b'{"scriptPath": "cron/hourly.sh"}\x00',
        b'{"dry_run": true}{"dry_run": false}', b'{"dry_run": true, "dry_run": "x"}'])))

    send(world, Case(method, path, body=body, content_type=data.draw(st.sampled_from([None, "application/json"]))))


@pytest.mark.parametrize("route", sorted(BASE_BODIES), ids=lambda route: f"{route[0]} {route[1]}")
def test_a_body_over_a_mebibyte_is_a_413_on_every_route_that_reads_one(world, route):
    path = route[1].replace("<schedule_id>", world.ids()[0])
    body = b'{"name": "' + b"x" * schedserver.MAX_BODY_BYTES + b'"}'

    response = send(world, Case(route[0], path, body=body))

    assert response.status_int == 413, response.body[:300]


###############################################################################
# The real server, over raw sockets ############################################
###############################################################################

@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-real")
    scripts, _, marker = build_scripts_tree(root)
    # Loopback only, so that a schedule a fuzz case happens to create can never reach past this machine.
    with ServerProcess(root / "data", scripts, env={"SCHEDSERVER_CURL_ALLOW_NETWORKS": "127.0.0.1/32"}) as server:
        server.marker = marker
        server.data = root / "data"
        refresh_ids(server)
        yield server


def raw_request(server: ServerProcess, head: bytes, body: bytes = b"", timeout: float = 10.0,
                shut_write: bool = False, no_body: bool = False) -> tuple[int, str, bytes] | None:
    """Send bytes and read one answer (up to its Content-Length, or to EOF); (status, content type, body), or
    None if the server closed (or reset) the connection without answering."""
    host, port = server.url.rsplit("//", 1)[1].rsplit(":", 1)
    answer = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(head + body)
            if shut_write:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass            # it stopped reading (an oversized head, say): whatever it answered is still readable
        try:
            while True:
                head_end = answer.find(b"\r\n\r\n")
                if head_end >= 0:
                    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", answer[:head_end])
                    if no_body or (length and len(answer) >= head_end + 4 + int(length.group(1))):
                        break
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    if not answer:
        return None
    head_part, _, payload = answer.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return status, headers.get("content-type", "").split(";")[0].strip(), payload


def http_head(case: Case) -> bytes:
    lines = [f"{case.method} {case.target} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {DEFAULT_TOKEN}",
             "Connection: close", f"Content-Length: {len(case.body)}"]
    if case.content_type is not None:
        lines.append(f"Content-Type: {case.content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@st.composite
def real_cases(draw, world: World, known_ids: Callable[[], list[str]]) -> Case:
    """One case of any of the kinds above: the real server gets a sample of everything."""
    kind = draw(st.sampled_from(["json", "field", "query", "content-type", "truncated", "traversal", "nesting",
                                 "huge", "bytes"]))
    method, path = draw_route(draw, world, known_ids)
    if kind in ("field", "content-type", "truncated", "huge"):
        routes = sorted({r for r, _ in STRING_FIELDS} if kind == "huge" else BASE_BODIES)
        route = draw(st.sampled_from(routes))
        method, path = route[0], route[1].replace("<schedule_id>", draw(existing_id(known_ids)))
        body = BASE_BODIES[route]()
    if kind == "json":
        return Case(method, path, body=encode_body(draw(json_values), ascii_only=draw(st.booleans())))
    if kind == "field":
        candidates = [(f, kinds) for r, f, kinds in FIELDS if r == route]
        field, accepted = draw(st.sampled_from(candidates))
        return Case(method, path, body=encode_body(set_field(body, field, draw(of_kinds_other_than(*accepted)))))
    if kind == "query":
        return Case(method, path, query=draw(query_strings()))
    if kind == "content-type":
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        return Case(method, path, body=encode_body(body), content_type=content_type)
    if kind == "truncated":
        whole = encode_body(body)
        return Case(method, path, body=whole[:draw(st.integers(0, len(whole) - 1))])
    if kind == "traversal":
        script_path = draw(traversal_paths(world))
        return Case("POST", EXEC + "/trigger", body=encode_body({"scriptPath": script_path}))
    if kind == "nesting":
        return Case(method, path, body=nested(draw(st.sampled_from([65, 1_000, 100_000])), "list").encode())
    if kind == "huge":
        strings = [f for r, f in STRING_FIELDS if r == route]
        return Case(method, path, body=encode_body(set_field(body, draw(st.sampled_from(strings)), draw(huge_strings))))
    return Case(method, path, body=draw(st.binary(max_size=200)))


def refresh_ids(server) -> None:
    """Make sure the real server holds an enabled and a disabled schedule, and note their ids."""
    items = server.api("GET").json()["items"]
    for enabled in (True, False)[len(items):]:
        created = server.api("POST", json={"cron": "0 0 0 1 1 *", "enabled": enabled,
                                           "request": {"url": "http://127.0.0.1:9/fixture"}})
        assert created.status_code == 201, created.text
    server.ids = [item["id"] for item in server.api("GET").json()["items"]]


def stored(server) -> tuple:
    """The definitions' files (snapshot and journal) and what the server lists. A case appends at most four
    journal lines (its success, the clean-up, two re-created fixtures), so the 200 cases stay below the real
    server's compaction threshold (1000 lines): the bytes change only with a definition."""
    listed = server.api("GET")
    assert listed.status_code == 200, listed.text
    return (store_files(server.data), [(item["id"], item["enabled"]) for item in listed.json()["items"]])


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_real_server_answers_random_bad_requests_with_json_and_keeps_running(world, real_server, data):
    case = data.draw(real_cases(world, lambda: real_server.ids))
    mutating = case.method not in ("GET", "HEAD", "OPTIONS")
    before = stored(real_server) if mutating else None

    answer = raw_request(real_server, http_head(case), case.body, no_body=case.method == "HEAD")

    assert answer is not None, f"{case.method} {case.target!r}: no answer"
    status, content_type, body = answer
    parsed = check_answer(world.bottle_app, case, status, content_type, body)
    assert real_server.returncode is None, real_server.stderr_text()[-3000:]
    assert not real_server.marker.exists()
    if 200 <= status < 300 and case.method == "POST" and case.path == EXEC + "/trigger":
        assert parsed["scriptPath"] in ("cron/hourly.sh", "locked.sh"), parsed
    if 200 <= status < 300 and case.method == "POST" and case.path == CURL:
        real_server.api("DELETE", f"{CURL}/{parsed['id']}")
    if 200 <= status < 300 and mutating:
        refresh_ids(real_server)
    elif mutating and not 200 <= status < 300:
        after = stored(real_server)
        if after != before:
            STATS["changed"] += 1
        assert after == before, f"{case.method} {case.target!r} {case.body[:200]!r} was rejected but changed the store"


PROTOCOL_GARBAGE = [
    # (name, raw head, body, whether the server may close without an answer: it cannot answer a request it has
    # not got whole, and an oversized head may be cut off by a reset before its answer can be read)
    ("bad content length", b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"{}", False),
    ("negative content length", b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"{}", False),
    ("two content lengths", b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n", b"{}",
     False),
    ("body shorter than its length", b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n", b'{"dry_', True),
    ("garbage request line", b"\x00\xff GARBAGE\r\n\r\n", b"", False),
    ("unknown protocol version", b"GET %s HTTP/9.9\r\nHost: x\r\n\r\n", b"", False),
    ("header without a colon", b"GET %s HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", b"", False),
    ("non-latin-1 header bytes", b"GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n", b"", False),
    ("huge header", b"GET %s HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", b"", True),
    ("space in the target", b"GET %s/a b HTTP/1.1\r\nHost: x\r\n\r\n", b"", False),
    ("bad chunked body", b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"zz\r\n{}\r\n0\r\n\r\n",
     False),
    ("truncated chunked body", b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"10\r\n{}", True),
]


@pytest.mark.parametrize("path", [CURL, EXEC + "/reload", EXEC + "/trigger"])
@pytest.mark.parametrize("name, head, body, may_close", PROTOCOL_GARBAGE, ids=[g[0] for g in PROTOCOL_GARBAGE])
def test_protocol_garbage_gets_a_4xx_json_answer_or_none_and_the_real_server_keeps_running(
        world, real_server, path, name, head, body, may_close):
    before = stored(real_server)

    answer = raw_request(real_server, head.replace(b"%s", path.encode()), body, shut_write=may_close)

    if answer is None:
        assert may_close, f"{name}: the server closed without answering"
    else:
        status, content_type, payload = answer
        STATS["cases"] += 1
        if status >= 500:
            STATS["5xx"] += 1
        assert 400 <= status < 500, f"{name}: {status} {payload[:300]!r}"
        assert content_type == "application/json", f"{name}: {content_type!r} {payload[:300]!r}"
        parsed = json.loads(payload)
        if path.startswith(EXEC) and b"GARBAGE" not in head:
            assert set(parsed) == {"error", "code", "message", "timestamp"}, parsed
        else:
            assert {"error", "message"} <= set(parsed), parsed
    assert real_server.returncode is None
    assert stored(real_server) == before


def test_the_real_server_logged_no_traceback_and_is_still_healthy(real_server):
    assert real_server.returncode is None
    health = real_server.api("GET", "/healthz", token=None)
    assert health.status_code == 200, health.text
    log = real_server.stderr_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


###############################################################################
# The figure ###################################################################
###############################################################################

def test_the_fuzz_figure_adds_up_every_case_tried(figure):
    """Last in the file: the tests above ran first and counted what they sent."""
    assert STATS["cases"] > 0, "run the whole module: the other tests count the cases"
    figure(f"reliability: fuzz {STATS['cases']} cases, {STATS['5xx']} 5xx, "
           f"{STATS['changed']} changes from rejected requests")
    assert STATS["5xx"] == 0 and STATS["changed"] == 0
