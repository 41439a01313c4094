"""Embedding (issue 17, item 4): `Server(Config(...))` inside another Python program.

Config takes every setting in Python and reads no environment; `wsgi_app` serves without binding a port and
mounts under a prefix in a Bottle app or a plain WSGI dispatcher; start()/close() (or a `with` block) run and stop
the scheduler, and the HTTP listener only with start(listen=True). The host process keeps its garbage collector,
signal handlers, logging, environment and children; 50 start/close cycles leave its thread and descriptor counts
where they were. The README's embedding and Python client examples are run as written (with temporary dirs and a
real server). Servers here run in this process with real threads and the real clock; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import uuid
import warnings
import wsgiref.validate
from pathlib import Path

import bottle
import pytest
import requests
import webtest

import schedserver
from e2e_helpers import REPO_ROOT, ServerProcess, TargetServer, wait_until

TOKEN = "embedding-admin-token-0b7c"
READ_TOKEN = "embedding-read-token-61aa"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CURL = "/api/v1/curl/schedule"
EXEC = "/api/v1/exec/schedules"
NEVER = "0 0 0 1 1 *"
HELLO = "#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho hello\n"


def make_config(root: Path, **fields) -> schedserver.Config:
    settings = {"data_dir": str(root / "data"), "scripts_dir": str(root / "scripts"), "tokens": (TOKEN,),
                "read_tokens": (READ_TOKEN,), "port": 0, "shutdown_grace_seconds": 2}
    return schedserver.Config(**{**settings, **fields})


def with_script(root: Path) -> Path:
    (root / "scripts").mkdir(parents=True, exist_ok=True)
    (root / "scripts" / "hello.sh").write_text(HELLO)
    return root


BEFORE: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _baseline_threads():
    """The threads alive when the test began: what other tests in this process left (a runner a unit test never
    closed, say) is not this test's to account for."""
    BEFORE.clear()
    BEFORE.update(threading.enumerate())
    yield


def schedserver_threads() -> list[str]:
    """Our threads started since the test began."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("schedserver") and t not in BEFORE)


def listening_sockets() -> set[int]:
    """The inodes of this process's TCP sockets in LISTEN state."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            ours.add(int(match.group(1)))
    listening = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in ours:       # 0A: LISTEN
                listening.add(int(fields[9]))
    return listening


###############################################################################
# Config in Python, no environment #############################################
###############################################################################

def bad_environment(root: Path) -> dict[str, str]:
    """A value for every SCHEDSERVER_* variable that load_config would refuse or that would change the server."""
    bad = {"SCHEDSERVER_CONFIG": str(root / "no-such-config.toml"), "SCHEDSERVER_HOST": "203.0.113.7",
           "SCHEDSERVER_TOKEN": "env-admin-token", "SCHEDSERVER_READ_TOKEN": "env-read-token",
           "SCHEDSERVER_DATA_DIR": str(root / "env-data"), "SCHEDSERVER_SCRIPTS_DIR": str(root / "env-scripts"),
           "SCHEDSERVER_TOKEN_FILE": str(root / "no-such-token-file"), "SCHEDSERVER_TIMEZONE": "Mars/Olympus",
           "SCHEDSERVER_LOG_FORMAT": "xml", "SCHEDSERVER_LOG_LEVEL": "LOUD", "SCHEDSERVER_NOTIFY_URL": "not a url",
           "SCHEDSERVER_NOTIFY_ON": "never", "SCHEDSERVER_METRICS_PUBLIC": "maybe",
           "SCHEDSERVER_CURL_ALLOW_NETWORKS": "not-a-network"}
    for _, _, _, _, env_name in schedserver.CONFIG_TABLE:
        if env_name and env_name not in bad:
            bad[env_name] = "not-a-number"
    return bad


def test_config_built_in_python_reads_no_environment(tmp_path, monkeypatch):
    clean = make_config(tmp_path)
    for name, value in bad_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(schedserver.ConfigError):        # the environment really is bad for load_config
        schedserver.load_config({})
    assert make_config(tmp_path) == clean
    defaults = schedserver.Config()
    assert (defaults.host, defaults.port, defaults.timezone, defaults.tokens, defaults.log_format,
            defaults.metrics_public) == ("127.0.0.1", 8080, "UTC", (), "text", False)
    assert defaults.data_dir == os.path.abspath("./data")


