"""Unit tests for script schedules: directives, discovery, registration, reload, firing, history, the runner,
and what a script leaves behind.

Scripts are real files in a temporary scripts tree, and runs are real subprocesses where the test is about
running (the runner, the environment, timeouts); elsewhere a hand-written instant runner stands in. The services
are the real server's (tests/harness.py's Stack: a fake clock, a worker pool that runs only when told, no ticker
thread): cron fires are driven with a tick at the fake clock's time, and the handed-over work is then run inline.
A few tests run the real server process (tests/e2e_helpers.py), or a runner in a subprocess of their own where
the process must become a child subreaper (the pytest process is never changed).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from datetime import datetime
from pathlib import Path

import pytest

import schedserver
from e2e_helpers import REPO_ROOT, ServerProcess, schedserver_env
from fakes import FakeClock
from harness import Stack
from schedserver import (HEADER_BYTES, MAX_OUTPUT_BYTES, InvalidParameter, OutputTail, RegistrationError, Run,
                         RunResult, ScriptRunner, ScriptTarget, discover_scripts, job_key, parse_directives,
                         parse_iso, parse_timeout, script_identity, utc_iso)


def at(text: str) -> float:
    """An ISO 8601 UTC instant as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


NOW = at("2026-01-15T11:59:30.250Z")
HOURLY = "# @schedule 0 * * * *\necho hourly\n"
EXEC_PATH = "/api/v1/exec/schedules"


###############################################################################
# Fakes and the harness ########################################################
###############################################################################

class InstantRunner:
    """A script runner that ends every run at once, printing `preview` (or holds runs until release() when
    `hold`); remembers the runs it was given."""

    kind = "script"

    def __init__(self, clock: FakeClock, preview: str = "done"):
        self.clock = clock
        self.preview = preview
        self.calls: list[Run] = []
        self.hold = False
        self._held: list[tuple[Run, object]] = []

    def start(self, run: Run, on_end) -> None:
        self.calls.append(run)
        if self.hold:
            self._held.append((run, on_end))
            return
        on_end(self._result())

    def _result(self) -> RunResult:
        return RunResult("ok", self.clock(), 3, return_preview=self.preview, exit_code=0)

    def release(self) -> int:
        held, self._held = self._held, []
        for _, on_end in held:
            on_end(self._result())
        return len(held)

    def cancel(self, run: Run) -> None:
        for i, (held, on_end) in enumerate(self._held):
            if held is run:
                del self._held[i]
                on_end(RunResult("error", self.clock(), 0, error=run.cancelled))
                return

    def close(self) -> None:
        pass


class Scripts:
    """The real server over `tmp_path`/scripts and `tmp_path`/data (a harness Stack: fake clock, recording pool),
    seen from the script surface, with helpers that read like the feature.

    With the default (real) ScriptRunner, scripts get the environment the server gives its own runner (API tokens
    taken out) and a short kill grace.
    """

    def __init__(self, tmp_path: Path, clock: FakeClock | None = None, *, runner=None, load: bool = True,
                 made: list | None = None, **config):
        self.tmp_path = tmp_path
        self.root = tmp_path / "scripts"
        self.data = tmp_path / "data"
        self.root.mkdir(exist_ok=True)
        self.data.mkdir(mode=0o700, exist_ok=True)
        self.clock = clock or FakeClock(NOW)
        self.config = config
        self.made = made if made is not None else []
        self.stack = Stack(tmp_path, self.clock, script_runner=runner, load=False, **config)
        self.made.append(self)
        self.server = self.stack.server
        self.runner = self.stack.script_runner
        if isinstance(self.runner, ScriptRunner):
            self.runner.kill_grace = 0.2
            self.runner.environment = lambda extra: self.server.environment(extra)
        self.scripts = self.server.scripts
        self.catalog = self.server.catalog
        self.scheduler = self.server.scheduler
        self.recorder = self.server.recorder
        self.fires = self.server.logs["script"]
        self.pool = self.stack.pool
        self._count_ends()
        if load:
            self.start()

    def _count_ends(self) -> None:
        """Count runs handed to the runner and runs whose end has been recorded. (The recorder takes a run out
        of flight before it writes its record, so `recorder.count() == 0` alone may come before the record.)"""
        self._begun = self._ended = 0
        lock = threading.Lock()
        start = self.runner.start

        def counted_start(run: Run, on_end) -> None:
            with lock:
                self._begun += 1

            def ended(result: RunResult) -> None:
                try:
                    on_end(result)
                finally:
                    with lock:
                        self._ended += 1
            start(run, ended)
        self.runner.start = counted_start

    def start(self) -> None:
        """Load as at server start: the data dir, the run state, the registry, a scan."""
        self.server.load()

    def close(self) -> None:
        self.stack.close()

    def restart(self, runner=None) -> "Scripts":
        """A fresh server on the same files, loaded as at a (clean) server start. A fake runner is kept; a
        real one is closed with its server, so the new server gets a new one."""
        self.close()
        if runner is None and not isinstance(self.runner, ScriptRunner):
            runner = self.runner
        return Scripts(self.tmp_path, self.clock, runner=runner, made=self.made, **self.config)

    def write(self, rel: str, text: str, executable: bool = False) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if executable:
            path.chmod(0o755)
        return str(path)

    def edit_now(self, rel: str, text: str) -> None:
        """Write `rel` with a modification time of the fake clock's now, as if edited at that moment."""
        self.write(rel, text)
        os.utime(self.root / rel, (self.clock(), self.clock()))

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink()

    def reason(self, rel: str) -> str:
        """Why `rel` cannot be registered (the test fails if it can)."""
        with pytest.raises(RegistrationError) as caught:
            self.catalog.inspect(rel)
        return str(caught.value)

    def registered(self) -> list[str]:
        return [item["scriptRel"] for item in self.scripts.list()["schedules"]]

    def item(self, rel: str) -> dict:
        return next(item for item in self.scripts.list()["schedules"] if item["scriptRel"] == rel)

    def idle(self) -> bool:
        """No run in flight, and the end of every run handed to the runner recorded."""
        return self.recorder.count() == 0 and self._begun == self._ended

    def tick(self, when: str) -> int:
        """Set the clock, tick, and run inline what the ticker handed over (how many hand-overs that was), then
        wait (bounded) for the runs' ends, which come from the reaper thread once the scripts have exited."""
        self.clock.set(when)
        handed_over = len(self.stack.tick())
        self.pool.run_all(until=self.idle)
        return handed_over

    def log_lines(self) -> list[dict]:
        """The fires log, oldest first."""
        path = self.data / "fires.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def markers(self) -> list[dict]:
        """The run markers on disk (runs in flight)."""
        running = self.data / "running"
        return [json.loads(p.read_text()) for p in sorted(running.glob("*.json"))] if running.exists() else []


@pytest.fixture
def made():
    """Every Scripts a test makes (restarts included), closed at its end."""
    made: list[Scripts] = []
    yield made
    for scripts in reversed(made):
        scripts.close()


@pytest.fixture
def new(tmp_path, made):
    """Make a Scripts over tmp_path: new(clock=None, runner=None, load=True, **config)."""
    def make(clock: FakeClock | None = None, **kwargs) -> Scripts:
        return Scripts(tmp_path, clock, made=made, **kwargs)
    return make


@pytest.fixture
def h(new) -> Scripts:
    return new()


def fire_record(rel: str, ts: str, status: str = "ok", trigger: str = "cron", **extra) -> dict:
    record = {"ts": ts, "scriptPath": rel, "expression": "0 * * * *", "runId": str(uuid.uuid4()),
              "status": status, "durationMs": 7, "trigger": trigger}
    record.update({"returnPreview": "fine"} if status == "ok" else {"error": "it broke"})
    record.update(extra)
    return record


