"""A throwaway Debian 12 machine with a real systemd as PID 1, for the deploy tier.

- **Rootfs**: built once with mmdebstrap (Debian bookworm, minbase plus systemd, python3, curl, CA certificates)
  into a cache directory (`/var/tmp/schedserver-deploy-rootfs`, or `$SCHEDSERVER_DEPLOY_ROOTFS`) and reused while
  its recipe is unchanged and it is younger than 30 days. The cache is never written by a run: each run boots
  an overlay (cache below, a fresh upper dir above) mounted in a private mount namespace, so the mount
  disappears with the container, whatever happens to this process.
- **Boot**: `systemd-nspawn --boot --private-network` (its own loopback: the host's 127.0.0.1:8080 may be taken),
  not registered with any host systemd, inside two cgroups of our own (the host may have no systemd managing
  cgroups; nspawn and the container's systemd then create their cgroups below ours, never at a hierarchy's root).
- **Commands**: `nsenter` into the container's namespaces, with a clean root environment. Commands that download
  (apt, pip) run in the host's network namespace instead (every other namespace is the container's).
- **Environment adaptations**, for machines whose egress intercepts TLS: the host's extra CA certificates
  (/usr/local/share/ca-certificates) and /etc/pip.conf are copied in, and proxy / pip index variables of this
  process are passed to the download commands. All are listed in `Container.adaptations`.
- **Teardown** (`Container.close`, always): poweroff through systemd, bounded waits, then SIGTERM/SIGKILL to
  systemd-nspawn; anything left in our cgroups is killed, the cgroups and nspawn's run files for this machine
  are removed, and the work dir is deleted. Leftovers of a run that was killed outright are cleaned up by the
  next run (`clean_stale`).
- **Logs** of the newest 5 runs: /var/tmp/schedserver-deploy-logs/TIME-PID (or `$SCHEDSERVER_DEPLOY_LOGS`):
  deploy.log, console.log, commands.log (every command with its output), the journals at teardown.

Every wait has a deadline. Other knobs: `$SCHEDSERVER_DEPLOY_MIRROR`, `$SCHEDSERVER_DEPLOY_SECURITY_MIRROR`.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOTFS_CACHE = Path(os.environ.get("SCHEDSERVER_DEPLOY_ROOTFS", "/var/tmp/schedserver-deploy-rootfs"))
WORK_PREFIX = "/var/tmp/schedserver-deploy-work-"
LOG_ROOT = Path(os.environ.get("SCHEDSERVER_DEPLOY_LOGS", "/var/tmp/schedserver-deploy-logs"))
LOGS_KEPT = 5
CGROUP_PREFIX = "schedserver-deploy-"
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "ca-certificates", "curl", "procps")
HOSTNAME = "schedserver-vm"
RECIPE = {"recipe": 1, "suite": SUITE, "variant": "minbase", "packages": list(PACKAGES), "hostname": HOSTNAME}
MAX_AGE_S = 30 * 86400
MARKER = ".schedserver-deploy-rootfs.json"
TOOLS = {"systemd-nspawn": "systemd-container", "mmdebstrap": "mmdebstrap", "nsenter": "util-linux",
         "unshare": "util-linux"}
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
NETWORK_TIMEOUT = 10
BUILD_TIMEOUT = 900
BOOT_TIMEOUT = 90
CONTAINER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                 "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "LANG": "C.UTF-8", "TERM": "dumb",
                 "DEBIAN_FRONTEND": "noninteractive"}
# Passed on to download commands when this process has them (an environment adaptation, listed when used).
DOWNLOAD_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "PIP_INDEX_URL",
                "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")


class MachineError(Exception):
    """The machine could not be built, booted or used; the message says why and where the logs are."""


# ---------------------------------------------------------------------------------------------------------------
# Preconditions (once per session)

def debian_mirror() -> tuple[str, str]:
    """(main, security) mirrors: $SCHEDSERVER_DEPLOY_MIRROR / $SCHEDSERVER_DEPLOY_SECURITY_MIRROR, else a Debian
    mirror the host's apt uses, else deb.debian.org."""
    main = sec = None
    uris: list[str] = []
    for p in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            uris += [u for line in p.read_text().splitlines() if line.startswith("URIs:") for u in line.split()[1:]]
    with contextlib.suppress(OSError):
        uris += [w[1] for line in Path("/etc/apt/sources.list").read_text().splitlines()
                 if len(w := line.split()) > 2 and w[0] == "deb" and not w[1].startswith("[")]
    for u in uris:
        u = u.rstrip("/")
        if u.endswith("/debian-security"):
            sec = sec or u
        elif u.endswith("/debian"):
            main = main or u
    return (os.environ.get("SCHEDSERVER_DEPLOY_MIRROR") or main or "http://deb.debian.org/debian",
            os.environ.get("SCHEDSERVER_DEPLOY_SECURITY_MIRROR") or sec or "http://deb.debian.org/debian-security")


