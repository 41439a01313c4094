"""Unit tests for script schedules: directives, discovery, registration, reload, firing, history, the runner.

Scripts are real files in a temporary scripts tree, and runs are real subprocesses where the test is about
running (the runner, the environment, timeouts); elsewhere a hand-written instant runner stands in. The
scheduler never starts a thread: its worker pool is a recording `submit`, cron fires are driven with
`scheduler.tick(now)` at a fake clock's time, and the recorded work is then run inline.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import tracemalloc
import uuid
from datetime import datetime

import pytest

import schedserver
from schedserver import (HEADER_BYTES, MAX_OUTPUT_BYTES, InFlightRuns, InvalidParameter, NdjsonLog, OutputTail,
                         RegistrationError, Scheduler, ScriptReaper, ScriptResult, ScriptRunner, ScriptSchedules,
                         discover_scripts, parse_directives, parse_iso, parse_timeout, script_identity, utc_iso)
from fakes import FakeClock, RecordingSubmit


def at(text: str) -> float:
    """An ISO 8601 UTC instant as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


NOW = at("2026-01-15T11:59:30.250Z")
HOURLY = "# @schedule 0 * * * *\necho hourly\n"


###############################################################################
# Fakes and the harness ########################################################
###############################################################################

class InstantRunner:
    """A runner that finishes every script at once, printing `preview`; remembers what it was asked to run."""

    def __init__(self, clock: FakeClock, preview: str = "done"):
        self.clock = clock
        self.preview = preview
        self.calls: list[dict] = []

    def run(self, argv, cwd, env, timeout_ms, on_spawn=None) -> ScriptResult:
        self.calls.append({"argv": argv, "cwd": cwd, "env": env, "timeout_ms": timeout_ms})
        return ScriptResult("ok", self.clock(), 3, return_preview=self.preview, exit_code=0)


class CountingPreflight(ScriptSchedules):
    """A service that counts how often each script's preflight check really runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.preflight_runs: dict[str, int] = {}

    def _run_preflight(self, path: str, *args):
        rel = os.path.relpath(path, self.scripts_dir)
        self.preflight_runs[rel] = self.preflight_runs.get(rel, 0) + 1
        return super()._run_preflight(path, *args)


class Harness:
    """A scripts tree, a data dir and a service over them, with helpers that read like the feature."""

    def __init__(self, tmp_path, clock: FakeClock | None = None, *, runner=None, service_class=ScriptSchedules,
                 **options):
        self.tmp_path = tmp_path
        self.root = tmp_path / "scripts"
        self.data = tmp_path / "data"
        self.root.mkdir(exist_ok=True)
        self.data.mkdir(exist_ok=True)
        self.clock = clock or FakeClock(NOW)
        self.submit = RecordingSubmit()
        self.scheduler = Scheduler(submit=self.submit, clock=self.clock)
        self.fires = NdjsonLog(str(self.data / "fires.log"), 10 * 1024 * 1024, 5)
        self.reaper = ScriptReaper()
        self.runner = runner if runner is not None else ScriptRunner(clock=self.clock, kill_grace=0.2,
                                                                     reaper=self.reaper)
        self.options = options
        self.service_class = service_class
        self.scripts = service_class(str(self.root), self.fires, self.scheduler, self.runner, clock=self.clock,
                                     **options)

    def restart(self, runner=None) -> "Harness":
        """A fresh service and scheduler on the same files, loaded as at server start."""
        again = Harness(self.tmp_path, self.clock, runner=runner if runner is not None else self.runner,
                        service_class=self.service_class, **self.options)
        again.scripts.load()
        return again

    def write(self, rel: str, text: str, executable: bool = False, modified: str | None = None) -> str:
        """Write a script; `modified` sets its mtime, for tests where the fake clock meets file times."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if executable:
            path.chmod(0o755)
        if modified is not None:
            os.utime(path, (at(modified), at(modified)))
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
            self.scripts.inspect(rel)
        return str(caught.value)

    def registered(self) -> list[str]:
        return [item["scriptRel"] for item in self.scripts.list()["schedules"]]

    def item(self, rel: str) -> dict:
        return next(item for item in self.scripts.list()["schedules"] if item["scriptRel"] == rel)

    def tick(self, when: str) -> int:
        """Set the clock, tick, and run inline what the scheduler handed over (how many calls that was) and
        then the runs' ends, once the scripts have exited."""
        self.clock.set(when)
        self.scheduler.tick(self.clock())
        handed_over = len(self.submit.pending)
        self.submit.run_all(until=lambda: not getattr(self.runner, "reaper", self.reaper).busy())
        return handed_over

    def log_lines(self) -> list[dict]:
        """The fires log, oldest first."""
        path = self.data / "fires.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def h(tmp_path) -> Harness:
    return Harness(tmp_path)


def fire_record(rel: str, ts: str, status: str = "ok", trigger: str = "cron", **extra) -> dict:
    record = {"ts": ts, "scriptPath": rel, "expression": "0 * * * *", "runId": str(uuid.uuid4()),
              "status": status, "durationMs": 7, "trigger": trigger}
    record.update({"returnPreview": "fine"} if status == "ok" else {"error": "it broke"})
    record.update(extra)
    return record


