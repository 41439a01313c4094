"""The Python client (issue 17, item 1): every call of `client.curl.schedules` and `client.exec.schedules`, and the
errors it raises, against the REAL server process (tests/e2e_helpers.ServerProcess) and a real loopback target.

Nothing here is mocked: each call goes over HTTP to `python -m schedserver serve`. One server serves the module's
tests (each test makes its own schedules and never counts anything it did not make); tests that need a server of
their own (an empty one, one with two request threads) start one. Every wait is bounded.
"""

from __future__ import annotations

import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import schedserver
from e2e_helpers import ServerProcess, TargetServer, wait_until

READ_TOKEN = "client-read-token-5d2e91"
NEVER = "0 0 0 1 1 *"           # once a year (Jan 1st): never fires while a test runs

HELLO = """#!/bin/sh
# @schedule 0 0 0 1 1 *
# @description says hello
echo "hello from $SCHEDSERVER_SCRIPT"
"""
FAILS = """#!/bin/sh
# @schedule 0 0 0 1 1 *
echo "about to fail" >&2
echo "disk is full" >&2
exit 3
"""
GUARDED = """#!/bin/sh
# @schedule 0 0 0 1 1 *
# @token
echo guarded ran
"""


def slow_script(flag: Path, started: Path) -> str:
    """A script that says it started, then waits (at most 20 s) for `flag` to appear."""
    return f"""#!/bin/sh
# @schedule 0 0 0 1 1 *
touch '{started}'
i=0
while [ ! -e '{flag}' ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
echo slow done
"""


def write_scripts(scripts: Path, root: Path) -> None:
    (scripts / "ops").mkdir(parents=True, exist_ok=True)
    (scripts / "ops" / "hello.sh").write_text(HELLO)
    (scripts / "ops" / "fails.sh").write_text(FAILS)
    (scripts / "ops" / "guarded.sh").write_text(GUARDED)
    (scripts / "ops" / "slow.sh").write_text(slow_script(root / "slow.flag", root / "slow.started"))


class Env:
    """One running server, a target it can reach and a client of it."""

    def __init__(self, root: Path, server: ServerProcess, target: TargetServer):
        self.root = root
        self.server = server
        self.target = target
        self.client = schedserver.Client(server.url, server.token, timeout=30)
        self.http = self.client.curl.schedules
        self.exec = self.client.exec.schedules

    def create(self, **fields) -> dict:
        fields.setdefault("cron", NEVER)
        fields.setdefault("request", {"url": self.target.url + "/" + uuid.uuid4().hex})
        return self.http.create(**fields)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    write_scripts(root / "scripts", root)
    with TargetServer() as target:
        server = ServerProcess(root / "data", root / "scripts", env={"SCHEDSERVER_READ_TOKEN": READ_TOKEN})
        with server:
            e = Env(root, server, target)
            yield e
            e.client.close()


@pytest.fixture
def fresh(tmp_path):
    """A server of this test's own, over an empty data dir."""
    (tmp_path / "scripts").mkdir()
    with TargetServer() as target, ServerProcess(tmp_path / "data", tmp_path / "scripts") as server:
        e = Env(tmp_path, server, target)
        yield e
        e.client.close()


def raised(call, *args, **kwargs) -> schedserver.ApiError:
    with pytest.raises(schedserver.ApiError) as info:
        call(*args, **kwargs)
    return info.value


###############################################################################
# client.curl.schedules: listing ###############################################
###############################################################################

def test_list_pages_newest_first_with_page_and_limit(fresh):
    ids = [fresh.create(name=f"s{i}")["id"] for i in range(5)]
    newest_first = list(reversed(ids))
    pages = [fresh.http.list(page=p, limit=2) for p in (1, 2, 3, 4)]
    assert [[s["id"] for s in page["items"]] for page in pages] == \
        [newest_first[0:2], newest_first[2:4], newest_first[4:5], []]
    assert [page["meta"] for page in pages] == [{"page": p, "limit": 2, "total": 5} for p in (1, 2, 3, 4)]


def test_list_without_arguments_has_every_schedule_on_page_one(fresh):
    ids = [fresh.create()["id"] for _ in range(3)]
    answer = fresh.http.list()
    assert [s["id"] for s in answer["items"]] == list(reversed(ids))
    assert answer["meta"] == {"page": 1, "limit": 3, "total": 3}