def process_state(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def live_processes_in_group(pgid: int) -> list[int]:
    """Pids of processes in group `pgid` that are still alive (zombies waiting for a reaper do not count)."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = process_state(int(entry))
            if info is not None and info[1] == pgid and info[0] not in ("Z", "X"):
                alive.append(int(entry))
    return alive


def is_alive(pid: int) -> bool:
    info = process_state(pid)
    return info is not None and info[0] not in ("Z", "X")


def processes_with(marker: str, but: tuple[int, ...] = ()) -> list[int]:
    """Pids of live processes whose command line holds `marker` (this one and `but` aside)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline and is_alive(int(entry)) and int(entry) not in (os.getpid(), *but):
            found.append(int(entry))
    return found


def kill_processes_with(marker: str, but: tuple[int, ...] = ()) -> None:
    for pid in processes_with(marker, but):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def unique_marker() -> str:
    """A sleep duration no other process has in its command line: `1000.<random digits>`."""
    return f"1000.{uuid.uuid4().int % 10**12:012d}"


def wait_until(condition, deadline_seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


###############################################################################
# Directives ###################################################################
###############################################################################

@pytest.mark.parametrize("marker", ["#", "//", "--", ";"])
def test_a_directive_is_read_from_every_line_comment_style(marker):
    head = f"{marker} @schedule */5 * * * *\n{marker} @timeout 30s\nrun()\n"
    assert parse_directives(head) == [("schedule", "*/5 * * * *"), ("timeout", "30s")]


def test_directives_are_read_from_a_block_comment_with_star_lines():
    head = "/*\n * @schedule 0 3 * * *\n * @description nightly backup\n */\nconsole.log(1)\n"
    assert parse_directives(head) == [("schedule", "0 3 * * *"), ("description", "nightly backup")]


def test_the_header_goes_on_after_a_closing_star_slash_line():
    head = "/**\n * @schedule 0 3 * * *\n */\n// @timeout 5m\nexport default 1\n"
    assert parse_directives(head) == [("schedule", "0 3 * * *"), ("timeout", "5m")]


def test_a_one_line_block_comment_holds_a_directive_without_its_closing_marker():
    assert parse_directives("/* @schedule 0 * * * * */\nmain()\n") == [("schedule", "0 * * * *")]


def test_a_shebang_on_the_first_line_is_skipped():
    head = "#!/usr/bin/env node\n// @schedule @hourly\nmain()\n"
    assert parse_directives(head) == [("schedule", "@hourly")]


def test_blank_lines_do_not_end_the_header():
    head = "#!/bin/sh\n\n# backs up the database\n\n   \n# @schedule 0 3 * * *\n\necho hi\n"
    assert parse_directives(head) == [("schedule", "0 3 * * *")]


def test_the_header_ends_at_the_first_line_that_is_not_a_comment():
    head = "# @schedule 0 3 * * *\necho start\n# @schedule 0 4 * * *\n# @websocket\n"
    assert parse_directives(head) == [("schedule", "0 3 * * *")]


def test_comment_lines_that_are_not_directives_are_passed_over():
    head = "# backup script, mail ops @ 3am if it fails\n# @token\n# @schedule 0 3 * * *\n"
    assert parse_directives(head) == [("token", ""), ("schedule", "0 3 * * *")]


def test_a_directive_past_the_first_16_kib_is_not_read(h):
    filler = "# " + "x" * 78 + "\n"
    padding = filler * (HEADER_BYTES // len(filler) + 2)
    assert len(padding) > HEADER_BYTES
    h.write("late.sh", padding + "# @schedule 0 * * * *\necho late\n")
    h.write("early.sh", "# @schedule 0 * * * *\n" + padding + "echo early\n")

    assert h.catalog.inspect("late.sh") is None
    assert h.catalog.inspect("early.sh").cron.expression == "0 * * * *"


def test_unknown_directives_are_ignored(h):
    h.write("job.sh", "# @author ops\n# @schedule 0 * * * *\n# @frobnicate yes please\necho hi\n")
    assert h.catalog.inspect("job.sh").cron.expression == "0 * * * *"


def test_a_script_without_a_schedule_directive_is_not_a_schedule(h):
    h.write("tool.sh", "# @description a helper other scripts call\necho hi\n")
    assert h.catalog.inspect("tool.sh") is None


def test_timeout_description_and_token_directives_are_registered(h):
    h.write("job.sh", "# @schedule 0 3 * * *\n# @timeout 5m\n# @description nightly backup\n# @token\necho hi\n")
    definition = h.catalog.inspect("job.sh")
    assert (definition.timeout_ms, definition.description, definition.token) == (300000, "nightly backup", True)


def test_a_script_without_a_timeout_gets_the_configured_default(new):
    h = new(default_timeout_ms=12345)
    h.write("job.sh", HOURLY)
    definition = h.catalog.inspect("job.sh")
    assert (definition.timeout_ms, definition.description, definition.token) == (12345, None, False)


###############################################################################
# Timeouts #####################################################################
###############################################################################

@pytest.mark.parametrize("text, ms", [("500", 500), ("500ms", 500), ("30s", 30000), ("5m", 300000),
                                      ("1h", 3600000), ("24h", 86400000), (" 2s ", 2000)])
def test_a_timeout_is_milliseconds_or_a_number_with_a_unit(text, ms):
    assert parse_timeout(text) == ms


@pytest.mark.parametrize("text", ["abc", "0", "0ms", "-1", "25h", "", "1.5s", "5 minutes"])
def test_an_invalid_timeout_is_refused_with_a_reason(text):
    with pytest.raises(RegistrationError) as caught:
        parse_timeout(text)
    assert str(caught.value).startswith("invalid @timeout: ")
    assert repr(text) in str(caught.value)


###############################################################################
# Identity and discovery #######################################################
###############################################################################

def test_a_top_level_script_belongs_to_the_default_exec():
    assert script_identity("backup.sh") == {"scriptRel": "backup.sh", "subdomain": "default",
                                            "execId": "default", "vmCacheKey": "default:backup.sh"}


def test_a_script_in_a_directory_belongs_to_its_first_directory():
    assert script_identity("billing/jobs/x.sh") == {"scriptRel": "billing/jobs/x.sh", "subdomain": "billing",
                                                    "execId": "billing", "vmCacheKey": "billing:billing/jobs/x.sh"}


def test_the_contract_example_maps_as_documented():
    assert script_identity("default/cron/cleanup.ts")["vmCacheKey"] == "default:default/cron/cleanup.ts"


def test_discovery_is_recursive_and_skips_hidden_cache_and_dependency_entries(tmp_path):
    root = tmp_path / "scripts"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.sh").write_text("echo secret\n")
    files = ["top.sh", "billing/jobs/x.sh", "app/main.js", ".hidden.sh", ".git/hooks/pre-commit",
             "sub/.private/y.sh", "__pycache__/m.cpython-311.pyc", "app/node_modules/pkg/index.js",
             "lib/__pycache__/n.pyc"]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("echo hi\n")
    os.symlink(root / "top.sh", root / "alias.sh")                  # stays inside: followed
    os.symlink(outside / "secret.sh", root / "escape.sh")           # points outside: skipped
    os.symlink(outside, root / "escape-dir")                         # a directory outside: skipped
    os.symlink("../../elsewhere/secret.sh", root / "billing" / "relative-escape.sh")
    os.symlink(root / "billing", root / "billing-again")             # a directory inside: not walked twice
    os.symlink(root / "gone.sh", root / "dangling.sh")               # points nowhere: skipped
    os.mkfifo(root / "billing" / "queue")                            # not a regular file: skipped
    os.symlink(root, tmp_path / "scripts-link")                     # the scripts dir reached through a link

    expected = ["alias.sh", "app/main.js", "billing/jobs/x.sh", "top.sh"]
    assert discover_scripts(str(root)) == expected
    assert discover_scripts(str(tmp_path / "scripts-link")) == expected


def test_discovery_of_a_missing_scripts_dir_finds_nothing(tmp_path):
    assert discover_scripts(str(tmp_path / "no-such-dir")) == []


###############################################################################
# Registration: how a script runs, and why it cannot ###########################
###############################################################################

def test_an_invalid_cron_expression_is_refused_quoting_it(h):
    h.write("moon.sh", "# @schedule every blue moon\necho hi\n")
    assert h.reason("moon.sh").startswith("Invalid cron expression: 'every blue moon'")


def test_a_websocket_script_cannot_be_scheduled(h):
    h.write("ws.js", "// @websocket\n// @schedule 0 * * * *\nmodule.exports = {}\n")
    assert h.reason("ws.js") == "@websocket scripts cannot be scheduled"


def test_two_schedule_directives_are_refused(h):
    h.write("twice.sh", "# @schedule 0 * * * *\n# @schedule 30 * * * *\necho hi\n")
    assert h.reason("twice.sh") == "multiple @schedule directives"


def test_an_invalid_timeout_directive_is_refused(h):
    h.write("slow.sh", "# @schedule 0 * * * *\n# @timeout soon\necho hi\n")
    assert h.reason("slow.sh").startswith("invalid @timeout: 'soon'")


def test_a_python_script_that_does_not_compile_fails_preflight(h):
    h.write("broken.py", "# @schedule 0 * * * *\ndef main(:\n    pass\n")
    assert h.reason("broken.py").startswith("preflight failed: SyntaxError")


def test_a_shell_script_with_a_syntax_error_fails_preflight(h):
    h.write("broken.sh", "# @schedule 0 * * * *\nif true; then\n  echo never closed\n")
    reason = h.reason("broken.sh")
    assert reason.startswith("preflight failed: ")
    assert "syntax error" in reason.lower()
    assert "\n" not in reason


def test_a_script_nothing_can_run_names_its_extension_and_the_config_key(h):
    h.write("job.rb", "# @schedule 0 * * * *\nputs 1\n")
    reason = h.reason("job.rb")
    assert "'.rb'" in reason
    assert "[exec.interpreters]" in reason


def test_a_configured_interpreter_that_is_not_installed_is_named_in_the_reason(new):
    h = new(interpreters={".rb": ("ruby-not-installed-here",)})
    h.write("job.rb", "# @schedule 0 * * * *\nputs 1\n")
    reason = h.reason("job.rb")
    assert "ruby-not-installed-here" in reason
    assert "[exec.interpreters]" in reason


def test_a_configured_interpreter_runs_its_extension(new):
    h = new(interpreters={".txt": ("/bin/sh",)})
    path = h.write("job.txt", "# @schedule 0 * * * *\necho from a text file\n")
    assert h.catalog.inspect("job.txt").argv == ("/bin/sh", path)

    h.scripts.reload()
    result = h.scripts.trigger({"scriptPath": "job.txt"})
    assert (result["status"], result["returnPreview"]) == ("ok", "from a text file")


def test_a_configured_preflight_command_checks_its_extension(new):
    h = new(interpreters={".txt": ("/bin/sh",)}, preflight={".txt": ("/bin/sh", "-n")})
    h.write("job.txt", "# @schedule 0 * * * *\nif true; then\n")
    assert h.reason("job.txt").startswith("preflight failed: ")


def test_an_executable_script_with_a_shebang_runs_directly(h):
    path = h.write("tool", "#!/bin/sh\n# @schedule 0 * * * *\necho direct\n", executable=True)
    assert h.catalog.inspect("tool").argv == (path,)


def test_a_shell_script_that_is_not_executable_runs_through_sh(h):
    path = h.write("job.sh", "#!/bin/sh\n# @schedule 0 * * * *\necho hi\n")
    assert h.catalog.inspect("job.sh").argv == ("/bin/sh", path)


def test_a_python_script_runs_with_the_servers_python(h):
    path = h.write("job.py", "# @schedule 0 * * * *\nprint('hi')\n")
    assert h.catalog.inspect("job.py").argv == (sys.executable, path)


###############################################################################
# Preflight: the syntax check and its cache ####################################
###############################################################################

def count_checks(h: Scripts) -> dict[str, int]:
    """Count, per scriptRel, how often `h`'s catalog really checks a script's syntax (not from its cache)."""
    counts: dict[str, int] = {}
    check = h.catalog._syntax_problem

    def counted(path: str, interpreter):
        rel = os.path.relpath(path, h.catalog.scripts_dir)
        counts[rel] = counts.get(rel, 0) + 1
        return check(path, interpreter)
    h.catalog._syntax_problem = counted
    return counts


def test_preflight_runs_again_only_for_a_changed_file(h):
    checks = count_checks(h)
    h.write("a.sh", HOURLY)
    h.write("b.py", "# @schedule 0 * * * *\nprint('b')\n")
    h.scripts.reload(dry_run=True)
    assert checks == {"a.sh": 1, "b.py": 1}

    h.scripts.reload(dry_run=True)
    h.scripts.reload()
    assert checks == {"a.sh": 1, "b.py": 1}

    h.write("a.sh", HOURLY + "echo one more line\n")
    h.scripts.reload(dry_run=True)
    assert checks == {"a.sh": 2, "b.py": 1}


def test_a_restart_does_not_check_unchanged_scripts_again(new):
    h = new()
    h.write("a.sh", HOURLY)
    h.write("b.py", "# @schedule 0 * * * *\nprint('b')\n")
    h.write("bad.py", "# @schedule 0 * * * *\ndef main(:\n")
    h.scripts.reload()
    h.close()
    h.write("b.py", "# @schedule 0 * * * *\nprint('b changed while the server was down')\n")

    again = new(load=False)
    checks = count_checks(again)
    again.start()

    assert checks == {"b.py": 1}
    assert again.registered() == ["a.sh", "b.py"]
    [failure] = again.scripts.reload(dry_run=True)["failed"]
    assert failure["path"] == "bad.py" and failure["reason"].startswith("preflight failed: SyntaxError")


def test_a_cached_preflight_failure_is_still_reported(h):
    checks = count_checks(h)
    h.write("bad.py", "# @schedule 0 * * * *\ndef main(:\n")
    first = h.scripts.reload(dry_run=True)["failed"]
    second = h.scripts.reload(dry_run=True)["failed"]
    assert first == second and first[0]["reason"].startswith("preflight failed: SyntaxError")
    assert checks == {"bad.py": 1}


# Each failed syntax check is reported by the first non-blank line it wrote (stderr, else stdout), else its status.
CHECKED_SCRIPTS = {
    "ok.sh": "#!/bin/sh\n# @schedule 0 * * * *\necho fine\n",
    "broken.sh": "#!/bin/sh\n# @schedule 0 * * * *\nif then fi (\n",
    "team/with space's $HOME.sh": "#!/bin/sh\n# @schedule 0 * * * *\ncase x in\n",
    "-dash.sh": "# @schedule 0 * * * *\nfor i in; do\n",
    "bash.sh": "#!/bin/bash\n# @schedule 0 * * * *\n[[ -n x ]] && echo ok\n",
    "bash-broken.sh": "#!/bin/bash\n# @schedule 0 * * * *\nfunction f( {\n",
    "custom.chk": "# @schedule 0 * * * *\n",
    "custom-quiet.chk": "# @schedule 0 * * * *\n",
    "custom-stdout.chk": "# @schedule 0 * * * *\n",
    "custom-blank-err.chk": "# @schedule 0 * * * *\n",
    "custom-cr.chk": "# @schedule 0 * * * *\n",
    "custom-nbsp.chk": "# @schedule 0 * * * *\n",
    "custom-nul.chk": "# @schedule 0 * * * *\n",
}
CUSTOM_CHECK = ("/bin/sh", "-c", 'case "$1" in *quiet*) exit 3;; *stdout*) printf "\\n  on stdout  \\n"; exit 1;; '
                                 '*blank-err*) printf "  \\n" >&2; echo "on stdout"; exit 1;; '
                                 '*-cr*) printf "first\\rsecond\\n" >&2; exit 1;; '
                                 '*nbsp*) printf "\\302\\240\\nreal error\\n" >&2; exit 1;; '
                                 '*nul*) printf "ab\\000cd\\n" >&2; exit 1;; '
                                 '*) printf "  \\n\\tfirst words\\nsecond\\n" >&2; exit 1;; esac', "check")


@pytest.fixture
def checked(new) -> Scripts:
    h = new(preflight={".chk": CUSTOM_CHECK}, interpreters={".chk": ("/bin/sh",)})
    for rel, text in CHECKED_SCRIPTS.items():
        h.write(rel, text, executable=text.startswith("#!"))
    return h


def test_each_failed_check_is_reported_by_the_first_non_blank_line_it_wrote_else_its_exit_status(checked):
    reasons = {f["path"]: f["reason"] for f in checked.scripts.reload(dry_run=True)["failed"]}
    assert all(reason.startswith("preflight failed: ") for reason in reasons.values()), reasons
    reasons = {path: reason[len("preflight failed: "):] for path, reason in reasons.items()}
    assert "Syntax error" in reasons["broken.sh"]
    assert reasons["custom.chk"] == "first words"
    assert reasons["custom-quiet.chk"] == "exit status 3"
    assert reasons["custom-stdout.chk"] == "on stdout"
    assert reasons["custom-blank-err.chk"] == "exit status 1"      # stderr had something: not stdout
    assert reasons["custom-cr.chk"] == "first"
    assert reasons["custom-nbsp.chk"] == "real error"              # a no-break space is blank too
    assert reasons["custom-nul.chk"] == "ab\x00cd"
    assert all("\n" not in reason for reason in reasons.values())


def test_a_scan_registers_the_scripts_whose_check_passes_and_lists_every_other_one_failed(checked):
    answer = checked.scripts.reload()
    assert sorted(f["path"] for f in answer["failed"]) == sorted([
        "-dash.sh", "bash-broken.sh", "broken.sh", "custom-quiet.chk", "custom-stdout.chk", "custom.chk",
        "custom-blank-err.chk", "custom-cr.chk", "custom-nbsp.chk", "custom-nul.chk", "team/with space's $HOME.sh"])
    assert answer["added"] == ["bash.sh", "ok.sh"]
    assert checked.registered() == ["bash.sh", "ok.sh"]


def test_a_script_fixed_after_its_check_failed_is_checked_again_as_it_is_now(h):
    h.write("job.sh", "#!/bin/sh\n# @schedule 0 * * * *\nif then fi (\n", executable=True)
    assert "Syntax error" in h.scripts.reload()["failed"][0]["reason"]
    h.write("job.sh", "#!/bin/sh\n# @schedule 0 * * * *\necho fixed now\n", executable=True)

    assert h.scripts.reload()["added"] == ["job.sh"]
    assert h.registered() == ["job.sh"]


def test_closing_for_a_stop_leaves_a_scan_already_running_to_finish_whole(new, tmp_path):
    started = tmp_path / "check-started"
    h = new(preflight={".chk": ("/bin/sh", "-c", f'touch {started}; sleep 0.3; case "$1" in *bad*) exit 1;; esac',
                                "check")}, interpreters={".chk": ("/bin/sh",)})
    for rel in ("a.chk", "b-bad.chk", "c.chk"):
        h.write(rel, "# @schedule 0 * * * *\n")
    answers: list[dict] = []
    scan = threading.Thread(target=lambda: answers.append(h.scripts.reload()))
    scan.start()
    assert wait_until(started.exists, 10.0)
    h.scripts.close()                   # as Server.close() does
    scan.join(timeout=30)

    assert [f["path"] for f in answers[0]["failed"]] == ["b-bad.chk"] and answers[0]["added"] == ["a.chk", "c.chk"]


def test_once_closed_for_a_stop_a_reload_waiting_for_its_turn_does_nothing(h):
    h.write("job.sh", HOURLY)
    h.scripts.close()

    assert h.scripts.reload()["added"] == [] and h.registered() == []


def test_a_hung_check_is_reported_stopped_and_the_scripts_beside_it_are_checked(new, monkeypatch):
    monkeypatch.setattr(schedserver, "PREFLIGHT_TIMEOUT_SECONDS", 0.5)
    marker = unique_marker()
    h = new(preflight={".chk": ("/bin/sh", "-c", f'case "$1" in *hang*) sleep {marker};; *bad*) exit 1;; esac',
                                "check")}, interpreters={".chk": ("/bin/sh",)})
    for rel in ("a-ok.chk", "b-hang.chk", "c-bad.chk", "d-ok.chk"):
        h.write(rel, "# @schedule 0 * * * *\n")
    try:
        answer = h.scripts.reload()
        assert {f["path"]: f["reason"] for f in answer["failed"]} == {
            "b-hang.chk": "preflight failed: /bin/sh took longer than 0.5 s",
            "c-bad.chk": "preflight failed: exit status 1"}
        assert answer["added"] == ["a-ok.chk", "d-ok.chk"]
        assert wait_until(lambda: not processes_with(marker), 3.0), processes_with(marker)
    finally:
        kill_processes_with(marker)


def test_a_script_whose_name_holds_a_newline_is_checked_like_any_other(h):
    h.write("odd\nname.sh", "# @schedule 0 * * * *\nif then fi (\n")
    [failure] = h.scripts.reload()["failed"]
    assert failure["path"] == "odd\nname.sh"
    assert failure["reason"].startswith("preflight failed:")


###############################################################################
# One bad script never stops a scan ############################################
###############################################################################

HUGE = "9" * 5000
GOOD = "#!/bin/sh\n# @schedule 0 * * * *\necho good\n"
# Scripts that make inspecting them fail in every way found so far; each beside a good one.
POISON = {
    "minus.py": "# @schedule 0 * * * *\nx=" + "-" * 100_000 + "1\n",           # compile(): MemoryError
    "attributes.py": "# @schedule 0 * * * *\nx=" + "a." * 100_000 + "b\n",     # compile(): RecursionError
    "timeout.sh": f"# @schedule 0 * * * *\n# @timeout {HUGE}\necho hi\n",
    "schedule.sh": f"# @schedule 0 {HUGE} * * * *\necho hi\n",
    "schedule-step.sh": f"# @schedule */{HUGE} * * * * *\necho hi\n",
    "schedule-range.sh": f"# @schedule 0 0 1-{HUGE} * * *\necho hi\n",
}
UNCOMPILABLE = ("preflight failed: MemoryError", "preflight failed: RecursionError")
POISON_REASONS = {          # how each one's reason begins
    "minus.py": UNCOMPILABLE, "attributes.py": UNCOMPILABLE, "timeout.sh": ("invalid @timeout: ",),
    "schedule.sh": ("Invalid cron expression: ",), "schedule-step.sh": ("Invalid cron expression: ",),
    "schedule-range.sh": ("Invalid cron expression: ",),
}


def test_compiling_the_poisoned_python_really_fails_with_memory_or_recursion_errors():
    for rel in ("minus.py", "attributes.py"):
        with pytest.raises((MemoryError, RecursionError)):
            compile(POISON[rel], rel, "exec", dont_inherit=True)


@pytest.mark.parametrize("rel", sorted(POISON))
def test_a_script_that_breaks_its_inspection_lands_in_failed_and_the_good_one_beside_it_registers(h, rel):
    h.write("good.sh", GOOD, executable=True)
    h.write(rel, POISON[rel])

    answer = h.scripts.reload()

    assert answer["added"] == ["good.sh"]
    [failure] = answer["failed"]
    assert failure["path"] == rel
    assert failure["reason"].startswith(POISON_REASONS[rel]), failure["reason"][:300]
    assert len(failure["reason"]) <= 1000
    assert h.registered() == ["good.sh"]


def test_all_the_bad_scripts_together_never_stop_a_scan(h):
    h.write("good.sh", GOOD, executable=True)
    for rel, text in POISON.items():
        h.write(rel, text)

    answer = h.scripts.reload()

    assert answer["added"] == ["good.sh"]
    assert sorted(f["path"] for f in answer["failed"]) == sorted(POISON)
    assert all(f["reason"].startswith(POISON_REASONS[f["path"]]) for f in answer["failed"]), answer["failed"]


def test_the_real_server_starts_past_the_bad_scripts_and_lists_the_good_one(tmp_path):
    scripts_dir = tmp_path / "scripts"
    scripts_dir.mkdir()
    (scripts_dir / "good.sh").write_text(GOOD)
    (scripts_dir / "good.sh").chmod(0o755)
    for rel, text in POISON.items():
        (scripts_dir / rel).write_text(text)
    server = ServerProcess(tmp_path / "data", scripts_dir)
    try:
        server.start()
        listing = server.api("GET", EXEC_PATH + "/list")
        assert listing.status_code == 200, listing.text
        assert [item["scriptRel"] for item in listing.json()["schedules"]] == ["good.sh"]
        assert listing.json()["total"] == 1
    finally:
        server.stop()
    log = server.stderr_text()
    for rel in POISON:
        assert f"script {rel} not scheduled" in log, log[-3000:]


###############################################################################
# Reload #######################################################################
###############################################################################

def test_a_first_reload_adds_every_scheduled_script_and_lists_the_broken_ones(h):
    h.write("backup.sh", HOURLY)
    h.write("billing/report.py", "# @schedule */2 * * * * *\nprint('report')\n")
    h.write("README.md", "# scripts\nNothing scheduled here.\n")
    h.write("moon.sh", "# @schedule every blue moon\necho hi\n")

    result = h.scripts.reload()

    assert result["dry_run"] is False
    assert result["added"] == ["backup.sh", "billing/report.py"]
    assert (result["kept"], result["changed"], result["removed"]) == ([], [], [])
    assert [f["path"] for f in result["failed"]] == ["moon.sh"]
    assert h.registered() == ["backup.sh", "billing/report.py"]


def test_a_reload_reports_added_kept_changed_removed_and_failed_scripts(h):
    for rel in ("keep.sh", "change.sh", "gone.sh", "breaks.sh"):
        h.write(rel, HOURLY)
    h.scripts.reload()
    first_registered_at = h.item("keep.sh")["registeredAt"]

    h.clock.set("2026-01-15T12:10:00Z")
    h.write("new.sh", HOURLY)
    h.write("change.sh", "# @schedule */5 * * * *\n# @description now every five minutes\necho hi\n")
    h.remove("gone.sh")
    h.write("breaks.sh", "# @schedule every blue moon\necho hi\n")
    h.write("ws.sh", "# @schedule 0 * * * *\n# @websocket\necho hi\n")

    result = h.scripts.reload()

    assert result["added"] == ["new.sh"]
    assert result["kept"] == ["change.sh", "keep.sh"]
    assert result["changed"] == ["change.sh"]
    assert result["removed"] == ["breaks.sh", "gone.sh"]
    assert result["failed"] == [
        {"path": "breaks.sh", "reason": h.reason("breaks.sh")},
        {"path": "ws.sh", "reason": "@websocket scripts cannot be scheduled"},
    ]
    assert h.registered() == ["change.sh", "keep.sh", "new.sh"]
    changed = h.item("change.sh")
    assert (changed["expression"], changed["description"]) == ("*/5 * * * *", "now every five minutes")
    assert changed["nextFire"] == "2026-01-15T12:15:00.000Z"
    assert changed["registeredAt"] == first_registered_at          # first registered, not last changed
    assert h.item("new.sh")["registeredAt"] == "2026-01-15T12:10:00.000Z"
    assert h.item("keep.sh")["registeredAt"] == first_registered_at


def test_a_registered_script_that_breaks_is_removed_and_listed_as_failed(h):
    h.write("job.sh", HOURLY)
    h.scripts.reload()
    h.write("job.sh", "# @schedule 0 * * * *\n# @timeout forever\necho hi\n")

    result = h.scripts.reload()

    assert result["removed"] == ["job.sh"]
    assert result["failed"] == [{"path": "job.sh", "reason": h.reason("job.sh")}]
    assert h.registered() == []
    assert h.scheduler.next_at(job_key("script", "job.sh")) is None


def test_a_removed_script_no_longer_fires(h):
    h.write("job.sh", HOURLY)
    h.scripts.reload()
    h.remove("job.sh")
    h.scripts.reload()

    assert h.tick("2026-01-15T12:00:00Z") == 0
    assert h.log_lines() == []


def test_a_dry_run_reports_the_diff_and_changes_nothing(h):
    h.write("keep.sh", HOURLY)
    h.write("gone.sh", HOURLY)
    h.scripts.reload()
    before = h.scripts.list()
    h.write("new.sh", HOURLY)
    h.write("keep.sh", "# @schedule */10 * * * *\necho hi\n")
    h.remove("gone.sh")

    preview = h.scripts.reload(dry_run=True)

    assert preview == {"dry_run": True, "added": ["new.sh"], "kept": ["keep.sh"], "changed": ["keep.sh"],
                       "removed": ["gone.sh"], "failed": []}
    assert h.scripts.list() == before
    applied = h.scripts.reload()
    assert applied == {**preview, "dry_run": False}
    assert h.registered() == ["keep.sh", "new.sh"]


def test_a_reload_with_nothing_changed_keeps_everything(h):
    h.write("a.sh", HOURLY)
    h.write("b/c.sh", HOURLY)
    h.scripts.reload()
    assert h.scripts.reload() == {"dry_run": False, "added": [], "kept": ["a.sh", "b/c.sh"], "changed": [],
                                  "removed": [], "failed": []}


###############################################################################
# Firing through the scheduler #################################################
###############################################################################

def test_a_due_script_runs_and_its_fire_is_logged(h):
    h.write("cleanup.sh", "# @schedule 0 * * * *\necho 'deleting'\necho '{\"deleted\":12}'\n")
    h.scripts.reload()

    assert h.tick("2026-01-15T11:59:59Z") == 0
    assert h.tick("2026-01-15T12:00:00Z") == 1

    [record] = h.log_lines()
    assert record["ts"] == "2026-01-15T12:00:00.000Z"
    assert (record["scriptPath"], record["expression"], record["status"], record["trigger"]) == \
        ("cleanup.sh", "0 * * * *", "ok", "cron")
    assert record["returnPreview"] == '{"deleted":12}'
    assert (record["exitCode"], record["attempt"]) == (0, 1)
    assert record["startedAt"] == record["loggedAt"] == "2026-01-15T12:00:00.000Z"
    assert uuid.UUID(record["runId"])
    assert isinstance(record["durationMs"], int) and record["durationMs"] >= 0
    item = h.item("cleanup.sh")
    assert (item["lastFireAt"], item["lastFireStatus"], item["lastFireRunId"]) == \
        ("2026-01-15T12:00:00.000Z", "ok", record["runId"])
    assert item["nextFire"] == "2026-01-15T13:00:00.000Z"


def test_a_failing_script_logs_its_last_stderr_line_and_exit_code(h):
    h.write("fails.py", "# @schedule 0 * * * *\nNone.id\n")
    h.scripts.reload()
    h.tick("2026-01-15T12:00:00Z")
    [record] = h.log_lines()
    assert record["status"] == "error"
    assert record["error"] == "AttributeError: 'NoneType' object has no attribute 'id'"
    assert record["exitCode"] == 1
    assert "returnPreview" not in record and "signal" not in record


def test_a_fire_that_comes_while_the_previous_run_is_running_is_skipped(new):
    runner = InstantRunner(FakeClock(NOW))
    h = new(runner=runner)
    h.write("slow.sh", HOURLY)
    h.scripts.reload()
    runner.hold = True                      # the 12:00 run goes on until release()
    h.clock.set("2026-01-15T12:00:00Z")
    h.stack.run_due()
    assert h.item("slow.sh")["running"] is True

    h.clock.set("2026-01-15T13:00:00Z")
    assert len(h.stack.tick()) == 1
    h.pool.run_all()

    [skipped] = h.log_lines()
    assert (skipped["status"], skipped["ts"], skipped["trigger"]) == ("skipped", "2026-01-15T13:00:00.000Z", "cron")
    assert skipped["error"] == "previous run still in progress"
    assert len(runner.calls) == 1
    assert runner.release() == 1
    assert [r["status"] for r in h.log_lines()] == ["skipped", "ok"]
    assert h.item("slow.sh")["running"] is False


def test_fires_missed_while_the_server_was_down_are_logged_once_with_a_count(new):
    clock = FakeClock(at("2026-01-15T12:30:00Z"))
    runner = InstantRunner(clock)
    h = new(clock, runner=runner, load=False)
    h.write("hourly.sh", HOURLY)
    h.fires.append(fire_record("hourly.sh", "2026-01-15T09:00:00.000Z"))     # last fire, three hours ago

    h.start()
    assert h.tick("2026-01-15T12:30:00Z") == 1

    missed = h.log_lines()[-1]
    assert (missed["status"], missed["count"], missed["trigger"]) == ("missed", 3, "cron")
    assert missed["ts"] == "2026-01-15T10:00:00.000Z"
    assert missed["lastSlot"] == "2026-01-15T12:00:00.000Z"
    assert runner.calls == []                                               # no burst of catch-up runs
    assert h.item("hourly.sh")["nextFire"] == "2026-01-15T13:00:00.000Z"


def test_a_second_restart_does_not_report_the_same_missed_fires_again(new):
    clock = FakeClock(at("2026-01-15T12:30:00Z"))
    h = new(clock, runner=InstantRunner(clock), load=False)
    h.write("hourly.sh", HOURLY)
    h.fires.append(fire_record("hourly.sh", "2026-01-15T09:00:00.000Z"))
    h.start()
    h.tick("2026-01-15T12:30:00Z")                                          # missed 10:00, 11:00, 12:00

    clock.set("2026-01-15T12:40:00Z")                                       # down 12:30-12:40: no slot in it
    again = h.restart()
    again.tick("2026-01-15T12:40:00Z")

    assert [(r["status"], r.get("count")) for r in again.log_lines()] == [("ok", None), ("missed", 3)]


def test_fires_of_a_script_that_was_not_registered_are_not_reported_missed_after_a_restart(new):
    clock = FakeClock(at("2026-01-10T09:30:00Z"))
    h = new(clock, runner=InstantRunner(clock))
    h.edit_now("report.sh", HOURLY)
    h.scripts.reload()
    h.tick("2026-01-10T10:00:00Z")
    clock.set("2026-01-10T10:30:00Z")
    h.edit_now("report.sh", "# @schedule every blue moon\necho hi\n")      # broken for five days...
    h.scripts.reload()

    clock.set("2026-01-15T09:40:00Z")
    h.edit_now("report.sh", HOURLY)                                         # ...then fixed, and the server
    clock.set("2026-01-15T09:45:00Z")                                       # restarts
    again = h.restart()
    again.tick("2026-01-15T09:45:00Z")

    assert [r["status"] for r in again.log_lines()] == ["ok"]


def test_history_since_still_finds_fires_logged_before_a_restart(new):
    clock = FakeClock(at("2026-01-10T09:30:00Z"))
    h = new(clock, runner=InstantRunner(clock))
    h.edit_now("report.sh", HOURLY)
    h.scripts.reload()
    h.tick("2026-01-10T10:00:00Z")
    clock.set("2026-01-10T10:30:00Z")
    h.edit_now("report.sh", "# @schedule every blue moon\necho hi\n")
    clock.set("2026-01-15T09:30:00Z")
    h.edit_now("backup.sh", HOURLY)
    h.scripts.reload()
    h.tick("2026-01-15T10:00:00Z")
    h.tick("2026-01-15T11:00:00Z")
    clock.set("2026-01-15T11:40:00Z")
    h.edit_now("report.sh", HOURLY)
    clock.set("2026-01-15T11:45:00Z")
    again = h.restart()
    again.tick("2026-01-15T11:45:00Z")

    entries = again.scripts.history(since=at("2026-01-15T00:00:00Z"))["entries"]

    assert [(e["scriptPath"], e["ts"]) for e in entries if e["status"] == "ok"] == [
        ("backup.sh", "2026-01-15T11:00:00.000Z"), ("backup.sh", "2026-01-15T10:00:00.000Z")]


def restart_after_an_interpreter_was_missing_for_five_days(new, tmp_path, monkeypatch) -> Scripts:
    """report.job fires on Jan 10; its interpreter then vanishes from PATH until Jan 15, while backup.sh fires at
    10:00 and 11:00; the interpreter comes back and the server restarts at 11:45."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "job-runner").write_text("#!/bin/sh\nexec /bin/sh \"$@\"\n")
    (bin_dir / "job-runner").chmod(0o755)
    with_runner, without_runner = f"{bin_dir}:{os.environ['PATH']}", os.environ["PATH"]
    monkeypatch.setenv("PATH", with_runner)
    clock = FakeClock(at("2026-01-10T09:30:00Z"))
    h = new(clock, runner=InstantRunner(clock), interpreters={".job": ("job-runner",)})
    h.write("report.job", HOURLY)
    h.scripts.reload()
    h.tick("2026-01-10T10:00:00Z")
    monkeypatch.setenv("PATH", without_runner)
    clock.set("2026-01-10T10:30:00Z")
    assert h.scripts.reload()["removed"] == ["report.job"]
    clock.set("2026-01-15T09:30:00Z")
    h.edit_now("backup.sh", HOURLY)
    h.scripts.reload()
    h.tick("2026-01-15T10:00:00Z")
    h.tick("2026-01-15T11:00:00Z")
    monkeypatch.setenv("PATH", with_runner)
    clock.set("2026-01-15T11:45:00Z")
    again = h.restart()
    again.tick("2026-01-15T11:45:00Z")
    return again


def test_fires_of_a_script_that_could_not_run_are_not_reported_missed_after_a_restart(new, tmp_path, monkeypatch):
    again = restart_after_an_interpreter_was_missing_for_five_days(new, tmp_path, monkeypatch)
    assert [(r["scriptPath"], r["status"]) for r in again.log_lines()] == [
        ("report.job", "ok"), ("backup.sh", "ok"), ("backup.sh", "ok")]


def test_history_since_finds_every_fire_in_the_window_whatever_was_logged_after_it(new, tmp_path, monkeypatch):
    again = restart_after_an_interpreter_was_missing_for_five_days(new, tmp_path, monkeypatch)
    entries = again.scripts.history(since=at("2026-01-15T00:00:00Z"))["entries"]
    assert [(e["scriptPath"], e["ts"]) for e in entries if e["status"] == "ok"] == [
        ("backup.sh", "2026-01-15T11:00:00.000Z"), ("backup.sh", "2026-01-15T10:00:00.000Z")]


def test_the_last_fire_shown_in_the_list_survives_a_restart(new):
    clock = FakeClock(at("2026-01-15T12:10:00Z"))
    h = new(clock, runner=InstantRunner(clock), load=False)
    h.write("a.sh", HOURLY)
    h.write("b.sh", HOURLY)
    h.fires.append(fire_record("a.sh", "2026-01-15T11:00:00.000Z"))
    newest = fire_record("a.sh", "2026-01-15T12:00:00.000Z", status="error")
    h.fires.append(newest)

    h.start()

    a, b = h.scripts.list()["schedules"]
    assert (a["lastFireAt"], a["lastFireStatus"], a["lastFireRunId"]) == \
        ("2026-01-15T12:00:00.000Z", "error", newest["runId"])
    assert (b["lastFireAt"], b["lastFireStatus"], b["lastFireRunId"]) == (None, None, None)
    assert h.tick("2026-01-15T12:10:00Z") == 0                              # 12:00 ran before the restart


def test_a_script_whose_run_exceeds_its_timeout_is_logged_as_timed_out(h):
    h.write("stuck.sh", "# @schedule 0 * * * *\n# @timeout 300ms\nsleep 30\n")
    h.scripts.reload()
    h.tick("2026-01-15T12:00:00Z")
    [record] = h.log_lines()
    assert (record["status"], record["error"]) == ("timeout", "timed out after 300 ms")


def test_a_script_changed_and_reloaded_before_its_slot_runs_as_it_is_now(h):
    h.write("job.sh", "# @schedule 0 * * * *\necho first version\n")
    h.scripts.reload()
    h.write("job.sh", "# @schedule 0 * * * *\n# @timeout 20s\necho second version\n")
    assert h.scripts.reload()["changed"] == ["job.sh"]

    h.tick("2026-01-15T12:00:00Z")

    [record] = h.log_lines()
    assert (record["status"], record["returnPreview"]) == ("ok", "second version")
    assert h.item("job.sh")["timeoutMs"] == 20_000


def test_a_script_edited_after_its_slot_was_handed_to_a_worker_runs_the_file_as_it_is_now(h):
    h.write("job.sh", "# @schedule 0 * * * *\necho first version\n")
    h.scripts.reload()
    h.clock.set("2026-01-15T12:00:00Z")
    assert len(h.stack.tick()) == 1                 # handed over; no worker has taken it yet
    h.write("job.sh", "# @schedule 0 * * * *\n# @timeout 20s\necho second version\n")
    h.scripts.reload()

    h.pool.run_all(until=h.idle)

    [record] = h.log_lines()
    assert (record["status"], record["returnPreview"]) == ("ok", "second version")


def test_a_script_removed_before_its_slot_does_not_run_and_leaves_no_marker(h, tmp_path):
    out = tmp_path / "ran"
    h.write("job.sh", f"# @schedule 0 * * * *\ntouch {out}\n")
    h.scripts.reload()
    h.remove("job.sh")
    h.scripts.reload()

    assert h.tick("2026-01-15T12:00:00Z") == 0
    assert h.log_lines() == [] and not out.exists()
    assert h.markers() == []


###############################################################################
# The script's environment #####################################################
###############################################################################

ENV_DUMP = """# @schedule 0 * * * *
import json, os, sys
with open({out!r}, "w") as f:
    json.dump({{"env": dict(os.environ), "cwd": os.getcwd(), "stdin": sys.stdin.read()}}, f)
"""


@pytest.fixture
def env_harness(new, tmp_path, monkeypatch) -> Scripts:
    """Tokens admin-token and read-token (the harness's) also sit in the server's environment, by name and inside
    other variables' values."""
    monkeypatch.setenv("SCHEDSERVER_TOKEN", "tok-by-name")
    monkeypatch.setenv("SCHEDSERVER_READ_TOKEN", "read-by-name")
    monkeypatch.setenv("DEPLOY_API_KEY", "admin-token")
    monkeypatch.setenv("READER_KEY", "Bearer read-token")
    monkeypatch.setenv("HARMLESS_SETTING", "visible")
    h = new()
    h.write("jobs/env.py", ENV_DUMP.format(out=str(tmp_path / "env.json")))
    h.scripts.reload()
    return h


def read_dump(h: Scripts) -> dict:
    return json.loads((h.tmp_path / "env.json").read_text())


def test_a_triggered_script_sees_its_run_in_the_environment_and_no_api_token(env_harness):
    h = env_harness
    result = h.scripts.trigger({"scriptPath": "jobs/env.py"})
    assert result["status"] == "ok", result

    dump = read_dump(h)
    env = dump["env"]
    assert env["SCHEDSERVER_RUN_ID"] == result["runId"]
    assert env["SCHEDSERVER_SCRIPT"] == "jobs/env.py"
    assert env["SCHEDSERVER_TRIGGER"] == "manual"
    assert env["SCHEDSERVER_SCHEDULED_AT"] == "2026-01-15T11:59:30.250Z"
    assert env["HARMLESS_SETTING"] == "visible"
    for name in ("SCHEDSERVER_TOKEN", "SCHEDSERVER_READ_TOKEN", "DEPLOY_API_KEY", "READER_KEY"):
        assert name not in env
    assert not [name for name, value in env.items() if "admin-token" in value or "read-token" in value]
    assert dump["cwd"] == str(h.root / "jobs")
    assert dump["stdin"] == ""


def test_a_cron_fire_tells_the_script_its_trigger_and_scheduled_time(env_harness):
    h = env_harness
    h.tick("2026-01-15T12:00:00.900Z")
    env = read_dump(h)["env"]
    assert env["SCHEDSERVER_TRIGGER"] == "cron"
    assert env["SCHEDSERVER_SCHEDULED_AT"] == "2026-01-15T12:00:00.000Z"
    assert env["SCHEDSERVER_RUN_ID"] == h.log_lines()[-1]["runId"]
    assert "SCHEDSERVER_TOKEN" not in env and "DEPLOY_API_KEY" not in env


def test_a_cron_fires_marker_is_on_disk_when_its_script_is_spawned_and_gone_once_it_ended(env_harness):
    h = env_harness
    at_spawn: list[list[dict]] = []
    start = h.runner.start

    def spawn(run, on_end):
        at_spawn.append(h.markers())
        start(run, on_end)
    h.runner.start = spawn
    h.clock.set("2026-01-15T12:00:00.010Z")
    h.stack.tick()
    assert h.markers() == []                        # a fire may wait for a worker: no marker before it begins
    h.clock.set("2026-01-15T12:00:00.020Z")         # a worker takes the fire
    h.pool.run_all(until=h.idle)

    [[marker]] = at_spawn
    [record] = h.log_lines()
    assert marker["run_id"] == record["runId"] == read_dump(h)["env"]["SCHEDSERVER_RUN_ID"]
    assert (marker["kind"], marker["ref"], marker["trigger"]) == ("script", "jobs/env.py", "cron")
    assert (marker["slot"], marker["started"]) == (at("2026-01-15T12:00:00Z"), at("2026-01-15T12:00:00.020Z"))
    assert (record["status"], record["startedAt"]) == ("ok", "2026-01-15T12:00:00.020Z")
    assert h.markers() == []


###############################################################################
# History ######################################################################
###############################################################################

def hourly_fires(h: Scripts, rel: str, count: int, start: str = "2026-01-15T00:00:00Z") -> list[dict]:
    """`count` hourly fires of `rel` appended to the fires log, oldest first."""
    records = [fire_record(rel, utc_iso(at(start) + 3600 * n, ms=True)) for n in range(count)]
    for record in records:
        h.fires.append(record)
    return records


def test_history_is_newest_first(h):
    records = hourly_fires(h, "a.sh", 5)
    answer = h.scripts.history()
    assert answer["entries"] == list(reversed(records))
    assert (answer["total"], answer["limit"], answer["includeRotated"]) == (5, 100, False)


def test_history_filters_by_a_relative_script_path(h):
    h.fires.append(fire_record("a.sh", "2026-01-15T01:00:00.000Z"))
    h.fires.append(fire_record("billing/jobs/x.sh", "2026-01-15T02:00:00.000Z"))
    h.fires.append(fire_record("a.sh.bak", "2026-01-15T03:00:00.000Z"))
    h.fires.append(fire_record("a.sh", "2026-01-15T04:00:00.000Z"))

    assert [e["ts"][11:13] for e in h.scripts.history("a.sh")["entries"]] == ["04", "01"]
    assert [e["ts"][11:13] for e in h.scripts.history("billing/jobs/x.sh")["entries"]] == ["02"]
    assert [e["ts"][11:13] for e in h.scripts.history("./billing/jobs/../jobs/x.sh")["entries"]] == ["02"]


def test_history_filters_by_an_absolute_path_inside_the_scripts_dir(h):
    h.fires.append(fire_record("billing/jobs/x.sh", "2026-01-15T02:00:00.000Z"))
    h.fires.append(fire_record("a.sh", "2026-01-15T04:00:00.000Z"))
    answer = h.scripts.history(str(h.root / "billing" / "jobs" / "x.sh"))
    assert [e["scriptPath"] for e in answer["entries"]] == ["billing/jobs/x.sh"]


@pytest.mark.parametrize("path", ["../outside.sh", "a/../../outside.sh", "..", ".", "", "/etc/passwd"])
def test_history_refuses_a_script_path_outside_the_scripts_dir(h, path):
    with pytest.raises(InvalidParameter):
        h.scripts.history(path)


def test_history_refuses_an_absolute_path_to_a_sibling_of_the_scripts_dir(h):
    with pytest.raises(InvalidParameter):
        h.scripts.history(str(h.root) + "-other/a.sh")


def test_history_since_is_inclusive(h):
    records = hourly_fires(h, "a.sh", 5)
    answer = h.scripts.history(since=parse_iso(records[2]["ts"]))
    assert [e["ts"] for e in answer["entries"]] == [r["ts"] for r in reversed(records[2:])]


def test_history_since_keeps_a_long_run_that_was_logged_after_newer_fires(h):
    h.fires.append(fire_record("fast.sh", "2026-01-15T10:00:00.000Z"))
    h.fires.append(fire_record("fast.sh", "2026-01-15T11:00:00.000Z"))
    h.fires.append(fire_record("slow.sh", "2026-01-15T09:00:00.000Z"))      # started 09:00, ended after 11:00
    answer = h.scripts.history(since=at("2026-01-15T09:00:00Z"))
    assert [e["scriptPath"] for e in answer["entries"]] == ["fast.sh", "fast.sh", "slow.sh"]


def test_history_returns_at_most_limit_entries(h):
    records = hourly_fires(h, "a.sh", 10)
    answer = h.scripts.history(limit=3)
    assert answer["entries"] == list(reversed(records[-3:]))
    assert (answer["total"], answer["limit"]) == (3, 3)


SMALL_LOG = {"fires_log_max_bytes": 4096, "fires_log_backups": 20}       # about 20 records a file


def test_history_reads_rotated_files_only_when_asked(new):
    h = new(**SMALL_LOG)
    records = hourly_fires(h, "a.sh", 60)
    rotated = sorted(p.name for p in h.data.iterdir() if p.name.startswith("fires.log."))
    assert "fires.log.1" in rotated and "fires.log.2" in rotated
    in_current_file = len((h.data / "fires.log").read_text().splitlines())

    current_only = h.scripts.history(limit=1000)
    everything = h.scripts.history(limit=1000, include_rotated=True)

    assert current_only["entries"] == list(reversed(records))[:in_current_file]
    assert everything["entries"] == list(reversed(records))
    assert (everything["total"], everything["includeRotated"]) == (60, True)


def test_history_limit_and_since_apply_across_rotated_files(new):
    h = new(**SMALL_LOG)
    records = hourly_fires(h, "a.sh", 60)
    answer = h.scripts.history(since=parse_iso(records[5]["ts"]), limit=1000, include_rotated=True)
    assert answer["entries"] == list(reversed(records[5:]))
    assert h.scripts.history(limit=30, include_rotated=True)["entries"] == list(reversed(records[-30:]))


def test_history_skips_a_torn_final_line(h):
    records = hourly_fires(h, "a.sh", 2)
    with open(h.data / "fires.log", "ab") as f:
        f.write(b'{"ts":"2026-01-15T13:00:00.000Z","scriptPath":"a.sh","sta')     # a crash mid-append
    assert h.scripts.history()["entries"] == list(reversed(records))
    assert h.scripts.history("a.sh")["entries"] == list(reversed(records))

    later = fire_record("a.sh", "2026-01-15T14:00:00.000Z")
    h.fires.append(later)
    assert h.scripts.history()["entries"] == [later] + list(reversed(records))


def test_history_skips_a_final_record_whose_newline_was_never_written(h):
    records = hourly_fires(h, "a.sh", 2)
    torn = fire_record("a.sh", "2026-01-15T13:00:00.000Z")
    with open(h.data / "fires.log", "ab") as f:
        f.write(json.dumps(torn, separators=(",", ":")).encode())            # the crash came before the newline
    assert h.scripts.history()["entries"] == list(reversed(records))


def test_history_of_a_log_holding_only_a_torn_line_is_empty(h):
    (h.data / "fires.log").write_bytes(b'{"ts":"2026-01-15T13:00:00.000Z","scriptPath":"a.sh","sta')
    assert h.scripts.history()["entries"] == []
    assert h.scripts.history("a.sh", include_rotated=True)["entries"] == []


def test_history_of_an_empty_log_is_empty(h):
    assert h.scripts.history() == {"total": 0, "limit": 100, "includeRotated": False, "entries": []}


###############################################################################
# The runner ###################################################################
###############################################################################

def script_run(argv: list[str], cwd: Path, timeout_ms: int = 5000, rel: str = "job.sh") -> Run:
    """A Run of a script job as the recorder begins it: `argv` in `cwd` (the scripts dir), at most `timeout_ms`."""
    target = ScriptTarget(rel, str(cwd / rel), tuple(argv), timeout_ms, str(cwd))
    job = schedserver.Job(key=job_key("script", rel), kind="script", ref=rel,
                          cron=schedserver.parse_cron("0 * * * *"), tz=schedserver.load_timezone("UTC"),
                          target=target)
    return Run(str(uuid.uuid4()), job, NOW, "manual", 1, NOW)


@pytest.fixture
def runners():
    """make(**options) -> a ScriptRunner (PATH only in its scripts' environment, a 0.2 s kill grace) closed, with
    its deadline watcher, at the test's end."""
    made: list[tuple[ScriptRunner, schedserver.DeadlineWatcher]] = []

    def make(**options) -> ScriptRunner:
        deadlines = schedserver.DeadlineWatcher()
        options.setdefault("kill_grace", 0.2)
        options.setdefault("environment", lambda extra: {"PATH": os.environ["PATH"], **extra})
        runner = ScriptRunner(deadlines, **options)
        made.append((runner, deadlines))
        return runner
    yield make
    for runner, deadlines in made:
        runner.close()
        deadlines.close()


def run_to_end(runner: ScriptRunner, run: Run, timeout: float = 60.0) -> RunResult:
    ended: list[RunResult] = []
    done = threading.Event()
    runner.start(run, lambda result: (ended.append(result), done.set()))
    assert done.wait(timeout), "the run never ended"
    return ended[0]


@pytest.fixture
def run_sh(tmp_path, runners):
    """run_sh(script, timeout_ms=5000, **runner_options) -> the RunResult of `/bin/sh -c script` in tmp_path."""
    def run(script: str, timeout_ms: int = 5000, **runner_options) -> RunResult:
        return run_to_end(runners(**runner_options), script_run(["/bin/sh", "-c", script], tmp_path, timeout_ms))
    return run


def test_a_script_that_exits_0_is_ok_with_its_last_non_empty_line_as_preview(run_sh):
    result = run_sh("echo first; echo 'the last line is long'; echo; echo '   '", preview_chars=10)
    assert (result.status, result.exit_code, result.return_preview, result.error) == ("ok", 0, "the last l", None)


def test_the_preview_keeps_200_characters_by_default(run_sh):
    result = run_sh("printf '%0300d\\n' 7")
    assert result.return_preview == "0" * 200


def test_a_script_that_prints_nothing_has_no_preview(run_sh):
    result = run_sh("true")
    assert (result.status, result.return_preview) == ("ok", None)


def test_a_failing_script_reports_its_last_stderr_line(run_sh):
    result = run_sh("echo working; echo 'warming up' >&2; echo 'TypeError: boom' >&2; echo >&2; exit 1")
    assert (result.status, result.exit_code, result.error) == ("error", 1, "TypeError: boom")


def test_a_failing_script_without_stderr_reports_its_exit_status(run_sh):
    result = run_sh("echo on stdout only; exit 3")
    assert (result.status, result.exit_code, result.error) == ("error", 3, "exit status 3")


def test_a_script_killed_by_a_signal_names_it(run_sh):
    result = run_sh("kill -9 $$")
    assert (result.status, result.error, result.signal, result.exit_code) == (
        "error", "killed by signal SIGKILL", "SIGKILL", None)


def test_a_script_that_cannot_start_is_an_error_with_the_os_reason(tmp_path, runners):
    result = run_to_end(runners(), script_run([str(tmp_path / "no-such-script")], tmp_path, 1000))
    assert result.status == "error"
    assert result.error.startswith("cannot start: ")
    assert "No such file" in result.error


def test_a_timed_out_script_is_killed_with_its_children(tmp_path, run_sh):
    script = ("echo $$ > pgid; sleep 300 & echo $! >> kids; sleep 300 & echo $! >> kids; "
              "echo started; wait")
    started = time.monotonic()
    result = run_sh(script, timeout_ms=400)
    elapsed = time.monotonic() - started

    assert (result.status, result.error) == ("timeout", "timed out after 400 ms")
    assert elapsed < 3
    pgid = int((tmp_path / "pgid").read_text())
    kids = [int(pid) for pid in (tmp_path / "kids").read_text().split()]
    assert len(kids) == 2
    assert wait_until(lambda: not live_processes_in_group(pgid)), live_processes_in_group(pgid)
    assert not [pid for pid in kids if is_alive(pid)]


def test_a_script_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, run_sh):
    script = "trap '' TERM; echo $$ > pgid; sleep 300 & wait; sleep 300"
    started = time.monotonic()
    result = run_sh(script, timeout_ms=300, kill_grace=0.2)
    assert result.status == "timeout"
    assert time.monotonic() - started < 3
    pgid = int((tmp_path / "pgid").read_text())
    assert wait_until(lambda: not live_processes_in_group(pgid)), live_processes_in_group(pgid)


def test_children_left_behind_by_a_finished_script_are_killed(tmp_path, run_sh):
    result = run_sh("echo $$ > pgid; sleep 300 & echo $! > kid; echo done")
    assert (result.status, result.return_preview) == ("ok", "done")
    pgid = int((tmp_path / "pgid").read_text())
    assert wait_until(lambda: not live_processes_in_group(pgid)), live_processes_in_group(pgid)
    assert not is_alive(int((tmp_path / "kid").read_text()))


def test_huge_output_keeps_only_a_bounded_tail_and_counts_the_rest(run_sh):
    big = 50 * 1000 * 1000
    script = (f"head -c {big} /dev/zero | tr '\\0' x; echo; echo last-line; "
              f"head -c 100000 /dev/zero | tr '\\0' e >&2")
    tracemalloc.start()
    try:
        result = run_sh(script, timeout_ms=60000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert (result.status, result.return_preview) == ("ok", "last-line")
    stdout_bytes, stderr_bytes = big + 1 + len("last-line\n"), 100000
    assert result.output_dropped == (stdout_bytes - MAX_OUTPUT_BYTES) + (stderr_bytes - MAX_OUTPUT_BYTES)
    assert peak < 4 * 1024 * 1024, f"peak traced memory {peak} bytes for {big} bytes of output"


def test_an_output_tail_keeps_the_last_64_kib_and_counts_what_it_dropped():
    tail = OutputTail()
    chunk = bytes(range(256)) * 1024                      # 256 KiB
    total = 0
    for piece in [chunk] * 40 + [b"\nthe end\n"]:
        tail.add(piece)
        total += len(piece)

    assert len(tail.data) == MAX_OUTPUT_BYTES
    assert tail.dropped == total - MAX_OUTPUT_BYTES
    assert bytes(tail.data).endswith(b"\nthe end\n")
    assert tail.last_line(200) == "the end"


def test_a_script_runs_in_a_session_of_its_own_with_stdin_closed(tmp_path, runners):
    script = ("import os, sys; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid(), "
              "repr(sys.stdin.read()))")
    result = run_to_end(runners(), script_run([sys.executable, "-c", script], tmp_path))
    assert (result.status, result.return_preview) == ("ok", "True True ''")


def test_the_result_started_at_comes_from_the_runners_clock(tmp_path, runners):
    result = run_to_end(runners(clock=FakeClock(NOW)), script_run(["/bin/sh", "-c", "true"], tmp_path))
    assert result.started_at == NOW


def test_signal_names_fall_back_to_the_number():
    assert schedserver._signal_name(signal.SIGTERM) == "SIGTERM"
    assert schedserver._signal_name(250) == "250"


###############################################################################
# Cron fires: a worker spawns, the reaper sees the run through ##################
###############################################################################

def test_a_cron_fire_frees_its_worker_at_spawn_and_its_end_is_recorded_once_the_script_exits(h):
    h.write("waits.sh", "# @schedule 0 * * * *\nwhile [ ! -e release ]; do sleep 0.02; done\necho released\n")
    h.scripts.reload()
    h.clock.set("2026-01-15T12:00:00Z")
    h.stack.tick()
    assert h.pool.run_all() == 1                            # the worker's part: it returns while the script waits
    assert h.item("waits.sh")["running"] is True and h.recorder.count() == 1
    assert h.log_lines() == [] and h.pool.pending == []
    h.clock.set("2026-01-15T13:00:00Z")
    h.stack.tick()
    h.pool.run_all()                                        # still running: skipped, not started again
    assert [r["status"] for r in h.log_lines()] == ["skipped"]

    (h.root / "release").touch()
    assert wait_until(h.idle, 10.0)
    records = h.log_lines()
    assert [(r["status"], r["ts"], r.get("returnPreview")) for r in records] == [
        ("skipped", "2026-01-15T13:00:00.000Z", None), ("ok", "2026-01-15T12:00:00.000Z", "released")]
    assert h.item("waits.sh")["running"] is False


def test_a_script_that_cannot_be_spawned_ends_as_an_error_at_once(h):
    h.write("gone.sh", "#!/no/such/interpreter\n# @schedule 0 * * * *\necho never\n", executable=True)
    h.scripts.reload()
    h.tick("2026-01-15T12:00:00Z")
    [record] = h.log_lines()
    assert record["status"] == "error" and "cannot start" in record["error"]
    assert "/no/such/interpreter" in record["error"]
    assert h.item("gone.sh")["running"] is False


def test_the_reaper_stops_waiting_for_output_held_open_by_a_process_that_left_the_group(run_sh, monkeypatch):
    monkeypatch.setattr(schedserver, "OUTPUT_DRAIN_SECONDS", 0.3)
    marker = unique_marker()
    try:
        result = run_sh(f"setsid sleep {marker} & echo done")     # the escaped sleep keeps stdout open
        assert (result.status, result.return_preview) == ("ok", "done")
    finally:
        kill_processes_with(marker)


def test_without_pidfd_the_reaper_notices_exits_by_polling(tmp_path, runners, monkeypatch):
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")
    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    runner = runners()
    result = run_to_end(runner, script_run(["/bin/sh", "-c", "echo polled; exit 3"], tmp_path))
    assert (result.status, result.exit_code, result.error) == ("error", 3, "exit status 3")
    result = run_to_end(runner, script_run(["/bin/sh", "-c", "echo polled"], tmp_path))
    assert (result.status, result.return_preview) == ("ok", "polled")
    assert wait_until(lambda: not runner.busy())


def test_two_hundred_scripts_spawned_at_once_all_end_with_their_own_output(tmp_path, runners):
    runner = runners()
    ended: list[RunResult] = []
    for i in range(200):
        runner.start(script_run(["/bin/sh", "-c", f"echo out-{i}; echo err-{i} >&2; exit {i % 2}"], tmp_path,
                                10_000), ended.append)
    assert wait_until(lambda: len(ended) == 200, 20.0), len(ended)
    assert sorted(r.return_preview or r.error for r in ended) == sorted(
        f"out-{i}" if i % 2 == 0 else f"err-{i}" for i in range(200))
    assert wait_until(lambda: not runner.busy())


def test_a_script_whose_output_cannot_be_watched_still_ends_and_is_recorded(tmp_path, runners):
    runner = runners()
    register = runner._selector.register

    def no_room_for_pipes(fd, events, data=None):
        if data is not None and data[1] == "stderr":
            raise OSError(28, "No space left on device")
        return register(fd, events, data)
    runner._selector.register = no_room_for_pipes
    result = run_to_end(runner, script_run(["/bin/sh", "-c", "exit 4"], tmp_path), timeout=10)
    assert (result.status, result.exit_code) == ("error", 4)
    assert wait_until(lambda: not runner.busy())


###############################################################################
# What a script leaves behind does not outlive its run #########################
###############################################################################

# A runner in a process of its own that becomes a child subreaper first, as the server does: it runs one script
# (argv[1] = the scripts dir, argv[2] = the script, argv[3] = its timeout in ms) to its end, prints the result as
# one JSON line, then waits for a line on stdin before it exits, so the test looks at the process table while
# this process (which adopts what the script abandons) is still alive.
SUBREAPER_RUNNER = r"""
import json, os, sys, threading, time, uuid
import schedserver

root, script, timeout_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
subreaper = schedserver.ProcessTable.become_subreaper()
deadlines = schedserver.DeadlineWatcher()
runner = schedserver.ScriptRunner(deadlines, kill_grace=0.5, adopt_orphans=True)
target = schedserver.ScriptTarget("job.sh", os.path.join(root, "job.sh"), ("/bin/sh", "-c", script), timeout_ms,
                                  root)
job = schedserver.Job("script:job.sh", "script", "job.sh", schedserver.parse_cron("0 * * * *"),
                      schedserver.load_timezone("UTC"), target)
run = schedserver.Run(str(uuid.uuid4()), job, time.time(), "manual", 1, time.time())
ended, done = [], threading.Event()
runner.start(run, lambda result: (ended.append(result), done.set()))
if done.wait(60):
    print(json.dumps({"subreaper": subreaper, "status": ended[0].status, "error": ended[0].error}), flush=True)
else:
    print(json.dumps({"subreaper": subreaper, "status": "never ended"}), flush=True)
sys.stdin.readline()
runner.close()
deadlines.close()
"""

# What an escaped descendant runs: it says which process it is and its process group, then sleeps with the
# marker (its first argument) in its command line.
ANNOUNCE = """read -r pid comm state ppid pgrp rest < /proc/$$/stat
echo "$$ $pgrp" > escaped.pid
exec sleep "$1"
"""
# Ways a script's descendant leaves the script's process group (or session). Each goes through a process that
# exits at once, so the escaped one is an orphan while the script still runs.
ESCAPES = {
    "setsid": "(setsid sh ./announce.sh MARKER &)",
    "set -m job": "bash -c 'set -m; sh ./announce.sh MARKER &'",
    "python setpgid": f"({sys.executable} -c 'import os, sys, time; os.setpgid(0, 0); "
                      "open(\"escaped.pid\", \"w\").write(f\"{os.getpid()} {os.getpgid(0)}\"); time.sleep(1000)' "
                      "MARKER &)",
}
WAIT_FOR_ESCAPE = "while [ ! -s escaped.pid ]; do sleep 0.01; done"
ENDINGS = {                 # (what the script does once its descendant escaped, its timeout, the run's status)
    "the run ends": ("echo started", 20_000, "ok"),
    "the run times out": ("sleep 30", 1_000, "timeout"),
}


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


@pytest.mark.parametrize("ending", sorted(ENDINGS))
@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_a_descendant_that_left_the_scripts_group_is_gone_once_the_run_is_over(tmp_path, escape, ending):
    if escape == "set -m job" and not shutil.which("bash"):
        pytest.skip("bash is not installed (dash's set -m needs a terminal)")
    marker = unique_marker()
    then, timeout_ms, status = ENDINGS[ending]
    (tmp_path / "announce.sh").write_text(ANNOUNCE)
    script = f"echo $$ > script.pid; {ESCAPES[escape].replace('MARKER', marker)}; {WAIT_FOR_ESCAPE}; {then}"
    env = schedserver_env(token=None)
    proc = subprocess.Popen([sys.executable, "-c", SUBREAPER_RUNNER, str(tmp_path), script, str(timeout_ms)],
                            cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(proc, 60)
        assert line, f"the runner process said nothing; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        answer = json.loads(line)
        assert answer["subreaper"] is True
        assert answer["status"] == status, answer
        escaped, escaped_group = (int(n) for n in (tmp_path / "escaped.pid").read_text().split())
        assert escaped_group != int((tmp_path / "script.pid").read_text()), "it never left the script's group"

        assert wait_until(lambda: not is_alive(escaped), 5.0), f"pid {escaped} ({escape}) outlived its run"
        # (the runner process's own command line holds the marker: it is not one of the script's)
        assert wait_until(lambda: not processes_with(marker, but=(proc.pid,)), 5.0), processes_with(marker)
    finally:
        kill_processes_with(marker, but=(proc.pid,))
        if proc.poll() is None:
            try:
                proc.stdin.write("\n")
                proc.stdin.flush()
            except OSError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


###############################################################################
# A script link re-pointed outside the scripts dir #############################
###############################################################################

def repoint_outside(h: Scripts, how: str, tmp_path: Path) -> Path:
    """Register `jobs/link.sh` (a link to a script inside the scripts dir), then re-point it, or swap its
    directory for a link, to a copy outside that touches `tmp_path`/escaped when run; that file's path."""
    escaped = tmp_path / "escaped"
    h.write("real/job.sh", "# @schedule 0 * * * *\necho inside\n")
    (h.root / "jobs").mkdir()
    os.symlink(h.root / "real" / "job.sh", h.root / "jobs" / "link.sh")
    assert h.scripts.reload()["added"] == ["jobs/link.sh", "real/job.sh"]

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "job.sh").write_text(f"# @schedule 0 * * * *\ntouch {escaped}\necho outside\n")
    if how == "the link is re-pointed":
        os.unlink(h.root / "jobs" / "link.sh")
        os.symlink(outside / "job.sh", h.root / "jobs" / "link.sh")
    else:
        os.symlink(outside / "job.sh", outside / "link.sh")
        os.rename(h.root / "jobs", tmp_path / "old-jobs")
        os.symlink(outside, h.root / "jobs")
    return escaped


REPOINTS = ["the link is re-pointed", "its directory is swapped for a link"]


@pytest.mark.parametrize("how", REPOINTS)
def test_a_trigger_of_a_script_that_now_resolves_outside_the_scripts_dir_is_refused_without_a_reload(h, tmp_path,
                                                                                                       how):
    escaped = repoint_outside(h, how, tmp_path)

    result = h.scripts.trigger({"scriptPath": "jobs/link.sh"})

    assert result["status"] == "error", result
    assert "outside the scripts directory" in result["error"]
    assert not escaped.exists()
    [record] = h.log_lines()
    assert (record["scriptPath"], record["status"], record["trigger"]) == ("jobs/link.sh", "error", "manual")


@pytest.mark.parametrize("how", REPOINTS)
def test_a_cron_fire_of_a_script_that_now_resolves_outside_the_scripts_dir_is_refused_without_a_reload(h, tmp_path,
                                                                                                        how):
    escaped = repoint_outside(h, how, tmp_path)

    h.tick("2026-01-15T12:00:00Z")

    records = {r["scriptPath"]: r for r in h.log_lines()}
    assert records["jobs/link.sh"]["status"] == "error"
    assert "outside the scripts directory" in records["jobs/link.sh"]["error"]
    assert (records["real/job.sh"]["status"], records["real/job.sh"]["returnPreview"]) == ("ok", "inside")
    assert not escaped.exists()


###############################################################################
# After a crash: what a run left is stopped at the next start ##################
###############################################################################

CRASH_SCRIPT = """#!/bin/sh
# @schedule 0 0 0 1 1 *
# @timeout 1h
echo $$ > "{dir}/script.pid"
setsid sh -c 'echo $$ > "{dir}/escaped.pid"; exec sleep {marker}' &
sleep {marker} &
echo $! > "{dir}/child.pid"
while [ ! -s "{dir}/escaped.pid" ]; do sleep 0.01; done
touch "{dir}/ready"
sleep {marker}
"""


def test_after_the_server_is_killed_mid_run_the_next_start_stops_what_is_left_and_records_it_interrupted(tmp_path):
    marker = unique_marker()
    scripts_dir, data_dir, pids = tmp_path / "scripts", tmp_path / "data", tmp_path / "pids"
    scripts_dir.mkdir()
    pids.mkdir()
    (scripts_dir / "crash.sh").write_text(CRASH_SCRIPT.format(dir=pids, marker=marker))
    (scripts_dir / "crash.sh").chmod(0o755)
    first = ServerProcess(data_dir, scripts_dir)
    second = ServerProcess(data_dir, scripts_dir)
    trigger_thread = None
    try:
        first.start()
        # A manual trigger answers when the script ends; the script never does, so it waits in a thread.
        trigger_thread = threading.Thread(target=lambda: _quietly(first.api, "POST", EXEC_PATH + "/trigger",
                                                                  json={"scriptPath": "crash.sh"}, timeout=30),
                                          daemon=True)
        trigger_thread.start()
        assert wait_until(lambda: (pids / "ready").exists(), 10.0), first.stderr_text()[-2000:]
        markers_dir = data_dir / "running"
        assert wait_until(lambda: [m for m in _markers(markers_dir) if m.get("process")], 5.0)
        [run_marker] = _markers(markers_dir)
        script_pid = int((pids / "script.pid").read_text())
        left = {"script": script_pid, "child": int((pids / "child.pid").read_text()),
                "escaped": int((pids / "escaped.pid").read_text())}
        assert run_marker["process"]["pid"] == script_pid

        first.kill()
        assert all(is_alive(pid) for pid in left.values()), "the kill should have left the run's processes"
        assert process_state(left["escaped"])[1] != script_pid          # it left the script's process group

        second.start()
        assert wait_until(lambda: not [name for name, pid in left.items() if is_alive(pid)], 5.0), \
            [name for name, pid in left.items() if is_alive(pid)]
        assert wait_until(lambda: not processes_with(marker), 5.0)
        history = second.api("GET", EXEC_PATH + "/history", params={"scriptPath": "crash.sh"})
        assert history.status_code == 200, history.text
        [entry] = history.json()["entries"]
        assert (entry["runId"], entry["status"], entry["trigger"]) == (run_marker["run_id"], "interrupted", "manual")
        assert entry["error"] == "interrupted: the server stopped before the run ended"
        assert _markers(markers_dir) == []
        listing = second.api("GET", EXEC_PATH + "/list").json()
        [item] = listing["schedules"]
        assert (item["scriptRel"], item["lastFireStatus"], item["running"]) == ("crash.sh", "interrupted", False)
    finally:
        first.kill()
        second.stop()
        kill_processes_with(marker)
        if trigger_thread is not None:
            trigger_thread.join(timeout=10)


def _quietly(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception:           # the server was killed under the request: expected
        return None


def _markers(directory: Path) -> list[dict]:
    found = []
    for path in sorted(directory.glob("*.json")) if directory.exists() else []:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue            # being replaced at this very moment
    return found