def live_processes_in_group(pgid: int) -> list[int]:
    """Pids of processes in group `pgid` that are still alive (zombies waiting for a reaper do not count)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            alive.append(int(entry))
    return alive


def is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_until(condition, deadline_seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


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

    assert h.scripts.inspect("late.sh") is None
    assert h.scripts.inspect("early.sh").spec.expression == "0 * * * *"


def test_unknown_directives_are_ignored(h):
    h.write("job.sh", "# @author ops\n# @schedule 0 * * * *\n# @frobnicate yes please\necho hi\n")
    schedule = h.scripts.inspect("job.sh")
    assert schedule.spec.expression == "0 * * * *"


def test_a_script_without_a_schedule_directive_is_not_a_schedule(h):
    h.write("tool.sh", "# @description a helper other scripts call\necho hi\n")
    assert h.scripts.inspect("tool.sh") is None


def test_timeout_description_and_token_directives_are_registered(h):
    h.write("job.sh", "# @schedule 0 3 * * *\n# @timeout 5m\n# @description nightly backup\n# @token\necho hi\n")
    schedule = h.scripts.inspect("job.sh")
    assert (schedule.timeout_ms, schedule.description, schedule.token) == (300000, "nightly backup", True)


def test_a_script_without_a_timeout_gets_the_configured_default(tmp_path):
    h = Harness(tmp_path, default_timeout_ms=12345)
    h.write("job.sh", HOURLY)
    schedule = h.scripts.inspect("job.sh")
    assert (schedule.timeout_ms, schedule.description, schedule.token) == (12345, None, False)


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
    reason = h.reason("broken.py")
    assert reason.startswith("preflight failed: SyntaxError")


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


def test_a_configured_interpreter_that_is_not_installed_is_named_in_the_reason(tmp_path):
    h = Harness(tmp_path, interpreters={".rb": ("ruby-not-installed-here",)})
    h.write("job.rb", "# @schedule 0 * * * *\nputs 1\n")
    reason = h.reason("job.rb")
    assert "ruby-not-installed-here" in reason
    assert "[exec.interpreters]" in reason


def test_a_configured_interpreter_runs_its_extension(tmp_path):
    h = Harness(tmp_path, interpreters={".txt": ("/bin/sh",)})
    path = h.write("job.txt", "# @schedule 0 * * * *\necho from a text file\n")
    assert h.scripts.inspect("job.txt").argv == ("/bin/sh", path)

    h.scripts.reload()
    result = h.scripts.trigger({"scriptPath": "job.txt"})
    assert (result["status"], result["returnPreview"]) == ("ok", "from a text file")


def test_a_configured_preflight_command_checks_its_extension(tmp_path):
    h = Harness(tmp_path, interpreters={".txt": ("/bin/sh",)}, preflight={".txt": ("/bin/sh", "-n")})
    h.write("job.txt", "# @schedule 0 * * * *\nif true; then\n")
    assert h.reason("job.txt").startswith("preflight failed: ")


def test_an_executable_script_with_a_shebang_runs_directly(h):
    path = h.write("tool", "#!/bin/sh\n# @schedule 0 * * * *\necho direct\n", executable=True)
    assert h.scripts.inspect("tool").argv == (path,)


def test_a_shell_script_that_is_not_executable_runs_through_sh(h):
    path = h.write("job.sh", "#!/bin/sh\n# @schedule 0 * * * *\necho hi\n")
    assert h.scripts.inspect("job.sh").argv == ("/bin/sh", path)


def test_a_python_script_runs_with_the_servers_python(h):
    path = h.write("job.py", "# @schedule 0 * * * *\nprint('hi')\n")
    assert h.scripts.inspect("job.py").argv == (sys.executable, path)


###############################################################################
# Preflight cache ##############################################################
###############################################################################

def test_preflight_runs_again_only_for_a_changed_file(tmp_path):
    h = Harness(tmp_path, service_class=CountingPreflight)
    h.write("a.sh", HOURLY)
    h.write("b.py", "# @schedule 0 * * * *\nprint('b')\n")
    h.scripts.plan()
    assert h.scripts.preflight_runs == {"a.sh": 1, "b.py": 1}

    h.scripts.plan()
    h.scripts.reload()
    assert h.scripts.preflight_runs == {"a.sh": 1, "b.py": 1}

    h.write("a.sh", HOURLY + "echo one more line\n")
    h.scripts.plan()
    assert h.scripts.preflight_runs == {"a.sh": 2, "b.py": 1}


def test_a_cached_preflight_failure_is_still_reported(tmp_path):
    h = Harness(tmp_path, service_class=CountingPreflight)
    h.write("bad.py", "# @schedule 0 * * * *\ndef main(:\n")
    first = h.scripts.plan().failed
    second = h.scripts.plan().failed
    assert first == second and first[0]["reason"].startswith("preflight failed: SyntaxError")
    assert h.scripts.preflight_runs == {"bad.py": 1}


# Syntax checks run by /bin/sh drivers (SyntaxChecks) answer what a check run alone answers.
BATCH_SCRIPTS = {
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


def batch_harness(tmp_path) -> Harness:
    h = Harness(tmp_path, preflight={".chk": CUSTOM_CHECK}, interpreters={".chk": ("/bin/sh",)})
    for rel, text in BATCH_SCRIPTS.items():
        h.write(rel, text, executable=text.startswith("#!"))
    return h


def test_checks_run_by_the_drivers_answer_what_each_check_run_alone_answers(tmp_path):
    h = batch_harness(tmp_path)
    needed = h.scripts._checks_needed(discover_scripts(str(h.root)))
    alone = {path: h.scripts._run_preflight(path, schedserver._interpreter_name(
        h.scripts._command_for(path, open(path, "rb").read()), open(path, "rb").read())) for path, _, _ in needed}
    for drivers in (1, 2, 5):
        checks = schedserver.SyntaxChecks(needed, h.scripts._environment({}), drivers)
        try:
            assert {path: checks.result(path, command, stamp) for path, command, stamp in needed} == alone
        finally:
            checks.close()
    assert len(needed) == len(BATCH_SCRIPTS)
    assert alone[str(h.root / "ok.sh")] is None and alone[str(h.root / "bash.sh")] is None
    assert "Syntax error" in alone[str(h.root / "broken.sh")]
    assert alone[str(h.root / "custom.chk")] == "first words"
    assert alone[str(h.root / "custom-quiet.chk")] == "exit status 3"
    assert alone[str(h.root / "custom-stdout.chk")] == "on stdout"
    assert alone[str(h.root / "custom-blank-err.chk")] == "exit status 1"      # stderr had something: not stdout
    assert alone[str(h.root / "custom-cr.chk")] == "first"
    assert alone[str(h.root / "custom-nbsp.chk")] == "real error"           # a no-break space is blank too
    assert alone[str(h.root / "custom-nul.chk")] == "ab\x00cd"


def test_a_scan_after_begin_checks_runs_no_check_of_its_own_and_reports_the_same_failures(tmp_path, monkeypatch):
    h = batch_harness(tmp_path)
    expected = {f["path"]: f["reason"].replace(str(h.root), "ROOT") for f in h.scripts.plan().failed}
    (tmp_path / "again").mkdir()
    again = batch_harness(tmp_path / "again")
    spawned = []
    real_run = schedserver.subprocess.run
    monkeypatch.setattr(schedserver.subprocess, "run", lambda *a, **k: spawned.append(a) or real_run(*a, **k))
    again.scripts.begin_checks()
    again.scripts.load()

    assert spawned == []
    assert {f["path"]: f["reason"].replace(str(again.root), "ROOT")
            for f in again.scripts.reload(dry_run=True)["failed"]} == expected
    assert sorted(expected) == sorted(["-dash.sh", "bash-broken.sh", "broken.sh", "custom-quiet.chk",
                                       "custom-stdout.chk", "custom.chk", "custom-blank-err.chk", "custom-cr.chk",
                                       "custom-nbsp.chk", "custom-nul.chk", "team/with space's $HOME.sh"])
    assert sorted(item["scriptRel"] for item in again.scripts.list()["schedules"]) == ["bash.sh", "ok.sh"]


def test_a_script_changed_after_its_check_began_is_checked_again_as_it_is_now(tmp_path):
    h = Harness(tmp_path)
    h.write("job.sh", "#!/bin/sh\n# @schedule 0 * * * *\nif then fi (\n", executable=True)
    h.scripts.begin_checks()
    checks = h.scripts._begun
    path = str(h.root / "job.sh")
    assert "Syntax error" in checks.result(path, ("sh", "-n"), checks._stamps[path])      # checked as it was
    h.write("job.sh", "#!/bin/sh\n# @schedule 0 * * * *\necho fixed now\n", executable=True)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    h.scripts.load()

    assert h.registered() == ["job.sh"]
    st = os.stat(path)
    assert h.scripts._preflight_cache[path] == (st.st_size, st.st_mtime_ns, "sh", None)


def test_cancelling_begun_checks_leaves_a_scan_already_running_alone(tmp_path):
    h = Harness(tmp_path, preflight={".chk": ("/bin/sh", "-c", 'sleep 0.3; case "$1" in *bad*) exit 1;; esac',
                                              "check")}, interpreters={".chk": ("/bin/sh",)})
    for rel in ("a.chk", "b-bad.chk", "c.chk"):
        h.write(rel, "# @schedule 0 * * * *\n")
    answers: list[dict] = []
    scan = threading.Thread(target=lambda: answers.append(h.scripts.reload()))
    scan.start()
    time.sleep(0.1)
    h.scripts.close()                   # as Server.stop() does
    scan.join(timeout=30)

    assert [f["path"] for f in answers[0]["failed"]] == ["b-bad.chk"] and answers[0]["added"] == ["a.chk", "c.chk"]


def test_once_closed_for_a_stop_a_reload_waiting_for_its_turn_does_nothing(tmp_path):
    h = Harness(tmp_path)
    h.write("job.sh", HOURLY)
    h.scripts.close()

    assert h.scripts.reload()["added"] == [] and h.registered() == []


def test_a_hung_check_is_reported_and_the_scripts_after_it_are_checked_one_by_one(tmp_path, monkeypatch):
    monkeypatch.setattr(schedserver, "PREFLIGHT_TIMEOUT_SECONDS", 0.5)
    h = Harness(tmp_path, preflight={".chk": ("/bin/sh", "-c", 'case "$1" in *hang*) sleep 30;; *bad*) exit 1;; esac',
                                              "check")}, interpreters={".chk": ("/bin/sh",)})
    for rel in ("a-ok.chk", "b-hang.chk", "c-bad.chk", "d-ok.chk"):
        h.write(rel, "# @schedule 0 * * * *\n")
    needed = h.scripts._checks_needed(discover_scripts(str(h.root)))
    checks = schedserver.SyntaxChecks(needed, {}, 1)
    driver = checks._drivers[0]
    try:
        answers = [checks.result(*check) for check in needed]
    finally:
        checks.close()

    assert answers[0] is None and answers[1] == "/bin/sh took longer than 0.5 s"
    assert answers[2:] == [schedserver.SyntaxChecks.UNCHECKED] * 2
    assert driver.proc.returncode is not None and not os.path.exists(driver.scratch)
    assert [f["path"] for f in h.scripts.plan().failed] == ["b-hang.chk", "c-bad.chk"]


def test_closing_the_checks_stops_their_drivers_and_every_check_they_started(tmp_path):
    h = Harness(tmp_path, preflight={".chk": ("/bin/sh", "-c", "sleep 30", "check")},
                interpreters={".chk": ("/bin/sh",)})
    h.write("slow.chk", "# @schedule 0 * * * *\n")
    h.scripts.begin_checks()
    driver = h.scripts._begun._drivers[0]
    deadline = time.monotonic() + 5
    while not schedserver._group_alive(driver.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    h.scripts.close()

    assert driver.proc.returncode is not None
    # SIGKILLed: the check ends as soon as the kernel has delivered the signal, a moment after close() returns.
    assert wait_until(lambda: not schedserver._group_alive(driver.proc.pid), 2.0)
    assert h.scripts._begun is None


def test_without_a_scratch_directory_for_the_drivers_each_script_is_checked_alone(tmp_path, monkeypatch):
    h = batch_harness(tmp_path)
    expected = {f["path"]: f["reason"] for f in h.scripts.plan().failed}
    h.scripts._preflight_cache.clear()
    monkeypatch.setattr(schedserver.tempfile, "mkdtemp", lambda **kw: (_ for _ in ()).throw(OSError(30, "Read-only")))

    assert {f["path"]: f["reason"] for f in h.scripts.plan().failed} == expected


def test_a_path_holding_a_newline_is_checked_alone(tmp_path):
    h = Harness(tmp_path)
    h.write("odd\nname.sh", "# @schedule 0 * * * *\nif then fi (\n")
    needed = h.scripts._checks_needed(discover_scripts(str(h.root)))
    checks = schedserver.SyntaxChecks(needed, {}, 1)
    assert len(needed) == 1 and len(checks) == 0
    assert checks.result(*needed[0]) is schedserver.SyntaxChecks.UNCHECKED
    assert h.scripts.plan().failed[0]["reason"].startswith("preflight failed:")


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
    assert changed["registeredAt"] == "2026-01-15T12:10:00.000Z"
    assert h.item("keep.sh")["registeredAt"] == first_registered_at


def test_a_registered_script_that_breaks_is_removed_and_listed_as_failed(h):
    h.write("job.sh", HOURLY)
    h.scripts.reload()
    h.write("job.sh", "# @schedule 0 * * * *\n# @timeout forever\necho hi\n")

    result = h.scripts.reload()

    assert result["removed"] == ["job.sh"]
    assert result["failed"] == [{"path": "job.sh", "reason": h.reason("job.sh")}]
    assert h.registered() == []
    assert h.scheduler.next_at(schedserver._exec_key("job.sh")) is None


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
    assert uuid.UUID(record["runId"])
    assert isinstance(record["durationMs"], int) and record["durationMs"] >= 0
    item = h.item("cleanup.sh")
    assert (item["lastFireAt"], item["lastFireStatus"], item["lastFireRunId"]) == \
        ("2026-01-15T12:00:00.000Z", "ok", record["runId"])
    assert item["nextFire"] == "2026-01-15T13:00:00.000Z"


def test_a_failing_script_logs_its_last_stderr_line(h):
    h.write("fails.py", "# @schedule 0 * * * *\nNone.id\n")
    h.scripts.reload()
    h.tick("2026-01-15T12:00:00Z")
    [record] = h.log_lines()
    assert record["status"] == "error"
    assert record["error"] == "AttributeError: 'NoneType' object has no attribute 'id'"
    assert "returnPreview" not in record


def test_a_fire_that_comes_while_the_previous_run_is_running_is_skipped(tmp_path):
    h = Harness(tmp_path, runner=InstantRunner(FakeClock(NOW)))
    h.write("slow.sh", HOURLY)
    h.scripts.reload()
    h.clock.set("2026-01-15T12:00:00Z")
    h.scheduler.tick(h.clock())
    [first_fire] = h.submit.pending
    h.submit.pending.clear()        # the 12:00 run is still going
    assert h.item("slow.sh")["running"] is True

    assert h.tick("2026-01-15T13:00:00Z") == 1

    [skipped] = h.log_lines()
    assert (skipped["status"], skipped["ts"], skipped["trigger"]) == ("skipped", "2026-01-15T13:00:00.000Z", "cron")
    assert skipped["error"] == "previous run still in progress"
    assert h.runner.calls == []
    fn, *args = first_fire
    h.clock.set("2026-01-15T12:00:01Z")     # the worker took the 12:00 fire at once; only its end is delayed here
    fn(*args)
    assert [r["status"] for r in h.log_lines()] == ["skipped", "ok"]
    assert h.item("slow.sh")["running"] is False


def test_fires_missed_while_the_server_was_down_are_logged_once_with_a_count(tmp_path):
    clock = FakeClock(at("2026-01-15T12:30:00Z"))
    h = Harness(tmp_path, clock, runner=InstantRunner(clock))
    h.write("hourly.sh", HOURLY, modified="2026-01-01T00:00:00Z")
    h.fires.append(fire_record("hourly.sh", "2026-01-15T09:00:00.000Z"))     # last fire, three hours ago

    h.scripts.load()
    assert h.tick("2026-01-15T12:30:00Z") == 1

    missed = h.log_lines()[-1]
    assert (missed["status"], missed["count"], missed["trigger"]) == ("missed", 3, "cron")
    assert missed["ts"] == "2026-01-15T10:00:00.000Z"
    assert h.runner.calls == []                                              # no burst of catch-up runs
    assert h.item("hourly.sh")["nextFire"] == "2026-01-15T13:00:00.000Z"


def test_a_second_restart_does_not_report_the_same_missed_fires_again(tmp_path):
    clock = FakeClock(at("2026-01-15T12:30:00Z"))
    h = Harness(tmp_path, clock, runner=InstantRunner(clock))
    h.write("hourly.sh", HOURLY, modified="2026-01-01T00:00:00Z")
    h.fires.append(fire_record("hourly.sh", "2026-01-15T09:00:00.000Z"))
    h.scripts.load()
    h.tick("2026-01-15T12:30:00Z")                                          # missed 10:00, 11:00, 12:00

    clock.set("2026-01-15T12:40:00Z")                                       # down 12:30-12:40: no slot in it
    again = h.restart()
    again.tick("2026-01-15T12:40:00Z")

    assert [(r["status"], r.get("count")) for r in again.log_lines()] == [("ok", None), ("missed", 3)]


def test_fires_of_a_script_that_was_not_registered_are_not_reported_missed_after_a_restart(tmp_path):
    clock = FakeClock(at("2026-01-10T09:30:00Z"))
    h = Harness(tmp_path, clock, runner=InstantRunner(clock))
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


def test_history_since_still_finds_fires_logged_before_a_restart(tmp_path):
    clock = FakeClock(at("2026-01-10T09:30:00Z"))
    h = Harness(tmp_path, clock, runner=InstantRunner(clock))
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


def restart_after_an_interpreter_was_missing_for_five_days(tmp_path, monkeypatch) -> Harness:
    """report.job (unchanged since Jan 1) fires on Jan 10; its interpreter then vanishes from PATH until Jan 15,
    while backup.sh fires at 10:00 and 11:00; the interpreter comes back and the server restarts at 11:45."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "job-runner").write_text("#!/bin/sh\nexec /bin/sh \"$@\"\n")
    (bin_dir / "job-runner").chmod(0o755)
    with_runner, without_runner = f"{bin_dir}:{os.environ['PATH']}", os.environ["PATH"]
    monkeypatch.setenv("PATH", with_runner)
    clock = FakeClock(at("2026-01-10T09:30:00Z"))
    h = Harness(tmp_path, clock, runner=InstantRunner(clock), interpreters={".job": ("job-runner",)})
    h.write("report.job", HOURLY, modified="2026-01-01T00:00:00Z")
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


