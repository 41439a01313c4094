"""The README's "Deploy on a VM" guide on a real systemd, then the unit checked for real.

One module-scoped fixture builds (or reuses) a Debian 12 rootfs, boots it with systemd as PID 1 in a
systemd-nspawn container, copies this checkout to /root/schedserver in it and runs the guide's install block
there word for word (`set -euo pipefail`, as root, from the checkout). Each test is then one check of what the
guide and the unit promise: status, notify (READY=1 and STATUS=), the watchdog, reload, restart, the guide's
upgrade command, the token file and data dir permissions, the sandbox, and the guide's drop-in example. The
other blocks of the guide run word for word inside the check they belong to.

Not in the guide, done before it: `apt-get update` (a cached rootfs has old package lists) and the environment
adaptations listed in machine.py (this machine's TLS-intercepting egress). Commands that download (apt, pip) run
in the host's network namespace; the container has a private one, so the server's 127.0.0.1:8080 is its own.

Run: `python -m pytest -m deploy` as root (about 2-3 minutes with a cached rootfs, one more to build it).
Deselect with `-m "not deploy"`. Logs (console, every command, the journals) of the last few runs are kept in
/var/tmp/schedserver-deploy-logs: the path is in every failure message and in the figures section.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from . import guide, machine
from .machine import Container, MachineError, Result

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
UNIT = "schedserver"
DATA_DIR = "/var/lib/schedserver"
SCRIPTS_DIR = "/etc/schedserver/scripts"
CONFIG = "/etc/schedserver/schedserver.toml"
VENV_PYTHON = "/opt/schedserver/venv/bin/python"
BASE_URL = "http://127.0.0.1:8080"
TOKEN_FILE = f"{DATA_DIR}/api-token"

# Run inside the container with its python3 (stdlib only): one HTTP request, prints the status then the body.
HTTP_PY = r"""
import sys, urllib.error, urllib.request
method, url, token, body = sys.argv[1:5]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
if token:
    req.add_header("Authorization", "Bearer " + token)
if body:
    req.add_header("Content-Type", "application/json")
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        status, data = r.status, r.read()
except urllib.error.HTTPError as e:
    status, data = e.code, e.read()
print(status)
sys.stdout.write(data.decode())
"""

# A script the service runs (with its own Python): where it may write, what it sees. One short JSON line
# (returnPreview keeps 200 characters). The *_open directories are world-writable, so only the sandbox can deny
# them; a control run of the same file as the same user outside the sandbox shows that.
PROBE_PY = r"""# @schedule @yearly
# @description deploy test: what the systemd sandbox lets a script do
import errno, json, os, pwd


def write(path):
    try:
        with open(path, "w") as f:
            f.write("probe\n")
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    os.unlink(path)
    return "ok"


