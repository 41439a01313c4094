"""The OpenAPI document (GET /api/v1/openapi.json) describes the server: every route the router serves and
only those, the same routes as docs/api.md, valid OpenAPI 3.1, and schemathesis, run against a live server
over every operation with positive and negative data and all of its checks, finds nothing.

Until `openapi_document` is pasted into schedserver.py (the module's own is a placeholder without paths), the
document comes from the file named by $SCHEDSERVER_OPENAPI_DOC (default /work/wip/openapi/openapi_doc.py) and
the live server is started through a launcher that swaps it in; afterwards the server is plain
`python -m schedserver serve`.
"""

from __future__ import annotations

import base64
import datetime
import importlib.util
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import requests
import schemathesis
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis.engine import events, from_schema
from schemathesis.engine.statistic import Statistic

import schedserver
from e2e_helpers import DEFAULT_TOKEN, REPO_ROOT, ServerProcess
from harness import Stack

API_DOC = REPO_ROOT / "docs" / "api.md"
WIP_DOC = os.environ.get("SCHEDSERVER_OPENAPI_DOC", "/work/wip/openapi/openapi_doc.py")
PASTED = bool(schedserver.openapi_document().get("paths"))
MAX_EXAMPLES = 60           # per operation and phase with the admin token; a quarter with the read-only one
READ_TOKEN = "openapi-read-token-3e9d"
SEED = 20260115

LAUNCHER = textwrap.dedent("""\
    import importlib.util, os, sys
    import schedserver
    path = os.environ.get("SCHEDSERVER_OPENAPI_DOC")
    if path:        # until openapi_document is pasted into schedserver.py
        spec = importlib.util.spec_from_file_location("openapi_doc", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        schedserver.openapi_document = module.openapi_document
    sys.exit(schedserver.main(["serve", *sys.argv[1:]]))
""")

REGISTERED = {
    "hello.sh": "#!/bin/sh\n# @schedule 0 0 0 1 1 *\n# @description says hello\n"
                "echo hello\necho '{\"ok\": 1}'\n",
    "jobs/fails.py": "#!/usr/bin/env python3\n# @schedule @yearly\n# @token\nimport sys\n"
                     "print('about to fail', file=sys.stderr)\nsys.exit(3)\n",
}
SCRIPTS = {**REGISTERED, "broken.sh": "#!/bin/sh\n# @schedule every blue moon\necho never\n"}


