"""Shared pieces of the benchmarks: the real server in a subprocess, a loopback target in its own process,
stored HTTP schedules in the server's own format, percentiles, and the Figure record that run.py aggregates into
bench/RESULTS.md.

Everything listens on 127.0.0.1 only. Data directories live on the real disk (under bench/.work, not a tmpfs),
so fsync costs are the real ones.
"""

from __future__ import annotations

import json
import os
import platform
import py_compile
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
WORK = BENCH / ".work" / f"run-{os.getpid()}"     # one directory per run: concurrent runs never collide
TOKEN = "bench-admin-token-5d0c2e"
LISTENING = re.compile(r"schedserver listening on http://\S+:(\d+)")
# The start-up summary line: "N http schedules and M script schedules loaded (K run records replayed); ..."
LOADED = re.compile(r"(\d+) http schedules and (\d+) script schedules loaded \((\d+) run records replayed\)")


# -- figures -------------------------------------------------------------------------------------------------
@dataclass
class Figure:
    """One reported number: a value per repetition; `target` says what it must be, `ok(median)` checks it
    (None for figures that only inform)."""

    name: str
    unit: str
    target: str = ""
    ok: Callable[[float], bool] | None = None
    values: list[float] = field(default_factory=list)
    note: str = ""

    def add(self, value: float) -> "Figure":
        self.values.append(float(value))
        return self


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": str(os.cpu_count()), "cpu": model or platform.processor() or "?",
            "python": platform.python_version(), "system": f"{platform.system()} {platform.release()}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workdir(name: str) -> Path:
    """A fresh directory on the real disk for one benchmark."""
    WORK.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=name + "-", dir=WORK))


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the server under test -----------------------------------------------------------------------------------
class Server:
    """schedserver in a subprocess on a free loopback port; `started_in` is spawn-to-'listening' seconds."""

    def __init__(self, data_dir: Path, scripts_dir: Path | None = None, **settings: Any):
        self.data_dir = Path(data_dir)
        self.scripts_dir = Path(scripts_dir) if scripts_dir else self.data_dir / "scripts"
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSERVER_")}
        self.env.update({"SCHEDSERVER_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
        for key, value in settings.items():
            self.env["SCHEDSERVER_" + key.upper()] = str(value)
        self.proc: subprocess.Popen | None = None
        self.started_in = float("nan")
        self.stderr_lines: list[str] = []
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "Server":
        self.scripts_dir.mkdir(parents=True, exist_ok=True)
        # As the systemd unit runs it: the module imported from its compiled bytecode (pip compiles it at
        # install), not `python schedserver.py`, which compiles its 4,500 lines at every start.
        py_compile.compile(str(REPO / "schedserver.py"), doraise=True)
        argv = [sys.executable, "-m", "schedserver", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--scripts-dir", str(self.scripts_dir)]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=self.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, cwd=str(self.data_dir.parent))
        listening = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.stderr_lines.append(line.rstrip("\n"))
                if not listening.is_set() and LISTENING.search(line):
                    self.started_in = time.perf_counter() - t0
                    listening.set()
        threading.Thread(target=read, daemon=True).start()
        if not listening.wait(timeout):
            self.stop()
            raise RuntimeError("schedserver did not start:\n" + "\n".join(self.stderr_lines[-20:]))
        return self

    def api(self, method: str, path: str, body: Any = None, expect: int | None = 200) -> Any:
        r = self.session.request(method, self.url + path, json=body, timeout=30)
        if expect is not None and r.status_code != expect:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def rss_mb(self) -> float:
        return proc_rss_mb(self.proc.pid)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def loaded(self) -> dict[str, int]:
        """What the start-up summary line said: {"http", "scripts", "replayed"} (empty if it was not logged)."""
        for line in self.stderr_lines:
            m = LOADED.search(line)
            if m:
                return {"http": int(m.group(1)), "scripts": int(m.group(2)), "replayed": int(m.group(3))}
        return {}

    def stop(self) -> None:
        """A clean stop (SIGTERM): the server finishes its runs, saves its run state and exits."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.session.close()

    def kill(self) -> None:
        """SIGKILL: nothing is saved, as after a crash or an OOM kill."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.session.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- stored HTTP schedules ------------------------------------------------------------------------------------
def http_definition(payload: dict, created: float, enabled_at: float | None = None,
                    schedule_id: str | None = None) -> dict:
    """One stored HTTP schedule exactly as the server stores it: the create body checked by
    schedserver.validate_create, then HttpSchedule(...).definition()."""
    import schedserver
    values = schedserver.validate_create(payload, "UTC")
    return schedserver.HttpSchedule(id=schedule_id or str(uuid.uuid4()), created_at=created,
                                    enabled_at=created if enabled_at is None else enabled_at,
                                    **values).definition()


def write_store(data_dir: Path, definitions: list[dict]) -> None:
    """data_dir/curl-schedules.json as the server's JournalStore writes its snapshot (no journal: nothing changed
    since), in a private data dir as the server wants it."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    path = data_dir / "curl-schedules.json"
    path.write_bytes(json.dumps({"version": 1, "seq": 0, "schedules": definitions}, indent=1,
                                sort_keys=True).encode() + b"\n")
    os.chmod(path, 0o600)


def read_ndjson(path: Path) -> list[dict]:
    """Every complete record of an NDJSON file and its rotated backups (oldest file first)."""
    records = []
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for p in [f for f in files if f.suffix[1:].isdigit()] + [path]:
        if not p.exists():
            continue
        for line in p.read_bytes().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


# -- the loopback target -------------------------------------------------------------------------------------
class Target:
    """bench/target.py in its own process (so it never shares a GIL with what it measures).

    It records time.time() when its one event-loop thread read each request off the socket, with the
    request's X-Schedserver-Scheduled-At header (or its path), and answers 200 at once.
    """

    def __init__(self):
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.session = requests.Session()
        self.session.trust_env = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Target":
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "target.py"), str(self.port)],
                                     stdout=subprocess.PIPE, text=True)
        ready = threading.Event()
        threading.Thread(target=lambda: self.proc.stdout.readline().strip() == "ready" and ready.set(),
                         daemon=True).start()
        if not ready.wait(15):
            self.stop()
            raise RuntimeError("target did not start")
        return self

    def arrivals(self, clear: bool = True) -> list[dict]:
        """[{"at": epoch seconds, "path": ..., "scheduled": header text or None}, ...] since the last clear."""
        r = self.session.post(self.url + "/_arrivals" + ("?clear=1" if clear else ""), timeout=30)
        return r.json()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.session.close()

    def __enter__(self) -> "Target":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def cleanup() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
