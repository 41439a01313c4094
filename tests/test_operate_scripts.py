"""Operating script schedules (issue 16, items 8 and 9): the @retry, @overlap, @notify and @notify-on directives,
retries of a failed fire, exitCode/signal/attempt in the trigger answer and the history, overlap policies, and
GET /api/v1/exec/schedules/runs/{runId} with the kept output tails and their disk budget
(exec.output_retention_bytes).

Each test drives the real server in process (tests/harness.py's Stack) with a fake clock and a worker pool that
runs only when told; scripts are real files that really run (tiny shell and Python scripts), so a fire ends in the
reaper's thread and every wait for it is bounded.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

import pytest
from fakes import FakeClock
from harness import ADMIN, READ, Stack

import schedserver

BASE = "/api/v1/exec/schedules"
NOW = "2025-01-10T12:00:00Z"            # the harness's Friday noon
NEVER = "0 0 1 1 *"                     # does not fire while a test runs (the clock is fake)
EVERY_SECOND = "* * * * * *"
MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TAIL = schedserver.MAX_OUTPUT_BYTES     # 64 KiB per stream
# The fields docs/api.md documents for a history entry (GET /history), which GET /runs/{runId} repeats.
HISTORY_FIELDS = {"ts", "scriptPath", "expression", "runId", "status", "durationMs", "returnPreview", "error",
                  "trigger", "attempt", "startedAt", "loggedAt", "exitCode", "signal", "count", "lastSlot",
                  "outputDropped"}


###############################################################################
# Helpers ######################################################################
###############################################################################

def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return bool(condition())
        time.sleep(0.01)
    return True


def waiting_script(release: Path, cron: str = NEVER, *directives: str) -> str:
    """A shell script that runs until the file `release` exists (at most about 10 s), then prints `released`."""
    head = "".join(f"# {d}\n" for d in directives)
    return (f"# @schedule {cron}\n{head}i=0\nwhile [ ! -e '{release}' ] && [ $i -lt 200 ]; do sleep 0.05; "
            "i=$((i+1)); done\necho released\n")


class Scripts:
    """One in-process server (a Stack) with helpers that read like the script API."""

    def __init__(self, stack: Stack, opened: list[Stack]):
        self.stack = stack
        self._opened = opened
        opened.append(stack)
        self.root = stack.scripts_dir
        self.data = stack.data_dir

    @property
    def app(self):
        return self.stack.app

    @property
    def clock(self) -> FakeClock:
        return self.stack.clock

    def reopen(self, **config) -> Scripts:
        """A fresh server on the same files, as after a clean restart."""
        return Scripts(self.stack.reopen(**config), self._opened)

    def write(self, rel: str, text: str) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def reload(self, **body) -> dict:
        response = self.app.post_json(BASE + "/reload", body, headers=ADMIN)
        assert response.status_int == 200, response.body
        return response.json

    def trigger(self, rel: str):
        return self.app.post_json(BASE + "/trigger", {"scriptPath": rel}, headers=ADMIN, expect_errors=True)

    def triggered(self, rel: str) -> dict:
        response = self.trigger(rel)
        assert response.status_int == 200, response.body
        return response.json

    def run(self, run_id: str, headers=ADMIN, **params):
        return self.app.get(f"{BASE}/runs/{run_id}", params=params, headers=headers, expect_errors=True)

    def history(self, **params) -> list[dict]:
        response = self.app.get(BASE + "/history", params=params, headers=ADMIN)
        assert response.status_int == 200, response.body
        return response.json["entries"]

    def fires(self, rel: str | None = None) -> list[dict]:
        """The fires log as written, oldest first."""
        path = self.data / "fires.log"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r for r in records if rel is None or r["scriptPath"] == rel]

    def definition(self, rel: str) -> schedserver.ScriptDefinition:
        return self.stack.scripts.find(rel)

    def running(self, rel: str) -> list[schedserver.Run]:
        return self.stack.recorder.running(schedserver.job_key("script", rel))

    def pending(self, rel: str) -> list[schedserver.Due]:
        return self.stack.scheduler.pending(schedserver.job_key("script", rel))

    # -- time ----------------------------------------------------------------------------------------------
    def fire_at(self, when: str | float) -> None:
        """Move the fake clock to `when` and tick: what is due starts (scripts end in the reaper's thread)."""
        self.clock.set(when)
        self.stack.run_due()

    def settle(self, rel: str, records: int) -> list[dict]:
        """Wait (bounded) until `rel` has `records` fires logged, none is in flight, and a retry its last fire
        asked for is waiting in the scheduler; the fires, oldest first."""
        def settled() -> bool:
            fires = self.fires(rel)
            if len(fires) < records or self.running(rel):
                return False
            return not fires[-1].get("nextAttemptAt") or bool(self.pending(rel))
        assert wait_for(settled), f"{rel}: {self.fires(rel)}"
        return self.fires(rel)

    def output_files(self) -> dict[str, int]:
        """run id -> size of each output file kept on disk (named `<order>-<run id>.json`)."""
        directory = self.data / "output"
        return {entry.name[:-5].partition("-")[2]: entry.stat().st_size for entry in os.scandir(directory)
                if entry.name.endswith(".json") and not entry.name.startswith(".")}

    def output_path(self, run_id: str):
        """The file holding a run's output."""
        [path] = [p for p in (self.data / "output").iterdir() if p.name.endswith(f"-{run_id}.json")]
        return path


@pytest.fixture
def open_scripts(tmp_path):
    """Servers over tmp_path (`open_scripts(**config)`), each closed at the end of the test."""
    opened: list[Stack] = []

    def open_(**config) -> Scripts:
        return Scripts(Stack(tmp_path, FakeClock(NOW), **config), opened)

    yield open_
    for stack in opened:
        stack.close()


@pytest.fixture
def api(open_scripts) -> Scripts:
    return open_scripts()


def assert_exec_error(response, status: int, title: str, code: str) -> dict:
    """An error in the script surface's shape: exactly {error: TITLE, code: CODE, message, timestamp}."""
    assert response.status_int == status, response.body
    assert response.content_type == "application/json"
    body = response.json
    assert set(body) == {"error", "code", "message", "timestamp"}, body
    assert (body["error"], body["code"]) == (title, code), body
    assert isinstance(body["message"], str) and body["message"].strip()
    assert MS_UTC.match(body["timestamp"]), body
    return body


###############################################################################
# Directives ###################################################################
###############################################################################

def test_retry_overlap_notify_and_notify_on_directives_are_read_into_the_scripts_definition(api):
    api.write("ops/flaky.sh", "#!/bin/sh\n# @schedule 0 * * * *\n# @retry 3 10s\n# @overlap allow\n"
                              "# @notify https://hooks.example.com/x?key=k1\n"
                              "# @notify-on failure, recovery,success\necho ok\n")
    api.write("ops/plain.sh", "# @schedule 0 * * * *\n# @retry 2\necho ok\n")
    api.write("ops/replacing.py", "# @schedule 0 * * * *\n# @overlap replace\n# @notify http://127.0.0.1:9/h\n"
                                  "print('ok')\n")

    answer = api.reload()

    assert answer["added"] == ["ops/flaky.sh", "ops/plain.sh", "ops/replacing.py"] and answer["failed"] == []
    flaky = api.definition("ops/flaky.sh")
    assert flaky.retry == schedserver.Retry(count=3, min_backoff=10.0, max_backoff=300.0, max_doublings=5)
    assert flaky.overlap == "allow"
    assert flaky.notify == schedserver.Notify("https://hooks.example.com/x?key=k1",
                                              ("failure", "recovery", "success"), 1)
    plain = api.definition("ops/plain.sh")
    assert plain.retry == schedserver.Retry(count=2, min_backoff=5.0, max_backoff=300.0, max_doublings=5)
    assert (plain.overlap, plain.notify) == ("forbid", None)
    replacing = api.definition("ops/replacing.py")
    assert replacing.retry is None and replacing.overlap == "replace"
    assert replacing.notify == schedserver.Notify("http://127.0.0.1:9/h", ("failure", "recovery"), 1)


def test_retry_with_a_count_of_zero_means_no_retries(api):
    api.write("zero.sh", "# @schedule 0 * * * *\n# @retry 0\necho ok\n")
    assert api.reload()["failed"] == []
    assert api.definition("zero.sh").retry is None


@pytest.mark.parametrize("directives, mention", [
    (["@retry 6"], "@retry"),
    (["@retry -1"], "@retry"),
    (["@retry x"], "@retry"),
    (["@retry"], "@retry"),
    (["@retry 2 soon"], "@retry"),
    (["@retry 2 0s"], "@retry"),
    (["@retry 2 10s 3"], "@retry"),
    (["@overlap sometimes"], "@overlap"),
    (["@overlap"], "@overlap"),
    (["@notify ftp://hooks.example.com/x"], "@notify"),
    (["@notify not a url"], "@notify"),
    (["@notify"], "@notify"),
    (["@notify https://hooks.example.com/x", "@notify-on failure,sometimes"], "@notify-on"),
    (["@notify https://hooks.example.com/x", "@notify-on ,"], "@notify-on"),
], ids=lambda value: value if isinstance(value, str) else "|".join(value))
def test_a_bad_directive_value_lands_in_failed_with_a_reason_and_the_script_is_not_registered(api, directives,
                                                                                              mention):
    head = "".join(f"# {d}\n" for d in directives)
    api.write("bad.sh", f"# @schedule 0 * * * *\n{head}echo never\n")
    api.write("good.sh", "# @schedule 0 * * * *\necho fine\n")

    answer = api.reload()

    assert answer["added"] == ["good.sh"], answer
    assert len(answer["failed"]) == 1 and answer["failed"][0]["path"] == "bad.sh", answer
    assert mention in answer["failed"][0]["reason"], answer["failed"]
    listed = api.app.get(BASE + "/list", headers=ADMIN).json
    assert [item["scriptRel"] for item in listed["schedules"]] == ["good.sh"]


def test_notify_on_without_notify_is_refused(api):
    api.write("quiet.sh", "# @schedule 0 * * * *\n# @notify-on failure,success\necho ok\n")

    answer = api.reload()

    assert answer["added"] == []
    assert answer["failed"] == [{"path": "quiet.sh", "reason": "@notify-on needs a @notify <url>"}]


def test_a_changed_operating_directive_makes_the_script_changed_at_reload(api):
    api.write("ops.sh", "# @schedule 0 * * * *\n# @retry 1\necho ok\n")
    api.reload()

    for directive in ("@retry 2", "@overlap allow", "@notify https://hooks.example.com/x",
                      "@notify-on failure,success"):
        head = "# @notify https://hooks.example.com/x\n" if directive.startswith("@notify-on") else ""
        api.write("ops.sh", f"# @schedule 0 * * * *\n{head}# {directive}\necho ok\n")
        answer = api.reload()
        assert answer["changed"] == ["ops.sh"], (directive, answer)


###############################################################################
# Retries ######################################################################
###############################################################################

def flaky_script(counter: Path, cron: str = "0 0 * * * *", retry: str = "2 1s", succeed_from: int = 3) -> str:
    """Fails (exit 4, `fail N` on stderr) until its counter file reaches `succeed_from`, then prints `done N`."""
    return (f"# @schedule {cron}\n# @retry {retry}\n"
            f"n=$(cat '{counter}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{counter}'\n"
            f"echo \"try $n\"\n"
            f"if [ $n -lt {succeed_from} ]; then echo \"fail $n\" >&2; exit 4; fi\n"
            "echo \"done $n\"\n")


def test_a_script_with_retry_2_that_fails_twice_then_succeeds_runs_attempts_1_2_and_3(api, tmp_path):
    api.write("flaky.sh", flaky_script(tmp_path / "count"))
    api.reload()

    api.fire_at("2025-01-10T13:00:00Z")         # the hourly slot: attempt 1 fails
    first = api.settle("flaky.sh", 1)[-1]
    api.fire_at("2025-01-10T13:00:01Z")         # 1 s later: attempt 2 fails
    second = api.settle("flaky.sh", 2)[-1]
    api.fire_at("2025-01-10T13:00:03Z")         # 2 s after that (doubled): attempt 3 succeeds
    fires = api.settle("flaky.sh", 3)

    assert [(f["trigger"], f["attempt"], f["status"], f.get("exitCode")) for f in fires] == [
        ("cron", 1, "error", 4), ("retry", 2, "error", 4), ("retry", 3, "ok", 0)]
    assert [f["ts"] for f in fires] == ["2025-01-10T13:00:00.000Z"] * 3         # every attempt is for the slot
    assert [f["startedAt"] for f in fires] == ["2025-01-10T13:00:00.000Z", "2025-01-10T13:00:01.000Z",
                                               "2025-01-10T13:00:03.000Z"]
    assert (first["error"], second["error"]) == ("fail 1", "fail 2")
    assert (first["nextAttemptAt"], second["nextAttemptAt"]) == ("2025-01-10T13:00:01.000Z",
                                                                 "2025-01-10T13:00:03.000Z")
    assert "nextAttemptAt" not in fires[2] and fires[2]["returnPreview"] == "done 3"
    assert len({f["runId"] for f in fires}) == 3
    assert api.pending("flaky.sh") == []
    entries = api.history(scriptPath="flaky.sh")
    assert [(e["trigger"], e["attempt"], e["exitCode"]) for e in entries] == [
        ("retry", 3, 0), ("retry", 2, 4), ("cron", 1, 4)]
    listed = api.app.get(BASE + "/list", headers=ADMIN).json["schedules"][0]
    assert (listed["lastFireStatus"], listed["lastFireRunId"]) == ("ok", fires[2]["runId"])


def test_retries_stop_at_the_count_when_every_attempt_fails(api, tmp_path):
    api.write("doomed.sh", flaky_script(tmp_path / "count", retry="1 1s", succeed_from=99))
    api.reload()

    api.fire_at("2025-01-10T13:00:00Z")
    api.settle("doomed.sh", 1)
    api.fire_at("2025-01-10T13:00:01Z")
    fires = api.settle("doomed.sh", 2)

    assert [(f["trigger"], f["attempt"], f["status"]) for f in fires] == [("cron", 1, "error"),
                                                                        ("retry", 2, "error")]
    assert "nextAttemptAt" not in fires[-1]
    assert api.pending("doomed.sh") == []


def test_retries_stop_when_the_next_slot_arrives_and_the_next_slot_runs(api, tmp_path):
    # Every minute, first wait 40 s: the second retry (80 s later) would land after the next slot.
    api.write("minutely.sh", flaky_script(tmp_path / "count", cron="0 * * * * *", retry="3 40s", succeed_from=99))
    api.reload()

    api.fire_at("2025-01-10T12:01:00Z")
    first = api.settle("minutely.sh", 1)[-1]
    api.fire_at("2025-01-10T12:01:40Z")
    second = api.settle("minutely.sh", 2)[-1]
    api.fire_at("2025-01-10T12:02:00Z")
    fires = api.settle("minutely.sh", 3)

    assert first["nextAttemptAt"] == "2025-01-10T12:01:40.000Z"
    assert (second["trigger"], second["attempt"]) == ("retry", 2) and "nextAttemptAt" not in second
    assert (fires[2]["trigger"], fires[2]["attempt"], fires[2]["ts"]) == ("cron", 1, "2025-01-10T12:02:00.000Z")


def test_a_manual_trigger_of_a_script_with_retry_is_not_retried(api, tmp_path):
    api.write("flaky.sh", flaky_script(tmp_path / "count", cron="0 0 * * * *"))
    api.reload()

    answer = api.triggered("flaky.sh")

    assert (answer["status"], answer["attempt"], answer["exitCode"]) == ("error", 1, 4)
    fires = api.fires("flaky.sh")
    assert len(fires) == 1 and fires[0]["trigger"] == "manual" and "nextAttemptAt" not in fires[0]
    assert api.pending("flaky.sh") == []


def test_a_retry_waiting_at_a_restart_runs_after_the_start(open_scripts, tmp_path):
    api = open_scripts()
    api.write("flaky.sh", flaky_script(tmp_path / "count", retry="2 10s", succeed_from=2))
    api.reload()
    api.fire_at("2025-01-10T13:00:00Z")
    assert api.settle("flaky.sh", 1)[-1]["nextAttemptAt"] == "2025-01-10T13:00:10.000Z"

    api = api.reopen()
    assert [(d.trigger, d.attempt, d.at) for d in api.pending("flaky.sh")] == [
        ("retry", 2, schedserver.parse_iso("2025-01-10T13:00:10Z"))]
    api.fire_at("2025-01-10T13:00:10Z")
    fires = api.settle("flaky.sh", 2)

    assert [(f["trigger"], f["attempt"], f["status"]) for f in fires] == [("cron", 1, "error"), ("retry", 2, "ok")]


###############################################################################
# Trigger answers and history entries: exitCode, signal, attempt #############
###############################################################################

def test_the_trigger_answer_of_a_script_that_exits_0_carries_exit_code_0_and_attempt_1(api):
    api.write("fine.sh", f"# @schedule {NEVER}\necho all good\n")
    api.reload()

    answer = api.triggered("fine.sh")

    assert (answer["status"], answer["exitCode"], answer["attempt"], answer["returnPreview"]) == \
        ("ok", 0, 1, "all good")
    assert "signal" not in answer and "error" not in answer


def test_the_trigger_answer_of_a_script_that_exits_3_carries_exit_code_3_and_its_error(api):
    api.write("three.sh", f"# @schedule {NEVER}\necho 'it went wrong' >&2\nexit 3\n")
    api.reload()

    answer = api.triggered("three.sh")

    assert (answer["status"], answer["exitCode"], answer["attempt"], answer["error"]) == \
        ("error", 3, 1, "it went wrong")
    assert "signal" not in answer and "returnPreview" not in answer


def test_the_trigger_answer_of_a_script_killed_by_a_signal_names_the_signal(api):
    api.write("killed.sh", f"# @schedule {NEVER}\necho started\nkill -TERM $$\necho never\n")
    api.reload()

    answer = api.triggered("killed.sh")

    assert (answer["status"], answer["signal"], answer["attempt"]) == ("error", "SIGTERM", 1)
    assert answer.get("exitCode") is None
    assert "SIGTERM" in answer["error"]


def test_history_entries_carry_exit_code_signal_and_attempt(api):
    api.write("three.sh", f"# @schedule {NEVER}\nexit 3\n")
    api.write("killed.sh", f"# @schedule {NEVER}\nkill -KILL $$\n")
    api.reload()
    three, killed = api.triggered("three.sh"), api.triggered("killed.sh")

    entries = {e["runId"]: e for e in api.history()}

    assert (entries[three["runId"]]["exitCode"], entries[three["runId"]]["attempt"]) == (3, 1)
    assert "signal" not in entries[three["runId"]]
    assert (entries[killed["runId"]]["signal"], entries[killed["runId"]]["attempt"]) == ("SIGKILL", 1)
    assert entries[killed["runId"]].get("exitCode") is None


def test_history_entries_and_the_run_answer_show_only_documented_fields(api, tmp_path):
    # The bookkeeping the runs log keeps for alerts and the output store (streak, failing, alerts, outputKept)
    # is not part of the documented entry.
    api.write("flaky.sh", f"# @schedule {NEVER}\n# @notify https://hooks.example.com/x\n"
                          f"n=$(cat '{tmp_path / 'count'}' 2>/dev/null || echo 0); echo $((n+1)) > '{tmp_path / 'count'}'\n"
                          "echo out\n[ $n -ge 1 ] || exit 2\n")
    api.reload()
    runs = [api.triggered("flaky.sh")["runId"], api.triggered("flaky.sh")["runId"]]   # a failure, a recovery

    for entry in api.history():
        assert set(entry) <= HISTORY_FIELDS, sorted(set(entry) - HISTORY_FIELDS)
    for run_id in runs:
        answer = api.run(run_id).json
        assert set(answer) <= HISTORY_FIELDS | {"stdout", "stderr", "output"}, \
            sorted(set(answer) - HISTORY_FIELDS - {"stdout", "stderr", "output"})


###############################################################################
# Overlap ######################################################################
###############################################################################

def test_overlap_forbid_is_the_default_and_records_a_due_fire_skipped_while_one_runs(api, tmp_path):
    release = tmp_path / "release"
    api.write("slow.sh", waiting_script(release, EVERY_SECOND))
    api.reload()

    api.fire_at("2025-01-10T12:00:01Z")
    assert wait_for(lambda: len(api.running("slow.sh")) == 1)
    api.fire_at("2025-01-10T12:00:02Z")

    assert wait_for(lambda: [f["status"] for f in api.fires("slow.sh")] == ["skipped"])
    assert api.fires("slow.sh")[0]["ts"] == "2025-01-10T12:00:02.000Z"
    assert len(api.running("slow.sh")) == 1
    release.touch()
    fires = api.settle("slow.sh", 2)
    assert [f["status"] for f in fires] == ["skipped", "ok"]


def test_overlap_allow_runs_a_due_fire_while_the_last_one_still_runs(api, tmp_path):
    release = tmp_path / "release"
    api.write("slow.sh", waiting_script(release, EVERY_SECOND, "@overlap allow"))
    api.reload()

    api.fire_at("2025-01-10T12:00:01Z")
    assert wait_for(lambda: len(api.running("slow.sh")) == 1)
    api.fire_at("2025-01-10T12:00:02Z")

    assert wait_for(lambda: len(api.running("slow.sh")) == 2)
    listed = api.app.get(BASE + "/list", headers=ADMIN).json["schedules"][0]
    assert listed["running"] is True
    release.touch()
    fires = api.settle("slow.sh", 2)
    assert [(f["status"], f["ts"]) for f in sorted(fires, key=lambda f: f["ts"])] == [
        ("ok", "2025-01-10T12:00:01.000Z"), ("ok", "2025-01-10T12:00:02.000Z")]


def test_overlap_allow_runs_at_most_scheduler_overlap_limit_at_once_and_skips_the_rest(open_scripts, tmp_path):
    api = open_scripts(overlap_limit=2)
    release = tmp_path / "release"
    api.write("slow.sh", waiting_script(release, EVERY_SECOND, "@overlap allow"))
    api.reload()

    for second in (1, 2, 3):
        api.fire_at(f"2025-01-10T12:00:0{second}Z")
        expected = min(second, 2)
        assert wait_for(lambda n=expected: len(api.running("slow.sh")) == n)

    assert wait_for(lambda: [f["status"] for f in api.fires("slow.sh")] == ["skipped"])
    assert api.fires("slow.sh")[0]["ts"] == "2025-01-10T12:00:03.000Z"
    release.touch()
    fires = api.settle("slow.sh", 3)
    assert sorted(f["status"] for f in fires) == ["ok", "ok", "skipped"]


def test_overlap_replace_stops_the_running_fire_as_error_replaced_and_runs_the_new_one(api, tmp_path):
    release = tmp_path / "release"
    api.write("slow.sh", waiting_script(release, EVERY_SECOND, "@overlap replace"))
    api.reload()

    api.fire_at("2025-01-10T12:00:01Z")
    assert wait_for(lambda: len(api.running("slow.sh")) == 1)
    first = api.running("slow.sh")[0]
    api.fire_at("2025-01-10T12:00:02Z")

    assert wait_for(lambda: len(api.fires("slow.sh")) == 1)
    replaced = api.fires("slow.sh")[0]
    assert (replaced["runId"], replaced["status"], replaced["error"]) == (first.run_id, "error", "replaced")
    assert replaced["ts"] == "2025-01-10T12:00:01.000Z"
    assert wait_for(lambda: len(api.running("slow.sh")) == 1 and api.running("slow.sh")[0].run_id != first.run_id)
    release.touch()
    fires = api.settle("slow.sh", 2)
    assert (fires[1]["status"], fires[1]["ts"], fires[1]["returnPreview"]) == \
        ("ok", "2025-01-10T12:00:02.000Z", "released")


###############################################################################
# GET /runs/{runId}: output ###################################################
###############################################################################

def test_a_run_answers_with_its_history_entry_and_its_stdout_and_stderr(api):
    api.write("talk.sh", f"# @schedule {NEVER}\necho one\necho two\necho oops >&2\nexit 5\n")
    api.reload()
    answer = api.triggered("talk.sh")

    for headers in (ADMIN, READ):
        response = api.run(answer["runId"], headers=headers)
        assert response.status_int == 200, response.body
        run = response.json
        assert (run["runId"], run["scriptPath"], run["status"], run["exitCode"], run["attempt"]) == \
            (answer["runId"], "talk.sh", "error", 5, 1)
        assert (run["stdout"], run["stderr"]) == ("one\ntwo\n", "oops\n")
        assert "output" not in run
    entry = next(e for e in api.history() if e["runId"] == answer["runId"])
    bookkeeping = ("stdout", "stderr", "outputKept", "streak", "failing", "alerts")   # pinned by the test above
    assert {k: v for k, v in run.items() if k not in bookkeeping} == \
        {k: v for k, v in entry.items() if k not in bookkeeping}


def test_a_script_printing_more_than_64_kib_keeps_only_the_last_64_kib_of_each_stream(api):
    api.write("loud.py", f"# @schedule {NEVER}\nimport sys\n"
                         "sys.stdout.write(''.join(f'{i:07d}\\n' for i in range(20000)))\n"
                         "sys.stderr.write('e' * 70000 + 'END')\n")
    api.reload()
    answer = api.triggered("loud.py")
    stdout = "".join(f"{i:07d}\n" for i in range(20000))
    stderr = "e" * 70000 + "END"

    run = api.run(answer["runId"]).json

    assert run["status"] == "ok", run
    assert len(run["stdout"]) == TAIL and run["stdout"] == stdout[-TAIL:]
    assert run["stdout"].endswith("0019999\n") and "0000000\n" not in run["stdout"]
    assert len(run["stderr"]) == TAIL and run["stderr"] == stderr[-TAIL:]
    assert run["outputDropped"] == (len(stdout) - TAIL) + (len(stderr) - TAIL)


def test_a_run_without_output_has_neither_output_nor_stdout_and_stderr(api):
    api.write("silent.sh", f"# @schedule {NEVER}\ntrue\n")
    api.reload()
    answer = api.triggered("silent.sh")

    run = api.run(answer["runId"]).json

    assert run["status"] == "ok"
    assert not {"stdout", "stderr", "output"} & set(run), run


def test_a_run_in_flight_answers_status_running(api, tmp_path):
    release = tmp_path / "release"
    api.write("slow.sh", waiting_script(release, "0 0 * * * *"))
    api.reload()
    api.fire_at("2025-01-10T13:00:00Z")
    assert wait_for(lambda: len(api.running("slow.sh")) == 1)
    run_id = api.running("slow.sh")[0].run_id

    running = api.run(run_id)

    assert running.status_int == 200, running.body
    assert running.json["status"] == "running"
    assert (running.json["runId"], running.json["scriptPath"], running.json["trigger"], running.json["attempt"]) == \
        (run_id, "slow.sh", "cron", 1)
    assert running.json["ts"] == "2025-01-10T13:00:00.000Z" and MS_UTC.match(running.json["startedAt"])
    release.touch()
    api.settle("slow.sh", 1)
    done = api.run(run_id).json
    assert (done["status"], done["stdout"]) == ("ok", "released\n")


@pytest.mark.parametrize("run_id", [str(uuid.uuid4()), "not-a-run-id", "..%2F..%2Fetc%2Fpasswd"])
def test_an_unknown_run_id_answers_404_not_found_in_the_exec_shape(api, run_id):
    api.write("fine.sh", f"# @schedule {NEVER}\necho ok\n")
    api.reload()
    api.triggered("fine.sh")

    assert_exec_error(api.run(run_id), 404, "Resource not found", "NOT_FOUND")


def test_the_run_id_of_an_http_schedules_run_answers_404_on_the_script_route(api):
    created = api.app.post_json("/api/v1/curl/schedule", {"cron": "0 * * * * *",
                                                          "request": {"url": "http://target.example/x"}},
                                headers=ADMIN)
    ran = api.app.post(f"/api/v1/curl/schedule/{created.json['id']}/run", headers=ADMIN)
    assert ran.status_int == 200, ran.body

    assert_exec_error(api.run(ran.json["run_id"]), 404, "Resource not found", "NOT_FOUND")


def test_the_run_route_refuses_unknown_query_parameters_and_requests_without_a_token(api):
    api.write("fine.sh", f"# @schedule {NEVER}\necho ok\n")
    api.reload()
    run_id = api.triggered("fine.sh")["runId"]

    assert_exec_error(api.run(run_id, verbose="1"), 400, "Invalid parameter format", "VALIDATION_ERROR")
    assert_exec_error(api.run(run_id, headers={}), 401, "Unauthorized", "UNAUTHORIZED")


def budget_script(rel_marker: str) -> str:
    """A script printing 1,000 bytes (so each run's output file is about 1 KiB)."""
    return f"# @schedule {NEVER}\nprintf '%0999d\\n' 0\n# {rel_marker}\n"


def test_past_the_output_budget_the_oldest_runs_answer_expired_and_the_newest_keep_their_output(open_scripts):
    api = open_scripts(output_retention_bytes=2500)     # room for two runs' output (about 1 KiB each)
    api.write("chatty.sh", budget_script("chatty"))
    api.reload()

    runs = [api.triggered("chatty.sh")["runId"] for _ in range(4)]

    kept = api.output_files()
    assert set(kept) == set(runs[2:]), (kept, runs)
    assert sum(kept.values()) <= 2500
    for run_id in runs[:2]:
        run = api.run(run_id).json
        assert run["output"] == "expired" and run["runId"] == run_id and run["status"] == "ok"
        assert "stdout" not in run and "stderr" not in run
    for run_id in runs[2:]:
        run = api.run(run_id).json
        assert run["stdout"] == "0" * 999 + "\n" and run["stderr"] == "" and "output" not in run


def test_the_output_budget_holds_across_a_reopen_oldest_removed_first(open_scripts):
    api = open_scripts(output_retention_bytes=2500)
    api.write("chatty.sh", budget_script("chatty"))
    api.reload()
    runs = [api.triggered("chatty.sh")["runId"] for _ in range(3)]
    assert set(api.output_files()) == set(runs[1:])

    api = api.reopen(output_retention_bytes=2500)
    assert set(api.output_files()) == set(runs[1:])
    runs.append(api.triggered("chatty.sh")["runId"])
    assert set(api.output_files()) == set(runs[2:])         # the oldest from before the restart went first
    assert sum(api.output_files().values()) <= 2500

    api = api.reopen(output_retention_bytes=1500)           # a smaller budget: room for one
    assert set(api.output_files()) == {runs[3]}
    assert api.run(runs[2]).json["output"] == "expired"
    assert api.run(runs[3]).json["stdout"] == "0" * 999 + "\n"
    assert [api.run(r).json.get("output") for r in runs] == ["expired", "expired", "expired", None]


def test_outputs_written_within_one_file_time_tick_are_still_removed_oldest_first_after_a_reopen(open_scripts):
    # File times are coarse (a few ms on many file systems): two runs ending close together can carry the same
    # mtime. The order must still be the runs' order, not an accident of their ids.
    api = open_scripts(output_retention_bytes=2500)
    api.write("chatty.sh", budget_script("chatty"))
    api.reload()
    runs = [api.triggered("chatty.sh")["runId"]]
    while len(runs) < 40 and not (len(runs) >= 2 and runs[-2] > runs[-1]):
        runs.append(api.triggered("chatty.sh")["runId"])    # until the older id sorts after the newer one
    older, newer = runs[-2], runs[-1]
    assert older > newer and set(api.output_files()) == {older, newer}
    tick = api.output_path(newer).stat().st_mtime_ns
    for run_id in (older, newer):
        os.utime(api.output_path(run_id), ns=(tick, tick))

    api = api.reopen(output_retention_bytes=1500)           # room for one: the newer run's output stays

    assert set(api.output_files()) == {newer}
    assert api.run(older).json["output"] == "expired"