def the_document() -> dict:
    """openapi_document(): schedserver's own once pasted, else the one of the work-in-progress file."""
    if PASTED:
        return schedserver.openapi_document()
    spec = importlib.util.spec_from_file_location("openapi_doc", WIP_DOC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.openapi_document()


def documented_operations(document: dict) -> set[tuple[str, str]]:
    """(METHOD, path with {}) of every operation of the document."""
    found = set()
    for path, item in document["paths"].items():
        for method in item:
            if method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
                found.add((method.upper(), re.sub(r"\{[^}]*\}", "{}", path)))
    return found


# -- the document and the routes ----------------------------------------------------------------------------

def test_every_route_the_router_serves_is_in_the_document_and_every_operation_of_it_is_served(tmp_path):
    stack = Stack(tmp_path)
    try:
        served = {(route.method, re.sub(r"<[^>]+>", "{}", route.rule))
                  for route in stack.server.app.routes if ":re:" not in route.rule}
    finally:
        stack.close()
    documented = documented_operations(the_document())
    assert served - documented == set(), "served but not in the document"
    assert documented - served == set(), "in the document but not served"


def test_docs_api_md_and_the_document_list_the_same_routes():
    headings = set()
    for line in API_DOC.read_text().splitlines():
        match = re.fullmatch(r"### `([A-Z]+) (/[^`?]*)`", line.strip())
        if match:
            headings.add((match.group(1), re.sub(r"\{[^}]*\}", "{}", match.group(2))))
    documented = documented_operations(the_document())
    assert documented - headings == set(), "in the document but not in docs/api.md"
    assert headings - documented == set(), "in docs/api.md but not in the document"


def test_the_document_is_valid_openapi_3_1():
    document = the_document()
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["version"] == schedserver.__version__
    validate_openapi(document)
    json.dumps(document, allow_nan=False)       # what the route serves


def test_the_document_describes_the_validators_constants():
    schemas = the_document()["components"]["schemas"]
    fields = set(schemas["ScheduleCreate"]["properties"])
    assert fields == set(schedserver.SCHEDULE_FIELDS)
    assert set(schemas["ScheduleUpdate"]["properties"]) == fields
    assert set(schemas["RequestInput"]["properties"]) == set(schedserver.REQUEST_FIELDS)
    assert schemas["ScheduleCreate"]["additionalProperties"] is False
    assert schemas["TimeZone"]["enum"] == sorted(schedserver._zone_names())
    assert schemas["Run"]["properties"]["status"]["enum"] == list(schedserver.RUN_STATUSES)
    assert set(schemas["Run"]["required"]) == set(schedserver.RUN_FIELDS)


# -- schemathesis against a live server ---------------------------------------------------------------------

def digits(low: int, high: int) -> st.SearchStrategy[str]:
    """A number from low to high, as text."""
    return st.integers(low, high).map(str)


def cron_field(low: int, high: int, names: tuple[str, ...] = (), every: bool = True) -> st.SearchStrategy:
    """One valid cron field: a value, a name, a range, a list, and with `every` also `*` and steps."""
    def ranged(pair: tuple[int, int]) -> str:
        return f"{min(pair)}-{max(pair)}"

    value = st.integers(low, high)
    item = st.one_of(value.map(str), st.tuples(value, value).map(ranged),
                     *([st.sampled_from(names)] if names else []))
    choices = [item, st.lists(value.map(str), min_size=2, max_size=4, unique=True).map(",".join)]
    if every:
        choices += [st.just("*"), digits(1, high - low + 1).map(lambda n: "*/" + n),
                    st.tuples(value, digits(1, high - low + 1)).map(lambda p: f"{p[0]}/{p[1]}")]
    return st.one_of(*choices)


def cron_expressions() -> st.SearchStrategy[str]:
    """Valid cron expressions: days up to 28 (none never fires), never every second (schedules stay quiet)."""
    days = cron_field(1, 28)
    months = cron_field(1, 12, schedserver.MONTH_NAMES)
    weekdays = st.one_of(cron_field(0, 7, schedserver.DAY_NAMES), st.just("?"))
    five = st.tuples(cron_field(0, 59), cron_field(0, 23), days, months, weekdays)
    six = st.tuples(cron_field(0, 59, every=False), cron_field(0, 59), cron_field(0, 23), days, months,
                    weekdays)
    names = sorted(schedserver.CRON_MACROS)
    macros = st.sampled_from(names + [m.upper() for m in names])
    return st.one_of(five.map(" ".join), six.map(" ".join), macros)


def http_urls() -> st.SearchStrategy[str]:
    """http(s) URLs to localhost (never a literal address the egress policy would refuse at create)."""
    path = st.text(st.sampled_from("abcxyz019-._~/%"), max_size=20)
    return st.builds(lambda scheme, port, p, q: f"{scheme}://localhost{port}/{p}{q}",
                     st.sampled_from(["http", "https", "HTTP"]), st.sampled_from(["", ":9", ":65535"]), path,
                     st.sampled_from(["", "?a=1", "?x=%20y"]))


def date_times() -> st.SearchStrategy[str]:
    """RFC 3339 date-times that Python's datetime can hold (years 0002-9998, no leap second)."""
    offsets = st.one_of(st.sampled_from(["Z", "z"]),
                        st.tuples(st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59))
                        .map(lambda o: f"{o[0]}{o[1]:02d}:{o[2]:02d}"))
    fraction = st.one_of(st.just(""), st.integers(0, 999_999).map(lambda f: f".{f:06d}"))
    moments = st.datetimes(datetime.datetime(2, 1, 1), datetime.datetime(9998, 12, 31))
    return st.builds(lambda d, f, o: d.isoformat(timespec="seconds") + f + o, moments, fraction, offsets)