def _pip_conf() -> configparser.ConfigParser:
    conf = configparser.ConfigParser()
    with contextlib.suppress(OSError, configparser.Error):
        conf.read("/etc/pip.conf")
    return conf


def pip_index() -> str:
    return (os.environ.get("PIP_INDEX_URL") or _pip_conf().get("global", "index-url", fallback=None)
            or "https://pypi.org/simple")


def reachable(url: str) -> str | None:
    """None when `url` answers (any HTTP status), else why not."""
    cafile = os.environ.get("PIP_CERT") or _pip_conf().get("global", "cert", fallback=None)
    ctx = ssl.create_default_context(cafile=cafile if cafile and os.path.exists(cafile) else None)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=NETWORK_TIMEOUT,
                                    context=ctx):
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def install_tools(packages: list[str]) -> str:
    """apt-get install the packages (once per session; the caller caches). Returns what happened."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        try:
            r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"`{shlex.join(argv)}` failed: {e}"
        if r.returncode != 0:
            last = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit status {r.returncode}"]
            return f"`{shlex.join(argv)}` failed: {last[0]}"
    return f"installed {' '.join(packages)}"


@cache
def skip_reason() -> str | None:
    """Why this machine cannot run the deploy tier, or None. Installs missing tools with apt-get when it can."""
    if not sys.platform.startswith("linux"):
        return f"the deploy test boots a Linux container (systemd-nspawn); this is {sys.platform}"
    if os.geteuid() != 0:
        return "the deploy test needs root (systemd-nspawn, an overlay mount, cgroups): run it as root"
    mirror, _ = debian_mirror()
    if err := reachable(f"{mirror}/dists/{SUITE}/Release"):
        return f"no network to the Debian mirror {mirror}: {err}"
    index = pip_index().rstrip("/")
    if err := reachable(f"{index}/pip/"):
        return f"no network to the Python package index {index}: {err}"
    missing = missing_tools()
    want = sorted({TOOLS[t] for t in missing} | ({"debian-archive-keyring"} if not DEBIAN_KEYRING.exists() else set()))
    if want:
        if shutil.which("apt-get") is None:
            return f"{', '.join(missing) or DEBIAN_KEYRING} missing and there is no apt-get to install {' '.join(want)}"
        outcome = install_tools(want)
        missing = missing_tools()
        if missing or not DEBIAN_KEYRING.exists():
            return f"{', '.join(missing) or DEBIAN_KEYRING} missing and could not be installed ({outcome})"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Small process helpers

def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_gone(pid: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return True
        if proc is None and not alive(pid):
            return True
        time.sleep(0.2)
    return proc.poll() is not None if proc is not None else not alive(pid)


def new_logdir() -> Path:
    """A fresh log dir for this run under LOG_ROOT; only the newest LOGS_KEPT runs' logs are kept."""
    LOG_ROOT.mkdir(parents=True, exist_ok=True)
    logdir = LOG_ROOT / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    logdir.mkdir()
    for old in sorted(LOG_ROOT.iterdir(), key=lambda p: p.stat().st_mtime)[:-LOGS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return logdir


def logger(logdir: Path):
    """A function appending timestamped lines to logdir/deploy.log."""
    def log(message: str) -> None:
        with (logdir / "deploy.log").open("a") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    return log


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------------------------
# cgroups: ours, in each hierarchy nspawn cares about (cgroup2 alone, or hybrid: name=systemd plus unified)

def cgroup_roots() -> list[Path]:
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    roots: list[Path] = []
    for _dev, where, fstype, opts, *_ in mounts:
        if where == "/sys/fs/cgroup" and fstype == "cgroup2":
            return [Path(where)]
        if where.startswith("/sys/fs/cgroup/") and (fstype == "cgroup2" or "name=systemd" in opts.split(",")):
            roots.append(Path(where))
    return roots


def cgroup_pids(top: Path) -> list[int]:
    pids: list[int] = []
    for d, _dirs, _files in os.walk(top):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(d, "cgroup.procs").read_text().split()]
    return pids


