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
"""

from __future__ import annotations

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
from hypothesis import HealthCheck, assume, given, settings
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

# What each route answers on success: (status, keys every such answer carries). From /work/shared/api/*.md and
# the README's route table. A route missing here has no documented success, so any 2xx from it fails the test.
SUCCESS = {
    ("GET", CURL): (200, {"items", "meta"}),
    ("POST", CURL): (201, {"id", "cron", "enabled", "created_at", "request"}),
    ("GET", CURL + "/<schedule_id>"): (200, {"id", "cron", "enabled", "created_at", "last_run", "name", "next_run",
                                            "request"}),
    ("PATCH", CURL + "/<schedule_id>/toggle"): (200, {"id", "enabled"}),
    ("DELETE", CURL + "/<schedule_id>"): (200, {"id"}),
    ("GET", EXEC + "/list"): (200, {"total", "schedules"}),
    ("GET", EXEC + "/history"): (200, {"total", "limit", "includeRotated", "entries"}),
    ("POST", EXEC + "/reload"): (200, {"dry_run", "added", "kept", "removed", "failed"}),
    ("POST", EXEC + "/trigger"): (200, {"triggered", "scriptPath", "runId", "status", "durationMs"}),
    ("GET", "/healthz"): (200, {"status", "version"}),
}
# The script surface's contract: the title and code of each documented error status.
EXEC_CONTRACT = {400: ("Invalid parameter format", "VALIDATION_ERROR"), 403: ("Access denied", "FORBIDDEN"),
                 404: ("Resource not found", "NOT_FOUND")}
# The HTTP schedule surface's codes per status (contract and README).
CURL_CODES = {400: {"INVALID_PARAMETER", "INVALID_CRON_EXPRESSION"}, 401: {"UNAUTHORIZED"}, 403: {"FORBIDDEN"},
              404: {"SCHEDULE_NOT_FOUND", "NOT_FOUND"}, 405: {"METHOD_NOT_ALLOWED"}, 413: {"PAYLOAD_TOO_LARGE"},
              431: {"HEADERS_TOO_LARGE"}}

HOURLY = "#!/bin/sh\n# @schedule 0 * * * *\necho hourly\n"
LOCKED = "#!/bin/sh\n# @schedule 0 0 * * *\n# @token\necho locked\n"
BROKEN = "#!/bin/sh\n# @schedule every blue moon\necho broken\n"
EVIL = "#!/bin/sh\n# @schedule * * * * *\ntouch {marker}\necho escaped\n"

STATS = {"cases": 0, "5xx": 0, "changed": 0}


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

    def close(self) -> None:
        self.stack.close()

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
                     "exec-registered.json", "run-state.json"):
            path = self.data / name
            files[name] = path.read_bytes() if path.exists() else None
        files["running/"] = sorted(p.name for p in (self.data / "running").glob("*"))
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
        documented_status, keys = SUCCESS[key]
        assert status == documented_status, f"{where}: {status}, documented {documented_status}"
        assert isinstance(answer, dict) and keys <= set(answer), f"{where}: {answer!r} lacks {keys}"
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
    return st.sampled_from([k for k in KINDS if k not in accepted]).flatmap(lambda kind: KINDS[kind])


def base_create() -> dict:
    return {"cron": "0 0 9 * * MON-FRI", "name": "report", "enabled": True, "timezone": "UTC",
            "request": {"url": "http://127.0.0.1:9/report", "method": "POST", "headers": {"X-A": "1"},
                        "json": {"a": [1, 2]}, "timeout": 10, "follow_redirects": False}}


BASE_BODIES = {
    ("POST", CURL): base_create,
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


def concrete_path(draw, known_ids: Callable[[], list[str]], rule: str) -> str:
    """The rule with each wildcard replaced by a drawn id (one that exists, or not), percent-encoded; with a
    slash in it where the rule's filter wants one."""
    def fill(match: re.Match) -> str:
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
    return method, concrete_path(draw, known_ids or world.ids, rule)


QUERY_NAMES = ["page", "limit", "since", "includeRotated", "scriptPath", "dry_run", "force", "id", ""]
query_values = st.one_of(texts, huge_strings.map(lambda s: s[:5000]),
                         st.sampled_from(["0", "1", "-1", "1000", "1001", "999999999999", "9" * 40, "1.5", "0x10",
                                          " 1", "1 ", "true", "false", "TRUE", "yes", "2026-01-15T00:00:00Z",
                                          "2026-13-45T99:99:99Z", "../../etc/passwd", "/etc/passwd", "cron/hourly.sh",
                                          "escape.sh", "linkdir/evil.sh", "%", "%ff", "%zz", "&", "="]))


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
