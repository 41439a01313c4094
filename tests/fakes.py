"""Hand-written fakes shared by the tests: a clock that moves only when told, and a stand-in for the worker pool."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable


def instant(when: float | str) -> float:
    """An epoch instant from a number or an ISO 8601 string (`Z` or an offset; naive means UTC)."""
    if isinstance(when, str):
        dt = datetime.fromisoformat(when.replace("Z", "+00:00"))
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    return float(when)


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float | str):
        self.now = instant(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, when: float | str) -> float:
        self.now = instant(when)
        return self.now


class RecordingSubmit:
    """Stands in for the worker pool: keeps what the scheduler hands over until a test runs it."""

    def __init__(self):
        self.pending: list[tuple] = []

    def __call__(self, fn, *args) -> None:
        self.pending.append((fn, *args))

    def submit(self, fn, *args) -> bool:
        self.pending.append((fn, *args))
        return True

    def shutdown(self, timeout: float = 0) -> None:
        pass

    def run_all(self, until: Callable[[], bool] | None = None, timeout: float = 30.0) -> int:
        """Run what was handed over (and what that hands over in turn); how many calls ran. With `until`, also
        wait (at most `timeout` s) for work handed over from other threads (a script's end, from the reaper)
        until `until()` holds."""
        done = 0
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                fn, *args = self.pending.pop(0)
                fn(*args)
                done += 1
            if until is None or until() or time.monotonic() >= deadline:
                return done
            time.sleep(0.002)