def remove_cgroup(top: Path, log) -> None:
    """Kill whatever is left in the cgroup tree `top` (bounded), then remove its directories."""
    deadline = time.monotonic() + 10
    while (pids := cgroup_pids(top)) and time.monotonic() < deadline:
        log(f"cleanup: SIGKILL to {pids} left in {top}")
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    for d, _dirs, _files in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(d)
    if top.exists():
        log(f"cleanup: could not remove cgroup {top} (processes left: {cgroup_pids(top)})")


def clean_stale(log) -> None:
    """Leftovers of earlier runs whose pytest process is gone (killed outright): their containers' processes,
    cgroups and work dirs."""
    for root in cgroup_roots():
        for d in root.glob(CGROUP_PREFIX + "*"):
            if d.name[len(CGROUP_PREFIX):].isdigit() and not alive(int(d.name[len(CGROUP_PREFIX):])):
                log(f"cleanup: stale cgroup {d}")
                remove_cgroup(d, log)
    for w in Path(WORK_PREFIX).parent.glob(Path(WORK_PREFIX).name + "*"):
        if w.name[len(Path(WORK_PREFIX).name):].isdigit() and not alive(int(w.name[len(Path(WORK_PREFIX).name):])):
            log(f"cleanup: stale work dir {w}")
            shutil.rmtree(w, ignore_errors=True)
    run_dir = Path("/run/systemd/nspawn")
    for p in run_dir.glob(f"*/{CGROUP_PREFIX}*"):          # propagate/NAME of a machine of ours
        if p.name[len(CGROUP_PREFIX):].isdigit() and not alive(int(p.name[len(CGROUP_PREFIX):])):
            log(f"cleanup: stale {p}")
            shutil.rmtree(p, ignore_errors=True)
    for lock in run_dir.glob("locks/inode-*"):             # image locks nobody holds any more
        with contextlib.suppress(OSError), open(lock, "a") as f:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a POSIX lock: conflicts with nspawn's OFD lock
            lock.unlink()
            log(f"cleanup: stale {lock}")
    remove_empty_tree(run_dir)


def remove_empty_tree(top: Path) -> None:
    """Remove `top` and its direct subdirectories when they are empty (a live machine's propagate/NAME keeps
    propagate/ and `top`)."""
    for d in [*(p for p in top.glob("*") if p.is_dir() and not p.is_symlink()), top]:
        with contextlib.suppress(OSError):
            os.rmdir(d)


# ---------------------------------------------------------------------------------------------------------------
# The rootfs cache

def _rootfs_valid(path: Path) -> str | None:
    """None when the cache at `path` can be reused, else why not."""
    marker = path / MARKER
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "no cache yet" if not path.exists() else "no complete build marker"
    if recorded.get("recipe") != RECIPE:
        return "built from another recipe"
    if time.time() - recorded.get("built_at", 0) > MAX_AGE_S:
        return "older than 30 days"
    for needed in ("usr/lib/systemd/systemd", "usr/bin/python3", "usr/bin/apt-get", "usr/bin/curl"):
        if not (path / needed).exists():
            return f"{needed} missing"
    return None