def test_fires_of_a_script_that_could_not_run_are_not_reported_missed_after_a_restart(tmp_path, monkeypatch):
    again = restart_after_an_interpreter_was_missing_for_five_days(tmp_path, monkeypatch)
    assert [(r["scriptPath"], r["status"]) for r in again.log_lines()] == [
        ("report.job", "ok"), ("backup.sh", "ok"), ("backup.sh", "ok")]


def test_history_since_finds_every_fire_in_the_window_whatever_was_logged_after_it(tmp_path, monkeypatch):
    again = restart_after_an_interpreter_was_missing_for_five_days(tmp_path, monkeypatch)
    entries = again.scripts.history(since=at("2026-01-15T00:00:00Z"))["entries"]
    assert [(e["scriptPath"], e["ts"]) for e in entries if e["status"] == "ok"] == [
        ("backup.sh", "2026-01-15T11:00:00.000Z"), ("backup.sh", "2026-01-15T10:00:00.000Z")]


def test_the_last_fire_shown_in_the_list_survives_a_restart(tmp_path):
    clock = FakeClock(at("2026-01-15T12:10:00Z"))
    h = Harness(tmp_path, clock, runner=InstantRunner(clock))
    h.write("a.sh", HOURLY, modified="2026-01-01T00:00:00Z")
    h.write("b.sh", HOURLY, modified="2026-01-01T00:00:00Z")
    h.fires.append(fire_record("a.sh", "2026-01-15T11:00:00.000Z"))
    newest = fire_record("a.sh", "2026-01-15T12:00:00.000Z", status="error")
    h.fires.append(newest)

    h.scripts.load()

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