def test_a_server_built_from_config_ignores_the_environment(tmp_path, monkeypatch):
    for name, value in bad_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    server = schedserver.Server(make_config(with_script(tmp_path)))
    server.start(listen=True)               # on 127.0.0.1:0, not SCHEDSERVER_HOST's 203.0.113.7
    try:
        app = webtest.TestApp(server.wsgi_app)
        for token in ("env-admin-token", "env-read-token"):
            assert app.get(CURL, headers={"Authorization": f"Bearer {token}"}, expect_errors=True).status_int == 401
        assert app.get(CURL, headers=ADMIN).status_int == 200
        assert app.get("/metrics", expect_errors=True).status_int == 401       # not public
        assert app.get(EXEC + "/list", headers=ADMIN).json["total"] == 1
        preview = app.get("/api/v1/cron/preview", {"expr": "0 0 9 * * *"}, headers=ADMIN).json
        assert preview["timezone"] == "UTC"
        assert server.listener.effective_host == "127.0.0.1"
    finally:
        server.close()
    assert (tmp_path / "data").is_dir()
    assert not (tmp_path / "env-data").exists() and not (tmp_path / "env-scripts").exists()
    assert not (tmp_path / "data" / "api-token").exists()


def test_an_embedded_server_tells_systemd_nothing(tmp_path, monkeypatch):
    """NOTIFY_SOCKET belongs to the host process: an embedded server (own_process=False) never writes to it."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")
        with schedserver.Server(make_config(with_script(tmp_path))) as server:
            wait_until(lambda: server.scheduler.last_tick is not None, timeout=5)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
        assert schedserver.sd_notify("PROBE=1") and sock.recv(4096) == b"PROBE=1"     # the socket works


###############################################################################
# wsgi_app: no port, mountable #################################################
###############################################################################

def test_wsgi_app_answers_503_until_started_and_after_close(tmp_path):
    server = schedserver.Server(make_config(tmp_path))
    app = webtest.TestApp(server.wsgi_app)
    before = app.get(CURL, headers=ADMIN, expect_errors=True)
    assert before.status_int == 503 and before.json["error"] == "SERVICE_UNAVAILABLE"
    assert app.get(EXEC + "/list", headers=ADMIN, expect_errors=True).json["code"] == "ERROR_503"
    server.start()
    try:
        assert app.get(CURL, headers=ADMIN).status_int == 200
    finally:
        server.close()
    assert app.get(CURL, headers=ADMIN, expect_errors=True).status_int == 503


def test_start_binds_no_port_unless_asked(tmp_path):
    before = listening_sockets()
    server = schedserver.Server(make_config(tmp_path))
    server.start()
    try:
        assert listening_sockets() == before
        assert server.listener is None and not server.serving
        assert webtest.TestApp(server.wsgi_app).get("/healthz").json["status"] == "ok"
    finally:
        server.close()
    assert listening_sockets() == before


def test_start_listen_serves_http_and_close_stops_it(tmp_path):
    before = listening_sockets()
    server = schedserver.Server(make_config(tmp_path))
    server.start(listen=True)
    try:
        assert len(listening_sockets() - before) == 1 and server.serving
        url = f"http://127.0.0.1:{server.listener.effective_port}"
        with requests.Session() as session:
            session.trust_env = False
            assert session.get(url + "/healthz", timeout=5).json()["status"] == "ok"
            assert session.get(url + CURL, headers=ADMIN, timeout=5).json()["meta"]["total"] == 0
    finally:
        server.close()
    assert listening_sockets() == before and not server.serving
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/healthz", timeout=5)


def test_wsgi_app_is_a_pep_3333_app(tmp_path):
    with schedserver.Server(make_config(with_script(tmp_path))) as server:
        app = webtest.TestApp(wsgiref.validate.validator(server.wsgi_app))
        created = app.post_json(CURL, {"cron": NEVER, "request": {"url": "http://127.0.0.1:9/"}}, headers=ADMIN)
        assert created.status_int == 201
        assert app.get(f"{CURL}/{created.json['id']}", headers=ADMIN).json["id"] == created.json["id"]
        assert app.get(CURL + "/nope", headers=ADMIN, expect_errors=True).status_int == 404
        assert app.get("/metrics", headers=ADMIN).status_int == 200
        assert app.post_json(EXEC + "/trigger", {"scriptPath": "hello.sh"}, headers=ADMIN).json["status"] == "ok"


def host_bottle_app(server: schedserver.Server) -> bottle.Bottle:
    host = bottle.Bottle()

    @host.get("/hello")
    def hello():
        return "host says hello"

    host.mount("/scheduler", server.wsgi_app)
    return host


def exercise_under_prefix(app: webtest.TestApp, prefix: str) -> None:
    """The API through `prefix`: both surfaces, errors in their shapes, health and metrics."""
    created = app.post_json(prefix + CURL, {"cron": NEVER, "request": {"url": "http://127.0.0.1:9/"}, "name": "m"},
                            headers=ADMIN)
    assert created.status_int == 201
    schedule_id = created.json["id"]
    assert app.get(f"{prefix}{CURL}/{schedule_id}", headers=ADMIN).json["name"] == "m"
    assert app.patch_json(f"{prefix}{CURL}/{schedule_id}/toggle", {"enabled": False},
                          headers=ADMIN).json["enabled"] is False
    assert [s["id"] for s in app.get(prefix + CURL, headers=ADMIN).json["items"]] == [schedule_id]
    assert app.get(prefix + EXEC + "/list", headers=ADMIN).json["total"] == 1
    assert app.post_json(prefix + EXEC + "/trigger", {"scriptPath": "hello.sh"},
                         headers=ADMIN).json["returnPreview"] == "hello"
    missing = app.get(f"{prefix}{CURL}/{uuid.uuid4()}", headers=ADMIN, expect_errors=True)
    assert missing.status_int == 404 and missing.json == {"error": "SCHEDULE_NOT_FOUND",
                                                          "message": "Schedule not found"}
    exec_missing = app.get(prefix + "/api/v1/exec/nothing", headers=ADMIN, expect_errors=True)
    assert exec_missing.status_int == 404 and exec_missing.json["code"] == "NOT_FOUND"
    assert app.get(prefix + CURL, expect_errors=True).status_int == 401
    assert app.get(prefix + "/healthz").json["status"] == "ok"
    assert "schedserver_schedules" in app.get(prefix + "/metrics", headers=ADMIN).text
    assert app.get(prefix + "/api/v1/cron/preview", {"expr": "@daily", "n": "1"}, headers=ADMIN).json["next"]


def test_mounted_under_a_prefix_in_a_bottle_app(tmp_path):
    with schedserver.Server(make_config(with_script(tmp_path))) as server:
        app = webtest.TestApp(host_bottle_app(server))
        exercise_under_prefix(app, "/scheduler")
        assert app.get("/hello").text == "host says hello"
        assert app.get(CURL, headers=ADMIN, expect_errors=True).status_int == 404       # only under the prefix


def test_metrics_of_a_mounted_app_name_its_own_route_templates_only(tmp_path):
    with schedserver.Server(make_config(tmp_path)) as server:
        app = webtest.TestApp(host_bottle_app(server))
        app.get("/scheduler" + CURL, headers=ADMIN)
        app.get("/scheduler/api/v1/no-such-route", headers=ADMIN, expect_errors=True)
        text = app.get("/scheduler/metrics", headers=ADMIN).text
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert CURL in routes
    assert not any("scheduler" in route or "<:re:" in route for route in routes), routes


def test_mounted_under_a_prefix_by_a_plain_wsgi_dispatcher(tmp_path):
    with schedserver.Server(make_config(with_script(tmp_path))) as server:
        prefix = "/jobs/scheduler"

        def dispatcher(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path == prefix or path.startswith(prefix + "/"):
                environ = dict(environ, SCRIPT_NAME=environ.get("SCRIPT_NAME", "") + prefix,
                               PATH_INFO=path[len(prefix):])
                return server.wsgi_app(environ, start_response)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"the host"]

        app = webtest.TestApp(dispatcher)
        exercise_under_prefix(app, prefix)
        assert app.get("/elsewhere").text == "the host"


###############################################################################
# start() and close() run and stop the scheduler ###############################
###############################################################################

def test_start_runs_the_scheduler_and_close_stops_it(tmp_path):
    with TargetServer() as target:
        server = schedserver.Server(make_config(tmp_path))
        assert schedserver_threads() == []                      # built, not started: nothing runs
        server.start()
        try:
            app = webtest.TestApp(server.wsgi_app)
            app.post_json(CURL, {"cron": "* * * * * *", "request": {"url": target.url + "/tick"}}, headers=ADMIN)
            assert len(target.wait_for(2, 15, "/tick")) >= 2
            assert "schedserver-ticker" in schedserver_threads()
        finally:
            server.close()
        assert wait_until(lambda: schedserver_threads() == [], timeout=5), schedserver_threads()
        assert server.scheduler._thread is None


def test_close_lets_go_of_the_data_dir(tmp_path):
    first = schedserver.Server(make_config(tmp_path))
    first.start()
    second = schedserver.Server(make_config(tmp_path))
    with pytest.raises((schedserver.StartupError, schedserver.ConfigError)):
        second.start()
    assert webtest.TestApp(first.wsgi_app).get(CURL, headers=ADMIN).status_int == 200   # the first goes on
    first.close()
    third = schedserver.Server(make_config(tmp_path))
    third.start()
    third.close()


def test_the_server_is_a_context_manager(tmp_path):
    with schedserver.Server(make_config(with_script(tmp_path))) as server:
        assert "schedserver-ticker" in schedserver_threads()
        app = webtest.TestApp(server.wsgi_app)
        created = app.post_json(CURL, {"cron": NEVER, "request": {"url": "http://127.0.0.1:9/"}}, headers=ADMIN)
    assert wait_until(lambda: schedserver_threads() == [], timeout=5), schedserver_threads()
    with schedserver.Server(make_config(tmp_path)) as again:        # kept, and the data dir is free again
        assert webtest.TestApp(again.wsgi_app).get(f"{CURL}/{created.json['id']}", headers=ADMIN).status_int == 200


def still_open(fds: list[int]) -> list[int]:
    found = []
    for fd in fds:
        try:
            os.fstat(fd)
            found.append(fd)
        except OSError:
            pass
    return found


def test_a_second_close_is_harmless_and_never_closes_the_hosts_files(tmp_path):
    server = schedserver.Server(make_config(tmp_path))
    server.start()
    server.close()
    host_fds = [fd for pair in (os.pipe() for _ in range(4)) for fd in pair]    # likely the numbers it freed
    try:
        server.close()
        assert still_open(host_fds) == host_fds, "the server's second close() closed the host's descriptors"
    finally:
        for fd in still_open(host_fds):
            os.close(fd)


def test_closing_inside_the_with_block_is_fine(tmp_path):
    with schedserver.Server(make_config(tmp_path)) as server:
        server.close()                  # the host stops it early; the block's end closes again
    with schedserver.Server(make_config(tmp_path)):
        pass


def test_start_after_close_runs_the_scheduler_again_or_refuses(tmp_path):
    """Never the third way: an API that answers with no scheduler behind it."""
    server = schedserver.Server(make_config(tmp_path))
    server.start()
    server.close()
    try:
        server.start()
    except (schedserver.SchedserverError, RuntimeError):
        return                          # refusing to start again is fine
    try:
        running = wait_until(lambda: "schedserver-ticker" in schedserver_threads(), timeout=5)
        answers = webtest.TestApp(server.wsgi_app).get(CURL, headers=ADMIN, expect_errors=True).status_int
        assert running or answers == 503, \
            f"start() after close() returned, the API answers {answers}, and no scheduler runs"
    finally:
        with contextlib.suppress(OSError):
            server.close()
        server.data_dir.release()       # in case close() failed half way


def test_an_exception_in_the_with_block_still_closes(tmp_path):
    with pytest.raises(RuntimeError):
        with schedserver.Server(make_config(tmp_path)):
            raise RuntimeError("the host failed")
    assert wait_until(lambda: schedserver_threads() == [], timeout=5)
    with schedserver.Server(make_config(tmp_path)):
        pass


def test_a_failed_start_leaves_nothing_running(tmp_path):
    (tmp_path / "data").mkdir(mode=0o700)
    (tmp_path / "data" / "curl-schedules.json").write_text("{not json")
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    server = schedserver.Server(make_config(tmp_path))
    with pytest.raises((schedserver.StartupError, schedserver.ConfigError)):
        server.start(listen=True)
    assert wait_until(lambda: threading.active_count() == threads, timeout=5)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert (tmp_path / "data" / "curl-schedules.json").read_text() == "{not json"


###############################################################################
# No effect on the host ########################################################
###############################################################################

def subreaper() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(-1)
    libc.prctl(37, ctypes.byref(value), 0, 0, 0)       # PR_GET_CHILD_SUBREAPER
    return value.value


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def host_state() -> dict:
    root = logging.getLogger()
    loggers = {}
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            loggers[name] = (tuple(logger.handlers), tuple(logger.filters), logger.level, logger.propagate,
                             logger.disabled)
    return {
        "gc": (gc.isenabled(), gc.get_freeze_count(), gc.get_threshold()),
        "signals": {s: signal.getsignal(s) for s in signal.valid_signals()
                    if s not in (signal.SIGKILL, signal.SIGSTOP)},
        "root logger": (tuple(root.handlers), tuple(root.filters), root.level, logging.root.manager.disable),
        "loggers": loggers,
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": current_umask(),
        "hooks": (sys.excepthook, threading.excepthook, sys.stdout, sys.stderr),
        "open files limit": resource.getrlimit(resource.RLIMIT_NOFILE),
        "subreaper": subreaper(),
        "warnings filters": warnings.filters[:],
    }


def assert_host_unchanged(before: dict, running: bool = False) -> None:
    """Everything `before` holds is as it was; loggers that appeared have no handlers or filters. While a
    server runs, its own loggers (schedserver.*) may carry its filters (the listener's rate limit), never a
    handler."""
    now = host_state()
    new_loggers = {name: now["loggers"][name] for name in set(now["loggers"]) - set(before["loggers"])}
    for name, (handlers, filters, *_) in new_loggers.items():
        assert not handlers, f"logger {name} gained handlers {handlers}"
        assert not filters or running and name.startswith("schedserver"), f"logger {name} gained {filters}"
    now["loggers"] = {name: value for name, value in now["loggers"].items() if name in before["loggers"]}
    if running:
        for name in now["loggers"]:
            if name == "schedserver" or name.startswith("schedserver."):
                handlers, _, *rest = now["loggers"][name]
                was_handlers, _, *was_rest = before["loggers"][name]
                assert (handlers, rest) == (was_handlers, was_rest), f"logger {name} changed"
                now["loggers"][name] = before["loggers"][name]
    for key in before:
        assert now[key] == before[key], f"the host's {key} changed"


def test_the_library_logger_has_only_a_null_handler():
    logger = logging.getLogger("schedserver")
    assert [type(h) for h in logger.handlers] == [logging.NullHandler]
    assert logger.propagate is True


def test_running_a_server_changes_nothing_in_the_host_process(tmp_path):
    schedserver.Server(make_config(tmp_path / "warm")).close()      # imports done before the baseline
    before = host_state()
    with TargetServer() as target:
        server = schedserver.Server(make_config(with_script(tmp_path), access_log=True, log_format="json",
                                                log_level="DEBUG"))
        server.start(listen=True)
        try:
            during = host_state()
            app = webtest.TestApp(server.wsgi_app)
            created = app.post_json(CURL, {"cron": "* * * * * *", "request": {"url": target.url + "/t"}},
                                    headers=ADMIN)
            app.post(f"{CURL}/{created.json['id']}/run", headers=ADMIN)
            app.post_json(EXEC + "/trigger", {"scriptPath": "hello.sh"}, headers=ADMIN)
            app.post_json(EXEC + "/reload", {}, headers=ADMIN)
            with requests.Session() as session:
                session.trust_env = False
                session.get(f"http://127.0.0.1:{server.listener.effective_port}/healthz", timeout=5)
            target.wait_for(1, 10, "/t")
            assert_host_unchanged(before, running=True)
        finally:
            server.close()
    assert_host_unchanged(before)
    assert during["signals"] == before["signals"] and during["gc"] == before["gc"]


def zombie(proc: subprocess.Popen) -> bool:
    try:
        return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_the_server_never_reaps_the_hosts_children(tmp_path):
    host_child = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    assert wait_until(lambda: zombie(host_child), timeout=10)        # exited, not yet reaped by us
    with schedserver.Server(make_config(with_script(tmp_path))) as server:
        app = webtest.TestApp(server.wsgi_app)
        for _ in range(3):
            assert app.post_json(EXEC + "/trigger", {"scriptPath": "hello.sh"}, headers=ADMIN).json["status"] == "ok"
        assert zombie(host_child), "the embedded server reaped a child it did not start"
    assert host_child.wait(timeout=10) == 7


###############################################################################
# 50 start/close cycles ########################################################
###############################################################################

def count_threads() -> int:
    return threading.active_count()


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fifty_start_close_cycles_leave_threads_and_descriptors_where_they_were(tmp_path, figure):
    with_script(tmp_path)
    with TargetServer() as target, requests.Session() as session:
        session.trust_env = False
        schedule_ids: list[str] = []

        def cycle(i: int) -> None:
            listen = i % 2 == 0
            server = schedserver.Server(make_config(tmp_path))
            server.start(listen=listen)
            try:
                app = webtest.TestApp(server.wsgi_app)
                if not schedule_ids:
                    schedule_ids.append(app.post_json(CURL, {"cron": NEVER, "request": {"url": target.url + "/c"}},
                                                      headers=ADMIN).json["id"])
                assert app.get(CURL, headers=ADMIN).json["meta"]["total"] == 1
                assert app.post(f"{CURL}/{schedule_ids[0]}/run", headers=ADMIN).json["status"] == "ok"
                assert app.post_json(EXEC + "/trigger", {"scriptPath": "hello.sh"},
                                     headers=ADMIN).json["status"] == "ok"
                if listen:
                    url = f"http://127.0.0.1:{server.listener.effective_port}"
                    assert session.get(url + "/healthz", timeout=5).status_code == 200
                    session.close()
            finally:
                server.close()

        cycle(0)                                    # warms up imports, pools and caches
        assert wait_until(lambda: not schedserver_threads(), timeout=5)
        gc.collect()        # what earlier tests left for the collector goes now, not during the measurement
        threads_before, fds_before = count_threads(), count_fds()
        for i in range(1, 51):
            cycle(i)
        settled = wait_until(lambda: count_threads() == threads_before and count_fds() == fds_before, timeout=5)
        threads_after, fds_after = count_threads(), count_fds()
        assert len(target.received("/c")) == 51
    figure(f"embedding: 50 start/close cycles, threads {threads_before} -> {threads_after}, "
           f"fds {fds_before} -> {fds_after}")
    assert settled, (f"threads {threads_before} -> {threads_after}, fds {fds_before} -> {fds_after}; "
                     f"schedserver threads left: {schedserver_threads()}")


###############################################################################
# The README's examples, as written ############################################
###############################################################################

def readme_block(section: str) -> str:
    """The first ```python block of the README's `## section`."""
    text = (REPO_ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match, f"no python block in the README's {section} section"
    return match.group(1)


def test_the_readme_embedding_example_runs(tmp_path):
    code = readme_block("Embedding")
    assert '"/var/lib/myapp/schedules"' in code and '"/srv/myapp/jobs"' in code
    code = code.replace('"/var/lib/myapp/schedules"', repr(str(tmp_path / "schedules")))
    code = code.replace('"/srv/myapp/jobs"', repr(str(tmp_path / "jobs")))
    namespace: dict = {"__name__": "readme_embedding"}
    exec(compile(code, "README.md (Embedding)", "exec"), namespace)
    server, wsgi, config = namespace["server"], namespace["wsgi"], namespace["config"]
    assert config.timezone == "Europe/Berlin" and config.tokens == ("a-long-random-admin-token",)
    assert (tmp_path / "schedules").is_dir() and (tmp_path / "jobs").is_dir()
    assert not (tmp_path / "schedules" / "api-token").exists()
    assert callable(wsgi) and server.app is None                    # closed when the block ended
    assert wait_until(lambda: not schedserver_threads(), timeout=5)


def test_the_readme_embedding_example_serves_inside_its_block(tmp_path):
    """The same code with its `...` made a probe: inside the block the app answers with the token it was given."""
    code = readme_block("Embedding")
    code = code.replace('"/var/lib/myapp/schedules"', repr(str(tmp_path / "schedules")))
    code = code.replace('"/srv/myapp/jobs"', repr(str(tmp_path / "jobs")))
    lines = code.splitlines()
    [dots] = [i for i, line in enumerate(lines) if line.strip().startswith("...")]
    indent = lines[dots][: len(lines[dots]) - len(lines[dots].lstrip())]
    lines[dots] = indent + "probe(wsgi)"
    seen: list = []

    def probe(wsgi) -> None:
        app = webtest.TestApp(wsgi)
        seen.append(app.get(CURL, headers={"Authorization": "Bearer a-long-random-admin-token"}).json)
        seen.append(app.get(CURL, headers=ADMIN, expect_errors=True).status_int)
        seen.append(app.get("/api/v1/cron/preview", {"expr": "0 30 2 * * *", "n": "1"},
                            headers={"Authorization": "Bearer a-long-random-admin-token"}).json["timezone"])
    exec(compile("\n".join(lines), "README.md (Embedding)", "exec"), {"__name__": "readme_embedding",
                                                                      "probe": probe})
    assert seen == [{"items": [], "meta": {"page": 1, "limit": 1, "total": 0}}, 401, "Europe/Berlin"]


def test_the_readme_python_client_example_runs_against_a_real_server(tmp_path):
    code = readme_block("Python client")
    assert '"http://127.0.0.1:8080"' in code and '"http://127.0.0.1:9000/"' in code
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "hello.sh").write_text(HELLO)
    with TargetServer() as target, ServerProcess(tmp_path / "data", tmp_path / "scripts") as server:
        code = code.replace('"http://127.0.0.1:8080"', repr(server.url))
        code = code.replace('"http://127.0.0.1:9000/"', repr(target.url + "/"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md (Python client)", "exec"), {"__name__": "readme_client",
                                                                      "token": server.token})
        printed = out.getvalue().splitlines()
        assert len(target.received("/")) == 1                       # client.curl.schedules.run(...)
        with schedserver.Client(server.url, server.token) as client:
            assert client.curl.schedules.list()["meta"]["total"] == 0     # deleted at the end
    assert len(printed) == 3, printed
    assert re.fullmatch(r"[0-9a-f-]{36} 0 \*/5 \* \* \* \* \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", printed[0]), printed
    assert printed[1] == "['ok']"
    assert printed[2] == "1"


def test_close_goes_on_when_the_http_loops_wake_up_pipe_is_closed_already(tmp_path):
    """Seen once under systemd: the HTTP loop's wake-up pipe closed before close() asked the loop to end, and
    close() raised OSError (EBADF), so the process exited 1 with a traceback instead of stopping cleanly."""
    server = schedserver.Server(schedserver.Config(data_dir=str(tmp_path / "data"), scripts_dir=str(tmp_path / "s"),
                                                   port=0, tokens=("t",)))
    server.start(listen=True)
    server.listener.trigger._close()        # the pipe's descriptors, as waitress closes them
    server.close(grace=0)
    assert not server.serving
