"""Prometheus metrics at GET /metrics (issue 17, item 3), and the OpenAPI document beside them (Monitoring).

Every scrape is read with prometheus_client's own text parser (prometheus_client.parser.
text_string_to_metric_families), as Prometheus would read it. What a real run does to the metrics is shown against
the REAL server process (tests/e2e_helpers.ServerProcess) and a real loopback target; what needs time to pass
(missed and skipped slots, lateness, retries, jitter) is shown in process (tests/harness.py's Stack, a fake clock,
no threads), where every figure is exact. Every wait is bounded.
"""

from __future__ import annotations

import math
import re
import threading
import uuid
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

import schedserver
from e2e_helpers import ServerProcess, TargetServer, wait_until
from fakes import FakeClock
from harness import ADMIN, READ, READ_TOKEN, Stack

NEVER = "0 0 0 1 1 *"
FAMILIES = {                            # name as the parser names the family -> type
    "schedserver_runs": "counter",
    "schedserver_run_duration_seconds": "histogram",
    "schedserver_run_start_lateness_seconds": "histogram",
    "schedserver_schedules": "gauge",
    "schedserver_runs_in_flight": "gauge",
    "schedserver_retries": "counter",
    "schedserver_alert_deliveries": "counter",
    "schedserver_ticker_lag_seconds": "gauge",
    "schedserver_http_requests": "counter",
    "schedserver_http_request_duration_seconds": "histogram",
}

OK_SCRIPT = "#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho fine\n"
FAILING_SCRIPT = "#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho broken >&2\nexit 1\n"


###############################################################################
# Reading a scrape #############################################################
###############################################################################

class Scrape:
    """One scrape, parsed by prometheus_client's parser."""

    def __init__(self, text: str):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the sample `name` with exactly these labels; None when there is none."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample `name` whose labels include these (0 when there is none)."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def label_sets(self, name: str) -> list[dict]:
        return [s.labels for s in self.samples if s.name == name]


def scrape_process(server: ServerProcess, token=...) -> Scrape:
    response = server.api("GET", "/metrics", **({} if token is ... else {"token": token}))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return Scrape(response.text)


def scrape_stack(stack: Stack, headers=READ) -> Scrape:
    response = stack.app.get("/metrics", headers=headers)
    assert response.content_type == "text/plain"
    return Scrape(response.text)


def scripts_with(root: Path, **scripts: str) -> Path:
    d = root / "scripts"
    (d / "ops").mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
        (d / "ops" / f"{name}.sh").write_text(text)
    return d


@pytest.fixture
def target():
    with TargetServer() as t:
        yield t


@pytest.fixture
def failing_target():
    with TargetServer(status=500) as t:
        yield t


def start(tmp_path: Path, **env: str) -> ServerProcess:
    scripts = scripts_with(tmp_path, ok=OK_SCRIPT, fails=FAILING_SCRIPT)
    return ServerProcess(tmp_path / "data", scripts, env={"SCHEDSERVER_READ_TOKEN": READ_TOKEN, **env}).start()


###############################################################################
# The real server: what a scrape holds #########################################
###############################################################################

def test_every_documented_family_is_exposed_with_its_type_before_anything_ran(tmp_path):
    with start(tmp_path) as server:
        scrape = scrape_process(server)
    for name, kind in FAMILIES.items():
        assert name in scrape.families, f"{name} missing from the scrape"
        assert scrape.families[name].type == kind, name