def test_list_iterator_yields_every_schedule_once_across_pages_newest_first(fresh):
    ids = [fresh.create()["id"] for _ in range(7)]
    for limit in (1, 2, 3, 7, 100):
        assert [s["id"] for s in fresh.http.list_iterator(limit=limit)] == list(reversed(ids)), limit


def test_list_iterator_stops_on_an_exact_multiple_of_the_limit(fresh):
    ids = [fresh.create()["id"] for _ in range(4)]
    assert [s["id"] for s in fresh.http.list_iterator(limit=2)] == list(reversed(ids))


def test_list_iterator_of_an_empty_server_yields_nothing(fresh):
    assert list(fresh.http.list_iterator(limit=10)) == []


def test_list_items_are_the_list_shape_with_url_and_method_only(env):
    created = env.create(name="listed", request={"url": env.target.url + "/listed", "method": "POST",
                                                 "headers": {"X-Secret": "s"}, "body": "b"})
    item = next(s for s in env.http.list_iterator() if s["id"] == created["id"])
    assert item["request"] == {"url": env.target.url + "/listed", "method": "POST"}
    assert item["name"] == "listed" and item["cron"] == NEVER and item["enabled"] is True


###############################################################################
# client.curl.schedules: one schedule ##########################################
###############################################################################

def test_create_sends_cron_request_and_any_other_fields(env):
    created = env.http.create(cron="0 0 9 * * MON-FRI", request={"url": env.target.url + "/c", "method": "put",
                                                                  "json": {"a": 1}},
                              name="weekday", enabled=False, timezone="Europe/Berlin", retry={"count": 2},
                              overlap="allow", jitter_seconds=3)
    assert created["cron"] == "0 0 9 * * MON-FRI"
    assert created["request"]["method"] == "PUT" and created["request"]["json"] == {"a": 1}
    assert (created["name"], created["enabled"], created["timezone"]) == ("weekday", False, "Europe/Berlin")
    assert created["retry"]["count"] == 2 and created["overlap"] == "allow" and created["jitter_seconds"] == 3
    assert created["next_run"] is None
    uuid.UUID(created["id"])


def test_get_answers_the_whole_schedule_with_its_history(env):
    created = env.create(name="got", request={"url": env.target.url + "/got", "headers": {"X-A": "1"}})
    env.http.run(created["id"])
    got = env.http.get(created["id"])
    assert got["id"] == created["id"] and got["name"] == "got"
    assert got["request"]["headers"] == {"X-A": "1"}
    assert got["last_status"] == "ok" and [h["status"] for h in got["history"]] == ["ok"]


def test_update_changes_the_given_fields_and_keeps_id_and_created_at(env):
    created = env.create(name="before")
    updated = env.http.update(created["id"], name="after", cron="0 0 12 * * *", retry={"count": 1})
    assert (updated["id"], updated["created_at"]) == (created["id"], created["created_at"])
    assert (updated["name"], updated["cron"], updated["retry"]["count"]) == ("after", "0 0 12 * * *", 1)
    assert updated["request"] == created["request"]
    assert env.http.get(created["id"])["name"] == "after"


def test_toggle_flips_without_enabled_and_sets_the_state_with_it(env):
    created = env.create()
    assert env.http.toggle(created["id"]) == {"id": created["id"], "enabled": False, "next_run": None}
    flipped = env.http.toggle(created["id"])
    assert flipped["enabled"] is True and flipped["next_run"] is not None
    assert env.http.toggle(created["id"], enabled=True)["enabled"] is True       # already on: stays on
    assert env.http.toggle(created["id"], enabled=False)["enabled"] is False
    assert env.http.toggle(created["id"], enabled=False)["enabled"] is False
    assert env.http.get(created["id"])["enabled"] is False


def test_delete_removes_the_schedule(env):
    created = env.create()
    assert env.http.delete(created["id"]) == {"id": created["id"]}
    error = raised(env.http.get, created["id"])
    assert (type(error), error.status, error.code) == (schedserver.ClientError, 404, "SCHEDULE_NOT_FOUND")
    assert created["id"] not in [s["id"] for s in env.http.list_iterator()]