def ensure_rootfs(log, logdir: Path) -> tuple[Path, int, str]:
    """The cached rootfs, built when missing or invalid. Returns (path, a shared-lock fd the caller keeps open
    while a container uses the rootfs, what was done). The lock keeps two sessions from rebuilding a rootfs that
    the other one runs on."""
    ROOTFS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(ROOTFS_CACHE) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + BUILD_TIMEOUT + 60
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MachineError(f"{ROOTFS_CACHE}.lock stayed locked (another deploy run?)") from None
                time.sleep(1)
        why = _rootfs_valid(ROOTFS_CACHE)
        if why is None:
            done = f"rootfs cache {ROOTFS_CACHE} reused"
        else:
            t0 = time.monotonic()
            log(f"building the rootfs cache {ROOTFS_CACHE} ({why}) with mmdebstrap")
            mirror, security = debian_mirror()
            new = Path(str(ROOTFS_CACHE) + ".new")
            shutil.rmtree(new, ignore_errors=True)
            argv = ["mmdebstrap", "--mode=root", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                    "--skip=cleanup/apt/lists",       # apt lists kept: the per-run `apt-get update` is then small
                    f"--customize-hook=echo {HOSTNAME} > \"$1/etc/hostname\"",
                    SUITE, str(new), f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main",
                    f"deb {security} {SUITE}-security main"]
            out = logdir / "mmdebstrap.log"
            with out.open("w") as f:
                try:
                    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                       timeout=BUILD_TIMEOUT)
                    rc = r.returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            if rc != 0:
                shutil.rmtree(new, ignore_errors=True)
                raise MachineError(f"mmdebstrap failed ({rc}):\n{tail(out.read_text())}\n(log: {out})")
            (new / MARKER).write_text(json.dumps({"recipe": RECIPE, "built_at": time.time()}))
            shutil.rmtree(ROOTFS_CACHE, ignore_errors=True)
            new.rename(ROOTFS_CACHE)
            done = f"rootfs cache {ROOTFS_CACHE} built ({why}) in {time.monotonic() - t0:.0f} s"
        fcntl.flock(fd, fcntl.LOCK_SH)
        return ROOTFS_CACHE, fd, done
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------------------------------------------
# The container

@dataclass
class Result:
    command: str
    rc: int | None          # None: killed at its deadline
    out: str
    err: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def __str__(self) -> str:
        status = "timed out" if self.rc is None else f"exit status {self.rc}"
        return (f"$ {self.command}\n-> {status} after {self.seconds:.1f} s\n--- stdout (end) ---\n{tail(self.out)}"
                f"\n--- stderr (end) ---\n{tail(self.err)}")


# Runs in a new private mount namespace (unshare -m): mounts the overlay, moves itself into our cgroups and
# becomes systemd-nspawn. The mount exists only in this namespace and goes away with the container.
BOOT_SH = r"""
set -e
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
for cg in $SCHEDSERVER_DEPLOY_CGROUPS; do echo $$ > "$cg/cgroup.procs"; done
shift 4
exec "$@"
"""


