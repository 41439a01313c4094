"""The command line as a client (issue 17, item 2) and GET /api/v1/cron/preview.

Every CLI test runs `python -m schedserver ...` as a real subprocess, from a temporary working directory and with
no inherited SCHEDSERVER_* variables, against the REAL server process (tests/e2e_helpers.ServerProcess) and a
real loopback target. `next` and `check` run with no server at all. The preview route is tested in process
(tests/harness.py's Stack, a fake clock: exact fire times) and once against the real server, next to `next`.
Every wait is bounded.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import schedserver
from e2e_helpers import LISTENING, ServerProcess, TargetServer, schedserver_env
from fakes import FakeClock
from harness import ADMIN, READ, Stack

NEVER = "0 0 0 1 1 *"           # once a year (Jan 1st): never fires while a test runs
PREVIEW = "/api/v1/cron/preview"

HELLO = """#!/bin/sh
# @schedule 0 0 0 1 1 *
# @description says hello
echo "hello from $SCHEDSERVER_SCRIPT"
"""
GUARDED = """#!/bin/sh
# @schedule 0 0 0 1 1 *
# @token
echo guarded ran
"""


###############################################################################
# Helpers ######################################################################
###############################################################################

def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m schedserver ARGS` in `cwd`, with no SCHEDSERVER_* variables but those in `env`."""
    full_env = schedserver_env(token=None, **(env or {}))
    return subprocess.run([sys.executable, "-m", "schedserver", *args], cwd=cwd, env=full_env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def ok_json(done: subprocess.CompletedProcess):
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def refused(done: subprocess.CompletedProcess, *mentions: str) -> str:
    """An API error: exit 1, nothing on stdout, one message on stderr naming `mentions`."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("schedserver: ") and done.stderr.count("\n") == 1, done.stderr
    for mention in mentions:
        assert mention in done.stderr
    return done.stderr


def usage(done: subprocess.CompletedProcess, *mentions: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    for mention in mentions:
        assert mention in done.stderr
    return done.stderr


def table(text: str) -> list[list[str]]:
    """The rows of a `ls` table, header first, cut at the header's column offsets (cells may be empty)."""
    lines = text.rstrip("\n").split("\n")
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    bounds = list(zip(starts, starts[1:] + [None]))
    return [[line[a:b].strip() for a, b in bounds] for line in lines]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env:
    def __init__(self, root: Path, server: ServerProcess, target: TargetServer):
        self.root = root
        self.cwd = root / "cwd"
        self.cwd.mkdir(exist_ok=True)
        self.server = server
        self.target = target
        self.client = schedserver.Client(server.url, server.token)

    @property
    def connection(self) -> dict[str, str]:
        return {"SCHEDSERVER_URL": self.server.url, "SCHEDSERVER_TOKEN": self.server.token}

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return cli(*args, cwd=self.cwd, env={**self.connection, **env})

    def create(self, **fields) -> dict:
        fields.setdefault("cron", NEVER)
        fields.setdefault("request", {"url": self.target.url + "/" + uuid.uuid4().hex})
        return self.client.curl.schedules.create(**fields)


def start_env(root: Path, **server_env: str):
    scripts = root / "scripts"
    (scripts / "ops").mkdir(parents=True, exist_ok=True)
    (scripts / "ops" / "hello.sh").write_text(HELLO)
    (scripts / "ops" / "guarded.sh").write_text(GUARDED)
    target = TargetServer().start()
    server = ServerProcess(root / "data", scripts, env=server_env).start()
    return Env(root, server, target)


def stop_env(e: Env) -> None:
    e.client.close()
    e.server.stop()
    e.target.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = start_env(tmp_path_factory.mktemp("cli"))
    yield e
    stop_env(e)


@pytest.fixture
def fresh(tmp_path):
    e = start_env(tmp_path)
    yield e
    stop_env(e)


###############################################################################
# ls ###########################################################################
###############################################################################

def test_ls_lists_both_kinds_in_one_table(fresh):
    ran = fresh.create(name="ping", cron="0 0 12 * * *")
    off = fresh.create(enabled=False)
    fresh.client.curl.schedules.run(ran["id"])
    fresh.client.exec.schedules.trigger_schedule(script_path="ops/hello.sh")
    scripts = {s["scriptRel"]: s for s in fresh.client.exec.schedules.list_schedules()["schedules"]}
    ran_now = fresh.client.curl.schedules.get(ran["id"])
    done = fresh.run("ls")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rows = table(done.stdout)
    assert rows[0] == ["KIND", "ID/SCRIPT", "NAME", "CRON", "ENABLED", "NEXT", "LAST"]
    assert rows[1:] == [
        ["http", off["id"], "", NEVER, "no", "-", "-"],
        ["http", ran["id"], "ping", "0 0 12 * * *", "yes", ran_now["next_run"], "ok"],
        ["script", "ops/guarded.sh", "", NEVER, "yes", scripts["ops/guarded.sh"]["nextFire"], "-"],
        ["script", "ops/hello.sh", "says hello", NEVER, "yes", scripts["ops/hello.sh"]["nextFire"], "ok"],
    ]


def test_ls_kind_shows_one_kind_only(fresh):
    created = fresh.create()
    http_rows = table(fresh.run("ls", "--kind", "http").stdout)[1:]
    script_rows = table(fresh.run("ls", "--kind", "script").stdout)[1:]
    assert [(r[0], r[1]) for r in http_rows] == [("http", created["id"])]
    assert [(r[0], r[1]) for r in script_rows] == [("script", "ops/guarded.sh"), ("script", "ops/hello.sh")]


def test_ls_of_an_empty_server_is_the_header(tmp_path):
    with ServerProcess(tmp_path / "data", tmp_path / "scripts") as server:
        done = cli("ls", cwd=tmp_path, env={"SCHEDSERVER_URL": server.url, "SCHEDSERVER_TOKEN": server.token})
    assert done.returncode == 0
    assert table(done.stdout) == [["KIND", "ID/SCRIPT", "NAME", "CRON", "ENABLED", "NEXT", "LAST"]]


def test_ls_json_is_json_with_every_schedule_and_its_last_status(fresh):
    created = fresh.create(name="ping")
    fresh.client.curl.schedules.run(created["id"])
    fresh.client.exec.schedules.trigger_schedule(script_path="ops/hello.sh")
    entries = ok_json(fresh.run("ls", "--json"))
    assert len(entries) == 3

    def values(entry):
        return list(entry.values()) if isinstance(entry, dict) else list(entry)

    http_entry = next(values(e) for e in entries if created["id"] in values(e))
    script_entry = next(values(e) for e in entries if "ops/hello.sh" in values(e))
    assert "ping" in http_entry and "script" in values(script_entry)
    assert "ok" in script_entry
    assert "ok" in http_entry, f"ls --json leaves out the HTTP schedule's last status: {http_entry}"


###############################################################################
# One HTTP schedule: get, add, edit, enable, disable, rm #######################
###############################################################################

def test_get_prints_the_schedule_as_json(env):
    created = env.create(name="shown")
    assert ok_json(env.run("get", created["id"])) == env.client.curl.schedules.get(created["id"])


def test_add_creates_a_schedule_from_options(env):
    created = ok_json(env.run("add", "--cron", "0 */5 * * * *", "--url", env.target.url + "/hook",
                              "--method", "post", "--header", "X-Team:ops", "--header", "X-Pair: a:b",
                              "--json-body", '{"a": [1, 2]}', "--name", "ping", "--timezone", "Europe/Berlin",
                              "--retry", "2"))
    stored = env.client.curl.schedules.get(created["id"])
    assert stored["cron"] == "0 */5 * * * *" and stored["name"] == "ping" and stored["enabled"] is True
    assert stored["request"]["url"] == env.target.url + "/hook" and stored["request"]["method"] == "POST"
    assert stored["request"]["headers"] == {"X-Team": "ops", "X-Pair": "a:b"}
    assert stored["request"]["json"] == {"a": [1, 2]}
    assert stored["timezone"] == "Europe/Berlin" and stored["retry"]["count"] == 2


def test_add_with_a_body_and_disabled(env):
    created = ok_json(env.run("add", "--cron", NEVER, "--url", env.target.url + "/b", "--method", "PUT",
                              "--body", "plain text", "--disabled"))
    stored = env.client.curl.schedules.get(created["id"])
    assert stored["request"]["body"] == "plain text" and stored["enabled"] is False


def test_add_a_bad_schedule_is_refused_by_the_server_with_exit_1(env):
    refused(env.run("add", "--cron", "every blue moon", "--url", env.target.url),
            "400", "INVALID_CRON_EXPRESSION", "'every blue moon'")
    refused(env.run("add", "--cron", NEVER, "--url", "ftp://example.com/"), "400", "INVALID_PARAMETER")


def test_add_usage_errors_exit_2_before_asking_the_server(env):
    usage(env.run("add", "--url", env.target.url), "--cron")
    usage(env.run("add", "--cron", NEVER), "--url")
    usage(env.run("add", "--cron", NEVER, "--url", env.target.url, "--header", "no-colon"), "NAME:VALUE")
    usage(env.run("add", "--cron", NEVER, "--url", env.target.url, "--json-body", "{not json"), "--json-body")
    usage(env.run("add", "--cron", NEVER, "--url", env.target.url, "--retry", "two"))


def test_edit_changes_the_given_fields(env):
    created = env.create(name="before", request={"url": env.target.url + "/old", "headers": {"X-A": "1"}})
    edited = ok_json(env.run("edit", created["id"], "--cron", "0 0 6 * * *", "--name", "after"))
    assert (edited["id"], edited["cron"], edited["name"]) == (created["id"], "0 0 6 * * *", "after")
    assert edited["request"]["headers"] == {"X-A": "1"}                 # not named: kept
    replaced = ok_json(env.run("edit", created["id"], "--url", env.target.url + "/new", "--method", "DELETE"))
    assert replaced["request"]["url"] == env.target.url + "/new" and replaced["request"]["method"] == "DELETE"
    assert replaced["request"]["headers"] == {}                         # --url replaces the whole request
    assert env.client.curl.schedules.get(created["id"])["name"] == "after"


def test_edit_request_options_without_url_are_a_usage_error(env):
    created = env.create()
    usage(env.run("edit", created["id"], "--method", "POST"), "--url")
    assert env.client.curl.schedules.get(created["id"])["request"]["method"] == "GET"


def test_disable_and_enable_set_the_state(env):
    created = env.create()
    assert ok_json(env.run("disable", created["id"])) == {"id": created["id"], "enabled": False, "next_run": None}
    assert ok_json(env.run("disable", created["id"]))["enabled"] is False        # not a flip
    enabled = ok_json(env.run("enable", created["id"]))
    assert enabled["enabled"] is True and enabled["next_run"]
    assert env.client.curl.schedules.get(created["id"])["enabled"] is True


def test_rm_deletes_and_a_second_rm_is_refused(env):
    created = env.create()
    assert ok_json(env.run("rm", created["id"])) == {"id": created["id"]}
    refused(env.run("rm", created["id"]), "404", "SCHEDULE_NOT_FOUND")
    refused(env.run("get", created["id"]), "404", "SCHEDULE_NOT_FOUND")


###############################################################################
# run, runs, history, reload ###################################################
###############################################################################

def test_run_with_an_id_runs_the_http_schedule_and_prints_the_run(env):
    path = "/run-" + uuid.uuid4().hex
    created = env.create(request={"url": env.target.url + path})
    run = ok_json(env.run("run", created["id"]))
    assert (run["schedule_id"], run["trigger"], run["status"], run["status_code"]) == (created["id"], "manual",
                                                                                       "ok", 200)
    assert len(env.target.received(path)) == 1


def test_run_with_a_path_triggers_the_script(env):
    answer = ok_json(env.run("run", "ops/hello.sh"))
    assert (answer["scriptPath"], answer["status"], answer["returnPreview"]) == ("ops/hello.sh", "ok",
                                                                                 "hello from ops/hello.sh")


def test_run_of_a_token_script_needs_force(env):
    refused(env.run("run", "ops/guarded.sh"), "403", "FORBIDDEN", "@token")
    assert ok_json(env.run("run", "ops/guarded.sh", "--force"))["returnPreview"] == "guarded ran"


def test_run_of_an_unknown_script_or_schedule_is_refused(env):
    refused(env.run("run", "ops/nope.sh"), "404", "NOT_FOUND", "ops/nope.sh")
    refused(env.run("run", str(uuid.uuid4())), "404", "SCHEDULE_NOT_FOUND")


def test_runs_prints_a_page_of_an_http_schedules_runs(env):
    created = env.create()
    run_ids = [env.client.curl.schedules.run(created["id"])["run_id"] for _ in range(3)]
    page = ok_json(env.run("runs", created["id"], "--limit", "2"))
    assert [r["run_id"] for r in page["items"]] == list(reversed(run_ids))[:2]
    assert page["next_cursor"]
    assert [r["run_id"] for r in ok_json(env.run("history", created["id"]))["items"]] == list(reversed(run_ids))


def test_history_prints_a_scripts_fires(env):
    run_ids = [env.client.exec.schedules.trigger_schedule(script_path="ops/hello.sh")["runId"] for _ in range(2)]
    history = ok_json(env.run("history", "ops/hello.sh", "--limit", "1"))
    assert [e["runId"] for e in history["entries"]] == [run_ids[-1]]
    everything = ok_json(env.run("runs"))
    assert {e["scriptPath"] for e in everything["entries"]} >= {"ops/hello.sh"}
    assert run_ids[0] in [e["runId"] for e in everything["entries"]]


def test_reload_dry_run_previews_and_reload_applies(fresh):
    (fresh.server.scripts_dir / "new.sh").write_text("#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho new\n")
    preview = ok_json(fresh.run("reload", "--dry-run"))
    assert preview["dry_run"] is True and preview["added"] == ["new.sh"]
    assert fresh.client.exec.schedules.list_schedules()["total"] == 2
    applied = ok_json(fresh.run("reload"))
    assert applied["dry_run"] is False and applied["added"] == ["new.sh"]
    assert fresh.client.exec.schedules.list_schedules()["total"] == 3


###############################################################################
# Where the server and the token come from #####################################
###############################################################################

def test_url_and_token_flags(env):
    done = cli("ls", "--kind", "script", "--url", env.server.url, "--token", env.server.token, cwd=env.cwd)
    assert done.returncode == 0 and "ops/hello.sh" in done.stdout
    done = cli("ls", "--kind", "script", "--server", env.server.url, "--token", env.server.token, cwd=env.cwd)
    assert done.returncode == 0 and "ops/hello.sh" in done.stdout


def test_add_and_edit_take_the_server_from_server_because_url_is_the_target(env):
    created = ok_json(cli("add", "--server", env.server.url, "--token", env.server.token, "--cron", NEVER,
                          "--url", env.target.url + "/t", cwd=env.cwd))
    assert created["request"]["url"] == env.target.url + "/t"
    edited = ok_json(cli("edit", created["id"], "--server", env.server.url, "--token", env.server.token,
                         "--name", "n", cwd=env.cwd))
    assert edited["name"] == "n"


def test_url_and_token_from_the_environment(env):
    done = cli("ls", "--kind", "script", cwd=env.cwd, env=env.connection)
    assert done.returncode == 0 and "ops/hello.sh" in done.stdout
    done = cli("ls", "--kind", "script", cwd=env.cwd,
               env={**env.connection, "SCHEDSERVER_TOKEN": f"{env.server.token},another-token"})
    assert done.returncode == 0, done.stderr


def test_flags_win_over_the_environment(env):
    wrong = {"SCHEDSERVER_URL": f"http://127.0.0.1:{free_port()}", "SCHEDSERVER_TOKEN": "wrong-token"}
    done = cli("ls", "--url", env.server.url, "--token", env.server.token, cwd=env.cwd, env=wrong)
    assert done.returncode == 0, done.stderr
    refused(cli("ls", "--token", "wrong-token", cwd=env.cwd, env=env.connection), "401", "UNAUTHORIZED")


def start_configured(root: Path, config_text: str, token: str | None) -> ServerProcess:
    """The real server started from a TOML file only (plus the token in its environment, if any)."""
    (root / "schedserver.toml").write_text(config_text)
    server = ServerProcess(root / "data", root / "scripts", token=token)
    server.argv = [sys.executable, "-m", "schedserver", "serve", "--config", str(root / "schedserver.toml")]
    return server.start()


def test_url_and_token_from_the_local_config_and_the_data_dirs_generated_token(tmp_path):
    port = free_port()
    server = start_configured(tmp_path, f'[server]\nport = {port}\ndata_dir = "data"\nscripts_dir = "scripts"\n',
                              token=None)
    try:
        assert (tmp_path / "data" / "api-token").exists()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        done = cli("ls", "--config", str(tmp_path / "schedserver.toml"), cwd=elsewhere)
        assert done.returncode == 0, done.stderr
        done = cli("ls", cwd=elsewhere, env={"SCHEDSERVER_CONFIG": str(tmp_path / "schedserver.toml")})
        assert done.returncode == 0, done.stderr
    finally:
        server.stop()


def test_token_from_the_configs_tokens_and_token_file(tmp_path):
    port = free_port()
    (tmp_path / "token-file").write_text("file-token-1234\n")
    config = (f'[server]\nport = {port}\ndata_dir = "data"\nscripts_dir = "scripts"\n'
              '[auth]\ntoken_file = "token-file"\n')
    server = start_configured(tmp_path, config, token=None)
    try:
        done = cli("ls", "--config", str(tmp_path / "schedserver.toml"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert not (tmp_path / "data" / "api-token").exists()
    finally:
        server.stop()
    config = (f'[server]\nport = {port}\ndata_dir = "data"\nscripts_dir = "scripts"\n'
              '[auth]\ntokens = ["config-token-5678"]\n')
    server = start_configured(tmp_path, config, token=None)
    try:
        done = cli("ls", "--config", str(tmp_path / "schedserver.toml"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    finally:
        server.stop()


def test_a_comma_separated_token_list_works_wherever_the_url_comes_from(tmp_path):
    """SCHEDSERVER_TOKEN holds the server's comma-separated admin tokens; the CLI sends one of them, whether the
    URL comes from SCHEDSERVER_URL or from the config."""
    port = free_port()
    tokens = "env-token-one-1111,env-token-two-2222"
    server = start_configured(tmp_path, f'[server]\nport = {port}\ndata_dir = "data"\nscripts_dir = "scripts"\n',
                              token=tokens)
    try:
        with_url = cli("ls", cwd=tmp_path, env={"SCHEDSERVER_URL": server.url, "SCHEDSERVER_TOKEN": tokens})
        assert with_url.returncode == 0, with_url.stderr
        from_config = cli("ls", "--config", str(tmp_path / "schedserver.toml"), cwd=tmp_path,
                          env={"SCHEDSERVER_TOKEN": tokens})
        assert from_config.returncode == 0, from_config.stderr
    finally:
        server.stop()


def test_a_token_file_with_several_tokens(tmp_path):
    """The server reads a token file split on commas and white space; the CLI must send one token of it."""
    port = free_port()
    (tmp_path / "token-file").write_text("file-token-a-1234,file-token-b-5678\n")
    config = (f'[server]\nport = {port}\ndata_dir = "data"\nscripts_dir = "scripts"\n'
              '[auth]\ntoken_file = "token-file"\n')
    server = start_configured(tmp_path, config, token=None)
    try:
        assert server.api("GET", "/api/v1/curl/schedule", token="file-token-b-5678").status_code == 200
        done = cli("ls", "--config", str(tmp_path / "schedserver.toml"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    finally:
        server.stop()


def test_the_url_from_the_environment_with_the_token_from_the_config(tmp_path, env):
    (tmp_path / "c.toml").write_text(f'[auth]\ntokens = ["{env.server.token}"]\n')
    done = cli("ls", "--kind", "script", "--config", str(tmp_path / "c.toml"), cwd=tmp_path,
               env={"SCHEDSERVER_URL": env.server.url})
    assert done.returncode == 0 and "ops/hello.sh" in done.stdout, done.stderr


###############################################################################
# Exit codes ###################################################################
###############################################################################

def test_a_wrong_token_exits_1_with_the_servers_message_and_never_shows_the_token(env):
    stderr = refused(env.run("ls", SCHEDSERVER_TOKEN="not-the-token-42"), "401", "UNAUTHORIZED",
                     "Missing or invalid bearer token")
    assert "not-the-token-42" not in stderr


def test_an_unreachable_server_exits_1(env):
    stderr = refused(env.run("ls", SCHEDSERVER_URL=f"http://127.0.0.1:{free_port()}"), "UNREACHABLE", "cannot reach")
    assert env.server.token not in stderr
    assert not stderr.startswith("schedserver: 500 "), f"no server answered, yet: {stderr}"


@pytest.mark.parametrize("args", [
    ("get",),                                   # the id is missing
    ("ls", "--kind", "cron"),
    ("ls", "--frobnicate"),
    ("runs", "x", "--limit", "many"),
    ("next",),
    ("next", "0 0 * * * *", "-n", "x"),
])
def test_usage_errors_exit_2(env, args):
    usage(env.run(*args))


def test_an_unreadable_config_exits_2(env, tmp_path):
    (tmp_path / "bad.toml").write_text("[server\n")
    usage(cli("ls", "--config", str(tmp_path / "bad.toml"), cwd=tmp_path), "bad.toml")


def test_help_and_version_exit_0(tmp_path):
    for args in (("--help",), ("ls", "--help"), ("--version",)):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr)
    assert cli("--version", cwd=tmp_path).stdout.strip() == f"schedserver {schedserver.__version__}"


###############################################################################
# serve stays the default ######################################################
###############################################################################

def serve_until_listening(argv: list[str], cwd: Path, timeout: float = 15.0) -> tuple[int | None, str]:
    """Start `python -m schedserver ARGV`; wait (bounded) for its listening line, then SIGTERM it. (exit
    status when it exited by itself before listening, else None; its stderr)."""
    env = schedserver_env()
    proc = subprocess.Popen([sys.executable, "-m", "schedserver", *argv], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if LISTENING.search(line):
                listening.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not listening.wait(0.05) and proc.poll() is None and time.monotonic() < deadline:
        pass
    exited = proc.poll()
    if exited is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(timeout=5)
    proc.stderr.close()
    return (None if listening.is_set() else exited if exited is not None else -1), "".join(lines)


def test_serve_is_the_default_command(tmp_path):
    exited, stderr = serve_until_listening(["--port", "0", "--data-dir", str(tmp_path / "data"),
                                            "--scripts-dir", str(tmp_path / "scripts")], tmp_path)
    assert exited is None, stderr


@pytest.mark.parametrize("name", ["run", "history", "check"])
def test_serve_is_the_default_even_when_an_option_value_is_a_command_name(tmp_path, name):
    """`schedserver --data-dir run` is a server whose data dir is ./run, not the `run` command."""
    exited, stderr = serve_until_listening(["--port", "0", "--data-dir", name, "--scripts-dir", "scripts"],
                                           tmp_path)
    assert exited is None, stderr
    assert (tmp_path / name).is_dir()


###############################################################################
# next (no server) #############################################################
###############################################################################

def next_lines(expression: str, zone: str, n: int, at: float) -> list[str]:
    answer = schedserver.cron_preview_answer(expression, zone, n, at)
    return [answer["description"]] + [f"{f['local']}  {f['at']}" for f in answer["next"]]


def assert_next(done: subprocess.CompletedProcess, expression: str, zone: str, n: int, before: float,
                after: float) -> None:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines in (next_lines(expression, zone, n, before), next_lines(expression, zone, n, after)), lines


def test_next_prints_the_expression_in_plain_english_and_its_next_fires(tmp_path):
    before = time.time()
    done = cli("next", "0 30 2 * * *", "--tz", "Europe/Berlin", "-n", "3", cwd=tmp_path)
    assert_next(done, "0 30 2 * * *", "Europe/Berlin", 3, before, time.time())
    lines = done.stdout.splitlines()
    assert lines[0] == "at 02:30" and len(lines) == 4
    for line in lines[1:]:
        local, utc = line.split("  ")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT02:30:00\+0[12]:00", local), local
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT0[01]:30:00Z", utc), utc


def test_next_defaults_to_five_fires_in_utc(tmp_path):
    before = time.time()
    done = cli("next", "@daily", cwd=tmp_path)
    assert_next(done, "@daily", "UTC", 5, before, time.time())
    assert len(done.stdout.splitlines()) == 6


def test_next_takes_five_field_expressions(tmp_path):
    before = time.time()
    done = cli("next", "*/15 * * * *", "-n", "2", cwd=tmp_path)
    assert_next(done, "*/15 * * * *", "UTC", 2, before, time.time())
    assert done.stdout.splitlines()[0] == "every 15 minutes"


def test_next_needs_no_server(tmp_path):
    done = cli("next", "0 0 12 * * *", cwd=tmp_path, env={"SCHEDSERVER_URL": f"http://127.0.0.1:{free_port()}",
                                                          "SCHEDSERVER_CONFIG": str(tmp_path / "missing.toml")})
    assert done.returncode == 0 and done.stdout.startswith("at 12:00\n"), done.stderr


def test_next_refuses_a_bad_expression_or_zone_with_exit_2(tmp_path):
    usage(cli("next", "every blue moon", cwd=tmp_path), "Invalid cron expression", "'every blue moon'")
    usage(cli("next", "0 0 0 30 2 *", cwd=tmp_path), "never fires")
    usage(cli("next", "0 0 12 * * *", "--tz", "Mars/Olympus", cwd=tmp_path), "Mars/Olympus")
    usage(cli("next", "0 0 12 * * *", "--tz", "posix/Europe/Berlin", cwd=tmp_path))


def test_next_prints_what_the_servers_preview_answers(env):
    before = time.time()
    done = cli("next", "0 0 9 * * MON-FRI", "--tz", "America/New_York", "-n", "4", cwd=env.cwd)
    answer = env.server.api("GET", PREVIEW, params={"expr": "0 0 9 * * MON-FRI", "timezone": "America/New_York",
                                                    "n": "4"})
    after = time.time()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    from_server = [body["description"]] + [f"{f['local']}  {f['at']}" for f in body["next"]]
    assert done.returncode == 0
    assert done.stdout.splitlines() == from_server or \
        next_lines("0 0 9 * * MON-FRI", "America/New_York", 4, before) != \
        next_lines("0 0 9 * * MON-FRI", "America/New_York", 4, after)          # a fire passed in between


###############################################################################
# check (no server) ############################################################
###############################################################################

@pytest.fixture
def scripts_dir(tmp_path) -> Path:
    d = tmp_path / "scripts"
    (d / "ops").mkdir(parents=True)
    (d / "ops" / "good.sh").write_text("#!/bin/sh\n# @schedule 0 0 * * * *\necho good\n")
    (d / "job.py").write_text("# @schedule */5 * * * *\nprint('ok')\n")
    (d / "plain.sh").write_text("#!/bin/sh\necho no schedule here\n")
    return d


def test_check_of_a_good_scripts_dir_exits_0_and_lists_each_script(scripts_dir, tmp_path):
    done = cli("check", "--scripts-dir", str(scripts_dir), cwd=tmp_path)
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert lines == ["ok      job.py  */5 * * * *  (every 5 minutes)",
                     "ok      ops/good.sh  0 0 * * * *  (every hour)"]


def test_check_exits_1_when_any_script_fails_and_says_why(scripts_dir, tmp_path):
    (scripts_dir / "bad-cron.sh").write_text("#!/bin/sh\n# @schedule every blue moon\n")
    (scripts_dir / "syntax.sh").write_text("#!/bin/sh\n# @schedule 0 0 * * * *\nif then fi\n")
    (scripts_dir / "syntax.py").write_text("# @schedule 0 0 * * * *\ndef f(:\n")
    done = cli("check", "--scripts-dir", str(scripts_dir), cwd=tmp_path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    failed = {line.split()[1].rstrip(":"): line for line in done.stdout.splitlines() if line.startswith("FAILED")}
    assert set(failed) == {"bad-cron.sh", "syntax.sh", "syntax.py"}
    assert "Invalid cron expression" in failed["bad-cron.sh"]
    assert "preflight failed" in failed["syntax.sh"] and "preflight failed" in failed["syntax.py"]
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("ok")] == ["job.py",
                                                                                               "ops/good.sh"]


def test_check_of_named_scripts(scripts_dir, tmp_path):
    (scripts_dir / "syntax.sh").write_text("#!/bin/sh\n# @schedule 0 0 * * * *\nif then fi\n")
    good = cli("check", str(scripts_dir / "ops" / "good.sh"), "scripts/job.py", cwd=tmp_path)
    assert good.returncode == 0 and [line.split()[0] for line in good.stdout.splitlines()] == ["ok", "ok"]
    plain = cli("check", "scripts/plain.sh", cwd=tmp_path)
    assert plain.returncode == 0 and plain.stdout.startswith("skip    scripts/plain.sh: no @schedule")
    mixed = cli("check", "scripts/ops/good.sh", "scripts/syntax.sh", "scripts/missing.sh", cwd=tmp_path)
    assert mixed.returncode == 1
    assert [line.split()[0] for line in mixed.stdout.splitlines()] == ["ok", "FAILED", "FAILED"]
    assert "no such file" in mixed.stdout.splitlines()[2]


def test_check_finds_the_scripts_dir_in_the_config_or_environment(scripts_dir, tmp_path):
    (scripts_dir / "syntax.sh").write_text("#!/bin/sh\n# @schedule 0 0 * * * *\nif then fi\n")
    (tmp_path / "c.toml").write_text('[server]\nscripts_dir = "scripts"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for done in (cli("check", "--config", str(tmp_path / "c.toml"), cwd=elsewhere),
                 cli("check", cwd=elsewhere, env={"SCHEDSERVER_SCRIPTS_DIR": str(scripts_dir)}),
                 cli("check", cwd=tmp_path)):                       # the default ./scripts
        assert done.returncode == 1 and "FAILED  syntax.sh" in done.stdout, (done.stdout, done.stderr)


def test_check_of_a_scripts_dir_that_does_not_exist_fails(tmp_path):
    """A typo in CI must not pass: nothing was checked."""
    done = cli("check", "--scripts-dir", str(tmp_path / "no-such-dir"), cwd=tmp_path)
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "no-such-dir" in done.stdout + done.stderr


def test_check_needs_no_server(scripts_dir, tmp_path):
    done = cli("check", "--scripts-dir", str(scripts_dir), cwd=tmp_path,
               env={"SCHEDSERVER_URL": f"http://127.0.0.1:{free_port()}", "SCHEDSERVER_TOKEN": "x"})
    assert done.returncode == 0, done.stderr


###############################################################################
# GET /api/v1/cron/preview #####################################################
###############################################################################

@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path, FakeClock("2025-01-10T12:00:00Z"))
    yield s
    s.close()


def test_preview_answers_the_description_and_the_next_fires_in_the_zone(stack):
    answer = stack.app.get(PREVIEW, {"expr": "0 30 2 * * *", "timezone": "Europe/Berlin", "n": "3"}, headers=ADMIN)
    assert answer.json == {"expression": "0 30 2 * * *", "description": "at 02:30", "timezone": "Europe/Berlin",
                           "next": [{"at": "2025-01-11T01:30:00Z", "local": "2025-01-11T02:30:00+01:00"},
                                    {"at": "2025-01-12T01:30:00Z", "local": "2025-01-12T02:30:00+01:00"},
                                    {"at": "2025-01-13T01:30:00Z", "local": "2025-01-13T02:30:00+01:00"}]}


def test_preview_follows_a_daylight_saving_change(stack):
    stack.clock.set("2025-03-29T12:00:00Z")          # Berlin moves to +02:00 in the night of the 30th
    answer = stack.app.get(PREVIEW, {"expr": "0 0 12 * * *", "timezone": "Europe/Berlin", "n": "2"}, headers=ADMIN)
    assert answer.json["next"] == [{"at": "2025-03-30T10:00:00Z", "local": "2025-03-30T12:00:00+02:00"},
                                   {"at": "2025-03-31T10:00:00Z", "local": "2025-03-31T12:00:00+02:00"}]


def test_preview_defaults_to_five_fires_in_the_servers_zone(tmp_path):
    with Stack(tmp_path, FakeClock("2025-01-10T12:00:00Z"), timezone="America/New_York") as s:
        answer = s.app.get(PREVIEW, {"expr": "0 0 9 * * *"}, headers=READ).json
    assert answer["timezone"] == "America/New_York"
    assert [f["at"] for f in answer["next"]] == [f"2025-01-{d}T14:00:00Z" for d in (10, 11, 12, 13, 14)]


def test_preview_takes_five_field_expressions_and_macros(stack):
    five = stack.app.get(PREVIEW, {"expr": "*/15 * * * *", "n": "2"}, headers=ADMIN).json
    assert five["expression"] == "*/15 * * * *" and [f["at"] for f in five["next"]] == ["2025-01-10T12:15:00Z",
                                                                                       "2025-01-10T12:30:00Z"]
    daily = stack.app.get(PREVIEW, {"expr": "@daily", "n": "1"}, headers=ADMIN).json
    assert daily["next"] == [{"at": "2025-01-11T00:00:00Z", "local": "2025-01-11T00:00:00+00:00"}]


def test_preview_n_goes_up_to_100(stack):
    assert len(stack.app.get(PREVIEW, {"expr": "* * * * * *", "n": "100"}, headers=ADMIN).json["next"]) == 100


def test_preview_needs_a_token_and_takes_a_read_only_one(stack):
    none = stack.app.get(PREVIEW, {"expr": "0 0 9 * * *"}, expect_errors=True)
    assert none.status_int == 401 and none.headers["WWW-Authenticate"] == "Bearer"
    assert none.json == {"error": "UNAUTHORIZED", "message": "Missing or invalid bearer token"}
    wrong = stack.app.get(PREVIEW, {"expr": "0 0 9 * * *"}, headers={"Authorization": "Bearer nope"},
                          expect_errors=True)
    assert wrong.status_int == 401
    assert stack.app.get(PREVIEW, {"expr": "0 0 9 * * *"}, headers=READ).status_int == 200
    assert stack.app.get(PREVIEW, {"expr": "0 0 9 * * *"}, headers=ADMIN).status_int == 200


def test_preview_is_get_only(stack):
    response = stack.app.post(PREVIEW + "?expr=0+0+9+*+*+*", headers=ADMIN, expect_errors=True)
    assert response.status_int == 405 and response.json["error"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("query, code, mention", [
    ({}, "INVALID_PARAMETER", "expr is required"),
    ({"expr": "every blue moon"}, "INVALID_CRON_EXPRESSION", "'every blue moon'"),
    ({"expr": "0 0 0 30 2 *"}, "INVALID_CRON_EXPRESSION", "never fires"),
    ({"expr": "0 0 9 * * *", "timezone": "Mars/Olympus"}, "INVALID_PARAMETER", "Mars/Olympus"),
    ({"expr": "0 0 9 * * *", "timezone": "posix/Europe/Berlin"}, "INVALID_PARAMETER", "timezone"),
    ({"expr": "0 0 9 * * *", "n": "0"}, "INVALID_PARAMETER", "n must be"),
    ({"expr": "0 0 9 * * *", "n": "101"}, "INVALID_PARAMETER", "n must be"),
    ({"expr": "0 0 9 * * *", "n": "five"}, "INVALID_PARAMETER", "n must be"),
    ({"expr": "0 0 9 * * *", "tz": "UTC"}, "INVALID_PARAMETER", "unknown query parameter"),
    ({"expr": ""}, "INVALID_PARAMETER", "expr"),
])
def test_preview_refuses_bad_queries_with_400_in_the_http_error_shape(stack, query, code, mention):
    response = stack.app.get(PREVIEW, query, headers=ADMIN, expect_errors=True)
    assert response.status_int == 400, response.body
    assert set(response.json) == {"error", "message"} and response.json["error"] == code
    assert mention in response.json["message"]


def test_preview_through_the_real_server(env):
    response = env.server.api("GET", PREVIEW, params={"expr": "0 0 12 * * *", "n": "2"})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert response.json()["description"] == "at 12:00" and len(response.json()["next"]) == 2
    assert env.server.api("GET", PREVIEW, params={"expr": "0 0 12 * * *"}, token=None).status_code == 401
