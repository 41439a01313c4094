"""End to end for script schedules: the real schedserver process on port 0 with a temp data dir and a temp
scripts dir of real Python, shell and node scripts.

Grouped by concern: firing on the cron cadence, failing and timing out, triggering by hand (and every
refusal), keeping secrets out of scripts, reloading (REST and SIGHUP), surviving a restart, reading rotated
history. One server is shared by the checks that only read or trigger; the ones that change the scripts dir,
restart or need other settings start their own. Every wait has a deadline; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from e2e_helpers import DEFAULT_TOKEN, ServerProcess, wait_until

EXEC = "/api/v1/exec/schedules"
READ_TOKEN = "e2e-read-token-5d2e8c41"
NEVER = "0 0 1 1 *"                 # a schedule that does not fire while the tests run (unless on New Year)
EVERY_2S = "*/2 * * * * *"
MARK = uuid.uuid4().int % 10**9     # makes the `sleep` children of this run findable in /proc
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


###############################################################################
# Helpers #####################################################################
###############################################################################

def write_script(root: Path, rel: str, text: str, executable: bool = False) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def history(server: ServerProcess, **params) -> list[dict]:
    return ok(server.api("GET", EXEC + "/history", params=params))["entries"]


def listing(server: ServerProcess) -> dict[str, dict]:
    """GET /list as scriptRel -> item."""
    return {item["scriptRel"]: item for item in ok(server.api("GET", EXEC + "/list"))["schedules"]}


def trigger(server: ServerProcess, body, token=None, timeout: float = 15.0):
    kwargs = {} if token is None else {"token": token}
    return server.api("POST", EXEC + "/trigger", json=body, timeout=timeout, **kwargs)


def reload(server: ServerProcess, body=None) -> dict:
    return ok(server.api("POST", EXEC + "/reload", json=body))


def cron_entries(server: ServerProcess, rel: str, n: int, timeout: float) -> list[dict]:
    """Wait until `rel` has at least `n` cron fires in the history; them, newest first."""
    def found():
        entries = [e for e in history(server, scriptPath=rel, limit=50) if e["trigger"] == "cron"]
        return entries if len(entries) >= n else None
    entries = wait_until(found, timeout, interval=0.2)
    assert entries, f"{rel}: fewer than {n} cron fires within {timeout:g} s:\n{server.stderr_text()}"
    return entries


def settled_last_fire(server: ServerProcess, rel: str) -> tuple[dict, dict]:
    """The list item and the newest history entry of a script that fires on its own, read while no fire
    lands in between (list, history, list again until both lists agree)."""
    for _ in range(20):
        before = listing(server)[rel]
        newest = history(server, scriptPath=rel, limit=1)
        after = listing(server)[rel]
        if before["lastFireRunId"] == after["lastFireRunId"] and newest:
            return after, newest[0]
        time.sleep(0.05)
    raise AssertionError(f"{rel}: list and history never settled")


def processes_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry))
    return found


def assert_exec_error(response, status: int, code: str, title: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == title and body["code"] == code, body
    assert body["message"] and ISO_MS.match(body["timestamp"]), body
    return body


###############################################################################
# The shared server ###########################################################
###############################################################################

PY_TICK = f"""
# @schedule {EVERY_2S}
# @description python tick
import os
print("warming up")
print("py-tick " + os.environ["SCHEDSERVER_TRIGGER"])
"""

SH_TICK = f"""
#!/bin/sh
# @schedule {EVERY_2S}
echo "first line"
echo "sh-tick $SCHEDSERVER_SCRIPT"
echo ""
"""

BOOM = f"""
# @schedule {EVERY_2S}
print("about to fail")
raise TypeError('boom id')
"""

NODE_TICK = f"""
// @schedule {EVERY_2S}
console.log("warming up");
console.log("node-tick " + process.version.startsWith("v"));
"""

HANG = f"""
# @schedule {NEVER}
# @timeout 1s
echo started
sleep 2997.{MARK} &
sh -c 'sleep 2998.{MARK}; echo never' &
wait
"""

GUARDED = f"""
# @schedule {NEVER}
# @token
echo guarded-ran
"""

NO_SCHEDULE = """
# a helper module, not a schedule
VALUE = 1
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the checks that only read and trigger: cron scripts firing every 2 s, a hanging script,
    a @token script, a long-running script, an environment dumper; an admin and a read-only token (and a copy
    of the admin token under another name in the server's environment)."""
    root = tmp_path_factory.mktemp("scripts-e2e")
    scripts, data = root / "scripts", root / "data"
    release, env_dump = root / "release-long", root / "env-dump.json"
    write_script(scripts, "cron/tick.py", PY_TICK)
    write_script(scripts, "cron/tick.sh", SH_TICK, executable=True)
    write_script(scripts, "cron/boom.py", BOOM)
    write_script(scripts, "cron/tick.js", NODE_TICK)
    write_script(scripts, "ops/hang.sh", HANG)
    write_script(scripts, "ops/guarded.sh", GUARDED)
    write_script(scripts, "lib/helper.py", NO_SCHEDULE)
    write_script(scripts, "ops/long.py", f"""
# @schedule {NEVER}
# @timeout 20s
import os, time
deadline = time.monotonic() + 15
while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:
    time.sleep(0.02)
print("released")
""")
    write_script(scripts, "env.py", f"""
# @schedule {NEVER}
import json, os
with open({str(env_dump)!r}, "w") as f:
    json.dump(dict(os.environ), f)
print("tokens:" + ",".join(k + "=" + v for k, v in sorted(os.environ.items()) if "TOKEN" in k.upper()))
""")
    server = ServerProcess(data, scripts, env={"SCHEDSERVER_READ_TOKEN": READ_TOKEN,
                                               "E2E_COPY_OF_THE_TOKEN": DEFAULT_TOKEN}).start()
    server.release, server.env_dump = release, env_dump
    try:
        yield server
    finally:
        server.stop()


###############################################################################
# Firing on the cron cadence ##################################################
###############################################################################

@pytest.mark.parametrize("rel, preview", [("cron/tick.py", "py-tick cron"), ("cron/tick.sh", "sh-tick cron/tick.sh")])
def test_a_python_and_a_shell_script_fire_on_even_seconds_and_report_their_last_stdout_line(shared, rel, preview):
    entries = cron_entries(shared, rel, 2, timeout=8)
    for entry in entries[:2]:
        assert entry["status"] == "ok", entry
        assert entry["trigger"] == "cron" and entry["scriptPath"] == rel and entry["expression"] == EVERY_2S
        assert entry["returnPreview"] == preview
        assert entry["ts"].endswith(".000Z") and int(epoch(entry["ts"])) % 2 == 0, entry["ts"]
        assert 0 <= epoch(entry["startedAt"]) - epoch(entry["ts"]) < 1.0, entry     # on time
        assert isinstance(entry["durationMs"], int) and entry["durationMs"] >= 0
    assert epoch(entries[0]["ts"]) - epoch(entries[1]["ts"]) == 2.0
    assert entries[0]["runId"] != entries[1]["runId"]


def test_the_list_shows_each_cron_scripts_last_fire_and_its_next_fire(shared):
    cron_entries(shared, "cron/tick.py", 1, timeout=6)
    item, newest = settled_last_fire(shared, "cron/tick.py")
    assert item["lastFireAt"] == newest["ts"]
    assert item["lastFireStatus"] == "ok" and item["lastFireRunId"] == newest["runId"]
    assert item["nextFire"].endswith(".000Z") and int(epoch(item["nextFire"])) % 2 == 0
    assert epoch(item["lastFireAt"]) < epoch(item["nextFire"]) <= time.time() + 2.5
    assert item["scriptPath"] == str(shared.scripts_dir / "cron" / "tick.py")
    assert (item["subdomain"], item["execId"], item["vmCacheKey"]) == ("cron", "cron", "cron:cron/tick.py")
    assert item["expression"] == EVERY_2S and item["timeoutMs"] == 30000 and item["description"] == "python tick"
    assert ISO_MS.match(item["registeredAt"])
    top_level = listing(shared)["env.py"]
    assert (top_level["subdomain"], top_level["vmCacheKey"]) == ("default", "default:env.py")
    assert "lib/helper.py" not in listing(shared)       # no @schedule, not registered


def test_a_node_script_fires_when_node_is_installed(shared):
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH")
    entries = cron_entries(shared, "cron/tick.js", 1, timeout=8)
    assert entries[0]["status"] == "ok", entries[0]
    assert entries[0]["returnPreview"] == "node-tick true"
    assert entries[0]["ts"].endswith(".000Z") and int(epoch(entries[0]["ts"])) % 2 == 0


###############################################################################
# Failing and timing out ######################################################
###############################################################################

def test_a_script_raising_type_error_is_recorded_as_an_error_with_the_exception_line(shared):
    entry = cron_entries(shared, "cron/boom.py", 1, timeout=8)[0]
    assert entry["status"] == "error"
    assert entry["error"] == "TypeError: boom id"
    assert "returnPreview" not in entry
    assert entry["ts"].endswith(".000Z") and int(epoch(entry["ts"])) % 2 == 0
    item, newest = settled_last_fire(shared, "cron/boom.py")
    assert item["lastFireStatus"] == "error" and item["lastFireRunId"] == newest["runId"]


def test_a_script_over_its_timeout_is_killed_with_its_children(shared):
    markers = (f"sleep 2997.{MARK}", f"sleep 2998.{MARK}")
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(trigger(shared, {"scriptPath": "ops/hang.sh"})),
                              daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: all(processes_with(m) for m in markers), 3.0), "the sleep children never started"
    finally:
        thread.join(timeout=15)
    assert answers, "the trigger did not answer within 15 s"
    answer = ok(answers[0])
    assert answer["status"] == "timeout" and answer["error"] == "timed out after 1000 ms", answer
    assert 1000 <= answer["durationMs"] < 5000
    entry = history(shared, scriptPath="ops/hang.sh", limit=1)[0]
    assert entry["runId"] == answer["runId"]
    assert (entry["status"], entry["error"], entry["trigger"]) == ("timeout", "timed out after 1000 ms", "manual")
    all_gone = wait_until(lambda: not any(processes_with(m) for m in markers), 5.0)
    assert all_gone, {m: processes_with(m) for m in markers}