###############################################################################
# The script's environment #####################################################
###############################################################################

ENV_DUMP = """# @schedule 0 * * * *
import json, os, sys
with open({out!r}, "w") as f:
    json.dump({{"env": dict(os.environ), "cwd": os.getcwd(), "stdin": sys.stdin.read()}}, f)
"""


@pytest.fixture
def env_harness(tmp_path, monkeypatch) -> Harness:
    monkeypatch.setenv("SCHEDSERVER_TOKEN", "tok-123,tok-456")
    monkeypatch.setenv("SCHEDSERVER_READ_TOKEN", "read-789")
    monkeypatch.setenv("DEPLOY_API_KEY", "tok-123")
    monkeypatch.setenv("READER_KEY", "read-789")
    monkeypatch.setenv("HARMLESS_SETTING", "visible")
    h = Harness(tmp_path, secret_values=("tok-123", "tok-456", "read-789"))
    h.write("jobs/env.py", ENV_DUMP.format(out=str(tmp_path / "env.json")))
    h.scripts.reload()
    return h


def read_dump(h: Harness) -> dict:
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
    assert not [name for name, value in env.items() if "tok-123" in value or "read-789" in value]
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


def marker_contents(marker_dir) -> list[dict]:
    """The run markers on disk that hold a run (empty slot files hold none)."""
    return [json.loads(path.read_text()) for path in sorted(marker_dir.iterdir()) if path.read_text()]