def test_runs_are_counted_by_kind_and_status_with_their_durations(tmp_path, target, failing_target):
    with start(tmp_path) as server, schedserver.Client(server.url, server.token) as client:
        good = client.curl.schedules.create(cron=NEVER, request={"url": target.url + "/ok"})
        bad = client.curl.schedules.create(cron=NEVER, request={"url": failing_target.url + "/fail"})
        for schedule_id in (good["id"], good["id"], bad["id"]):
            client.curl.schedules.run(schedule_id)
        client.exec.schedules.trigger_schedule(script_path="ops/ok.sh")
        client.exec.schedules.trigger_schedule(script_path="ops/fails.sh")
        scrape = scrape_process(server)
    assert scrape.value("schedserver_runs_total", kind="http", status="ok") == 2
    assert scrape.value("schedserver_runs_total", kind="http", status="error") == 1
    assert scrape.value("schedserver_runs_total", kind="script", status="ok") == 1
    assert scrape.value("schedserver_runs_total", kind="script", status="error") == 1
    assert scrape.value("schedserver_run_duration_seconds_count", kind="http") == 3
    assert scrape.value("schedserver_run_duration_seconds_count", kind="script") == 2
    assert scrape.value("schedserver_run_duration_seconds_bucket", kind="http", le="+Inf") == 3
    assert scrape.value("schedserver_run_duration_seconds_sum", kind="http") >= 0
    # Manual runs were not due at any slot: no lateness to measure.
    assert scrape.total("schedserver_run_start_lateness_seconds_count") == 0


def test_cron_runs_of_the_real_server_are_counted_with_their_lateness(tmp_path, target):
    with start(tmp_path) as server, schedserver.Client(server.url, server.token) as client:
        created = client.curl.schedules.create(cron="* * * * * *", request={"url": target.url + "/tick"})
        assert len(target.wait_for(2, 15, "/tick")) >= 2
        client.curl.schedules.toggle(created["id"], enabled=False)

        def settled() -> Scrape | None:
            """A scrape with nothing in flight, and nothing recorded since the one before."""
            first = scrape_process(server)
            second = scrape_process(server)
            quiet = all(s.value("schedserver_runs_in_flight", kind="http") == 0 for s in (first, second))
            same = first.total("schedserver_runs_total") == second.total("schedserver_runs_total")
            return second if quiet and same else None
        scrape = wait_until(settled, timeout=10)
        assert scrape is not None
    ran = scrape.value("schedserver_runs_total", kind="http", status="ok")
    assert ran is not None and ran >= 2
    assert scrape.value("schedserver_run_start_lateness_seconds_count", kind="http") == ran
    assert scrape.value("schedserver_run_start_lateness_seconds_sum", kind="http") >= 0


def test_schedules_are_counted_by_kind_and_state(tmp_path, target):
    with start(tmp_path) as server, schedserver.Client(server.url, server.token) as client:
        for enabled in (True, True, False):
            client.curl.schedules.create(cron=NEVER, request={"url": target.url}, enabled=enabled)
        scrape = scrape_process(server)
    assert scrape.value("schedserver_schedules", kind="http", state="enabled") == 2
    assert scrape.value("schedserver_schedules", kind="http", state="disabled") == 1
    assert scrape.value("schedserver_schedules", kind="script", state="registered") == 2


def test_runs_in_flight_are_counted_by_kind(tmp_path):
    flag, started = tmp_path / "flag", tmp_path / "started"
    slow = (f"#!/bin/sh\n# @schedule 0 0 0 1 1 *\ntouch '{started}'\ni=0\n"
            f"while [ ! -e '{flag}' ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n")
    scripts = scripts_with(tmp_path, slow=slow)
    with ServerProcess(tmp_path / "data", scripts) as server, schedserver.Client(server.url, server.token) as client:
        worker = threading.Thread(target=client.exec.schedules.trigger_schedule, args=("ops/slow.sh",))
        worker.start()
        try:
            assert wait_until(started.exists, timeout=10)
            during = scrape_process(server)
        finally:
            flag.touch()
            worker.join(timeout=30)
        after = scrape_process(server)
    assert during.value("schedserver_runs_in_flight", kind="script") == 1
    assert during.value("schedserver_runs_in_flight", kind="http") == 0
    assert after.value("schedserver_runs_in_flight", kind="script") == 0


def test_the_ticker_lag_is_a_gauge_of_seconds(tmp_path):
    with start(tmp_path) as server:
        scrape = scrape_process(server)
    lag = scrape.value("schedserver_ticker_lag_seconds")
    assert lag is not None and lag >= 0 and math.isfinite(lag)


