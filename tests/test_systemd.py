"""The systemd unit and its companions: directives the deploy relies on, `systemd-analyze verify` clean and
`systemd-analyze security` exposure at most 2.0 (when systemd-analyze is installed: .ci/run installs it)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import schedserver

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "schedserver.service"
EXPOSURE_TARGET = 2.0

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_is_a_notify_service_with_watchdog_reload_and_restart():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["WatchdogSec"] and int(s["WatchdogSec"][0]) >= 5
    assert s["Restart"] == ["on-failure"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["ExecStart"][0].endswith("schedserver serve --config /etc/schedserver/schedserver.toml")


def test_the_unit_runs_as_a_dedicated_user_with_private_state_and_a_strict_umask():
    s = unit_settings()
    assert s["User"] == ["schedserver"] and s["Group"] == ["schedserver"]
    assert s["StateDirectory"] == ["schedserver"] and s["StateDirectoryMode"] == ["0700"]
    assert s["ConfigurationDirectory"] == ["schedserver"]
    assert s["UMask"] == ["0077"]


@pytest.mark.parametrize("option, value", [
    ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"), ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"), ("ProtectControlGroups", "yes"), ("RestrictNamespaces", "yes"),
    ("RestrictSUIDSGID", "yes"), ("LockPersonality", "yes"), ("CapabilityBoundingSet", ""),
    ("SystemCallFilter", "@system-service"),
])
def test_the_unit_sets_the_sandboxing_option(option, value):
    assert value in unit_settings()[option]


def test_the_unit_keeps_outgoing_http_possible():
    s = unit_settings()
    assert "PrivateNetwork" not in s and "IPAddressDeny" not in s
    families = s["RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)
    assert "MemoryDenyWriteExecute" not in s      # node's JIT needs W+X memory


def test_the_unit_and_readme_say_how_to_let_scripts_write_elsewhere():
    assert "ReadWritePaths=" in UNIT.read_text()
    assert "ReadWritePaths=" in (ROOT / "README.md").read_text()


def test_the_etc_config_loads_and_matches_the_unit_layout():
    config = schedserver.load_config({"config": str(ROOT / "conf" / "etc-schedserver.toml")}, {})
    assert config.data_dir == "/var/lib/schedserver"           # StateDirectory=schedserver
    assert config.scripts_dir == "/etc/schedserver/scripts"    # systemd/schedserver.tmpfiles
    assert config.shutdown_grace_seconds < int(unit_settings()["TimeoutStopSec"][0])


def test_the_example_config_names_every_key():
    text = (ROOT / "conf" / "schedserver.toml").read_text()
    for section, key, *_ in schedserver.CONFIG_TABLE:
        assert f"[{section}]" in text
        assert re.search(rf"^#? ?{key} = ", text, re.M), f"{section}.{key} missing from conf/schedserver.toml"
    schedserver.load_config({"config": str(ROOT / "conf" / "schedserver.toml")}, {})


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path):
    # verify checks that ExecStart exists; on a machine without the deployed venv, point it at this Python.
    unit = tmp_path / "schedserver.service"
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", UNIT.read_text(), flags=re.M))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", done.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_exposure_is_at_most_2():
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True,
                          text=True, timeout=60)
    match = re.search(r"Overall exposure level for schedserver\.service: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure = float(match.group(1))
    print(f"systemd: exposure {exposure} (target <= {EXPOSURE_TARGET})")
    assert exposure <= EXPOSURE_TARGET