@pytest.fixture
def readied(tmp_path) -> Harness:
    """A script due at 12:00:00 whose fire the scheduler readied at 11:59:59.9, with markers on disk."""
    h = Harness(tmp_path, inflight=InFlightRuns(str(tmp_path / "running")))
    h.write("jobs/env.py", ENV_DUMP.format(out=str(tmp_path / "env.json")))
    h.scripts.reload()
    h.clock.set("2026-01-15T11:59:59.900Z")
    assert h.scheduler.prepare(at("2026-01-15T12:00:00Z")) == 1
    return h


def test_a_cron_fire_readied_ahead_runs_with_the_run_id_readied_and_its_marker_is_written_when_it_begins(readied):
    h = readied
    ((_, readied_run),) = h.scripts._prepared.items()
    assert marker_contents(h.tmp_path / "running") == []    # a fire may wait for a worker: no marker before then
    h.clock.set("2026-01-15T12:00:00.010Z")
    h.scheduler.tick(h.clock())
    h.clock.set("2026-01-15T12:00:00.020Z")                 # a worker takes the fire
    fn, *args = h.submit.pending.pop(0)
    spawned = []
    original_start = h.runner.start
    h.runner.start = lambda *a, **k: (spawned.append(marker_contents(h.tmp_path / "running")), original_start(*a, **k))
    fn(*args)
    ((marker,),) = spawned                                  # on disk by the time the script is spawned
    assert (marker["runId"], marker["ts"], marker["startedAt"]) == (
        readied_run[1], "2026-01-15T12:00:00.000Z", "2026-01-15T12:00:00.020Z")
    h.submit.run_all(until=lambda: not h.reaper.busy())
    (record,) = h.log_lines()
    assert read_dump(h)["env"]["SCHEDSERVER_RUN_ID"] == marker["runId"] == record["runId"]
    assert (record["status"], record["startedAt"]) == ("ok", "2026-01-15T12:00:00.020Z")
    assert marker_contents(h.tmp_path / "running") == [] and h.scripts._prepared == {}