###############################################################################
# client.curl.schedules: runs ##################################################
###############################################################################

def test_run_waits_and_answers_the_finished_run(env):
    path = "/run-" + uuid.uuid4().hex
    created = env.create(request={"url": env.target.url + path})
    run = env.http.run(created["id"])
    assert (run["schedule_id"], run["trigger"], run["status"], run["status_code"]) == (created["id"], "manual",
                                                                                       "ok", 200)
    assert run["finished_at"] is not None
    assert run["response"]["body_preview"] == "recorded\n"
    assert len(env.target.received(path)) == 1


def test_run_without_waiting_answers_the_run_id_at_once_then_get_run_shows_how_it_ended(env):
    path = "/later-" + uuid.uuid4().hex
    created = env.create(request={"url": env.target.url + path})
    answer = env.http.run(created["id"], wait=False)
    assert set(answer) == {"run_id"}
    ended = wait_until(lambda: (lambda r: r if r["status"] != "running" else None)(
        env.http.get_run(created["id"], answer["run_id"])), timeout=10)
    assert ended and ended["status"] == "ok" and ended["run_id"] == answer["run_id"]
    assert len(env.target.wait_for(1, 5, path)) == 1


def test_runs_iterates_over_every_page_newest_first_without_duplicates(env):
    created = env.create()
    run_ids = [env.http.run(created["id"])["run_id"] for _ in range(5)]
    pages = list(env.http.runs(created["id"], limit=2))
    assert [len(page["items"]) for page in pages] == [2, 2, 1]
    assert [r["run_id"] for page in pages for r in page["items"]] == list(reversed(run_ids))
    assert pages[-1]["next_cursor"] is None and all(page["next_cursor"] for page in pages[:-1])


def runs_requests(env) -> float:
    """How many GET .../runs requests the server has answered (its own request counter)."""
    text = env.server.api("GET", "/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "schedserver_http_requests_total"
               and s.labels.get("route") == "/api/v1/curl/schedule/<schedule_id>/runs")


def test_runs_is_lazy_and_fetches_a_page_only_when_asked(env):
    created = env.create()
    for _ in range(3):
        env.http.run(created["id"])
    before = runs_requests(env)
    pages = env.http.runs(created["id"], limit=1)
    assert runs_requests(env) == before                 # nothing fetched yet
    first = next(pages)
    assert len(first["items"]) == 1 and first["next_cursor"]
    pages.close()
    assert runs_requests(env) == before + 1             # one page asked for, one fetched


def test_runs_filters_by_status_and_since(env):
    with TargetServer(status=500) as failing:
        created = env.create(request={"url": failing.url + "/x"})
        env.http.run(created["id"])
        env.http.update(created["id"], request={"url": env.target.url + "/ok"})
        ok_run = env.http.run(created["id"])
    errors = [r for page in env.http.runs(created["id"], status="error") for r in page["items"]]
    assert [(r["status"], r["status_code"]) for r in errors] == [("error", 500)]
    oks = [r for page in env.http.runs(created["id"], status="ok") for r in page["items"]]
    assert [r["run_id"] for r in oks] == [ok_run["run_id"]]
    future = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [r for page in env.http.runs(created["id"], since=future) for r in page["items"]] == []
    past = "2000-01-01T00:00:00Z"
    assert len([r for page in env.http.runs(created["id"], since=past) for r in page["items"]]) == 2


def test_runs_of_a_schedule_that_never_ran_is_one_empty_page(env):
    created = env.create()
    assert list(env.http.runs(created["id"])) == [{"items": [], "next_cursor": None}]


def test_get_run_answers_one_run(env):
    created = env.create()
    run = env.http.run(created["id"])
    got = env.http.get_run(created["id"], run["run_id"])
    assert got["run_id"] == run["run_id"] and got["status"] == "ok"
    assert got["response"]["headers"]
    error = raised(env.http.get_run, created["id"], str(uuid.uuid4()))
    assert (type(error), error.status, error.code) == (schedserver.ClientError, 404, "RUN_NOT_FOUND")


###############################################################################
# client.exec.schedules ########################################################
###############################################################################