print(json.dumps({
    "user": pwd.getpwuid(os.getuid()).pw_name,
    "etc": write("/etc/deploytest-probe"), "etc_open": write("/etc/deploytest-open/probe"),
    "usr": write("/usr/deploytest-probe"), "usr_open": write("/usr/local/deploytest-open/probe"),
    "data": write("/var/lib/schedserver/deploytest-probe"), "srv": write("/srv/backups/deploytest-probe"),
    "home": "visible" if os.path.exists("/home/deploytest/visible") else "hidden",
}, separators=(",", ":")))
"""
PROBE = "deploytest/probe.py"


def json_values(text: str) -> list[Any]:
    """Every JSON object or array printed in `text` (curl prints answers without newlines between them)."""
    decoder, found, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, i = decoder.raw_decode(text, i)
                found.append(value)
                continue
            except ValueError:
                pass
        i += 1
    return found


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@dataclass
class Deployed:
    """The deployed machine and what the checks need to drive it."""
    box: Container
    blocks: list[guide.Block]
    logdir: Path
    phases: list[str] = field(default_factory=list)
    results: dict[str, Result] = field(default_factory=dict)
    _once: dict[str, Any] = field(default_factory=dict)

    # -- commands ------------------------------------------------------------------------------------------------
    def sh(self, script: str, *, timeout: float = 60, check: bool = True, host_net: bool = False) -> Result:
        try:
            return self.box.run(script, timeout=timeout, check=check, host_net=host_net)
        except MachineError as e:
            pytest.fail(f"{e}\n(logs: {self.logdir})", pytrace=False)

    def run_block(self, block: guide.Block, timeout: float = 480) -> Result:
        """A guide block word for word: bash -euo pipefail, traced, as root in the checkout copy; downloads
        through the host's network namespace."""
        script = f"set -euxo pipefail\ncd {shlex.quote(self.box.checkout_in_container)}\n{block.text}"
        return self.box.run(script, timeout=timeout, host_net=block.downloads)

    def block(self, pattern: str, what: str) -> guide.Block:
        return guide.find(self.blocks, pattern, what)

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._once:
            self._once[key] = make()
        return self._once[key]

    def why(self, result: Result | str) -> str:
        return f"{result}\n(logs: {self.logdir})"

    # -- the unit ------------------------------------------------------------------------------------------------
    def show(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props)).out
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, name: str) -> str:
        return self.show(name).get(name, "")

    def main_pid(self) -> int:
        return int(self.prop("MainPID") or 0)

    def seconds(self, prop: str) -> float:
        """A time span property (`30s`, `1min 30s`, `500ms`) in seconds."""
        units = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600}
        text = self.prop(prop)
        return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(us|ms|min|s|h)\b", text))

    def ensure_active(self) -> None:
        """Bring the service back to running if an earlier check left it otherwise (so each check stands alone)."""
        state = self.show("ActiveState", "SubState", "MainPID")
        if state.get("ActiveState") == "active" and state.get("SubState") == "running":
            return
        self.box.log(f"ensure_active: {state}; restarting")
        if state.get("MainPID", "0") != "0":
            self.sh(f"kill -CONT {state['MainPID']}", check=False)
        self.sh(f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}", timeout=60, check=False)
        assert self.prop("ActiveState") == "active", self.why("could not bring schedserver back to active")

    # -- journal -------------------------------------------------------------------------------------------------
    def cursor(self) -> str:
        out = self.sh("journalctl -n 1 --show-cursor -q --no-pager").out
        m = re.search(r"^-- cursor: (\S+)", out, re.M)
        assert m, f"journalctl printed no cursor: {out!r}"
        return m.group(1)

    def journal(self, after: str) -> str:
        return self.sh(f"journalctl -u {UNIT} -o cat --no-pager --after-cursor={shlex.quote(after)}").out

    def wait_journal(self, after: str, pattern: str, timeout: float = 10) -> str:
        """The unit's journal since `after`, once a line matches `pattern` (a regex), or at the deadline."""
        text = ""

        def seen() -> bool:
            nonlocal text
            text = self.journal(after)
            return re.search(pattern, text, re.M) is not None
        wait_until(seen, timeout)
        return text

    # -- HTTP, from inside the container -------------------------------------------------------------------------
    def token(self) -> str:
        return self.once("token", lambda: self.sh(f"cat {TOKEN_FILE}").out.strip())

    def http_cmd(self, method: str, path: str, *, token: str | None = None, body: Any = None) -> str:
        return shlex.join(["python3", "-c", HTTP_PY, method, BASE_URL + path, token or "",
                           "" if body is None else json.dumps(body)])

    def http(self, method: str, path: str, *, auth: bool = True, body: Any = None) -> tuple[int, Any]:
        r = self.sh(self.http_cmd(method, path, token=self.token() if auth else None, body=body), check=False)
        if not r.ok:
            return 0, r.err.strip()
        status, _, text = r.out.partition("\n")
        try:
            return int(status), json.loads(text) if text.strip() else None
        except ValueError:
            return int(status), text

    # -- scripts -------------------------------------------------------------------------------------------------
    def add_script(self, rel: str, text: str, mode: str = "0644") -> None:
        path = f"{SCRIPTS_DIR}/{rel}"
        self.sh(f"mkdir -p {shlex.quote(os.path.dirname(path))} && cat > {shlex.quote(path)} <<'DEPLOYTEST_EOF'\n"
                f"{text}\nDEPLOYTEST_EOF\nchmod {mode} {shlex.quote(path)}")

    def registered(self) -> list[str]:
        status, listing = self.http("GET", "/api/v1/exec/schedules/list")
        return [s["scriptRel"] for s in listing["schedules"]] if status == 200 else []

    def probe(self) -> dict:
        """Make sure the probe script is registered (systemctl reload, as the guide says), run it through the
        API and answer its report."""
        if PROBE not in self.registered():
            self.add_script(PROBE, PROBE_PY)
            self.sh(f"systemctl reload {UNIT}")
            assert wait_until(lambda: PROBE in self.registered(), 15), \
                self.why(f"{PROBE} not registered 15 s after systemctl reload")
        status, answer = self.http("POST", "/api/v1/exec/schedules/trigger", body={"scriptPath": PROBE})
        assert status == 200 and answer.get("status") == "ok", self.why(f"trigger {PROBE}: {status} {answer}")
        return json.loads(answer["returnPreview"])


# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vm() -> Deployed:
    """Build or reuse the rootfs, boot it, run the guide's install block; power off and clean up after the
    module, whatever happened."""
    reason = machine.skip_reason()
    if reason:
        pytest.skip(reason)
    blocks = guide.blocks(README)
    install = guide.find(blocks, r"systemctl enable --now", "install")
    logdir = machine.new_logdir()
    box: Container | None = None
    lock_fd: int | None = None

    def stop(signum, frame):        # a SIGTERM (a CI timeout) still tears the container down
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        t0 = time.monotonic()
        log = machine.logger(logdir)
        machine.clean_stale(log)
        rootfs, lock_fd, done = machine.ensure_rootfs(log, logdir)
        phases = [f"{done} ({time.monotonic() - t0:.0f} s)"]
        box = Container(rootfs, REPO, logdir)
        box.prepare()
        t = time.monotonic()
        state = box.boot()
        phases.append(f"boot {time.monotonic() - t:.0f} s ({state})")
        deployed = Deployed(box, blocks, logdir, phases)
        t = time.monotonic()
        update = box.run("apt-get update -qq", host_net=True, timeout=180)
        if not update.ok:
            pytest.fail(f"pre-step (not in the guide) apt-get update failed:\n{deployed.why(update)}", pytrace=False)
        phases.append(f"apt-get update {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        result = deployed.run_block(install)
        deployed.results["install"] = result
        phases.append(f"guide install block {time.monotonic() - t:.0f} s")
        if not result.ok:
            pytest.fail(f"the README's install block failed (guide block {install.index}):\n{deployed.why(result)}",
                        pytrace=False)
        box.log("setup: " + "; ".join(phases))
        yield deployed
    except MachineError as e:
        pytest.fail(f"{e}\n(logs: {logdir})", pytrace=False)
    finally:
        try:
            if box is not None:
                for problem in box.close():
                    warnings.warn(f"deploy teardown: {problem} (logs: {logdir})", stacklevel=1)
            if lock_fd is not None:
                os.close(lock_fd)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------------------------
# The checks, in the order they run (each brings the service back to running first, so one failure stays one)

def test_every_block_of_the_guide_is_run_by_a_check():
    """Guards the tier itself: a block added to the guide must get a check (no container needed)."""
    blocks = guide.blocks(README)
    owners = [r"systemctl enable --now", r"api-token", r"systemctl reload", r"pip install --upgrade",
              r"ReadWritePaths"]
    for pattern in owners:
        guide.find(blocks, pattern, pattern)
    unowned = [b for b in blocks if not any(re.search(p, b.text) for p in owners)]
    assert not unowned, f"guide blocks no deploy check runs: {[str(b) for b in unowned]}"


def test_status(vm, figure):
    """The install block ends with `systemctl status`: enabled, active (running), and the server answers."""
    figure(f"deploy: setup: {'; '.join(vm.phases)} (logs: {vm.logdir})")
    for a in vm.box.adaptations:
        figure(f"deploy: environment adaptation (not in the guide): {a}")
    install = vm.results["install"]
    assert "Active: active (running)" in install.out, vm.why(install)
    s = vm.show("ActiveState", "SubState", "UnitFileState", "MainPID", "User")
    assert (s["ActiveState"], s["SubState"], s["UnitFileState"]) == ("active", "running", "enabled"), s
    assert s["User"] == "schedserver"
    status, health = vm.http("GET", "/healthz", auth=False)
    assert status == 200 and health["status"] == "ok", (status, health)
    figure(f"deploy: status: active (running), enabled, MainPID {s['MainPID']}, healthz 200")


def test_notify_ready_and_status(vm, figure):
    """Type=notify: READY=1 comes once the server listens (it answers as soon as `systemctl restart` returns);
    STATUS= lines from the ticker reach systemd, and so do the WATCHDOG=1 pings."""
    vm.ensure_active()
    s = vm.show("Type", "NotifyAccess", "WatchdogUSec", "StatusText", "WatchdogTimestampMonotonic")
    assert (s["Type"], s["NotifyAccess"], s["WatchdogUSec"]) == ("notify", "main", "30s"), s
    first = s["StatusText"]
    assert first, "no STATUS= reached systemd"
    later = wait_until(lambda: (t := vm.prop("StatusText")) != first and t, 5)
    assert later and "last tick" in later, f"StatusText did not move in 5 s: {first!r} -> {later!r}"
    ping = vm.prop("WatchdogTimestampMonotonic")
    assert ping and ping != "0" and ping != s["WatchdogTimestampMonotonic"], \
        f"no WATCHDOG=1 ping in between: {s['WatchdogTimestampMonotonic']} -> {ping}"
    r = vm.sh(f"systemctl restart {UNIT} && {vm.http_cmd('GET', '/healthz')}", check=False)
    assert r.ok and r.out.startswith("200\n"), vm.why(r)
    figure(f"deploy: notify: StatusText {later!r}; watchdog pings arrive; healthz answers as soon as "
           "systemctl restart returns (READY=1 after listening)")


def test_token_file_and_data_dir_permissions(vm, figure):
    """The first start wrote the token 0600 owned by the service user into a 0700 data dir; the guide's token
    block works word for word; the journal names the file, never the token."""
    vm.ensure_active()
    out = vm.sh(f"stat -c '%n %a %U %G' {TOKEN_FILE} {DATA_DIR}").out.splitlines()
    assert out == [f"{TOKEN_FILE} 600 schedserver schedserver", f"{DATA_DIR} 700 schedserver schedserver"], out
    loose = vm.sh(f"find {DATA_DIR} -type f ! -perm 0600 -printf '%p %m\\n'").out.strip()
    assert not loose, f"files in the data dir that are not 0600: {loose}"
    block = vm.block(r"api-token", "token")
    r = vm.run_block(block)
    assert r.ok, vm.why(r)
    answers = json_values(r.out)
    health = next((a for a in answers if isinstance(a, dict) and "status" in a), None)
    listing = next((a for a in answers if isinstance(a, dict) and "total" in a), None)
    assert health and health["status"] == "ok", vm.why(r)
    assert listing is not None and isinstance(listing.get("schedules"), list), vm.why(r)
    assert vm.http("GET", "/api/v1/exec/schedules/list", auth=False)[0] == 401
    journal = vm.sh(f"journalctl -u {UNIT} -o cat --no-pager").out
    assert TOKEN_FILE in journal, "the journal does not name the token file"
    assert vm.token() not in journal, "the token is in the journal"
    figure(f"deploy: token: {TOKEN_FILE} 0600 schedserver, {DATA_DIR} 0700, every data file 0600; guide token "
           "block ok; 401 without it; journal names the file, not the token")


def test_sandbox(vm, figure):
    """A script the service runs cannot write /etc or /usr (not even world-writable directories there), can write
    the data dir and cannot see /home; the same file run as the same user outside the sandbox can (control)."""
    vm.ensure_active()
    vm.sh("install -d -m 0777 /etc/deploytest-open /usr/local/deploytest-open && install -d -m 0755 "
          "/home/deploytest && echo visible > /home/deploytest/visible")
    report = vm.probe()
    control = vm.sh(f"setpriv --reuid=schedserver --regid=schedserver --clear-groups {VENV_PYTHON} "
                    f"{SCRIPTS_DIR}/{PROBE}").out.strip().splitlines()[-1]
    control = json.loads(control)
    assert (control["etc_open"], control["usr_open"], control["home"]) == ("ok", "ok", "visible"), \
        f"control run outside the sandbox: {control}"
    assert report["user"] == "schedserver", report
    denied = {k: report[k] for k in ("etc", "etc_open", "usr", "usr_open")}
    assert all(v != "ok" for v in denied.values()), f"the sandbox let a script write: {report}"
    assert report["data"] == "ok", f"a script cannot write the data dir: {report}"
    assert report["home"] == "hidden", f"a script sees /home: {report}"
    exposure = vm.sh(f"systemd-analyze security {UNIT} --no-pager | tail -1", check=False).out.strip()
    figure(f"deploy: sandbox: script as schedserver: /etc, /usr {sorted(set(denied.values()))}, data dir ok, "
           f"/home hidden (outside the sandbox the same user could write /etc/deploytest-open and see /home); "
           f"systemd-analyze security on the live system: {exposure or 'n/a'}")


def test_reload(vm, figure):
    """The guide's reload block word for word: SIGHUP through `systemctl reload`, the same PID, the summary line
    in the journal."""
    vm.ensure_active()
    pid, cursor = vm.main_pid(), vm.cursor()
    vm.add_script("deploytest/reloaded.sh", "#!/bin/sh\n# @schedule @yearly\necho reloaded")
    r = vm.run_block(vm.block(r"systemctl reload", "reload"))
    assert r.ok, vm.why(r)
    want = r"scripts reloaded \(SIGHUP\): [1-9][0-9]* added"
    journal = vm.wait_journal(cursor, want, 10)
    line = re.search(want + ".*", journal)
    assert line, vm.why(f"no line like {want!r} in the journal 10 s after systemctl reload:\n{journal}")
    assert "deploytest/reloaded.sh" in vm.registered()
    assert re.search(r"^Reloaded schedserver\.service", journal, re.M), journal
    s = vm.show("MainPID", "ActiveState", "SubState")
    assert (int(s["MainPID"]), s["ActiveState"], s["SubState"]) == (pid, "active", "running"), s
    # Not asserted: `systemctl reload` returns once `kill -HUP` has (ExecReload), not once the rescan is done, so
    # the guide's `journalctl` right after it shows the new line only when the server was quick enough.
    shown = re.search(want, r.out) is not None
    figure(f"deploy: reload: same PID {pid}, journal: {line.group(0)!r}; the guide's own journalctl right after "
           f"systemctl reload {'showed it' if shown else 'did NOT show it yet (ExecReload=kill -HUP is asynchronous)'}")


def test_watchdog_restarts_a_stopped_server(vm, figure):
    """SIGSTOP the server: the pings stop, systemd's watchdog fires after WatchdogSec and Restart=on-failure
    brings a new process up."""
    vm.ensure_active()
    wd, rs = vm.seconds("WatchdogUSec"), vm.seconds("RestartUSec")
    assert wd > 0, "no watchdog"
    old, cursor = vm.main_pid(), vm.cursor()
    t0 = time.monotonic()
    vm.sh(f"kill -STOP {old}")
    try:
        def restarted():
            s = vm.show("MainPID", "SubState")
            return s["SubState"] == "running" and s["MainPID"] not in ("0", str(old)) and int(s["MainPID"])
        new = wait_until(restarted, wd + rs + 30, interval=1)
        elapsed = time.monotonic() - t0
    finally:
        vm.sh(f"kill -CONT {old} 2>/dev/null || true", check=False)
    journal = vm.journal(cursor)
    assert new, vm.why(f"not restarted {wd + rs + 30:.0f} s after SIGSTOP; journal:\n{journal}")
    assert "Watchdog timeout" in journal, journal
    assert elapsed <= wd + rs + 10, f"restarted only after {elapsed:.0f} s (WatchdogSec {wd:.0f} s)"
    assert vm.http("GET", "/healthz", auth=False)[0] == 200
    figure(f"deploy: watchdog: SIGSTOP PID {old}; 'Watchdog timeout' and restarted as PID {new} after "
           f"{elapsed:.0f} s (WatchdogSec {wd:.0f} s + RestartSec {rs:.0f} s), NRestarts={vm.prop('NRestarts')}")


def test_restart(vm, figure):
    """`systemctl restart`: a clean stop (exit 0, not killed) and a new process that answers."""
    vm.ensure_active()
    old, cursor = vm.main_pid(), vm.cursor()
    t0 = time.monotonic()
    r = vm.sh(f"systemctl restart {UNIT}", check=False)
    elapsed = time.monotonic() - t0
    assert r.ok, vm.why(r)
    journal = vm.journal(cursor)
    s = vm.show("MainPID", "ActiveState", "SubState", "ExecMainStatus")
    assert s["ActiveState"] == "active" and int(s["MainPID"]) not in (0, old), s
    assert "schedserver stopped" in journal and "Deactivated successfully" in journal, journal
    assert not re.search(r"Failed with result|SIGKILL|Killing process", journal), journal
    assert vm.http("GET", "/healthz", auth=False)[0] == 200
    assert elapsed < 15, f"systemctl restart took {elapsed:.1f} s"
    figure(f"deploy: restart: clean stop (Deactivated successfully), PID {old} -> {s['MainPID']} in "
           f"{elapsed:.1f} s, healthz 200")


def test_upgrade(vm, figure):
    """The guide's upgrade command word for word, from an updated checkout (the copy's version gets a
    `+deploytest` suffix): the new version runs, schedules and their history are kept."""
    vm.ensure_active()
    status, created = vm.http("POST", "/api/v1/curl/schedule", body={
        "cron": "* * * * * *", "name": "deploytest-upgrade", "request": {"url": "http://127.0.0.1:9/"}})
    assert status == 201, created
    sid = created["id"]

    def history():
        st, one = vm.http("GET", f"/api/v1/curl/schedule/{sid}")
        return st == 200 and one["history"]
    assert wait_until(history, 10), "the schedule made no run in 10 s"
    assert vm.http("PATCH", f"/api/v1/curl/schedule/{sid}/toggle", body={"enabled": False})[0] == 200
    time.sleep(1.5)                 # a run in flight when it was disabled is recorded by now
    before = history()
    src = vm.box.checkout_in_container
    vm.sh(f"cd {src} && sed -i -E 's/^(__version__ = \"[^\"+]+)\"/\\1+deploytest\"/' schedserver.py && "
          "sed -i -E 's/^(version = \"[^\"+]+)\"/\\1+deploytest\"/' pyproject.toml && "
          "grep -q '^__version__ = .*+deploytest' schedserver.py && grep -q '^version = .*+deploytest' pyproject.toml")
    old = vm.main_pid()
    block = vm.block(r"pip install --upgrade", "upgrade")
    t0 = time.monotonic()
    r = vm.run_block(block)
    elapsed = time.monotonic() - t0
    assert r.ok, vm.why(r)
    s = vm.show("MainPID", "ActiveState")
    assert s["ActiveState"] == "active" and int(s["MainPID"]) not in (0, old), s
    status, health = vm.http("GET", "/healthz", auth=False)
    assert status == 200 and health["version"].endswith("+deploytest"), (status, health)
    status, one = vm.http("GET", f"/api/v1/curl/schedule/{sid}")
    assert status == 200 and one["enabled"] is False, (status, one)
    assert [h["run_id"] for h in one["history"]] == [h["run_id"] for h in before], \
        f"history changed across the upgrade: {before} -> {one['history']}"
    vm.http("DELETE", f"/api/v1/curl/schedule/{sid}")
    figure(f"deploy: upgrade: guide command ok in {elapsed:.0f} s, now version {health['version']}, "
           f"PID {old} -> {s['MainPID']}, schedule and its {len(before)} run(s) kept")


def _dropin(vm: Deployed) -> Result:
    """The guide's drop-in block word for word (once; the drop-in checks share it)."""
    return vm.once("dropin", lambda: vm.run_block(vm.block(r"ReadWritePaths", "drop-in")))


def test_dropin_block_runs_and_the_service_restarts(vm, figure):
    vm.ensure_active()
    r = _dropin(vm)
    assert r.ok, vm.why(r)
    s = vm.show("ActiveState", "SubState", "DropInPaths", "ReadWritePaths")
    assert (s["ActiveState"], s["SubState"]) == ("active", "running"), vm.why(f"{s}\n{r}")
    assert "/etc/systemd/system/schedserver.service.d/paths.conf" in s["DropInPaths"], s
    assert "/srv/backups" in s["ReadWritePaths"], s
    figure(f"deploy: drop-in: guide block ok, active, ReadWritePaths={s['ReadWritePaths']}")


def test_dropin_lets_scripts_write_the_listed_directory(vm, figure):
    """What the drop-in is for: a script can now write /srv/backups."""
    vm.ensure_active()
    assert _dropin(vm).ok, "the drop-in block failed (see the previous check)"
    owner = vm.sh("stat -c '%U:%G %a' /srv/backups").out.strip()
    report = vm.probe()
    assert report["srv"] == "ok", (
        f"after the guide's drop-in a script still cannot write /srv/backups: {report['srv']} "
        f"(/srv/backups is {owner}; the service runs as schedserver)")
    figure(f"deploy: drop-in: a script writes /srv/backups ({owner})")


def test_dropin_optional_path_may_be_missing(vm, figure):
    """The guide says the leading `-` keeps the service starting when the directory does not exist."""
    vm.ensure_active()
    assert _dropin(vm).ok, "the drop-in block failed (see the previous check)"
    r = vm.sh(f"rm -rf /srv/backups && systemctl restart {UNIT}", check=False)
    s = vm.show("ActiveState", "SubState")
    assert r.ok and (s["ActiveState"], s["SubState"]) == ("active", "running"), vm.why(f"{s}\n{r}")
    figure("deploy: drop-in: with /srv/backups missing the service still starts (ReadWritePaths=-...)")


PG_PASSWORD = "deploytest-pw-5e1b9c"


def test_the_same_unit_runs_on_postgresql_and_back_on_the_files(vm, figure):
    """Both storage modes through the one unit: PostgreSQL beside it, the postgres extra installed as the README's
    "Running more than one replica" says, `[storage] url` in the config; the unit starts, stores a schedule in
    PostgreSQL and keeps the password out of the journal. Then the config goes back to the files."""
    vm.ensure_active()
    t0 = time.monotonic()
    r = vm.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null && "
              "systemctl start postgresql && "
              f"runuser -u postgres -- psql -q -c \"CREATE ROLE schedserver LOGIN PASSWORD '{PG_PASSWORD}'\" && "
              "runuser -u postgres -- createdb -O schedserver schedserver",
              timeout=600, check=False, host_net=True)
    assert r.ok, vm.why(r)
    section = guide.section(README.read_text(), "Running more than one replica")
    extra = re.search(r"```sh\n(.*pip install '\.\[postgres\]'.*)\n```", section)
    assert extra, "the README's replica section shows no pip install of the postgres extra"
    r = vm.sh(f"cd {shlex.quote(vm.box.checkout_in_container)} && {extra.group(1)}", timeout=600, check=False,
              host_net=True)
    assert r.ok, vm.why(r)
    installed = time.monotonic() - t0
    url = f"postgresql://schedserver:{PG_PASSWORD}@127.0.0.1:5432/schedserver"
    cursor = vm.cursor()
    r = vm.sh(f"cp -p {CONFIG} {CONFIG}.files && printf '\\n[storage]\\nurl = \"%s\"\\n' '{url}' >> {CONFIG} && "
              f"systemctl restart {UNIT}", check=False)
    try:
        assert r.ok and vm.prop("ActiveState") == "active", vm.why(f"{r}\n{vm.journal(cursor)}")
        assert vm.http("GET", "/healthz", auth=False)[0] == 200
        status, created = vm.http("POST", "/api/v1/curl/schedule", body={
            "cron": "0 0 * * * *", "name": "deploytest-pg", "request": {"url": "http://127.0.0.1:9/"}})
        assert status == 201, created
        stored = vm.sh("runuser -u postgres -- psql -At -d schedserver -c "
                       "\"SELECT doc->>'name' FROM definitions\"").out.split()
        assert stored == ["deploytest-pg"], stored
        journal = vm.journal(cursor)
        assert "PostgreSQL schema migrated to version" in journal, journal
        assert PG_PASSWORD not in journal and "Traceback" not in journal, journal
    finally:
        vm.sh(f"mv {CONFIG}.files {CONFIG} && systemctl restart {UNIT}", check=False)
    assert vm.prop("ActiveState") == "active"
    status, listing = vm.http("GET", "/api/v1/curl/schedule")
    assert status == 200 and "deploytest-pg" not in [s["name"] for s in listing["items"]], listing
    figure(f"deploy: postgresql: PostgreSQL and the postgres extra installed in {installed:.0f} s; the unit ran on "
           "[storage] url (schema migrated, schedule stored in PostgreSQL, password not in the journal) and back "
           "on the files")


def test_journal_has_no_traceback(vm, figure):
    """After everything above, the unit's journal holds no Python traceback."""
    journal = vm.sh(f"journalctl -u {UNIT} -o cat --no-pager").out
    (vm.logdir / "journal-schedserver-at-end.txt").write_text(journal)
    assert "Traceback" not in journal, vm.why(tail_around(journal, "Traceback"))
    figure(f"deploy: journal: {len(journal.splitlines())} lines for the unit, no Traceback")


def tail_around(text: str, needle: str, context: int = 15) -> str:
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if needle in line)
    return "\n".join(lines[max(0, at - 3):at + context])