def test_requests_are_counted_by_route_template_method_and_status(tmp_path, target):
    with start(tmp_path) as server, schedserver.Client(server.url, server.token) as client:
        ids = [client.curl.schedules.create(cron=NEVER, request={"url": target.url})["id"] for _ in range(2)]
        for schedule_id in ids:
            client.curl.schedules.get(schedule_id)
        missing = str(uuid.uuid4())
        with pytest.raises(schedserver.ClientError):
            client.curl.schedules.get(missing)
        server.api("GET", "/api/v1/curl/schedule/" + ids[0], token="wrong")
        server.api("GET", "/healthz")
        scrape = scrape_process(server)
    one = "/api/v1/curl/schedule/<schedule_id>"
    assert scrape.value("schedserver_http_requests_total", route=one, method="GET", status="200") == 2
    assert scrape.value("schedserver_http_requests_total", route=one, method="GET", status="404") == 1
    assert scrape.value("schedserver_http_requests_total", route=one, method="GET", status="401") == 1
    assert scrape.value("schedserver_http_requests_total", route="/api/v1/curl/schedule", method="POST",
                        status="201") == 2
    assert scrape.value("schedserver_http_requests_total", route="/healthz", method="GET", status="200") == 1
    assert scrape.value("schedserver_http_request_duration_seconds_count", route=one, method="GET") == 4
    for labels in scrape.label_sets("schedserver_http_requests_total"):
        assert not any(i in value for i in ids + [missing] for value in labels.values()), labels


def test_alert_deliveries_are_counted_by_outcome(tmp_path, target, failing_target):
    with start(tmp_path) as server, schedserver.Client(server.url, server.token) as client:
        created = client.curl.schedules.create(cron=NEVER, request={"url": failing_target.url},
                                               notify={"url": target.url + "/alert", "on": ["failure"]})
        client.curl.schedules.run(created["id"])
        assert target.wait_for(1, 15, "/alert")
        delivered = wait_until(lambda: scrape_process(server).value("schedserver_alert_deliveries_total",
                                                                    outcome="delivered"), timeout=10)
    assert delivered == 1


def test_a_failed_alert_delivery_is_counted_as_failed(tmp_path, monkeypatch):
    """The sender's outcome label, with one try (three tries wait seconds between them)."""
    monkeypatch.setattr(schedserver, "ALERT_TRIES", 1)

    class RefusingRunner:
        def run(self, spec, extra_headers):
            return schedserver.RunResult("error", 0.0, 1, error="connection refused")

    metrics = schedserver.Metrics()
    sender = schedserver.AlertSender(RefusingRunner(), str(tmp_path / "outbox.ndjson"))
    sender.metrics = metrics
    sender.start()
    try:
        sender.send("http://127.0.0.1:9/alert", {"event": "failure", "schedule_id": "x"})
        assert wait_until(lambda: sender.failed == 1, timeout=10)
    finally:
        sender.close()
    scrape = Scrape(metrics.text().decode())
    assert scrape.value("schedserver_alert_deliveries_total", outcome="failed") == 1
    assert scrape.value("schedserver_alert_deliveries_total", outcome="delivered") is None


###############################################################################
# Labels: no per-schedule series unless asked ##################################
###############################################################################

def run_one_of_each(server: ServerProcess, target: TargetServer) -> str:
    with schedserver.Client(server.url, server.token) as client:
        created = client.curl.schedules.create(cron=NEVER, request={"url": target.url})
        client.curl.schedules.run(created["id"])
        client.exec.schedules.trigger_schedule(script_path="ops/ok.sh")
    return created["id"]


def test_no_series_names_a_schedule_by_default(tmp_path, target):
    with start(tmp_path) as server:
        schedule_id = run_one_of_each(server, target)
        scrape = scrape_process(server)
    for sample in scrape.samples:
        assert "schedule" not in sample.labels, sample
        assert not any(schedule_id in v or "ops/ok.sh" in v for v in sample.labels.values()), sample