def cursors() -> st.SearchStrategy[str]:
    """Cursors in the shape the server gives (next_cursor)."""
    def cursor(inode: int, offset: int) -> str:
        position = json.dumps({"inode": inode, "offset": offset, "head": "7b"}, separators=(",", ":"))
        return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")

    return st.builds(cursor, st.integers(0, 2**40), st.integers(0, 2**40))


def script_paths(scripts_dir: Path) -> st.SearchStrategy[str]:
    """Registered scripts (relative and absolute), and other paths inside the scripts dir."""
    segment = st.from_regex(r"[a-z0-9_-][a-z0-9_.-]{0,10}", fullmatch=True)
    others = st.lists(segment, min_size=1, max_size=3).map("/".join)
    absolute = [str(scripts_dir / rel) for rel in sorted(REGISTERED)]
    return st.one_of(st.sampled_from(sorted(REGISTERED)), st.sampled_from(absolute), others)


def start_server(tmp_path: Path) -> ServerProcess:
    """The real server on a free loopback port, an admin and a read-only token, no egress at all."""
    data_dir, scripts_dir = tmp_path / "data", tmp_path / "scripts"
    data_dir.mkdir(mode=0o700)
    for rel, text in SCRIPTS.items():
        path = scripts_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    env = {"SCHEDSERVER_CURL_DENY_NETWORKS": "0.0.0.0/0,::/0", "SCHEDSERVER_READ_TOKEN": READ_TOKEN}
    server = ServerProcess(data_dir, scripts_dir, env=env)
    if not PASTED:
        launcher = tmp_path / "launch_schedserver.py"
        launcher.write_text(LAUNCHER)
        server.env["SCHEDSERVER_OPENAPI_DOC"] = WIP_DOC
        server.argv = [sys.executable, str(launcher), *server.argv[server.argv.index("serve") + 1:]]
    return server.start()


def retry_bounds_hold(context, case) -> bool:
    """False for positive data whose retry has max_backoff_seconds below min_backoff_seconds."""
    # JSON Schema cannot compare two properties: schemathesis takes {"min_backoff_seconds": 3599,
    # "max_backoff_seconds": 0.1} for valid data, and the server rightly refuses it.
    body = case.body if isinstance(case.body, dict) else {}
    retry = body.get("retry")
    if case.meta is None or case.meta.generation.mode != schemathesis.GenerationMode.POSITIVE or \
            not isinstance(retry, dict):
        return True
    least, most = retry.get("min_backoff_seconds"), retry.get("max_backoff_seconds")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (least, most))
    return not numbers or most >= least


class Pass:
    """One schemathesis run over every operation of the served document, with one token."""

    def __init__(self, document: dict, url: str, token: str, max_examples: int, dictionaries: dict):
        ids = {"dictionary": "schedules", "probability": 0.5}       # one that exists, half of the time
        config = schemathesis.Config.from_dict({
            "seed": SEED, "base-url": url, "workers": 1, "request-timeout": 30,
            "auth": {"openapi": {"bearer": {"bearer": token}}},
            "generation": {"mode": "all", "max-examples": max_examples, "deterministic": True,
                           "database": "none"},
            "checks": {"enabled": True},
            "dictionaries": {name: {"values": values} for name, values in dictionaries.items()},
            "parameters": {"path.id": ids, "path.run_id": {**ids, "dictionary": "runs"},
                           "path.runId": {**ids, "dictionary": "script_runs"}},
            "operations": [{"include-operation-id": "deleteHttpSchedule",
                            "parameters": {"path.id": {**ids, "dictionary": "victims"}}}],
        })
        # From the served document, not from its URL: schemathesis leaves out the operation a schema was
        # loaded from, and GET /api/v1/openapi.json is to be tested too.
        self.schema = schemathesis.openapi.from_dict(document, config=config)
        self.schema.hook("filter_case")(retry_bounds_hold)
        self.statistic, self.errors = Statistic(), []

    def run(self) -> "Pass":
        """Every phase to its end, collecting what the checks found."""
        for event in from_schema(self.schema).execute():
            if isinstance(event, events.ScenarioFinished) and event.is_test_scenario:
                self.statistic.on_scenario_finished(event.recorder)
            elif isinstance(event, events.NonFatalError):
                self.errors.append(f"--- {event.label}: {event.info.format()}")
            elif isinstance(event, events.FatalError):
                self.errors.append(f"--- fatal: {event.exception!r}")
            elif isinstance(event, events.EngineFinished) and event.failures:
                self.statistic.record_run_check_failures(event.failures, label="run checks")
        return self

    @property
    def failures(self) -> int:
        """Failed checks and errors."""
        return self.statistic.total_failures + len(self.errors)

    def report(self, name: str) -> list[str]:
        """Each failure: the checks that failed, the request that reproduces it, the answer."""
        lines = []
        for label, groups in sorted(self.statistic.failures.items()):
            for group in groups.values():
                lines.append(f"--- {name}: {label}")
                lines += [f"  {failure.title}: {failure.message}" for failure in group.failures]
                if group.code_sample:
                    lines.append("  " + group.code_sample)
                if group.response is not None:
                    lines.append(f"  -> {group.response.status_code} {group.response.content[:600]!r}")
        return lines + self.errors