@pytest.mark.parametrize("worker_first", [False, True])
def test_a_script_changed_after_its_fire_was_readied_runs_as_it_is_now_with_a_fresh_run(readied, worker_first):
    h = readied
    ((_, (old_schedule, old_run_id, _, _)),) = h.scripts._prepared.items()
    h.edit_now("jobs/env.py", "# @timeout 20s\n" + ENV_DUMP.format(out=str(h.tmp_path / "env.json")))
    h.scripts.reload()
    if worker_first:    # a worker reaches the old job's fire before the ticker lets go of what was readied for it
        h.scripts._fire_cron("jobs/env.py", at("2026-01-15T12:00:00Z"))
        h.submit.run_all(until=lambda: not h.reaper.busy())
    else:
        h.tick("2026-01-15T12:00:00.010Z")
    (record,) = h.log_lines()
    assert record["status"] == "ok" and record["runId"] != old_run_id
    assert read_dump(h)["env"]["SCHEDSERVER_RUN_ID"] == record["runId"]
    assert h.scripts._registered["jobs/env.py"].timeout_ms == 20_000 != old_schedule.timeout_ms
    assert marker_contents(h.tmp_path / "running") == [] and h.scripts._prepared == {}


def test_a_script_removed_after_its_fire_was_readied_does_not_run_and_leaves_no_marker(readied):
    h = readied
    h.remove("jobs/env.py")
    h.scripts.reload()
    h.tick("2026-01-15T12:00:00.010Z")
    assert h.log_lines() == [] and not (h.tmp_path / "env.json").exists()
    assert marker_contents(h.tmp_path / "running") == [] and h.scripts._prepared == {}


###############################################################################
# History ######################################################################
###############################################################################

def hourly_fires(h: Harness, rel: str, count: int, start: str = "2026-01-15T00:00:00Z") -> list[dict]:
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
    assert [e["scriptPath"] for e in answer["entries"]] == ["slow.sh", "fast.sh", "fast.sh"]


def test_history_returns_at_most_limit_entries(h):
    records = hourly_fires(h, "a.sh", 10)
    answer = h.scripts.history(limit=3)
    assert answer["entries"] == list(reversed(records[-3:]))
    assert (answer["total"], answer["limit"]) == (3, 3)