def test_per_schedule_adds_a_schedule_label_to_runs_and_durations(tmp_path, target):
    with start(tmp_path, SCHEDSERVER_METRICS_PER_SCHEDULE="true") as server:
        schedule_id = run_one_of_each(server, target)
        scrape = scrape_process(server)
    assert scrape.value("schedserver_runs_total", kind="http", status="ok", schedule=schedule_id) == 1
    assert scrape.value("schedserver_runs_total", kind="script", status="ok", schedule="ops/ok.sh") == 1
    assert scrape.value("schedserver_run_duration_seconds_count", kind="http", schedule=schedule_id) == 1
    assert scrape.value("schedserver_run_duration_seconds_count", kind="script", schedule="ops/ok.sh") == 1


def test_per_schedule_from_the_config_file(tmp_path, target):
    (tmp_path / "c.toml").write_text("[metrics]\nper_schedule = true\n")
    with start(tmp_path) as server:
        pass
    server = ServerProcess(tmp_path / "data", tmp_path / "scripts",
                           env={"SCHEDSERVER_CONFIG": str(tmp_path / "c.toml")}).start()
    with server:
        schedule_id = run_one_of_each(server, target)
        scrape = scrape_process(server)
    assert scrape.value("schedserver_runs_total", kind="http", status="ok", schedule=schedule_id) == 1


###############################################################################
# Who may scrape ###############################################################
###############################################################################

def test_metrics_need_a_read_or_admin_token(tmp_path):
    with start(tmp_path) as server:
        for token in (None, "wrong-token"):
            response = server.api("GET", "/metrics", token=token)
            assert response.status_code == 401, token
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["error"] == "UNAUTHORIZED"
            assert "schedserver_runs" not in response.text
        assert scrape_process(server, token=READ_TOKEN).families
        assert scrape_process(server).families


def test_public_metrics_need_no_token(tmp_path):
    with start(tmp_path, SCHEDSERVER_METRICS_PUBLIC="true") as server:
        assert "schedserver_schedules" in scrape_process(server, token=None).families
        assert "schedserver_schedules" in scrape_process(server, token=READ_TOKEN).families
        # Only /metrics is public: the API still needs a token.
        assert server.api("GET", "/api/v1/curl/schedule", token=None).status_code == 401


def test_public_metrics_from_the_config_file(tmp_path):
    (tmp_path / "c.toml").write_text("[metrics]\npublic = true\n")
    with start(tmp_path, SCHEDSERVER_CONFIG=str(tmp_path / "c.toml")) as server:
        assert scrape_process(server, token=None).families


def test_a_read_only_token_may_scrape_in_process_too(tmp_path):
    with Stack(tmp_path) as stack:
        assert stack.app.get("/metrics", headers=READ).status_int == 200
        assert stack.app.get("/metrics", headers=ADMIN).status_int == 200
        assert stack.app.get("/metrics", expect_errors=True).status_int == 401


###############################################################################
# In process, on a fake clock: exact figures ###################################
###############################################################################

BASE = "/api/v1/curl/schedule"


def create(stack: Stack, cron: str, **fields) -> str:
    response = stack.app.post_json(BASE, {"cron": cron, "request": {"url": "https://api.example.com/x"}, **fields},
                                   headers=ADMIN)
    return response.json["id"]


def test_missed_slots_count_as_runs_and_the_late_slot_has_its_lateness(tmp_path):
    with Stack(tmp_path, FakeClock("2025-01-10T12:00:00Z")) as stack:
        create(stack, "0 * * * * *")                            # every minute
        stack.clock.set("2025-01-10T12:10:10Z")                 # 12:01 ... 12:09 missed, 12:10 10 s late
        stack.run_due()
        scrape = scrape_stack(stack)
    assert scrape.value("schedserver_runs_total", kind="http", status="missed") == 9
    assert scrape.value("schedserver_runs_total", kind="http", status="ok") == 1
    assert scrape.value("schedserver_run_start_lateness_seconds_count", kind="http") == 1
    assert scrape.value("schedserver_run_start_lateness_seconds_sum", kind="http") == 10.0
    assert scrape.value("schedserver_run_start_lateness_seconds_bucket", kind="http", le="5.0") == 0
    assert scrape.value("schedserver_run_start_lateness_seconds_bucket", kind="http", le="10.0") == 1
    # Missed slots did not run: no duration for them.
    assert scrape.value("schedserver_run_duration_seconds_count", kind="http") == 1
    assert scrape.value("schedserver_run_duration_seconds_sum", kind="http") == 0.012