def test_schemathesis_finds_no_failure_against_a_live_server(tmp_path, figure):
    server = start_server(tmp_path)
    try:
        session = requests.Session()
        session.trust_env = False
        session.headers["Authorization"] = f"Bearer {DEFAULT_TOKEN}"
        served = session.get(server.url + "/api/v1/openapi.json", timeout=10).json()
        assert served == json.loads(json.dumps(the_document())), "the server does not serve this document"

        def create(name: str) -> str:
            answer = session.post(server.url + schedserver.CURL_PREFIX, timeout=10, json={
                "cron": "0 0 0 1 1 *", "name": name, "request": {"url": "http://localhost:9/", "body": "x",
                                                                 "headers": {"X-Key": "secret"}}})
            assert answer.status_code == 201, answer.text
            return answer.json()["id"]

        fixture = create("fixture")
        ran = session.post(f"{server.url}{schedserver.CURL_PREFIX}/{fixture}/run", timeout=30)
        assert ran.status_code == 200, ran.text
        fired = session.post(server.url + schedserver.EXEC_PREFIX + "/trigger", timeout=30,
                             json={"scriptPath": "hello.sh"})
        assert fired.status_code == 200, fired.text
        dictionaries = {"schedules": [fixture], "victims": [create(f"victim {n}") for n in range(3)],
                        "runs": [ran.json()["run_id"]], "script_runs": [fired.json()["runId"]]}

        # Values for the document's own formats (JSON Schema cannot spell a valid cron expression, say).
        schemathesis.openapi.format("cron", cron_expressions())
        schemathesis.openapi.format("http-url", http_urls())
        schemathesis.openapi.format("script-path", script_paths(server.scripts_dir))
        schemathesis.openapi.format("cursor", cursors())
        schemathesis.openapi.format("date-time", date_times())
        tokens = {"admin token": (DEFAULT_TOKEN, MAX_EXAMPLES),
                  "read-only token": (READ_TOKEN, MAX_EXAMPLES // 4)}
        passes = {name: Pass(served, server.url, token, examples, dictionaries).run()
                  for name, (token, examples) in tokens.items()}
    finally:
        server.stop()

    operations = documented_operations(served)
    cases = sum(p.statistic.total_cases for p in passes.values())
    failures = sum(p.failures for p in passes.values())
    line = f"openapi: {len(operations)} operations, {cases} cases, {failures} failures"
    figure(line)
    print(line)
    assert failures == 0, "\n".join(line for name, p in passes.items() for line in p.report(name))
    labels = {f"{method.upper()} {path}" for path, item in served["paths"].items() for method in item
              if method != "parameters"}
    for name, p in passes.items():
        assert labels - p.statistic.tested_operations == set(), f"{name}: operations no check ran on"