def test_history_reads_rotated_files_only_when_asked(tmp_path):
    h = Harness(tmp_path)
    h.fires = h.scripts.fires = NdjsonLog(str(h.data / "fires.log"), 1000, 20)
    records = hourly_fires(h, "a.sh", 30)
    rotated = sorted(p.name for p in h.data.iterdir() if p.name.startswith("fires.log."))
    assert "fires.log.1" in rotated and "fires.log.2" in rotated
    in_current_file = len((h.data / "fires.log").read_text().splitlines())

    current_only = h.scripts.history(limit=1000)
    everything = h.scripts.history(limit=1000, include_rotated=True)

    assert current_only["entries"] == list(reversed(records))[:in_current_file]
    assert everything["entries"] == list(reversed(records))
    assert (everything["total"], everything["includeRotated"]) == (30, True)


def test_history_limit_and_since_apply_across_rotated_files(tmp_path):
    h = Harness(tmp_path)
    h.fires = h.scripts.fires = NdjsonLog(str(h.data / "fires.log"), 1000, 20)
    records = hourly_fires(h, "a.sh", 30)
    answer = h.scripts.history(since=parse_iso(records[5]["ts"]), limit=1000, include_rotated=True)
    assert answer["entries"] == list(reversed(records[5:]))
    assert h.scripts.history(limit=12, include_rotated=True)["entries"] == list(reversed(records[-12:]))


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

def run_sh(tmp_path, script: str, timeout_ms: int = 5000, **runner_options) -> ScriptResult:
    runner = ScriptRunner(kill_grace=runner_options.pop("kill_grace", 0.2), **runner_options)
    return runner.run(["/bin/sh", "-c", script], str(tmp_path), {"PATH": os.environ["PATH"]}, timeout_ms)


def test_a_script_that_exits_0_is_ok_with_its_last_non_empty_line_as_preview(tmp_path):
    result = run_sh(tmp_path, "echo first; echo 'the last line is long'; echo; echo '   '", preview_chars=10)
    assert (result.status, result.exit_code, result.return_preview, result.error) == ("ok", 0, "the last l", None)


def test_the_preview_keeps_200_characters_by_default(tmp_path):
    result = run_sh(tmp_path, "printf '%0300d\\n' 7")
    assert result.return_preview == "0" * 200


def test_a_script_that_prints_nothing_has_no_preview(tmp_path):
    result = run_sh(tmp_path, "true")
    assert (result.status, result.return_preview) == ("ok", None)


def test_a_failing_script_reports_its_last_stderr_line(tmp_path):
    result = run_sh(tmp_path, "echo working; echo 'warming up' >&2; echo 'TypeError: boom' >&2; echo >&2; exit 1")
    assert (result.status, result.exit_code, result.error) == ("error", 1, "TypeError: boom")


def test_a_failing_script_without_stderr_reports_its_exit_status(tmp_path):
    result = run_sh(tmp_path, "echo on stdout only; exit 3")
    assert (result.status, result.error) == ("error", "exit status 3")


def test_a_script_killed_by_a_signal_names_it(tmp_path):
    result = run_sh(tmp_path, "kill -9 $$")
    assert (result.status, result.error) == ("error", "killed by signal SIGKILL")


def test_a_script_that_cannot_start_is_an_error_with_the_os_reason(tmp_path):
    runner = ScriptRunner()
    result = runner.run([str(tmp_path / "no-such-script")], str(tmp_path), {}, 1000)
    assert result.status == "error"
    assert result.error.startswith("cannot start: ")
    assert "No such file" in result.error


def test_a_timed_out_script_is_killed_with_its_children(tmp_path):
    script = ("echo $$ > pgid; sleep 300 & echo $! >> kids; sleep 300 & echo $! >> kids; "
              "echo started; wait")
    started = time.monotonic()
    result = run_sh(tmp_path, script, timeout_ms=400)
    elapsed = time.monotonic() - started

    assert (result.status, result.error) == ("timeout", "timed out after 400 ms")
    assert elapsed < 3
    pgid = int((tmp_path / "pgid").read_text())
    kids = [int(pid) for pid in (tmp_path / "kids").read_text().split()]
    assert len(kids) == 2
    assert wait_until(lambda: not live_processes_in_group(pgid)), live_processes_in_group(pgid)
    assert not [pid for pid in kids if is_alive(pid)]


def test_a_script_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    script = "trap '' TERM; echo $$ > pgid; sleep 300 & wait; sleep 300"
    started = time.monotonic()
    result = run_sh(tmp_path, script, timeout_ms=300, kill_grace=0.2)
    assert result.status == "timeout"
    assert time.monotonic() - started < 3
    pgid = int((tmp_path / "pgid").read_text())
    assert wait_until(lambda: not live_processes_in_group(pgid)), live_processes_in_group(pgid)


def test_children_left_behind_by_a_finished_script_are_killed(tmp_path):
    result = run_sh(tmp_path, "echo $$ > pgid; sleep 300 & echo $! > kid; echo done")
    assert (result.status, result.return_preview) == ("ok", "done")
    pgid = int((tmp_path / "pgid").read_text())
    assert wait_until(lambda: not live_processes_in_group(pgid)), live_processes_in_group(pgid)
    assert not is_alive(int((tmp_path / "kid").read_text()))