###############################################################################
# Triggering by hand, and every refusal #######################################
###############################################################################

def test_trigger_refuses_a_path_escaping_the_scripts_dir(shared):
    assert_exec_error(trigger(shared, {"scriptPath": "../escape"}), 400, "VALIDATION_ERROR", "Invalid parameter format")
    assert_exec_error(trigger(shared, {"scriptPath": "/etc/passwd"}), 400, "VALIDATION_ERROR",
                      "Invalid parameter format")


def test_trigger_answers_404_for_a_script_that_is_not_registered(shared):
    for path in ("cron/nope.py", "lib/helper.py", str(shared.scripts_dir / "lib" / "helper.py")):
        assert_exec_error(trigger(shared, {"scriptPath": path}), 404, "NOT_FOUND", "Resource not found")


def test_trigger_refuses_a_token_script_unless_forced(shared):
    body = assert_exec_error(trigger(shared, {"scriptPath": "ops/guarded.sh"}), 403, "FORBIDDEN", "Access denied")
    assert "@token" in body["message"]
    assert history(shared, scriptPath="ops/guarded.sh") == []
    answer = ok(trigger(shared, {"scriptPath": str(shared.scripts_dir / "ops" / "guarded.sh"), "force": True}))
    assert answer["triggered"] is True and answer["scriptPath"] == "ops/guarded.sh"
    assert answer["status"] == "ok" and answer["returnPreview"] == "guarded-ran"
    entry = history(shared, scriptPath="ops/guarded.sh")[0]
    assert entry["runId"] == answer["runId"] and entry["trigger"] == "manual" and ISO_MS.match(entry["ts"])


