"""The README's tour, word for word: its shell blocks run with bash against a real server started as the tour
says (no token configured, data and scripts in the working directory) and a real `python3 -m http.server`
target. Only the ports differ (free ones instead of 8080 and 9000); the restart step is done here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_helpers import REPO_ROOT, ServerProcess, wait_until

README = REPO_ROOT / "README.md"
pytestmark = pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None,
                                reason="the tour needs curl and bash (.ci/run installs curl)")


def tour_blocks() -> list[str]:
    """The ```sh blocks of the README's tour, in order."""
    text = README.read_text()
    section = text[text.index("## A tour"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def json_lines(text: str) -> list[dict]:
    """Every JSON object curl printed (each answer is one line of JSON, without a newline between them)."""
    decoder, found, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i] in "{[":
            value, i = decoder.raw_decode(text, i)
            found.append(value)
        else:
            i += 1
    return found


def test_the_readme_tour_runs_word_for_word(tmp_path):
    blocks = tour_blocks()
    target_cmd, setup, create, look, toggle, after_restart, script, delete = blocks
    assert target_cmd.strip() == "python3 -m http.server 9000 --bind 127.0.0.1"
    port, target_port = free_port(), free_port()

    def adapt(block: str) -> str:
        return block.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("9000", str(target_port))

    target = subprocess.Popen(adapt(target_cmd).split(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    hits = RequestLog(target)
    server = ServerProcess(tmp_path / "data", tmp_path / "scripts", token=None, env={"SCHEDSERVER_PORT": str(port)})
    server.argv = [sys.executable, "-m", "schedserver"]         # the tour's command: no flags
    server_env_cwd = tmp_path
    try:
        _start_in(server, server_env_cwd)
        first = run_bash("\n".join([adapt(setup), adapt(create), adapt(look), adapt(toggle), 'echo "$ID" > id.txt']),
                         tmp_path)
        assert first.returncode == 0, first.stderr
        answers = json_lines(first.stdout)
        schedule_id = (tmp_path / "id.txt").read_text().strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", schedule_id), first.stdout
        listed = next(a for a in answers if "items" in a)
        assert [item["id"] for item in listed["items"]] == [schedule_id]
        shown = next(a for a in answers if a.get("id") == schedule_id and "history" in a)
        assert shown["history"] and shown["history"][0]["status"] == "ok", shown
        toggled = [a for a in answers if set(a) == {"id", "enabled", "next_run"}]
        assert [a["enabled"] for a in toggled] == [False, True]

        assert server.stop() == 0                               # Ctrl-C, and start it again
        fired_before = hits.count()
        _start_in(server, server_env_cwd)
        assert wait_until(lambda: hits.count() > fired_before, timeout=12), \
            "the schedule did not fire again after the restart"
        rest = run_bash("\n".join([adapt(setup), f"ID={schedule_id}", adapt(after_restart), adapt(script),
                                   adapt(delete)]), tmp_path)
        assert rest.returncode == 0, rest.stderr
        answers = json_lines(rest.stdout)
        again = answers[0]
        assert again["id"] == schedule_id and again["enabled"] is True and again["history"], again
        reload = next(a for a in answers if "added" in a)
        assert reload["added"] == ["ops/hello.sh"] and reload["failed"] == []
        listed = next(a for a in answers if "schedules" in a)
        assert [s["scriptRel"] for s in listed["schedules"]] == ["ops/hello.sh"]
        triggered = next(a for a in answers if a.get("triggered"))
        assert triggered["status"] == "ok" and triggered["returnPreview"] == "hello from ops/hello.sh"
        history = next(a for a in answers if "entries" in a)
        assert history["entries"][0]["runId"] == triggered["runId"]
        assert answers[-1] == {"id": schedule_id}
    finally:
        server.stop()
        target.terminate()
        target.wait(timeout=10)


def _start_in(server: ServerProcess, cwd: Path) -> None:
    """Start the server with `cwd` as its working directory (the tour's ./data and ./scripts)."""
    import e2e_helpers
    original = e2e_helpers.REPO_ROOT
    e2e_helpers.REPO_ROOT = cwd
    try:
        server.url = None
        server._listening.clear()
        server._lines = []
        server.start()
    finally:
        e2e_helpers.REPO_ROOT = original


class RequestLog:
    """The request lines `python3 -m http.server` logs on stderr, read by a thread."""

    def __init__(self, proc: subprocess.Popen):
        import threading
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            if '"GET / HTTP' in line:
                self.lines.append(line)

    def count(self) -> int:
        return len(self.lines)