def test_list_schedules_answers_every_registered_script(env):
    answer = env.exec.list_schedules()
    assert answer["total"] == 4
    by_rel = {s["scriptRel"]: s for s in answer["schedules"]}
    assert set(by_rel) == {"ops/hello.sh", "ops/fails.sh", "ops/guarded.sh", "ops/slow.sh"}
    assert by_rel["ops/hello.sh"]["expression"] == NEVER
    assert by_rel["ops/hello.sh"]["description"] == "says hello"


def test_trigger_schedule_runs_the_script_and_answers_its_result(env):
    answer = env.exec.trigger_schedule(script_path="ops/hello.sh")
    assert answer["triggered"] is True and answer["scriptPath"] == "ops/hello.sh"
    assert (answer["status"], answer["exitCode"], answer["returnPreview"]) == ("ok", 0,
                                                                               "hello from ops/hello.sh")
    failed = env.exec.trigger_schedule(script_path="ops/fails.sh")
    assert (failed["status"], failed["exitCode"], failed["error"]) == ("error", 3, "disk is full")


def test_trigger_schedule_of_a_token_script_needs_force(env):
    error = raised(env.exec.trigger_schedule, script_path="ops/guarded.sh")
    assert (type(error), error.status, error.code) == (schedserver.ClientError, 403, "FORBIDDEN")
    assert "@token" in error.message
    assert env.exec.trigger_schedule(script_path="ops/guarded.sh", force=True)["returnPreview"] == "guarded ran"


def test_trigger_schedule_takes_an_absolute_path_inside_the_scripts_dir(env):
    answer = env.exec.trigger_schedule(script_path=str(env.server.scripts_dir / "ops" / "hello.sh"))
    assert answer["scriptPath"] == "ops/hello.sh" and answer["status"] == "ok"


def test_run_answers_one_script_run_with_its_output(env):
    answer = env.exec.trigger_schedule(script_path="ops/fails.sh")
    run = env.exec.run(answer["runId"])
    assert run["runId"] == answer["runId"] and run["status"] == "error"
    assert run["stderr"] == "about to fail\ndisk is full\n" and run["stdout"] == ""
    error = raised(env.exec.run, str(uuid.uuid4()))
    assert (type(error), error.status, error.code) == (schedserver.ClientError, 404, "NOT_FOUND")


def test_schedule_history_filters_by_script_path_since_and_limit(env):
    run_ids = [env.exec.trigger_schedule(script_path="ops/hello.sh")["runId"] for _ in range(3)]
    env.exec.trigger_schedule(script_path="ops/fails.sh")
    history = env.exec.schedule_history(script_path="ops/hello.sh", limit=2)
    assert history["limit"] == 2 and history["includeRotated"] is False
    assert [e["runId"] for e in history["entries"]] == list(reversed(run_ids))[:2]
    assert {e["scriptPath"] for e in env.exec.schedule_history(script_path="ops/hello.sh")["entries"]} == \
        {"ops/hello.sh"}
    assert "ops/fails.sh" in {e["scriptPath"] for e in env.exec.schedule_history()["entries"]}
    future = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert env.exec.schedule_history(since=future)["entries"] == []
    rotated = env.exec.schedule_history(script_path="ops/hello.sh", include_rotated=True, limit=1)
    assert rotated["includeRotated"] is True and [e["runId"] for e in rotated["entries"]] == [run_ids[-1]]


def test_reload_schedules_previews_with_dry_run_and_applies_without(tmp_path):
    scripts = tmp_path / "scripts"
    write_scripts(scripts, tmp_path)
    with ServerProcess(tmp_path / "data", scripts) as server, \
            schedserver.Client(server.url, server.token) as client:
        (scripts / "new.sh").write_text("#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho new\n")
        (scripts / "broken.sh").write_text("#!/bin/sh\n# @schedule every blue moon\n")
        (scripts / "ops" / "fails.sh").unlink()
        preview = client.exec.schedules.reload_schedules(dry_run=True)
        assert preview["dry_run"] is True
        assert (preview["added"], preview["removed"]) == (["new.sh"], ["ops/fails.sh"])
        assert [f["path"] for f in preview["failed"]] == ["broken.sh"]
        assert client.exec.schedules.list_schedules()["total"] == 4          # nothing applied
        applied = client.exec.schedules.reload_schedules()
        assert applied["dry_run"] is False and applied["added"] == ["new.sh"]
        assert {s["scriptRel"] for s in client.exec.schedules.list_schedules()["schedules"]} == \
            {"new.sh", "ops/hello.sh", "ops/guarded.sh", "ops/slow.sh"}