def test_a_read_only_token_may_list_but_not_trigger_or_reload(shared):
    assert shared.api("GET", EXEC + "/list", token=READ_TOKEN).status_code == 200
    assert_exec_error(trigger(shared, {"scriptPath": "ops/guarded.sh", "force": True}, token=READ_TOKEN),
                      403, "FORBIDDEN", "Access denied")
    assert_exec_error(shared.api("POST", EXEC + "/reload", json={"dry_run": True}, token=READ_TOKEN),
                      403, "FORBIDDEN", "Access denied")
    assert shared.api("POST", EXEC + "/trigger", json={"scriptPath": "ops/guarded.sh"},
                      token=None).status_code == 401


def test_trigger_answers_409_while_the_same_script_is_already_running(shared):
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(trigger(shared, {"scriptPath": "ops/long.py"})),
                              daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: listing(shared)["ops/long.py"]["running"], 5.0), "the first trigger never ran"
        assert_exec_error(trigger(shared, {"scriptPath": "ops/long.py"}), 409, "CONFLICT", "Conflict")
    finally:
        shared.release.touch()
        thread.join(timeout=20)
    assert answers, "the first trigger did not answer"
    first = ok(answers[0])
    assert first["status"] == "ok" and first["returnPreview"] == "released"
    assert listing(shared)["ops/long.py"]["running"] is False
    assert [e["runId"] for e in history(shared, scriptPath="ops/long.py")] == [first["runId"]]


