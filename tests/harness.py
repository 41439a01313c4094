"""An in-process schedserver for unit and route tests: the real services, recorder, run state and storage over
a temporary data dir, with a fake clock, a worker pool that runs only when told, and scripted runners.

A plain module (not a conftest) so that any test file can import it: ``from harness import Stack``. Nothing here
starts a thread: `tick()` is the ticker, `run_due()` is the worker pool.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import webtest

import schedserver
from fakes import FakeClock, RecordingSubmit

NOW = "2025-01-10T12:00:00Z"        # a Friday, in winter
ADMIN_TOKEN = "admin-token"
READ_TOKEN = "read-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


class ScriptedHttpRunner:
    """An HTTP runner that answers each run with the next scripted (status, status_code, error), default
    ok/200, at once; it records every run it was given."""

    kind = "http"

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.runs: list[schedserver.Run] = []
        self.script: list[tuple[str, int | None, str | None]] = []
        self.hold = False               # True: runs stay in flight until release()
        self._held: list[tuple[schedserver.Run, Any]] = []

    def start(self, run: schedserver.Run, on_end) -> None:
        self.runs.append(run)
        if self.hold:
            self._held.append((run, on_end))
            return
        on_end(self._result())

    def _result(self) -> schedserver.RunResult:
        status, code, error = self.script.pop(0) if self.script else ("ok", 200, None)
        return schedserver.RunResult(status, self.clock(), 12, status_code=code, error=error)

    def release(self) -> int:
        """End every held run (with the next scripted results); how many."""
        held, self._held = self._held, []
        for _, on_end in held:
            on_end(self._result())
        return len(held)

    def cancel(self, run: schedserver.Run) -> None:
        for i, (held, on_end) in enumerate(self._held):
            if held is run:
                del self._held[i]
                on_end(schedserver.RunResult("error", self.clock(), 0, error=run.cancelled))
                return

    def close(self) -> None:
        pass

    @property
    def calls(self) -> list[tuple[dict, schedserver.Run]]:
        return [(run.job.target.request, run) for run in self.runs]


class Stack:
    """The services of one schedserver over `root`/data and `root`/scripts, loaded and ready, no threads.

    `script_runner` defaults to the real ScriptRunner (scripts really run); pass a fake to avoid that.
    """

    def __init__(self, root: Path, clock: FakeClock | None = None, *, http_runner: Any = None,
                 script_runner: Any = None, load: bool = True, **config: Any):
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.scripts_dir = self.root / "scripts"
        self.clock = clock or FakeClock(NOW)
        self.pool = RecordingSubmit()
        self.http_runner = http_runner or ScriptedHttpRunner(self.clock)
        self.deadlines = schedserver.DeadlineWatcher()
        self.script_runner = script_runner or schedserver.ScriptRunner(self.deadlines, self.clock)
        settings = {"data_dir": str(self.data_dir), "scripts_dir": str(self.scripts_dir),
                    "tokens": (ADMIN_TOKEN,), "read_tokens": (READ_TOKEN,), **config}
        self.config = schedserver.Config(**settings)
        self.server = schedserver.Server(self.config, clock=self.clock, pool=self.pool,
                                         runners={"http": self.http_runner, "script": self.script_runner})
        self.http = self.server.http
        self.scripts = self.server.scripts
        self.scheduler = self.server.scheduler
        self.recorder = self.server.recorder
        self.state = self.server.state
        if load:
            self.server.load()
        self.app = webtest.TestApp(self.server.wsgi_app)
        self._closed = False

    # -- time -----------------------------------------------------------------------------------------------
    def tick(self) -> list[schedserver.Due]:
        """One tick at the fake clock's now; what was due goes to the (recording) pool."""
        dues = self.scheduler.tick(self.clock())
        for due in dues:
            self.server.runs.on_due(due)
        return dues

    def run_due(self, until=None, timeout: float = 30.0) -> int:
        """tick(), then run what the pool holds (with `until`, also wait for script ends, bounded)."""
        self.tick()
        return self.pool.run_all(until=until, timeout=timeout)

    def pass_seconds(self, seconds: int) -> None:
        """Let `seconds` pass one whole second at a time, ticking and running after each."""
        for _ in range(seconds):
            self.clock.advance(1)
            self.run_due()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait (bounded) until no run is in flight (scripts end in the reaper's thread)."""
        deadline = time.monotonic() + timeout
        while self.recorder.count() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.recorder.count() == 0

    # -- life cycle -----------------------------------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.server.close(grace=0)
            self.deadlines.close()

    def reopen(self, **config: Any) -> "Stack":
        """A fresh server on the same files, as after a clean restart (with new runners of the same kinds when
        the default ones were used)."""
        self.close()
        return Stack(self.root, self.clock, **{**self._overrides(), **config})

    def crash(self) -> None:
        """Let go of the data dir as a SIGKILL would: nothing saved, markers and logs left as they are."""
        if not self._closed:
            self._closed = True
            self.server.scheduler.stop()
            self.server.data_dir.release()
            self.script_runner.close()
            self.deadlines.close()
            self.server.deadlines.close()

    def _overrides(self) -> dict:
        base = schedserver.Config()
        return {name: getattr(self.config, name) for name in ("timezone", "misfire_grace_seconds",
                                                              "default_timeout_ms", "runs_log_max_bytes",
                                                              "runs_log_backups", "allow_networks", "deny_networks")
                if getattr(self.config, name) != getattr(base, name)}

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def held(event: threading.Event, timeout: float = 10.0) -> bool:
    return event.wait(timeout)