def test_skipped_slots_and_runs_in_flight(tmp_path):
    with Stack(tmp_path, FakeClock("2025-01-10T12:00:00Z")) as stack:
        create(stack, "* * * * * *")
        stack.http_runner.hold = True
        stack.pass_seconds(1)                       # runs, held in flight
        during = scrape_stack(stack)
        stack.pass_seconds(2)                       # two slots while it still runs: skipped
        skipped = scrape_stack(stack)
        stack.http_runner.hold = False
        stack.http_runner.release()
        after = scrape_stack(stack)
    assert during.value("schedserver_runs_in_flight", kind="http") == 1
    assert skipped.value("schedserver_runs_total", kind="http", status="skipped") == 2
    assert after.value("schedserver_runs_in_flight", kind="http") == 0
    assert after.value("schedserver_runs_total", kind="http", status="ok") == 1
    assert after.value("schedserver_run_duration_seconds_count", kind="http") == 1      # skips have none


def test_runs_interrupted_by_shutdown_are_counted(tmp_path):
    stack = Stack(tmp_path, FakeClock("2025-01-10T12:00:00Z"))
    create(stack, "* * * * * *")
    stack.http_runner.hold = True
    stack.pass_seconds(1)
    metrics = stack.server.metrics
    stack.close()
    scrape = Scrape(metrics.text().decode())
    assert scrape.value("schedserver_runs_total", kind="http", status="interrupted") == 1


def test_retries_are_counted_and_their_lateness_excludes_the_backoff(tmp_path):
    with Stack(tmp_path, FakeClock("2025-01-10T12:00:00Z")) as stack:
        create(stack, "0 0 * * * *", retry={"count": 1, "min_backoff_seconds": 5})        # every hour
        stack.http_runner.script = [("error", 500, "HTTP 500"), ("ok", 200, None)]
        stack.clock.set("2025-01-10T13:00:00Z")
        stack.run_due()                                         # fails on time; a retry at 13:00:05
        first = scrape_stack(stack)
        stack.clock.set("2025-01-10T13:00:07Z")                 # the retry runs 2 s after its time
        stack.run_due()
        second = scrape_stack(stack)
    assert first.value("schedserver_retries_total", kind="http") == 1
    assert second.value("schedserver_retries_total", kind="http") == 1
    assert second.value("schedserver_runs_total", kind="http", status="error") == 1
    assert second.value("schedserver_runs_total", kind="http", status="ok") == 1
    assert second.value("schedserver_run_start_lateness_seconds_count", kind="http") == 2
    assert second.value("schedserver_run_start_lateness_seconds_sum", kind="http") == 2.0


def test_jitter_is_not_lateness(tmp_path):
    with Stack(tmp_path, FakeClock("2025-01-10T12:00:00Z")) as stack:
        create(stack, "0 1 12 * * *", jitter_seconds=60)
        stack.server.runs.random_delay = lambda most: 30.0
        stack.clock.set("2025-01-10T12:01:00Z")
        stack.run_due()                                         # waits for its jitter: 12:01:30
        assert scrape_stack(stack).total("schedserver_runs_total") == 0
        stack.clock.set("2025-01-10T12:01:33Z")                 # 3 s after its jittered time
        stack.run_due()
        scrape = scrape_stack(stack)
    assert scrape.value("schedserver_runs_total", kind="http", status="ok") == 1
    assert scrape.value("schedserver_run_start_lateness_seconds_sum", kind="http") == 3.0


def test_manual_runs_have_no_lateness(tmp_path):
    with Stack(tmp_path, FakeClock("2025-01-10T12:00:00Z")) as stack:
        schedule_id = create(stack, NEVER)
        stack.app.post(f"{BASE}/{schedule_id}/run", headers=ADMIN)
        scrape = scrape_stack(stack)
    assert scrape.value("schedserver_runs_total", kind="http", status="ok") == 1
    assert scrape.total("schedserver_run_start_lateness_seconds_count") == 0