@dataclass
class Container:
    rootfs: Path
    checkout: Path
    logdir: Path
    name: str = field(default_factory=lambda: f"{CGROUP_PREFIX}{os.getpid()}")
    work: Path = field(default_factory=lambda: Path(f"{WORK_PREFIX}{os.getpid()}"))
    adaptations: list[str] = field(default_factory=list)
    leader: int | None = None           # the container's PID 1 (systemd), as the host sees it
    proc: subprocess.Popen | None = None
    cgroups: list[Path] = field(default_factory=list)
    checkout_in_container: str = "/root/schedserver"
    _nspawn_run_existed: bool = True

    def log(self, message: str) -> None:
        logger(self.logdir)(message)

    # -- preparing the upper layer -----------------------------------------------------------------------------
    def prepare(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        for d in ("upper", "ovl-work", "merged"):
            (self.work / d).mkdir(parents=True)
        upper = self.work / "upper"
        self._mkdir(upper / "root", 0o700)
        dest = upper / self.checkout_in_container.lstrip("/")
        self._mkdir(dest, 0o755)
        files = self._checkout_files()
        for rel in files:
            src, dst = self.checkout / rel, dest / rel
            if not src.is_symlink() and not src.is_file():
                continue                    # a tracked file deleted in the work tree
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            else:
                shutil.copy2(src, dst)
        self.log(f"checkout {self.checkout} copied to {self.checkout_in_container} ({len(files)} files)")
        certs = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
        if certs:
            target = upper / "usr/local/share/ca-certificates"
            for d in (upper / "usr", upper / "usr/local", upper / "usr/local/share", target):
                self._mkdir(d, 0o755)
            for c in certs:
                shutil.copy2(c, target / c.name)
            self.adaptations.append(f"host CA certificates copied in ({', '.join(c.name for c in certs)}), "
                                    "update-ca-certificates run")
        if Path("/etc/pip.conf").is_file():
            self._mkdir(upper / "etc", 0o755)
            shutil.copy2("/etc/pip.conf", upper / "etc/pip.conf")
            self.adaptations.append("host /etc/pip.conf copied in")
        passed = [k for k in DOWNLOAD_ENV if os.environ.get(k)]
        if passed:
            self.adaptations.append(f"download commands get this process's {', '.join(passed)}")

    @staticmethod
    def _mkdir(path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)

    def _checkout_files(self) -> list[str]:
        """What a fresh clone plus local changes holds: tracked and untracked-but-not-ignored files (no .git,
        no virtualenv, no caches). Without git, every file except those."""
        try:
            r = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(self.checkout), "ls-files", "-z", "-co",
                                "--exclude-standard"], capture_output=True, timeout=60, check=True)
            return sorted({p for p in r.stdout.decode().split("\0") if p})
        except (OSError, subprocess.SubprocessError):
            skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", "build"}
            out = []
            for d, dirs, files in os.walk(self.checkout):
                dirs[:] = [x for x in dirs if x not in skip and not x.endswith(".egg-info")]
                out += [os.path.relpath(os.path.join(d, f), self.checkout) for f in files]
            return sorted(out)

    # -- boot ----------------------------------------------------------------------------------------------------
    def boot(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Boot and wait for `systemctl is-system-running` to say running (or degraded). Returns that state."""
        deadline = time.monotonic() + timeout
        self._nspawn_run_existed = Path("/run/systemd/nspawn").exists()
        for root in cgroup_roots():
            (root / self.name).mkdir(exist_ok=True)
            self.cgroups.append(root / self.name)
        nspawn = ["systemd-nspawn", f"--directory={self.work / 'merged'}", "--boot", f"--machine={self.name}",
                  "--register=no", "--keep-unit", "--private-network", "--resolv-conf=copy-host",
                  "--timezone=off", "--link-journal=no", "--console=read-only"]
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", BOOT_SH, "boot",
                str(self.rootfs), str(self.work / "upper"), str(self.work / "ovl-work"), str(self.work / "merged"),
                *nspawn]
        env = dict(os.environ, SCHEDSERVER_DEPLOY_CGROUPS=" ".join(map(str, self.cgroups)))
        self.log(f"boot: {shlex.join(nspawn)}")
        console = (self.logdir / "console.log").open("w")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=console,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        console.close()
        while self.leader is None:
            if self.proc.poll() is not None:
                raise MachineError(f"systemd-nspawn exited ({self.proc.returncode}) while booting:\n"
                                   f"{tail((self.logdir / 'console.log').read_text())}")
            if time.monotonic() > deadline:
                raise MachineError("no systemd PID 1 appeared in the container in time")
            self.leader = self._find_leader()
            if self.leader is None:
                time.sleep(0.1)
        self.log(f"boot: container PID 1 is host PID {self.leader}")
        state = ""
        while time.monotonic() < deadline:
            r = self.run("systemctl is-system-running --wait", timeout=max(1.0, deadline - time.monotonic()),
                         quiet=True)
            state = r.out.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            raise MachineError(f"systemd did not finish booting in {timeout:.0f} s (is-system-running: {state!r})")
        if state == "degraded":
            self.log("boot: degraded; failed units:\n" + self.run("systemctl --failed --no-pager").out)
        if any("CA certificates" in a for a in self.adaptations):
            self.run("update-ca-certificates", timeout=60, check=True)
        return state

    def _find_leader(self) -> int | None:
        """The child of systemd-nspawn that is PID 1 of its PID namespace and runs systemd."""
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if (fields.get("PPid", "").strip() == str(self.proc.pid) and fields.get("Name", "").strip() == "systemd"
                    and fields.get("NSpid", "").split()[-1:] == ["1"]):
                return int(entry.name)
        return None

    # -- commands ------------------------------------------------------------------------------------------------
    def run(self, script: str, *, host_net: bool = False, timeout: float = 60, check: bool = False,
            quiet: bool = False) -> Result:
        """Run a bash script as root in the container (its mount, UTS, IPC, PID, cgroup namespaces and root; its
        network namespace too unless `host_net`). Killed, with everything it started, at its deadline."""
        if self.leader is None:
            raise MachineError("the container is not running")
        env = dict(CONTAINER_ENV)
        if host_net:
            env.update({k: os.environ[k] for k in DOWNLOAD_ENV if os.environ.get(k)})
        argv = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-p", "-C", "-r", "-w",
                *([] if host_net else ["-n"]), "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                "bash", "-c", script]
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, errors="replace", start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
            rc: int | None = p.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            rc = None
        result = Result(script, rc, out, err, time.monotonic() - t0)
        if not quiet:
            with (self.logdir / "commands.log").open("a") as f:
                f.write(f"\n===== [{time.strftime('%H:%M:%S')}] {'(host network) ' if host_net else ''}"
                        f"{result}\n")
        if check and not result.ok:
            raise MachineError(f"command failed in the container:\n{result}")
        return result

    # -- teardown ------------------------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Power off and clean up; never raises. Returns the problems met (also logged)."""
        problems: list[str] = []

        def note(message: str) -> None:
            problems.append(message)
            self.log(message)

        try:
            if self.proc is not None and self.proc.poll() is None:
                if self.leader is not None and alive(self.leader):
                    for cmd, name in (("journalctl -b --no-pager", "journal-boot.txt"),
                                      ("journalctl -u schedserver --no-pager", "journal-schedserver.txt")):
                        with contextlib.suppress(Exception):
                            (self.logdir / name).write_text(self.run(cmd, timeout=20, quiet=True).out)
                    with contextlib.suppress(Exception):
                        self.run("systemctl poweroff --no-block", timeout=10, quiet=True)
                if not wait_gone(self.proc.pid, 30, self.proc):
                    note("teardown: the container did not power off in 30 s; SIGTERM to systemd-nspawn")
                    self.proc.terminate()
                    if not wait_gone(self.proc.pid, 10, self.proc):
                        note("teardown: SIGKILL to systemd-nspawn and the container's PID 1")
                        self.proc.kill()
                        if self.leader is not None:
                            with contextlib.suppress(OSError):
                                os.kill(self.leader, signal.SIGKILL)
                        wait_gone(self.proc.pid, 5, self.proc)
                self.log(f"teardown: systemd-nspawn exited ({self.proc.returncode})")
            for cg in self.cgroups:
                if cgroup_pids(cg):
                    note(f"teardown: processes left in {cg}: {cgroup_pids(cg)} (killed)")
                remove_cgroup(cg, self.log)
                if cg.exists():
                    note(f"teardown: cgroup {cg} could not be removed")
            run_dir = Path("/run/systemd/nspawn")
            for p in run_dir.glob(f"*/{self.name}"):      # e.g. propagate/NAME
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            if not self._nspawn_run_existed:
                remove_empty_tree(run_dir)  # only empty ones: another container may use it meanwhile
            shutil.rmtree(self.work, ignore_errors=True)
            if self.work.exists():
                note(f"teardown: could not remove {self.work}")
        except Exception as e:              # teardown must never hide the test's own outcome
            note(f"teardown: {type(e).__name__}: {e}")
        self.log("teardown: done" + (f" with {len(problems)} problem(s)" if problems else ""))
        return problems