def test_huge_output_keeps_only_a_bounded_tail_and_counts_the_rest(tmp_path):
    big = 50 * 1000 * 1000
    script = (f"head -c {big} /dev/zero | tr '\\0' x; echo; echo last-line; "
              f"head -c 100000 /dev/zero | tr '\\0' e >&2")
    tracemalloc.start()
    try:
        result = run_sh(tmp_path, script, timeout_ms=60000)
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


def test_a_script_runs_in_a_session_of_its_own_with_stdin_closed(tmp_path):
    script = ("import os, sys; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid(), "
              "repr(sys.stdin.read()))")
    result = ScriptRunner().run([sys.executable, "-c", script], str(tmp_path), {}, 5000)
    assert (result.status, result.return_preview) == ("ok", "True True ''")


def test_the_result_started_at_comes_from_the_runners_clock(tmp_path):
    result = ScriptRunner(clock=FakeClock(NOW)).run(["/bin/sh", "-c", "true"], str(tmp_path), {}, 5000)
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
    h.scheduler.tick(h.clock())
    [(fire, *args)] = h.submit.pending
    h.submit.pending.clear()
    fire(*args)                                             # the worker's part: it returns while the script waits
    assert h.scheduler.is_running("exec:waits.sh") and h.item("waits.sh")["running"] is True
    assert h.log_lines() == [] and h.submit.pending == []
    h.clock.set("2026-01-15T13:00:00Z")
    h.scheduler.tick(h.clock())
    h.submit.run_all()                                      # still running: skipped, not started again
    assert [r["status"] for r in h.log_lines()] == ["skipped"]

    (h.root / "release").touch()
    h.submit.run_all(until=lambda: not h.reaper.busy(), timeout=10)
    records = h.log_lines()
    assert [(r["status"], r["ts"], r.get("returnPreview")) for r in records] == [
        ("skipped", "2026-01-15T13:00:00.000Z", None), ("ok", "2026-01-15T12:00:00.000Z", "released")]
    assert not h.scheduler.is_running("exec:waits.sh")


def test_a_script_that_cannot_be_spawned_ends_as_an_error_at_once(h):
    h.write("gone.sh", "#!/no/such/interpreter\n# @schedule 0 * * * *\necho never\n", executable=True)
    h.scripts.reload()
    h.write("gone.sh", "#!/no/such/interpreter\n# @schedule 0 * * * *\necho never\n", executable=True)
    h.tick("2026-01-15T12:00:00Z")
    [record] = h.log_lines()
    assert record["status"] == "error" and "cannot start" in record["error"]
    assert not h.scheduler.is_running("exec:gone.sh")


def test_the_reaper_stops_waiting_for_output_held_open_by_a_process_that_left_the_group(tmp_path, monkeypatch):
    monkeypatch.setattr(schedserver, "OUTPUT_DRAIN_SECONDS", 0.3)
    marker = f"41.{os.getpid()}"
    try:
        result = run_sh(tmp_path, f"setsid sleep {marker} & echo done")     # the escaped sleep keeps stdout open
        assert (result.status, result.return_preview) == ("ok", "done")
    finally:
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            try:
                if marker in open(f"/proc/{pid}/cmdline").read():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_without_pidfd_the_reaper_notices_exits_by_polling(tmp_path, monkeypatch):
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")
    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    reaper = ScriptReaper()
    result = run_sh(tmp_path, "echo polled; exit 3", reaper=reaper)
    assert (result.status, result.exit_code, result.error) == ("error", 3, "exit status 3")
    result = run_sh(tmp_path, "echo polled", reaper=reaper)
    assert (result.status, result.return_preview) == ("ok", "polled")
    assert not reaper.busy()


def test_two_hundred_scripts_spawned_at_once_all_end_with_their_own_output(tmp_path):
    runner = ScriptRunner(kill_grace=0.2, reaper=ScriptReaper())
    ended: list[ScriptResult] = []
    for i in range(200):
        runner.start(["/bin/sh", "-c", f"echo out-{i}; echo err-{i} >&2; exit {i % 2}"], str(tmp_path),
                     {"PATH": os.environ["PATH"]}, 10_000, ended.append)
    assert wait_until(lambda: len(ended) == 200, 20.0), len(ended)
    assert sorted(r.return_preview or r.error for r in ended) == sorted(
        f"out-{i}" if i % 2 == 0 else f"err-{i}" for i in range(200))
    assert not runner.reaper.busy()


def test_a_script_whose_output_cannot_be_watched_still_ends_and_is_recorded(tmp_path):
    reaper = ScriptReaper()
    register = reaper._selector.register

    def no_room_for_pipes(fd, events, data=None):
        if data is not None and data[1] == "stderr":
            raise OSError(28, "No space left on device")
        return register(fd, events, data)
    reaper._selector.register = no_room_for_pipes
    ended: list[ScriptResult] = []
    ScriptRunner(reaper=reaper).start(["/bin/sh", "-c", "exit 4"], str(tmp_path), {"PATH": os.environ["PATH"]},
                                      5000, ended.append)
    assert wait_until(lambda: ended, 5.0)
    assert (ended[0].status, ended[0].exit_code) == ("error", 4)
    assert not reaper.busy()