def test_script_runs_are_counted_in_process(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "fine.sh").write_text(OK_SCRIPT)
    with Stack(tmp_path, FakeClock("2025-01-10T12:00:00Z")) as stack:
        stack.app.post_json("/api/v1/exec/schedules/trigger", {"scriptPath": "fine.sh"}, headers=ADMIN)
        scrape = scrape_stack(stack)
    assert scrape.value("schedserver_runs_total", kind="script", status="ok") == 1
    assert scrape.value("schedserver_schedules", kind="script", state="registered") == 1


###############################################################################
# The registry is the server's own #############################################
###############################################################################

def test_a_server_leaves_the_default_registry_alone_and_two_servers_coexist(tmp_path):
    before = {m.name for m in prometheus_client.REGISTRY.collect()}
    with Stack(tmp_path / "a") as one, Stack(tmp_path / "b") as two:
        create(one, NEVER)
        assert scrape_stack(one).value("schedserver_schedules", kind="http", state="enabled") == 1
        assert scrape_stack(two).value("schedserver_schedules", kind="http", state="enabled") == 0
    after = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert after == before and not any(name.startswith("schedserver") for name in after)


###############################################################################
# OpenAPI ######################################################################
###############################################################################

DOCUMENTED_ROUTES = {
    "/api/v1/curl/schedule": {"get", "post"},
    "/api/v1/curl/schedule/{id}": {"get", "patch", "delete"},
    "/api/v1/curl/schedule/{id}/toggle": {"patch"},
    "/api/v1/curl/schedule/{id}/run": {"post"},
    "/api/v1/curl/schedule/{id}/runs": {"get"},
    "/api/v1/curl/schedule/{id}/runs/{run_id}": {"get"},
    "/api/v1/exec/schedules/list": {"get"},
    "/api/v1/exec/schedules/history": {"get"},
    "/api/v1/exec/schedules/reload": {"post"},
    "/api/v1/exec/schedules/trigger": {"post"},
    "/api/v1/exec/schedules/runs/{runId}": {"get"},
    "/api/v1/cron/preview": {"get"},
}


def shape(path: str) -> str:
    """A path template with its parameters unnamed: /a/{id}/b and /a/{schedule_id}/b are the same route."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_the_openapi_document_needs_no_token_and_is_openapi_3_1(tmp_path):
    with Stack(tmp_path) as stack:
        response = stack.app.get("/api/v1/openapi.json")
    assert response.content_type == "application/json"
    document = response.json
    assert document["openapi"].startswith("3.1")
    assert document["info"]["version"] == schedserver.__version__


def test_the_openapi_document_describes_every_api_route(tmp_path):
    """"for client generators and API tools": a document without paths describes nothing."""
    with Stack(tmp_path) as stack:
        document = stack.app.get("/api/v1/openapi.json").json
    paths = document.get("paths") or {}
    described = {shape(path): {m for m in operations if m in ("get", "post", "patch", "delete", "put")}
                 for path, operations in paths.items()}
    missing = {route: methods for route, methods in DOCUMENTED_ROUTES.items()
               if not methods <= described.get(shape(route), set())}
    assert not missing, f"routes missing from the OpenAPI document: {sorted(missing)}"
    assert "securitySchemes" in document.get("components", {}), "the bearer token is not described"


def test_the_ticker_lag_agrees_with_health_before_the_first_tick(tmp_path):
    """A scheduler that never ticked (its thread never started, or died at once) is as late as health says,
    not 0 seconds late."""
    with Stack(tmp_path) as stack:                  # loaded, and no tick yet
        started = stack.scheduler.monotonic()
        stack.scheduler.monotonic = lambda: started + 120.0
        health = stack.app.get("/healthz", expect_errors=True)
        lag = scrape_stack(stack).value("schedserver_ticker_lag_seconds")
    assert health.status_int == 503 and health.json["status"] == "stalled"
    assert lag >= 100, f"ticker lag {lag} s while /healthz says the scheduler stalled"
