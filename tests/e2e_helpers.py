"""Helpers for end-to-end tests: the real schedserver in a subprocess, a real HTTP target, bounded waits.

A plain module (not a conftest) so that any test file can import it: ``from e2e_helpers import ...``.
Every wait here has a deadline; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import requests
from requests.structures import CaseInsensitiveDict

REPO_ROOT = Path(__file__).resolve().parent.parent
CURL_PATH = "/api/v1/curl/schedule"
DEFAULT_TOKEN = "e2e-admin-token-7c1f0b9a"
LISTENING = re.compile(r"schedserver listening on (http://(\S+):(\d+))")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 5.0

_DEFAULT = object()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (returns the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def schedserver_env(token: str | None = DEFAULT_TOKEN, **extra: str) -> dict[str, str]:
    """A hermetic environment for a schedserver process: no inherited SCHEDSERVER_* settings, the repo root on
    PYTHONPATH, `SCHEDSERVER_TOKEN` set unless `token` is None, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSERVER_")}
    env.pop("JOURNAL_STREAM", None)     # keep the log format (with timestamps) the same everywhere
    env.pop("INVOCATION_ID", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    if token is not None:
        env["SCHEDSERVER_TOKEN"] = token
    env.update(extra)
    return env


def schedserver_argv(data_dir: str | os.PathLike, scripts_dir: str | os.PathLike, port: int = 0,
                     *extra: str) -> list[str]:
    """The command line that serves `data_dir` on `port` through ``python -m schedserver``."""
    return [sys.executable, "-m", "schedserver", "serve", "--port", str(port), "--data-dir", str(data_dir),
            "--scripts-dir", str(scripts_dir), *extra]


def run_schedserver(argv: list[str], env: dict[str, str] | None = None,
                    timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a schedserver command that is expected to exit by itself (bad config, --version, ...)."""
    return subprocess.run(argv, cwd=REPO_ROOT, env=env if env is not None else schedserver_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


class ServerProcess:
    """The real schedserver serving a data dir on a free port, as a subprocess; stderr is collected."""

    def __init__(self, data_dir: str | os.PathLike, scripts_dir: str | os.PathLike | None = None,
                 token: str | None = DEFAULT_TOKEN, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.data_dir = Path(data_dir)
        self.scripts_dir = Path(scripts_dir) if scripts_dir is not None else self.data_dir.parent / "scripts"
        self.token = token
        self.env = schedserver_env(token, **(env or {}))
        self.argv = schedserver_argv(self.data_dir, self.scripts_dir, 0, *extra_args)
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self.session = requests.Session()
        self.session.trust_env = False          # no proxies or ~/.netrc between the test and 127.0.0.1
        self._lines: list[str] = []
        self._lines_lock = threading.Lock()
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> "ServerProcess":
        """Start the process and wait for its listening line; AssertionError (with stderr) if it never comes."""
        self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stderr, name="e2e-stderr-reader", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None:
                self._finish()
                raise AssertionError(f"schedserver exited with {self.proc.returncode} before listening; "
                                     f"stderr:\n{self.stderr_text()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise AssertionError(f"schedserver did not log its listening line within {timeout:g} s; "
                                     f"stderr:\n{self.stderr_text()}")
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lines_lock:
                self._lines.append(line)
            match = LISTENING.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._listening.set()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout`, SIGKILL if it is still alive; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._finish()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL (a crash, as far as the data dir is concerned); the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        self._finish()
        return self.proc.returncode

    def _finish(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.session.close()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def __enter__(self) -> "ServerProcess":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- observing -------------------------------------------------------------------------------------------
    def stderr_text(self) -> str:
        with self._lines_lock:
            return "".join(self._lines)

    def api(self, method: str, path: str = CURL_PATH, json: Any = None, token: Any = _DEFAULT,
            timeout: float = HTTP_TIMEOUT, **kwargs: Any) -> requests.Response:
        """One API call; `token` defaults to the process's admin token, None sends no Authorization header."""
        assert self.url is not None, "the server is not listening"
        token = self.token if token is _DEFAULT else token
        headers = dict(kwargs.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if json is not None:
            kwargs["json"] = json
        return self.session.request(method, self.url + path, headers=headers, timeout=timeout, **kwargs)


@dataclass
class Arrival:
    """One request the target received."""

    method: str
    path: str
    headers: CaseInsensitiveDict
    body: bytes
    at: float           # time.time() when the request line and headers had been read


class TargetServer:
    """A real HTTP server on 127.0.0.1:<free port> that records every request and answers `status`, `delay`
    seconds after reading it; HTTP/1.0 (a connection per request) unless `keep_alive`."""

    def __init__(self, status: int = 200, keep_alive: bool = False, delay: float = 0.0):
        self.status = status
        self.delay = delay
        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def _handle(self) -> None:
                at = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with target._lock:
                    target.arrivals.append(Arrival(self.command, self.path, CaseInsensitiveDict(self.headers.items()),
                                                   body, at))
                payload = b"recorded\n"
                if target.delay:
                    time.sleep(target.delay)
                self.send_response(target.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="e2e-target", daemon=True)

    def start(self) -> "TargetServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "TargetServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def received(self, path: str | None = None, since: float | None = None) -> list[Arrival]:
        """Arrivals so far (optionally only for `path`, or only after the instant `since`), oldest first."""
        with self._lock:
            found = list(self.arrivals)
        return [a for a in found if (path is None or a.path == path) and (since is None or a.at > since)]

    def wait_for(self, n: int, timeout: float, path: str | None = None, since: float | None = None) -> list[Arrival]:
        """Wait until at least `n` matching arrivals, at most `timeout` seconds; whatever arrived, oldest first."""
        wait_until(lambda: len(self.received(path, since)) >= n, timeout)
        return self.received(path, since)