###############################################################################
# Secrets #####################################################################
###############################################################################

def test_scripts_never_see_the_api_tokens_and_the_log_never_shows_them(shared):
    answer = ok(trigger(shared, {"scriptPath": "env.py"}))
    assert answer["status"] == "ok", answer
    environment = json.loads(shared.env_dump.read_text())
    assert "SCHEDSERVER_TOKEN" not in environment and "SCHEDSERVER_READ_TOKEN" not in environment
    assert "E2E_COPY_OF_THE_TOKEN" not in environment
    for name, value in environment.items():
        assert DEFAULT_TOKEN not in value and READ_TOKEN not in value, name
    assert environment["SCHEDSERVER_RUN_ID"] == answer["runId"]
    assert environment["SCHEDSERVER_SCRIPT"] == "env.py" and environment["SCHEDSERVER_TRIGGER"] == "manual"
    assert ISO_MS.match(environment["SCHEDSERVER_SCHEDULED_AT"])
    assert answer["returnPreview"].startswith("tokens:")
    everything = shared.api("GET", EXEC + "/history", params={"limit": 1000}).text + json.dumps(answer)
    for secret in (DEFAULT_TOKEN, READ_TOKEN):
        assert secret not in everything
        assert secret not in shared.stderr_text()


###############################################################################
# Reloading ###################################################################
###############################################################################

def sh(schedule: str, text: str = "echo hi") -> str:
    return f"# @schedule {schedule}\n{text}\n"


def test_reload_adds_changes_and_removes_scripts_and_a_dry_run_changes_nothing(tmp_path):
    scripts = tmp_path / "scripts"
    write_script(scripts, "jobs/keep.sh", sh(NEVER))
    write_script(scripts, "jobs/edit.sh", sh(NEVER))
    write_script(scripts, "jobs/gone.sh", sh(NEVER))
    with ServerProcess(tmp_path / "data", scripts) as server:
        before = listing(server)
        assert sorted(before) == ["jobs/edit.sh", "jobs/gone.sh", "jobs/keep.sh"]

        write_script(scripts, "jobs/new.sh", sh(NEVER))
        write_script(scripts, "jobs/edit.sh", sh("0 0 2 1 *"))
        (scripts / "jobs" / "gone.sh").unlink()
        write_script(scripts, "jobs/broken.sh", sh("every blue moon"))
        expected = {"added": ["jobs/new.sh"], "kept": ["jobs/edit.sh", "jobs/keep.sh"], "changed": ["jobs/edit.sh"],
                    "removed": ["jobs/gone.sh"]}

        preview = reload(server, {"dry_run": True})
        assert preview["dry_run"] is True
        assert {k: preview[k] for k in expected} == expected
        assert [f["path"] for f in preview["failed"]] == ["jobs/broken.sh"]
        assert preview["failed"][0]["reason"].startswith("Invalid cron expression: 'every blue moon'")
        assert listing(server) == before

        applied = reload(server)
        assert applied["dry_run"] is False
        assert {k: applied[k] for k in expected} == expected and applied["failed"] == preview["failed"]
        after = listing(server)
        assert sorted(after) == ["jobs/edit.sh", "jobs/keep.sh", "jobs/new.sh"]
        assert after["jobs/edit.sh"]["expression"] == "0 0 2 1 *"
        assert after["jobs/edit.sh"]["nextFire"] != before["jobs/edit.sh"]["nextFire"]
        assert after["jobs/edit.sh"]["registeredAt"] >= before["jobs/edit.sh"]["registeredAt"]
        assert after["jobs/keep.sh"] == before["jobs/keep.sh"]
        assert after["jobs/new.sh"]["lastFireAt"] is None and after["jobs/new.sh"]["nextFire"]

        again = reload(server, {})
        assert (again["added"], again["changed"], again["removed"]) == ([], [], [])
        assert again["kept"] == ["jobs/edit.sh", "jobs/keep.sh", "jobs/new.sh"]