###############################################################################
# Errors #######################################################################
###############################################################################

def test_client_error_and_server_error_are_api_errors_with_status_code_and_message():
    assert issubclass(schedserver.ClientError, schedserver.ApiError)
    assert issubclass(schedserver.ServerError, schedserver.ApiError)
    assert not issubclass(schedserver.ClientError, schedserver.ServerError)
    assert not issubclass(schedserver.ServerError, schedserver.ClientError)


def test_a_bad_cron_raises_client_error_400_with_the_servers_code_and_message(env):
    error = raised(env.http.create, cron="every blue moon", request={"url": env.target.url})
    assert type(error) is schedserver.ClientError
    assert (error.status, error.code) == (400, "INVALID_CRON_EXPRESSION")
    assert "'every blue moon'" in error.message and str(error) == error.message


def test_an_unknown_field_raises_client_error_400_invalid_parameter(env):
    error = raised(env.http.create, cron=NEVER, request={"url": env.target.url}, colour="blue")
    assert (type(error), error.status, error.code) == (schedserver.ClientError, 400, "INVALID_PARAMETER")
    assert "colour" in error.message


def test_an_unknown_schedule_raises_client_error_404_on_every_call(env):
    missing = str(uuid.uuid4())
    for call, args in ((env.http.get, ()), (env.http.update, ()), (env.http.toggle, ()), (env.http.delete, ()),
                       (env.http.run, ()), (env.http.get_run, (str(uuid.uuid4()),))):
        kwargs = {"name": "x"} if call == env.http.update else {}
        error = raised(call, missing, *args, **kwargs)
        assert (type(error), error.status, error.code) == (schedserver.ClientError, 404, "SCHEDULE_NOT_FOUND"), call
    error = raised(lambda: next(env.http.runs(missing)))
    assert (type(error), error.status, error.code) == (schedserver.ClientError, 404, "SCHEDULE_NOT_FOUND")


def test_ids_are_sent_as_one_path_segment(env):
    for odd in ("a/b", "x?y=1", "p#q", "%2e%2e"):
        error = raised(env.http.get, odd)
        assert (type(error), error.status, error.code) == (schedserver.ClientError, 404, "SCHEDULE_NOT_FOUND"), odd


def test_an_unknown_script_raises_client_error_404_with_the_exec_code(env):
    error = raised(env.exec.trigger_schedule, script_path="nope.sh")
    assert (type(error), error.status, error.code) == (schedserver.ClientError, 404, "NOT_FOUND")
    assert "nope.sh" in error.message
    error = raised(env.exec.schedule_history, since="yesterday")
    assert (type(error), error.status, error.code) == (schedserver.ClientError, 400, "VALIDATION_ERROR")


def test_a_wrong_or_missing_token_raises_client_error_401(env):
    for token in ("wrong-token", None):
        with schedserver.Client(env.server.url, token) as client:
            for call in (client.curl.schedules.list, client.exec.schedules.list_schedules):
                error = raised(call)
                assert (type(error), error.status, error.code) == (schedserver.ClientError, 401, "UNAUTHORIZED")


def test_a_read_only_token_reads_and_is_refused_changes_with_client_error_403(env):
    created = env.create(request={"url": env.target.url + "/r", "headers": {"X-Key": "secret"}})
    with schedserver.Client(env.server.url, READ_TOKEN) as reader:
        assert reader.curl.schedules.get(created["id"])["request"]["headers"] == {"X-Key": "[redacted]"}
        assert reader.exec.schedules.list_schedules()["total"] == 4
        for call, args in ((reader.curl.schedules.create, (NEVER, {"url": env.target.url})),
                           (reader.curl.schedules.toggle, (created["id"],)),
                           (reader.curl.schedules.delete, (created["id"],)),
                           (reader.curl.schedules.run, (created["id"],)),
                           (reader.exec.schedules.trigger_schedule, ("ops/hello.sh",)),
                           (reader.exec.schedules.reload_schedules, ())):
            error = raised(call, *args)
            assert (type(error), error.status, error.code) == (schedserver.ClientError, 403, "FORBIDDEN"), call
    assert env.http.get(created["id"])["enabled"] is True


def test_a_script_already_running_raises_client_error_409(env):
    flag, started = env.root / "slow.flag", env.root / "slow.started"
    flag.unlink(missing_ok=True)
    started.unlink(missing_ok=True)
    first: list = []
    worker = threading.Thread(target=lambda: first.append(env.exec.trigger_schedule(script_path="ops/slow.sh")))
    worker.start()
    try:
        assert wait_until(started.exists, timeout=10), "the slow script did not start"
        error = raised(env.exec.trigger_schedule, script_path="ops/slow.sh")
        assert (type(error), error.status, error.code) == (schedserver.ClientError, 409, "CONFLICT")
    finally:
        flag.touch()
        worker.join(timeout=30)
    assert first and first[0]["status"] == "ok"


def test_too_many_waiting_triggers_raise_server_error_503(tmp_path):
    scripts = tmp_path / "scripts"
    write_scripts(scripts, tmp_path)
    server = ServerProcess(tmp_path / "data", scripts, env={"SCHEDSERVER_THREADS": "2"})     # one may wait
    with server, schedserver.Client(server.url, server.token) as client:
        first: list = []
        worker = threading.Thread(target=lambda: first.append(
            client.exec.schedules.trigger_schedule(script_path="ops/slow.sh")))
        worker.start()
        try:
            assert wait_until((tmp_path / "slow.started").exists, timeout=10), "the slow script did not start"
            with schedserver.Client(server.url, server.token) as other:
                error = raised(other.exec.schedules.trigger_schedule, script_path="ops/hello.sh")
            assert type(error) is schedserver.ServerError
            assert (error.status, error.code) == (503, "ERROR_503")
            assert "waiting already" in error.message
        finally:
            (tmp_path / "slow.flag").touch()
            worker.join(timeout=30)
        assert first and first[0]["status"] == "ok"


def test_an_unreachable_server_raises_server_error_with_status_0(tmp_path):
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with schedserver.Client(f"http://127.0.0.1:{port}", "t", timeout=5) as client:
        error = raised(client.curl.schedules.list)
    assert type(error) is schedserver.ServerError
    assert error.code == "UNREACHABLE" and f"127.0.0.1:{port}" in error.message
    assert error.status == 0            # as the docstring says: "could not be reached (`status` 0)"


def test_a_server_that_never_answers_raises_server_error_after_the_timeout():
    with socket.socket() as listener:   # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        url = "http://127.0.0.1:%d" % listener.getsockname()[1]
        with schedserver.Client(url, "t", timeout=0.5) as client:
            error = raised(client.exec.schedules.list_schedules)
    assert type(error) is schedserver.ServerError and error.code == "UNREACHABLE"


def test_an_answer_that_is_not_json_still_raises_by_status_family():
    """A proxy's HTML error page, say: the status decides the class, the text is the message."""
    for status, kind in ((502, schedserver.ServerError), (404, schedserver.ClientError)):
        with TargetServer(status=status) as proxy, schedserver.Client(proxy.url, "t") as client:
            error = raised(client.curl.schedules.list)
        assert type(error) is kind and error.status == status
        assert error.code == "ERROR" and error.message == "recorded\n"


def test_the_client_ignores_proxy_variables_and_netrc(env, tmp_path, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")          # the discard port: nothing would get through
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login x password y\n")
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with schedserver.Client(env.server.url, env.server.token) as client:
        assert client.exec.schedules.list_schedules()["total"] == 4
    with schedserver.Client(env.server.url, None) as client:    # no token: .netrc must not supply one
        assert raised(client.curl.schedules.list).status == 401


def test_a_trailing_slash_in_the_url_is_fine(env):
    with schedserver.Client(env.server.url + "/", env.server.token) as client:
        assert client.exec.schedules.list_schedules()["total"] == 4


def test_the_client_is_a_context_manager_that_closes_its_session(env):
    with schedserver.Client(env.server.url, env.server.token) as client:
        client.curl.schedules.list(limit=1)
        adapters = list(client.session.adapters.values())
    assert all(not adapter.poolmanager.pools for adapter in adapters)