def test_sighup_reloads_the_scripts_dir_and_logs_one_summary_line(tmp_path):
    scripts = tmp_path / "scripts"
    write_script(scripts, "jobs/first.sh", sh(NEVER))
    with ServerProcess(tmp_path / "data", scripts) as server:
        assert sorted(listing(server)) == ["jobs/first.sh"]    # answered: the signal handlers are installed
        write_script(scripts, "jobs/second.sh", sh(NEVER))
        lines_before = len(server.stderr_text().splitlines())
        server.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "jobs/second.sh" in listing(server), 5.0), server.stderr_text()
        assert wait_until(lambda: "SIGHUP" in server.stderr_text(), 5.0), server.stderr_text()
        time.sleep(0.3)     # anything else the reload logs
        new_lines = server.stderr_text().splitlines()[lines_before:]
        summaries = [line for line in new_lines if re.search(r"\b\d+ added\b", line)]
        assert len(summaries) == 1, "\n".join(new_lines)
        assert "1 added" in summaries[0]
        assert server.returncode is None


###############################################################################
# Restart #####################################################################
###############################################################################

def test_history_and_last_fires_survive_a_restart(tmp_path):
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    write_script(scripts, "tick.py", f"# @schedule {EVERY_2S}\nprint('tick')\n")
    write_script(scripts, "manual.sh", sh(NEVER, "echo by-hand"))
    first = ServerProcess(data, scripts).start()
    try:
        cron_entries(first, "tick.py", 1, timeout=6)
        by_hand = ok(trigger(first, {"scriptPath": "manual.sh"}))
    finally:
        assert first.stop() == 0
    earlier = [json.loads(line) for line in (data / "fires.log").read_text().splitlines()]
    last_tick = max((e for e in earlier if e["scriptPath"] == "tick.py"), key=lambda e: e["ts"])

    with ServerProcess(data, scripts) as second:
        assert {e["runId"] for e in earlier} <= {e["runId"] for e in history(second, limit=1000)}
        manual = listing(second)["manual.sh"]
        assert (manual["lastFireAt"], manual["lastFireStatus"], manual["lastFireRunId"]) == \
            (history(second, scriptPath="manual.sh")[0]["ts"], "ok", by_hand["runId"])
        tick = listing(second)["tick.py"]
        assert tick["lastFireAt"] is not None and tick["lastFireAt"] >= last_tick["ts"]
        assert tick["lastFireRunId"] is not None and tick["lastFireStatus"] is not None


###############################################################################
# Rotated history #############################################################
###############################################################################

def test_history_reads_rotated_fires_logs_only_when_asked_newest_first(tmp_path):
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    write_script(scripts, "big.sh", sh(NEVER, "printf 'x%.0s' $(seq 300); echo"))
    env = {"SCHEDSERVER_EXEC_FIRES_LOG_MAX_BYTES": "4096", "SCHEDSERVER_EXEC_FIRES_LOG_BACKUPS": "3"}
    with ServerProcess(data, scripts, env=env) as server:
        run_ids = []
        for _ in range(24):
            answer = ok(trigger(server, {"scriptPath": "big.sh"}))
            assert answer["status"] == "ok" and answer["returnPreview"] == "x" * 200, answer
            run_ids.append(answer["runId"])
        assert (data / "fires.log.1").exists()
        assert (data / "fires.log").stat().st_size <= 4096
        current = history(server, limit=1000)
        everything = history(server, limit=1000, includeRotated="true")
        assert 0 < len(current) < len(everything) == len(run_ids)
        assert [e["runId"] for e in everything] == run_ids[::-1]
        assert [e["runId"] for e in current] == run_ids[::-1][:len(current)]
        stamps = [epoch(e["ts"]) for e in everything]
        assert stamps == sorted(stamps, reverse=True)
        assert history(server, limit=1000, includeRotated="false") == current
        assert len(history(server, limit=5, includeRotated="1")) == 5
