"""schedserver: a cron scheduling server for script and HTTP request schedules, driven over REST.

Run it::

    schedserver [serve] [--config FILE] [--host HOST] [--port PORT] [--data-dir DIR] [--scripts-dir DIR]

(``python -m schedserver ...`` is the same). Embed it::

    with schedserver.Server(schedserver.Config(data_dir="/var/lib/x", scripts_dir="/srv/x")) as server:
        ...   # server.wsgi_app is a WSGI app; the scheduler runs until the block ends

Sections follow the data, each using only public names of the sections above it: constants, errors, config,
time and cron, storage, jobs and runs, runners, scheduler, recorder, services, web, server, CLI.
"""

from __future__ import annotations

__version__ = "0.2.0"

import argparse
import base64
import bisect
import calendar
import contextlib
import ctypes
import functools
import hashlib
import hmac
import heapq
import ipaddress
import itertools
import json
import logging
import math
import os
import queue
import re
import resource
import secrets
import selectors
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
import traceback
import urllib.parse
import uuid
import zoneinfo
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterable, Iterator
from zoneinfo import ZoneInfo

import bottle
import certifi
import filelock
import urllib3
import urllib3.connection
import urllib3.exceptions
import waitress.channel
import waitress.parser
import waitress.server
import waitress.task
import waitress.wasyncore

log = logging.getLogger("schedserver")
log.addHandler(logging.NullHandler())       # a library logs nowhere until its host says where


###############################################################################
# Constants and defaults #######################################################
###############################################################################

API_PREFIX = "/api/v1"
CURL_PREFIX = API_PREFIX + "/curl/schedule"
EXEC_PREFIX = API_PREFIX + "/exec/schedules"

MAX_BODY_BYTES = 1024 * 1024            # request bodies above this answer 413
MAX_RESPONSE_BYTES = 64 * 1024          # an HTTP run reads at most this much of the target's answer
HISTORY_SIZE = 20                       # runs shown per HTTP schedule by GET /{id}
HISTORY_MAX_LIMIT = 1000
MAX_NAME_LENGTH = 200
MAX_HTTP_TIMEOUT = 300.0
MAX_REDIRECTS = 10
MAX_JSON_DEPTH = 64                     # nesting allowed in a stored request.json
MISSED_SCAN_LIMIT = 3000                # missed slots counted one by one; beyond, "at least"
FILE_LOCK_TIMEOUT = 10.0                # seconds a writer waits for a file lock before reporting a storage error
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_SCRIPT_TIMEOUT_MS = 24 * 3600 * 1000
MAX_OUTPUT_BYTES = 64 * 1024            # the tail of a script's stdout and of its stderr kept in memory
HEADER_BYTES = 16 * 1024                # directives are read from at most this much of a script's head
OUTPUT_DRAIN_SECONDS = 5.0              # after a script exits, its pipes may stay open this long
KILL_GRACE_SECONDS = 2.0                # between SIGTERM and SIGKILL for a script's processes
PREFLIGHT_TIMEOUT_SECONDS = 20.0
PREFLIGHT_THREADS = 4                   # syntax checks run at once during a scan
STATE_SAVE_SECONDS = 30.0               # run state is saved at most this long after it changed
OPEN_FILES_WANTED = 65536               # the soft descriptor limit main() raises to (within the hard limit)
TEMP_PREFIX = ".schedserver-tmp-"       # the only files the server ever removes uninvited start with this
DEFAULT_DATA_DIR = "./data"
DEFAULT_SCRIPTS_DIR = "./scripts"


###############################################################################
# Errors #######################################################################
###############################################################################

class SchedserverError(Exception):
    """Root of every error schedserver raises on purpose."""


class ConfigError(SchedserverError, ValueError):
    """A problem the user fixes in config, flags or the machine; main() prints it as one line, exit 2."""


class StartupError(SchedserverError, RuntimeError):
    """The server cannot start (data dir in use, corrupt store, port taken); one line, exit 2."""


class ApiError(SchedserverError):
    """An error answered over HTTP: status, machine code and a message a person can act on."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}


class InvalidParameter(ApiError, ValueError):
    status, code = 400, "INVALID_PARAMETER"


class InvalidCron(ApiError, ValueError):
    status, code = 400, "INVALID_CRON_EXPRESSION"


class Unauthorized(ApiError):
    status, code = 401, "UNAUTHORIZED"

    def __init__(self, message: str = "Missing or invalid bearer token"):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, code = 403, "FORBIDDEN"


class NotFound(ApiError, LookupError):
    status, code = 404, "NOT_FOUND"


class Conflict(ApiError):
    status, code = 409, "CONFLICT"


class StorageError(ApiError, OSError):
    status, code = 500, "STORAGE_ERROR"


class Unavailable(ApiError):
    status, code = 503, "SERVICE_UNAVAILABLE"


###############################################################################
# Config #######################################################################
###############################################################################

def _to_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _to_int(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value
    return convert


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _to_str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(v.strip() for v in value if v.strip())


def _to_token_list(value: Any) -> tuple[str, ...]:
    tokens = _to_str_list(value)
    if not all(t.isascii() and t.isprintable() for t in tokens):
        # A client sends the Authorization header as Latin-1 bytes at best: no UTF-8 client could ever match.
        raise ValueError("tokens must be printable ASCII (a client could never send this one)")
    return tokens


def _to_network_list(value: Any) -> tuple[str, ...]:
    networks = _to_str_list(value)
    for text in networks:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a network (use CIDR such as 10.0.0.0/8 or an address)") from None
    return networks


def _to_timezone_name(value: Any) -> str:
    name = _to_str(value)
    load_timezone(name)
    return name


def _to_log_level(value: Any) -> str:
    level = _to_str(value).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR")
    return level


def _to_log_format(value: Any) -> str:
    text = _to_str(value).lower()
    if text not in ("text", "json"):
        raise ValueError("expected text or json")
    return text


def _to_command_table(value: Any) -> dict[str, tuple[str, ...]]:
    """`{".ext": "cmd args" or ["cmd", "args"]}`, as for [exec.interpreters] and [exec.preflight]."""
    if not isinstance(value, dict):
        raise ValueError('expected a table such as { ".rb" = "ruby" }')
    table = {}
    for ext, command in value.items():
        if not ext.startswith(".") or len(ext) < 2:
            raise ValueError(f"key {ext!r} must be a file extension starting with '.'")
        if isinstance(command, str):
            command = shlex.split(command)
        if not isinstance(command, (list, tuple)) or not command or \
                not all(isinstance(c, str) and c for c in command):
            raise ValueError(f"{ext}: expected a command as a string or a list of strings")
        table[ext.lower()] = tuple(command)
    return table


def _to_optional_str(value: Any) -> str | None:
    return None if value is None else _to_str(value)


def _to_optional_url(value: Any) -> str | None:
    if value is None:
        return None
    url = _to_str(value)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http or https URL")
    return url


def _to_storage_url(value: Any) -> str | None:
    """None (the files in the data dir), or a postgresql:// URL."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or urllib.parse.urlsplit(value).scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// URL, or empty for the files in the data dir")
    return value


def _to_notify_events(value: Any) -> tuple[str, ...]:
    events = _to_str_list(value)
    if not events or any(e not in ("failure", "recovery", "success") for e in events):
        raise ValueError("expected a list of failure, recovery, success")
    return events


# (section, key, converter, default, environment variable). Every config key is here; anything else is an error.
CONFIG_TABLE: tuple[tuple[str, str, Callable[[Any], Any], Any, str | None], ...] = (
    ("server", "host", _to_str, "127.0.0.1", "SCHEDSERVER_HOST"),
    ("server", "port", _to_int(0, 65535), 8080, "SCHEDSERVER_PORT"),
    ("server", "data_dir", _to_str, DEFAULT_DATA_DIR, "SCHEDSERVER_DATA_DIR"),
    ("server", "scripts_dir", _to_str, DEFAULT_SCRIPTS_DIR, "SCHEDSERVER_SCRIPTS_DIR"),
    ("server", "threads", _to_int(1, 256), 8, "SCHEDSERVER_THREADS"),
    ("server", "connection_limit", _to_int(10, 100000), 1000, "SCHEDSERVER_CONNECTION_LIMIT"),
    ("server", "idle_timeout_seconds", _to_int(1, 3600), 20, "SCHEDSERVER_IDLE_TIMEOUT_SECONDS"),
    ("server", "log_level", _to_log_level, "INFO", "SCHEDSERVER_LOG_LEVEL"),
    ("server", "log_format", _to_log_format, "text", "SCHEDSERVER_LOG_FORMAT"),
    ("server", "access_log", _to_bool, False, "SCHEDSERVER_ACCESS_LOG"),
    ("server", "shutdown_grace_seconds", _to_int(0, 3600), 10, "SCHEDSERVER_SHUTDOWN_GRACE_SECONDS"),
    ("scheduler", "timezone", _to_timezone_name, "UTC", "SCHEDSERVER_TIMEZONE"),
    ("scheduler", "workers", _to_int(1, 1024), 8, "SCHEDSERVER_WORKERS"),
    ("scheduler", "misfire_grace_seconds", _to_int(1, 3600), 30, "SCHEDSERVER_MISFIRE_GRACE_SECONDS"),
    ("auth", "tokens", _to_token_list, (), "SCHEDSERVER_TOKEN"),
    ("auth", "read_tokens", _to_token_list, (), "SCHEDSERVER_READ_TOKEN"),
    ("auth", "token_file", _to_optional_str, None, "SCHEDSERVER_TOKEN_FILE"),
    ("curl", "runs_log_max_bytes", _to_int(4096, 2**40), 10 * 1024 * 1024, "SCHEDSERVER_CURL_RUNS_LOG_MAX_BYTES"),
    ("curl", "runs_log_backups", _to_int(0, 100), 5, "SCHEDSERVER_CURL_RUNS_LOG_BACKUPS"),
    ("curl", "allow_networks", _to_network_list, (), "SCHEDSERVER_CURL_ALLOW_NETWORKS"),
    ("curl", "deny_networks", _to_network_list, (), "SCHEDSERVER_CURL_DENY_NETWORKS"),
    ("exec", "default_timeout_ms", _to_int(1, MAX_SCRIPT_TIMEOUT_MS), 30000, "SCHEDSERVER_EXEC_DEFAULT_TIMEOUT_MS"),
    ("exec", "fires_log_max_bytes", _to_int(4096, 2**40), 10 * 1024 * 1024, "SCHEDSERVER_EXEC_FIRES_LOG_MAX_BYTES"),
    ("exec", "fires_log_backups", _to_int(0, 100), 5, "SCHEDSERVER_EXEC_FIRES_LOG_BACKUPS"),
    ("exec", "return_preview_chars", _to_int(1, 65536), 200, "SCHEDSERVER_EXEC_RETURN_PREVIEW_CHARS"),
    ("exec", "interpreters", _to_command_table, {}, None),
    ("exec", "preflight", _to_command_table, {}, None),
    ("exec", "output_retention_bytes", _to_int(0, 2**40), 100 * 1024 * 1024,
     "SCHEDSERVER_EXEC_OUTPUT_RETENTION_BYTES"),
    ("scheduler", "overlap_limit", _to_int(1, 1000), 10, "SCHEDSERVER_OVERLAP_LIMIT"),
    ("notify", "url", _to_optional_url, None, "SCHEDSERVER_NOTIFY_URL"),
    ("notify", "on", _to_notify_events, ("failure", "recovery"), "SCHEDSERVER_NOTIFY_ON"),
    ("notify", "after", _to_int(1, 1000), 1, "SCHEDSERVER_NOTIFY_AFTER"),
    ("metrics", "public", _to_bool, False, "SCHEDSERVER_METRICS_PUBLIC"),
    ("metrics", "per_schedule", _to_bool, False, "SCHEDSERVER_METRICS_PER_SCHEDULE"),
    ("storage", "url", _to_storage_url, None, "SCHEDSERVER_STORAGE_URL"),
    ("storage", "runs_retention_days", _to_int(1, 36500), 30, "SCHEDSERVER_STORAGE_RUNS_RETENTION_DAYS"),
    ("cluster", "lease_seconds", _to_int(2, 10), 10, "SCHEDSERVER_CLUSTER_LEASE_SECONDS"),
    ("cluster", "takeover_seconds", _to_int(1, 30), 2, "SCHEDSERVER_CLUSTER_TAKEOVER_SECONDS"),
)
PATH_KEYS = ("data_dir", "scripts_dir", "token_file")
SECRET_SECTIONS = ("auth", "notify", "storage")     # a webhook URL may carry a key, a database URL a password


def config_attribute(section: str, key: str) -> str:
    """The Config field of a table key: its name, or `<table>_<name>` for the tables named below."""
    return f"{section}_{key}" if section in ("notify", "metrics", "storage", "cluster") else key


@dataclass(frozen=True)
class Config:
    """Validated settings; paths are made absolute. Built by load_config(), or directly in Python."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = DEFAULT_DATA_DIR
    scripts_dir: str = DEFAULT_SCRIPTS_DIR
    threads: int = 8
    connection_limit: int = 1000
    idle_timeout_seconds: int = 20
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: bool = False
    shutdown_grace_seconds: int = 10
    timezone: str = "UTC"
    workers: int = 8
    misfire_grace_seconds: int = 30
    tokens: tuple[str, ...] = ()
    read_tokens: tuple[str, ...] = ()
    token_file: str | None = None
    runs_log_max_bytes: int = 10 * 1024 * 1024
    runs_log_backups: int = 5
    allow_networks: tuple[str, ...] = ()
    deny_networks: tuple[str, ...] = ()
    default_timeout_ms: int = 30000
    fires_log_max_bytes: int = 10 * 1024 * 1024
    fires_log_backups: int = 5
    return_preview_chars: int = 200
    interpreters: dict = field(default_factory=dict)
    preflight: dict = field(default_factory=dict)
    output_retention_bytes: int = 100 * 1024 * 1024
    overlap_limit: int = 10
    notify_url: str | None = None
    notify_on: tuple[str, ...] = ("failure", "recovery")
    notify_after: int = 1
    metrics_public: bool = False
    metrics_per_schedule: bool = False
    storage_url: str | None = None
    storage_runs_retention_days: int = 30
    cluster_lease_seconds: int = 10
    cluster_takeover_seconds: int = 2
    config_file: str | None = None

    def __post_init__(self) -> None:
        # The table checks a Config built in Python as it checks one read from a file: one set of rules.
        for section, key, convert, _, _ in CONFIG_TABLE:
            key = config_attribute(section, key)
            value = getattr(self, key)
            try:
                value = convert(value)
            except ValueError as e:
                shown = "a value (not shown: it may be a secret)" if section in SECRET_SECTIONS else repr(value)
                raise ConfigError(f"{section}.{key}: {e}, got {shown}") from None
            if key in PATH_KEYS and value is not None:
                value = os.path.abspath(os.path.expanduser(value))
            object.__setattr__(self, key, value)


def load_config(flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Build the config: flags > environment > TOML file > defaults. Raises ConfigError naming the key."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = dict(os.environ if environ is None else environ)
    config_file = flags.get("config") or environ.get("SCHEDSERVER_CONFIG")
    file_values: dict[str, Any] = {}
    base_dir = os.getcwd()
    if config_file:
        config_file = os.path.abspath(config_file)
        base_dir = os.path.dirname(config_file)
        file_values = _read_toml(config_file)
    known = {(section, key) for section, key, *_ in CONFIG_TABLE}
    for section, table in file_values.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{config_file}: [{section}] must be a table, not a value")
        for key in table:
            if (section, key) not in known:
                raise ConfigError(f"{config_file}: unknown key '{section}.{key}'")

    values: dict[str, Any] = {}
    for section, key, convert, default, env_name in CONFIG_TABLE:
        value, where, origin_dir = default, None, os.getcwd()
        if key in file_values.get(section, {}):
            value, where, origin_dir = file_values[section][key], f"{config_file}: {section}.{key}", base_dir
        if env_name and env_name in environ:
            value, where, origin_dir = _from_text(environ[env_name], default), f"environment {env_name}", os.getcwd()
        if key in flags:
            value, where, origin_dir = _from_text(flags[key], default), f"--{key.replace('_', '-')}", os.getcwd()
        if where is not None:
            try:
                value = convert(value)
            except ValueError as e:
                shown = "a value (not shown: it may be a secret)" if section in SECRET_SECTIONS else _shown(value)
                raise ConfigError(f"{where}: {e}, got {shown}") from None
        if key in PATH_KEYS and value is not None:
            value = os.path.abspath(os.path.join(origin_dir, os.path.expanduser(value)))
        values[config_attribute(section, key)] = value
    return Config(**values, config_file=config_file)


def _shown(value: Any) -> str:
    """A value quoted for a message, cut short: user input may be huge."""
    return _clip(repr(value))


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _from_text(text: Any, default: Any) -> Any:
    """An environment variable or flag as the type of its key: whole numbers, comma-separated lists."""
    if not isinstance(text, str):
        return text
    if isinstance(default, bool):
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
            text.strip().lower(), text)
    # At most 18 digits: int() refuses thousands of digits, and no setting needs more.
    if isinstance(default, int) and re.fullmatch(r"\s*-?[0-9]{1,18}\s*", text):
        return int(text)
    if isinstance(default, tuple):
        return [part for part in text.split(",")]
    return text


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    except (ValueError, RecursionError) as e:       # TOMLDecodeError, and int() refusing thousands of digits
        raise ConfigError(f"{path}: not valid TOML ({_shown(str(e))})") from None


###############################################################################
# Time and cron ################################################################
###############################################################################

# Names zoneinfo finds that are not IANA zones a schedule may use: `right/` zones count leap seconds (their
# times are off by them), `posix/` duplicates, and local aliases that mean whatever the machine says.
_NOT_ZONES = ("localtime", "posixrules", "Factory")


@functools.lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(name for name in zoneinfo.available_timezones()
                     if name not in _NOT_ZONES and not name.startswith(("right/", "posix/")))


@functools.lru_cache(maxsize=1024)
def load_timezone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError with a readable message for anything else."""
    if not isinstance(name, str) or name not in _zone_names():
        raise ValueError(f"unknown timezone {_shown(name)} (use an IANA name such as 'UTC' or 'Europe/Berlin')")
    return ZoneInfo(name)


def utc_iso(ts: float | None, *, ms: bool = False) -> str | None:
    """An epoch instant as UTC ISO 8601 with `Z`: second precision, or milliseconds with ms=True."""
    if ts is None:
        return None
    return _utc_iso(ts, ms)


@functools.lru_cache(maxsize=16384)     # listings show the same next and last fires again and again
def _utc_iso(ts: float, ms: bool) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds" if ms else "seconds")[:-6] + "Z"


def parse_iso(text: str) -> float:
    """An ISO 8601 timestamp as an epoch instant (naive means UTC). ValueError if unparsable."""
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("expected an ISO 8601 string")
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_optional_iso(text: Any) -> float | None:
    try:
        return parse_iso(text) if text else None
    except (ValueError, OverflowError):
        return None


CRON_HELP = ("use 6 fields: second minute hour day month weekday, e.g. '0 0 9 * * MON-FRI' "
             "(5-field expressions and @hourly, @daily, @weekly, @monthly, @yearly are accepted too)")
CRON_MACROS = {
    "@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *", "@hourly": "0 0 * * * *",
}
MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (name, low, high, names); weekday 7 is Sunday, as in Vixie cron.
CRON_FIELDS = (
    ("second", 0, 59, ()), ("minute", 0, 59, ()), ("hour", 0, 23, ()),
    ("day", 1, 31, ()), ("month", 1, 12, MONTH_NAMES), ("weekday", 0, 7, DAY_NAMES),
)
_CRON_ITEM = re.compile(r"(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?")
_LONGEST_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ORDINAL_1970 = date(1970, 1, 1).toordinal()
_LAST_ORDINAL = date(9999, 12, 31).toordinal()
# The zone's offset changes are found by probing once a day and bisecting: tzdata never puts two changes
# less than about 4 days apart, so a probe interval holds at most one.
_ZONE_BLOCK = 1 << 25           # seconds of zone timeline per cached table (about 388 days)
_ZONE_PROBE = 86400
_ZONE_EDGES = (-62135510400, 253402128000)     # 0001-01-02 and 9999-12-30 UTC: datetime's safe range
# A fall-back's second pass ends within a day of the change (the largest ever is 24 h), so changes
# further back than this no longer matter.
_LOOKBACK = 2 * 86400


@dataclass(frozen=True, slots=True)
class CronExpr:
    """A validated cron expression: as the user wrote it, and as six fields, seconds first."""

    expression: str
    fields: tuple[str, ...]
    # Vixie's MIN_STAR/HR_STAR: such a job runs in both passes of a repeated hour, never for skipped times.
    wildcard_time: bool = field(init=False)
    _seconds: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _minutes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _hours: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _days: frozenset[int] = field(init=False, repr=False, compare=False)
    _months: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _weekdays: frozenset[int] = field(init=False, repr=False, compare=False)     # date.weekday(): Monday 0
    _either: bool = field(init=False, repr=False, compare=False)
    _month_days: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    _memo: dict[ZoneInfo, tuple[float, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Expands the fields once, into the sorted values the search bisects."""
        put = functools.partial(object.__setattr__, self)
        put("wildcard_time", self.fields[1].startswith("*") or self.fields[2].startswith("*"))
        # Expansions are shared by every expression with the same field text.
        put("_seconds", _sorted_values(self.fields[0], 0))
        put("_minutes", _sorted_values(self.fields[1], 1))
        put("_hours", _sorted_values(self.fields[2], 2))
        put("_days", _field_values(self.fields[3], *CRON_FIELDS[3]))
        put("_months", _sorted_values(self.fields[4], 4))
        put("_weekdays", _python_weekdays(self.fields[5]))
        # Vixie cron: a day or weekday field starting with `*` means both must match, otherwise either.
        put("_either", not (self.fields[3].startswith("*") or self.fields[5].startswith("*")))
        put("_month_days", {})
        put("_memo", {})

    def next_after(self, after: float, tz: ZoneInfo) -> float | None:
        """The first fire instant strictly after `after` (epoch seconds), or None if it never fires again."""
        # Every `after` from the last one asked up to its answer has that answer: schedules sharing an
        # expression and a last slot cost one computation together.
        known = self._memo.get(tz)
        if known is not None and known[0] <= after < known[1]:
            return known[1]
        result = self._next(after, tz)
        if result is not None:
            self._memo[tz] = (after, result)
        return result

    def iter_after(self, after: float, tz: ZoneInfo) -> Iterator[float]:
        """Fire instants strictly after `after`, strictly increasing as UTC instants."""
        while True:
            following = self._next(after, tz)
            if following is None:
                return
            yield following
            after = following

    def describe(self) -> str:
        """The schedule in plain English, e.g. 'at 09:00 on Monday through Friday'."""
        return _describe(self.fields)

    def never_fires(self) -> bool:
        """True when no date matches the day, month and weekday fields (e.g. 30 February)."""
        if self._either:
            return False        # every month has every weekday
        return not any(d <= _LONGEST_MONTH[m] for m in self._months for d in self._days)

    # The fire rules on UTC instants: a job fires at `wall - offset` for each matching wall time of each
    # stretch of constant offset; after a fall-back, fixed-time jobs skip the repeated wall times; at a
    # spring-forward, a fixed-time job with a matching wall time in the skipped interval fires once at the
    # change itself.

    def _next(self, after: float, tz: ZoneInfo) -> float | None:
        """next_after without the memo: on the plain calendar unless an offset change is near."""
        try:
            t = int(after // 1) + 1         # fires are on whole seconds
            if not _ZONE_EDGES[0] + _LOOKBACK <= t <= _ZONE_EDGES[1]:
                return None
            offset = _offset_at(tz, t)
            wall = self._next_wall(t + offset)
            if wall is None:
                return None
            candidate = wall - offset
            if not _changes(tz, t - _LOOKBACK, candidate):
                return float(candidate)
            return self._next_near_changes(t, tz)
        except (OverflowError, ValueError):
            return None

    def _next_near_changes(self, t: int, tz: ZoneInfo) -> float | None:
        """The first fire at or after `t` when an offset change lies near `t` or before the next fire."""
        fixed = not self.wildcard_time
        offset = _offset_at(tz, t)
        recent = _changes(tz, t - _LOOKBACK, t)
        last = recent[-1] if recent else None
        upcoming = _changes_after(tz, t)
        following = next(upcoming, None)
        low = high = None       # no wall time in [low, high) matches, and high does: reused across changes
        while True:
            start = t + offset
            catch_up = None
            if last is not None:
                change, before, now = last
                if fixed and change == t and now > before:
                    catch_up = t + before       # a spring-forward: is a skipped wall time matching?
                if fixed and now < before:
                    start = max(start, change + before)     # second pass of the repeated interval
            for wall in (catch_up, start):
                if wall is None:
                    continue
                if low is None or not low <= wall <= high:
                    low, high = wall, self._next_wall(wall)
                    if high is None:
                        return None
                if wall == catch_up and high < t + now:
                    return float(t)
            candidate = high - offset
            if following is None or following[0] > candidate:
                return float(candidate)
            last = following
            t, offset = following[0], following[2]
            following = next(upcoming, None)
            if t > _ZONE_EDGES[1]:
                return None

    def _next_wall(self, wall: int) -> int | None:
        """The first matching wall time at or after `wall` (seconds since 1970-01-01 on the wall clock)."""
        day, second = divmod(wall, 86400)
        ordinal = day + _ORDINAL_1970
        found = self._next_date(ordinal)
        if found == ordinal:
            time = self._next_time(second)
            if time is not None:
                return wall - second + time
            found = self._next_date(ordinal + 1)
        if found is None:
            return None
        first_time = self._hours[0] * 3600 + self._minutes[0] * 60 + self._seconds[0]
        return (found - _ORDINAL_1970) * 86400 + first_time

    def _next_time(self, second: int) -> int | None:
        """The first matching second of the day at or after `second`, or None."""
        hours, minutes, seconds = self._hours, self._minutes, self._seconds
        h, rest = divmod(second, 3600)
        m, s = divmod(rest, 60)
        i = bisect.bisect_left(hours, h)
        if i == len(hours):
            return None
        if hours[i] == h:
            j = bisect.bisect_left(minutes, m)
            if j < len(minutes):
                if minutes[j] == m:
                    k = bisect.bisect_left(seconds, s)
                    if k < len(seconds):
                        return second - s + seconds[k]
                    j += 1
                if j < len(minutes):
                    return h * 3600 + minutes[j] * 60 + seconds[0]
            i += 1
            if i == len(hours):
                return None
        return hours[i] * 3600 + minutes[0] * 60 + seconds[0]

    def _next_date(self, ordinal: int) -> int | None:
        """The first matching date (proleptic ordinal) at or after `ordinal`; None past year 9999."""
        if ordinal > _LAST_ORDINAL:
            return None
        start = date.fromordinal(ordinal)
        year, month, day = start.year, start.month, start.day
        months = self._months
        while year <= 9999:
            days = self._days_in(year, month)
            if days and days[-1] >= day:
                return ordinal - day + days[bisect.bisect_left(days, day)]
            i = bisect.bisect_right(months, month)      # on to the next allowed month
            if i == len(months):
                year, month = year + 1, months[0]
            else:
                month = months[i]
            day = 1
            if year <= 9999:
                ordinal = date(year, month, 1).toordinal()
        return None

    def _days_in(self, year: int, month: int) -> tuple[int, ...]:
        """The matching days of a month, sorted (cached per expression)."""
        key = year * 12 + month
        days = self._month_days.get(key)
        if days is None:
            days = ()
            if month in self._months:
                first, length = calendar.monthrange(year, month)
                in_days, in_weekdays, either = self._days, self._weekdays, self._either
                if either:
                    days = tuple(d for d in range(1, length + 1)
                                 if d in in_days or (first + d - 1) % 7 in in_weekdays)
                else:
                    days = tuple(d for d in range(1, length + 1)
                                 if d in in_days and (first + d - 1) % 7 in in_weekdays)
            if len(self._month_days) > 128:     # a bound, not a size any schedule needs
                self._month_days.clear()
            self._month_days[key] = days
        return days


@functools.lru_cache(maxsize=4096)      # every zone for a few years
def _zone_block(tz: ZoneInfo, block: int) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """The zone's offset at the block's start and its changes (instant, offset before, after) in the block."""
    start = max(block * _ZONE_BLOCK, _ZONE_EDGES[0])
    end = min(block * _ZONE_BLOCK + _ZONE_BLOCK, _ZONE_EDGES[1])
    first = before = _offset(tz, start)
    changes = []
    probe = start
    while probe < end:
        following = min(probe + _ZONE_PROBE, end)
        now = _offset(tz, following)
        if now != before:
            low, high = probe, following
            while high - low > 1:
                middle = (low + high) // 2
                if _offset(tz, middle) == before:
                    low = middle
                else:
                    high = middle
            changes.append((high, before, now))
        probe, before = following, now
    return first, tuple(changes)


def _offset(tz: ZoneInfo, t: int) -> int:
    """The zone's UTC offset in seconds at instant `t`."""
    delta = datetime.fromtimestamp(t, tz).utcoffset()
    return delta.days * 86400 + delta.seconds


def _offset_at(tz: ZoneInfo, t: int) -> int:
    """The zone's UTC offset at instant `t`, from the cached change table."""
    offset, changes = _zone_block(tz, (t - 1) // _ZONE_BLOCK)
    for change, _, now in changes:
        if change <= t:
            offset = now
    return offset


def _changes(tz: ZoneInfo, low: int, high: int) -> list[tuple[int, int, int]]:
    """The zone's offset changes at instants in (low, high], in order."""
    found = []
    for block in range(low // _ZONE_BLOCK, (high - 1) // _ZONE_BLOCK + 1):
        for change in _zone_block(tz, block)[1]:
            if low < change[0] <= high:
                found.append(change)
    return found


def _changes_after(tz: ZoneInfo, t: int) -> Iterator[tuple[int, int, int]]:
    """The zone's offset changes after instant `t`, in order, up to datetime's edge."""
    for block in range(t // _ZONE_BLOCK, _ZONE_EDGES[1] // _ZONE_BLOCK + 1):
        for change in _zone_block(tz, block)[1]:
            if change[0] > t:
                yield change


def parse_cron(expression: object) -> CronExpr:
    """Validate a cron expression (6 fields seconds first, 5 fields, or a macro). Raises InvalidCron."""
    if not isinstance(expression, str):
        raise InvalidCron(f"Invalid cron expression: expected a string; {CRON_HELP}")
    return _parse_cron(expression)


@functools.lru_cache(maxsize=32768)
def _parse_cron(expression: str) -> CronExpr:
    """parse_cron for a string; expressions are immutable, so one parse serves every schedule using it."""
    text = " ".join(expression.split())
    if not text:
        raise InvalidCron(f"Invalid cron expression: empty; {CRON_HELP}")
    if text.startswith("@"):
        six = CRON_MACROS.get(text.lower())
        if six is None:
            raise InvalidCron(f"Invalid cron expression: unknown macro {_quoted(text)}; {CRON_HELP}")
        return CronExpr(expression, tuple(six.split()))
    parts = text.split(" ")
    if len(parts) == 5:
        parts = ["0"] + parts
    elif len(parts) != 6:
        raise InvalidCron(f"Invalid cron expression: {_quoted(text)} has {len(parts)} fields; {CRON_HELP}")
    fields = tuple(_validate_cron_field(part, *spec) for part, spec in zip(parts, CRON_FIELDS))
    result = CronExpr(expression, fields)
    if result.never_fires():
        raise InvalidCron(f"Invalid cron expression: {_quoted(text)} never fires (no such date); {CRON_HELP}")
    return result


def _quoted(text: str) -> str:
    """`text` quoted for a message, shortened when it is long."""
    return repr(text) if len(text) <= 100 else repr(text[:60]) + f"... ({len(text)} characters)"


@functools.lru_cache(maxsize=4096)
def _validate_cron_field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> str:
    """The field checked and normalised: upper case, `?` as `*`, a range `a-a` (or `a-a/n`) as `a`."""
    if text == "?" and name in ("day", "weekday"):
        return "*"
    items = []
    for item in text.split(","):
        match = _CRON_ITEM.fullmatch(item)
        if not match:
            raise InvalidCron(f"Invalid cron expression: {name} field {_quoted(text)} is not valid "
                              f"(use numbers, names, '*', ranges a-b, lists a,b and steps */n); {CRON_HELP}")
        star, start, end, step = match.groups()
        values = [_cron_value(v, name, low, high, names) for v in (start, end) if v is not None]
        if len(values) == 2 and values[0] > values[1]:
            raise InvalidCron(f"Invalid cron expression: {name} range {start}-{end} runs backwards; "
                              f"{CRON_HELP}")
        if step is not None and not 1 <= _small_int(step) <= high - low + 1:
            raise InvalidCron(f"Invalid cron expression: {name} step /{_digits_quoted(step)} must be from "
                              f"1 to {high - low + 1}; {CRON_HELP}")
        if star is None and not values:
            raise InvalidCron(f"Invalid cron expression: {name} field {_quoted(text)} is empty; {CRON_HELP}")
        items.append(start.upper() if len(values) == 2 and values[0] == values[1] else item.upper())
    return ",".join(items)


def _small_int(digits: str) -> int:
    """ASCII digits as an int, or -1 past 9 significant digits (int() refuses over 4300 digits)."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 9 else -1


def _digits_quoted(digits: str) -> str:
    """A digit string for a message, shortened when it is long."""
    return digits if len(digits) <= 20 else f"{digits[:10]}... ({len(digits)} digits)"


def _cron_value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    """One number or name of a field, checked against the field's range."""
    if text.isdigit():
        value = _small_int(text)
    elif text.upper() in names:
        value = names.index(text.upper()) + (1 if name == "month" else 0)
    else:
        raise InvalidCron(f"Invalid cron expression: {name} value {_quoted(text)} is not a number"
                          + (f" or a name ({', '.join(names)})" if names else "") + f"; {CRON_HELP}")
    if not low <= value <= high:
        shown = str(value) if value >= 0 else _digits_quoted(text.lstrip("0"))
        raise InvalidCron(f"Invalid cron expression: {name} value {shown} is out of range {low}-{high}; "
                          f"{CRON_HELP}")
    return value


@functools.lru_cache(maxsize=4096)
def _sorted_values(text: str, index: int) -> tuple[int, ...]:
    return tuple(sorted(_field_values(text, *CRON_FIELDS[index])))


@functools.lru_cache(maxsize=1024)
def _python_weekdays(text: str) -> frozenset[int]:
    """The weekday field as date.weekday() numbers (Monday 0)."""
    return frozenset((v + 6) % 7 for v in _field_values(text, *CRON_FIELDS[5]))


@functools.lru_cache(maxsize=4096)
def _field_values(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    """The values a validated field matches; `a/n` runs to the field's maximum (weekday: 7), as in Vixie."""
    values: set[int] = set()
    for item in text.split(","):
        star, start, end, step = _CRON_ITEM.fullmatch(item).groups()
        first = low if star else _cron_value(start, name, low, high, names)
        last = high if star or (end is None and step is not None) else (
            _cron_value(end, name, low, high, names) if end else first)
        values.update(range(first, last + 1, _small_int(step) if step else 1))
    return frozenset(values)


###############################################################################
# describe(): plain English for a CLI and a dashboard
###############################################################################

_MONTHS_LONG = ("", "January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December")
_DAYS_LONG = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _ordinal(n: int) -> str:
    """2 as '2nd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _join(words: list[str]) -> str:
    """Words as 'a, b and c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _is_all(text: str, index: int) -> bool:
    """True when a field matches every value (weekday 7 counted as 0)."""
    name, low, high, names = CRON_FIELDS[index]
    values = _field_values(text, name, low, high, names)
    if index == 5:
        return {v % 7 for v in values} == set(range(7))
    return len(values) == high - low + 1


def _items(text: str, index: int, unit: str, units: str, name: Callable[[int], str]) -> tuple[str, bool]:
    """A field in English ('every 5 seconds', 'Monday through Friday') and whether it is plain values."""
    field_name, low, high, names = CRON_FIELDS[index]
    words, plain = [], True
    for item in text.split(","):
        star, start, end, step = _CRON_ITEM.fullmatch(item).groups()
        n = _small_int(step) if step else 1
        a = low if star else _cron_value(start, field_name, low, high, names)
        b = high if star or (end is None and step) else (_cron_value(end, field_name, low, high, names)
                                                         if end else a)
        if step and n > 1:
            plain = False
            every = f"every {n} {units}" if index <= 1 else f"every {_ordinal(n)} {unit}"
            words.append(every if star else f"{every} from {name(a)} through {name(b)}")
        elif star or (a, b) == (low, high):
            plain = False
            words.append(f"every {unit}")
        elif a == b:
            words.append(name(a))
        else:
            words.append(f"{name(a)} through {name(b)}")
    return _join(words), plain


def _clock(h: int, m: int, s: int) -> str:
    """A time of day as '09:30', with ':15' when it has seconds."""
    return f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


@functools.lru_cache(maxsize=1024)
def _describe(fields: tuple[str, ...]) -> str:
    """describe() for six normalised fields."""
    second, minute, hour, day, month, weekday = fields
    parts = [_describe_time(second, minute, hour)]
    parts.append(_describe_date(day, month, weekday))
    return " ".join(p for p in parts if p)


def _plain_values(text: str) -> list[int] | None:
    """The values of a field that is a list of plain numbers, else None."""
    items = text.split(",")
    return [_small_int(i) for i in items] if all(i.isdigit() for i in items) else None


def _describe_time(second: str, minute: str, hour: str) -> str:
    """The time-of-day part of describe()."""
    seconds, minutes, hours = _plain_values(second), _plain_values(minute), _plain_values(hour)
    if minutes and hours and len(minutes) * len(hours) <= 6:
        if seconds and len(seconds) == 1:
            return "at " + _join(sorted(_clock(h, m, seconds[0]) for h in hours for m in minutes))
        if seconds != [0]:
            times = _join(sorted(_clock(h, m, 0) for h in hours for m in minutes))
            return f"{_describe_time(second, '*', '*')} during {times}"
    if seconds == [0] and minutes == [0] and _is_all(hour, 2):
        return "every hour"
    if _is_all(second, 0):
        sec = "every second"
    elif seconds == [0]:
        sec = ""
    else:
        text, plain = _items(second, 0, "second", "seconds", str)
        sec = f"at second{'s' if not seconds or len(seconds) > 1 else ''} {text}" if plain else text
    if _is_all(minute, 1):
        mins = "" if sec else "every minute"
        if sec.startswith("at second") and _is_all(hour, 2):
            mins = "past every minute"
    else:
        text, plain = _items(minute, 1, "minute", "minutes", str)
        mins = f"at minute{'s' if not minutes or len(minutes) > 1 else ''} {text}" if plain else text
        if sec:
            mins = ("of " if plain else "during ") + mins
    if _is_all(hour, 2):
        hrs = "past every hour" if mins.startswith(("at minute", "of minute")) else ""
    elif hours and len(hours) == 1 or (hour.count("-") == 1 and "/" not in hour and "," not in hour):
        first, last = (int(v) for v in hour.split("-")) if "-" in hour else (hours[0], hours[0])
        hrs = f"between {first:02d}:00 and {last:02d}:59"
    else:
        text, plain = _items(hour, 2, "hour", "hours", str)
        if plain:
            hrs = f"during hours {text}"
        else:
            hrs = ("past " if mins.startswith(("at minute", "of minute")) else "during ") + text
    return " ".join(p for p in (sec, mins, hrs) if p)


def _describe_date(day: str, month: str, weekday: str) -> str:
    """The date part of describe(): day and weekday by Vixie's rule, then the months."""
    day_all, weekday_all = _is_all(day, 3), _is_all(weekday, 5)
    days = ""
    if not day_all:
        text, plain = _items(day, 3, "day", "days", str)
        if plain:
            many = len(_plain_values(day) or ()) != 1 or "-" in day
            days = f"on day{'s' if many else ''} {text} of the month"
        else:
            days = f"on {text} of the month"
    weekdays = ""
    if not weekday_all:
        text, _ = _items(weekday, 5, "day of the week", "days", lambda v: _DAYS_LONG[v])
        if "/" in weekday:      # steps read better as the days they give
            values = _field_values(weekday, *CRON_FIELDS[5])
            text = _join([_DAYS_LONG[v] for v in range(1, 8) if v % 7 in {w % 7 for w in values}])
        weekdays = f"on {text}"
    either = not (day.startswith("*") or weekday.startswith("*"))
    if days and weekdays:
        dates = f"{days} and {weekdays}" if either else f"{days} if it is {weekdays[3:]}"
    elif either and (day_all or weekday_all) and not (day_all and weekday_all):
        dates = ""          # one field matches every day, and either may match: every day
    else:
        dates = days or weekdays
    if not _is_all(month, 4):
        text, _ = _items(month, 4, "month", "months", lambda v: _MONTHS_LONG[v])
        dates = (dates + " " if dates else "") + f"in {text}"
    return dates


###############################################################################
# Storage ######################################################################
###############################################################################

def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file, never a mix.

    durable=False skips the fsyncs (for files whose loss on power failure costs little).
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{name}-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(directory)


class DataDir:
    """The data dir: made private, owned by one server process at a time (a lock held for its life)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = filelock.FileLock(os.path.join(path, "schedserver.lock"), thread_local=False, mode=0o600)
        self._held = False

    def prepare(self) -> None:
        """Create it (0700) if missing; refuse one that others may write or that belongs to someone else."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            st = os.stat(self.path)
        except OSError as e:
            raise ConfigError(f"data dir {self.path}: cannot create ({e.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"data dir {self.path}: not a directory")
        # It holds tokens and stored request headers: a shared directory is not a place for them.
        if st.st_mode & 0o002:
            raise ConfigError(f"data dir {self.path}: writable by every user (mode {st.st_mode & 0o7777:o}); "
                              "use a directory of its own")
        if st.st_uid != os.geteuid():
            raise ConfigError(f"data dir {self.path}: owned by uid {st.st_uid}, not by this user "
                              f"({os.geteuid()}); use a directory of its own")
        try:
            if st.st_mode & 0o077:
                os.chmod(self.path, 0o700)
        except OSError as e:
            raise ConfigError(f"data dir {self.path}: cannot make it private ({e.strerror})") from None
        probe = os.path.join(self.path, f"{TEMP_PREFIX}probe-{os.getpid()}")
        try:
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"data dir {self.path}: not writable ({e.strerror})") from None

    def acquire(self) -> None:
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise StartupError(f"data dir {self.path} is in use by another schedserver process") from None
        self._held = True
        self._remove_temp_files()

    def release(self) -> None:
        if self._held:
            self._lock.release()
            self._held = False

    def _remove_temp_files(self) -> None:
        """Temp files a killed process left (they may hold copies of secrets); only ever our own names."""
        for directory in (self.path, os.path.join(self.path, "running")):
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    try:
                        os.unlink(os.path.join(directory, name))
                        log.info("removed %s, left by an interrupted write", name)
                    except OSError as e:
                        log.warning("cannot remove %s: %s", name, e)


class JsonFile:
    """A JSON document replaced atomically; reads say clearly when it is corrupt."""

    def __init__(self, path: str):
        self.path = path

    def load(self, default: Any) -> Any:
        """The document, or `default` when there is no file. A corrupt file raises StartupError."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return default
        except OSError as e:
            raise StartupError(f"{self.path}: cannot read ({e.strerror})") from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise StartupError(f"{self.path}: corrupt JSON ({e}); the file was left as it is for inspection, "
                               "restore it from a backup or move it away") from None

    def save(self, document: Any, durable: bool = True) -> None:
        atomic_write(self.path, json.dumps(document, separators=(",", ":"), sort_keys=True).encode() + b"\n",
                     durable=durable)


class JournalStore:
    """Definitions by id: a JSON snapshot plus an append-only journal of the changes made since it.

    A change is one fsync'd journal line, so its cost does not grow with the number of definitions. Once the
    journal reaches max(COMPACT_MIN_LINES, definitions) lines, a background thread writes a new snapshot
    (atomically) and drops the journal lines it covers. Lines carry increasing sequence numbers and the
    snapshot names the last one it includes, so a crash at any point replays nothing twice and loses nothing
    acknowledged. A line torn by a crash was never acknowledged: loading cuts it off. A failed append is cut
    back; if even that fails, no change is accepted until the journal is back at its last good size.
    """

    COMPACT_MIN_LINES = 1000

    def __init__(self, path: str):
        self.path = path
        self.journal_path = (path[:-5] if path.endswith(".json") else path) + ".journal"
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()      # one compaction at a time
        self._items: dict[str, dict] = {}
        self._seq = 0
        self._journal_lines = 0
        self._journal_size: int | None = None      # bytes of good lines; None until known
        self._compacting: threading.Thread | None = None
        self._compact_at = self.COMPACT_MIN_LINES

    # -- reading ---------------------------------------------------------------------------------------------
    def load(self) -> list[dict]:
        """The stored definitions in creation order. A corrupt snapshot or journal raises StartupError."""
        snapshot = JsonFile(self.path).load({"version": 1, "schedules": []})
        try:
            seq = int(snapshot.get("seq", 0))
            items = {d["id"]: d for d in snapshot["schedules"]}
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise StartupError(f"{self.path}: not a valid schedules file ({e!r}); left as it is for "
                               "inspection") from None
        entries, size = self._read_journal()
        lines = 0
        for number, entry in enumerate(entries, 1):
            try:
                if entry["seq"] <= seq:
                    if lines:       # after a line newer than the snapshot: out of order, not "already in it"
                        raise StartupError(f"{self.journal_path}: line {number} is numbered {entry['seq']}, not "
                                           f"above the line before it; left as it is for inspection")
                    continue
                if "put" in entry:
                    items[entry["put"]["id"]] = entry["put"]
                else:
                    items.pop(entry["delete"], None)
                seq = entry["seq"]
                lines += 1
            except (KeyError, TypeError) as e:
                raise StartupError(f"{self.journal_path}: line {number} is not a change ({e!r}); left as it is "
                                   "for inspection") from None
        with self._lock:
            self._items, self._seq, self._journal_lines, self._journal_size = items, seq, lines, size
            self._compact_at = max(self.COMPACT_MIN_LINES, len(items))
        return list(items.values())

    def _read_journal(self) -> tuple[list[dict], int]:
        """The journal's complete lines, parsed, and their size in bytes. Every complete line is checked
        before a torn last line (never acknowledged) is cut off, so a corrupt journal is left untouched."""
        try:
            with open(self.journal_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return [], 0
        except OSError as e:
            raise StartupError(f"{self.journal_path}: cannot read ({e.strerror})") from None
        complete = raw.rfind(b"\n") + 1
        entries = []
        for number, line in enumerate(raw[:complete].splitlines(), 1):
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                entry = None
            if not isinstance(entry, dict):
                raise StartupError(f"{self.journal_path}: line {number} is corrupt; left as it is for inspection, "
                                   "restore it from a backup or move it away")
            entries.append(entry)
        if complete < len(raw):
            log.warning("%s: dropping a torn last line (%d bytes)", self.journal_path, len(raw) - complete)
            try:
                os.truncate(self.journal_path, complete)
            except OSError as e:
                raise StartupError(f"{self.journal_path}: cannot cut off a torn last line ({e.strerror})") from None
        return entries, complete

    def items(self) -> list[dict]:
        with self._lock:
            return list(self._items.values())

    # -- changes ---------------------------------------------------------------------------------------------
    def put(self, item: dict) -> None:
        """Store `item` (a new definition, or a new version of one, by its "id"); raises OSError when it could
        not be made durable, and then nothing changed."""
        self._change({"put": item}, item["id"], item)

    def delete(self, item_id: str) -> None:
        self._change({"delete": item_id}, item_id, None)

    def _change(self, change: dict, item_id: str, item: dict | None) -> None:
        with self._lock:
            seq = self._seq + 1
            line = json.dumps({"seq": seq, **change}, separators=(",", ":"), sort_keys=True).encode() + b"\n"
            self._append(line)
            self._seq = seq
            if item is None:
                self._items.pop(item_id, None)
            else:
                self._items[item_id] = item
            self._journal_lines += 1
            if self._journal_lines < self._compact_at or self._compacting is not None:
                return
            self._compacting = threading.Thread(target=self._compact_in_background, name="schedserver-compact",
                                                daemon=True)
            compacting = self._compacting
        try:
            compacting.start()
        except RuntimeError as e:       # no thread to be had: the change itself is durable; try again later
            log.error("%s: cannot start a compaction: %s", self.path, e)
            with self._lock:
                self._compacting = None
                self._compact_at = self._journal_lines + self.COMPACT_MIN_LINES

    def _append(self, line: bytes) -> None:
        """Append one line and fsync it; on any failure the journal is cut back to its last good size, and
        while that cannot be done, appends are refused (a fragment must never be glued onto, nor a line
        answered with an error stay behind to take effect at the next start)."""
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            good = size if self._journal_size is None else self._journal_size
            if size != good:
                os.ftruncate(fd, good)          # the remains of an append that failed and was not cut back
                size = good
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                if size == 0:
                    fsync_dir(os.path.dirname(self.journal_path))
            except OSError:
                self._journal_size = size       # what must be there before the next append goes on
                try:
                    os.ftruncate(fd, size)
                except OSError as e:
                    log.error("%s: could not cut back a failed append (the next change will try again): %s",
                              self.journal_path, e)
                raise
            self._journal_size = size + len(line)
        finally:
            os.close(fd)

    # -- compaction ------------------------------------------------------------------------------------------
    def _compact_in_background(self) -> None:
        try:
            self.compact()
        finally:
            with self._lock:
                self._compacting = None

    def wait_compacted(self, timeout: float = 30.0) -> None:
        """Wait for a compaction in progress (a clean stop lets it finish)."""
        with self._lock:
            compacting = self._compacting
        if compacting is not None and compacting is not threading.current_thread():
            compacting.join(timeout)

    def compact(self) -> None:
        """Write a snapshot of every definition, then drop the journal lines it holds. Safe to run while
        changes go on: they land in the journal with later sequence numbers and are kept."""
        with self._compact_lock:
            try:
                with self._lock:
                    items, seq = list(self._items.values()), self._seq
                data = json.dumps({"version": 1, "seq": seq, "schedules": items}, indent=1,
                                  sort_keys=True).encode() + b"\n"
                atomic_write(self.path, data)      # changes go on meanwhile, into the journal
                with self._lock:
                    entries, _ = self._read_journal()
                    kept = b"".join(json.dumps(entry, separators=(",", ":"), sort_keys=True).encode() + b"\n"
                                    for entry in entries if entry.get("seq", 0) > seq)
                    atomic_write(self.journal_path, kept)
                    self._journal_lines = kept.count(b"\n")
                    self._journal_size = len(kept)
                    self._compact_at = max(self.COMPACT_MIN_LINES, len(self._items))
            except (OSError, StartupError) as e:
                log.error("%s: compaction failed, the journal keeps growing until it works: %s", self.path, e)
                with self._lock:
                    self._compact_at = self._journal_lines + self.COMPACT_MIN_LINES


class NdjsonLog:
    """An append-only NDJSON log, rotated by size (`name.1` is the newest backup), read newest first.

    A crash mid-append leaves a torn last line: readers skip it and the next append starts on a new line.
    A position names a place in the log across rotations: the file's inode, a byte offset, and the file's first
    bytes (inode numbers are given again to new files once a file is gone, so the inode alone is not enough).
    Readers open every file they will read under the append lock, so a rotation during a read changes nothing.
    """

    HEAD_BYTES = 64

    def __init__(self, path: str, max_bytes: int, backups: int):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def append(self, record: dict, then: Callable[[], None] | None = None) -> None:
        """Append one record as one line; `then()` is called under the log's lock once it is written, so a
        reader of position() sees the line and what `then` did together. Raises OSError."""
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace")
        line += b"\n"
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
                if size and self.max_bytes and size + torn + len(line) > self.max_bytes:
                    os.close(fd)
                    fd = -1
                    self._rotate()
                    fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                    torn = False
                os.write(fd, b"\n" + line if torn else line)      # never glue onto a line torn by a crash
            finally:
                if fd >= 0:
                    os.close(fd)
            if then is not None:
                then()

    def _rotate(self) -> None:
        if self.backups <= 0:
            os.truncate(self.path, 0)
            return
        for n in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{n}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        fsync_dir(os.path.dirname(self.path))

    def position(self) -> dict:
        """Where the log ends now; call under `locked()` to pair it with what appends update."""
        try:
            with open(self.path, "rb") as f:
                return self._position(f, os.fstat(f.fileno()).st_size)
        except FileNotFoundError:
            return {"inode": None, "offset": 0, "head": ""}

    def _position(self, f: Any, offset: int) -> dict:
        head = os.pread(f.fileno(), self.HEAD_BYTES, 0)      # what the file begins with never changes
        return {"inode": os.fstat(f.fileno()).st_ino, "offset": offset, "head": head.hex()}

    def _is_at(self, f: Any, position: dict) -> bool:
        """True when open file `f` is the file `position` was taken in (an empty file cannot be told apart)."""
        offset, head = position.get("offset"), position.get("head")
        if not isinstance(offset, int) or offset < 0 or not isinstance(head, str) or not head:
            return False
        st = os.fstat(f.fileno())
        return (st.st_ino == position.get("inode") and st.st_size >= offset
                and os.pread(f.fileno(), len(head) // 2, 0).hex() == head)

    def locked(self) -> threading.Lock:
        """The append lock: held, nothing is appended (for a consistent snapshot of what appends update)."""
        return self._lock

    def files(self, include_rotated: bool = True) -> list[str]:
        """The log's files, newest first."""
        paths = [self.path]
        if include_rotated:
            paths += [f"{self.path}.{n}" for n in range(1, self.backups + 1)]
        return paths

    def _open(self, include_rotated: bool = True) -> list[tuple[str, Any]]:
        """(path, open file) of the files, newest first, opened together under the append lock."""
        opened = []
        with self._lock:
            for path in self.files(include_rotated):
                try:
                    opened.append((path, open(path, "rb")))
                except FileNotFoundError:
                    continue
                except OSError as e:
                    for _, f in opened:
                        f.close()
                    raise StartupError(f"{path}: cannot read ({e.strerror})") from None
        return opened

    def read_after(self, position: dict | None) -> Iterator[dict]:
        """Records appended after `position`, oldest first (every record kept when its file is gone: reading
        more than needed is safe for what replays them, reading less is not)."""
        opened = list(reversed(self._open()))
        try:
            start, offset = 0, 0
            if isinstance(position, dict):
                for i, (_, f) in enumerate(opened):
                    if self._is_at(f, position):
                        start, offset = i, position["offset"]
                        break
            for i, (path, f) in enumerate(opened[start:]):
                try:
                    f.seek(offset if i == 0 else 0)
                    for line in f:
                        if not line.endswith(b"\n"):
                            break           # torn by a crash
                        record = self._parse(line, path)
                        if record is not None:
                            yield record
                except OSError as e:
                    raise StartupError(f"{path}: cannot read ({e.strerror})") from None
        finally:
            for _, f in opened:
                f.close()

    def read_newest(self, include_rotated: bool = True, contains: bytes | None = None,
                    before: dict | None = None) -> Iterator[tuple[dict, dict]]:
        """(record, position of its line) newest first, reading files backwards in blocks. Lines without
        `contains` are skipped unparsed. `before` (a position from an earlier answer) starts just before it;
        nothing when its file is gone."""
        opened = self._open(include_rotated)
        try:
            end: int | None = None
            if before is not None:
                for i, (_, f) in enumerate(opened):
                    if self._is_at(f, before):
                        opened, end = opened[i:], before["offset"]
                        break
                else:
                    return
            for i, (path, f) in enumerate(opened):
                where = self._position(f, 0)
                for offset, line in _lines_backwards(f, end if i == 0 else None, contains):
                    record = self._parse(line, path)
                    if record is not None:
                        yield record, {**where, "offset": offset}
        finally:
            for _, f in opened:
                f.close()

    def _parse(self, line: bytes, path: str) -> dict | None:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            if line.strip() and path not in self._warned:
                self._warned.add(path)
                log.warning("%s: skipping a malformed line (reported once per file)", path)
            return None
        return record


def _lines_backwards(f: Any, end: int | None = None, contains: bytes | None = None,
                     block: int = 256 * 1024) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of an open file's complete non-blank lines before byte `end`, last first; only lines holding
    `contains` when given (searched in whole blocks, which is what makes a scan for a rare name fast). A final
    line without a newline (torn by a crash) is skipped."""
    size = os.fstat(f.fileno()).st_size
    pos = size if end is None else min(end, size)
    buf = b""               # bytes from `pos` on, ending with a newline
    torn = True             # still looking for the newline that ends the last complete line
    while pos > 0:
        start = max(0, pos - block)
        buf = os.pread(f.fileno(), pos - start, start) + buf
        pos = start
        if torn:
            cut = buf.rfind(b"\n")
            if cut < 0:
                buf = b""
                continue
            buf, torn = buf[:cut + 1], False
        base = start
        whole = buf
        if start > 0:       # the first line may have begun in an earlier block: keep it for later
            nl = buf.find(b"\n")
            if nl < 0:
                continue
            whole, buf, base = buf[nl + 1:], buf[:nl + 1], start + nl + 1
        yield from _block_lines(whole, base, contains)


def _block_lines(chunk: bytes, base: int, contains: bytes | None) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the newline-ended lines of `chunk`, last first."""
    stop = len(chunk)
    if contains is None:
        while stop > 0:
            begin = chunk.rfind(b"\n", 0, stop - 1) + 1
            line = chunk[begin:stop - 1]
            if line.strip():
                yield base + begin, line
            stop = begin
        return
    while (hit := chunk.rfind(contains, 0, stop)) >= 0:
        begin = chunk.rfind(b"\n", 0, hit) + 1
        yield base + begin, chunk[begin:chunk.find(b"\n", hit)]
        stop = begin


class RunMarkers:
    """`running/<run id>.json` while a run is in flight: what a crash leaves is exactly the runs that had begun,
    found and recorded as interrupted by the next start."""

    def __init__(self, directory: str):
        self.directory = directory

    def prepare(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def write(self, run_id: str, marker: dict, new: bool = True) -> None:
        """Write a run's marker (`new`: it has none yet), or replace it atomically; raises OSError. Not fsync'd:
        a SIGKILL keeps the page cache."""
        path = os.path.join(self.directory, run_id + ".json")
        data = json.dumps(marker, separators=(",", ":")).encode()
        if not new:
            atomic_write(path, data, durable=False)
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)      # one small write: a file with no whole marker is ignored at the next start
        finally:
            os.close(fd)

    def remove(self, run_id: str) -> None:
        try:
            os.unlink(os.path.join(self.directory, run_id + ".json"))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("cannot remove the marker of run %s: %s", run_id, e)

    def leftovers(self) -> list[dict]:
        """Markers a previous process left (it died with those runs in flight), oldest first."""
        found = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json") or name.startswith(TEMP_PREFIX):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as f:
                    marker = json.loads(f.read())
                if isinstance(marker, dict) and marker.get("run_id") == name[:-5]:
                    found.append(marker)
                    continue
            except (OSError, ValueError) as e:
                log.warning("%s: unreadable run marker (%s); removed", path, e)
            self.remove(name[:-5])
        return sorted(found, key=lambda m: m.get("started") or 0)


###############################################################################
# Storage: PostgreSQL, for several replicas ####################################
###############################################################################

PG_CHANNEL = "schedserver"
PG_LOCK = 0x5C4ED5E4           # the advisory lock that serialises schema migrations between replicas
# The schema, one step per version. A server applies the steps its database lacks, in one transaction each.
PG_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE definitions (kind text NOT NULL, id text NOT NULL, doc jsonb NOT NULL, version bigint NOT NULL,
                              PRIMARY KEY (kind, id));
    CREATE SEQUENCE definition_versions;
    CREATE TABLE documents (name text PRIMARY KEY, doc jsonb NOT NULL);
    CREATE TABLE runs (seq bigserial PRIMARY KEY, kind text NOT NULL, ref text NOT NULL, run_id text NOT NULL UNIQUE,
                       line text NOT NULL, logged_at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX runs_by_ref ON runs (kind, ref, seq);
    CREATE INDEX runs_by_age ON runs (logged_at);
    CREATE TABLE claims (kind text NOT NULL, ref text NOT NULL, slot_ms bigint NOT NULL, trigger text NOT NULL,
                         attempt int NOT NULL, run_id text NOT NULL, replica text NOT NULL, state text NOT NULL,
                         marker jsonb, claimed_at timestamptz NOT NULL DEFAULT now(),
                         PRIMARY KEY (kind, ref, slot_ms, trigger, attempt));
    CREATE INDEX claims_by_run ON claims (run_id);
    CREATE INDEX claims_running ON claims (kind, ref) WHERE state = 'running';
    CREATE INDEX claims_by_age ON claims (claimed_at);
    CREATE TABLE replicas (id text PRIMARY KEY, host text NOT NULL, pid int NOT NULL,
                           started timestamptz NOT NULL DEFAULT now(), seen timestamptz NOT NULL DEFAULT now());
    """,
)
PG_BATCH = 500                  # rows read per query when walking the runs table
CLAIMS_KEPT_SECONDS = 86400     # slot claims older than this are pruned (no replica may still fire those slots)


def shown_storage_url(url: str) -> str:
    """A storage URL as logs may show it: without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class PgDatabase:
    """The PostgreSQL database named by storage.url: a few connections kept open (autocommit), each used by one
    thread at a time. A failed statement raises StorageError and drops its connection; the next opens anew."""

    def __init__(self, url: str, size: int = 8, connect_timeout: float = 5.0, statement_timeout_ms: int = 10000,
                 idle_in_transaction_ms: int = 3000):
        try:
            import psycopg
        except ImportError:
            raise ConfigError("storage.url needs psycopg: pip install 'schedserver[postgres]'") from None
        self.psycopg = psycopg
        self.url = url
        self.size = size
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self.idle_in_transaction_ms = idle_in_transaction_ms
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    def connect(self) -> Any:
        """A new connection of its own (for LISTEN); raises StorageError."""
        # A replica stopped (SIGSTOP, a paused VM) inside a transaction must not hold the others' claims up:
        # PostgreSQL ends its session instead.
        options = (f"-c statement_timeout={self.statement_timeout_ms} "
                   f"-c idle_in_transaction_session_timeout={self.idle_in_transaction_ms}")
        try:
            return self.psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                                        options=options, application_name="schedserver")
        except self.psycopg.Error as e:
            raise StorageError(f"cannot reach PostgreSQL at {shown_storage_url(self.url)}: {_pg_error(e)}") from None

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self.connect()
        try:
            yield conn
        except self.psycopg.Error as e:
            conn.close()
            raise StorageError(f"PostgreSQL: {_pg_error(e)}") from None
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if not self._closed and not conn.closed and len(self._idle) < self.size:
                self._idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()

    def execute(self, sql: str, params: Any = ()) -> list[tuple]:
        with self.connection() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.connection() as conn, conn.transaction():
            yield conn

    def migrate(self) -> int:
        """Bring the schema up to date (one replica at a time); the version it is at."""
        with self.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (PG_LOCK,))
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schedserver_schema (version int NOT NULL)")
                row = conn.execute("SELECT max(version) FROM schedserver_schema").fetchone()
                version = row[0] or 0
                if version > len(PG_MIGRATIONS):
                    raise StartupError(f"the database's schema is version {version}, newer than this schedserver "
                                       f"knows ({len(PG_MIGRATIONS)}): upgrade schedserver")
                for number in range(version + 1, len(PG_MIGRATIONS) + 1):
                    with conn.transaction():
                        conn.execute(PG_MIGRATIONS[number - 1])
                        conn.execute("INSERT INTO schedserver_schema VALUES (%s)", (number,))
                    log.info("PostgreSQL schema migrated to version %d", number)
                return len(PG_MIGRATIONS)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (PG_LOCK,))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _pg_error(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class PgDefinitions:
    """Definitions of one kind in PostgreSQL, with the JournalStore's interface. A change is one transaction
    that also tells the other replicas (NOTIFY); `versions` lets a periodic resync find what a notice missed."""

    def __init__(self, db: PgDatabase, kind: str, origin: str):
        self.db = db
        self.kind = kind
        self.origin = origin            # this replica's id: its own notices are not applied twice
        self.path = f"PostgreSQL (table definitions, kind {kind})"
        self._lock = threading.Lock()
        self._items: dict[str, dict] = {}
        self.versions: dict[str, int] = {}

    def load(self) -> list[dict]:
        rows = self.db.execute("SELECT id, doc, version FROM definitions WHERE kind = %s ORDER BY version",
                               (self.kind,))
        with self._lock:
            self._items = {row[0]: row[1] for row in rows}
            self.versions = {row[0]: row[2] for row in rows}
            return list(self._items.values())

    def items(self) -> list[dict]:
        with self._lock:
            return list(self._items.values())

    def put(self, item: dict) -> None:
        self._change(item["id"], item)

    def delete(self, item_id: str) -> None:
        self._change(item_id, None)

    def _change(self, item_id: str, item: dict | None) -> None:
        notice = json.dumps({"kind": self.kind, "id": item_id, "origin": self.origin})
        # One statement each (the notice goes out when it commits): no transaction is left open between two.
        if item is None:
            self.db.execute("WITH gone AS (DELETE FROM definitions WHERE kind = %s AND id = %s) "
                            "SELECT pg_notify(%s, %s)", (self.kind, item_id, PG_CHANNEL, notice))
            version = None
        else:
            version = self.db.execute(
                "WITH stored AS (INSERT INTO definitions (kind, id, doc, version) "
                "VALUES (%s, %s, %s, nextval('definition_versions')) ON CONFLICT (kind, id) "
                "DO UPDATE SET doc = EXCLUDED.doc, version = EXCLUDED.version RETURNING version) "
                "SELECT version, pg_notify(%s, %s) FROM stored",
                (self.kind, item_id, self.db.psycopg.types.json.Jsonb(item), PG_CHANNEL, notice))[0][0]
        self.taken(item_id, item, version)

    def fetch(self, item_id: str) -> tuple[dict | None, int | None]:
        """The stored definition and its version (None, None when there is none), as another replica left it."""
        rows = self.db.execute("SELECT doc, version FROM definitions WHERE kind = %s AND id = %s",
                               (self.kind, item_id))
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    def stored_versions(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT id, version FROM definitions WHERE kind = %s", (self.kind,)))

    def taken(self, item_id: str, item: dict | None, version: int | None) -> None:
        """Hold what is stored now (by this replica, or another: its notice or a resync), without storing it."""
        with self._lock:
            if item is None:
                self._items.pop(item_id, None)
                self.versions.pop(item_id, None)
            else:
                self._items[item_id] = item
                self.versions[item_id] = version

    def wait_compacted(self, timeout: float = 30.0) -> None:
        """Nothing to compact: PostgreSQL keeps the table."""

    def compact(self) -> None:
        """Nothing to compact: PostgreSQL keeps the table."""


class PgDocument:
    """One JSON document in PostgreSQL, with JsonFile's interface (the scripts' registry)."""

    def __init__(self, db: PgDatabase, name: str):
        self.db = db
        self.name = name
        self.path = f"PostgreSQL (table documents, {name})"

    def load(self, default: Any) -> Any:
        rows = self.db.execute("SELECT doc FROM documents WHERE name = %s", (self.name,))
        return rows[0][0] if rows else default

    def save(self, document: Any, durable: bool = True) -> None:
        self.db.execute("INSERT INTO documents (name, doc) VALUES (%s, %s) "
                        "ON CONFLICT (name) DO UPDATE SET doc = EXCLUDED.doc",
                        (self.name, self.db.psycopg.types.json.Jsonb(document)))


class PgRunLog:
    """One kind's run records in PostgreSQL, with NdjsonLog's interface. A position is a row's `seq`.

    A record is stored once per run id, whoever writes it first: a run a lapsed replica left is recorded
    `interrupted` by a survivor, and a late record of the same run from that replica changes nothing.
    `poll()` hands over the records every replica wrote, in order; rows are numbered before they are
    committed, so a gap is waited for (GAP_WAIT seconds) before it is passed as a number never used.
    """

    GAP_WAIT = 10.0

    def __init__(self, db: PgDatabase, kind: str, fields: tuple[str, str],
                 monotonic: Callable[[], float] = time.monotonic):
        self.db = db
        self.kind = kind
        self.ref_field, self.id_field = fields        # the record's schedule and run id, in its surface's names
        self.monotonic = monotonic
        self.path = f"PostgreSQL (table runs, kind {kind})"
        self._lock = threading.Lock()
        self._seen = 0                          # every row up to this one was read by poll()
        self._ahead: set[int] = set()           # rows above `_seen` read already (past a gap)
        self._gap_since: float | None = None

    def append(self, record: dict, then: Callable[[], None] | None = None) -> None:
        """Store one record (unless its run id is stored already) and settle its slot claim; raises
        StorageError (an OSError)."""
        ref_field, id_field = self.ref_field, self.id_field
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        # No lock held: the saved run state pairs with what poll() took in, and poll() brings this record too.
        stored = self.db.execute(
            "WITH stored AS (INSERT INTO runs (kind, ref, run_id, line) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (run_id) DO NOTHING RETURNING seq), "
            "settled AS (UPDATE claims SET state = 'done' WHERE run_id = %s AND state = 'running') "
            "SELECT seq FROM stored", (self.kind, record[ref_field], record[id_field], line, record[id_field]))
        if stored and then is not None:
            then()

    def position(self) -> dict:
        return {"seq": self._seen, "head": "postgresql"}

    def locked(self) -> threading.Lock:
        return self._lock

    def files(self, include_rotated: bool = True) -> list[str]:
        return []

    def read_after(self, position: dict | None) -> Iterator[dict]:
        """Records after `position`, oldest first; and poll() goes on from the end."""
        seq = position.get("seq", 0) if isinstance(position, dict) and isinstance(position.get("seq"), int) else 0
        while True:
            rows = self.db.execute("SELECT seq, line FROM runs WHERE kind = %s AND seq > %s ORDER BY seq LIMIT %s",
                                   (self.kind, seq, PG_BATCH))
            for seq, line in rows:
                record = self._parse(line)
                if record is not None:
                    yield record
            if len(rows) < PG_BATCH:
                break
        with self._lock:
            self._seen = max(self._seen, seq)

    def poll(self, take: Callable[[dict], None]) -> int:
        """Hand the records stored since the last poll (by any replica) to `take`, oldest first, under the lock
        position() is read under; how many."""
        with self._lock:
            rows = self.db.execute("SELECT seq, line FROM runs WHERE kind = %s AND seq > %s ORDER BY seq LIMIT %s",
                                   (self.kind, self._seen, PG_BATCH * 4))
            taken = 0
            for seq, line in rows:
                if seq in self._ahead:
                    continue
                record = self._parse(line)
                if record is not None:
                    take(record)
                    taken += 1
                self._ahead.add(seq)
            # Move past every row read in a row; a missing number is waited for, then passed.
            while self._seen + 1 in self._ahead:
                self._seen += 1
                self._ahead.discard(self._seen)
            if self._ahead:
                now = self.monotonic()
                self._gap_since = self._gap_since if self._gap_since is not None else now
                if now - self._gap_since >= self.GAP_WAIT:
                    self._seen = min(self._ahead) - 1
                    while self._seen + 1 in self._ahead:
                        self._seen += 1
                        self._ahead.discard(self._seen)
                    self._gap_since = now if self._ahead else None
            else:
                self._gap_since = None
            return taken

    def read_newest(self, include_rotated: bool = True, contains: bytes | None = None,
                    before: dict | None = None) -> Iterator[tuple[dict, dict]]:
        """(record, position) newest first. `contains` is what the services look for: a schedule id, a run id,
        or a script path as JSON; records are checked field by field by the caller as with the files."""
        where, params = "kind = %s", [self.kind]
        if contains is not None:
            text = contains.decode("utf-8", "replace")
            if text.startswith('"'):
                with contextlib.suppress(ValueError):
                    text = json.loads(text)
            where += " AND (ref = %s OR run_id = %s)"
            params += [text, text]
        seq = before.get("seq") if isinstance(before, dict) and isinstance(before.get("seq"), int) else None
        while True:
            rows = self.db.execute(f"SELECT seq, line FROM runs WHERE {where}"
                                   + (" AND seq < %s" if seq is not None else "")
                                   + " ORDER BY seq DESC LIMIT %s",
                                   (*params, *((seq,) if seq is not None else ()), PG_BATCH))
            for seq, line in rows:
                record = self._parse(line)
                if record is not None:
                    yield record, {"seq": seq, "head": "postgresql"}
            if len(rows) < PG_BATCH:
                return

    def _parse(self, line: str) -> dict | None:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return None
        return record if isinstance(record, dict) else None


###############################################################################
# Jobs and runs ################################################################
###############################################################################

@dataclass(frozen=True, slots=True)
class HttpTarget:
    """What an HTTP run sends (a validated request, see validate_request), and what counts as success."""

    request: dict
    success: dict | None = None         # {"status": [...], "body_contains": str}; None: 2xx (3xx unless following)


@dataclass(frozen=True, slots=True)
class ScriptTarget:
    """What a script run starts: the program and its arguments, where, and for how long at most."""

    rel: str
    path: str
    argv: tuple[str, ...]
    timeout_ms: int
    root: str           # the scripts dir: the script must still resolve inside it when it fires


@dataclass(frozen=True, slots=True)
class Retry:
    """Cloud Scheduler's retry rule: `count` more attempts after a failure, waiting `min_backoff` seconds, doubled
    `max_doublings` times, then growing by the last doubled wait each time, never more than `max_backoff`."""

    count: int = 0
    min_backoff: float = 5.0
    max_backoff: float = 300.0
    max_doublings: int = 5

    def backoff(self, attempt: int) -> float:
        """How long to wait after failed attempt number `attempt` (1 is the first try)."""
        if attempt <= self.max_doublings + 1:
            wait = self.min_backoff * 2 ** (attempt - 1)
        else:
            wait = self.min_backoff * 2 ** self.max_doublings * (attempt - self.max_doublings)
        return min(wait, self.max_backoff)


@dataclass(frozen=True, slots=True)
class Notify:
    """Where and when to tell someone about a schedule's runs (a webhook)."""

    url: str
    on: tuple[str, ...] = ("failure", "recovery")
    after: int = 1


@dataclass(frozen=True, eq=False, slots=True)
class Job:
    """One schedule as the scheduler and the runners see it. Immutable: an edit is a new Job."""

    key: str                    # "http:<id>" or "script:<scriptRel>"
    kind: str                   # "http" | "script"
    ref: str                    # the schedule id or the scriptRel
    cron: Any                   # CronExpr
    tz: ZoneInfo
    target: HttpTarget | ScriptTarget
    overlap: str = "forbid"     # forbid | allow | replace: when a run is still going at the next one
    retry: Retry | None = None
    jitter: float = 0.0         # seconds a run may wait after its slot (random), to spread load
    notify: Notify | None = None
    name: str | None = None


@dataclass(eq=False)
class Run:
    """One run in flight, from the recorder's begin() to its finish()."""

    run_id: str
    job: Job
    slot: float
    trigger: str                # "cron" | "manual" | "retry"
    attempt: int
    started: float
    process: dict | None = None             # a script's pid and start time, once spawned
    cancelled: str | None = None            # why it was stopped early (shutdown, replaced)
    on_process: Callable[["Run"], None] | None = None
    planned: float | None = None            # when it was to start: its slot, after its jitter or backoff


@dataclass
class RunResult:
    """What a run did. A failed run is a result, not an exception."""

    status: str                     # ok | error | timeout
    started_at: float
    duration_ms: int
    status_code: int | None = None  # HTTP runs
    error: str | None = None
    exit_code: int | None = None    # script runs
    signal: str | None = None       # a script killed by a signal
    return_preview: str | None = None
    output_dropped: int = 0
    response: dict | None = None    # an HTTP run's answer: headers, body_preview, truncated
    stdout: bytes = b""             # a script's kept output tails
    stderr: bytes = b""


###############################################################################
# Runners ######################################################################
###############################################################################

class DeadlineWatcher:
    """One thread that calls each registered action at its deadline (time.monotonic()) unless cancelled first:
    a run's time limit without a timer thread per run."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, deadline: float, action: Callable[[], None]) -> int:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, action))
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name="schedserver-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][1] == self._seq:
                self._cond.notify()     # the soonest now: the watcher waits for it instead (else it sleeps on)
            return self._seq

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._cancelled.add(handle)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            thread, self._thread = self._thread, None
            self._cond.notify()
        if thread is not None:
            thread.join(timeout=5)

    def _watch(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] in self._cancelled:
                    self._cancelled.discard(heapq.heappop(self._heap)[1])
                if self._closed:
                    return
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, action = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            try:
                action()
            except Exception:
                log.exception("deadline action failed")


# -- HTTP ----------------------------------------------------------------------------------------------------

_URL_QUERY = re.compile(r"(https?://[^\s?'\"]*)\?[^\s'\"]*")
_UNSPECIFIED_V4 = ipaddress.ip_network("0.0.0.0/8")


class EgressPolicy:
    """Where HTTP runs may connect: [curl] allow_networks / deny_networks (off when both are empty).

    Checked on the address a connection actually goes to (every redirect hop opens its own), and the
    connection is made to that very address, so a name cannot resolve one way for the check and another for
    the connect. An unspecified address (0.0.0.0/8, ::, and their mapped forms) reaches this host, so it is
    checked as loopback.
    """

    def __init__(self, allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()):
        self.allow = [_unmapped(ipaddress.ip_network(n, strict=False)) for n in allow]
        self.deny = [_unmapped(ipaddress.ip_network(n, strict=False)) for n in deny]

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip in _UNSPECIFIED_V4 or ip == ipaddress.IPv6Address("::"):
            candidates = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
        else:
            candidates = [ip]
        for candidate in candidates:
            if any(candidate in network for network in self.deny):
                return False
            if self.allow and not any(candidate in network for network in self.allow):
                return False
        return True

    def refuses_literal(self, host: str) -> bool:
        """True when `host` is an IP address (in any form the resolver reads as one) the policy refuses."""
        address = _literal_address(host)
        return address is not None and self.active and not self.permits(address)


def _literal_address(host: str) -> str | None:
    """The address `host` names without a lookup: an IP literal, or a short IPv4 form ('0', '127.1', hex)."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-FxX.]+", text) and not re.fullmatch(r"[a-fA-F.]+", text):
        try:
            return socket.inet_ntoa(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _unmapped(network: Any) -> Any:
    """An IPv4-mapped IPv6 network (::ffff:a.b.c.d/n) as the IPv4 network it means: addresses are compared
    unmapped, so a mapped entry would otherwise match nothing."""
    if network.version == 6 and network.prefixlen >= 96 and network.network_address.ipv4_mapped is not None:
        return ipaddress.ip_network((network.network_address.ipv4_mapped, network.prefixlen - 96))
    return network


def resolve(host: str, port: int, timeout: float | None) -> list[str]:
    """The addresses of `host`, in getaddrinfo's order, waiting at most `timeout` seconds: a dead resolver
    (glibc waits 5 s per try and per nameserver) must not hold a run past its deadline. socket.timeout if
    it takes longer, socket.gaierror if the name does not resolve."""
    if _literal_address(host) is not None:
        return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host.strip("[]"), port,
                                                                             type=socket.SOCK_STREAM)))
    outcome: list = []
    done = threading.Event()

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as e:
            outcome.append(e)
        done.set()

    threading.Thread(target=lookup, name="schedserver-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise socket.timeout(f"resolving {host} took longer than {timeout:.1f} s")
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return list(dict.fromkeys(info[4][0] for info in outcome[0]))


_http_run = threading.local()       # the HTTP run in progress on this thread: its policy, deadline, connections


class _PolicyConnectionMixin:
    """Resolves the host itself within the run's deadline, keeps the addresses the egress policy permits,
    and connects to those very addresses."""

    def _new_conn(self) -> socket.socket:
        policy = getattr(_http_run, "policy", None)
        deadline = getattr(_http_run, "deadline", None)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            addresses = resolve(self._dns_host, self.port, timeout)
        except socket.gaierror as e:
            raise urllib3.exceptions.NameResolutionError(self.host, self, e) from e
        except socket.timeout as e:
            raise urllib3.exceptions.ConnectTimeoutError(self, f"Connection to {self.host} timed out ({e})") from e
        permitted = [a for a in addresses if policy is None or not policy.active or policy.permits(a)]
        if not permitted:
            raise urllib3.exceptions.NewConnectionError(
                self, f"egress policy refuses {self.host} ({', '.join(addresses)})")
        resolved, last_error = self._dns_host, None
        try:
            for address in permitted:
                self._dns_host = address
                try:
                    conn = super()._new_conn()          # type: ignore[misc]
                except urllib3.exceptions.NewConnectionError as e:
                    last_error = e                      # e.g. ::1 refused: try 127.0.0.1 next
                    continue
                connections = getattr(_http_run, "connections", None)
                if connections is not None:
                    connections.append(conn)
                return conn
            raise last_error
        finally:
            self._dns_host = resolved


class _PolicyHTTPConnection(_PolicyConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _PolicyHTTPSConnection(_PolicyConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _PolicyHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _PolicyHTTPConnection


class _PolicyHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _PolicyHTTPSConnection


def _cut(sockets: list) -> None:
    """Shut down a run's sockets: a blocked connect or read returns at once."""
    for sock in list(sockets):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _short_error(exc: BaseException) -> str:
    """An exception as one short line: its root cause, with URL query strings (often holding keys) taken out."""
    reason = getattr(exc, "reason", None)      # urllib3's MaxRetryError: the cause (too many redirects, refused...)
    text = f"{type(exc).__name__}: {reason if reason is not None else exc}"
    text = _URL_QUERY.sub(r"\1?<query>", text).replace("_PolicyHTTP", "HTTP")
    return text if len(text) <= 500 else text[:497] + "..."


def _is_timeout(exc: BaseException) -> bool:
    """True when an error (or what caused it) is a time-out; a refused connection is not, though urllib3
    derives NewConnectionError from its ConnectTimeoutError."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (TimeoutError, socket.timeout, urllib3.exceptions.TimeoutError)) and \
                not isinstance(exc, urllib3.exceptions.NewConnectionError):
            return True
        reason = getattr(exc, "reason", None)       # a string for ssl.SSLError
        exc = (reason if isinstance(reason, BaseException) else None) or exc.__cause__ or exc.__context__
    return False


class HttpRunner:
    """Sends one scheduled HTTP request with bounded time and memory, through urllib3's connection pools.

    urllib3 (requests' own transport) never reads ~/.netrc or proxy variables. A read timeout applies to each
    socket read, so a target that dribbles bytes could hold a run for ever: the deadline watcher cuts the run's
    connections at its overall deadline.
    """

    kind = "http"

    def __init__(self, policy: EgressPolicy | None = None, deadlines: DeadlineWatcher | None = None,
                 clock: Callable[[], float] = time.time, max_response_bytes: int = MAX_RESPONSE_BYTES,
                 pool_size: int = 8):
        self.policy = policy or EgressPolicy()
        self.deadlines = deadlines or DeadlineWatcher()
        self.clock = clock
        self.max_response_bytes = max_response_bytes
        self._pools = urllib3.PoolManager(num_pools=256, maxsize=pool_size, ca_certs=certifi.where())
        self._pools.pool_classes_by_scheme = {"http": _PolicyHTTPPool, "https": _PolicyHTTPSPool}
        self._lock = threading.Lock()
        self._active: dict[str, list] = {}      # run id -> its connections' sockets, for cancel()

    def start(self, run: Run, on_end: Callable[[RunResult], None]) -> None:
        """Run it here, to its end, then on_end(result)."""
        headers = {"X-Schedserver-Schedule-Id": run.job.ref, "X-Schedserver-Scheduled-At": utc_iso(run.slot)}
        on_end(self.run(run.job.target.request, headers, run.run_id, run.job.target.success))

    def cancel(self, run: Run) -> None:
        """Stop a run in flight at once (its result then reads as a cut connection)."""
        with self._lock:
            connections = self._active.get(run.run_id, [])
        _cut([c for c in connections if c is not None])

    def close(self) -> None:
        self._pools.clear()

    def run(self, spec: dict, extra_headers: dict[str, str], run_id: str | None = None,
            success: dict | None = None) -> RunResult:
        """Send the request; always a RunResult (ok, error or timeout), never an exception. `success` is the
        schedule's success rule (see judge_answer)."""
        started, t0 = self.clock(), time.monotonic()
        try:
            timeout = float(spec.get("timeout", 30))
        except (TypeError, ValueError):
            return RunResult("error", started, 0, error=f"request.timeout is not a number: {_shown(spec.get('timeout'))}")
        deadline = t0 + timeout
        connections: list = []
        run_id = run_id or str(uuid.uuid4())
        with self._lock:
            self._active[run_id] = connections
        _http_run.connections, _http_run.policy, _http_run.deadline = connections, self.policy, deadline
        timer = self.deadlines.add(deadline, functools.partial(_cut, connections))

        def result(status: str, code: int | None = None, error: str | None = None,
                   answer: dict | None = None) -> RunResult:
            return RunResult(status, started, int((time.monotonic() - t0) * 1000), status_code=code, error=error,
                             response=answer)

        def failure(exc: BaseException, code: int | None = None) -> RunResult:
            if time.monotonic() >= deadline or _is_timeout(exc):
                return result("timeout", code, f"timed out after {timeout:g} s")
            return result("error", code, _short_error(exc))

        try:
            headers, body = _request_parts(spec, extra_headers)
            follow = bool(spec.get("follow_redirects"))
            retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=MAX_REDIRECTS,
                                    raise_on_status=False) if follow else False
            try:
                response = self._pools.request(
                    spec["method"], spec["url"], body=body, headers=headers, redirect=follow, retries=retries,
                    timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout), preload_content=False)
            except Exception as e:
                return failure(e)
            body_read, whole = bytearray(), True
            try:
                while len(body_read) < self.max_response_bytes:
                    if time.monotonic() >= deadline:
                        return result("timeout", response.status, f"timed out after {timeout:g} s")
                    chunk = response.read1(min(16384, self.max_response_bytes - len(body_read)))
                    if not chunk:
                        break
                    body_read += chunk
                else:
                    whole = not response.read1(1)
                    if not whole:
                        response.close()    # the rest is never read: the connection cannot be used again
            except Exception as e:          # urllib3 and socket errors while streaming, a cut connection
                response.close()
                return failure(e, response.status)
            finally:
                response.release_conn()
            answer = _answer_preview(response, bytes(body_read), whole)
            problem = judge_answer(response.status, response.reason, bytes(body_read), success, follow)
            if problem is None:
                return result("ok", response.status, answer=answer)
            return result("error", response.status, problem, answer)
        except Exception as e:              # a bug or a surprise from a library: still a result
            log.exception("http run failed unexpectedly")
            return result("error", None, _short_error(e))
        finally:
            self.deadlines.cancel(timer)
            _http_run.connections = _http_run.policy = _http_run.deadline = None
            with self._lock:
                self._active.pop(run_id, None)


PREVIEW_BYTES = 4096        # of an answer's body, kept with its run
PREVIEW_HEADERS = 50


def _answer_preview(response: Any, body: bytes, whole: bool) -> dict:
    """What is kept of an answer: its headers (the first 50, values cut at 1 KiB) and the start of its body."""
    headers = {}
    for name, value in list(response.headers.items())[:PREVIEW_HEADERS]:
        headers[name] = value if len(value) <= 1024 else value[:1024]
    return {"headers": headers, "body_preview": body[:PREVIEW_BYTES].decode("utf-8", "replace"),
            "truncated": len(body) > PREVIEW_BYTES or not whole}


def judge_answer(code: int, reason: str | None, body: bytes, success: dict | None, following: bool) -> str | None:
    """Why an answer is not a success by the schedule's rule (None: it is). The default rule: 2xx, and 3xx when
    redirects are not followed. `body` is what was read of the answer (at most MAX_RESPONSE_BYTES)."""
    if success is None or "status" not in success:
        if not (200 <= code < 300 or (300 <= code < 400 and not following)):
            return f"HTTP {code} {reason or ''}".strip()
    elif not any(code == s or (isinstance(s, str) and str(code)[0] == s[0]) for s in success["status"]):
        return f"HTTP {code} is not in the success rule's status list ({', '.join(map(str, success['status']))})"
    if success and success.get("body_contains") is not None:
        if success["body_contains"].encode() not in body:
            return f"HTTP {code}: the answer does not contain {_shown(success['body_contains'])}"
    return None


def _request_parts(spec: dict, extra_headers: dict[str, str]) -> tuple[dict[str, str], bytes | None]:
    """The headers and body a run sends."""
    headers = {"User-Agent": f"schedserver/{__version__}", "Accept": "*/*"}
    headers.update(spec.get("headers") or {})
    headers.update(extra_headers)
    body = None
    if "json" in spec:
        body = json.dumps(spec["json"], allow_nan=False).encode()
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
    elif "body" in spec:
        body = spec["body"].encode()
    return headers, body


# -- Scripts ------------------------------------------------------------------------------------------------

class OutputTail:
    """The last `limit` bytes of a pipe's output, counting the rest."""

    def __init__(self, limit: int = MAX_OUTPUT_BYTES):
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            extra = len(self.data) - self.limit
            del self.data[:extra]
            self.dropped += extra

    def last_line(self, max_chars: int) -> str | None:
        """The last non-empty line, cut to `max_chars` characters."""
        for line in reversed(self.data.decode("utf-8", errors="replace").splitlines()):
            if line.strip():
                line = line.strip()
                return line if len(line) <= max_chars else line[:max_chars]
        return None


class ProcessTable:
    """What /proc says about processes: parents, start times, a run's id in the environment. Killing a process
    group misses what left it (setsid, setpgid, `set -m`), so runs are stopped by their whole process tree and
    by the run id every process of a run inherits (SCHEDSERVER_RUN_ID)."""

    PR_SET_CHILD_SUBREAPER = 36

    @staticmethod
    def become_subreaper() -> bool:
        """Make orphans of our descendants our children instead of init's, so they can be found and reaped."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            return libc.prctl(ProcessTable.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            return False

    @staticmethod
    def stat(pid: int) -> tuple[str, int, int] | None:
        """(state, parent pid, start time in clock ticks since boot) of a process, None if it is gone."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return fields[0].decode(), int(fields[1]), int(fields[19])
        except (OSError, IndexError, ValueError):
            return None

    @staticmethod
    def run_id_of(pid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                for item in f.read().split(b"\0"):
                    if item.startswith(b"SCHEDSERVER_RUN_ID="):
                        return item[19:].decode("ascii", "replace")
        except OSError:
            pass
        return None

    @staticmethod
    def parents() -> dict[int, int]:
        """pid -> parent pid of every process."""
        found = {}
        try:
            entries = os.listdir("/proc")
        except OSError:
            return found
        for entry in entries:
            if entry.isdigit():
                info = ProcessTable.stat(int(entry))
                if info is not None:
                    found[int(entry)] = info[1]
        return found

    @staticmethod
    def descendants(roots: Iterable[int], parents: dict[int, int] | None = None) -> set[int]:
        """Every process below `roots` (not the roots themselves)."""
        parents = ProcessTable.parents() if parents is None else parents
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        found: set[int] = set()
        todo = list(roots)
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    @staticmethod
    def own_children() -> set[int]:
        """This process's children (orphans adopted as subreaper included)."""
        found: set[int] = set()
        try:
            tasks = os.listdir("/proc/self/task")
        except OSError:
            return found
        for task in tasks:
            try:
                with open(f"/proc/self/task/{task}/children", "rb") as f:
                    found.update(int(p) for p in f.read().split())
            except OSError:
                continue
        return found

    @staticmethod
    def signal_all(pids: Iterable[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class SpawnedScript:
    """A script process from spawn to end: its output tails, time limit, and how it ended."""

    def __init__(self, run: Run, proc: subprocess.Popen, started: float, t0: float):
        self.run = run
        self.proc = proc
        self.started = started
        self.t0 = t0
        self.stdout, self.stderr = OutputTail(), OutputTail()
        self.ended_at: float | None = None          # time.monotonic() when the process was seen to exit
        self.timed_out = False
        self.handles: list[int] = []                # deadline watcher entries to cancel at the end


class ScriptRunner:
    """Runs a script as a subprocess in its own process group, with a time limit and bounded output.

    A worker spawns the script and is free again; one reaper thread sees every run through: it reads both pipes
    into bounded tails, notices the exit (a pidfd, polled where there is none), stops whatever the run left
    behind, and calls the run's on_end(result). With this process a child subreaper, what a script starts and
    abandons (setsid, setpgid, `set -m`) is adopted here and stopped with the run.
    """

    kind = "script"
    POLL_SECONDS = 0.05
    SWEEP_SECONDS = 1.0

    def __init__(self, deadlines: DeadlineWatcher | None = None, clock: Callable[[], float] = time.time,
                 preview_chars: int = 200, kill_grace: float = KILL_GRACE_SECONDS,
                 environment: Callable[[dict[str, str]], dict[str, str]] | None = None,
                 adopt_orphans: bool = False):
        self.deadlines = deadlines or DeadlineWatcher()
        # Only a process that is the server itself (not a host embedding it) adopts orphans and reaps children
        # it did not start.
        self.adopt_orphans = adopt_orphans
        self.clock = clock
        self.preview_chars = preview_chars
        self.kill_grace = kill_grace
        self.environment = environment or (lambda extra: {**os.environ, **extra})
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._new: list[tuple[SpawnedScript, Callable[[RunResult], None]]] = []
        self._watched: dict[SpawnedScript, dict] = {}
        self._spawned_pids: set[int] = set()        # our own children: never mistaken for adopted orphans
        self._checking: set[subprocess.Popen] = set()
        self._checks_cancelled = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self._next_sweep = 0.0

    # -- starting and stopping runs ---------------------------------------------------------------------------
    def start(self, run: Run, on_end: Callable[[RunResult], None]) -> None:
        """Spawn the script and return; on_end(result) is called from the reaper thread once it has ended (at
        once when it cannot start)."""
        target = run.job.target
        started, t0 = self.clock(), time.monotonic()
        problem = _script_problem(target)
        if problem is not None:
            on_end(RunResult("error", started, 0, error=problem))
            return
        env = self.environment({"SCHEDSERVER_RUN_ID": run.run_id, "SCHEDSERVER_SCRIPT": target.rel,
                                "SCHEDSERVER_TRIGGER": run.trigger,
                                "SCHEDSERVER_SCHEDULED_AT": utc_iso(run.slot, ms=True)})
        try:
            with self._lock:
                proc = subprocess.Popen(list(target.argv), cwd=os.path.dirname(target.path), env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
                self._spawned_pids.add(proc.pid)
        except OSError as e:
            on_end(RunResult("error", started, int((time.monotonic() - t0) * 1000),
                             error=f"cannot start: {_start_failure(list(target.argv), e)}"))
            return
        info = ProcessTable.stat(proc.pid)
        run.process = {"pid": proc.pid, "start_time": info[2] if info else None}
        if run.on_process is not None:
            try:
                run.on_process(run)
            except Exception:
                log.exception("noting the process of run %s failed", run.run_id)
        spawned = SpawnedScript(run, proc, started, t0)
        spawned.handles.append(self.deadlines.add(t0 + target.timeout_ms / 1000,
                                                  functools.partial(self._expire, spawned)))
        with self._lock:
            self._new.append((spawned, on_end))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="schedserver-reaper", daemon=True)
                self._thread.start()
        self._wake()
        if run.cancelled:                   # shutdown gave up on it while it was being spawned
            self._stop_tree(spawned, signal.SIGKILL)

    def cancel(self, run: Run) -> None:
        """Stop a run in flight: SIGTERM to everything it started, SIGKILL after the grace."""
        with self._lock:
            spawned = next((s for s in list(self._watched) + [s for s, _ in self._new] if s.run is run), None)
        if spawned is None:
            return
        self._stop_tree(spawned, signal.SIGTERM)
        spawned.handles.append(self.deadlines.add(time.monotonic() + self.kill_grace,
                                                  functools.partial(self._stop_tree, spawned, signal.SIGKILL)))

    def busy(self) -> bool:
        with self._lock:
            return bool(self._new or self._watched)

    def close(self) -> None:
        """Stop the reaper thread (runs still watched are stopped first). Once; later calls do nothing."""
        with self._lock:
            if self._wake_r < 0:
                return
            watched = list(self._watched) + [s for s, _ in self._new]
        for spawned in watched:
            self._stop_tree(spawned, signal.SIGKILL)
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._wake()
        if thread is not None:
            thread.join(timeout=OUTPUT_DRAIN_SECONDS + 2)
        self._selector.close()
        with self._lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1      # never closed again: the numbers may be someone else's by then

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _expire(self, spawned: SpawnedScript) -> None:
        """The time limit: SIGTERM to the run's processes, SIGKILL after the grace."""
        if spawned.ended_at is not None:
            return
        spawned.timed_out = True
        self._stop_tree(spawned, signal.SIGTERM)
        spawned.handles.append(self.deadlines.add(time.monotonic() + self.kill_grace,
                                                  functools.partial(self._stop_tree, spawned, signal.SIGKILL)))

    def _stop_tree(self, spawned: SpawnedScript, sig: int) -> None:
        """Signal the run's process group, every process below it, and every adopted orphan of the run."""
        pid = spawned.proc.pid
        parents = ProcessTable.parents()
        alive = spawned.ended_at is None and pid in parents
        targets = ProcessTable.descendants([pid], parents) if alive else set()
        orphans = self._orphans_of(spawned.run.run_id, parents)
        targets |= orphans | ProcessTable.descendants(orphans, parents)
        if alive:
            _kill_group(pid, sig)
        ProcessTable.signal_all(targets, sig)

    def _orphans_of(self, run_id: str, parents: dict[int, int]) -> set[int]:
        """Our children that belong to run `run_id` by their environment (adopted after their parent ended)."""
        me = os.getpid()
        with self._lock:
            spawned = set(self._spawned_pids)
        return {pid for pid, ppid in parents.items()
                if ppid == me and pid not in spawned and ProcessTable.run_id_of(pid) == run_id}

    # -- the reaper thread -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._closed and not self._watched and not self._new:
                    return
            try:
                self._turn()
            except Exception:
                log.exception("script reaper failed; carrying on")
                time.sleep(self.POLL_SECONDS)

    def _turn(self) -> None:
        polled = any(state["pidfd"] is None and s.ended_at is None for s, state in self._watched.items())
        timeout = self.POLL_SECONDS if polled else self.SWEEP_SECONDS
        ending = [state["drain_until"] for state in self._watched.values() if state["drain_until"] is not None]
        if ending:
            timeout = max(0.0, min(timeout, min(ending) - time.monotonic()))
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._take_new()
                continue
            spawned, what = key.data
            state = self._watched[spawned]
            if what == "exit":
                self._forget(spawned, state, "pidfd")
                self._exited(spawned, state)
                continue
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                (spawned.stdout if what == "stdout" else spawned.stderr).add(chunk)
            else:
                self._forget(spawned, state, what)
        now = time.monotonic()
        for spawned, state in list(self._watched.items()):
            if state["pidfd"] is None and spawned.ended_at is None and spawned.proc.poll() is not None:
                self._exited(spawned, state)
            if state["drain_until"] is not None and (
                    (state["stdout"] is None and state["stderr"] is None) or now >= state["drain_until"]):
                self._finish(spawned, state)
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_SECONDS
            self._sweep()

    def _take_new(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            new, self._new = self._new, []
        for spawned, on_end in new:
            state: dict[str, Any] = {"on_end": on_end, "drain_until": None, "pidfd": None,
                                     "stdout": None, "stderr": None}
            for what, pipe in (("stdout", spawned.proc.stdout), ("stderr", spawned.proc.stderr)):
                try:
                    fd = pipe.fileno()
                    os.set_blocking(fd, False)
                    self._selector.register(fd, selectors.EVENT_READ, (spawned, what))
                    state[what] = fd
                except (OSError, ValueError) as e:      # e.g. the epoll watch limit: its output is dropped
                    log.error("cannot read the %s of a script (%s); it is dropped", what, e)
                    pipe.close()
            try:
                pidfd = os.pidfd_open(spawned.proc.pid)
                self._selector.register(pidfd, selectors.EVENT_READ, (spawned, "exit"))
                state["pidfd"] = pidfd
            except (AttributeError, OSError, ValueError):
                pass                # no pidfd (an old kernel, a filter): its exit is polled for
            with self._lock:
                self._watched[spawned] = state

    def _forget(self, spawned: SpawnedScript, state: dict, what: str) -> None:
        fd = state[what]
        if fd is None:
            return
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass
        if what == "pidfd":
            os.close(fd)
        else:
            (spawned.proc.stdout if what == "stdout" else spawned.proc.stderr).close()
        state[what] = None

    def _exited(self, spawned: SpawnedScript, state: dict) -> None:
        """Its process has ended: reap it, stop what it left, give its pipes a while more to close."""
        spawned.ended_at = time.monotonic()
        spawned.proc.wait()
        _kill_group(spawned.proc.pid, signal.SIGKILL)
        self._stop_tree(spawned, signal.SIGKILL)
        state["drain_until"] = spawned.ended_at + OUTPUT_DRAIN_SECONDS

    def _finish(self, spawned: SpawnedScript, state: dict) -> None:
        for what in ("stdout", "stderr", "pidfd"):
            self._forget(spawned, state, what)
        for handle in spawned.handles:
            self.deadlines.cancel(handle)
        with self._lock:
            del self._watched[spawned]
            self._spawned_pids.discard(spawned.proc.pid)
        self._sweep()
        try:
            state["on_end"](self._result(spawned))
        except Exception:
            log.exception("recording the end of a script run failed")

    def _sweep(self) -> None:
        """Adopted orphans: stop those whose run is over, and reap the ones that ended (zombies)."""
        if not self.adopt_orphans:
            return
        children = ProcessTable.own_children()      # read before the registry: see check()
        with self._lock:
            spawned = set(self._spawned_pids)
            live_runs = {s.run.run_id for s in self._watched} | {s.run.run_id for s, _ in self._new}
        for pid in children - spawned:
            info = ProcessTable.stat(pid)
            if info is None:
                continue
            if info[0] == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                continue
            run_id = ProcessTable.run_id_of(pid)
            if run_id is not None and run_id not in live_runs:      # it outlived its run
                ProcessTable.signal_all(ProcessTable.descendants([pid]) | {pid}, signal.SIGKILL)

    def check(self, argv: list[str], cwd: str, env: dict[str, str], timeout: float) -> tuple[int | str, bytes]:
        """Run a short command to its end (a syntax check): (exit status, "timeout" or "cancelled", and its
        output). Its process is registered as ours, so the orphan sweep never reaps it."""
        with self._lock:        # held across the spawn: a sweep then sees it registered, never as an orphan
            if self._checks_cancelled:
                return "cancelled", b""
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
            self._spawned_pids.add(proc.pid)
            self._checking.add(proc)
        try:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.communicate()
                return "timeout", b""
            if self._checks_cancelled:
                return "cancelled", b""
            return proc.returncode, err or out
        finally:
            with self._lock:
                self._spawned_pids.discard(proc.pid)
                self._checking.discard(proc)

    def cancel_checks(self) -> None:
        """The server is stopping: checks in progress are killed, and no new one starts."""
        with self._lock:
            self._checks_cancelled = True
            checking = list(self._checking)
        for proc in checking:
            _kill_group(proc.pid, signal.SIGKILL)

    def _result(self, spawned: SpawnedScript) -> RunResult:
        duration = int(((spawned.ended_at or time.monotonic()) - spawned.t0) * 1000)
        dropped = spawned.stdout.dropped + spawned.stderr.dropped
        code = spawned.proc.returncode
        exit_code = code if code is not None and code >= 0 else None
        sig = _signal_name(-code) if code is not None and code < 0 else None
        common = dict(exit_code=exit_code, signal=sig, output_dropped=dropped, stdout=bytes(spawned.stdout.data),
                      stderr=bytes(spawned.stderr.data))
        if spawned.run.cancelled:
            return RunResult("error", spawned.started, duration, error=spawned.run.cancelled, **common)
        if spawned.timed_out:
            return RunResult("timeout", spawned.started, duration,
                             error=f"timed out after {spawned.run.job.target.timeout_ms} ms", **common)
        if code == 0:
            return RunResult("ok", spawned.started, duration,
                             return_preview=spawned.stdout.last_line(self.preview_chars), **common)
        error = spawned.stderr.last_line(500)
        if error is None:
            error = f"killed by signal {sig}" if sig else f"exit status {code}"
        return RunResult("error", spawned.started, duration, error=error, **common)


def _script_problem(target: ScriptTarget) -> str | None:
    """Why a script may not be started now: a link re-pointed outside the scripts dir since it registered."""
    try:
        real = os.path.realpath(target.path)
        root = os.path.realpath(target.root)
    except OSError as e:
        return f"cannot start: {e.strerror}"
    if os.path.commonpath([root, real]) != root:
        return "cannot start: the script now resolves outside the scripts directory"
    return None


def _start_failure(argv: list[str], error: OSError) -> str:
    """Why a script did not start; names the #! line when the script exists but its interpreter does not."""
    if isinstance(error, FileNotFoundError) and len(argv) == 1 and os.path.isfile(argv[0]):
        try:
            with open(argv[0], "rb") as f:
                first = f.readline(200).strip().decode("utf-8", "replace")
        except OSError:
            first = ""
        if first.startswith("#!"):
            return f"bad interpreter {first!r}: {error.strerror}"
    return str(error.strerror or error)


def stop_leftovers(marker: dict) -> int:
    """After a crash: stop what a run of the previous server left running (its process, if it is the same
    process by its start time, whatever is below it, and every process carrying its run id). How many."""
    parents = ProcessTable.parents()
    targets: set[int] = set()
    process = marker.get("process") or {}
    pid = process.get("pid")
    if isinstance(pid, int) and pid > 1:
        info = ProcessTable.stat(pid)
        if info is not None and info[2] == process.get("start_time"):
            targets |= {pid} | ProcessTable.descendants([pid], parents)
            _kill_group(pid, signal.SIGKILL)
    run_id = marker.get("run_id")
    if run_id:
        carriers = {p for p in parents if p != os.getpid() and ProcessTable.run_id_of(p) == run_id}
        targets |= carriers | ProcessTable.descendants(carriers, parents)
    ProcessTable.signal_all(targets, signal.SIGKILL)
    return len(targets)


###############################################################################
# Scheduler ####################################################################
###############################################################################

@dataclass
class Due:
    """What tick() found for one job: a slot to run now, and/or slots missed (counted, never replayed)."""

    job: Job
    slot: float | None
    missed: int = 0
    first_missed: float | None = None
    last_missed: float | None = None
    trigger: str = "cron"
    attempt: int = 1
    at: float | None = None         # when it was due to start (a retry, or a slot after its jitter): its slot else
    deferred: bool = False          # a cluster replica's second try at a slot another replica goes first for


class Scheduler:
    """Keeps jobs ordered by next fire instant; tick(now) says what is due. It knows jobs and instants only.

    Slots later than the misfire grace, and all but the latest slot within it, are missed: one record with a
    count, never a burst of catch-up runs. Counting stops at MISSED_SCAN_LIMIT (the count is then a lower
    bound), so a clock jumping forward by a year costs a bounded amount of work.
    """

    def __init__(self, misfire_grace: float = 30.0, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_due: Callable[[Due], None] | None = None, on_tick: Callable[[float], None] | None = None):
        self.misfire_grace = misfire_grace
        self.clock = clock
        self.monotonic = monotonic
        self.on_due = on_due            # the ticker thread hands each Due here
        self.on_tick = on_tick          # called by the ticker thread after each tick (the systemd watchdog)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._next: dict[str, float | None] = {}
        self._generation: dict[str, int] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        # Runs asked for once at an instant (a retry, a slot delayed by its jitter): (at, seq, key, due)
        self._once: list[tuple[float, int, str, Due]] = []
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_tick: float | None = None                 # the `now` of the last tick (wall clock)
        self.last_tick_monotonic: float | None = None       # when it happened, for health checks

    # -- registrations --------------------------------------------------------------------------------------
    def add(self, job: Job, anchor: float) -> None:
        """Register (or replace) `job`; its first slot is the first one strictly after `anchor`."""
        following = job.cron.next_after(anchor, job.tz)
        with self._lock:
            self._jobs[job.key] = job
            self._generation[job.key] = self._generation.get(job.key, 0) + 1
            self._next[job.key] = following
            self._push(job.key)

    def remove(self, key: str) -> None:
        with self._lock:
            self._jobs.pop(key, None)
            self._next.pop(key, None)
            self._generation.pop(key, None)
            self._once = [entry for entry in self._once if entry[2] != key]
            heapq.heapify(self._once)
            self._compact()

    def add_once(self, job: Job, at: float, slot: float, trigger: str, attempt: int = 1,
                 deferred: bool = False) -> None:
        """Run `job` once at `at` (for slot `slot`), if it is still registered then."""
        self.add_later(at, Due(job, slot, trigger=trigger, attempt=attempt, at=at, deferred=deferred))

    def add_later(self, at: float, due: Due) -> None:
        """Hand `due` over at `at`, if its job is still registered then."""
        with self._lock:
            self._seq += 1
            heapq.heappush(self._once, (at, self._seq, due.job.key, due))

    def pending(self, key: str) -> list[Due]:
        """The one-off runs waiting for `key`, soonest first."""
        with self._lock:
            return [entry[3] for entry in sorted(self._once) if entry[2] == key]

    def get(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def next_at(self, key: str) -> float | None:
        with self._lock:
            return self._next.get(key)

    def next_of(self, keys: list[str]) -> list[float | None]:
        """next_at of each key under one hold of the lock: for listings."""
        with self._lock:
            return [self._next.get(key) for key in keys]

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def _push(self, key: str) -> None:
        at = self._next.get(key)
        if at is not None:
            self._seq += 1
            heapq.heappush(self._heap, (at, self._seq, key, self._generation[key]))
            self._compact()

    def _compact(self) -> None:
        """Keep the heap's stale entries (removed or re-registered jobs) bounded by the live ones."""
        if len(self._heap) > 2 * len(self._jobs) + 64:
            self._heap = [entry for entry in self._heap if self._live(entry)]
            heapq.heapify(self._heap)

    def _live(self, entry: tuple[float, int, str, int]) -> bool:
        at, _, key, generation = entry
        return self._generation.get(key) == generation and self._next.get(key) == at

    # -- what is due ----------------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Due]:
        """Every job due at or before `now`, its next slot worked out. Costs nothing per job that is not due."""
        found = []
        with self._lock:
            self.last_tick = now
            self.last_tick_monotonic = self.monotonic()
            while self._heap and self._heap[0][0] <= now:
                entry = heapq.heappop(self._heap)
                if not self._live(entry):
                    continue
                key = entry[2]
                due, self._next[key] = self._due(self._jobs[key], entry[0], now)
                if due.slot is not None or due.missed:
                    found.append(due)
                self._push(key)
            due_now = {due.job.key for due in found if due.slot is not None}
            while self._once and self._once[0][0] <= now:
                _, _, key, due = heapq.heappop(self._once)
                job = self._jobs.get(key)
                if job is None:             # removed meanwhile: nothing to run
                    continue
                if due.trigger == "retry" and key in due_now:
                    continue                # the next slot has come: it runs, and the retries stop
                found.append(replace(due, job=job))
        return found

    def _due(self, job: Job, slot: float, now: float) -> tuple[Due, float | None]:
        """What happens to `job`, whose slot `slot` is due, and its next slot."""
        missed, first_missed, last_missed = 0, slot, slot
        slots = job.cron.iter_after(slot, job.tz)
        following = next(slots, None)
        while slot is not None and slot <= now:
            if now - slot <= self.misfire_grace and (following is None or following > now):
                break                       # the latest due slot, within the grace: it runs
            missed, last_missed = missed + 1, slot
            if missed >= MISSED_SCAN_LIMIT and following is not None and following <= now - self.misfire_grace:
                slots = job.cron.iter_after(now - self.misfire_grace, job.tz)
                following = next(slots, None)
            slot, following = following, next(slots, None)
        runs = slot is not None and slot <= now
        due = Due(job, slot if runs else None, missed, first_missed if missed else None,
                  last_missed if missed else None)
        return due, following if runs else slot

    # -- the ticker thread ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="schedserver-ticker", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = self.clock()
            # Every slot is a whole second: wake just after the next one, or at a one-off run due sooner.
            wake = now // 1.0 + 1.0
            with self._lock:
                if self._once:
                    wake = min(wake, self._once[0][0])
            if self._stop.wait(max(0.0, wake - now) + 0.0005):
                break
            now = self.clock()
            try:
                for due in self.tick(now):
                    self.on_due(due)
            except Exception:
                log.exception("tick failed")
                continue
            if self.on_tick is not None:
                try:
                    self.on_tick(now)
                except Exception:
                    log.exception("tick hook failed")

    def stop(self) -> None:
        """No more ticks; what was handed over goes on."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None


class WorkerPool:
    """A fixed number of threads running submitted calls; a failing call is logged and the thread lives on."""

    def __init__(self, workers: int, name: str = "schedserver-worker"):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
                         for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable, *args: Any) -> bool:
        """Queue `fn(*args)`; False (nothing queued) once the pool is shut down."""
        if self._closed:
            return False
        self._queue.put((fn, args))
        return True

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("worker task failed")

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop taking work; each worker ends when it reaches its end marker (queued work runs first)."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


###############################################################################
# Recorder #####################################################################
###############################################################################

class Metrics:
    """Prometheus metrics, in a registry of the server's own (an embedding host's default registry is left
    alone). Per-schedule labels only when asked for: they grow with the number of schedules."""

    LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
    DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

    def __init__(self, per_schedule: bool = False):
        import prometheus_client as prom
        self.prom = prom
        self.per_schedule = per_schedule
        self.registry = prom.CollectorRegistry(auto_describe=True)
        extra = ["schedule"] if per_schedule else []
        r = self.registry
        self.runs = prom.Counter("schedserver_runs", "Runs recorded, by kind and status", ["kind", "status", *extra],
                                 registry=r)
        self.duration = prom.Histogram("schedserver_run_duration_seconds", "How long runs took", ["kind", *extra],
                                       buckets=self.DURATION_BUCKETS, registry=r)
        self.lateness = prom.Histogram("schedserver_run_start_lateness_seconds",
                                       "How late runs started after their slot (jitter excluded)", ["kind"],
                                       buckets=self.LATENCY_BUCKETS, registry=r)
        self.retries = prom.Counter("schedserver_retries", "Retries scheduled", ["kind"], registry=r)
        self.alerts = prom.Counter("schedserver_alert_deliveries", "Alert deliveries, by outcome", ["outcome"],
                                   registry=r)
        self.requests = prom.Counter("schedserver_http_requests", "API requests, by route and status",
                                     ["route", "method", "status"], registry=r)
        self.request_seconds = prom.Histogram("schedserver_http_request_duration_seconds",
                                              "API request latency, by route", ["route", "method"],
                                              buckets=self.LATENCY_BUCKETS, registry=r)
        self._gauges: list[Callable[[], Iterable[Any]]] = []
        self.registry.register(self)

    def observe(self, kind: str, ref: str, record: dict, lateness: float | None) -> None:
        """A run record was written."""
        status = record.get("status") or "unknown"
        extra = [ref] if self.per_schedule else []
        self.runs.labels(kind, status, *extra).inc(record.get("count") or 1)
        duration = record.get("duration_ms") if kind == "http" else record.get("durationMs")
        if status not in ("missed", "skipped") and isinstance(duration, (int, float)):
            self.duration.labels(kind, *extra).observe(duration / 1000)
        if lateness is not None and status not in ("missed", "skipped"):
            self.lateness.labels(kind).observe(max(0.0, lateness))
        if record.get("retry_at") or record.get("nextAttemptAt"):
            self.retries.labels(kind).inc()

    def gauges(self, source: Callable[[], Iterable[Any]]) -> None:
        """Add a source of gauge families, read at each scrape."""
        self._gauges.append(source)

    def collect(self) -> Iterator[Any]:
        for source in self._gauges:
            yield from source()

    def describe(self) -> list:
        return []

    def text(self) -> bytes:
        return self.prom.generate_latest(self.registry)


# Each kind's runs log speaks its surface's field names: (schedule, run id, slot, last slot of a count, start).
RECORD_FIELDS = {
    "http": ("schedule_id", "run_id", "scheduled_at", "last_scheduled_at", "started_at", "retry_at"),
    "script": ("scriptPath", "runId", "ts", "lastSlot", "startedAt", "nextAttemptAt"),
}


def job_key(kind: str, ref: str) -> str:
    return f"{kind}:{ref}"


def _count_text(count: int) -> str:
    return f"at least {count}" if count >= MISSED_SCAN_LIMIT else str(count)


def format_record(kind: str, run: dict) -> dict:
    """A run (the recorder's common fields) as a line of its kind's runs log."""
    if kind == "http":
        record = {"ts": utc_iso(run["started"] or run["now"], ms=True), "schedule_id": run["ref"],
                  "run_id": run["run_id"], "scheduled_at": utc_iso(run["slot"], ms=True),
                  "started_at": utc_iso(run["started"], ms=True), "status": run["status"],
                  "status_code": run.get("status_code"), "duration_ms": run["duration_ms"],
                  "error": run.get("error"), "trigger": run["trigger"], "attempt": run["attempt"],
                  "finished_at": None if run["status"] in ("missed", "skipped") else utc_iso(run["now"], ms=True)}
        if "count" in run:
            record.update(count=run["count"], last_scheduled_at=utc_iso(run["last_slot"], ms=True))
        if run.get("response") is not None:
            record["response"] = run["response"]
        for name in ("retry_at", "streak", "failing", "alerts"):
            if run.get(name) is not None:
                record[name] = utc_iso(run[name], ms=True) if name == "retry_at" else run[name]
        return record
    record = {"ts": utc_iso(run["slot"], ms=True), "scriptPath": run["ref"], "expression": run["expression"],
              "runId": run["run_id"], "status": run["status"], "durationMs": run["duration_ms"],
              "trigger": run["trigger"], "attempt": run["attempt"], "startedAt": utc_iso(run["started"], ms=True)}
    if run["status"] == "ok":
        record["returnPreview"] = run.get("return_preview")
    else:
        record["error"] = run.get("error")
    if run.get("exit_code") is not None:
        record["exitCode"] = run["exit_code"]
    if run.get("signal"):
        record["signal"] = run["signal"]
    if run.get("output_dropped"):
        record["outputDropped"] = run["output_dropped"]
    if "count" in run:
        record.update(count=run["count"], lastSlot=utc_iso(run["last_slot"], ms=True))
    if run.get("output_kept"):
        record["outputKept"] = True
    for name, key in (("retry_at", "nextAttemptAt"), ("streak", "streak"), ("failing", "failing"),
                      ("alerts", "alerts")):
        if run.get(name) is not None:
            record[key] = utc_iso(run[name], ms=True) if name == "retry_at" else run[name]
    record["loggedAt"] = utc_iso(run["now"], ms=True)
    return record


class RunState:
    """Per schedule, what listings and restarts need: the last slot handled, the last run and its status.

    Kept in memory; saved to a file with the positions in the runs logs it includes (at a bounded interval
    and at a clean stop). A start loads the file and replays only the log lines written after it, so its cost
    follows what changed since the save, not the size of the logs.
    """

    def __init__(self, path: str, logs: dict[str, NdjsonLog], monotonic: Callable[[], float] = time.monotonic):
        self.file = JsonFile(path)
        self.logs = logs
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._states: dict[str, dict] = {}
        self._changed_at: float | None = None       # when the first change since the last save was made

    def load(self) -> int:
        """Read the saved state and replay the log lines after it; how many lines were replayed."""
        try:
            document = self.file.load(None)
        except StartupError as e:
            log.warning("%s; run state is rebuilt from the runs logs", e)
            document = None
        positions: dict = {}
        if isinstance(document, dict) and document.get("version") == 1:
            positions = document.get("logs") or {}
            self._states = {key: value for key, value in (document.get("states") or {}).items()
                            if isinstance(value, dict)}
        replayed = 0
        for kind, runs_log in self.logs.items():
            for record in runs_log.read_after(positions.get(kind)):
                self.apply(kind, record)
                replayed += 1
        if replayed:
            self._changed_at = self.monotonic()
        return replayed

    def apply(self, kind: str, record: dict) -> None:
        """Take one runs-log record into the state (live, under the log's lock, and when replaying)."""
        ref_field, id_field, slot_field, last_slot_field, started_field, retry_field = RECORD_FIELDS[kind]
        ref = record.get(ref_field)
        if not isinstance(ref, str):
            return
        slot = parse_optional_iso(record.get(last_slot_field) or record.get(slot_field))
        started = parse_optional_iso(record.get(started_field))
        trigger = record.get("trigger", "cron")
        with self._lock:
            state = self._states.setdefault(job_key(kind, ref), {})
            if trigger == "cron" and slot is not None:
                state["slot"] = max(slot, state.get("slot") or 0.0)
            if started is not None and record.get("status") not in ("missed", "skipped"):
                state["run_at"] = max(started, state.get("run_at") or 0.0)
            state["status"] = record.get("status")
            state["run_id"] = record.get(id_field)
            state["at"] = record.get(slot_field)
            for name in ("streak", "failing"):
                if name in record:
                    state[name] = record[name]
            retry_at = parse_optional_iso(record.get(retry_field))
            if retry_at is not None:        # a retry is waiting: kept across a restart
                state["retry"] = {"at": retry_at, "attempt": int(record.get("attempt") or 1) + 1,
                                  "slot": parse_optional_iso(record.get(slot_field))}
            elif trigger in ("cron", "retry"):
                state.pop("retry", None)
            if self._changed_at is None:
                self._changed_at = self.monotonic()

    def get(self, key: str) -> dict:
        with self._lock:
            return dict(self._states.get(key) or {})

    def value(self, key: str, name: str) -> Any:
        """One fact of a schedule's state (None when unknown)."""
        state = self._states.get(key)
        return state.get(name) if state is not None else None

    def forget(self, key: str) -> None:
        with self._lock:
            if self._states.pop(key, None) is not None and self._changed_at is None:
                self._changed_at = self.monotonic()

    def due(self) -> bool:
        """True when there are changes older than STATE_SAVE_SECONDS not yet saved."""
        with self._lock:
            return self._changed_at is not None and self.monotonic() - self._changed_at >= STATE_SAVE_SECONDS

    def save(self) -> None:
        """Write the state with the log positions it includes; raises OSError."""
        held = [runs_log.locked() for runs_log in self.logs.values()]
        for lock in held:
            lock.acquire()
        try:
            positions = {kind: runs_log.position() for kind, runs_log in self.logs.items()}
            with self._lock:
                states = {key: dict(value) for key, value in self._states.items()}
                self._changed_at = None
        finally:
            for lock in reversed(held):
                lock.release()
        try:
            self.file.save({"version": 1, "logs": positions, "states": states})
        except OSError:
            with self._lock:
                self._changed_at = self._changed_at or self.monotonic()
            raise


class Recorder:
    """The one place a run is begun and finished, for both kinds: its marker, its log line, the run state.

    A run is in flight from begin() to finish(); whoever takes it out of flight first (its end, or a shutdown
    interrupting it) records it, once.
    """

    def __init__(self, logs: dict[str, NdjsonLog], state: RunState, markers: RunMarkers | None,
                 clock: Callable[[], float] = time.time, metrics: "Metrics | None" = None):
        self.logs = logs
        self.state = state
        self.markers = markers
        self.clock = clock
        self.metrics = metrics
        self._cond = threading.Condition()
        self._runs: dict[str, Run] = {}
        self._ending: set[str] = set()         # runs whose record is being written: still in flight

    # -- runs in flight -------------------------------------------------------------------------------------
    def begin(self, job: Job, slot: float, trigger: str, attempt: int = 1, exclusive: bool = True,
              run_id: str | None = None) -> Run | None:
        """A new run in flight, its marker written; None when `exclusive` and a run of the job is in flight."""
        with self._cond:
            if exclusive and any(r.job.key == job.key for r in self._runs.values()):
                return None
            run = Run(run_id or str(uuid.uuid4()), job, slot, trigger, attempt, self.clock(),
                      on_process=functools.partial(self._mark, new=False))
            self._runs[run.run_id] = run
        self._mark(run)
        return run

    def _mark(self, run: Run, new: bool = True) -> None:
        if self.markers is None:
            return
        marker = {"run_id": run.run_id, "kind": run.job.kind, "ref": run.job.ref,
                  "expression": run.job.cron.expression, "slot": run.slot, "trigger": run.trigger,
                  "attempt": run.attempt, "started": run.started, "process": run.process}
        try:
            self.markers.write(run.run_id, marker, new)
        except OSError as e:
            log.error("cannot write the marker of run %s (a crash now would not be recorded): %s", run.run_id, e)

    def running(self, key: str) -> list[Run]:
        with self._cond:
            return [r for r in self._runs.values() if r.job.key == key]

    def running_all(self) -> list[Run]:
        with self._cond:
            return list(self._runs.values())

    def running_keys(self) -> set[str]:
        with self._cond:
            return {r.job.key for r in self._runs.values()}

    def count(self) -> int:
        with self._cond:
            return len(self._runs)

    def wait_idle(self, deadline: float) -> bool:
        """Wait until nothing is in flight or time.monotonic() reaches `deadline`; True if idle."""
        with self._cond:
            while self._runs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def in_flight(self, run: Run) -> bool:
        """True while `run` has not been recorded (nor is being)."""
        with self._cond:
            return run.run_id in self._runs and run.run_id not in self._ending

    def finish(self, run: Run, result: RunResult, decided: dict | None = None) -> dict | None:
        """Record a run's end, with what the policies `decided` (a retry's time, the failure streak, alerts);
        None when it was recorded already (interrupted). Raises StorageError when its record cannot be written
        (the run is out of flight all the same)."""
        with self._cond:
            if run.run_id not in self._runs or run.run_id in self._ending:
                return None
            self._ending.add(run.run_id)
        try:
            return self._write(run.job, {
                "run_id": run.run_id, "slot": run.slot, "trigger": run.trigger, "attempt": run.attempt,
                "started": result.started_at, "status": result.status, "duration_ms": result.duration_ms,
                "status_code": result.status_code, "error": result.error, "exit_code": result.exit_code,
                "signal": result.signal, "return_preview": result.return_preview,
                "output_dropped": result.output_dropped, "response": result.response,
                "lateness": None if run.trigger == "manual" else result.started_at - (run.planned or run.slot),
                **(decided or {})})
        finally:
            if self.markers is not None:
                self.markers.remove(run.run_id)
            with self._cond:
                self._runs.pop(run.run_id, None)
                self._ending.discard(run.run_id)
                self._cond.notify_all()

    def interrupt_all(self, reason: str) -> list[Run]:
        """Take every run out of flight and record it `interrupted` (the caller stops what they do); runs
        whose end is being recorded already are left to it."""
        with self._cond:
            runs = [run for run_id, run in self._runs.items() if run_id not in self._ending]
            for run in runs:
                del self._runs[run.run_id]
            self._cond.notify_all()
        for run in runs:
            run.cancelled = reason
            try:
                self._write(run.job, {"run_id": run.run_id, "slot": run.slot, "trigger": run.trigger,
                                      "attempt": run.attempt, "started": run.started, "status": "interrupted",
                                      "duration_ms": int(max(0.0, self.clock() - run.started) * 1000),
                                      "error": reason})
            except StorageError:
                pass
            finally:
                if self.markers is not None:
                    self.markers.remove(run.run_id)
        return runs

    # -- records of runs that did not run -------------------------------------------------------------------
    def record_missed(self, job: Job, first: float, last: float, count: int, trigger: str = "cron",
                      attempt: int = 1) -> None:
        noun = "run" if job.kind == "http" else "fire"
        self._write(job, {"run_id": str(uuid.uuid4()), "slot": first, "last_slot": last, "count": count,
                          "trigger": trigger, "attempt": attempt, "started": None, "status": "missed",
                          "duration_ms": 0,
                          "error": f"missed {_count_text(count)} {noun}{'s' if count != 1 else ''} from "
                                   f"{utc_iso(first)} (server down, suspended or busy beyond the misfire grace)"})

    def record_skipped(self, job: Job, slot: float, trigger: str = "cron", attempt: int = 1) -> None:
        self._write(job, {"run_id": str(uuid.uuid4()), "slot": slot, "last_slot": slot, "count": 1,
                          "trigger": trigger, "attempt": attempt, "started": None, "status": "skipped",
                          "duration_ms": 0, "error": "previous run still in progress"})

    def record_leftover(self, marker: dict,
                        error: str = "interrupted: the server stopped before the run ended") -> None:
        """A run a crashed process left in flight (its marker): recorded `interrupted`, never re-run."""
        kind, ref = marker.get("kind"), marker.get("ref")
        if kind not in self.logs or not isinstance(ref, str):
            return
        started = marker.get("started") if isinstance(marker.get("started"), (int, float)) else None
        slot = marker.get("slot") if isinstance(marker.get("slot"), (int, float)) else started
        self._write_as(kind, ref, marker.get("expression"), {
            "run_id": str(marker.get("run_id")), "slot": slot, "trigger": marker.get("trigger") or "cron",
            "attempt": marker.get("attempt") or 1, "started": started, "status": "interrupted", "duration_ms": 0,
            "error": error})

    def _write(self, job: Job, run: dict) -> dict:
        return self._write_as(job.kind, job.ref, job.cron.expression, run)

    def _write_as(self, kind: str, ref: str, expression: Any, run: dict) -> dict:
        """Append one record of a `kind` run of `ref`, taking it into the run state; raises StorageError."""
        run.update(ref=ref, expression=expression, now=self.clock())
        record = format_record(kind, run)
        status = run["status"]
        line = f"{'http run' if kind == 'http' else 'script fire'} {ref} trigger={run['trigger']} status={status}"
        if "count" in run:
            line += f" count={run['count']}"
        if run.get("status_code") is not None:
            line += f" http_status={run['status_code']}"
        if run.get("started") is not None and status not in ("missed", "skipped"):
            line += f" duration_ms={run['duration_ms']}"
        if run.get("error") and status not in ("missed", "skipped"):
            line += f" error={run['error']}"
        log.log(logging.WARNING if status == "interrupted" else logging.INFO, "%s", line,
                extra={"run_id": run["run_id"], "kind": kind, "schedule": ref, "status": status})
        runs_log = self.logs[kind]
        try:
            runs_log.append(record, then=functools.partial(self.state.apply, kind, record))
        except OSError as e:
            log.error("cannot append to %s: %s (run %s)", runs_log.path, e, run["run_id"])
            raise StorageError(f"run {run['run_id']} ended ({status}) but its record could not be written: "
                               f"{e.strerror or e}") from None
        if self.metrics is not None:
            self.metrics.observe(kind, ref, record, run.get("lateness"))
        return record


###############################################################################
# Cluster: several replicas on PostgreSQL #####################################
###############################################################################

class Cluster:
    """This replica among the others, through PostgreSQL.

    - Its lease: a row in `replicas` it renews every lease/4; a replica whose row is older than the lease is gone.
    - Slots: a run of a slot begins only once its claim row is inserted, and the primary key (schedule, slot,
      trigger, attempt) lets exactly one replica insert it. Each schedule has a first replica among the live
      ones (rendezvous hashing), which claims at the slot; the others try `takeover` seconds later, so a slot
      whose first replica is dead or stopped still fires, once.
    - Runs a gone replica left in flight are recorded `interrupted` by a survivor (never re-run).
    - Change notices (LISTEN/NOTIFY) from the other replicas are handed to `on_notice`; `on_resync` runs at
      every RESYNC_SECONDS, so a notice that was missed heals.
    """

    RESYNC_SECONDS = 10.0
    FEED_SECONDS = 0.5

    def __init__(self, db: PgDatabase, lease: float = 10.0, takeover: float = 2.0,
                 clock: Callable[[], float] = time.time, retention_days: int = 30):
        self.db = db
        self.lease = lease
        self.takeover = takeover
        self.retention_days = retention_days    # run records older than this are deleted (as logs rotate)
        self.clock = clock
        self.id = str(uuid.uuid4())
        self.live: tuple[str, ...] = (self.id,)
        self.on_notice: Callable[[dict], None] | None = None
        self.on_resync: Callable[[], None] | None = None
        self.on_feed: Callable[[], None] | None = None
        self.recorder: "Recorder | None" = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pruned_at = 0.0

    # -- membership -------------------------------------------------------------------------------------------
    def join(self) -> None:
        self.db.execute("INSERT INTO replicas (id, host, pid) VALUES (%s, %s, %s)",
                        (self.id, socket.gethostname(), os.getpid()))
        self.heartbeat()

    def heartbeat(self) -> None:
        """Renew this replica's lease and learn which replicas are live."""
        renewed = self.db.execute("UPDATE replicas SET seen = now() WHERE id = %s RETURNING id", (self.id,))
        if not renewed:         # pruned while away: come back under the same id
            self.db.execute("INSERT INTO replicas (id, host, pid) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
                            (self.id, socket.gethostname(), os.getpid()))
        rows = self.db.execute("SELECT id FROM replicas WHERE seen > now() - make_interval(secs => %s) ORDER BY id",
                               (self.lease,))
        self.live = tuple(row[0] for row in rows) or (self.id,)

    def leave(self) -> None:
        with contextlib.suppress(StorageError):
            self.db.execute("DELETE FROM replicas WHERE id = %s", (self.id,))

    def first(self, key: str) -> bool:
        """True when this replica goes first for `key` among the live ones."""
        return max(self.live, key=lambda replica: hashlib.blake2b(f"{replica}/{key}".encode(),
                                                                   digest_size=8).digest()) == self.id

    # -- claims -----------------------------------------------------------------------------------------------
    def claim(self, asks: list[tuple["Job", float, str, int, bool]]) -> list[tuple[str, str]]:
        """Claim slots, each ask (job, slot, trigger, attempt, exclusive), all in one statement. For each ask,
        (outcome, run id): "run" (this replica runs it under that run id), "taken" (another replica claimed it),
        or "skipped" (claimed, but with `exclusive` a run of the schedule is in flight on another live replica).
        """
        if not asks:
            return []
        run_ids = [str(uuid.uuid4()) for _ in asks]
        now = self.clock()
        Jsonb = self.db.psycopg.types.json.Jsonb
        markers = [Jsonb({"run_id": run_id, "kind": job.kind, "ref": job.ref, "expression": job.cron.expression,
                          "slot": slot, "trigger": trigger, "attempt": attempt, "started": now})
                   for run_id, (job, slot, trigger, attempt, _) in zip(run_ids, asks)]
        # The primary key decides who claims (ON CONFLICT needs no plan); the same statement says whether a run
        # of the schedule is in flight on another live replica.
        rows = self.db.execute(
            "WITH asked AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::int[], "
            "%s::text[], %s::jsonb[], %s::bool[]) AS t(kind, ref, slot_ms, trigger, attempt, run_id, marker, exclusive)), "
            "claimed AS (INSERT INTO claims (kind, ref, slot_ms, trigger, attempt, run_id, replica, state, marker) "
            "SELECT kind, ref, slot_ms, trigger, attempt, run_id, %s, 'running', marker FROM asked "
            "ON CONFLICT DO NOTHING RETURNING run_id) "
            "SELECT a.run_id, a.exclusive AND EXISTS (SELECT 1 FROM claims c JOIN replicas r ON r.id = c.replica "
            "WHERE c.kind = a.kind AND c.ref = a.ref AND c.state = 'running' AND c.replica <> %s "
            "AND r.seen > now() - make_interval(secs => %s)) FROM asked a JOIN claimed USING (run_id)",
            ([job.kind for job, *_ in asks], [job.ref for job, *_ in asks],
             [round(slot * 1000) for _, slot, *_ in asks], [ask[2] for ask in asks], [ask[3] for ask in asks],
             run_ids, markers, [ask[4] for ask in asks], self.id, self.id, self.lease))
        won = dict(rows)
        busy = [run_id for run_id, skip in won.items() if skip]
        if busy:
            with contextlib.suppress(StorageError):
                self.db.execute("UPDATE claims SET state = 'skipped' WHERE run_id = ANY(%s)", (busy,))
        return [("taken" if run_id not in won else "skipped" if won[run_id] else "run", run_id)
                for run_id in run_ids]

    def settle(self, run_id: str, state: str) -> None:
        """A claimed run that will not run (`skipped`)."""
        with contextlib.suppress(StorageError):
            self.db.execute("UPDATE claims SET state = %s WHERE run_id = %s", (state, run_id))

    def claim_missed(self, job: "Job", slots: list[float]) -> list[float]:
        """Of `slots` this replica found missed, the ones no replica claimed (now claimed as missed)."""
        horizon = self.clock() - CLAIMS_KEPT_SECONDS
        slots = [slot for slot in slots if slot > horizon]
        if not slots:
            return []
        rows = self.db.execute(
            "INSERT INTO claims (kind, ref, slot_ms, trigger, attempt, run_id, replica, state) "
            "SELECT %s, %s, s, 'cron', 1, %s || s::text, %s, 'missed' FROM unnest(%s::bigint[]) AS s "
            "ON CONFLICT DO NOTHING RETURNING slot_ms",
            (job.kind, job.ref, f"missed:{uuid.uuid4()}:", self.id, [round(slot * 1000) for slot in slots]))
        return sorted(row[0] / 1000 for row in rows)

    def sweep(self) -> int:
        """Record `interrupted` the runs in flight of replicas whose lease ran out; how many."""
        rows = self.db.execute(
            "SELECT c.run_id, c.marker FROM claims c WHERE c.state = 'running' AND c.marker IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = c.replica "
            "AND r.seen > now() - make_interval(secs => %s)) LIMIT 1000", (self.lease,))
        for run_id, marker in rows:
            if self.recorder is not None and isinstance(marker, dict):
                self.recorder.record_leftover(marker, "interrupted: its replica stopped renewing its lease before "
                                                      "the run ended")
            self.settle(run_id, "interrupted")
        return len(rows)

    def prune(self) -> int:
        """Claims older than CLAIMS_KEPT_SECONDS, replicas gone for as long, and run records older than the
        retention (a batch at a time, so no statement holds the table long); how many run records went."""
        self.db.execute("DELETE FROM claims WHERE claimed_at < now() - make_interval(secs => %s) "
                        "AND state <> 'running'", (CLAIMS_KEPT_SECONDS,))
        self.db.execute("DELETE FROM replicas WHERE seen < now() - make_interval(secs => %s)", (CLAIMS_KEPT_SECONDS,))
        removed = 0
        while not self._stop.is_set():
            rows = self.db.execute("DELETE FROM runs WHERE seq IN (SELECT seq FROM runs WHERE logged_at < "
                                   "now() - make_interval(days => %s) ORDER BY seq LIMIT 10000) RETURNING 1",
                                   (self.retention_days,))
            removed += len(rows)
            if len(rows) < 10000:
                return removed
        return removed

    # -- threads ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        for name, target in (("lease", self._lease_loop), ("listen", self._listen_loop),
                             ("feed", self._feed_loop)):
            thread = threading.Thread(target=target, name=f"schedserver-cluster-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._threads = []

    def _lease_loop(self) -> None:
        resync_at = time.monotonic() + self.RESYNC_SECONDS
        while not self._stop.wait(self.lease / 4):
            try:
                self.heartbeat()
                if self.sweep():
                    continue
                if time.monotonic() >= resync_at:
                    resync_at = time.monotonic() + self.RESYNC_SECONDS
                    if self.on_resync is not None:
                        self.on_resync()
                if time.monotonic() - self._pruned_at > 3600:
                    self._pruned_at = time.monotonic()
                    self.prune()
            except StorageError as e:
                log.error("cluster: %s (this replica claims nothing while PostgreSQL cannot be reached)", e)
            except Exception:
                log.exception("cluster: lease renewal failed")

    def _feed_loop(self) -> None:
        while not self._stop.wait(self.FEED_SECONDS):
            try:
                if self.on_feed is not None:
                    self.on_feed()
            except StorageError as e:
                log.error("cluster: cannot read the other replicas' runs: %s", e)
            except Exception:
                log.exception("cluster: reading the other replicas' runs failed")

    def _listen_loop(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = self.db.connect()
                conn.execute(f"LISTEN {PG_CHANNEL}")
                if self.on_resync is not None:
                    self.on_resync()        # what was changed while not listening
                while not self._stop.is_set():
                    for notice in conn.notifies(timeout=1.0):
                        self._notice(notice.payload)
            except (StorageError, self.db.psycopg.Error) as e:
                log.error("cluster: change notices interrupted (%s); listening again", _pg_error(e))
                self._stop.wait(1.0)
            except Exception:
                log.exception("cluster: change notices failed")
                self._stop.wait(1.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _notice(self, payload: str) -> None:
        try:
            notice = json.loads(payload)
        except ValueError:
            return
        if isinstance(notice, dict) and notice.get("origin") != self.id and self.on_notice is not None:
            try:
                self.on_notice(notice)
            except StorageError as e:
                log.error("cluster: cannot apply a change from another replica (the next resync will): %s", e)
            except Exception:
                log.exception("cluster: applying a change from another replica failed")


###############################################################################
# Policies #####################################################################
###############################################################################

FAILED = ("error", "timeout")
ALERT_TRIES = 3
ALERT_TIMEOUT = 10.0


class Alerts:
    """Quiet alerts. `failure` once when a schedule reaches `after` consecutive failed runs (a run's retries
    count as one: only its last attempt decides), `recovery` once at the first success after that, `success` on
    every success. The streak and whether a failure was told live in the run records, so a restart neither
    sends one again nor loses one."""

    def __init__(self, state: RunState, sender: "AlertSender | None" = None, default: Notify | None = None):
        self.state = state
        self.sender = sender
        self.default = default

    def decide(self, job: Job, status: str, final: bool) -> dict:
        """The streak, failing state and alerts a run's end brings (for its record)."""
        if status not in FAILED and status != "ok" or not final:
            return {}
        streak = self.state.value(job.key, "streak") or 0
        failing = bool(self.state.value(job.key, "failing"))
        notify = job.notify or self.default
        after = notify.after if notify else 1
        events = []
        if status == "ok":
            if failing:
                events.append("recovery")
            events.append("success")
            streak, now_failing = 0, False
        else:
            streak += 1
            now_failing = failing or streak >= after
            if now_failing and not failing:
                events.append("failure")
        events = [e for e in events if notify is not None and e in notify.on]
        return {"streak": streak, "failing": now_failing, "alerts": events or None}

    def send(self, job: Job, run_id: str, result: RunResult, decided: dict, now: float) -> None:
        """Queue the alerts a run's end decided."""
        notify = job.notify or self.default
        if self.sender is None or notify is None:
            return
        for event in decided.get("alerts") or ():
            ids = ({"schedule_id": job.ref} if job.kind == "http" else {"scriptPath": job.ref})
            self.sender.send(notify.url, {
                "event": event, "kind": job.kind, **ids, "name": job.name, "run_id": run_id,
                "status": result.status, "error": result.error, "consecutive_failures": decided.get("streak"),
                "at": utc_iso(now, ms=True)})


def _shown_url(url: str) -> str:
    """A URL as logs may show it: without credentials or query string (either may hold a key)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "<query>" if parts.query else "", ""))


class AlertSender:
    """Delivers alert webhooks from a queue of its own (a run never waits for one): up to ALERT_TRIES tries
    with backoff, through the HTTP runner (egress policy, time limit). Each alert is written to an outbox file
    before it is sent and marked done after, so one a crash cut short is sent at the next start."""

    def __init__(self, runner: "HttpRunner", outbox_path: str, clock: Callable[[], float] = time.time):
        self.runner = runner
        self.outbox = outbox_path
        self.clock = clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.delivered = 0
        self.failed = 0
        self.metrics: Metrics | None = None

    def start(self) -> None:
        """Send what a previous process queued and never finished, then whatever comes."""
        pending: dict[str, dict] = {}
        try:
            with open(self.outbox, "rb") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict) and "queued" in entry:
                        pending[str(entry.get("id"))] = entry
                    elif isinstance(entry, dict):
                        pending.pop(str(entry.get("id")), None)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("cannot read %s: %s", self.outbox, e)
        try:
            atomic_write(self.outbox, b"".join(json.dumps(e).encode() + b"\n" for e in pending.values()))
        except OSError as e:
            log.error("cannot write %s: %s", self.outbox, e)
        for entry in pending.values():
            self._queue.put(entry)
        self._thread = threading.Thread(target=self._loop, name="schedserver-alerts", daemon=True)
        self._thread.start()

    def send(self, url: str, payload: dict) -> None:
        entry = {"id": str(uuid.uuid4()), "queued": utc_iso(self.clock(), ms=True), "url": url, "payload": payload}
        with self._lock:        # in the outbox and in the queue together: see _compact
            self._append(entry, locked=True)
            self._queue.put(entry)

    def close(self, timeout: float = 5.0) -> None:
        self._closed.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _append(self, entry: dict, locked: bool = False) -> None:
        if not locked:
            with self._lock:
                self._append(entry, locked=True)
            return
        try:
            with open(self.outbox, "ab") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(json.dumps(entry).encode() + b"\n")
        except OSError as e:
            log.error("cannot write %s (an alert a crash cuts short is lost): %s", self.outbox, e)

    def _loop(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            try:
                self._deliver(entry)
            except Exception:
                log.exception("alert delivery failed")
            if self._queue.empty():
                self._compact()

    def _compact(self) -> None:
        """Nothing is waiting: the outbox's delivered lines can go (it would grow for ever with `success`)."""
        with self._lock:
            try:
                if os.path.getsize(self.outbox) > 64 * 1024 and self._queue.empty():
                    atomic_write(self.outbox, b"")
            except OSError:
                pass

    def _deliver(self, entry: dict) -> None:
        payload, url = entry["payload"], entry["url"]
        shown = _shown_url(url)
        spec = {"url": url, "method": "POST", "json": payload, "headers": {}, "timeout": ALERT_TIMEOUT,
                "follow_redirects": False}
        result = None
        for attempt in range(1, ALERT_TRIES + 1):
            result = self.runner.run(spec, {"X-Schedserver-Event": str(payload.get("event"))})
            if result.status == "ok":
                break
            if attempt < ALERT_TRIES and self._closed.wait(2.0 ** (2 * attempt - 2)):
                break       # stopping: the outbox keeps it for the next start
        subject = payload.get("schedule_id") or payload.get("scriptPath")
        if self.metrics is not None and not self._closed.is_set():
            self.metrics.alerts.labels("delivered" if result is not None and result.status == "ok" else
                                       "failed").inc()
        if result is not None and result.status == "ok":
            self.delivered += 1
            log.info("alert %s for %s delivered to %s (HTTP %s)", payload.get("event"), subject, shown,
                     result.status_code)
        elif self._closed.is_set():
            return
        else:
            self.failed += 1
            log.warning("alert %s for %s not delivered to %s after %d tries: %s", payload.get("event"), subject,
                        shown, ALERT_TRIES, result.error if result else "not sent")
        self._append({"id": entry["id"], "done": result is not None and result.status == "ok"})


class OutputStore:
    """The output tails of the newest script runs, one file each (`<order>-<run id>.json`, so the oldest is
    known after a restart too), within a disk budget: the oldest are removed first."""

    def __init__(self, directory: str, budget: int):
        self.directory = directory
        self.budget = budget
        self._lock = threading.Lock()
        self._files: dict[str, tuple[str, int]] = {}    # run id -> (file name, size), oldest first
        self._total = 0
        self._order = 0

    def load(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        found = []
        for entry in os.scandir(self.directory):
            order, _, rest = entry.name.partition("-")
            if entry.name.endswith(".json") and order.isdigit():
                found.append((int(order), rest[:-5], entry.name, entry.stat().st_size))
        with self._lock:
            self._files = {run_id: (name, size) for _, run_id, name, size in sorted(found)}
            self._total = sum(size for _, size in self._files.values())
            self._order = max((order for order, *_ in found), default=0)
        self._trim()

    def keep(self, run_id: str, stdout: bytes, stderr: bytes) -> bool:
        """Keep a run's output; False when it could not be written."""
        data = json.dumps({"stdout": stdout.decode("utf-8", "replace"),
                           "stderr": stderr.decode("utf-8", "replace")}).encode()
        with self._lock:
            self._order += 1
            name = f"{self._order:012d}-{run_id}.json"
        try:
            atomic_write(os.path.join(self.directory, name), data, durable=False)
        except OSError as e:
            log.error("cannot keep the output of run %s: %s", run_id, e)
            return False
        with self._lock:
            self._files[run_id] = (name, len(data))
            self._total += len(data)
        self._trim()
        return True

    def get(self, run_id: str) -> dict | None:
        with self._lock:
            kept = self._files.get(run_id)
        if kept is None:
            return None
        try:
            with open(os.path.join(self.directory, kept[0]), "rb") as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None

    def _trim(self) -> None:
        while True:
            with self._lock:
                if self._total <= self.budget or not self._files:
                    return
                run_id = next(iter(self._files))
                name, size = self._files.pop(run_id)
                self._total -= size
            try:
                os.unlink(os.path.join(self.directory, name))
            except OSError:
                pass


class Runs:
    """The one run path: a due slot, a manual run or a retry goes worker -> recorder.begin -> runner ->
    recorder.finish -> policies (retry, alerts). Nothing else starts a run."""

    def __init__(self, recorder: Recorder, runners: dict[str, Any], pool: WorkerPool | None,
                 clock: Callable[[], float] = time.time, misfire_grace: float = 30.0,
                 scheduler: Scheduler | None = None, alerts: Alerts | None = None,
                 outputs: OutputStore | None = None, random_delay: Callable[[float], float] | None = None,
                 overlap_limit: int = 10, cluster: Cluster | None = None):
        self.recorder = recorder
        self.runners = runners
        self.pool = pool
        self.clock = clock
        self.misfire_grace = misfire_grace
        self.scheduler = scheduler
        self.alerts = alerts or Alerts(recorder.state)
        self.outputs = outputs
        self.random_delay = random_delay or (lambda most: secrets.SystemRandom().uniform(0.0, most))
        self.overlap_limit = overlap_limit     # runs of one schedule at once under `overlap: allow`
        self.cluster = cluster          # with several replicas: slots are claimed before they run
        self.stopping = False           # set by stop(): nothing new starts
        self._to_claim: list[Due] = []          # with several replicas: dues handed over, to claim together
        self._to_claim_lock = threading.Lock()

    def on_due(self, due: Due) -> None:
        """The ticker's hand-over: a worker takes it from here. With several replicas, the dues handed over
        together are claimed together, in one statement, by one worker."""
        if self.cluster is not None:
            with self._to_claim_lock:
                self._to_claim.append(due)
                if len(self._to_claim) > 1:
                    return          # a worker is to claim them already
            if self.pool is not None and self.pool.submit(self._claim_and_run):
                return
            with self._to_claim_lock:
                self._to_claim.clear()
        elif self.pool is not None and self.pool.submit(self.due, due):
            return
        log.warning("worker pool is shut down; dropped a fire of %s", due.job.key)

    def due(self, due: Due) -> None:
        """Record what was missed, then run the due slot (in a worker; one node)."""
        ready = self._ready(due)
        if ready is not None:
            self._run(ready)

    def _claim_and_run(self) -> None:
        """Claim the slots handed over since the last claim, then run the ones this replica won (one per worker)."""
        with self._to_claim_lock:
            dues, self._to_claim = self._to_claim, []
        dues = [ready for ready in map(self._ready, dues) if ready is not None]
        try:
            outcomes = self.cluster.claim([(due.job, due.slot, due.trigger, due.attempt, due.job.overlap == "forbid")
                                           for due in dues])
        except StorageError as e:
            log.error("cannot claim %d slot(s), not run: %s", len(dues), e)
            return
        for due, (outcome, run_id) in zip(dues, outcomes):
            if outcome == "run":
                if self.pool is None or not self.pool.submit(self._run, due, run_id):
                    log.warning("worker pool is shut down; dropped a fire of %s", due.job.key)
            elif outcome == "skipped":
                self._quietly(self.recorder.record_skipped, due.job, due.slot, due.trigger, due.attempt)

    def _ready(self, due: Due) -> Due | None:
        """`due`, if its slot is to be run (claimed, with several replicas) now: what it missed is recorded first;
        None when nothing runs now (only misses, a jitter or a second try put off, or too late)."""
        if self.stopping:
            return None     # handed over just before the stop: the next start counts it from the run state
        job = due.job
        if due.missed:
            self._missed(job, due.first_missed, due.last_missed, due.missed)
        if due.slot is None:
            return None
        if due.trigger == "cron" and due.at is None and job.jitter > 0 and self.scheduler is not None:
            # Jitter: the run waits a random while after its slot; punctuality is measured from then.
            self.scheduler.add_once(job, due.slot + self.random_delay(job.jitter), due.slot, "cron")
            return None
        cluster = self.cluster
        if cluster is not None and due.trigger == "cron" and not due.deferred and self.scheduler is not None \
                and not cluster.first(job.key):
            # Another live replica goes first for this schedule; this one tries later, in case that one is gone.
            self.scheduler.add_once(job, (due.at or due.slot) + cluster.takeover, due.slot, "cron", deferred=True)
            return None
        if self.clock() - (due.at or due.slot) > self.misfire_grace:
            # Every worker was busy for longer than the grace: too late to be the run that was asked for.
            self._missed(job, due.slot, due.slot, 1, due.trigger, due.attempt)
            return None
        return due

    def _run(self, due: Due, run_id: str | None = None) -> None:
        """Run a ready due slot (claimed as `run_id`, with several replicas), or record it skipped."""
        job = due.job
        if self.start(job, due.slot, due.trigger, due.attempt, planned=due.at, run_id=run_id) is None:
            if self.cluster is not None and run_id is not None:
                self.cluster.settle(run_id, "skipped")
            self._quietly(self.recorder.record_skipped, job, due.slot, due.trigger, due.attempt)

    def _missed(self, job: Job, first: float, last: float, count: int, trigger: str = "cron",
                attempt: int = 1) -> None:
        """Record slots that did not run; with several replicas, only the ones no replica claimed."""
        if self.cluster is not None and trigger == "cron":
            slots = [first]
            for slot in job.cron.iter_after(first, job.tz):
                if slot > last or len(slots) >= MISSED_SCAN_LIMIT:
                    break
                slots.append(slot)
            # Missed here, this replica being late, is not missed by the cluster: another replica may still run
            # a slot within the misfire grace. Those are looked at again once the grace is over.
            young = [slot for slot in slots if slot > self.clock() - self.misfire_grace]
            if young and self.scheduler is not None:
                self.scheduler.add_later(young[-1] + self.misfire_grace + 1,
                                         Due(job, None, len(young), young[0], young[-1]))
                slots = slots[:len(slots) - len(young)]
            if not slots:
                return
            try:
                slots = self.cluster.claim_missed(job, slots)
            except StorageError as e:
                log.error("cannot claim %s's missed slots: %s", job.key, e)
                return
            if not slots:
                return
            first, last, count = slots[0], slots[-1], len(slots)
        self._quietly(self.recorder.record_missed, job, first, last, count, trigger, attempt)

    @staticmethod
    def _quietly(record: Callable, *args: Any) -> None:
        try:
            record(*args)
        except StorageError:
            pass                # logged where it happened; a record that cannot be written stops nothing

    def begin(self, job: Job, slot: float, trigger: str, attempt: int = 1, run_id: str | None = None) -> Run | None:
        """A run in flight by the job's overlap policy; None when the policy refuses it now."""
        if job.overlap == "replace":
            for running in self.recorder.running(job.key):
                running.cancelled = "replaced"
                self.runners[job.kind].cancel(running)
        elif job.overlap == "allow" and len(self.recorder.running(job.key)) >= self.overlap_limit:
            return None
        return self.recorder.begin(job, slot, trigger, attempt, exclusive=job.overlap == "forbid", run_id=run_id)

    def start(self, job: Job, slot: float, trigger: str, attempt: int = 1,
              on_done: Callable[[Run, dict | None, ApiError | None], None] | None = None,
              run: Run | None = None, planned: float | None = None, run_id: str | None = None) -> Run | None:
        """Begin a run (unless `run` was begun already) and hand it to its runner; None when the job's overlap
        policy refuses it. `planned`: when it was to start, if not at its slot (jitter, backoff)."""
        run = run or self.begin(job, slot, trigger, attempt, run_id)
        if run is None:
            return None
        run.planned = planned

        def ended(result: RunResult) -> None:
            record, error = None, None
            if run.cancelled:
                result = replace(result, status="error", error=run.cancelled)
            decided = self._decide(run, result)
            if decided.get("alerts") and self.recorder.in_flight(run):
                # Queued (in the outbox) before the record that says they were sent: a crash in between
                # sends them at the next start instead of losing them.
                self.alerts.send(run.job, run.run_id, result, decided, self.clock())
            try:
                record = self.recorder.finish(run, result, decided)
            except StorageError as e:
                error = e
            if record is not None:
                self._after(run, record)
            if on_done is not None:
                on_done(run, record, error)

        try:
            self.runners[job.kind].start(run, ended)
        except Exception as e:          # a bug or a surprise: the run still ends, as an error
            log.exception("starting run %s of %s failed", run.run_id, job.key)
            ended(RunResult("error", self.clock(), 0, error=_short_error(e)))
        return run

    def _decide(self, run: Run, result: RunResult) -> dict:
        """What the policies make of a run's end, before it is recorded."""
        job, decided = run.job, {}
        retry_at = None
        if result.status in FAILED and job.retry is not None and run.trigger in ("cron", "retry") \
                and run.attempt <= job.retry.count and not run.cancelled and self.scheduler is not None:
            at = self.clock() + job.retry.backoff(run.attempt)
            following = self.scheduler.next_at(job.key)
            # Retries stop when the next slot arrives: one that would start in its second would only be skipped.
            if following is None or math.ceil(at) < following:
                retry_at = at
        decided["retry_at"] = retry_at
        if not run.cancelled:       # a run replaced by the next is neither a failure nor a success
            decided.update(self.alerts.decide(job, result.status, final=retry_at is None))
        if job.kind == "script" and self.outputs is not None and (result.stdout or result.stderr):
            decided["output_kept"] = self.outputs.keep(run.run_id, result.stdout, result.stderr)
        return decided

    def _after(self, run: Run, record: dict) -> None:
        retry_at = parse_optional_iso(record.get("retry_at") or record.get("nextAttemptAt"))
        if retry_at is not None and self.scheduler is not None:
            self.scheduler.add_once(run.job, retry_at, run.slot, "retry", run.attempt + 1)

    def resume_retry(self, job: Job, pending: dict | None, enabled: bool = True) -> None:
        """At a start: a retry that was waiting when the last process stopped is waited for again, or, when its
        time has passed beyond the grace (or the schedule is off now), recorded `missed`: never dropped."""
        if not isinstance(pending, dict) or not isinstance(pending.get("at"), (int, float)):
            return
        slot = pending.get("slot") if isinstance(pending.get("slot"), (int, float)) else pending["at"]
        attempt = pending.get("attempt") if isinstance(pending.get("attempt"), int) else 2
        if enabled and self.scheduler is not None and self.clock() - pending["at"] <= self.misfire_grace:
            self.scheduler.add_once(job, pending["at"], slot, "retry", attempt)
        else:
            self._quietly(self.recorder.record_missed, job, slot, slot, 1, "retry", attempt)

    def run_now(self, job: Job, trigger: str = "manual") -> tuple[Run, dict]:
        """Run `job` once, now, in the caller's thread, to its end: (run, its record). Conflict when a run of it
        is in flight and it may not overlap; ApiError (500) naming the run when its record cannot be written."""
        if self.stopping:
            raise Unavailable("the server is stopping")
        done = threading.Event()
        outcome: list = []

        def on_done(run: Run, record: dict | None, error: ApiError | None) -> None:
            outcome.append((record, error))
            done.set()

        run = self.start(job, self.clock(), trigger, on_done=on_done)
        if run is None:
            raise Conflict(f"{job.ref} is already running")
        done.wait()
        record, error = outcome[0]
        if error is not None:
            raise ApiError(error.message, status=500)
        if record is None:
            raise Unavailable(f"run {run.run_id} was interrupted: the server is stopping")
        return run, record

    def run_later(self, job: Job, trigger: str = "manual") -> Run:
        """Begin a run of `job` now and let a worker run it; its run at once (Conflict as run_now)."""
        if self.stopping or self.pool is None:
            raise Unavailable("the server is stopping")
        run = self.begin(job, self.clock(), trigger)
        if run is None:
            raise Conflict(f"{job.ref} is already running")
        if not self.pool.submit(self.start, job, run.slot, trigger, 1, None, run):
            self._quietly(self.recorder.finish, run, RunResult("interrupted", self.clock(), 0,
                                                               error="interrupted by shutdown"))
        return run

    def stop(self, deadline: float, reason: str = "interrupted by shutdown") -> int:
        """Wait for runs in flight until `deadline` (time.monotonic()), then stop and record the rest."""
        self.stopping = True
        if self.recorder.wait_idle(deadline):
            return 0
        runs = self.recorder.interrupt_all(reason)
        for run in runs:
            try:
                self.runners[run.job.kind].cancel(run)
            except Exception:
                log.exception("stopping run %s failed", run.run_id)
        return len(runs)


###############################################################################
# Services: HTTP request schedules #############################################
###############################################################################

EMPTY_BODY: Any = type("EmptyBody", (), {"__repr__": lambda self: "EMPTY_BODY"})()   # a request with no body
REQUEST_FIELDS = ("url", "method", "headers", "body", "json", "timeout", "follow_redirects")
SCHEDULE_FIELDS = ("cron", "request", "name", "enabled", "timezone", "retry", "success", "overlap", "jitter_seconds",
                   "notify")
REDACTED = "[redacted]"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def validate_request(value: Any) -> dict:
    """The `request` of an HTTP schedule, normalised; InvalidParameter naming the field otherwise."""
    if not isinstance(value, dict):
        raise InvalidParameter("request must be an object with at least a url")
    for key in value:
        if key not in REQUEST_FIELDS:
            raise InvalidParameter(f"request.{_clip(str(key))} is not a known field "
                                   f"(known: {', '.join(REQUEST_FIELDS)})")
    url = value.get("url")
    if not isinstance(url, str) or not url.strip():
        raise InvalidParameter("request.url is required and must be a string")
    url = url.strip()
    if len(url) > 8192 or any(c in url for c in "\r\n\t \x00"):
        raise InvalidParameter("request.url must be at most 8192 characters with no spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port                      # raises ValueError on a bad port
    except ValueError:
        raise InvalidParameter(f"request.url {_shown(url)} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidParameter(f"request.url {_shown(url)} must be an http or https URL with a host")
    method = value.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise InvalidParameter(f"request.method must be one of {', '.join(HTTP_METHODS)}")
    result: dict[str, Any] = {"url": url, "method": method.upper()}
    headers = value.get("headers", {})
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise InvalidParameter("request.headers must be an object of string to string")
    for name, header_value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidParameter(f"request.headers: {_shown(name)} is not a valid header name")
        if not isinstance(header_value, str) or any(c in header_value for c in "\r\n\x00"):
            raise InvalidParameter(f"request.headers.{name} must be a string without line breaks")
        try:
            header_value.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidParameter(f"request.headers.{name} must be Latin-1 text (HTTP header values cannot "
                                   "carry other characters; percent-encode them)") from None
    result["headers"] = dict(headers)
    if "body" in value and "json" in value:
        raise InvalidParameter("request.body and request.json cannot both be given")
    if "body" in value:
        if not isinstance(value["body"], str):
            raise InvalidParameter("request.body must be a string (use request.json for a JSON value)")
        try:
            value["body"].encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameter("request.body must be valid Unicode text") from None
        result["body"] = value["body"]
    if "json" in value:
        if _json_depth(value["json"]) > MAX_JSON_DEPTH:
            raise InvalidParameter(f"request.json is nested more than {MAX_JSON_DEPTH} levels deep")
        try:
            json.dumps(value["json"], allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            raise InvalidParameter("request.json must be a JSON value of valid Unicode text") from None
        result["json"] = value["json"]
    timeout = value.get("timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_HTTP_TIMEOUT:
        raise InvalidParameter(f"request.timeout must be a number of seconds, more than 0 and at most "
                               f"{MAX_HTTP_TIMEOUT:g}")
    result["timeout"] = timeout
    follow = value.get("follow_redirects", False)
    if not isinstance(follow, bool):
        raise InvalidParameter("request.follow_redirects must be true or false")
    result["follow_redirects"] = follow
    return result


def _json_depth(value: Any, limit: int = 10_000) -> int:
    """How deeply a parsed JSON value nests (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidParameter(f"{name} must be a number from {low:g} to {high:g}")
    return value


def _whole(value: Any) -> Any:
    # A JSON number without a fraction as an int (6.0 is 6: JSON does not tell them apart).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def validate_retry(value: Any) -> dict | None:
    """`retry`: {count 0-5, min_backoff_seconds, max_backoff_seconds, max_doublings}, defaults filled in."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParameter("retry must be an object such as {\"count\": 3}")
    known = ("count", "min_backoff_seconds", "max_backoff_seconds", "max_doublings")
    for key in value:
        if key not in known:
            raise InvalidParameter(f"retry.{_clip(str(key))} is not a known field (known: {', '.join(known)})")
    count = _whole(value.get("count", 0))
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 5:
        raise InvalidParameter("retry.count must be a whole number from 0 to 5")
    # The bound not given follows the one given: {"min_backoff_seconds": 600} waits at most 600 s, not 300.
    most = value.get("max_backoff_seconds")
    given = isinstance(most, (int, float)) and not isinstance(most, bool) and most >= 0.1
    least = _number(value.get("min_backoff_seconds", min(5, most) if given else 5), "retry.min_backoff_seconds",
                    0.1, 3600)
    most = _number(value.get("max_backoff_seconds", max(300, least)), "retry.max_backoff_seconds", 0.1, 86400)
    if most < least:
        raise InvalidParameter("retry.max_backoff_seconds must not be below retry.min_backoff_seconds")
    doublings = _whole(value.get("max_doublings", 5))
    if isinstance(doublings, bool) or not isinstance(doublings, int) or not 0 <= doublings <= 16:
        raise InvalidParameter("retry.max_doublings must be a whole number from 0 to 16")
    return {"count": count, "min_backoff_seconds": least, "max_backoff_seconds": most, "max_doublings": doublings}


_STATUS_CLASS = re.compile(r"^[1-5]xx$", re.IGNORECASE)


def validate_success(value: Any) -> dict | None:
    """`success`: {"status": ["2xx", 304, ...], "body_contains": "text"}; None is the default rule."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParameter("success must be an object such as {\"status\": [\"2xx\", 304]}")
    for key in value:
        if key not in ("status", "body_contains"):
            raise InvalidParameter(f"success.{_clip(str(key))} is not a known field (known: status, body_contains)")
    rule: dict[str, Any] = {}
    if "status" in value:
        codes = value["status"]
        codes = [_whole(c) for c in codes] if isinstance(codes, list) else codes
        if not isinstance(codes, list) or not codes or len(codes) > 100 or not all(
                (isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599)
                or (isinstance(c, str) and _STATUS_CLASS.fullmatch(c)) for c in codes):
            raise InvalidParameter("success.status must be a non-empty list of codes (100-599) and classes such as "
                                   "\"2xx\"")
        rule["status"] = [c.lower() if isinstance(c, str) else c for c in codes]
    if "body_contains" in value:
        text = value["body_contains"]
        if not isinstance(text, str) or not text or len(text) > 1024:
            raise InvalidParameter("success.body_contains must be a string of 1 to 1024 characters")
        rule["body_contains"] = text
    return rule or None


def validate_overlap(value: Any) -> str:
    if value not in ("forbid", "allow", "replace"):
        raise InvalidParameter("overlap must be forbid, allow or replace")
    return value


def validate_jitter(value: Any) -> float:
    return _number(value, "jitter_seconds", 0, 3600)


NOTIFY_EVENTS = ("failure", "recovery", "success")


def validate_notify(value: Any, policy: EgressPolicy | None = None, name: str = "notify") -> dict | None:
    """`notify`: {"url": webhook, "on": [...], "after": N}, defaults filled in."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParameter(f"{name} must be an object such as {{\"url\": \"https://hooks.example.com/x\"}}")
    for key in value:
        if key not in ("url", "on", "after"):
            raise InvalidParameter(f"{name}.{_clip(str(key))} is not a known field (known: url, on, after)")
    url = value.get("url")
    try:
        url = validate_request({"url": url})["url"]
    except InvalidParameter as e:
        raise InvalidParameter(e.message.replace("request.url", f"{name}.url")) from None
    host = urllib.parse.urlsplit(url).hostname or ""
    if policy is not None and policy.refuses_literal(host):
        raise InvalidParameter(f"{name}.url: address {host} is refused by the egress policy")
    on = value.get("on", ["failure", "recovery"])
    if not isinstance(on, list) or not on or not all(isinstance(e, str) and e in NOTIFY_EVENTS for e in on):
        raise InvalidParameter(f"{name}.on must be a non-empty list of {', '.join(NOTIFY_EVENTS)}")
    after = _whole(value.get("after", 1))
    if isinstance(after, bool) or not isinstance(after, int) or not 1 <= after <= 1000:
        raise InvalidParameter(f"{name}.after must be a whole number from 1 to 1000")
    return {"url": url, "on": list(dict.fromkeys(on)), "after": after}


def validate_fields(payload: Any, default_timezone: str, policy: EgressPolicy | None, *, partial: bool) -> dict:
    """A create body (or, `partial`, an edit's) checked and normalised; only the fields given when partial."""
    if not isinstance(payload, dict):
        raise InvalidParameter("body must be a JSON object")
    for key in payload:
        if key not in SCHEDULE_FIELDS:
            raise InvalidParameter(f"{_shown(key)} is not a known field (known: {', '.join(SCHEDULE_FIELDS)})")
    if partial and not payload:
        raise InvalidParameter(f"body must name at least one field to change ({', '.join(SCHEDULE_FIELDS)})")
    values: dict[str, Any] = {}
    if "cron" in payload or not partial:
        if "cron" not in payload:
            raise InvalidParameter("cron is required: a six-field expression such as '0 0 9 * * MON-FRI'")
        if not isinstance(payload["cron"], str):
            raise InvalidParameter("cron must be a string such as '0 0 9 * * MON-FRI'")
        values["cron"] = parse_cron(payload["cron"]).expression
    if "request" in payload or not partial:
        if "request" not in payload:
            raise InvalidParameter("request is required: an object with at least a url")
        request = validate_request(payload["request"])
        host = urllib.parse.urlsplit(request["url"]).hostname or ""
        if policy is not None and policy.refuses_literal(host):
            raise InvalidParameter(f"request.url: address {host} is refused by the egress policy "
                                   "([curl] allow_networks / deny_networks)")
        values["request"] = request
    if "name" in payload or not partial:
        name = payload.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_LENGTH):
            raise InvalidParameter(f"name must be a string of at most {MAX_NAME_LENGTH} characters")
        values["name"] = name
    if "enabled" in payload or not partial:
        enabled = payload.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidParameter("enabled must be true or false")
        values["enabled"] = enabled
    if "timezone" in payload or not partial:
        tz_name = payload.get("timezone", default_timezone)
        if tz_name is None:
            tz_name = default_timezone
        if not isinstance(tz_name, str):
            raise InvalidParameter("timezone must be an IANA name such as 'Europe/Berlin'")
        try:
            load_timezone(tz_name)
        except ValueError as e:
            raise InvalidParameter(f"timezone: {e}") from None
        values["timezone"] = tz_name
    if "retry" in payload or not partial:
        values["retry"] = validate_retry(payload.get("retry"))
    if "success" in payload or not partial:
        values["success"] = validate_success(payload.get("success"))
    if "overlap" in payload or not partial:
        values["overlap"] = validate_overlap(payload.get("overlap", "forbid"))
    if "jitter_seconds" in payload or not partial:
        values["jitter_seconds"] = validate_jitter(payload.get("jitter_seconds", 0))
    if "notify" in payload or not partial:
        values["notify"] = validate_notify(payload.get("notify"), policy)
    return values


def validate_create(payload: Any, default_timezone: str, policy: EgressPolicy | None = None) -> dict:
    """A create body checked and normalised (every field, defaults filled in)."""
    return validate_fields(payload, default_timezone, policy, partial=False)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except (ValueError, AttributeError, TypeError):
        return False


@dataclass(slots=True)
class HttpSchedule:
    """One HTTP request schedule's definition."""

    id: str
    cron: str
    request: dict
    name: str | None
    enabled: bool
    timezone: str
    created_at: float
    enabled_at: float
    retry: dict | None = None
    success: dict | None = None
    overlap: str = "forbid"
    jitter_seconds: float = 0
    notify: dict | None = None
    created_iso: str = field(init=False, repr=False, compare=False)
    request_summary: dict = field(init=False, repr=False, compare=False)    # what lists show: url and method

    OPTIONS = ("retry", "success", "overlap", "jitter_seconds", "notify")    # stored only when set

    def __post_init__(self) -> None:
        self.created_iso = utc_iso(self.created_at)
        self.request_summary = {"url": self.request["url"], "method": self.request["method"]}

    def definition(self) -> dict:
        d = {"id": self.id, "cron": self.cron, "request": self.request, "name": self.name,
             "enabled": self.enabled, "timezone": self.timezone,
             "created_at": utc_iso(self.created_at, ms=True), "enabled_at": utc_iso(self.enabled_at, ms=True)}
        defaults = {"overlap": "forbid", "jitter_seconds": 0}
        for name in self.OPTIONS:
            value = getattr(self, name)
            if value is not None and value != defaults.get(name):
                d[name] = value
        return d

    @classmethod
    def from_definition(cls, d: dict) -> "HttpSchedule":
        return cls(id=d["id"], cron=d["cron"], request=d["request"], name=d.get("name"),
                   enabled=bool(d["enabled"]), timezone=d.get("timezone") or "UTC",
                   created_at=parse_iso(d["created_at"]),
                   enabled_at=parse_iso(d.get("enabled_at") or d["created_at"]),
                   retry=d.get("retry"), success=d.get("success"), overlap=d.get("overlap") or "forbid",
                   jitter_seconds=d.get("jitter_seconds") or 0, notify=d.get("notify"))

    @property
    def key(self) -> str:
        return job_key("http", self.id)

    def options(self) -> dict:
        """The operating fields as the API shows them, defaults included."""
        return {"retry": self.retry or validate_retry({}), "success": self.success, "overlap": self.overlap,
                "jitter_seconds": self.jitter_seconds, "notify": self.notify}


def job_retry(retry: dict | None) -> Retry | None:
    if not retry or not retry.get("count"):
        return None
    return Retry(retry["count"], retry["min_backoff_seconds"], retry["max_backoff_seconds"], retry["max_doublings"])


def job_notify(notify: dict | None) -> Notify | None:
    return Notify(notify["url"], tuple(notify["on"]), notify["after"]) if notify else None


def history_entry(record: dict) -> dict:
    """An HTTP runs-log record as GET /{id} shows it: UTC, second precision."""
    entry = {"run_id": record.get("run_id"),
             "scheduled_at": utc_iso(parse_optional_iso(record.get("scheduled_at"))),
             "started_at": utc_iso(parse_optional_iso(record.get("started_at"))),
             "status": record.get("status"), "status_code": record.get("status_code"),
             "duration_ms": record.get("duration_ms"), "error": record.get("error")}
    if record.get("status") in ("missed", "skipped") and "count" in record:
        entry["count"] = record.get("count", 1)
    return entry


RUN_FIELDS = ("run_id", "schedule_id", "trigger", "attempt", "scheduled_at", "started_at", "finished_at", "status",
              "status_code", "duration_ms", "error")


def run_object(record: dict) -> dict:
    """An HTTP runs-log record as the API's run object."""
    obj = {name: record.get(name) for name in RUN_FIELDS}
    obj["trigger"] = obj["trigger"] or "cron"
    obj["attempt"] = obj["attempt"] or 1
    if record.get("response") is not None:
        obj["response"] = record["response"]
    if record.get("status") in ("missed", "skipped") and "count" in record:
        obj["count"] = record["count"]
    if record.get("retry_at"):
        obj["next_attempt_at"] = record["retry_at"]
    return obj


def running_object(run: Run) -> dict:
    """A run still in flight as the API's run object (status `running`)."""
    return {"run_id": run.run_id, "schedule_id": run.job.ref, "trigger": run.trigger, "attempt": run.attempt,
            "scheduled_at": utc_iso(run.slot, ms=True), "started_at": utc_iso(run.started, ms=True),
            "finished_at": None, "status": "running", "status_code": None, "duration_ms": None, "error": None}


def encode_cursor(position: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict:
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(position, dict) and (isinstance(position.get("offset"), int)        # files
                                           or isinstance(position.get("seq"), int)):         # PostgreSQL
            return position
    except (ValueError, TypeError):
        pass
    raise InvalidParameter("cursor is not one this server gave (use next_cursor as it came)")


class SyncSlots:
    """How many requests may wait for a run to end at once (a manual trigger holds a request thread)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise Unavailable(f"{self.limit} manual runs are waiting already (the most that may wait at once); "
                              "try again when one has finished")
        try:
            yield
        finally:
            self._slots.release()


class HttpSchedules:
    """The HTTP request schedule surface: create, list, get, toggle, delete; runs go through Runs."""

    def __init__(self, store: JournalStore, scheduler: Scheduler, runs: Runs, state: RunState,
                 runs_log: NdjsonLog, clock: Callable[[], float] = time.time, default_timezone: str = "UTC",
                 policy: EgressPolicy | None = None, sync: "SyncSlots | None" = None):
        self.store = store
        self.sync = sync or SyncSlots(4)
        self.scheduler = scheduler
        self.runs = runs
        self.state = state
        self.runs_log = runs_log
        self.clock = clock
        self.default_timezone = default_timezone
        self.policy = policy
        self._lock = threading.Lock()           # the dicts below (memory only)
        self._write_lock = threading.Lock()     # one change at a time: stored, then applied in that order
        self._schedules: dict[str, HttpSchedule] = {}
        self._order: list[tuple[float, int, str]] = []      # (created_at, arrival, id): listing order
        self._order_keys: dict[str, tuple[float, int, str]] = {}
        self._arrivals = itertools.count()

    def load(self) -> None:
        """Read the stored definitions and schedule the enabled ones (missed slots counted from the last)."""
        for definition in self.store.load():
            try:
                schedule = HttpSchedule.from_definition(definition)
                job = self._job(schedule)       # a bad expression or zone stops here
                if not isinstance(schedule.request.get("url"), str) or schedule.request.get("method") not in \
                        HTTP_METHODS:
                    raise ValueError("its request has no url or method")
            except (KeyError, TypeError, ValueError, AttributeError, ApiError) as e:
                # Never overwritten, never half-loaded: the file is left for inspection.
                raise StartupError(f"{self.store.path}: not a valid schedules file: schedule "
                                   f"{_shown(definition.get('id'))} ({getattr(e, 'message', None) or e!r}); left as "
                                   "it is for inspection, restore it from a backup or fix it") from None
            self._add(schedule)
            if schedule.enabled:
                self._register(schedule, job=job)
            self.runs.resume_retry(job, self.state.value(schedule.key, "retry"), schedule.enabled)

    # -- the API ---------------------------------------------------------------------------------------------
    def create(self, payload: Any) -> dict:
        values = validate_create(payload, self.default_timezone, self.policy)
        now = self.clock()
        schedule = HttpSchedule(id=str(uuid.uuid4()), created_at=now, enabled_at=now, **values)
        with self._write_lock:
            self._store(lambda: self.store.put(schedule.definition()), "create schedule", "SCHEDULE_CREATION_FAILED")
            with self._lock:
                self._add(schedule)
            if schedule.enabled:
                self._register(schedule)
        result = self._summary(schedule)
        result["request"] = dict(schedule.request)
        result.update(schedule.options())
        return result

    def list(self, page: int = 1, limit: int | None = None) -> dict:
        """Newest first. Without `limit` every schedule is on page 1, and meta.limit is how many that is
        (at least 1, so a client may divide by it)."""
        with self._lock:
            total = len(self._order)
            newest_first = (self._schedules[sid] for _, _, sid in reversed(self._order))
            if limit is None:
                chosen = list(newest_first) if page == 1 else []
            else:
                chosen = list(itertools.islice(newest_first, (page - 1) * limit, page * limit))
        nexts = self.scheduler.next_of([s.key for s in chosen])
        items = [self._summary(s, next_at if s.enabled else None) for s, next_at in zip(chosen, nexts)]
        return {"items": items, "meta": {"page": page, "limit": limit if limit is not None else max(1, total),
                                         "total": total}}

    def get(self, schedule_id: str, redact: bool = False) -> dict:
        schedule = self.find(schedule_id)
        result = self._summary(schedule)
        result["request"] = _redacted(schedule.request) if redact else dict(schedule.request)
        result.update(schedule.options())
        if redact and result["notify"]:
            result["notify"] = {**result["notify"], "url": REDACTED}     # webhook URLs often carry a key
        history = self.history(schedule.id)
        result["last_status"] = history[0]["status"] if history else None
        result["history"] = history
        return result

    def update(self, schedule_id: str, payload: Any) -> dict:
        """PATCH: change any of the schedule's fields (validated as at create); the id, created_at and runs are
        kept, the next run is worked out again from now."""
        self.find(schedule_id)          # 404 before complaining about the body
        values = validate_fields(payload, self.default_timezone, self.policy, partial=True)
        with self._write_lock:
            schedule = self.find(schedule_id)
            now = self.clock()
            if values.get("enabled") and not schedule.enabled:
                values["enabled_at"] = now
            changed = replace(schedule, **values)
            job = self._job(changed)
            self._store(lambda: self.store.put(changed.definition()), "update schedule")
            with self._lock:
                self._schedules[schedule.id] = changed
            if changed.enabled:
                self.scheduler.add(job, now)
            else:
                self.scheduler.remove(changed.key)
        return self.get(schedule_id)

    def run_now(self, schedule_id: str, wait: bool = True) -> tuple[int, dict]:
        """Send the request once, now, whatever `enabled` says: (200, the finished run), or with wait=False
        (202, {"run_id"}) at once. 409 RUN_IN_PROGRESS when a run is in flight and it may not overlap."""
        job = self._job(self.find(schedule_id))
        try:
            if not wait:
                return 202, {"run_id": self.runs.run_later(job).run_id}
            with self.sync.hold():
                _, record = self.runs.run_now(job)
        except Conflict:
            raise Conflict(f"a run of {schedule_id} is in progress (overlap: forbid)",
                           code="RUN_IN_PROGRESS") from None
        return 200, run_object(record)

    def list_runs(self, schedule_id: str, limit: int = 50, statuses: tuple[str, ...] = (),
                  since: float | None = None, cursor: str | None = None) -> dict:
        """A schedule's runs newest first, a page at a time; `next_cursor` continues just before the last one."""
        schedule = self.find(schedule_id)
        before = decode_cursor(cursor) if cursor else None
        items: list[dict] = []
        last: dict | None = None
        if not cursor and (not statuses or "running" in statuses):
            end = self.runs_log.position()      # where a page filled by runs in flight goes on from
            items = [running_object(run) for run in self.runs.recorder.running(schedule.key)][:limit]
            if len(items) >= limit and end.get("head"):
                last = end
        if self.state.get(schedule.key) and len(items) < limit:
            for record, position in self.runs_log.read_newest(contains=schedule.id.encode(), before=before):
                if record.get("schedule_id") != schedule.id:
                    continue
                if since is not None and (parse_optional_iso(record.get("finished_at") or record.get("ts"))
                                          or 0.0) < since:
                    break       # lines are written as runs end: every earlier one ended earlier still
                if statuses and record.get("status") not in statuses:
                    continue
                items.append(run_object(record))
                last = position
                if len(items) >= limit:
                    break
        return {"items": items, "next_cursor": encode_cursor(last) if len(items) >= limit and last else None}

    def get_run(self, schedule_id: str, run_id: str) -> dict:
        schedule = self.find(schedule_id)
        for run in self.runs.recorder.running(schedule.key):
            if run.run_id == run_id:
                return running_object(run)
        if _is_uuid(run_id) and self.state.get(schedule.key):
            for record, _ in self.runs_log.read_newest(contains=run_id.encode()):
                if record.get("run_id") == run_id and record.get("schedule_id") == schedule.id:
                    return run_object(record)
        raise NotFound("Run not found", code="RUN_NOT_FOUND")

    def history(self, schedule_id: str, limit: int = HISTORY_SIZE) -> list[dict]:
        """The newest runs of a schedule, newest first, from the runs log."""
        if not self.state.get(job_key("http", schedule_id)):
            return []           # never ran: no need to read the whole log to learn that
        entries = []
        for record, _ in self.runs_log.read_newest(contains=schedule_id.encode()):
            if record.get("schedule_id") == schedule_id:
                entries.append(history_entry(record))
                if len(entries) >= limit:
                    break
        return entries

    def toggle(self, schedule_id: str, payload: Any = EMPTY_BODY) -> dict:
        """Set `enabled` from `{"enabled": bool}`; an empty body (EMPTY_BODY) flips it."""
        if payload is EMPTY_BODY:
            wanted = None
        elif isinstance(payload, dict) and set(payload) == {"enabled"} and isinstance(payload["enabled"], bool):
            wanted = payload["enabled"]
        else:
            raise InvalidParameter('body must be {"enabled": true} or {"enabled": false}, or empty to flip the state')
        with self._write_lock:
            schedule = self.find(schedule_id)
            enabled = (not schedule.enabled) if wanted is None else wanted
            if enabled != schedule.enabled:
                now = self.clock()
                changed = replace(schedule, enabled=enabled, enabled_at=now if enabled else schedule.enabled_at)
                self._store(lambda: self.store.put(changed.definition()), "toggle schedule")
                with self._lock:
                    self._schedules[schedule.id] = schedule = changed
                if enabled:
                    self._register(schedule, anchor=now)
                else:
                    self.scheduler.remove(schedule.key)
        return {"id": schedule.id, "enabled": enabled, "next_run": utc_iso(self._next_run(schedule))}

    def delete(self, schedule_id: str) -> dict:
        with self._write_lock:
            schedule = self.find(schedule_id)
            self._store(lambda: self.store.delete(schedule.id), "delete schedule")
            self._drop(schedule)
        return {"id": schedule.id}

    # -- changes another replica made (several replicas on PostgreSQL) --------------------------------------
    def refresh(self, schedule_id: str) -> None:
        """Take the stored definition of `schedule_id` as another replica left it: created, changed or deleted."""
        with self._write_lock:
            definition, version = self.store.fetch(schedule_id)
            with self._lock:
                current = self._schedules.get(schedule_id)
            if definition is None:
                if current is not None:
                    self._drop(current)
                self.store.taken(schedule_id, None, None)
                return
            try:
                schedule = HttpSchedule.from_definition(definition)
                job = self._job(schedule)
            except (KeyError, TypeError, ValueError, AttributeError, ApiError) as e:
                log.error("schedule %s from another replica is not valid, ignored: %s", _shown(schedule_id),
                          getattr(e, "message", None) or repr(e))
                return
            with self._lock:
                if current is None:
                    self._add(schedule)
                else:
                    self._schedules[schedule_id] = schedule
            self.store.taken(schedule_id, definition, version)
            if not schedule.enabled:
                self.scheduler.remove(schedule.key)
            elif current is None or not current.enabled:
                self._register(schedule, job=job)
            elif current != schedule:
                self.scheduler.add(job, self.clock())

    def resync(self) -> None:
        """Take the changes no notice brought: every stored version that differs from the one held."""
        stored = self.store.stored_versions()
        held = dict(self.store.versions)
        for schedule_id in sorted(set(held) | set(stored)):
            if held.get(schedule_id) != stored.get(schedule_id):
                self.refresh(schedule_id)

    def find(self, schedule_id: str) -> HttpSchedule:
        with self._lock:
            schedule = self._schedules.get(schedule_id) if _is_uuid(schedule_id) else None
        if schedule is None:
            raise NotFound("Schedule not found", code="SCHEDULE_NOT_FOUND")
        return schedule

    def count(self) -> int:
        with self._lock:
            return len(self._schedules)

    def count_enabled(self) -> int:
        with self._lock:
            return sum(1 for s in self._schedules.values() if s.enabled)

    # -- internals -------------------------------------------------------------------------------------------
    def _drop(self, schedule: HttpSchedule) -> None:
        """Forget a deleted schedule: memory, listing order, scheduler, run state. Write lock held."""
        with self._lock:
            self._schedules.pop(schedule.id, None)
            key = self._order_keys.pop(schedule.id, None)
            if key is not None:
                del self._order[bisect.bisect_left(self._order, key)]
        self.scheduler.remove(schedule.key)
        self.state.forget(schedule.key)

    def _add(self, schedule: HttpSchedule) -> None:
        """Hold `schedule` in memory and in the listing order (by created_at, then by arrival). Lock held."""
        key = (schedule.created_at, next(self._arrivals), schedule.id)
        self._schedules[schedule.id] = schedule
        self._order_keys[schedule.id] = key
        bisect.insort(self._order, key)

    def _store(self, change: Callable[[], None], action: str, code: str = "STORAGE_ERROR") -> None:
        try:
            change()
        except OSError as e:
            log.error("cannot %s: %s: %s", action, self.store.path, e)
            raise StorageError(f"Failed to {action}: the schedules file could not be written", code=code) from None

    def _summary(self, s: HttpSchedule, next_run: float | None | object = ...) -> dict:
        if next_run is ...:
            next_run = self._next_run(s)
        return {"id": s.id, "cron": s.cron, "enabled": s.enabled, "created_at": s.created_iso,
                "last_run": utc_iso(self.state.value(s.key, "run_at")), "name": s.name, "timezone": s.timezone,
                "next_run": utc_iso(next_run), "request": dict(s.request_summary)}

    def _next_run(self, s: HttpSchedule) -> float | None:
        return self.scheduler.next_at(s.key) if s.enabled else None

    @staticmethod
    def _job(s: HttpSchedule) -> Job:
        return Job(key=s.key, kind="http", ref=s.id, cron=parse_cron(s.cron), tz=load_timezone(s.timezone),
                   target=HttpTarget(s.request, s.success), overlap=s.overlap, retry=job_retry(s.retry),
                   jitter=float(s.jitter_seconds), notify=job_notify(s.notify), name=s.name)

    def _register(self, s: HttpSchedule, anchor: float | None = None, job: Job | None = None) -> None:
        if anchor is None:
            anchor = max(s.enabled_at, self.state.value(s.key, "slot") or 0.0)
        self.scheduler.add(job or self._job(s), anchor)


def _redacted(request: dict) -> dict:
    """A request as a read-only token sees it: header names without their values, no body."""
    shown = dict(request)
    shown["headers"] = {name: REDACTED for name in request.get("headers") or {}}
    for secret in ("body", "json"):
        if secret in shown:
            shown[secret] = REDACTED
    return shown


###############################################################################
# Services: script schedules ###################################################
###############################################################################

SKIPPED_DIRS = ("__pycache__", "node_modules")
COMMENT_MARKERS = ("/*", "*/", "//", "--", "#", ";", "*")
DEFAULT_INTERPRETERS: dict[str, tuple[tuple[str, ...], ...]] = {
    ".py": ((sys.executable,),), ".sh": (("/bin/sh",),), ".bash": (("bash",),),
    ".js": (("node",),), ".mjs": (("node",),), ".cjs": (("node",),),
    ".ts": (("deno", "run", "-A"), ("bun",), ("tsx",)),
}
DEFAULT_PREFLIGHT: dict[str, tuple[str, ...]] = {
    ".sh": ("/bin/sh", "-n"), ".bash": ("bash", "-n"),
    ".js": ("node", "--check"), ".mjs": ("node", "--check"), ".cjs": ("node", "--check"),
}
_DIRECTIVE = re.compile(r"^@([A-Za-z][A-Za-z0-9_-]*)(?:\s+(.*))?$")
_DURATION = re.compile(r"^([0-9]{1,12})\s*(ms|s|m|h)?$")
_COMPILE_PYTHON = ("<compile>",)     # the preflight "command" for Python: compiled in this process


class RegistrationError(SchedserverError, ValueError):
    """Why a script cannot be scheduled, in words a person can act on."""


def parse_directives(head: str) -> list[tuple[str, str]]:
    """`(name, value)` pairs from a script's leading comment block (shebang, blank and comment lines)."""
    directives = []
    for number, line in enumerate(head.splitlines()):
        text = line.strip()
        if not text or (number == 0 and text.startswith("#!")):
            continue
        marker = next((m for m in COMMENT_MARKERS if text.startswith(m)), None)
        if marker is None:
            break                   # the first line that is not a comment ends the header
        text = text[len(marker):].strip()
        if text.endswith("*/"):
            text = text[:-2].strip()
        match = _DIRECTIVE.match(text)
        if match:
            directives.append((match.group(1).lower(), (match.group(2) or "").strip()))
    return directives


def parse_timeout(value: str) -> int:
    """`@timeout` as milliseconds: `500`, `500ms`, `30s`, `5m`, `1h`."""
    match = _DURATION.match(value.strip().lower())
    if not match:
        raise RegistrationError(f"invalid @timeout: {_shown(value)} (use milliseconds or a unit: 500ms, 30s, 5m)")
    ms = int(match.group(1)) * {"ms": 1, None: 1, "s": 1000, "m": 60000, "h": 3600000}[match.group(2)]
    if not 0 < ms <= MAX_SCRIPT_TIMEOUT_MS:
        raise RegistrationError(f"invalid @timeout: {_shown(value)} (must be more than 0 and at most 24h)")
    return ms


def parse_retry(value: str) -> Retry | None:
    """`@retry <count> [min backoff]`: `3`, or `3 10s` (the backoff as @timeout reads a duration)."""
    words = value.split()
    if not 1 <= len(words) <= 2 or not re.fullmatch(r"[0-9]{1,2}", words[0]) or int(words[0]) > 5:
        raise RegistrationError(f"invalid @retry: {_shown(value)} (use a count from 0 to 5, and optionally the "
                                "first wait: @retry 3 10s)")
    try:
        least = parse_timeout(words[1]) / 1000 if len(words) == 2 else 5.0
    except RegistrationError:
        raise RegistrationError(f"invalid @retry: {_shown(value)} (the wait is a duration such as 10s or 2m)") \
            from None
    if not 0.1 <= least <= 3600:
        raise RegistrationError(f"invalid @retry: {_shown(value)} (the first wait must be from 100ms to 1h)")
    count = int(words[0])
    return Retry(count, least, max(least, 300.0)) if count else None


def script_identity(rel: str) -> dict[str, str]:
    """The contract's names for a script: subdomain and execId are its first directory ('default' at top level)."""
    parts = rel.split("/")
    exec_id = parts[0] if len(parts) > 1 else "default"
    return {"scriptRel": rel, "subdomain": exec_id, "execId": exec_id, "vmCacheKey": f"{exec_id}:{rel}"}


def discover_scripts(root: str) -> list[str]:
    """scriptRel of every regular file under `root`, skipping hidden entries, __pycache__ and node_modules;
    symlinks are followed only when they stay inside `root`, and never into directories."""
    real_root = os.path.realpath(root)
    found = []
    directories = [""]
    while directories:
        directory = directories.pop()
        try:
            entries = list(os.scandir(os.path.join(root, directory)))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{directory}/{entry.name}" if directory else entry.name
            try:
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if os.path.isfile(real) and os.path.commonpath([real_root, real]) == real_root:
                        found.append(rel)
                elif entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIPPED_DIRS:
                        directories.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    found.append(rel)
            except OSError:
                continue
    return sorted(found)


@dataclass
class ScriptDefinition:
    """A script with a usable @schedule: what it is, how it runs, what it says about itself."""

    rel: str
    path: str
    cron: Any
    timeout_ms: int
    argv: tuple[str, ...]
    description: str | None = None
    token: bool = False
    retry: Retry | None = None
    overlap: str = "forbid"
    notify: Notify | None = None

    def signature(self) -> tuple:
        """What a reload compares to tell a kept script from a changed one."""
        return (self.cron.expression, self.timeout_ms, self.argv, self.description, self.token, self.retry,
                self.overlap, self.notify)

    @functools.cached_property
    def listed(self) -> dict:
        """What the list shows of it that never changes."""
        return {"scriptPath": self.path, **script_identity(self.rel), "expression": self.cron.expression,
                "timeoutMs": self.timeout_ms}

    @functools.cached_property
    def key(self) -> str:
        return job_key("script", self.rel)


class ScriptCatalog:
    """What the scripts dir holds: discovery, directives, how to run each script, and its syntax check.

    Checks are remembered by path, size, mtime and interpreter (`checked`, saved by the caller), so a restart
    does not check a thousand unchanged scripts again.
    """

    def __init__(self, scripts_dir: str, default_timeout_ms: int = 30000,
                 interpreters: dict[str, tuple[str, ...]] | None = None,
                 preflight: dict[str, tuple[str, ...]] | None = None,
                 check: Callable[[list[str], str, dict, float], tuple[int | str, bytes]] | None = None,
                 environment: Callable[[dict[str, str]], dict[str, str]] | None = None,
                 cancelled: threading.Event | None = None):
        self.scripts_dir = os.path.abspath(scripts_dir)
        self.cancelled = cancelled or threading.Event()     # set: the server is stopping, scans stop checking
        self.default_timeout_ms = default_timeout_ms
        self.interpreters = dict(interpreters or {})
        self.preflight = dict(preflight or {})
        self.check = check or _run_check
        self.environment = environment or (lambda extra: {**os.environ, **extra})
        self._lock = threading.Lock()
        self.checked: dict[str, tuple] = {}     # path -> (size, mtime_ns, interpreter, problem)

    def scan(self) -> tuple[dict[str, ScriptDefinition], list[dict]]:
        """Every script with a usable @schedule, and why each other one with a @schedule cannot run. Any
        failure inspecting one script is that script's problem, never the scan's."""
        rels = discover_scripts(self.scripts_dir)
        with ThreadPoolExecutor(max_workers=PREFLIGHT_THREADS, thread_name_prefix="schedserver-check") as pool:
            outcomes = list(pool.map(self._outcome, rels))
        found, failed = {}, []
        for rel, outcome in zip(rels, outcomes):
            if isinstance(outcome, dict):
                failed.append(outcome)
            elif outcome is not None:
                found[rel] = outcome
        return found, failed

    def _outcome(self, rel: str) -> ScriptDefinition | dict | None:
        if self.cancelled.is_set():
            return {"path": rel, "reason": "not inspected: the server is stopping"}
        if not _is_utf8(rel):
            return {"path": _printable(rel), "reason": "file name is not valid UTF-8; rename it"}
        try:
            return self.inspect(rel)
        except (RegistrationError, OSError) as e:
            return {"path": rel, "reason": str(e)}
        except Exception as e:          # MemoryError from compile(), a bug: this script's problem only
            log.warning("inspecting %s failed: %s", rel, _short_error(e))
            return {"path": rel, "reason": f"cannot inspect: {_short_error(e)}"}

    def inspect(self, rel: str) -> ScriptDefinition | None:
        """The definition for one script, None if it has no @schedule; RegistrationError if it cannot run."""
        path = os.path.join(self.scripts_dir, *rel.split("/"))
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER_BYTES)
        except OSError as e:
            raise RegistrationError(f"cannot read: {e.strerror}") from None
        directives = parse_directives(head.decode("utf-8", errors="replace"))
        names = [name for name, _ in directives]
        if "schedule" not in names:
            return None
        if "websocket" in names:
            raise RegistrationError("@websocket scripts cannot be scheduled")
        if names.count("schedule") > 1:
            raise RegistrationError("multiple @schedule directives")
        values = {name: value for name, value in directives}
        expression = values["schedule"]
        try:
            cron = parse_cron(expression)
        except InvalidCron as e:
            detail = e.message.split(": ", 1)[-1].split("; use 6 fields")[0]
            raise RegistrationError(f"Invalid cron expression: {_shown(expression)} ({detail})") from None
        timeout_ms = parse_timeout(values["timeout"]) if "timeout" in values else self.default_timeout_ms
        retry = parse_retry(values["retry"]) if "retry" in values else None
        overlap = values.get("overlap", "forbid")
        if overlap not in ("forbid", "allow", "replace"):
            raise RegistrationError(f"invalid @overlap: {_shown(overlap)} (use forbid, allow or replace)")
        notify = None
        if "notify" in values or "notify-on" in values:
            if "notify" not in values:
                raise RegistrationError("@notify-on needs a @notify <url>")
            on = [e.strip() for e in values.get("notify-on", "failure,recovery").split(",") if e.strip()]
            try:
                notify = job_notify(validate_notify({"url": values["notify"], "on": on}, name="@notify"))
            except InvalidParameter as e:
                raise RegistrationError(e.message.replace("@notify.on", "@notify-on")) from None
        argv = self._command_for(path, head)
        self._preflight(path, _interpreter_name(argv, head))
        return ScriptDefinition(rel=rel, path=path, cron=cron, timeout_ms=timeout_ms, argv=argv,
                                description=values.get("description") or None, token="token" in names,
                                retry=retry, overlap=overlap, notify=notify)

    def _command_for(self, path: str, head: bytes) -> tuple[str, ...]:
        if head.startswith(b"#!") and os.access(path, os.X_OK):
            return (path,)
        ext = os.path.splitext(path)[1].lower()
        if ext in self.interpreters:
            candidates: tuple[tuple[str, ...], ...] = (self.interpreters[ext],)
        else:
            candidates = DEFAULT_INTERPRETERS.get(ext, ())
        if not candidates:
            raise RegistrationError(f"no way to run it: not executable with a shebang, and no interpreter for "
                                    f"{ext or 'files without an extension'!r} (set [exec.interpreters] "
                                    f"\"{ext or '.ext'}\" in the config)")
        for command in candidates:
            program = shutil.which(command[0])
            if program:
                return (program, *command[1:], path)
        tried = ", ".join(c[0] for c in candidates)
        raise RegistrationError(f"no interpreter for {ext!r}: {tried} not found on PATH (install it or set "
                                f"[exec.interpreters] \"{ext}\" in the config)")

    def _preflight(self, path: str, interpreter: str | None) -> None:
        """The syntax check, remembered by path, size, mtime and the interpreter that will run the script."""
        st = os.stat(path)
        with self._lock:
            cached = self.checked.get(path)
        if cached and tuple(cached[:3]) == (st.st_size, st.st_mtime_ns, interpreter):
            problem = cached[3]
        else:
            problem, lasting = self._syntax_problem(path, interpreter)
            if lasting:         # a check that timed out or was cut short may pass next time: not remembered
                with self._lock:
                    self.checked[path] = (st.st_size, st.st_mtime_ns, interpreter, problem)
        if problem:
            raise RegistrationError(f"preflight failed: {problem}")

    def _syntax_problem(self, path: str, interpreter: str | None) -> tuple[str | None, bool]:
        """What the check found (None: nothing), and whether that holds for this file as it is."""
        command = self._preflight_command(path, interpreter)
        if command == _COMPILE_PYTHON:
            return _compile_python(path), True
        if command is None:
            return None, True
        try:
            status, output = self.check([*command, path], os.path.dirname(path), self.environment({}),
                                        PREFLIGHT_TIMEOUT_SECONDS)
        except OSError as e:
            return f"{command[0]}: {e.strerror}", False
        if status == "timeout":
            return f"{command[0]} took longer than {PREFLIGHT_TIMEOUT_SECONDS:g} s", False
        if status == "cancelled":
            return "not checked: the server is stopping", False
        if status == 0:
            return None, True
        return _check_problem(output, status), True

    def _preflight_command(self, path: str, interpreter: str | None) -> tuple[str, ...] | None:
        """The check for the interpreter that will run the script (a `#!/bin/bash` .sh file gets `bash -n`, not
        `sh -n`); by extension when the interpreter is not one we know; [exec.preflight] first. None: no check
        (or its program is not installed); _COMPILE_PYTHON: compiled here."""
        ext = os.path.splitext(path)[1].lower()
        command = self.preflight.get(ext)
        if command is None and interpreter:
            if interpreter.startswith("python"):
                return _COMPILE_PYTHON
            if interpreter in ("sh", "dash", "bash", "zsh", "ksh", "mksh"):
                command = (interpreter, "-n")
            elif interpreter in ("node", "nodejs"):
                command = (interpreter, "--check")
        if command is None and (not interpreter or interpreter in ("env",)):
            if ext == ".py":
                return _COMPILE_PYTHON
            command = DEFAULT_PREFLIGHT.get(ext)
        if not command or not shutil.which(command[0]):
            return None
        return command


def _run_check(argv: list[str], cwd: str, env: dict, timeout: float) -> tuple[int | str, bytes]:
    """A syntax check run to its end: (exit status, or "timeout", and its output)."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, cwd=cwd,
                              env=env, start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout", b""
    return done.returncode, done.stderr or done.stdout


def _interpreter_name(argv: tuple[str, ...], head: bytes) -> str | None:
    """The base name of the program that runs a script: from its shebang when it runs directly."""
    if len(argv) == 1 and head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
        if words and os.path.basename(words[0]) == "env":
            words = [w for w in words[1:] if not w.startswith("-")]
        return os.path.basename(words[0]) if words else None
    return os.path.basename(argv[0]) if argv else None


def _check_problem(output: bytes, status: int | str) -> str:
    """A failed syntax check in one line: the first non-blank line of what it wrote, else its exit status."""
    text = output.decode("utf-8", errors="replace")
    return next((line.strip() for line in text.splitlines() if line.strip()), f"exit status {status}")[:300]


def _compile_python(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            compile(f.read(), path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"[:300]
    except (MemoryError, RecursionError) as e:      # a deeply nested expression: still only a failed check
        return f"{type(e).__name__}: the code nests too deeply to compile"
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _printable(text: str) -> str:
    """A file name that may hold undecodable bytes (as surrogates), made safe to show."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_INTERNAL_FIELDS = ("streak", "failing", "alerts", "outputKept")


def exec_entry(record: dict) -> dict:
    """A fires-log record as the script surface shows it: without what the policies keep for themselves."""
    return {key: value for key, value in record.items() if key not in _INTERNAL_FIELDS}


def script_environment(secrets_: tuple[str, ...]) -> Callable[[dict[str, str]], dict[str, str]]:
    """The environment scripts get: the server's, minus API tokens (and any variable holding one), plus extra."""
    def environment(extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("SCHEDSERVER_TOKEN", "SCHEDSERVER_READ_TOKEN")
               and not any(secret in v for secret in secrets_)}
        env.update(extra)
        return env
    return environment


class ScriptSchedules:
    """The script schedule surface: reload (scan and register), list, history, trigger."""

    def __init__(self, catalog: ScriptCatalog, scheduler: Scheduler, runs: Runs, state: RunState,
                 fires_log: NdjsonLog, registry_path: str | None = None, clock: Callable[[], float] = time.time,
                 timezone_name: str = "UTC", notify: Callable[[str], Any] | None = None,
                 sync: SyncSlots | None = None, outputs: OutputStore | None = None, registry: Any = None,
                 on_reload: Callable[[], None] | None = None):
        self.catalog = catalog
        self.scheduler = scheduler
        self.runs = runs
        self.state = state
        self.fires = fires_log
        self.registry = registry or JsonFile(registry_path or os.path.join(os.path.dirname(fires_log.path),
                                                                           "exec-registered.json"))
        self.on_reload = on_reload          # a reload asked for here (API, SIGHUP): tell the other replicas
        self.clock = clock
        self.tz = load_timezone(timezone_name)
        self.notify = notify or (lambda message: None)      # systemd notifications around reloads
        self.sync = sync or SyncSlots(4)
        self.outputs = outputs
        self._lock = threading.Lock()               # guards the dicts below (memory only)
        self._reload_lock = threading.Lock()        # one reload at a time
        self._registered: dict[str, ScriptDefinition] = {}
        self._registered_at: dict[str, float] = {}  # scriptRel -> when first registered (kept across restarts)
        self._at_last_stop: set[str] | None = None  # registered when the last process stopped (None: unknown)
        self._closed = False

    # -- registration ----------------------------------------------------------------------------------------
    def load(self) -> dict:
        """At start: what was registered before (and the remembered checks), then a reload."""
        try:
            saved = self.registry.load(None)
        except StartupError as e:
            log.warning("%s; every script is taken as registered before", e)
            saved = None
        if isinstance(saved, dict):
            registered = saved.get("registered")
            if isinstance(registered, dict):            # scriptRel -> registeredAt
                self._registered_at = {rel: t for rel, when in registered.items()
                                       if (t := parse_optional_iso(when)) is not None}
                self._at_last_stop = set(registered)
            elif isinstance(registered, list):          # an older layout: names only
                self._at_last_stop = {rel for rel in registered if isinstance(rel, str)}
            for path, entry in (saved.get("preflight") or {}).items():
                if isinstance(entry, list) and len(entry) == 4:
                    self.catalog.checked[path] = tuple(entry)
        return self.reload(reason="start")

    def reload(self, dry_run: bool = False, *, reason: str = "api") -> dict:
        """Rescan and reconcile; the answer lists added, kept, changed, removed and failed scripts. `reason`
        ("start", "api", "SIGHUP") goes into the one summary line a reload logs."""
        with self._reload_lock:
            if self._closed:
                log.info("scripts not reloaded (%s): the server is stopping", reason)
                return {"dry_run": dry_run, "added": [], "kept": [], "changed": [], "removed": [], "failed": []}
            notifying = not dry_run and reason != "start"
            if notifying:
                self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
            try:
                found, failed = self.catalog.scan()
                if self.catalog.cancelled.is_set():
                    log.info("scripts not reloaded (%s): the server is stopping", reason)
                    return {"dry_run": dry_run, "added": [], "kept": [], "changed": [], "removed": [], "failed": []}
                with self._lock:
                    current = dict(self._registered)
                kept = sorted(set(found) & set(current))
                changed = [rel for rel in kept if found[rel].signature() != current[rel].signature()]
                added, removed = sorted(set(found) - set(current)), sorted(set(current) - set(found))
                if not dry_run:
                    self._apply(found, added, changed, removed, failed, reason)
            finally:
                if notifying:
                    self.notify("READY=1")
        return {"dry_run": dry_run, "added": added, "kept": kept, "changed": changed, "removed": removed,
                "failed": failed}

    def _apply(self, found: dict[str, ScriptDefinition], added: list[str], changed: list[str],
               removed: list[str], failed: list[dict], reason: str) -> None:
        now = self.clock()
        with self._lock:
            previous = self._registered
            self._registered = {rel: (previous[rel] if rel in previous and rel not in changed else found[rel])
                                for rel in sorted(found)}
            for rel in removed:
                self._registered_at.pop(rel, None)
            for rel in found:
                self._registered_at.setdefault(rel, now)
            registered = self._registered
        for rel in removed:
            self.scheduler.remove(job_key("script", rel))
        for rel in added + changed:
            definition = registered[rel]
            anchor = now
            if reason == "start" and (self._at_last_stop is None or rel in self._at_last_stop):
                # Fires due while the server was down are counted from the last cron slot handled; only for
                # scripts that were registered when it went down (not for ones broken back then).
                anchor = min(now, self.state.get(definition.key).get("slot") or self._registered_at.get(rel, now))
            job = self._job(definition)
            self.scheduler.add(job, anchor)
            if reason == "start":
                self.runs.resume_retry(job, self.state.value(definition.key, "retry"))
        log.info("scripts reloaded (%s): %d added, %d kept, %d changed, %d removed, %d failed; %d registered",
                 reason, len(added), len(found) - len(added) - len(changed), len(changed), len(removed),
                 len(failed), len(registered))
        for failure in failed:
            log.warning("script %s not scheduled: %s", failure["path"], failure["reason"])
        self._save_registry()
        if self.on_reload is not None and reason in ("api", "SIGHUP"):
            self.on_reload()

    def _save_registry(self) -> None:
        with self._lock:
            registered = {rel: utc_iso(self._registered_at.get(rel, self.clock()), ms=True)
                          for rel in self._registered}
        checked = {path: list(entry) for path, entry in list(self.catalog.checked.items()) if os.path.exists(path)}
        try:
            self.registry.save({"version": 2, "registered": registered, "preflight": checked})
        except OSError as e:
            log.error("cannot write %s: %s", self.registry.path, e)

    def close(self) -> None:
        with self._reload_lock:
            self._closed = True

    def _job(self, d: ScriptDefinition) -> Job:
        return Job(key=d.key, kind="script", ref=d.rel, cron=d.cron, tz=self.tz,
                   target=ScriptTarget(d.rel, d.path, d.argv, d.timeout_ms, self.catalog.scripts_dir),
                   overlap=d.overlap, retry=d.retry, notify=d.notify, name=d.description)

    # -- the API ---------------------------------------------------------------------------------------------
    def list(self) -> dict:
        with self._lock:
            definitions = list(self._registered.values())
            registered_at = dict(self._registered_at)
        nexts = self.scheduler.next_of([d.key for d in definitions])
        running = self.runs.recorder.running_keys()
        items = []
        value = self.state.value
        for d, next_at in zip(definitions, nexts):
            key = d.key
            items.append({**d.listed, "registeredAt": utc_iso(registered_at.get(d.rel), ms=True),
                          "nextFire": utc_iso(next_at, ms=True), "lastFireAt": value(key, "at"),
                          "lastFireStatus": value(key, "status"), "lastFireRunId": value(key, "run_id"),
                          "description": d.description, "running": key in running})
        return {"total": len(items), "schedules": items}

    def relative_path(self, script_path: Any) -> str:
        """scriptRel for a path given relative to the scripts dir or absolute inside it; 400 when it escapes."""
        if not isinstance(script_path, str) or not script_path.strip() or "\x00" in script_path:
            raise InvalidParameter("scriptPath must be a non-empty string")
        text = script_path.strip()
        root = self.catalog.scripts_dir
        if os.path.isabs(text):
            full = os.path.normpath(text)
            if os.path.commonpath([root, full]) != root:
                raise InvalidParameter("scriptPath must be inside the scripts directory")
            rel = os.path.relpath(full, root)
        else:
            rel = os.path.normpath(text)
        rel = rel.replace(os.sep, "/")
        if rel in (".", "") or rel == ".." or rel.startswith("../") or rel.startswith("/"):
            raise InvalidParameter("scriptPath must be inside the scripts directory")
        return rel

    def history(self, script_path: str | None = None, since: float | None = None, limit: int = 100,
                include_rotated: bool = False) -> dict:
        """Fires newest first by `ts`. The log is in the order runs ended, and a line is logged after its `ts`,
        so reading backwards can stop once a line was logged before the oldest `ts` it would have to beat."""
        rel = self.relative_path(script_path) if script_path is not None else None
        contains = json.dumps(rel, ensure_ascii=False).encode("utf-8", "backslashreplace") if rel else None
        best: list[tuple[float, int, dict]] = []        # a min-heap of the newest `limit` by ts
        for order, (record, _) in enumerate(self.fires.read_newest(include_rotated, contains)):
            if rel is not None and record.get("scriptPath") != rel:
                continue
            ts = parse_optional_iso(record.get("ts"))
            if ts is None:
                continue
            logged = parse_optional_iso(record.get("loggedAt")) or ts
            if len(best) >= limit and logged < best[0][0]:
                break
            if since is not None and ts < since:
                if logged < since:
                    break       # every line logged before this one has a `ts` before `since` too
                continue
            item = (ts, -order, record)
            if len(best) < limit:
                heapq.heappush(best, item)
            elif item[:2] > best[0][:2]:
                heapq.heapreplace(best, item)
        entries = [exec_entry(record) for _, _, record in sorted(best, key=lambda item: item[:2], reverse=True)]
        return {"total": len(entries), "limit": limit, "includeRotated": include_rotated, "entries": entries}

    def trigger(self, payload: Any) -> dict:
        """Fire a registered script now, in the caller's thread, and answer with the result."""
        if not isinstance(payload, dict):
            raise InvalidParameter("body must be a JSON object with scriptPath")
        unknown = set(payload) - {"scriptPath", "force"}
        if unknown:
            raise InvalidParameter(f"{_shown(sorted(unknown)[0])} is not a known field (known: scriptPath, force)")
        if "scriptPath" not in payload:
            raise InvalidParameter("scriptPath is required")
        force = payload.get("force", False)
        if not isinstance(force, bool):
            raise InvalidParameter("force must be true or false")
        rel = self.relative_path(payload["scriptPath"])
        definition = self.find(rel)
        if definition.token and not force:
            raise Forbidden(f"{rel} declares @token; pass \"force\": true to fire it without a token")
        # A manual trigger holds a request thread until the script ends: never all of them.
        try:
            with self.sync.hold():
                _, record = self.runs.run_now(self._job(definition), "manual")
        except Conflict:
            raise Conflict(f"{rel} is already running") from None
        result = {"triggered": True, "scriptPath": rel, "runId": record["runId"], "status": record["status"],
                  "durationMs": record["durationMs"]}
        for key in ("returnPreview", "error", "exitCode", "signal", "attempt"):
            if key in record:
                result[key] = record[key]
        return result

    def get_run(self, run_id: str) -> dict:
        """One run (its fires-log entry) with the output kept of it: `stdout` and `stderr`, or `"output":
        "expired"` once the output budget has let it go."""
        for run in self.runs.recorder.running_all():
            if run.run_id == run_id and run.job.kind == "script":
                return {"ts": utc_iso(run.slot, ms=True), "scriptPath": run.job.ref, "runId": run.run_id,
                        "status": "running", "trigger": run.trigger, "attempt": run.attempt,
                        "startedAt": utc_iso(run.started, ms=True)}
        if _is_uuid(run_id):
            for record, _ in self.fires.read_newest(True, run_id.encode()):
                if record.get("runId") == run_id:
                    entry = exec_entry(record)
                    if record.get("outputKept"):
                        output = self.outputs.get(run_id) if self.outputs is not None else None
                        if output is None:
                            entry["output"] = "expired"
                        else:
                            entry.update(stdout=output.get("stdout", ""), stderr=output.get("stderr", ""))
                    return entry
        raise NotFound(f"no run {_shown(run_id)}")

    def find(self, rel: str) -> ScriptDefinition:
        with self._lock:
            definition = self._registered.get(rel)
        if definition is None:
            raise NotFound(f"no registered @schedule script {_shown(rel)}")
        return definition

    def count(self) -> int:
        with self._lock:
            return len(self._registered)


###############################################################################
# Web ##########################################################################
###############################################################################

class Auth:
    """Bearer tokens: admin tokens may do everything, read-only tokens only GET/HEAD."""

    def __init__(self, admin_tokens: tuple[str, ...], read_tokens: tuple[str, ...] = ()):
        self._tokens = [(t.encode(), "admin") for t in admin_tokens] + [(t.encode(), "read") for t in read_tokens]

    def role(self, authorization: str | None) -> str | None:
        """The caller's role, or None. Every token is compared, in constant time, whichever matches."""
        if not authorization or not authorization[:7].lower() == "bearer ":
            return None
        given = authorization[7:].strip().encode("latin-1", "replace")
        found = None
        for token, role in self._tokens:
            if hmac.compare_digest(given, token) and found is None:
                found = role
        return found

    def check(self, authorization: str | None, method: str) -> str:
        role = self.role(authorization)
        if role is None:
            raise Unauthorized()
        if role == "read" and method not in ("GET", "HEAD"):
            raise Forbidden("This token is read-only; it may only call GET routes")
        return role


EXEC_TITLES = {400: "Invalid parameter format", 401: "Unauthorized", 403: "Access denied",
               404: "Resource not found", 405: "Method not allowed", 409: "Conflict", 413: "Payload too large",
               500: "Internal server error", 503: "Service unavailable"}
EXEC_CODES = {"INVALID_PARAMETER": "VALIDATION_ERROR", "INVALID_CRON_EXPRESSION": "VALIDATION_ERROR",
              "INTERNAL_ERROR": "ERROR_500", "STORAGE_ERROR": "ERROR_500", "SERVICE_UNAVAILABLE": "ERROR_503"}


def error_body(path: str, status: int, code: str, message: str, now: float | None = None) -> dict:
    """An error in the shape of the surface that `path` belongs to."""
    if path == EXEC_PREFIX.rsplit("/", 1)[0] or path.startswith(EXEC_PREFIX.rsplit("/", 1)[0] + "/"):
        return {"error": EXEC_TITLES.get(status, bottle.HTTP_CODES.get(status, "Error")),
                "code": EXEC_CODES.get(code, code),
                "message": message, "timestamp": utc_iso(time.time() if now is None else now, ms=True)}
    return {"error": code, "message": message}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> bottle.HTTPResponse:
    """`body` as JSON (bytes are taken as JSON already encoded)."""
    text = body if isinstance(body, bytes) else json.dumps(body, allow_nan=False)
    response = bottle.HTTPResponse(text, status=status, **(headers or {}))
    response.content_type = "application/json"
    return response


def read_json_body(request: bottle.LocalRequest, empty: Any = None) -> Any:
    """The request body as JSON (`empty` when there is none). 413 above MAX_BODY_BYTES, 400 when not JSON."""
    length = request.content_length
    if length > MAX_BODY_BYTES:
        raise ApiError(f"body is larger than {MAX_BODY_BYTES} bytes", code="PAYLOAD_TOO_LARGE", status=413)
    raw = request.body.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(f"body is larger than {MAX_BODY_BYTES} bytes", code="PAYLOAD_TOO_LARGE", status=413)
    if not raw.strip():
        return empty
    content_type = (request.content_type or "").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise InvalidParameter(f"body must be JSON with Content-Type application/json, not {_shown(content_type)}")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidParameter("body is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidParameter(f"body is not valid JSON ({e})") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _query_int(request: bottle.LocalRequest, name: str, low: int, high: int | None = None) -> int | None:
    raw = request.query.getall(name)
    if not raw:
        return None
    if len(raw) > 1 or not re.fullmatch(r"[0-9]{1,12}", raw[0].strip()):
        raise InvalidParameter(f"{name} must be a whole number" + (f" from {low} to {high}" if high else f" >= {low}"))
    value = int(raw[0])
    if value < low or (high is not None and value > high):
        raise InvalidParameter(f"{name} must be a whole number" + (f" from {low} to {high}" if high else f" >= {low}"))
    return value


def _query_bool(request: bottle.LocalRequest, name: str) -> bool | None:
    raw = request.query.getall(name)
    if not raw:
        return None
    value = raw[-1].strip().lower() if len(raw) == 1 else None
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise InvalidParameter(f"{name} must be true or false (or 1 or 0)")


RUN_STATUSES = ("ok", "error", "timeout", "skipped", "missed", "interrupted", "running")


DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                 "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DASHBOARD_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>schedserver</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/app.css">
<script src="static/app.js" defer></script>
</head>
<body>
<header class="top">
<a class="brand" href="#/">schedserver</a>
<nav id="session" class="session" aria-label="Session"></nav>
</header>
<div id="notices" class="notices" aria-live="polite"></div>
<main id="app" class="app" tabindex="-1">
<h1>schedserver</h1>
<p>Loading the dashboard&hellip;</p>
<noscript><p>The dashboard needs JavaScript; the API works without it (see docs/api.md).</p></noscript>
</main>
</body>
</html>
"""

DASHBOARD_CSS = r"""/* schedserver dashboard: one style sheet, no web fonts, light and dark. */
:root {
  color-scheme: light dark;
  --bg: #ffffff; --fg: #1b1f24; --muted: #59636e; --line: #d0d7de; --panel: #f6f8fa;
  --accent: #0a58ca; --accent-fg: #ffffff; --focus: #1f6feb;
  --ok: #1a7f37; --error: #cf222e; --timeout: #bc4c00; --skipped: #6e7781; --missed: #8250df;
  --interrupted: #9a6700; --running: #0969da; --unknown: #6e7781;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --line: #30363d; --panel: #161b22;
    --accent: #4493f8; --accent-fg: #0d1117; --focus: #f0b72f;
    --ok: #3fb950; --error: #f85149; --timeout: #db6d28; --skipped: #8b949e; --missed: #a371f7;
    --interrupted: #d29922; --running: #58a6ff; --unknown: #8b949e;
  }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Liberation Sans", sans-serif;
}
a { color: var(--accent); }
code, pre, .mono {
  font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace;
}
code { font-size: .92em; overflow-wrap: anywhere; }
pre {
  margin: .25rem 0 .75rem; padding: .6rem .75rem; background: var(--panel); border: 1px solid var(--line);
  border-radius: 6px; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 24rem; overflow: auto;
  font-size: .88em;
}
h1 { font-size: 1.45rem; margin: .25rem 0 .75rem; overflow-wrap: anywhere; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
h3 { font-size: 1rem; margin: 1rem 0 .35rem; }
h1:focus { outline: none; }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
.vh {
  position: absolute !important; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}
[hidden] { display: none !important; }

/* frame */
.top {
  display: flex; flex-wrap: wrap; align-items: center; justify-content: space-between; gap: .5rem 1rem;
  padding: .6rem 1rem; border-bottom: 1px solid var(--line); background: var(--panel);
}
.brand { font-weight: 700; font-size: 1.1rem; color: var(--fg); text-decoration: none; }
.session { display: flex; align-items: center; gap: .75rem; }
.role {
  font-size: .8rem; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; padding: .1rem .5rem;
  border-radius: 999px; border: 1px solid var(--line);
}
.role.read { color: var(--timeout); border-color: var(--timeout); }
.app { padding: 1rem; max-width: 90rem; margin: 0 auto; }
.app:focus { outline: none; }
.notices { position: sticky; top: 0; z-index: 5; max-width: 90rem; margin: 0 auto; padding: 0 1rem; }
.notice {
  display: flex; align-items: flex-start; justify-content: space-between; gap: .75rem; margin: .5rem 0 0;
  padding: .5rem .75rem; border-radius: 6px; border: 1px solid var(--line); background: var(--panel);
  overflow-wrap: anywhere;
}
.notice.ok { border-color: var(--ok); }
.notice.error { border-color: var(--error); }
.crumbs { margin: 0 0 .25rem; }
.muted, .sub { color: var(--muted); }
.sub { font-size: .88em; overflow-wrap: anywhere; }
.problem { color: var(--error); overflow-wrap: anywhere; }
.problem:empty { display: none; }
.count { color: var(--muted); margin: .5rem 0; }
.empty { padding: 1rem; border: 1px dashed var(--line); border-radius: 6px; color: var(--muted); }

/* controls */
button, .button {
  display: inline-flex; align-items: center; justify-content: center; gap: .35rem; min-height: 2.25rem;
  padding: .35rem .85rem; border-radius: 6px; border: 1px solid var(--line); background: var(--panel);
  color: var(--fg); font: inherit; font-weight: 600; text-decoration: none; cursor: pointer;
}
button:hover, .button:hover { border-color: var(--muted); }
button:disabled { opacity: .6; cursor: progress; }
.primary { background: var(--accent); border-color: var(--accent); color: var(--accent-fg); }
.danger { color: var(--error); border-color: var(--error); }
.small { min-height: 1.9rem; padding: .15rem .6rem; font-size: .88em; }
.link {
  background: none; border: none; padding: .2rem .3rem; min-height: 0; color: var(--accent); font-weight: 600;
}
.actions { display: flex; flex-wrap: wrap; gap: .5rem; margin: .5rem 0 1rem; }
input, select, textarea {
  font: inherit; color: var(--fg); background: var(--bg); border: 1px solid var(--muted); border-radius: 6px;
  padding: .4rem .55rem; max-width: 100%;
}
input[type="checkbox"] { width: 1.1rem; height: 1.1rem; margin: 0; }
textarea { width: 100%; resize: vertical; }
[aria-invalid="true"] { border-color: var(--error); box-shadow: 0 0 0 1px var(--error); }
.toolbar { display: flex; flex-wrap: wrap; gap: .75rem; align-items: flex-end; margin: .5rem 0; }
.toolbar .field { margin: 0; }
.toolbar input[type="search"] { width: 18rem; }
.field { display: flex; flex-direction: column; gap: .25rem; margin: 0 0 .9rem; min-width: 0; }
.field label, .field .label { font-weight: 600; }
.field.check { flex-direction: row; align-items: center; gap: .5rem; }
.field .hint { margin: 0; color: var(--muted); font-size: .88em; }
.field-error { margin: 0; color: var(--error); font-weight: 600; overflow-wrap: anywhere; }
.form { max-width: 44rem; }
.form input[type="text"], .form input[type="url"], .form input[type="number"], .form select { width: 100%; }
fieldset {
  border: 1px solid var(--line); border-radius: 8px; margin: 0 0 1rem; padding: .75rem 1rem .25rem;
  min-width: 0;
}
legend { font-weight: 700; padding: 0 .35rem; }
.preview {
  margin: -.4rem 0 .9rem; padding: .5rem .75rem; border-left: 3px solid var(--accent);
  background: var(--panel);
}
.preview p { margin: 0 0 .25rem; }
.preview ol { margin: 0; padding-left: 1.4rem; }
.signin { max-width: 30rem; }
.signin input { width: 100%; margin: .25rem 0 .5rem; }

/* tables: rows become cards on narrow screens */
.grid { width: 100%; border-collapse: collapse; }
.grid th, .grid td {
  text-align: left; vertical-align: top; padding: .45rem .5rem; border-bottom: 1px solid var(--line);
}
.grid th { font-size: .85em; color: var(--muted); font-weight: 600; white-space: nowrap; }
.cell { min-width: 0; overflow-wrap: break-word; }
.cell .sub, .cell code { overflow-wrap: anywhere; }
.schedules td:nth-child(2) { min-width: 12rem; }
.schedules td:last-child { min-width: 10.5rem; }
/* Below 1100 px the tables do not fit: each row becomes a card, cards side by side while there is room. */
@media (max-width: 1100px) {
  .grid thead { display: none; }        /* each cell names itself (data-label) */
  .grid, .grid tr, .grid td { display: block; width: 100%; }
  .grid tbody {
    display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 22rem), 1fr)); gap: .75rem;
  }
  .grid tr { border: 1px solid var(--line); border-radius: 8px; padding: .35rem .6rem; min-width: 0; }
  .grid td {
    border: 0; padding: .2rem 0; display: grid; grid-template-columns: 6.5rem minmax(0, 1fr); gap: .5rem;
  }
  .grid td::before { content: attr(data-label); color: var(--muted); font-size: .85em; font-weight: 600; }
  .schedules td:nth-child(2), .schedules td:last-child { min-width: 0; }
  .grid .cell { overflow-wrap: anywhere; }
  .grid .when .abs { white-space: normal; }
}
@media (max-width: 400px) {
  .grid td { grid-template-columns: 5.25rem minmax(0, 1fr); }
  .app { padding: .75rem; }
}
@media (max-width: 640px) {
  .toolbar input[type="search"] { width: 100%; }
  .toolbar .field { flex: 1 1 100%; }
}
.table-wrap { overflow-x: auto; }

/* statuses */
.st-ok { --c: var(--ok); } .st-error { --c: var(--error); } .st-timeout { --c: var(--timeout); }
.st-skipped { --c: var(--skipped); } .st-missed { --c: var(--missed); }
.st-interrupted { --c: var(--interrupted); } .st-running { --c: var(--running); }
.st-unknown, .st-none { --c: var(--unknown); }
.badge {
  display: inline-block; padding: 0 .5em; border-radius: 999px; border: 1px solid var(--c); color: var(--c);
  font-size: .85em; font-weight: 700; white-space: nowrap;
}
.badge.st-none { font-weight: 400; border-style: dashed; }
.strip {
  display: flex; flex-wrap: wrap; gap: 2px; list-style: none; margin: 0; padding: 0; align-items: center;
  min-width: 160px;    /* 20 marks on one line */
}
.mark { width: 6px; height: 18px; border-radius: 2px; background: var(--c); flex: none; }
.mark.st-skipped { background: transparent; border: 2px solid var(--c); }
.mark.st-missed { background: transparent; border: 2px dashed var(--c); }
.mark.st-interrupted { background: repeating-linear-gradient(180deg, var(--c) 0 3px, transparent 3px 5px); }
.strip .none { color: var(--muted); font-size: .88em; }
.legend {
  display: flex; flex-wrap: wrap; gap: .25rem 1rem; color: var(--muted); font-size: .85em; margin-top: 1rem;
}
.legend span { display: inline-flex; align-items: center; gap: .35rem; }
.kind {
  font-size: .8rem; font-weight: 700; text-transform: uppercase; letter-spacing: .03em; color: var(--muted);
  white-space: nowrap;
}
.when { display: flex; flex-direction: column; }
.when .abs { font-size: .85em; color: var(--muted); white-space: nowrap; }
.error-text { color: var(--error); }

/* settings and dialogs */
.settings {
  display: grid; grid-template-columns: minmax(8rem, 14rem) minmax(0, 1fr); gap: .35rem 1rem; margin: 0;
}
.settings > div { display: contents; }
.settings dt { font-weight: 600; color: var(--muted); }
.settings dd { margin: 0; min-width: 0; overflow-wrap: anywhere; }
@media (max-width: 560px) {
  .settings { grid-template-columns: minmax(0, 1fr); gap: 0; }
  .settings dd { margin-bottom: .5rem; }
}
.result:empty { display: none; }
.result {
  margin: 0 0 1rem; padding: .75rem; border: 1px solid var(--line); border-radius: 8px;
  background: var(--panel);
}
.result h2 { margin-top: 0; }
dialog.modal {
  width: min(46rem, calc(100vw - 1.5rem)); max-height: calc(100vh - 2rem); overflow: auto;
  border: 1px solid var(--line); border-radius: 10px; padding: 1rem 1.1rem;
  background: var(--bg); color: var(--fg);
}
dialog.modal::backdrop { background: rgba(0, 0, 0, .45); }
.modal .buttons { display: flex; flex-wrap: wrap; justify-content: flex-end; gap: .5rem; margin-top: 1rem; }
.diff ul { margin: .25rem 0; padding-left: 1.25rem; }
.more { margin: .75rem 0; }
"""

DASHBOARD_JS = r"""// The dashboard: plain JavaScript, no build step, nothing from another origin.
// Safe by construction: every value from the API goes into the page as text (el(), textContent,
// setAttribute), never as HTML; no inline handlers or styles (the page's Content-Security-Policy
// forbids both): listeners through addEventListener, looks through classes.
"use strict";
(() => {

// -- settings -------------------------------------------------------------------------------------------
const TOKEN_KEY = "schedserver.token";      // sessionStorage: this tab only, gone when it closes
const REFRESH_MS = Number(window.SCHEDSERVER_REFRESH_MS) > 0 ? Number(window.SCHEDSERVER_REFRESH_MS) : 5000;
const STRIP_SIZE = 20;                      // runs in a schedule's strip of marks
const STRIP_MAX_AGE_MS = 30000;             // a strip is read again at least this often
const RUNS_PAGE = 20;                       // runs per page on a schedule's page
const PARALLEL = 4;                         // API calls at once while filling the strips
const RUN_STATUSES = ["ok", "error", "timeout", "skipped", "missed", "interrupted"];
const KNOWN_STATUSES = new Set([...RUN_STATUSES, "running"]);
const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const CURL = "api/v1/curl/schedule";
const EXEC = "api/v1/exec/schedules";
const PREVIEW = "api/v1/cron/preview";
// The API lives where the page is mounted: the folder above static/app.js (relative, so a prefix works).
const BASE = document.currentScript ? new URL("..", document.currentScript.src) : new URL(".", location.href);
const BROWSER_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

const session = {token: null, role: null};  // role: "admin" or "read"
let serverZone = null;                      // the server's scheduler.timezone, learnt from a cron preview
let current = null;                         // the view on screen: {node, refresh, alive, ...}
let timer = null;
let firstRoute = true;

// -- building the page: text only -------------------------------------------------------------------------
const PROPERTIES = new Set(["value", "checked", "disabled", "hidden", "selected"]);

// el("a", {href: "#/", class: "x", onclick: fn}, "text", child, [more]): a node; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  append(node, children);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${name}: a listener must be a function`);
      node.addEventListener(name.slice(2), value);
    } else if (name === "style" || name === "innerHTML" || name === "srcdoc") {
      throw new TypeError(`${name}: use classes and text`);
    } else if (PROPERTIES.has(name)) {
      node[name] = value;
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function cell(label, ...content) {
  return el("td", {"data-label": label}, el("div", {class: "cell"}, ...content));
}

function heading(text) {
  return el("h1", {tabindex: "-1"}, text);
}

function shown(value) {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}

function statusClass(status) {
  if (status === null || status === undefined) return "st-none";
  return KNOWN_STATUSES.has(status) ? `st-${status}` : "st-unknown";
}

function badge(status) {
  return el("span", {class: `badge ${statusClass(status)}`}, status == null ? "never run" : String(status));
}

// The strip of marks: runs come newest first (as the API gives them) and are shown oldest first.
function marks(runs) {
  const list = el("ol", {class: "strip", "aria-label": `last ${runs.length} runs, oldest first`});
  for (const run of runs.slice().reverse()) {
    const at = parseTime(run.at);
    const count = run.count > 1 ? ` ×${run.count}` : "";
    const label = `${run.status}${count}${at === null ? "" : `, ${formatIn(at)}`}`;
    list.append(el("li", {class: `mark ${statusClass(run.status)}`, title: label},
                   el("span", {class: "vh"}, label)));
  }
  if (!runs.length) list.append(el("li", {class: "none"}, "no runs yet"));
  return list;
}

function legend() {
  return RUN_STATUSES.map((s) => el("span", {},
    el("span", {class: `mark ${statusClass(s)}`, "aria-hidden": "true"}), s));
}

// Replace `old` by `fresh`, keeping keyboard focus on the same control (same data-fk) if it was inside.
function swap(old, fresh) {
  const active = document.activeElement;
  const inside = active && active !== document.body && old.contains(active);
  const key = inside ? active.getAttribute("data-fk") : null;
  old.replaceWith(fresh);
  if (key) {
    const again = [...fresh.querySelectorAll("[data-fk]")].find((n) => n.getAttribute("data-fk") === key);
    if (again) again.focus();
  }
}

// Keyed rows: a row is rebuilt only when what it shows changed, so refreshes keep focus and scroll.
const signatures = new WeakMap();

function syncChildren(parent, items, keyOf, signatureOf, render) {
  const old = new Map();
  for (const child of [...parent.children]) {
    if (child.dataset.key === undefined) child.remove();
    else old.set(child.dataset.key, child);
  }
  let previous = null;
  for (const item of items) {
    const key = keyOf(item);
    const signature = signatureOf(item);
    let node = old.get(key);
    old.delete(key);
    if (!node || signatures.get(node) !== signature) {
      const fresh = render(item);
      fresh.dataset.key = key;
      signatures.set(fresh, signature);
      if (node) swap(node, fresh);
      node = fresh;
    }
    const wanted = previous ? previous.nextElementSibling : parent.firstElementChild;
    if (wanted !== node) parent.insertBefore(node, wanted);
    previous = node;
  }
  for (const node of old.values()) node.remove();
}

// -- time -------------------------------------------------------------------------------------------------
const formatters = new Map();
const RELATIVE = new Intl.RelativeTimeFormat(undefined, {numeric: "auto"});

function parseTime(iso) {
  if (typeof iso !== "string") return null;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? null : ms;
}

function formatIn(ms, zone) {
  const key = zone || "";
  if (!formatters.has(key)) {
    const options = {year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
                     second: "2-digit", hourCycle: "h23", timeZoneName: "short"};
    try {
      formatters.set(key, new Intl.DateTimeFormat(undefined, zone ? {...options, timeZone: zone} : options));
    } catch (e) {
      formatters.set(key, null);        // a zone this browser does not know: UTC ISO instead
    }
  }
  const format = formatters.get(key);
  return format ? format.format(ms) : new Date(ms).toISOString();
}

function relative(ms, now, upcoming) {
  const seconds = Math.round((ms - now) / 1000);
  if (upcoming && seconds <= 0) return "due now";      // a next run whose time came since the last refresh
  const size = Math.abs(seconds);
  if (size < 60) return RELATIVE.format(seconds, "second");
  if (size < 3600) return RELATIVE.format(Math.round(seconds / 60), "minute");
  if (size < 86400) return RELATIVE.format(Math.round(seconds / 3600), "hour");
  if (size < 86400 * 45) return RELATIVE.format(Math.round(seconds / 86400), "day");
  return RELATIVE.format(Math.round(seconds / (86400 * 30)), "month");
}

// An instant: relative ("in 3 minutes"), then absolute in the browser's zone and, if another, `zone`.
// `upcoming`: a next run (shown as due, not as past, once its time has come).
function when(iso, zone, upcoming) {
  const ms = parseTime(iso);
  if (ms === null) return el("span", {class: "muted"}, shown(iso));
  const utc = new Date(ms).toISOString();
  const box = el("span", {class: "when", title: utc},
    el("time", {class: "rel", datetime: utc, "data-at": String(ms), "data-upcoming": upcoming ? "1" : null},
       relative(ms, Date.now(), upcoming)),
    el("span", {class: "abs"}, formatIn(ms)));
  if (zone && zone !== BROWSER_ZONE) box.append(el("span", {class: "abs"}, formatIn(ms, zone)));
  return box;
}

function duration(ms) {
  if (typeof ms !== "number") return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${Number((ms / 1000).toFixed(ms < 10000 ? 2 : 1))} s`;
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

function tickRelative() {
  if (document.visibilityState === "hidden") return;
  const now = Date.now();
  for (const node of document.querySelectorAll("time.rel[data-at]")) {
    node.textContent = relative(Number(node.dataset.at), now, node.dataset.upcoming === "1");
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// -- the API ----------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;               // 0: no answer at all
    this.code = code;
  }
}

function q(path, params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") search.append(name, String(value));
  }
  const text = search.toString();
  return text ? `${path}?${text}` : path;
}

function enc(part) {
  return encodeURIComponent(part);
}

// One API call with the bearer token; the JSON answer, or ApiError with the server's own message.
async function api(method, path, body) {
  const headers = {Accept: "application/json"};
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  const init = {method, headers, cache: "no-store", redirect: "error"};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(path, BASE), init);
  } catch (e) {
    throw new ApiError(0, "NO_ANSWER", `no answer from the server (${e.message})`);
  }
  const raw = await response.text().catch(() => "");
  let data;
  try {
    data = raw ? JSON.parse(raw) : null;
  } catch (e) {
    data = undefined;
  }
  if (!response.ok) throw apiError(response.status, data);
  if (data === undefined) throw new ApiError(response.status, "NOT_JSON", "the server's answer is not JSON");
  return data;
}

// Both error shapes: {error: CODE, message} (HTTP schedules) and {error: title, code: CODE, message,
// timestamp} (scripts).
function apiError(status, data) {
  const body = data && typeof data === "object" ? data : {};
  const code = typeof body.code === "string" ? body.code
    : typeof body.error === "string" ? body.error : `HTTP_${status}`;
  const message = typeof body.message === "string" && body.message ? body.message
    : `the server answered ${status}`;
  return new ApiError(status, code, message);
}

function errorText(e) {
  if (!(e instanceof ApiError)) return String((e && e.message) || e);
  return e.status ? `${e.message} (${e.status} ${e.code})` : e.message;
}

// A change: as api(), but a 403 means this token is read-only after all (the buttons go).
async function write(method, path, body) {
  try {
    return await api(method, path, body);
  } catch (e) {
    if (e instanceof ApiError && e.status === 403 && session.role === "admin") {
      session.role = "read";
      renderSession();
      setTimeout(route, 0);
      throw new ApiError(403, e.code, `this token is read-only: ${e.message}`);
    }
    throw e;
  }
}

// True when `e` was dealt with here: a 401 means the token is no longer accepted.
function signedOutBy(e) {
  if (e instanceof ApiError && e.status === 401 && session.token) {
    signOut("The server no longer accepts this token; sign in again.");
    return true;
  }
  return false;
}

// -- plain-English cron descriptions, cached per expression and zone --------------------------------------
const descriptions = new Map();         // "expr\u0000zone" -> {text, error, waiting: Set}

// The description if known (null: none to be had); undefined while it is fetched, `ready` is called then.
function cronText(expr, zone, ready) {
  const key = `${expr}\u0000${zone || ""}`;
  let entry = descriptions.get(key);
  if (entry && "text" in entry) return entry.text;
  if (entry) {
    if (ready) entry.waiting.add(ready);
    return undefined;
  }
  entry = {waiting: new Set(ready ? [ready] : [])};
  descriptions.set(key, entry);
  api("GET", q(PREVIEW, {expr, timezone: zone, n: 1})).then((answer) => {
    entry.text = String(answer.description);
    if (!zone && answer.timezone) serverZone = String(answer.timezone);
  }, (e) => {
    if (e.status === 0 || e.status === 401 || e.status >= 500) descriptions.delete(key);   // try again later
    entry.text = null;
    entry.error = errorText(e);
  }).then(() => {
    for (const callback of entry.waiting) callback();
    entry.waiting.clear();
  });
  return undefined;
}

// -- session ----------------------------------------------------------------------------------------------
function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (e) {
    return null;
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (e) {
    // storage refused (a private mode): the token lives as long as the page
  }
}

// Read-only tokens may call GET routes only. The probe is a change that changes nothing: a dry-run reload of
// the scripts (admin: 200, read-only: 403). Without the script surface (404), toggling an id no schedule can
// have: the token is checked before the id, so read-only answers 403 and admin 404.
async function detectRole() {
  try {
    await api("POST", `${EXEC}/reload`, {dry_run: true});
    return "admin";
  } catch (e) {
    if (e.status === 403) return "read";
    if (e.status !== 404) throw e;
  }
  try {
    await api("PATCH", `${CURL}/role-probe/toggle`);
    return "admin";
  } catch (e) {
    if (e.status === 403) return "read";
    if (e.status === 404) return "admin";
    throw e;
  }
}

async function signIn(token) {
  session.token = token;
  try {
    await api("GET", q(CURL, {page: 1, limit: 1}));
    session.role = await detectRole();
  } catch (e) {
    session.token = null;
    session.role = null;
    throw e;
  }
  storeToken(token);
  renderSession();
}

function signOut(message) {
  storeToken(null);
  session.token = null;
  session.role = null;
  strips.clear();
  renderSession();
  mount(signInView(message), true);
}

function admin() {
  return session.role === "admin";
}

function renderSession() {
  const nav = document.getElementById("session");
  if (!session.token) {
    nav.replaceChildren();
    return;
  }
  nav.replaceChildren(
    el("span", {class: `role ${session.role}`,
                title: admin() ? "may change schedules" : "may look, not change"},
       admin() ? "admin" : "read-only"),
    el("button", {type: "button", class: "link", onclick: () => signOut("Signed out.")}, "Sign out"));
}

// -- notices and dialogs ----------------------------------------------------------------------------------
function notice(message, kind) {
  const box = document.getElementById("notices");
  const item = el("div", {class: `notice ${kind || "info"}`, role: kind === "error" ? "alert" : "status"},
    el("span", {}, message),
    el("button", {type: "button", class: "link", "aria-label": "Dismiss",
                  onclick: () => item.remove()}, "×"));
  box.append(item);
  while (box.children.length > 3) box.firstElementChild.remove();
  if (kind !== "error") setTimeout(() => item.remove(), 8000);
}

let dialogs = 0;

// A modal <dialog> (Esc closes it; focus stays inside, then goes back): the value of the button pressed,
// or null.
function modal(title, content, buttons) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const id = `dialog-title-${++dialogs}`;
    const row = el("div", {class: "buttons"});
    const dialog = el("dialog", {class: "modal", "aria-labelledby": id}, el("h2", {id}, title), content, row);
    let value = null;
    for (const b of buttons) {
      row.append(el("button", {type: "button", class: b.class, autofocus: b.focus,
                               onclick: () => { value = b.value; dialog.close(); }}, b.label));
    }
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
      resolve(value);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

function settingsList(pairs) {
  return el("dl", {class: "settings"},
    pairs.filter(Boolean).map(([name, ...value]) => el("div", {},
      el("dt", {}, name), el("dd", {}, ...value))));
}

// -- routing and refreshing -------------------------------------------------------------------------------
function makeView(title) {
  return {title, alive: true, busy: false, again: false, refresh: null, node: null,
          problem: el("p", {class: "problem", role: "alert"})};
}

function route() {
  if (!session.token) {
    mount(signInView(), false);
    return;
  }
  const hash = location.hash || "#/";
  let match;
  let view;
  if (hash === "#/" || hash === "#") view = overviewView();
  else if (hash === "#/new") view = admin() ? formView(null) : readOnlyView();
  else if ((match = /^#\/http\/([^/]+)\/edit$/.exec(hash))) {
    view = admin() ? formView(decoded(match[1])) : readOnlyView();
  }
  else if ((match = /^#\/http\/([^/]+)$/.exec(hash))) view = httpView(decoded(match[1]));
  else if ((match = /^#\/script\/(.+)$/.exec(hash))) view = scriptView(decoded(match[1]));
  else view = notFoundView();
  mount(view, !firstRoute);
  firstRoute = false;
}

function decoded(part) {
  try {
    return decodeURIComponent(part);
  } catch (e) {
    return "";
  }
}

function mount(view, focus) {
  if (current) current.alive = false;
  current = view;
  clearTimeout(timer);
  const main = document.getElementById("app");
  main.replaceChildren(view.node);
  document.title = view.title ? `${view.title} · schedserver` : "schedserver";
  if (focus) {
    const title = main.querySelector("h1");
    if (title) title.focus();
  }
  refreshNow();
}

// Refresh the view on screen now, then every REFRESH_MS while the tab is visible (none while hidden).
function refreshNow() {
  clearTimeout(timer);
  timer = null;
  const view = current;
  if (!view || !view.alive || !view.refresh || document.visibilityState === "hidden") return;
  if (view.busy) {
    view.again = true;
    return;
  }
  view.busy = true;
  view.again = false;
  view.refresh().then(() => {
    view.problem.textContent = "";
  }, (e) => {
    if (!signedOutBy(e) && view.alive) view.problem.textContent = `Could not refresh: ${errorText(e)}`;
  }).finally(() => {
    view.busy = false;
    if (view === current && view.alive) timer = setTimeout(refreshNow, view.again ? 0 : REFRESH_MS);
  });
}

function readOnlyView() {
  const view = makeView("Read-only");
  view.node = el("section", {}, heading("Read-only token"),
    el("p", {}, "This token may look at schedules but not change them."),
    el("a", {href: "#/"}, "All schedules"));
  return view;
}

function notFoundView() {
  const view = makeView("Not found");
  view.node = el("section", {}, heading("Nothing here"), el("p", {}, el("a", {href: "#/"}, "All schedules")));
  return view;
}

// -- sign in ----------------------------------------------------------------------------------------------
function signInView(message) {
  const view = makeView("Sign in");
  const input = el("input", {id: "token", name: "token", type: "password", autocomplete: "off",
                             spellcheck: "false", required: true,
                             "aria-describedby": "token-hint token-error"});
  const error = el("p", {id: "token-error", class: "problem", role: "alert"}, message || "");
  const button = el("button", {type: "submit", class: "primary"}, "Sign in");
  async function submit(event) {
    event.preventDefault();
    const token = input.value.trim();
    error.textContent = "";
    if (!token) {
      error.textContent = "Enter a token.";
      input.focus();
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(token)) {
      error.textContent = "A token is printable ASCII, without spaces.";
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      await signIn(token);
      input.value = "";
      firstRoute = false;
      route();
    } catch (e) {
      error.textContent = e.status === 401 ? `That token was refused: ${e.message}` : errorText(e);
      input.focus();
      input.select();
    } finally {
      button.disabled = false;
    }
  }
  view.node = el("form", {class: "signin", method: "post", onsubmit: submit},
    heading("Sign in"),
    el("p", {id: "token-hint"}, "An admin or read-only API token. It is kept in this browser tab only ",
       "(sessionStorage) and sent to this server only. With no token configured, the server wrote one to ",
       el("code", {}, "<data dir>/api-token"), "."),
    el("div", {class: "field"}, el("label", {for: "token"}, "API token"), input),
    error, button);
  return view;
}

// -- overview ---------------------------------------------------------------------------------------------
const strips = new Map();               // row key -> {sig, at, runs, lastStatus}

const STATUS_FILTERS = [["any", "Any"], ...RUN_STATUSES.map((s) => [s, s]), ["running", "running"],
                        ["never", "never run"], ["disabled", "disabled"]];

function options(pairs, selected) {
  return pairs.map(([value, label]) => el("option", {value, selected: value === selected}, label));
}

function httpRow(s) {
  const request = s.request || {};
  return {key: `http:${s.id}`, kind: "http", ref: s.id, href: `#/http/${enc(s.id)}`,
          title: s.name || request.url || s.id, sub: `${request.method || ""} ${request.url || ""}`.trim(),
          cron: s.cron, zone: s.timezone, zoneParam: s.timezone, enabled: s.enabled, next: s.next_run,
          running: false, stripSig: `${s.last_run}|${s.enabled}`,
          search: [s.name, request.url, request.method, s.id, s.cron, s.timezone].join("\n").toLowerCase()};
}

function scriptRow(s) {
  return {key: `script:${s.scriptRel}`, kind: "script", ref: s.scriptRel,
          href: `#/script/${enc(s.scriptRel)}`,
          title: s.scriptRel, sub: s.description || "", cron: s.expression, zone: serverZone, zoneParam: null,
          enabled: true, next: s.nextFire, status: s.lastFireStatus, running: Boolean(s.running),
          stripSig: `${s.lastFireRunId}|${s.lastFireStatus}|${s.running}`,
          search: [s.scriptRel, s.description, s.expression].join("\n").toLowerCase()};
}

function lastStatusOf(row) {
  if (row.running) return "running";
  if (row.kind === "script") return row.status ?? null;
  const strip = strips.get(row.key);
  return strip ? strip.lastStatus : undefined;
}

async function readStrip(row) {
  if (row.kind === "http") {
    const s = await api("GET", `${CURL}/${enc(row.ref)}`);
    return {lastStatus: s.last_status ?? null,
            runs: (s.history || []).map((h) => ({status: h.status, at: h.started_at || h.scheduled_at,
                                                 count: h.count}))};
  }
  const h = await api("GET", q(`${EXEC}/history`, {scriptPath: row.ref, limit: STRIP_SIZE}));
  return {lastStatus: h.entries.length ? h.entries[0].status : null,
          runs: h.entries.map((e) => ({status: e.status, at: e.startedAt || e.ts, count: e.count}))};
}

async function eachLimited(items, limit, work) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]);
  };
  await Promise.all(Array.from({length: Math.min(limit, items.length)}, worker));
}

function overviewView() {
  const view = makeView("Schedules");
  const filters = {text: "", kind: "all", status: "any"};
  let rows = [];
  let loaded = false;
  let updated = null;
  let drawing = false;

  const search = el("input", {id: "search", type: "search", autocomplete: "off", spellcheck: "false",
                              placeholder: "name, URL, script or cron",
                              oninput: () => { filters.text = search.value.trim().toLowerCase(); draw(); }});
  const kind = el("select", {id: "kind", onchange: () => { filters.kind = kind.value; draw(); }},
    options([["all", "All"], ["http", "HTTP requests"], ["script", "Scripts"]], "all"));
  const status = el("select", {id: "status-filter",
                               onchange: () => { filters.status = status.value; draw(); }},
    options(STATUS_FILTERS, "any"));
  const tbody = el("tbody");
  const count = el("p", {class: "count"});
  const empty = el("p", {class: "empty", hidden: true});
  const scriptsProblem = el("p", {class: "problem"});     // the scripts list failed; HTTP schedules shown
  const columns = ["Kind", "Schedule", "Cron", "Time zone", "Enabled", "Next run", "Last status",
                   "Last 20 runs"];
  const table = el("table", {class: "grid schedules"},
    el("caption", {class: "vh"}, "HTTP request and script schedules"),
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", {scope: "col"}, c)))), tbody);
  const buttons = admin() ? el("div", {class: "actions"},
    el("a", {class: "button primary", href: "#/new"}, "New HTTP schedule"),
    el("button", {type: "button", id: "reload-scripts",
                  onclick: (event) => reloadScripts(event.currentTarget)}, "Reload scripts…")) : null;
  view.node = el("section", {class: "overview"}, heading("Schedules"), buttons, view.problem, scriptsProblem,
    el("div", {class: "toolbar", role: "search"},
      el("div", {class: "field"}, el("label", {for: "search"}, "Search"), search),
      el("div", {class: "field"}, el("label", {for: "kind"}, "Kind"), kind),
      el("div", {class: "field"}, el("label", {for: "status-filter"}, "Last status"), status)),
    count, el("div", {class: "table-wrap"}, table), empty,
    el("p", {class: "legend", "aria-hidden": "true"}, legend()));

  function matches(row) {
    if (filters.kind !== "all" && row.kind !== filters.kind) return false;
    if (filters.text && !row.search.includes(filters.text)
        && !(cronText(row.cron, row.zoneParam) || "").toLowerCase().includes(filters.text)) return false;
    const last = lastStatusOf(row);
    switch (filters.status) {
      case "any": return true;
      case "disabled": return !row.enabled;
      case "never": return last === null;
      default: return last === filters.status;
    }
  }

  function signature(row) {
    const strip = strips.get(row.key);
    return JSON.stringify([row.title, row.sub, row.cron, row.zone, serverZone, row.enabled, row.next,
                           lastStatusOf(row), cronText(row.cron, row.zoneParam) ?? "…",
                           strip ? strip.runs : null]);
  }

  function renderRow(row) {
    const strip = strips.get(row.key);
    const description = cronText(row.cron, row.zoneParam, drawSoon);
    const last = lastStatusOf(row);
    const zone = row.kind === "script" ? serverZone : row.zone;
    return el("tr", {},
      cell("Kind", el("span", {class: "kind"}, row.kind === "http" ? "HTTP" : "Script")),
      cell("Schedule", el("a", {href: row.href, "data-fk": "open"}, row.title),
           row.sub ? el("div", {class: "sub"}, row.sub) : null),
      cell("Cron", el("code", {}, row.cron),
           el("div", {class: "sub"}, description === undefined ? "…" : shown(description))),
      cell("Time zone", zone || "server's"),
      cell("Enabled", row.enabled ? "yes" : "no"),
      cell("Next run", row.next ? when(row.next, zone, true)
                                : el("span", {class: "muted"}, row.enabled ? "—" : "off")),
      cell("Last status", last === undefined ? el("span", {class: "muted"}, "…") : badge(last)),
      cell("Last 20 runs", strip ? marks(strip.runs) : el("span", {class: "muted"}, "…")));
  }

  function draw() {
    if (!view.alive) return;
    const visible = rows.filter(matches);
    syncChildren(tbody, visible, (row) => row.key, signature, renderRow);
    table.hidden = visible.length === 0;
    empty.hidden = !loaded || visible.length > 0;
    empty.textContent = rows.length ? "No schedule matches the search and filters." : "No schedules yet.";
    count.textContent = loaded ? `${visible.length} of ${rows.length} schedules`
      + (updated ? `, updated ${new Date(updated).toLocaleTimeString()}` : "") : "Loading…";
  }

  function drawSoon() {
    if (drawing) return;
    drawing = true;
    setTimeout(() => { drawing = false; draw(); }, 0);
  }

  async function fillStrips() {
    const now = Date.now();
    const stale = rows.filter((row) => {
      const strip = strips.get(row.key);
      return !strip || strip.sig !== row.stripSig || now - strip.at > STRIP_MAX_AGE_MS;
    });
    await eachLimited(stale, PARALLEL, async (row) => {
      if (!view.alive) return;
      try {
        strips.set(row.key, {sig: row.stripSig, at: Date.now(), ...(await readStrip(row))});
        drawSoon();
      } catch (e) {
        if (e.status === 401) throw e;      // else: deleted meanwhile; the next list drops it
      }
    });
  }

  view.refresh = async () => {
    const [http, scripts] = await Promise.allSettled([api("GET", CURL), api("GET", `${EXEC}/list`)]);
    if (http.status === "rejected") throw http.reason;
    if (scripts.status === "rejected" && scripts.reason.status === 401) throw scripts.reason;
    if (!view.alive) return;
    const scriptItems = scripts.status === "fulfilled" ? scripts.value.schedules : [];
    rows = [...http.value.items.map(httpRow), ...scriptItems.map(scriptRow)];
    const keys = new Set(rows.map((row) => row.key));
    for (const key of [...strips.keys()]) if (!keys.has(key)) strips.delete(key);
    loaded = true;
    updated = Date.now();
    draw();
    scriptsProblem.textContent = scripts.status === "rejected" ? `Scripts: ${errorText(scripts.reason)}` : "";
    await fillStrips();
  };
  draw();
  return view;
}

async function reloadScripts(button) {
  button.disabled = true;
  try {
    const diff = await write("POST", `${EXEC}/reload`, {dry_run: true});
    const choice = await modal("Reload scripts", diffView(diff), [
      {label: "Apply", value: "apply", class: "primary"},
      {label: "Cancel", value: null, focus: true}]);
    if (choice !== "apply") return;
    const done = await write("POST", `${EXEC}/reload`, {dry_run: false});
    notice(`Scripts reloaded: ${done.added.length} added, ${done.changed.length} changed, `
           + `${done.removed.length} removed, ${done.failed.length} failed.`,
           done.failed.length ? "error" : "ok");
    refreshNow();
  } catch (e) {
    if (!signedOutBy(e)) notice(`Reload failed: ${errorText(e)}`, "error");
  } finally {
    button.disabled = false;
  }
}

function diffView(diff) {
  const part = (title, items, render) => el("section", {class: `diff diff-${title.toLowerCase()}`},
    el("h3", {}, `${title} (${items.length})`),
    items.length ? el("ul", {}, items.map(render)) : el("p", {class: "muted"}, "none"));
  const path = (p) => el("li", {}, el("code", {}, p));
  const unchanged = diff.kept.length - diff.changed.length;
  return el("div", {},
    el("p", {}, "What a reload would do now. Nothing has changed yet: apply it, or cancel."),
    part("Added", diff.added, path), part("Changed", diff.changed, path), part("Removed", diff.removed, path),
    part("Failed", diff.failed, (f) => el("li", {}, el("code", {}, f.path), ": ", f.reason)),
    el("p", {class: "muted"}, `${unchanged} kept as they are.`));
}

// -- an HTTP schedule -------------------------------------------------------------------------------------
function httpView(id) {
  const view = makeView("HTTP schedule");
  const path = `${CURL}/${enc(id)}`;
  const title = heading("HTTP schedule");
  const actions = el("div", {class: "actions"});
  const result = el("div", {class: "result", "aria-live": "polite"});
  const settings = el("div");
  const strip = el("div");
  const runs = httpRuns(id, view);
  let schedule = null;
  view.node = el("section", {class: "schedule"},
    el("p", {class: "crumbs"}, el("a", {href: "#/"}, "← All schedules")), title, view.problem, actions,
    result, el("h2", {}, "Settings"), settings, el("h2", {}, "Last 20 runs"), strip, runs.node);

  function drawActions() {
    if (!admin()) {
      actions.replaceChildren();
      return;
    }
    actions.replaceChildren(
      el("a", {class: "button", href: `#/http/${enc(id)}/edit`}, "Edit"),
      el("button", {type: "button", "data-action": "toggle", onclick: (ev) => toggle(ev.currentTarget)},
         schedule.enabled ? "Disable" : "Enable"),
      el("button", {type: "button", "data-action": "run",
                    onclick: (ev) => runNow(ev.currentTarget)}, "Run now"),
      el("button", {type: "button", class: "danger", "data-action": "delete",
                    onclick: (ev) => remove(ev.currentTarget)}, "Delete…"));
  }

  function draw() {
    title.textContent = schedule.name || schedule.request.url;
    view.title = title.textContent;
    document.title = `${view.title} · schedserver`;
    const fresh = el("div", {}, httpSettings(schedule, () => { if (view.alive) draw(); }));
    swap(settings.firstChild || settings.appendChild(el("div")), fresh);
    strip.replaceChildren(marks((schedule.history || []).map((h) => ({status: h.status,
                                                                      at: h.started_at || h.scheduled_at,
                                                                      count: h.count}))));
  }

  let drawnSig = null;
  view.refresh = async () => {
    let fresh;
    try {
      fresh = await api("GET", path);
    } catch (e) {
      if (e.status === 404) return gone();
      throw e;
    }
    if (!view.alive) return;
    const sig = JSON.stringify(fresh);
    const enabledBefore = schedule && schedule.enabled;
    schedule = fresh;
    if (sig !== drawnSig) {
      drawnSig = sig;
      draw();
    }
    if (!actions.firstChild || enabledBefore !== schedule.enabled) {
      const focused = actions.contains(document.activeElement) ? document.activeElement.dataset.action : null;
      drawActions();
      const again = focused && [...actions.children].find((b) => b.dataset.action === focused);
      if (again) again.focus();
    }
    await runs.refresh();
  };

  function gone() {
    view.refresh = null;
    view.node.replaceChildren(el("p", {class: "crumbs"}, el("a", {href: "#/"}, "← All schedules")),
      heading("Schedule not found"), el("p", {}, "No HTTP schedule has this id (it may have been deleted)."));
  }

  async function toggle(button) {
    button.disabled = true;
    try {
      const answer = await write("PATCH", `${path}/toggle`, {enabled: !schedule.enabled});
      notice(answer.enabled ? "Enabled." : "Disabled.", "ok");
      refreshNow();
    } catch (e) {
      if (!signedOutBy(e)) notice(`Could not change it: ${errorText(e)}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  async function runNow(button) {
    button.disabled = true;
    result.replaceChildren(el("p", {}, "Running…"));
    try {
      const started = await write("POST", q(`${path}/run`, {wait: "false"}));
      refreshNow();
      const run = await waitForRun(id, started.run_id, ((schedule.request.timeout || 30) + 15) * 1000);
      if (!view.alive) return;
      if (run === null) {
        result.replaceChildren(el("p", {}, "Still running; its run appears below when it ends."));
      } else {
        result.replaceChildren(el("h2", {}, "Run now: ", badge(run.status)), httpRunDetails(run));
      }
      refreshNow();
    } catch (e) {
      if (!signedOutBy(e)) {
        result.replaceChildren(el("p", {class: "problem"}, `Run failed to start: ${errorText(e)}`));
      }
    } finally {
      button.disabled = false;
    }
  }

  async function remove(button) {
    const label = schedule.name || schedule.request.url;
    const choice = await modal("Delete this schedule?", el("p", {}, "Delete ", el("strong", {}, label),
      "? It stops at once; this cannot be undone. Its past runs stay in the runs log."),
      [{label: "Delete", value: "delete", class: "danger"}, {label: "Cancel", value: null, focus: true}]);
    if (choice !== "delete") return;
    button.disabled = true;
    try {
      await write("DELETE", path);
      notice(`Deleted “${label}”.`, "ok");
      location.hash = "#/";
    } catch (e) {
      if (!signedOutBy(e)) notice(`Could not delete it: ${errorText(e)}`, "error");
      button.disabled = false;
    }
  }

  return view;
}

// A schedule's settings; `ready` is called when the plain-English cron, not known yet, comes in.
function httpSettings(s, ready) {
  const request = s.request || {};
  const headers = Object.entries(request.headers || {});
  const retry = s.retry || {};
  const description = cronText(s.cron, s.timezone, ready);
  return settingsList([
    ["Name", shown(s.name)],
    ["Id", el("code", {}, s.id)],
    ["Cron", el("code", {}, s.cron), description ? el("div", {class: "sub"}, description) : null],
    ["Time zone", s.timezone],
    ["Enabled", s.enabled ? "yes" : "no"],
    ["Next run", s.next_run ? when(s.next_run, s.timezone, true) : "—"],
    ["Last run", s.last_run ? when(s.last_run, s.timezone) : "never"],
    ["Last status", badge(s.last_status ?? null)],
    ["Created", when(s.created_at, s.timezone)],
    ["Request", el("code", {}, `${request.method} ${request.url}`)],
    ["Headers", headers.length ? el("pre", {}, headers.map(([k, v]) => `${k}: ${v}`).join("\n")) : "none"],
    "json" in request ? ["JSON body", el("pre", {}, JSON.stringify(request.json, null, 2))] : null,
    "body" in request ? ["Body", el("pre", {}, request.body)] : null,
    ["Timeout", `${shown(request.timeout)} s`],
    ["Follow redirects", request.follow_redirects ? "yes" : "no"],
    ["Retries", retry.count ? `${retry.count}, first after ${retry.min_backoff_seconds} s, at most `
                              + `${retry.max_backoff_seconds} s apart` : "none"],
    ["Success", s.success ? el("code", {}, JSON.stringify(s.success)) : "2xx (and 3xx when not following)"],
    ["Overlap", shown(s.overlap)],
    ["Jitter", `${shown(s.jitter_seconds)} s`],
    ["Alerts", s.notify ? el("code", {}, `${s.notify.url} on ${(s.notify.on || []).join(", ")}`
                                         + ` after ${s.notify.after}`) : "none"],
  ]);
}

async function waitForRun(id, runId, limitMs) {
  const until = Date.now() + limitMs;
  let misses = 0;
  for (;;) {
    try {
      const run = await api("GET", `${CURL}/${enc(id)}/runs/${enc(runId)}`);
      if (run.status !== "running") return run;
    } catch (e) {
      if (!(e.status === 404 && e.code === "RUN_NOT_FOUND" && ++misses < 5)) throw e;
    }
    if (Date.now() > until) return null;
    await sleep(300);
  }
}

function httpRunDetails(run) {
  const response = run.response;
  const headers = response ? Object.entries(response.headers || {}) : [];
  return el("div", {},
    settingsList([
      ["Run", el("code", {}, run.run_id)],
      ["Status", badge(run.status), run.count > 1 ? ` (${run.count} slots)` : null],
      ["Trigger", shown(run.trigger)],
      ["Attempt", shown(run.attempt)],
      ["Scheduled", when(run.scheduled_at)],
      ["Started", run.started_at ? when(run.started_at) : "—"],
      ["HTTP status", shown(run.status_code)],
      ["Duration", duration(run.duration_ms)],
      ["Error", run.error ? el("span", {class: "error-text"}, run.error) : "—"],
      run.next_attempt_at ? ["Next attempt", when(run.next_attempt_at)] : null,
    ]),
    response ? [
      el("h3", {}, "Response headers"),
      el("pre", {class: "response-headers"}, headers.map(([k, v]) => `${k}: ${v}`).join("\n") || "(none)"),
      el("h3", {}, response.truncated ? "Response body (the first 4 KiB)" : "Response body"),
      el("pre", {class: "response-body"}, response.body_preview || "(empty)"),
    ] : el("p", {class: "muted"}, "No response was received."));
}

// The runs of an HTTP schedule, newest first, paged with next_cursor; refreshes merge the newest page in.
function httpRuns(id, view) {
  const base = `${CURL}/${enc(id)}/runs`;
  let items = [];
  let cursor = null;
  let filter = "";
  const tbody = el("tbody");
  const empty = el("p", {class: "empty", hidden: true}, "No runs yet.");
  const more = el("button", {type: "button", class: "more", hidden: true, onclick: () => older()},
    "Older runs");
  const status = el("select", {id: "runs-status", onchange: () => { filter = status.value; reset(); }},
    options([["", "Any"], ...[...RUN_STATUSES, "running"].map((s) => [s, s])], ""));
  const columns = ["Scheduled", "Trigger", "Attempt", "Status", "HTTP status", "Duration", "Error", "Run"];
  const table = el("table", {class: "grid runs"}, el("caption", {class: "vh"}, "Runs, newest first"),
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", {scope: "col"}, c)))), tbody);
  const node = el("section", {},
    el("h2", {}, "Runs"),
    el("div", {class: "toolbar"},
      el("div", {class: "field"}, el("label", {for: "runs-status"}, "Status"), status)),
    el("div", {class: "table-wrap"}, table), empty, more);

  function row(run) {
    return el("tr", {},
      cell("Scheduled", when(run.scheduled_at)),
      cell("Trigger", shown(run.trigger)),
      cell("Attempt", shown(run.attempt)),
      cell("Status", badge(run.status), run.count > 1 ? ` ×${run.count}` : null),
      cell("HTTP status", shown(run.status_code)),
      cell("Duration", duration(run.duration_ms)),
      cell("Error", run.error ? el("span", {class: "error-text"}, run.error) : "—"),
      cell("Run", el("button", {type: "button", class: "small", "data-fk": "details",
                                "aria-label": `Details of the run scheduled at ${run.scheduled_at}`,
                                onclick: () => open(run.run_id)}, "Details")));
  }

  function draw() {
    syncChildren(tbody, items, (run) => run.run_id, (run) => JSON.stringify(run), row);
    empty.hidden = items.length > 0;
    table.hidden = items.length === 0;
    more.hidden = !cursor;
  }

  async function page(after) {
    return api("GET", q(base, {limit: RUNS_PAGE, status: filter, cursor: after}));
  }

  async function refresh() {
    const answer = await page(null);
    if (!view.alive) return;
    const known = new Map(items.map((run, i) => [run.run_id, i]));
    const overlap = answer.items.some((run) => known.has(run.run_id));
    if (!items.length || !overlap) {
      items = answer.items;             // the first page, or so many new runs that they do not meet
      cursor = answer.next_cursor;
    } else {
      const fresh = [];
      for (const run of answer.items) {
        if (known.has(run.run_id)) items[known.get(run.run_id)] = run;
        else fresh.push(run);
      }
      items = [...fresh, ...items];
    }
    draw();
  }

  async function older() {
    more.disabled = true;
    try {
      const answer = await page(cursor);
      const known = new Set(items.map((run) => run.run_id));
      items = [...items, ...answer.items.filter((run) => !known.has(run.run_id))];
      cursor = answer.next_cursor;
      draw();
      if (cursor) more.focus();
    } catch (e) {
      if (!signedOutBy(e)) notice(`Could not read older runs: ${errorText(e)}`, "error");
    } finally {
      more.disabled = false;
    }
  }

  function reset() {
    items = [];
    cursor = null;
    draw();
    refresh().catch((e) => { if (!signedOutBy(e)) view.problem.textContent = errorText(e); });
  }

  async function open(runId) {
    try {
      const run = await api("GET", `${base}/${enc(runId)}`);
      await modal("Run", httpRunDetails(run), [{label: "Close", value: null, focus: true}]);
    } catch (e) {
      if (!signedOutBy(e)) notice(`Could not read the run: ${errorText(e)}`, "error");
    }
  }

  return {node, refresh};
}

// -- a script ---------------------------------------------------------------------------------------------
function scriptView(rel) {
  const view = makeView(rel);
  const actions = el("div", {class: "actions"});
  const result = el("div", {class: "result", "aria-live": "polite"});
  const settings = el("div");
  const strip = el("div");
  const runs = scriptRuns(rel, view);
  let drawnSig = null;
  view.node = el("section", {class: "script"},
    el("p", {class: "crumbs"}, el("a", {href: "#/"}, "← All schedules")), heading(rel), view.problem,
    actions, result, el("h2", {}, "Settings"), settings, el("h2", {}, "Last 20 runs"), strip, runs.node);
  if (admin()) {
    actions.append(el("button", {type: "button", "data-action": "trigger",
                                 onclick: (ev) => trigger(ev.currentTarget, false)}, "Run now"));
  }

  view.refresh = async () => {
    const list = await api("GET", `${EXEC}/list`);
    if (!view.alive) return;
    const entry = list.schedules.find((s) => s.scriptRel === rel);
    if (!entry) {
      view.refresh = null;
      view.node.replaceChildren(el("p", {class: "crumbs"}, el("a", {href: "#/"}, "← All schedules")),
        heading(rel), el("p", {}, "No registered script has this path (it may have been removed or failed ",
                              "its checks at the last reload)."));
      return;
    }
    const sig = JSON.stringify([entry, serverZone]);
    if (sig !== drawnSig) {
      drawnSig = sig;
      swap(settings.firstChild || settings.appendChild(el("div")), el("div", {}, scriptSettings(entry, () => {
        drawnSig = null;
      })));
    }
    const entries = await runs.refresh();
    strip.replaceChildren(marks(entries.slice(0, STRIP_SIZE).map((e) => ({status: e.status,
                                                                          at: e.startedAt || e.ts,
                                                                          count: e.count}))));
  };

  async function trigger(button, force) {
    button.disabled = true;
    result.replaceChildren(el("p", {}, "Running…"));
    try {
      // api(), not write(): a 403 here is a script declaring @token (the button is for admins only).
      const answer = await api("POST", `${EXEC}/trigger`, force ? {scriptPath: rel, force: true}
                                                                : {scriptPath: rel});
      let run = null;
      try {
        run = await api("GET", `${EXEC}/runs/${enc(answer.runId)}`);
      } catch (e) {
        run = null;                     // the answer alone says enough
      }
      if (!view.alive) return;
      result.replaceChildren(el("h2", {}, "Run now: ", badge(answer.status)),
                             scriptRunDetails(run || answer));
      refreshNow();
    } catch (e) {
      if (signedOutBy(e)) return;
      const parts = [el("p", {class: "problem"}, `Not run: ${errorText(e)}`)];
      if (e.status === 403 && admin() && !force) {
        parts.push(el("button", {type: "button", onclick: (ev) => trigger(ev.currentTarget, true)},
                      "Run it anyway (force)"));
      }
      result.replaceChildren(...parts);
    } finally {
      button.disabled = false;
    }
  }

  return view;
}

function scriptSettings(s, redraw) {
  const description = cronText(s.expression, null, redraw && (() => { redraw(); refreshNow(); }));
  return settingsList([
    ["Script", el("code", {}, s.scriptRel)],
    ["Path", el("code", {}, s.scriptPath)],
    ["Description", shown(s.description)],
    ["Cron", el("code", {}, s.expression), description ? el("div", {class: "sub"}, description) : null],
    ["Time zone", serverZone || "the server's"],
    ["Time limit", duration(s.timeoutMs)],
    ["Next run", s.nextFire ? when(s.nextFire, serverZone, true) : "—"],
    ["Last run", s.lastFireAt ? when(s.lastFireAt, serverZone) : "never"],
    ["Last status", badge(s.running ? "running" : s.lastFireStatus ?? null)],
    ["Registered", when(s.registeredAt, serverZone)],
    ["Group", `${shown(s.subdomain)} (exec id ${shown(s.execId)})`],
  ]);
}

function scriptRunDetails(run) {
  const parts = [settingsList([
    ["Run", el("code", {}, run.runId)],
    ["Status", badge(run.status), run.count > 1 ? ` (${run.count} slots)` : null],
    run.trigger ? ["Trigger", run.trigger] : null,
    run.attempt ? ["Attempt", String(run.attempt)] : null,
    run.ts ? ["Scheduled", when(run.ts)] : null,
    ["Duration", duration(run.durationMs)],
    ["Exit", run.signal ? `signal ${run.signal}` : shown(run.exitCode)],
    run.returnPreview !== undefined ? ["Returned", el("code", {}, run.returnPreview)] : null,
    run.error ? ["Error", el("span", {class: "error-text"}, run.error)] : null,
    run.outputDropped ? ["Output dropped", `${run.outputDropped} bytes beyond the kept 64 KiB`] : null,
  ])];
  if (run.output === "expired") {
    parts.push(el("p", {class: "muted"}, "The output of this run is no longer kept."));
  } else if ("stdout" in run || "stderr" in run) {
    parts.push(el("h3", {}, "stdout"), el("pre", {class: "stdout"}, run.stdout || "(empty)"),
               el("h3", {}, "stderr"), el("pre", {class: "stderr"}, run.stderr || "(empty)"));
  } else {
    parts.push(el("p", {class: "muted"}, "No output."));
  }
  return el("div", {}, parts);
}

// A script's runs, newest first by slot; "Older runs" asks for more (the history has no cursor).
function scriptRuns(rel, view) {
  let limit = RUNS_PAGE;
  let entries = [];
  let rotated = false;
  const tbody = el("tbody");
  const empty = el("p", {class: "empty", hidden: true}, "No runs yet.");
  const more = el("button", {type: "button", class: "more", hidden: true, onclick: () => older()},
    "Older runs");
  const rotatedBox = el("input", {type: "checkbox", id: "runs-rotated",
                                  onchange: () => { rotated = rotatedBox.checked; refreshNow(); }});
  const columns = ["Scheduled", "Trigger", "Attempt", "Status", "Exit", "Duration", "Error or result", "Run"];
  const table = el("table", {class: "grid runs"}, el("caption", {class: "vh"}, "Runs, newest first"),
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", {scope: "col"}, c)))), tbody);
  const node = el("section", {}, el("h2", {}, "Runs"),
    el("div", {class: "field check"}, rotatedBox, el("label", {for: "runs-rotated"}, "Include rotated logs")),
    el("div", {class: "table-wrap"}, table), empty, more);

  function key(entry) {
    return entry.runId || `${entry.ts}|${entry.status}`;
  }

  function row(entry) {
    const outcome = entry.error ? el("span", {class: "error-text"}, entry.error)
      : entry.returnPreview !== undefined ? el("code", {}, entry.returnPreview) : "—";
    return el("tr", {},
      cell("Scheduled", when(entry.ts)),
      cell("Trigger", shown(entry.trigger)),
      cell("Attempt", shown(entry.attempt)),
      cell("Status", badge(entry.status), entry.count > 1 ? ` ×${entry.count}` : null),
      cell("Exit", entry.signal ? `signal ${entry.signal}` : shown(entry.exitCode)),
      cell("Duration", duration(entry.durationMs)),
      cell("Error or result", outcome),
      cell("Run", entry.runId ? el("button", {type: "button", class: "small", "data-fk": "output",
                                              "aria-label": `Output of the run scheduled at ${entry.ts}`,
                                              onclick: () => open(entry.runId)}, "Output") : "—"));
  }

  async function refresh() {
    const answer = await api("GET", q(`${EXEC}/history`, {scriptPath: rel, limit, includeRotated: rotated}));
    if (!view.alive) return answer.entries;
    entries = answer.entries;
    syncChildren(tbody, entries, key, (entry) => JSON.stringify(entry), row);
    empty.hidden = entries.length > 0;
    table.hidden = entries.length === 0;
    more.hidden = entries.length < limit || limit >= 1000;
    return entries;
  }

  async function older() {
    limit = Math.min(1000, limit + RUNS_PAGE);
    more.disabled = true;
    try {
      await refresh();
      if (!more.hidden) more.focus();
    } catch (e) {
      if (!signedOutBy(e)) notice(`Could not read older runs: ${errorText(e)}`, "error");
    } finally {
      more.disabled = false;
    }
  }

  async function open(runId) {
    try {
      const run = await api("GET", `${EXEC}/runs/${enc(runId)}`);
      await modal("Script run", scriptRunDetails(run), [{label: "Close", value: null, focus: true}]);
    } catch (e) {
      if (!signedOutBy(e)) notice(`Could not read the run: ${errorText(e)}`, "error");
    }
  }

  return {node, refresh};
}

// -- creating and editing an HTTP schedule ----------------------------------------------------------------
class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

// Which form field an API message is about ("request.url ...", "timezone: ...", an invalid cron).
const FIELD_OF_MESSAGE = [["request.url", "f-url"], ["request.method", "f-method"],
  ["request.headers", "f-headers"], ["request.body", "f-body"], ["request.json", "f-body"],
  ["request.timeout", "f-timeout"],
  ["request.follow_redirects", "f-follow"], ["retry", "f-retry"], ["overlap", "f-overlap"],
  ["jitter_seconds", "f-jitter"], ["timezone", "f-zone"], ["name", "f-name"], ["cron", "f-cron"],
  ["enabled", "f-enabled"]];

function fieldOf(e) {
  if (!(e instanceof ApiError)) return null;
  if (e.code === "INVALID_CRON_EXPRESSION") return "f-cron";
  const found = FIELD_OF_MESSAGE.find(([prefix]) => e.message.startsWith(prefix));
  return found ? found[1] : null;
}

function zoneList() {
  let list = document.getElementById("zones");
  if (!list) {
    const names = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
    list = el("datalist", {id: "zones"}, ["UTC", ...names].map((name) => el("option", {value: name})));
    document.body.append(list);
  }
  return list;
}

function field(id, label, control, hint) {
  control.id = id;
  control.setAttribute("aria-describedby", hint ? `${id}-hint ${id}-error` : `${id}-error`);
  const check = control.type === "checkbox";
  const labelNode = el("label", {for: id}, label);
  return el("div", {class: check ? "field check" : "field"},
    check ? [control, labelNode] : [labelNode, control],
    hint ? el("p", {class: "hint", id: `${id}-hint`}, hint) : null,
    el("p", {class: "field-error", id: `${id}-error`, hidden: true}));
}

function stable(value) {
  if (Array.isArray(value)) return `[${value.map(stable).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${stable(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value === undefined ? null : value);
}

// One of the next fires: in the schedule's zone, and in the browser's when that is another.
function fireItem(fire, zone) {
  const ms = parseTime(fire.at);
  return el("li", {}, el("time", {datetime: fire.at}, formatIn(ms, zone)),
            zone !== BROWSER_ZONE ? el("span", {class: "muted"}, ` · ${formatIn(ms)}`) : null);
}

function formView(id) {
  const editing = id !== null;
  const view = makeView(editing ? "Edit schedule" : "New HTTP schedule");
  let original = null;
  const f = {
    name: el("input", {type: "text", maxlength: "200", autocomplete: "off"}),
    cron: el("input", {type: "text", autocomplete: "off", spellcheck: "false", required: true,
                       placeholder: "0 */5 * * * *"}),
    zone: el("input", {type: "text", autocomplete: "off", spellcheck: "false", list: "zones",
                       placeholder: "the server's zone"}),
    enabled: el("input", {type: "checkbox", checked: true}),
    method: el("select", {}, options(METHODS.map((m) => [m, m]), "GET")),
    url: el("input", {type: "url", autocomplete: "off", spellcheck: "false", required: true,
                      placeholder: "https://example.com/hook"}),
    headers: el("textarea", {rows: "3", spellcheck: "false", placeholder: "X-Team: ops"}),
    body: el("textarea", {rows: "4", spellcheck: "false"}),
    json: el("input", {type: "checkbox"}),
    timeout: el("input", {type: "number", min: "0", max: "300", step: "any", inputmode: "decimal",
                          placeholder: "30"}),
    follow: el("input", {type: "checkbox"}),
    retry: el("input", {type: "number", min: "0", max: "5", step: "1", inputmode: "numeric",
                        placeholder: "0"}),
    overlap: el("select", {}, options([["forbid", "forbid: skip a run due while one goes"],
                                       ["allow", "allow: run it too"],
                                       ["replace", "replace: stop the running one"]], "forbid")),
    jitter: el("input", {type: "number", min: "0", max: "3600", step: "any", inputmode: "decimal",
                         placeholder: "0"}),
  };
  zoneList();
  const preview = el("div", {class: "preview", id: "cron-preview", "aria-live": "polite"});
  const summary = el("p", {class: "problem", role: "alert", id: "form-error"});
  const save = el("button", {type: "submit", class: "primary"}, editing ? "Save changes" : "Create schedule");
  const cancel = el("a", {class: "button", href: editing ? `#/http/${enc(id)}` : "#/"}, "Cancel");
  const form = el("form", {class: "form", novalidate: true, method: "post", onsubmit: submit},
    summary,
    el("fieldset", {}, el("legend", {}, "When"),
      field("f-name", "Name", f.name, "Optional, at most 200 characters."),
      field("f-cron", "Cron expression", f.cron,
            "Six fields, seconds first (second minute hour day month weekday); five fields or @hourly too."),
      preview,
      field("f-zone", "Time zone", f.zone, "An IANA name such as Europe/Berlin; empty: the server's."),
      field("f-enabled", "Enabled", f.enabled)),
    el("fieldset", {}, el("legend", {}, "Request"),
      field("f-method", "Method", f.method),
      field("f-url", "URL", f.url),
      field("f-headers", "Headers", f.headers, "One per line: Name: value"),
      field("f-body", "Body", f.body, "Sent as is; empty: no body."),
      field("f-json", "The body is JSON (sent as request.json)", f.json),
      field("f-timeout", "Timeout (seconds)", f.timeout, "More than 0, at most 300; empty: 30."),
      field("f-follow", "Follow redirects", f.follow)),
    el("fieldset", {}, el("legend", {}, "Operating"),
      field("f-retry", "Retries after a failed run", f.retry, "0 to 5."),
      field("f-overlap", "When a run is due while the last still goes", f.overlap),
      field("f-jitter", "Jitter (seconds)", f.jitter, "Each run waits a random 0 to N seconds.")),
    el("div", {class: "actions"}, save, cancel));
  view.node = el("section", {},
    el("p", {class: "crumbs"}, el("a", {href: editing ? `#/http/${enc(id)}` : "#/"}, "← Back")),
    heading(view.title), view.problem, form);

  // -- the live preview of the next five fires --
  let previewSeq = 0;
  let previewTimer = null;
  function previewSoon() {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(showPreview, 250);
  }
  async function showPreview() {
    const seq = ++previewSeq;
    const expr = f.cron.value.trim();
    const zone = f.zone.value.trim();
    if (!expr) {
      preview.replaceChildren(el("p", {class: "muted"},
                                 "Type an expression to see its next five fire times."));
      return;
    }
    try {
      const answer = await api("GET", q(PREVIEW, {expr, timezone: zone, n: 5}));
      if (seq !== previewSeq || !view.alive) return;
      if (!zone) serverZone = answer.timezone;
      preview.replaceChildren(
        el("p", {}, el("strong", {}, answer.description), ` (${answer.timezone})`),
        answer.next.length
          ? el("ol", {class: "fires", "aria-label": "next fire times"},
               answer.next.map((fire) => fireItem(fire, answer.timezone)))
          : el("p", {class: "muted"}, "It never fires."));
    } catch (e) {
      if (seq !== previewSeq || !view.alive || signedOutBy(e)) return;
      preview.replaceChildren(el("p", {class: "problem"}, e.message));
    }
  }
  f.cron.addEventListener("input", previewSoon);
  f.zone.addEventListener("input", previewSoon);
  f.zone.addEventListener("change", previewSoon);

  // -- errors --
  function clearErrors() {
    summary.textContent = "";
    for (const node of form.querySelectorAll(".field-error")) {
      node.textContent = "";
      node.hidden = true;
    }
    for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }
  function showError(fieldId, message) {
    summary.textContent = message;
    const control = fieldId && document.getElementById(fieldId);
    if (control) {
      const box = document.getElementById(`${fieldId}-error`);
      box.textContent = message;
      box.hidden = false;
      control.setAttribute("aria-invalid", "true");
      control.focus();
    } else {
      summary.setAttribute("tabindex", "-1");
      summary.focus();
    }
  }

  // -- the body the form says --
  function number(input, fieldId, what) {
    if (input.validity.badInput) throw new FieldError(fieldId, `${what} must be a number.`);
    return input.value.trim() === "" ? null : Number(input.value);
  }
  function headers() {
    const result = {};
    f.headers.value.split("\n").forEach((line, i) => {
      if (!line.trim()) return;
      const colon = line.indexOf(":");
      if (colon < 1) throw new FieldError("f-headers", `Header line ${i + 1} is not "Name: value".`);
      result[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
    });
    return result;
  }
  function collect() {
    const request = {url: f.url.value.trim(), method: f.method.value, headers: headers()};
    if (f.body.value !== "") {
      if (!f.json.checked) request.body = f.body.value;
      else {
        try {
          request.json = JSON.parse(f.body.value);
        } catch (e) {
          throw new FieldError("f-body", `The body is not valid JSON (${e.message}).`);
        }
      }
    }
    const timeout = number(f.timeout, "f-timeout", "The timeout");
    if (timeout !== null) request.timeout = timeout;
    request.follow_redirects = f.follow.checked;
    const payload = {cron: f.cron.value.trim(), request, name: f.name.value.trim() || null,
                     enabled: f.enabled.checked, overlap: f.overlap.value};
    const zone = f.zone.value.trim();
    if (zone) payload.timezone = zone;
    else if (editing) payload.timezone = null;
    const retries = number(f.retry, "f-retry", "Retries");
    if (retries !== null && (retries !== 0 || (original && original.retry && original.retry.count))) {
      payload.retry = {...((original && original.retry) || {}), count: retries};
    }
    const jitter = number(f.jitter, "f-jitter", "Jitter");
    if (jitter !== null) payload.jitter_seconds = jitter;
    return payload;
  }
  function changes(payload) {
    const before = {...original, name: original.name || null};
    const changed = {};
    for (const [name, value] of Object.entries(payload)) {
      if (stable(value) !== stable(before[name])) changed[name] = value;
    }
    return changed;
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    let payload;
    try {
      payload = collect();
    } catch (e) {
      if (e instanceof FieldError) return showError(e.field, e.message);
      throw e;
    }
    if (editing) {
      payload = changes(payload);
      if (!Object.keys(payload).length) return showError(null, "Nothing was changed.");
    }
    save.disabled = true;
    try {
      const answer = await write(editing ? "PATCH" : "POST", editing ? `${CURL}/${enc(id)}` : CURL, payload);
      notice(editing ? "Saved." : `Created “${answer.name || answer.request.url}”.`, "ok");
      location.hash = `#/http/${enc(answer.id)}`;
    } catch (e) {
      if (!signedOutBy(e)) showError(fieldOf(e), errorText(e));
    } finally {
      save.disabled = false;
    }
  }

  function fill(s) {
    const request = s.request || {};
    f.name.value = s.name || "";
    f.cron.value = s.cron;
    f.zone.value = s.timezone || "";
    f.enabled.checked = Boolean(s.enabled);
    f.method.value = request.method || "GET";
    f.url.value = request.url || "";
    f.headers.value = Object.entries(request.headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
    f.json.checked = "json" in request;
    f.body.value = "json" in request ? JSON.stringify(request.json, null, 2) : request.body || "";
    f.timeout.value = request.timeout ?? "";
    f.follow.checked = Boolean(request.follow_redirects);
    f.retry.value = s.retry ? s.retry.count : "";
    f.overlap.value = s.overlap || "forbid";
    f.jitter.value = s.jitter_seconds ?? "";
  }

  if (editing) {
    form.hidden = true;
    api("GET", `${CURL}/${enc(id)}`).then((s) => {
      if (!view.alive) return;
      original = s;
      fill(s);
      form.hidden = false;
      showPreview();
    }, (e) => {
      if (!signedOutBy(e)) view.problem.textContent = `Could not read the schedule: ${errorText(e)}`;
    });
  } else {
    showPreview();
  }
  return view;
}

// -- start ------------------------------------------------------------------------------------------------
function start() {
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refreshNow();
  });
  setInterval(tickRelative, 1000);
  const token = storedToken();
  if (!token) {
    route();
    return;
  }
  signIn(token).then(route, (e) => {
    if (e.status === 401) signOut("The stored token was refused; sign in again.");
    else mount(signInView(`Could not reach the server: ${errorText(e)}`), false);
  });
}

start();
})();
"""
DASHBOARD_ASSETS = {"app.js": (DASHBOARD_JS, "text/javascript; charset=utf-8"),
                    "app.css": (DASHBOARD_CSS, "text/css; charset=utf-8")}


def _static(text: str, content_type: str) -> bottle.HTTPResponse:
    """A page or asset of the dashboard: no inline script may run, nothing from another origin."""
    return bottle.HTTPResponse(text.encode(), status=200, headers={
        "Content-Type": content_type, "Content-Security-Policy": DASHBOARD_CSP, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


def cron_preview_answer(expression: str | None, timezone_name: str, count: int, now: float | None = None) -> dict:
    """What an expression means: its plain-English description and its next `count` fires."""
    if expression is None:
        raise InvalidParameter("expr is required: a cron expression such as '0 0 9 * * MON-FRI'")
    cron = parse_cron(expression)
    try:
        tz = load_timezone(timezone_name)
    except ValueError as e:
        raise InvalidParameter(f"timezone: {e}") from None
    fires, at = [], time.time() if now is None else now
    for _ in range(count):
        following = cron.next_after(at, tz)
        if following is None:
            break
        fires.append({"at": utc_iso(following), "local": datetime.fromtimestamp(following, tz).isoformat()})
        at = following
    return {"expression": cron.expression, "description": cron.describe(), "timezone": timezone_name,
            "next": fires}


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict:
    """The OpenAPI 3.1 document of the API: every route, its parameters, bodies, answers and errors."""

    def ref(name: str) -> dict:
        """A reference to one of components.schemas."""
        return {"$ref": f"#/components/schemas/{name}"}

    def doc(description: str | None) -> dict:
        """A description keyword, when there is one."""
        return {"description": description} if description else {}

    def obj(required: str, about: str | None = None, /, **properties: dict) -> dict:
        """A closed object: its required names (space-separated), what it is, then its properties."""
        return {"type": "object", **doc(about), "required": required.split(),
                "properties": properties, "additionalProperties": False}

    def nullable(schema: dict) -> dict:
        """`schema` or null."""
        if isinstance(schema.get("type"), str):
            return {**schema, "type": [schema["type"], "null"]}
        return {"anyOf": [schema, {"type": "null"}]}

    def string(description: str | None = None, **keywords: object) -> dict:
        """A string."""
        return {"type": "string", **keywords, **doc(description)}

    def integer(low: int | None = None, high: int | None = None, description: str | None = None,
                **keywords: object) -> dict:
        """An integer within [low, high]."""
        bounds = {k: v for k, v in (("minimum", low), ("maximum", high)) if v is not None}
        return {"type": "integer", **bounds, **keywords, **doc(description)}

    def number(low: float, high: float | None, description: str | None = None, above: bool = False) -> dict:
        """A number within [low, high], or (low, high] when `above`."""
        bounds = {("exclusiveMinimum" if above else "minimum"): low}
        if high is not None:
            bounds["maximum"] = high
        return {"type": "number", **bounds, **doc(description)}

    def boolean(description: str | None = None) -> dict:
        """A boolean."""
        return {"type": "boolean", **doc(description)}

    def array(items: dict, description: str | None = None, **keywords: object) -> dict:
        """An array."""
        return {"type": "array", "items": items, **keywords, **doc(description)}

    def instant(ms: bool, description: str | None = None) -> dict:
        """A UTC ISO 8601 instant with Z: whole seconds, or milliseconds when `ms`."""
        fraction = r"\.[0-9]{3}" if ms else ""
        return string(description, format="date-time",
                      pattern=rf"^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}{fraction}Z$")

    def any_case(word: str) -> str:
        """A regex piece matching `word` in any case."""
        return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)

    # -- schemas: common ---------------------------------------------------------------------------------
    statuses = list(RUN_STATUSES)
    recorded = [s for s in statuses if s != "running"]
    triggers = ["cron", "manual", "retry"]
    uuid = string(format="uuid")
    schedule_id = string("A schedule's id (a lower-case UUID)", format="uuid")
    cron = string(
        "A cron expression: six fields `second minute hour day month weekday` (`0 0 9 * * MON-FRI`), five "
        f"fields (minute first, second 0), or one of {', '.join(sorted(CRON_MACROS))} (any case). Fields "
        "take numbers, names (JAN-DEC, SUN-SAT), `*`, ranges a-b, lists a,b and steps /n; day and weekday "
        "also `?`; weekday 7 is Sunday. An expression that never fires (30 February) is refused.",
        format="cron", examples=["0 0 9 * * MON-FRI", "*/15 * * * *", "@daily"])
    http_url = string(
        "An http or https URL with a host, at most 8192 characters, without spaces or control characters "
        "(whitespace around it is trimmed). A literal IP address the egress policy refuses ([curl] "
        "allow_networks / deny_networks) is refused.",
        format="http-url", examples=["https://api.example.com/reports/daily"])

    schemas: dict[str, dict] = {}
    schemas["CurlError"] = obj(
        "error message", "An error of the HTTP request schedule routes and the routes outside both surfaces",
        error=string("A machine code such as SCHEDULE_NOT_FOUND"), message=string())
    schemas["ExecError"] = obj(
        "error code message timestamp", "An error of the script routes and of any unknown path under "
                                        "/api/v1/exec/",
        error=string("The status's title"),
        code=string("VALIDATION_ERROR, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED, CONFLICT, "
                    "PAYLOAD_TOO_LARGE, ERROR_500 or ERROR_503"),
        message=string(), timestamp=instant(True))
    schemas["TimeZone"] = string("A canonical IANA time zone name", enum=sorted(_zone_names()))
    schemas["Health"] = obj(
        "status version uptime_s last_tick_age_ms schedules running",
        status=string("stalled: the scheduler has not ticked for 5 s", enum=["ok", "stalled"]),
        version=string(const=__version__), uptime_s=number(0, None, "Seconds since the start"),
        last_tick_age_ms=integer(0, description="Milliseconds since the scheduler's last tick"),
        schedules=obj("scripts http", scripts=integer(0), http=integer(0)),
        running=integer(0, description="Runs in flight"))
    fire_time = obj("at local", at=instant(False),
                    local=string("The same instant in the zone", format="date-time"))
    schemas["CronPreview"] = obj(
        "expression description timezone next", expression=string("As given"),
        description=string("What it means, in plain English"), timezone=ref("TimeZone"),
        next=array(fire_time, "The next fires (fewer when it stops firing)", maxItems=100))

    # -- schemas: HTTP request schedules -----------------------------------------------------------------
    method = string("An HTTP method, in any case: " + ", ".join(HTTP_METHODS),
                    pattern="^(" + "|".join(any_case(m) for m in HTTP_METHODS) + ")$", examples=["GET"])
    headers = {"type": ["object", "null"], "description": "Header name (an HTTP token) to value; null is {}",
               "propertyNames": {"pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"},
               "additionalProperties": string("Latin-1 text without CR, LF or NUL",
                                              pattern=r"^[\u0001-\u0009\u000b\u000c\u000e-\u00ff]*$")}
    schemas["RequestInput"] = {
        **obj("url", "The request a run sends",
              url=http_url, method=method, headers=headers, body=string("Sent as is (UTF-8); not with json"),
              json=doc(f"Any JSON value (nested at most {MAX_JSON_DEPTH} deep), sent as JSON with "
                       "Content-Type application/json unless a header sets one; not with body"),
              timeout=number(0, MAX_HTTP_TIMEOUT, "Seconds for the whole exchange (default 30)", above=True),
              follow_redirects=boolean(f"Follow up to {MAX_REDIRECTS} redirects (default false)")),
        "not": {"required": ["body", "json"]}}
    schemas["Request"] = obj(
        "url method headers timeout follow_redirects",
        f"The request a run sends; a read-only token sees header values, body and json as \"{REDACTED}\"",
        url=string(), method=string(enum=list(HTTP_METHODS)),
        headers={"type": "object", "additionalProperties": string()}, body=string(), json={},
        timeout=number(0, MAX_HTTP_TIMEOUT, above=True), follow_redirects=boolean())
    schemas["RequestSummary"] = obj("url method", url=string(), method=string(enum=list(HTTP_METHODS)))
    schemas["Retry"] = obj(
        "", "After a failed run (error or timeout), up to `count` more attempts: the first after "
            "min_backoff_seconds, the wait doubled max_doublings times, then growing by the last doubled "
            "wait, never above max_backoff_seconds. Both given, max_backoff_seconds must not be below "
            "min_backoff_seconds. Retries stop when the next slot arrives. Manual runs are not retried.",
        count=integer(0, 5, "Default 0"),
        min_backoff_seconds=number(0.1, 3600, "Default 5, or max_backoff_seconds when that is smaller"),
        max_backoff_seconds=number(0.1, 86400, "Default 300, or min_backoff_seconds when that is larger"),
        max_doublings=integer(0, 16, "Default 5"))
    schemas["Success"] = obj(
        "", "The success rule: the answer's status must be listed (a code, or a class such as \"2xx\") "
            "and, with body_contains, the first 64 KiB of its body must hold the text. null: 2xx, and 3xx "
            "when not following redirects.",
        status=array({"anyOf": [integer(100, 599), string(pattern="^[1-5]xx$")]}, minItems=1, maxItems=100),
        body_contains=string(minLength=1, maxLength=1024))
    events = array(string(enum=list(NOTIFY_EVENTS)), "Default [\"failure\", \"recovery\"]", minItems=1)
    schemas["NotifyInput"] = obj(
        "url", "The schedule's alert webhook", url=http_url, on=events,
        after=integer(1, 1000, "Consecutive failed runs before `failure` is sent (default 1)"))
    schemas["Notify"] = obj("url on after", "The schedule's alert webhook",
                            url=string(f"The webhook; \"{REDACTED}\" for a read-only token"),
                            on=events, after=integer(1, 1000))
    overlap = string("When a run is due while the previous one still goes: forbid (recorded skipped), allow, "
                     "or replace (the running one is stopped)", enum=["forbid", "allow", "replace"])
    jitter = number(0, 3600, "Each run waits a random delay within this many seconds after its slot")
    zone = {**ref("TimeZone"), "description": "The zone the expression is read in; null (and by default): "
                                              "the server's scheduler.timezone"}
    inputs = dict(
        cron=cron, request=ref("RequestInput"), name=nullable(string(maxLength=MAX_NAME_LENGTH)),
        enabled=boolean("Default true"), timezone=nullable(zone), retry=nullable(ref("Retry")),
        success=nullable(ref("Success")), overlap=overlap, jitter_seconds=jitter,
        notify=nullable(ref("NotifyInput")))
    schemas["ScheduleCreate"] = obj("cron request", "A new HTTP request schedule", **inputs)
    schemas["ScheduleUpdate"] = {
        **obj("", "The fields to change, checked as at create; `request` replaces the whole one", **inputs),
        "minProperties": 1}
    summary = dict(
        id=schedule_id, cron=string("As written at create or edit"), enabled=boolean(),
        created_at=instant(False), last_run=nullable(instant(False, "When the newest run started")),
        name=nullable(string(maxLength=MAX_NAME_LENGTH)), timezone=ref("TimeZone"),
        next_run=nullable(instant(False, "The next slot; null while disabled")))
    options = dict(retry=ref("Retry"), success=nullable(ref("Success")), overlap=overlap,
                   jitter_seconds=jitter, notify=nullable(ref("Notify")))
    shown = " ".join(summary) + " request"
    schemas["ScheduleSummary"] = obj(shown, **summary, request=ref("RequestSummary"))
    schemas["Schedule"] = obj(shown + " " + " ".join(options), **summary, request=ref("Request"), **options)
    count = integer(1, description="missed and skipped: how many slots")
    schemas["HistoryEntry"] = obj(
        "run_id scheduled_at started_at status status_code duration_ms error",
        run_id=uuid, scheduled_at=nullable(instant(False)), started_at=nullable(instant(False)),
        status=string(enum=recorded), status_code=nullable(integer(100, 999)),
        duration_ms=nullable(integer(0)), error=nullable(string()), count=count)
    schemas["ScheduleDetail"] = obj(
        shown + " " + " ".join(options) + " last_status history",
        **summary, request=ref("Request"), **options,
        last_status=nullable(string("The newest run's status", enum=recorded)),
        history=array(ref("HistoryEntry"), "The newest runs, newest first", maxItems=HISTORY_SIZE))
    schemas["Toggled"] = obj("id enabled next_run", id=schedule_id, enabled=boolean(),
                             next_run=nullable(instant(False)))
    schemas["Deleted"] = obj("id", id=schedule_id)
    answer = obj("headers body_preview truncated", "The answer, when there was one",
                 headers={"type": "object", "additionalProperties": string()},
                 body_preview=string("The first 4 KiB of the body, as text"), truncated=boolean())
    schemas["Run"] = obj(
        "run_id schedule_id trigger attempt scheduled_at started_at finished_at status status_code "
        "duration_ms error", "One run of an HTTP schedule",
        run_id=uuid, schedule_id=schedule_id, trigger=string(enum=triggers),
        attempt=integer(1, description="1 for the first try, then 2, 3... for retries"),
        scheduled_at=nullable(instant(True, "The slot (a manual run: when it was asked for)")),
        started_at=nullable(instant(True, "null for missed and skipped")),
        finished_at=nullable(instant(True, "null while running")), status=string(enum=statuses),
        status_code=nullable(integer(100, 999)), duration_ms=nullable(integer(0)), error=nullable(string()),
        response=answer, next_attempt_at=instant(True, "When a retry of it is waiting"), count=count)
    schemas["RunPage"] = obj(
        "items next_cursor", items=array(ref("Run"), maxItems=HISTORY_MAX_LIMIT),
        next_cursor=nullable(string("Pass as `cursor` for the next page; null when this page was not full",
                                    format="cursor")))
    schemas["RunStarted"] = obj("run_id", run_id=uuid)
    schemas["ScheduleList"] = obj(
        "items meta", items=array(ref("ScheduleSummary")),
        meta=obj("page limit total", page=integer(1), total=integer(0),
                 limit=integer(1, description="The limit asked for; without one the number of schedules, at "
                                              "least 1")))

    # -- schemas: script schedules -----------------------------------------------------------------------
    script_path = string("A script's path, relative to the scripts dir or absolute inside it",
                         format="script-path", examples=["default/cron/cleanup.sh"])
    ms = instant(True)
    schemas["ScriptSchedule"] = obj(
        "scriptPath scriptRel subdomain execId vmCacheKey expression timeoutMs registeredAt nextFire "
        "lastFireAt lastFireStatus lastFireRunId description running",
        scriptPath=string("Absolute"), scriptRel=string(),
        subdomain=string("The first directory (default at the top level)"), execId=string(),
        vmCacheKey=string("execId:scriptRel"), expression=string(), timeoutMs=integer(1),
        registeredAt=instant(True, "When first registered (kept across restarts)"), nextFire=nullable(ms),
        lastFireAt=nullable(ms), lastFireStatus=nullable(string(enum=recorded)), lastFireRunId=nullable(uuid),
        description=nullable(string()), running=boolean())
    schemas["ScriptList"] = obj("total schedules", total=integer(0), schedules=array(ref("ScriptSchedule")))
    fire = dict(
        ts=instant(True, "The slot (a manual run: when it was asked for)"), scriptPath=string("scriptRel"),
        expression=string(), runId=uuid, status=string(enum=recorded), durationMs=integer(0),
        returnPreview=nullable(string("On ok: the last non-empty stdout line")),
        error=nullable(string("Otherwise: why")), trigger=string(enum=triggers), attempt=integer(1),
        startedAt=nullable(ms), loggedAt=ms, exitCode=integer(), signal=string("Its name, e.g. SIGKILL"),
        count=count, lastSlot=ms, outputDropped=integer(1, description="Bytes beyond the kept 64 KiB"),
        nextAttemptAt=instant(True, "When a retry of it is waiting"))
    fire_required = "ts scriptPath expression runId status durationMs trigger attempt startedAt loggedAt"
    schemas["Fire"] = obj(fire_required, "One fire of a script", **fire)
    schemas["History"] = obj(
        "total limit includeRotated entries", total=integer(0), limit=integer(1, HISTORY_MAX_LIMIT),
        includeRotated=boolean(),
        entries=array(ref("Fire"), "Newest first by ts", maxItems=HISTORY_MAX_LIMIT))
    tail = string("The kept tail of the stream (up to 64 KiB)")
    schemas["ScriptRun"] = {"oneOf": [
        obj(fire_required, "A run that ended, with its kept output (`output: expired` once it was let go)",
            **fire, stdout=tail, stderr=tail, output=string(const="expired")),
        obj("ts scriptPath runId status trigger attempt startedAt", "A run in flight",
            ts=ms, scriptPath=string(), runId=uuid, status=string(const="running"),
            trigger=string(enum=triggers), attempt=integer(1), startedAt=ms)]}
    names = array(string())
    schemas["ReloadResult"] = obj(
        "dry_run added kept changed removed failed", dry_run=boolean(), added=names, kept=names,
        changed=array(string(), "Kept, with a changed schedule, timeout, command or description"),
        removed=names, failed=array(obj("path reason", path=string(), reason=string())))
    schemas["TriggerResult"] = obj(
        "triggered scriptPath runId status durationMs attempt", triggered=boolean(), scriptPath=string(),
        runId=uuid, status=string(enum=["ok", "error", "timeout", "interrupted"]), durationMs=integer(0),
        returnPreview=nullable(string()), error=nullable(string()), exitCode=integer(), signal=string(),
        attempt=integer(1))

    # -- error answers ----------------------------------------------------------------------------------
    challenge = {"WWW-Authenticate": {"description": "The scheme to authenticate with", "required": True,
                                      "schema": string(const="Bearer")}}
    allow = {"Allow": {"description": "The methods the route takes", "required": True, "schema": string()}}

    def curl_error(status: int, description: str, *codes: str) -> dict:
        """An error answer of the HTTP request schedule surface, with the codes it may carry."""
        schema = {"allOf": [ref("CurlError"), {"properties": {"error": string(enum=list(codes))}}]}
        return {"description": description, **({"headers": challenge} if status == 401 else {}),
                "content": {"application/json": {"schema": schema}}}

    def exec_error(status: int, code: str, description: str) -> dict:
        """An error answer of the script schedule surface."""
        narrowed = {"properties": {"error": string(const=EXEC_TITLES[status]), "code": string(const=code)}}
        return {"description": description, **({"headers": challenge} if status == 401 else {}),
                "content": {"application/json": {"schema": {"allOf": [ref("ExecError"), narrowed]}}}}

    too_large = f"A body over {MAX_BODY_BYTES} bytes"
    curl_common = {
        "400": curl_error(400, "An unknown query parameter", "INVALID_PARAMETER"),
        "401": curl_error(401, "No bearer token, or a wrong one", "UNAUTHORIZED"),
        "500": curl_error(500, "An unexpected failure (never a traceback)", "INTERNAL_ERROR"),
    }
    curl_write = {
        "403": curl_error(403, "A read-only token", "FORBIDDEN"),
        "500": curl_error(500, "Storage failed: nothing was changed", "STORAGE_ERROR", "INTERNAL_ERROR"),
    }
    curl_body = {
        "400": curl_error(400, "A body that is not JSON, not an object or not sent as application/json; an "
                               "unknown field; a wrong type or value; an unknown query parameter",
                          "INVALID_PARAMETER", "INVALID_CRON_EXPRESSION"),
        "413": curl_error(413, too_large, "PAYLOAD_TOO_LARGE"),
    }
    no_schedule = {"404": curl_error(404, "No such schedule (also anything that is not an id of ours)",
                                     "SCHEDULE_NOT_FOUND")}
    exec_common = {
        "400": exec_error(400, "VALIDATION_ERROR", "An unknown query parameter"),
        "401": exec_error(401, "UNAUTHORIZED", "No bearer token, or a wrong one"),
        "500": exec_error(500, "ERROR_500", "An unexpected failure (never a traceback)"),
    }
    exec_body = {
        "400": exec_error(400, "VALIDATION_ERROR",
                          "A body that is not JSON, not an object or not sent as application/json; an "
                          "unknown field; a wrong type or value; any query parameter"),
        "403": exec_error(403, "FORBIDDEN", "A read-only token"),
        "413": exec_error(413, "PAYLOAD_TOO_LARGE", too_large),
    }

    # -- operations -------------------------------------------------------------------------------------
    def json_answer(description: str, schema: dict, **extra: object) -> dict:
        """A JSON answer."""
        return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}

    def json_body(schema: dict, example: dict, required: bool = True) -> dict:
        """A JSON request body."""
        return {"required": required, "content": {"application/json": {"schema": schema, "example": example}}}

    def query(name: str, schema: dict, description: str, required: bool = False) -> dict:
        """A query parameter."""
        return {"name": name, "in": "query", "required": required, "schema": schema,
                "description": description}

    def path(name: str, schema: dict, description: str) -> dict:
        """A path parameter."""
        return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}

    def operation(op_id: str, tag: str, summary: str, answers: dict, *errors: dict, **fields: object) -> dict:
        """An operation: its answers, then groups of error answers (a later group wins for a status)."""
        merged = dict(answers)
        for group in errors:
            merged.update(group)
        return {"operationId": op_id, "tags": [tag], "summary": summary, **fields,
                "responses": dict(sorted(merged.items()))}

    def links(**targets: dict) -> dict:
        """Links from an answer to the operations (by operationId) it leads to."""
        return {name: {"operationId": name, "parameters": parameters} for name, parameters in targets.items()}

    id_param = path("id", schedule_id, "The schedule's id")
    by_id = {"id": "$response.body#/id"}
    created = links(getHttpSchedule=by_id, updateHttpSchedule=by_id, toggleHttpSchedule=by_id,
                    runHttpSchedule=by_id, listHttpRuns=by_id, deleteHttpSchedule=by_id)
    to_run = links(getHttpRun={"id": "$request.path.id", "run_id": "$response.body#/run_id"})
    since = string("An ISO 8601 timestamp (without a zone: UTC)", format="date-time", maxLength=64)
    bad_query = "An unknown query parameter, or a bad "

    paths: dict[str, dict] = {}
    paths["/healthz"] = {"get": operation(
        "health", "health", "Health, for load balancers and monitors (no token)",
        {"200": json_answer("The scheduler ticks", ref("Health")),
         "503": json_answer("Stalled: the scheduler has not ticked for 5 s", ref("Health"))},
        security=[])}
    paths["/metrics"] = {"get": operation(
        "metrics", "health", "Prometheus metrics (a token, unless [metrics] public = true)",
        {"200": {"description": "Prometheus' text format", "content": {"text/plain": {"schema": string()}}},
         "401": curl_error(401, "No bearer token, or a wrong one", "UNAUTHORIZED"),
         "500": curl_error(500, "An unexpected failure", "INTERNAL_ERROR")})}
    page_headers = {name: {"description": about, "required": True, "schema": string()} for name, about in (
        ("Content-Security-Policy", "Nothing runs but the dashboard's own script"),
        ("X-Content-Type-Options", "nosniff"))}

    def page(description: str, media_types: list[str]) -> dict:
        """A dashboard page or asset (not JSON)."""
        return {"description": description, "headers": page_headers,
                "content": {media: {"schema": string()} for media in media_types}}

    paths["/"] = {"get": operation(
        "dashboard", "dashboard", "The dashboard page (no token: it asks for one and keeps it in the tab)",
        {"200": page("The page", ["text/html"]),
         "500": curl_error(500, "An unexpected failure", "INTERNAL_ERROR")}, security=[])}
    paths["/static/{name}"] = {"get": operation(
        "dashboardAsset", "dashboard", "The dashboard's script and style sheet (no token)",
        {"200": page("The file", sorted({kind.split(";")[0] for _, kind in DASHBOARD_ASSETS.values()})),
         "404": curl_error(404, "No such file", "NOT_FOUND"),
         "500": curl_error(500, "An unexpected failure", "INTERNAL_ERROR")},
        parameters=[path("name", string(enum=sorted(DASHBOARD_ASSETS)), "The file's name")], security=[])}
    paths[API_PREFIX + "/openapi.json"] = {"get": operation(
        "openapiDocument", "tools", "This document (no token)",
        {"200": json_answer("The OpenAPI 3.1 document",
                            {"type": "object", "required": ["openapi", "info", "paths"]}),
         "500": curl_error(500, "An unexpected failure", "INTERNAL_ERROR")}, security=[])}
    paths[API_PREFIX + "/cron/preview"] = {"get": operation(
        "previewCron", "tools", "What a cron expression means and when it fires next",
        {"200": json_answer("Its description and next fires", ref("CronPreview"))}, curl_common,
        {"400": curl_error(400, bad_query + "or no expr, a bad timezone or n", "INVALID_PARAMETER",
                           "INVALID_CRON_EXPRESSION")},
        parameters=[query("expr", {**cron, "maxLength": 1024}, "The expression", required=True),
                    query("timezone", ref("TimeZone"), "The zone (default the server's scheduler.timezone)"),
                    query("n", integer(1, 100, default=5), "How many fires")])}

    paths[CURL_PREFIX] = {
        "get": operation(
            "listHttpSchedules", "http schedules", "HTTP request schedules, newest first",
            {"200": json_answer("A page of schedules", ref("ScheduleList"))}, curl_common,
            {"400": curl_error(400, bad_query + "page or limit", "INVALID_PARAMETER")},
            parameters=[query("page", integer(1, 999_999_999_999, default=1), "The page, from 1"),
                        query("limit", integer(1, 1000), "Per page; without it, every schedule on page 1")]),
        "post": operation(
            "createHttpSchedule", "http schedules", "Create an HTTP request schedule",
            {"201": json_answer("Created: the schedule, with its whole request", ref("Schedule"),
                                links=created)},
            curl_common, curl_write, curl_body,
            {"500": curl_error(500, "Storage failed: nothing was stored", "SCHEDULE_CREATION_FAILED",
                               "INTERNAL_ERROR")},
            requestBody=json_body(ref("ScheduleCreate"), {
                "cron": "0 0 9 * * MON-FRI", "name": "report",
                "request": {"url": "https://api.example.com/reports/daily", "method": "GET"}}))}
    paths[CURL_PREFIX + "/{id}"] = {
        "parameters": [id_param],
        "get": operation(
            "getHttpSchedule", "http schedules", "One schedule, with its newest runs",
            {"200": json_answer("The schedule", ref("ScheduleDetail"))}, curl_common, no_schedule),
        "patch": operation(
            "updateHttpSchedule", "http schedules", "Edit a schedule (next_run is worked out again from now)",
            {"200": json_answer("The whole schedule, as GET answers it", ref("ScheduleDetail"))},
            curl_common, curl_write, curl_body, no_schedule,
            requestBody=json_body(ref("ScheduleUpdate"), {"cron": "0 30 9 * * MON-FRI"})),
        "delete": operation(
            "deleteHttpSchedule", "http schedules", "Delete a schedule (it stops at once)",
            {"200": json_answer("Deleted", ref("Deleted"))}, curl_common, curl_write, no_schedule)}
    paths[CURL_PREFIX + "/{id}/toggle"] = {
        "parameters": [id_param],
        "patch": operation(
            "toggleHttpSchedule", "http schedules", "Enable or disable a schedule; an empty body flips it",
            {"200": json_answer("Its new state", ref("Toggled"))}, curl_common, curl_write, curl_body,
            no_schedule,
            {"400": curl_error(400, 'A body other than {"enabled": true} or {"enabled": false}; an unknown '
                                    "query parameter", "INVALID_PARAMETER")},
            requestBody=json_body(obj("enabled", enabled=boolean()), {"enabled": False}, required=False))}
    paths[CURL_PREFIX + "/{id}/run"] = {
        "parameters": [id_param],
        "post": operation(
            "runHttpSchedule", "http schedules", "Run a schedule now, whatever `enabled` says (no body)",
            {"200": json_answer("The run, ended", ref("Run"), links=to_run),
             "202": json_answer("wait=false: the run, begun", ref("RunStarted"), links=to_run)},
            curl_common, curl_write, curl_body, no_schedule,
            {"400": curl_error(400, "A body; " + bad_query + "wait", "INVALID_PARAMETER"),
             "409": curl_error(409, "A run of it is in flight and its overlap is forbid", "RUN_IN_PROGRESS"),
             "500": curl_error(500, "The run ended but its record could not be written", "INTERNAL_ERROR"),
             "503": curl_error(503, "As many manual runs as may wait at once (half of server.threads) wait "
                                    "already, or the server is stopping", "SERVICE_UNAVAILABLE")},
            parameters=[query("wait", boolean(), "false (or 0): answer 202 at once; default true")])}
    paths[CURL_PREFIX + "/{id}/runs"] = {
        "parameters": [id_param],
        "get": operation(
            "listHttpRuns", "http schedules", "A schedule's runs, newest first (runs in flight first)",
            {"200": json_answer("A page of runs", ref("RunPage"))}, curl_common, no_schedule,
            {"400": curl_error(400, bad_query + "limit, status, since or cursor", "INVALID_PARAMETER")},
            parameters=[
                query("limit", integer(1, HISTORY_MAX_LIMIT, default=50), "Runs per page"),
                query("status", array(string(enum=statuses), minItems=1),
                      "Only runs with one of these statuses (repeated, or comma-separated)"),
                query("since", since, "Only runs that ended at or after it"),
                query("cursor", string(format="cursor", maxLength=1024),
                      "The next_cursor of the page before")])}
    paths[CURL_PREFIX + "/{id}/runs/{run_id}"] = {
        "parameters": [id_param, path("run_id", uuid, "The run's id")],
        "get": operation(
            "getHttpRun", "http schedules", "One run of a schedule",
            {"200": json_answer("The run", ref("Run"))}, curl_common,
            {"404": curl_error(404, "No such schedule, or no such run of it", "SCHEDULE_NOT_FOUND",
                               "RUN_NOT_FOUND")})}

    paths[EXEC_PREFIX + "/list"] = {"get": operation(
        "listScripts", "script schedules", "Every registered script, sorted by scriptRel",
        {"200": json_answer("The registered scripts", ref("ScriptList"))}, exec_common)}
    paths[EXEC_PREFIX + "/history"] = {"get": operation(
        "scriptHistory", "script schedules", "Fires, newest first by ts",
        {"200": json_answer("The fires", ref("History"))}, exec_common,
        {"400": exec_error(400, "VALIDATION_ERROR",
                           bad_query + "since or limit, a path outside the scripts dir")},
        parameters=[
            query("scriptPath", script_path, "Only this script's fires"),
            query("since", since, "A lower bound on ts"),
            query("limit", integer(1, 999_999_999_999, default=100),
                  f"How many (above {HISTORY_MAX_LIMIT} counts as {HISTORY_MAX_LIMIT})"),
            query("includeRotated", boolean(), "Read the rotated fires.log.* files too (also 1 or 0)")])}
    paths[EXEC_PREFIX + "/reload"] = {"post": operation(
        "reloadScripts", "script schedules", "Rescan the scripts dir and reconcile",
        {"200": json_answer("What changed (with dry_run: what would)", ref("ReloadResult"))},
        exec_common, exec_body,
        requestBody=json_body(obj("", dry_run=boolean("true: nothing is applied")), {"dry_run": True},
                              required=False))}
    paths[EXEC_PREFIX + "/trigger"] = {"post": operation(
        "triggerScript", "script schedules", "Run a registered script now; answers when it has ended",
        {"200": json_answer("The run, ended", ref("TriggerResult"),
                            links=links(getScriptRun={"runId": "$response.body#/runId"}))},
        exec_common, exec_body,
        {"403": exec_error(403, "FORBIDDEN", "A read-only token, or a script with @token without force"),
         "404": exec_error(404, "NOT_FOUND", "No such registered script"),
         "409": exec_error(409, "CONFLICT", "A run of it is in progress"),
         "500": exec_error(500, "ERROR_500", "The run ended but its record could not be written"),
         "503": exec_error(503, "ERROR_503", "As many triggers as may wait at once (half of server.threads) "
                                             "wait already, or the server is stopping")},
        requestBody=json_body(obj("scriptPath", scriptPath=script_path,
                                  force=boolean("Run a script with @token all the same")),
                              {"scriptPath": "default/cron/cleanup.sh"}))}
    paths[EXEC_PREFIX + "/runs/{runId}"] = {
        "parameters": [path("runId", string(), "The run's id")],
        "get": operation(
            "getScriptRun", "script schedules", "One run of a script, with its kept output",
            {"200": json_answer("The run", ref("ScriptRun"))}, exec_common,
            {"404": exec_error(404, "NOT_FOUND", "No such run")})}

    responses = {
        "CurlNotFound": curl_error(404, "An unknown route (SCHEDULE_NOT_FOUND for a schedule's path)",
                                   "NOT_FOUND", "SCHEDULE_NOT_FOUND"),
        "CurlMethodNotAllowed": {**curl_error(405, "A method the route does not take", "METHOD_NOT_ALLOWED"),
                                 "headers": allow},
        "ExecNotFound": exec_error(404, "NOT_FOUND", "An unknown route under /api/v1/exec/"),
        "ExecMethodNotAllowed": {**exec_error(405, "METHOD_NOT_ALLOWED", "A method the route does not take"),
                                 "headers": allow},
    }
    description = " ".join((
        f"Two surfaces share one server: HTTP request schedules under {CURL_PREFIX} and script",
        f"schedules under {EXEC_PREFIX}. Every route but /healthz, the dashboard (/ and /static/) and",
        f"{API_PREFIX}/openapi.json needs `Authorization: Bearer <token>` (/metrics too, unless",
        "[metrics] public = true); a read-only token may call GET routes only. Errors come in the",
        "surface's shape: CurlError {error, message} on the HTTP request schedule routes and the routes",
        "outside both surfaces, ExecError {error, code, message, timestamp} on the script routes and any",
        "unknown path under /api/v1/exec/. Every route of both surfaces refuses an unknown query parameter",
        "(400). An unknown route answers 404 (components.responses CurlNotFound or ExecNotFound), a method",
        "a route does not take 405 with Allow (CurlMethodNotAllowed or ExecMethodNotAllowed). Instants are",
        "UTC ISO 8601 with Z: whole seconds on the HTTP request schedule surface, milliseconds in run",
        "objects and on the script surface. Formats of our own: `cron` (see its description), `http-url`,",
        "`script-path` and `cursor` (a next_cursor as it came)."))
    return {
        "openapi": "3.1.0",
        "info": {"title": "schedserver", "version": __version__, "description": description,
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "tags": [{"name": "health"}, {"name": "dashboard"}, {"name": "tools"}, {"name": "http schedules"},
                 {"name": "script schedules"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An admin token, or a read-only token (GET only)"}},
            "schemas": schemas, "responses": responses},
    }


def _query_text(request: bottle.LocalRequest, name: str) -> str | None:
    raw = request.query.getall(name)
    if not raw:
        return None
    if len(raw) > 1 or not raw[0] or len(raw[0]) > 1024:
        raise InvalidParameter(f"{name} must be given once, at most 1024 characters")
    return raw[0]


def _query_since(request: bottle.LocalRequest) -> float | None:
    text = _query_text(request, "since")
    if text is None:
        return None
    try:
        return parse_iso(text)
    except (ValueError, OverflowError):
        raise InvalidParameter("since must be an ISO 8601 timestamp, e.g. 2026-01-15T00:00:00Z") from None


def _check_query(request: bottle.LocalRequest, known: tuple[str, ...]) -> None:
    for name in request.query.keys():
        if name not in known:
            allowed = f"known: {', '.join(known)}" if known else "this route takes no query parameters"
            raise InvalidParameter(f"unknown query parameter {_shown(name)} ({allowed})")


def make_app(http: HttpSchedules, auth: Auth, scripts: ScriptSchedules | None = None,
             health: Any = None, metrics: Metrics | None = None, metrics_public: bool = False) -> bottle.Bottle:
    """The WSGI app: thin routes over the services, every answer JSON (but /metrics)."""
    app = bottle.Bottle(catchall=True)
    request = bottle.request

    if metrics is not None:
        @app.hook("before_request")
        def request_began() -> None:
            request.environ["schedserver.t0"] = time.monotonic()

        @app.hook("after_request")
        def request_ended() -> None:
            route = request.environ.get("bottle.route")
            began = request.environ.get("schedserver.t0")
            if route is None or began is None or route.app is not app:     # a host's route, when mounted
                return
            metrics.requests.labels(route.rule, request.method, str(bottle.response.status_code)).inc()
            metrics.request_seconds.labels(route.rule, request.method).observe(time.monotonic() - began)

    def api(query: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
        """Route wrapper: auth, known query parameters, then the callback; any error becomes JSON in the
        surface's shape."""
        def wrap(callback: Callable) -> Callable:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    role = auth.check(request.environ.get("HTTP_AUTHORIZATION"), request.method)
                    request.environ["schedserver.role"] = role
                    _check_query(request, query)
                    status, body = 200, callback(*args, **kwargs)
                    if isinstance(body, tuple):
                        status, body = body
                    return json_response(body, status)
                except ApiError as e:
                    return json_response(error_body(request.path, e.status, e.code, e.message), e.status, e.headers)
                except Exception:
                    log.error("unexpected error on %s %s\n%s", request.method, request.path, traceback.format_exc())
                    return json_response(error_body(request.path, 500, "INTERNAL_ERROR", "Internal server error"), 500)
            return wrapper
        return wrap

    if health is not None:
        @app.get("/healthz")
        def healthz() -> bottle.HTTPResponse:     # no auth: for load balancers and monitors
            status, body = health.report()
            return json_response(body, status)

    if metrics is not None:
        @app.get("/metrics")
        def metrics_text() -> bottle.HTTPResponse:
            if not metrics_public:
                try:
                    auth.check(request.environ.get("HTTP_AUTHORIZATION"), request.method)
                except ApiError as e:
                    return json_response({"error": e.code, "message": e.message}, e.status, e.headers)
            return bottle.HTTPResponse(metrics.text(), status=200,
                                       headers={"Content-Type": metrics.prom.CONTENT_TYPE_LATEST})

    @app.get("/")
    def dashboard() -> bottle.HTTPResponse:      # no auth: the page asks for a token and keeps it in the tab
        return _static(DASHBOARD_HTML, "text/html; charset=utf-8")

    @app.get("/static/<name>")
    def dashboard_asset(name: str) -> bottle.HTTPResponse:
        asset = DASHBOARD_ASSETS.get(name)
        if asset is None:
            return json_response({"error": "NOT_FOUND", "message": "No such file"}, 404)
        return _static(*asset)

    @app.get(API_PREFIX + "/openapi.json")
    def openapi() -> bottle.HTTPResponse:        # no auth: the document describes the API, it holds no data
        return json_response(openapi_document())

    @app.get(API_PREFIX + "/cron/preview")
    @api(query=("expr", "timezone", "n"))
    def cron_preview() -> dict:
        return cron_preview_answer(_query_text(request, "expr"), _query_text(request, "timezone") or
                                   http.default_timezone, _query_int(request, "n", 1, 100) or 5, http.clock())

    @app.get(CURL_PREFIX)
    @api(query=("page", "limit"))
    def list_http() -> dict:
        page = _query_int(request, "page", 1) or 1
        limit = _query_int(request, "limit", 1, 1000)
        return http.list(page, limit)

    @app.post(CURL_PREFIX)
    @api()
    def create_http() -> tuple[int, dict]:
        return 201, http.create(read_json_body(request))

    @app.get(CURL_PREFIX + "/<schedule_id>")
    @api()
    def get_http(schedule_id: str) -> dict:
        return http.get(schedule_id, redact=request.environ.get("schedserver.role") != "admin")

    @app.route(CURL_PREFIX + "/<schedule_id>/toggle", method="PATCH")
    @api()
    def toggle_http(schedule_id: str) -> dict:
        http.find(schedule_id)      # 404 before complaining about the body
        return http.toggle(schedule_id, read_json_body(request, empty=EMPTY_BODY))

    @app.route(CURL_PREFIX + "/<schedule_id>", method="PATCH")
    @api()
    def update_http(schedule_id: str) -> dict:
        http.find(schedule_id)
        return http.update(schedule_id, read_json_body(request))

    @app.post(CURL_PREFIX + "/<schedule_id>/run")
    @api(query=("wait",))
    def run_http(schedule_id: str) -> tuple[int, dict]:
        http.find(schedule_id)
        if read_json_body(request) is not None:
            raise InvalidParameter("this route takes no body")
        wait = _query_bool(request, "wait")
        return http.run_now(schedule_id, wait=wait is not False)

    @app.get(CURL_PREFIX + "/<schedule_id>/runs")
    @api(query=("limit", "status", "since", "cursor"))
    def runs_http(schedule_id: str) -> dict:
        http.find(schedule_id)
        limit = _query_int(request, "limit", 1, HISTORY_MAX_LIMIT) or 50
        statuses: tuple[str, ...] = ()
        if "status" in request.query:
            statuses = tuple(v for raw in request.query.getall("status") for v in raw.split(",") if v)
            if not statuses or any(v not in RUN_STATUSES for v in statuses):
                raise InvalidParameter(f"status must be one or more of {', '.join(RUN_STATUSES)}")
        return http.list_runs(schedule_id, limit, statuses, _query_since(request), _query_text(request, "cursor"))

    @app.get(CURL_PREFIX + "/<schedule_id>/runs/<run_id>")
    @api()
    def run_of_http(schedule_id: str, run_id: str) -> dict:
        return http.get_run(schedule_id, run_id)

    # An id holding a slash (`..%2Fx` arrives decoded) is a malformed id, not an unknown route.
    @app.route(CURL_PREFIX + "/<schedule_id:re:(?!.*/(toggle|run|runs|runs/[^/]+)$).+/.+>",
               method=["GET", "DELETE", "PATCH"])
    @app.route(CURL_PREFIX + "/<schedule_id:re:.+/.+>/toggle", method="PATCH")
    @api()
    def malformed_http_id(schedule_id: str) -> dict:
        raise NotFound("Schedule not found", code="SCHEDULE_NOT_FOUND")

    @app.delete(CURL_PREFIX + "/<schedule_id>")
    @api()
    def delete_http(schedule_id: str) -> dict:
        return http.delete(schedule_id)

    if scripts is not None:
        @app.get(EXEC_PREFIX + "/list")
        @api()
        def list_scripts() -> dict:
            return scripts.list()

        @app.get(EXEC_PREFIX + "/history")
        @api(query=("scriptPath", "since", "limit", "includeRotated"))
        def script_history() -> dict:
            since = None
            if "since" in request.query:
                try:
                    since = parse_iso(request.query.getunicode("since") or "")
                except (ValueError, OverflowError):
                    raise InvalidParameter("since must be an ISO 8601 timestamp, e.g. 2026-01-15T00:00:00Z") from None
            limit_raw = request.query.getunicode("limit")
            limit = 100
            if limit_raw is not None:
                if not re.fullmatch(r"-?[0-9]{1,12}", limit_raw.strip()) or int(limit_raw) < 1:
                    raise InvalidParameter("limit must be a whole number from 1 (values above 1000 count as 1000)")
                limit = min(int(limit_raw), HISTORY_MAX_LIMIT)
            script_path = request.query.getunicode("scriptPath") if "scriptPath" in request.query else None
            if "scriptPath" in request.query and script_path is None:
                raise InvalidParameter("scriptPath must be valid UTF-8")
            return scripts.history(script_path, since, limit, bool(_query_bool(request, "includeRotated")))

        @app.post(EXEC_PREFIX + "/reload")
        @api()
        def reload_scripts() -> dict:
            body = read_json_body(request, empty=EMPTY_BODY)
            if body is EMPTY_BODY:
                body = {}
            if not isinstance(body, dict):
                raise InvalidParameter('body must be a JSON object such as {"dry_run": true}')
            unknown = set(body) - {"dry_run"}
            if unknown:
                raise InvalidParameter(f"{_shown(sorted(unknown)[0])} is not a known field (known: dry_run)")
            dry_run = body.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise InvalidParameter("dry_run must be true or false")
            return scripts.reload(dry_run)

        @app.post(EXEC_PREFIX + "/trigger")
        @api()
        def trigger_script() -> dict:
            return scripts.trigger(read_json_body(request))

        @app.get(EXEC_PREFIX + "/runs/<run_id>")
        @api()
        def script_run(run_id: str) -> dict:
            return scripts.get_run(run_id)

    def router_error(status: int, code: str, message: str) -> Callable:
        def handler(error: bottle.HTTPError) -> str:
            bottle.response.content_type = "application/json"
            text = message
            if status == 405 and error.status_code == 405:
                text = f"Method {request.method} is not allowed here"
            elif status == 500 and error.traceback:
                log.error("unexpected error on %s %s\n%s", request.method, request.path, error.traceback)
            return json.dumps(error_body(request.path, status, code, text))
        return handler

    not_found = router_error(404, "NOT_FOUND", "No such route")
    schedule_not_found = router_error(404, "SCHEDULE_NOT_FOUND", "Schedule not found")

    def route_not_found(error: bottle.HTTPError) -> str:
        # A schedule path the router could not match (an id bottle could not decode, say) is an unknown id.
        path = request.environ.get("PATH_INFO", "")
        if path.startswith(CURL_PREFIX + "/") and request.method in ("GET", "HEAD", "PATCH", "DELETE"):
            return schedule_not_found(error)
        return not_found(error)

    app.error(404)(route_not_found)
    app.error(405)(router_error(405, "METHOD_NOT_ALLOWED", "Method not allowed"))
    app.error(413)(router_error(413, "PAYLOAD_TOO_LARGE", f"body is larger than {MAX_BODY_BYTES} bytes"))
    app.error(500)(router_error(500, "INTERNAL_ERROR", "Internal server error"))
    return app


class AccessLog:
    """WSGI middleware: one log line per request (method, path, status, duration)."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        t0 = time.monotonic()
        status_holder = []

        def recording_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            status_holder.append(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, recording_start_response)
        finally:
            path = urllib.parse.quote(environ.get("PATH_INFO", ""), safe="/%:@!$&'()*+,;=-._~")
            log.info("access %s %s %s %.1fms", environ.get("REQUEST_METHOD"), path,
                     status_holder[0] if status_holder else "-", (time.monotonic() - t0) * 1000)


WAITRESS_ERROR_CODES = {400: "INVALID_PARAMETER", 413: "PAYLOAD_TOO_LARGE", 431: "HEADERS_TOO_LARGE",
                        501: "NOT_IMPLEMENTED"}


class JsonErrorTask(waitress.task.ErrorTask):
    """waitress's answer to a request it rejects before the app sees it (bad request line, oversize body or
    headers, unsupported transfer encoding), as JSON in the surface's error shape instead of plain text."""

    def execute(self) -> None:
        error = self.request.error
        # The target of the raw request line tells the surface; waitress may not have split that line, and for
        # an oversized head it answers about a made-up "GET /".
        raw = getattr(self.request, "raw_target", b"") or getattr(self.request, "request_uri", b"") or b""
        raw = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
        path = urllib.parse.unquote(raw.split("?", 1)[0]) or getattr(self.request, "path", "") or ""
        body = json.dumps(error_body(path if isinstance(path, str) else "", error.code,
                                     WAITRESS_ERROR_CODES.get(error.code, "INTERNAL_ERROR"),
                                     f"{error.reason}: {error.body}")).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class TargetRememberingParser(waitress.parser.HTTPRequestParser):
    """Keeps the target of the raw request line, so a request rejected before waitress splits that line (a bad
    header, an oversized head, a target with a space) is still answered in its surface's shape; and when the
    request's first byte came."""

    raw_target = b""
    begun: float | None = None

    def received(self, data: bytes) -> int:
        if self.begun is None:
            self.begun = time.monotonic()
        if not self.raw_target and data:
            start = data.split(b"\r\n", 1)[0].split(b" ")
            self.raw_target = start[1] if len(start) > 1 else b""
        return super().received(data)


class JsonErrorChannel(waitress.channel.HTTPChannel):
    """waitress's connection, with JSON errors, closed when a request dribbles in for longer than the idle
    timeout (each byte resets waitress's own idle clock, so a slow sender would hold the connection for ever)."""

    error_task_class = JsonErrorTask
    parser_class = TargetRememberingParser

    def readable(self) -> bool:
        request = self.request
        if request is not None and not request.completed and request.begun is not None and \
                time.monotonic() - request.begun > self.adj.channel_timeout:
            self.will_close = True
        return super().readable()


class OncePerMinute(logging.Filter):
    """Lets the same message through at most once a minute (the connection limit can flap)."""

    def __init__(self, seconds: float = 60.0):
        super().__init__()
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = str(record.msg)
        if now - self._last.get(key, -self.seconds) < self.seconds:
            return False
        self._last[key] = now
        return True


###############################################################################
# Server #######################################################################
###############################################################################

def resolve_admin_tokens(config: Config) -> tuple[str, ...]:
    """Admin tokens from config/env and the token file; with none, a generated `<data-dir>/api-token`."""
    tokens = list(config.tokens)
    if config.token_file:
        try:
            with open(config.token_file, encoding="utf-8") as f:
                from_file = [t.strip() for t in re.split(r"[,\s]+", f.read()) if t.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"auth.token_file {config.token_file}: cannot read "
                              f"({getattr(e, 'strerror', None) or e})") from None
        try:
            tokens += _to_token_list(from_file)
        except ValueError as e:
            raise ConfigError(f"auth.token_file {config.token_file}: {e}") from None
    if tokens:
        return tuple(tokens)
    path = os.path.join(config.data_dir, "api-token")
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        if token:
            log.info("admin token: read from %s", path)
            return (token,)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    token = secrets.token_urlsafe(32)
    try:
        atomic_write(path, token.encode() + b"\n", mode=0o600)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the generated token ({e.strerror})") from None
    log.info("admin token: none configured, generated one into %s (mode 0600)", path)
    return (token,)


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) about our state over $NOTIFY_SOCKET; without it, do nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]       # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_enabled() -> bool:
    """True when systemd expects WATCHDOG=1 pings from this process (WatchdogSec= in the unit)."""
    pid = os.environ.get("WATCHDOG_PID")
    return bool(os.environ.get("WATCHDOG_USEC")) and (not pid or pid == str(os.getpid()))


class Health:
    """What GET /healthz answers: ok, or stalled when the ticker has not ticked for STALL_SECONDS."""

    STALL_SECONDS = 5.0

    def __init__(self, scheduler: Scheduler, http: HttpSchedules, scripts: ScriptSchedules | None,
                 recorder: Recorder):
        self.scheduler = scheduler
        self.http = http
        self.scripts = scripts
        self.recorder = recorder
        self.started = scheduler.monotonic()

    def age(self) -> float:
        """Seconds since the scheduler last ticked (since this was made, before the first tick)."""
        last = self.scheduler.last_tick_monotonic
        return self.scheduler.monotonic() - (last if last is not None else self.started)

    def report(self) -> tuple[int, dict]:
        now = self.scheduler.monotonic()
        age = self.age()
        stalled = age >= self.STALL_SECONDS
        body = {"status": "stalled" if stalled else "ok", "version": __version__,
                "uptime_s": round(now - self.started, 3), "last_tick_age_ms": int(age * 1000),
                "schedules": {"scripts": self.scripts.count() if self.scripts else 0, "http": self.http.count()},
                "running": self.recorder.count()}
        return (503 if stalled else 200), body


class Server:
    """Everything a running schedserver holds, wired together.

    start() loads the data dir and starts the scheduler (and, when asked, the HTTP listener); close() stops it
    all. `wsgi_app` serves the API from any WSGI server once started. `own_process=True` (the CLI) also makes
    it tell systemd its state and adopt what scripts leave behind; an embedding host keeps its process to itself.
    """

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time, own_process: bool = False,
                 runners: dict[str, Any] | None = None, pool: Any = None):
        self.config = config
        self.clock = clock
        self.own_process = own_process
        cfg = config
        self.data_dir = DataDir(cfg.data_dir)
        self.deadlines = DeadlineWatcher()
        # With storage.url, definitions, runs and the scripts' registry live in PostgreSQL and this server is one
        # replica of several; the data dir keeps what is this replica's own (token, run state, markers, output).
        self.db = PgDatabase(cfg.storage_url, size=cfg.workers + cfg.threads + 2) if cfg.storage_url else None
        self.cluster = Cluster(self.db, cfg.cluster_lease_seconds, cfg.cluster_takeover_seconds, clock,
                               cfg.storage_runs_retention_days) if self.db is not None else None
        if self.db is not None:
            self.logs = {kind: PgRunLog(self.db, kind, RECORD_FIELDS[kind][:2]) for kind in ("http", "script")}
        else:
            self.logs = {"http": NdjsonLog(os.path.join(cfg.data_dir, "curl-runs.log"), cfg.runs_log_max_bytes,
                                           cfg.runs_log_backups),
                         "script": NdjsonLog(os.path.join(cfg.data_dir, "fires.log"), cfg.fires_log_max_bytes,
                                             cfg.fires_log_backups)}
        self.state = RunState(os.path.join(cfg.data_dir, "run-state.json"), self.logs)
        self.markers = RunMarkers(os.path.join(cfg.data_dir, "running"))
        self.metrics = Metrics(cfg.metrics_per_schedule)
        self.metrics.gauges(self._gauges)
        self.recorder = Recorder(self.logs, self.state, self.markers, clock, self.metrics)
        self.policy = EgressPolicy(cfg.allow_networks, cfg.deny_networks)
        self.environment = script_environment(())
        self.runners = runners or {
            "http": HttpRunner(self.policy, self.deadlines, clock, pool_size=cfg.workers),
            "script": ScriptRunner(self.deadlines, clock, cfg.return_preview_chars,
                                   environment=lambda extra: self.environment(extra), adopt_orphans=own_process)}
        self._own_pool = pool is None
        self.pool = pool
        self.scheduler = Scheduler(cfg.misfire_grace_seconds, clock, on_tick=self._on_tick)
        http_runner = self.runners.get("http")
        self.alert_sender = AlertSender(http_runner, os.path.join(cfg.data_dir, "alerts-outbox.ndjson"), clock) \
            if isinstance(http_runner, HttpRunner) else None
        default_notify = Notify(cfg.notify_url, tuple(cfg.notify_on), cfg.notify_after) if cfg.notify_url else None
        self.alerts = Alerts(self.state, self.alert_sender, default_notify)
        if self.alert_sender is not None:
            self.alert_sender.metrics = self.metrics
        self.outputs = OutputStore(os.path.join(cfg.data_dir, "output"), cfg.output_retention_bytes)
        self.runs = Runs(self.recorder, self.runners, pool, clock, cfg.misfire_grace_seconds, self.scheduler,
                         self.alerts, self.outputs, overlap_limit=cfg.overlap_limit, cluster=self.cluster)
        self.scheduler.on_due = self.runs.on_due
        self.sync = SyncSlots(max(1, cfg.threads // 2))
        store = PgDefinitions(self.db, "http", self.cluster.id) if self.cluster is not None else \
            JournalStore(os.path.join(cfg.data_dir, "curl-schedules.json"))
        self.http = HttpSchedules(store, self.scheduler, self.runs, self.state, self.logs["http"], clock,
                                  cfg.timezone, self.policy, self.sync)
        script_runner = self.runners.get("script")
        self._cancelled = threading.Event()
        self.catalog = ScriptCatalog(cfg.scripts_dir, cfg.default_timeout_ms, cfg.interpreters, cfg.preflight,
                                     check=script_runner.check if isinstance(script_runner, ScriptRunner) else None,
                                     environment=lambda extra: self.environment(extra), cancelled=self._cancelled)
        self.scripts = ScriptSchedules(self.catalog, self.scheduler, self.runs, self.state, self.logs["script"],
                                       os.path.join(cfg.data_dir, "exec-registered.json"), clock, cfg.timezone,
                                       notify=self._notify, sync=self.sync, outputs=self.outputs,
                                       registry=PgDocument(self.db, "exec-registered") if self.db else None,
                                       on_reload=self._announce_reload if self.cluster is not None else None)
        if self.cluster is not None:
            self.cluster.recorder = self.recorder
            self.cluster.on_notice = self._on_notice
            self.cluster.on_resync = self.http.resync
            self.cluster.on_feed = self._feed
        self.app: Callable | None = None
        self.listener: Any = None
        self._http_thread: threading.Thread | None = None
        self._saving = threading.Lock()
        self._started = False
        self._closed = False
        self.health: Health | None = None
        self._watchdog = own_process and watchdog_enabled()
        self._limit_filter = OncePerMinute()

    # -- life cycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> "Server":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def wsgi_app(self, environ: dict, start_response: Callable) -> Any:
        """The API as a WSGI app (mountable in another server); 503 until start()."""
        if self.app is None:
            body = json.dumps(error_body(environ.get("PATH_INFO", ""), 503, "SERVICE_UNAVAILABLE",
                                         "schedserver is not started")).encode()
            start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                       ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)

    def load(self) -> None:
        """Claim the data dir and load what it holds; no thread is started. Raises ConfigError/StartupError."""
        cfg = self.config
        self.data_dir.prepare()
        try:
            os.makedirs(cfg.scripts_dir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"scripts dir {cfg.scripts_dir}: cannot create ({e.strerror})") from None
        if not os.access(cfg.scripts_dir, os.R_OK | os.X_OK):
            raise ConfigError(f"scripts dir {cfg.scripts_dir}: not readable")
        self.data_dir.acquire()
        try:
            self._load_stored(cfg)
        except StorageError as e:
            raise StartupError(e.message) from None

    def _load_stored(self, cfg: Config) -> None:
        if self.db is not None:
            self.db.migrate()
            self.cluster.join()
        admin_tokens = resolve_admin_tokens(cfg)
        self.environment = script_environment(admin_tokens + cfg.read_tokens)
        try:
            self.markers.prepare()
            self.outputs.load()
        except OSError as e:
            raise ConfigError(f"data dir {cfg.data_dir}: cannot create running/ or output/ ({e.strerror})") from None
        replayed = self.state.load()
        for marker in self.markers.leftovers():
            # Runs in flight when the last process died hard: what they left running is stopped, and each is
            # recorded as interrupted, never re-run.
            if marker.get("kind") == "script":
                stop_leftovers(marker)
            recorded = self.state.get(job_key(str(marker.get("kind")), str(marker.get("ref")))).get("run_id")
            try:
                if recorded != marker.get("run_id"):    # killed after its record, before its marker went
                    self.recorder.record_leftover(marker)
            except StorageError:
                pass
            self.markers.remove(str(marker.get("run_id")))
        self.http.load()
        self.scripts.load()
        self.health = Health(self.scheduler, self.http, self.scripts, self.recorder)
        app = make_app(self.http, Auth(admin_tokens, cfg.read_tokens), self.scripts, self.health, self.metrics,
                       cfg.metrics_public)
        self.app = AccessLog(app) if cfg.access_log else app
        log.info("%d http schedules and %d script schedules loaded (%d run records replayed); data dir %s, "
                 "scripts dir %s%s", self.http.count(), self.scripts.count(), replayed, cfg.data_dir, cfg.scripts_dir,
                 f"; PostgreSQL {shown_storage_url(cfg.storage_url)}, this replica {self.cluster.id}"
                 if self.cluster is not None else "")

    def start(self, listen: bool = False) -> None:
        """load(), then run the scheduler; with `listen`, serve the API on config.host:port too. Once: a closed
        Server is not started again (build a new one)."""
        cfg = self.config
        if self._closed:
            raise StartupError("this Server was closed; build a new one to start again")
        self._started = True
        try:
            if listen:
                self._bind()
            self.load()
            if self._cancelled.is_set():
                return              # asked to stop while starting: close() follows
            if self.own_process:
                ProcessTable.become_subreaper()
            if self.pool is None:
                self.pool = WorkerPool(cfg.workers)
                self.runs.pool = self.pool
            if self.alert_sender is not None:
                self.alert_sender.start()
            self.scheduler.start()
            if self.cluster is not None:
                self.cluster.start()
            if listen:
                self._http_thread = threading.Thread(target=self._serve, name="schedserver-http", daemon=True)
                self._http_thread.start()
                host = self.listener.effective_host
                shown = f"[{host}]" if ":" in str(host) else host
                log.info("schedserver listening on http://%s:%s", shown, self.listener.effective_port)
            self._notify(f"READY=1\nSTATUS=serving {self.http.count()} http and {self.scripts.count()} "
                         "script schedules")
        except BaseException:
            self.close(grace=0)
            raise

    def _bind(self) -> None:
        cfg = self.config
        try:
            self.listener = waitress.server.create_server(
                self.wsgi_app, host=cfg.host, port=cfg.port, threads=cfg.threads, ident="schedserver",
                max_request_body_size=2 * MAX_BODY_BYTES, clear_untrusted_proxy_headers=True,
                connection_limit=cfg.connection_limit, channel_timeout=cfg.idle_timeout_seconds,
                cleanup_interval=max(1, min(10, cfg.idle_timeout_seconds // 2)),
                asyncore_use_poll=True)     # select() fails on descriptors past 1023
        except (OSError, ValueError, OverflowError) as e:   # ValueError: a host it cannot resolve
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: "
                              f"{getattr(e, 'strerror', None) or e}") from None
        self.listener.channel_class = JsonErrorChannel
        # Its warnings (the connection limit reached, accept() failing, a queue of requests) are ours to log,
        # the same one at most once a minute.
        http_log = logging.getLogger("schedserver.http")
        self.listener.logger = self.listener.task_dispatcher.logger = http_log
        self.listener.task_dispatcher.queue_logger = http_log
        http_log.addFilter(self._limit_filter)

    @property
    def serving(self) -> bool:
        """True while the HTTP listener runs."""
        return self._http_thread is not None and self._http_thread.is_alive()

    def _serve(self) -> None:
        try:
            self.listener.run()
        except Exception:
            if self.listener is not None:
                log.exception("the HTTP listener failed")

    @staticmethod
    def _in_loop(listener: Any, thunk: Callable[[], None]) -> None:
        """Have the listener's loop thread run `thunk`. Once the loop's wake-up pipe is closed the loop is ending
        (waitress closes it with the listener), and there is nothing left to ask of it."""
        try:
            listener.trigger.pull_trigger(thunk)
        except OSError as e:
            log.debug("the HTTP loop's wake-up pipe is closed already (%s)", e)

    def _stop_listening(self) -> None:
        listener, self.listener = self.listener, None
        if listener is None:
            return
        if self._http_thread is not None:
            def close_all() -> None:
                for channel in list(listener._map.values()):
                    channel.handle_close()
            self._in_loop(listener, close_all)
            self._http_thread.join(timeout=5)
            self._http_thread = None
        else:
            listener.close()
        listener.task_dispatcher.shutdown(timeout=5)
        listener.logger.removeFilter(self._limit_filter)

    def _notify(self, message: str) -> None:
        if self.own_process:
            sd_notify(message)

    def _gauges(self) -> Iterator[Any]:
        """The gauges read at each scrape: schedules by kind and state, runs in flight, the ticker's lag."""
        family = self.metrics.prom.metrics_core.GaugeMetricFamily
        schedules = family("schedserver_schedules", "Schedules, by kind and state", labels=["kind", "state"])
        enabled = self.http.count_enabled()
        schedules.add_metric(["http", "enabled"], enabled)
        schedules.add_metric(["http", "disabled"], self.http.count() - enabled)
        schedules.add_metric(["script", "registered"], self.scripts.count())
        yield schedules
        running = family("schedserver_runs_in_flight", "Runs in flight, by kind", labels=["kind"])
        counts = {"http": 0, "script": 0}
        for run in self.recorder.running_all():
            counts[run.job.kind] = counts.get(run.job.kind, 0) + 1
        for kind, count in counts.items():
            running.add_metric([kind], count)
        yield running
        yield family("schedserver_ticker_lag_seconds", "Seconds since the scheduler last ticked (or started)",
                     value=max(0.0, self.health.age()) if self.health is not None else 0.0)

    def _on_tick(self, now: float) -> None:
        """After each tick: the systemd watchdog ping and status line; run state saved when it is due."""
        if self.own_process:
            status = (f"STATUS={self.scripts.count()} script and {self.http.count()} http schedules, "
                      f"{self.recorder.count()} running; last tick {utc_iso(now)}")
            sd_notify(("WATCHDOG=1\n" if self._watchdog else "") + status)
        if self.state.due() and self.pool is not None and not self._saving.locked():
            self.pool.submit(self.save_state)

    def save_state(self) -> None:
        with self._saving:
            try:
                self.state.save()
            except OSError as e:
                log.error("cannot save the run state (%s); the next start replays more of the runs logs", e)

    # -- several replicas (PostgreSQL) ---------------------------------------------------------------------------
    def _on_notice(self, notice: dict) -> None:
        """A change another replica made: a schedule stored, or a reload of the scripts asked for there."""
        if notice.get("kind") == "http" and isinstance(notice.get("id"), str):
            self.http.refresh(notice["id"])
        elif notice.get("kind") == "script-reload":     # a scan takes a while: not in the listening thread
            threading.Thread(target=self.scripts.reload, kwargs={"reason": "another replica"},
                             name="schedserver-reload", daemon=True).start()

    def _announce_reload(self) -> None:
        try:
            self.db.execute("SELECT pg_notify(%s, %s)",
                            (PG_CHANNEL, json.dumps({"kind": "script-reload", "origin": self.cluster.id})))
        except StorageError as e:
            log.error("cannot tell the other replicas to reload their scripts: %s", e)

    def _feed(self) -> None:
        """Runs the other replicas recorded, into this replica's run state (last runs, streaks, slots)."""
        for kind, runs_log in self.logs.items():
            runs_log.poll(functools.partial(self.state.apply, kind))

    def cancel_start(self) -> None:
        """A stop asked for while start() runs (from a signal handler): the scan stops checking scripts, and
        start() returns without firing or serving; close() follows."""
        self._cancelled.set()
        script_runner = self.runners.get("script")
        if isinstance(script_runner, ScriptRunner):
            script_runner.cancel_checks()

    def reload_scripts(self) -> None:
        """SIGHUP: rescan the scripts dir in a thread of its own (never inside the signal handler)."""
        def run() -> None:
            try:
                self.scripts.reload(reason="SIGHUP")
            except Exception:
                log.exception("SIGHUP reload failed")
        if self.app is None:
            log.info("SIGHUP while starting: ignored (the start scans the scripts dir itself)")
            return
        threading.Thread(target=run, name="schedserver-reload", daemon=True).start()

    def close(self, grace: float | None = None) -> None:
        """Stop firing and serving, give runs in flight `grace` seconds (config.shutdown_grace_seconds by
        default), stop and record the rest as interrupted, save the run state and let go of the data dir."""
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._notify("STOPPING=1")
        self._started = False
        self.scheduler.stop()
        self.cancel_start()         # a scan in progress stops checking scripts
        self.scripts.close()
        if self.listener is not None and self._http_thread is not None:
            listener = self.listener        # no new connections: its socket closed (its trigger stays)
            self._in_loop(listener, lambda: waitress.wasyncore.dispatcher.close(listener))
        if self.recorder.count():
            log.info("waiting up to %.0f s for %d run(s) in flight", grace, self.recorder.count())
        stopped = self.runs.stop(time.monotonic() + grace)
        if stopped:
            log.warning("%d run(s) interrupted by shutdown", stopped)
        self._stop_listening()
        if self._own_pool and self.pool is not None:
            self.pool.shutdown()
            self.pool = self.runs.pool = None
        if self.alert_sender is not None:
            self.alert_sender.close()
        for runner in self.runners.values():
            runner.close()
        self.deadlines.close()
        self.http.store.wait_compacted()
        if self.cluster is not None:
            self.cluster.stop()
            if self.app is not None:
                self.cluster.leave()
        if self.app is not None:
            self.save_state()
        if self.db is not None:
            self.db.close()
        self.app = None
        self.data_dir.release()


###############################################################################
# Client #######################################################################
###############################################################################

class ClientError(ApiError):
    """The server refused a request (a 4xx answer): `status`, `code` and `message` say why."""


class ServerError(ApiError):
    """The server failed (a 5xx answer), or could not be reached (`status` 0)."""


class Client:
    """A client of a schedserver's API, on one requests session (no ~/.netrc, no proxies from the environment)::

        client = schedserver.Client("http://127.0.0.1:8080", token)
        client.curl.schedules.create(cron="0 */5 * * * *", request={"url": "https://example.com/ping"})
        client.exec.schedules.trigger_schedule(script_path="ops/hello.sh")

    Every call has a timeout; errors raise ClientError (4xx) or ServerError (5xx, or no answer)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        import requests
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False
        self.curl = _Namespace(schedules=HttpSchedulesClient(self))
        self.exec = _Namespace(schedules=ScriptSchedulesClient(self))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
                timeout: float | None = None) -> Any:
        """One API call: the answer's JSON, or ClientError / ServerError."""
        import requests
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        params = {k: ("true" if v is True else "false" if v is False else v) for k, v in (params or {}).items()
                  if v is not None}
        try:
            response = self.session.request(method, self.url + path, params=params, headers=headers,
                                            json=body, timeout=timeout or self.timeout)
        except requests.RequestException as e:
            raise ServerError(f"cannot reach {self.url}: {_short_error(e)}", code="UNREACHABLE", status=0) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code < 400:
            return answer
        code, message = "ERROR", response.text[:500]
        if isinstance(answer, dict):
            code = str(answer.get("code") or answer.get("error") or code)
            message = str(answer.get("message") or message)
        error = ClientError if response.status_code < 500 else ServerError
        raise error(message, code=code, status=response.status_code)


@dataclass
class _Namespace:
    schedules: Any


class HttpSchedulesClient:
    """`client.curl.schedules`: the HTTP request schedule routes."""

    def __init__(self, client: Client):
        self.client = client

    def list(self, page: int | None = None, limit: int | None = None) -> dict:
        return self.client.request("GET", CURL_PREFIX, params={"page": page, "limit": limit})

    def list_iterator(self, limit: int = 100) -> Iterator[dict]:
        """Every schedule, newest first, a page of `limit` at a time."""
        page = 1
        while True:
            answer = self.list(page=page, limit=limit)
            yield from answer["items"]
            if page * limit >= answer["meta"]["total"] or not answer["items"]:
                return
            page += 1

    def get(self, schedule_id: str) -> dict:
        return self.client.request("GET", f"{CURL_PREFIX}/{_quote(schedule_id)}")

    def create(self, cron: str, request: dict, **fields: Any) -> dict:
        return self.client.request("POST", CURL_PREFIX, body={"cron": cron, "request": request, **fields})

    def update(self, schedule_id: str, **fields: Any) -> dict:
        return self.client.request("PATCH", f"{CURL_PREFIX}/{_quote(schedule_id)}", body=fields)

    def toggle(self, schedule_id: str, enabled: bool | None = None) -> dict:
        return self.client.request("PATCH", f"{CURL_PREFIX}/{_quote(schedule_id)}/toggle",
                                   body=None if enabled is None else {"enabled": enabled})

    def delete(self, schedule_id: str) -> dict:
        return self.client.request("DELETE", f"{CURL_PREFIX}/{_quote(schedule_id)}")

    def run(self, schedule_id: str, wait: bool = True) -> dict:
        """Run it now: the finished run, or with wait=False {"run_id"} at once."""
        return self.client.request("POST", f"{CURL_PREFIX}/{_quote(schedule_id)}/run",
                                   params=None if wait else {"wait": False}, timeout=MAX_HTTP_TIMEOUT + 30)

    def runs(self, schedule_id: str, limit: int | None = None, status: str | None = None,
             since: str | None = None) -> Iterator[dict]:
        """Its runs, newest first: each page ({"items", "next_cursor"}) in turn."""
        cursor = None
        while True:
            page = self.client.request("GET", f"{CURL_PREFIX}/{_quote(schedule_id)}/runs",
                                       params={"limit": limit, "status": status, "since": since, "cursor": cursor})
            yield page
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def get_run(self, schedule_id: str, run_id: str) -> dict:
        return self.client.request("GET", f"{CURL_PREFIX}/{_quote(schedule_id)}/runs/{_quote(run_id)}")


class ScriptSchedulesClient:
    """`client.exec.schedules`: the script schedule routes (named as the contract's SDK names them)."""

    def __init__(self, client: Client):
        self.client = client

    def list_schedules(self) -> dict:
        return self.client.request("GET", EXEC_PREFIX + "/list")

    def schedule_history(self, script_path: str | None = None, since: str | None = None, limit: int | None = None,
                         include_rotated: bool | None = None) -> dict:
        return self.client.request("GET", EXEC_PREFIX + "/history", params={
            "scriptPath": script_path, "since": since, "limit": limit, "includeRotated": include_rotated})

    def reload_schedules(self, dry_run: bool = False) -> dict:
        return self.client.request("POST", EXEC_PREFIX + "/reload", body={"dry_run": dry_run})

    def trigger_schedule(self, script_path: str, force: bool = False) -> dict:
        return self.client.request("POST", EXEC_PREFIX + "/trigger", body={"scriptPath": script_path, "force": force},
                                   timeout=MAX_SCRIPT_TIMEOUT_MS / 1000 + 30)

    def run(self, run_id: str) -> dict:
        return self.client.request("GET", f"{EXEC_PREFIX}/runs/{_quote(run_id)}")


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


###############################################################################
# CLI ##########################################################################
###############################################################################

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def _escape_controls(text: str) -> str:
    """Control characters as escapes, so a value (a file name, an error) can never split or forge a log line."""
    return _CONTROL.sub(lambda m: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(m.group(), f"\\x{ord(m.group()):02x}")
                        if ord(m.group()) < 0x80 else f"\\u{ord(m.group()):04x}", text)


class TextFormatter(logging.Formatter):
    """The text log format, with control characters in messages escaped (tracebacks keep their lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: ts, level, logger, message, and a run's ids as fields."""

    FIELDS = ("run_id", "kind", "schedule", "status")

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": utc_iso(record.created, ms=True), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        entry.update({name: getattr(record, name) for name in self.FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt_name: str = "text") -> None:
    """For the CLI: schedserver's loggers to stderr at `level` (journald adds its own timestamps)."""
    handler = logging.StreamHandler(sys.stderr)
    under_journald = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    fmt = "%(levelname)s %(message)s" if under_journald else "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(JsonFormatter() if fmt_name == "json" else TextFormatter(fmt))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    waitress_log = logging.getLogger("waitress")
    waitress_log.handlers[:] = [handler]
    waitress_log.propagate = False
    waitress_log.setLevel(logging.ERROR if level != "DEBUG" else logging.INFO)


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise the soft limit on open files toward `wanted` (never past the hard limit): each client connection
    takes a descriptor, and systemd's default soft limit is 1,024. Returns the soft limit now."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        return soft
    except (OSError, ValueError) as e:
        log.warning("cannot raise the open files limit: %s", e)
        return -1


COMMANDS = ("serve", "ls", "get", "add", "edit", "enable", "disable", "rm", "run", "runs", "history", "reload",
            "next", "check", "migrate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `serve` when no command is named (`schedserver --port 0` serves)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv.insert(0, "serve")
    parser = argparse.ArgumentParser(prog="schedserver", description="Cron scheduling server (REST) and its client.")
    parser.add_argument("--version", action="version", version=f"schedserver {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    config_options = argparse.ArgumentParser(add_help=False)
    config_options.add_argument("--config", help="TOML config file (also SCHEDSERVER_CONFIG)")
    serve = commands.add_parser("serve", parents=[config_options], help="run the server (the default)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on; 0 picks a free one (default 8080)")
    serve.add_argument("--data-dir", dest="data_dir", help="where schedules and logs live (default ./data)")
    serve.add_argument("--scripts-dir", dest="scripts_dir", help="where scripts live (default ./scripts)")
    auth = argparse.ArgumentParser(add_help=False, parents=[config_options])
    auth.add_argument("--token", help="a token (default SCHEDSERVER_TOKEN, else the local config's or data dir's)")
    auth.add_argument("--json", action="store_true", help="print the server's JSON answer")
    remote = argparse.ArgumentParser(add_help=False, parents=[auth])
    remote.add_argument("--url", "--server", dest="server",
                        help="the server (default SCHEDSERVER_URL, else the local config's address)")
    ls = commands.add_parser("ls", parents=[remote], help="list HTTP and script schedules in one table")
    ls.add_argument("--kind", choices=("http", "script"))
    commands.add_parser("get", parents=[remote], help="one HTTP schedule").add_argument("id")
    for name, what in (("add", "create an HTTP schedule"), ("edit", "edit an HTTP schedule")):
        sub = commands.add_parser(name, parents=[auth], help=what)
        sub.add_argument("--server", dest="server", help="the server (default SCHEDSERVER_URL, else the local "
                                                         "config's address)")
        if name == "edit":
            sub.add_argument("id")
        sub.add_argument("--cron", required=name == "add")
        sub.add_argument("--url", dest="target", required=name == "add", metavar="URL",
                         help="the URL the schedule requests")
        sub.add_argument("--method")
        sub.add_argument("--header", action="append", default=[], metavar="K:V")
        sub.add_argument("--json-body", metavar="JSON")
        sub.add_argument("--body")
        sub.add_argument("--name")
        sub.add_argument("--timezone")
        sub.add_argument("--retry", type=int, metavar="COUNT")
        sub.add_argument("--disabled", action="store_true")
    for name in ("enable", "disable", "rm"):
        commands.add_parser(name, parents=[remote], help=f"{name} an HTTP schedule").add_argument("id")
    run = commands.add_parser("run", parents=[remote], help="run an HTTP schedule (its id) or a script (its path) now")
    run.add_argument("target", metavar="ID_OR_SCRIPT")
    run.add_argument("--force", action="store_true", help="a script with @token: run it all the same")
    for name in ("runs", "history"):
        sub = commands.add_parser(name, parents=[remote], help="runs of an HTTP schedule (its id) or of scripts")
        sub.add_argument("target", nargs="?", metavar="ID_OR_SCRIPT")
        sub.add_argument("--limit", type=int, default=20)
    commands.add_parser("reload", parents=[remote], help="rescan the scripts dir").add_argument(
        "--dry-run", action="store_true")
    preview = commands.add_parser("next", help="the next fire times of a cron expression (no server needed)")
    preview.add_argument("expression")
    preview.add_argument("--tz", default="UTC")
    preview.add_argument("-n", type=int, default=5)
    check = commands.add_parser("check", parents=[config_options],
                                help="check scripts' directives and syntax (no server needed); exit 1 on a failure")
    check.add_argument("scripts", nargs="*", metavar="SCRIPT")
    check.add_argument("--scripts-dir", dest="scripts_dir")
    migrate = commands.add_parser("migrate", parents=[config_options],
                                  help="copy a data dir's schedules, registrations and runs into an empty PostgreSQL")
    migrate.add_argument("--to", required=True, metavar="URL", help="postgresql://... (an empty database)")
    migrate.add_argument("--data-dir", dest="data_dir", help="the data dir to copy (default: the config's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status: 0, 1 for a failure the command reports, 2 for usage and
    problems the user can fix."""
    args = parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "next":
            return cli_next(args)
        if args.command == "check":
            return cli_check(args)
        if args.command == "migrate":
            return cli_migrate(args)
        return cli_remote(args)
    except ConfigError as e:
        print(f"schedserver: {e}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM or SIGINT (SIGHUP reloads the scripts)."""
    config = load_config(vars(args))
    setup_logging(config.log_level, config.log_format)
    raise_open_file_limit()
    server = Server(config, own_process=True)
    stop = threading.Event()
    reason: list[str] = []

    def on_stop(signum: int, frame: Any) -> None:
        if stop.is_set():
            os._exit(1)         # a second signal: stop at once
        reason.append(signal.Signals(signum).name)
        stop.set()
        server.cancel_start()

    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop,
                signal.SIGHUP: lambda signum, frame: server.reload_scripts()}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        try:
            server.start(listen=True)
        except (ConfigError, StartupError) as e:
            print(f"schedserver: {e}", file=sys.stderr)
            return 2
        while not stop.wait(1.0):
            if not server.serving:
                reason.append("the HTTP listener stopped")
                break
        log.info("schedserver stopping (%s)", reason[0] if reason else "signal")
        server.close()
        log.info("schedserver stopped")
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cli_next(args: argparse.Namespace) -> int:
    try:
        cron = parse_cron(args.expression)
        tz = load_timezone(args.tz)
    except (InvalidCron, ValueError) as e:
        print(f"schedserver: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    print(cron.describe())
    at = time.time()
    for _ in range(max(1, min(args.n, 1000))):
        following = cron.next_after(at, tz)
        if following is None:
            break
        local = datetime.fromtimestamp(following, tz)
        print(f"{local.isoformat()}  {utc_iso(following)}")
        at = following
    return 0


def cli_check(args: argparse.Namespace) -> int:
    """Each script's directives and syntax check, as the server would see them."""
    environ = dict(os.environ)
    config = load_config({"config": args.config, "scripts_dir": args.scripts_dir}, environ)
    targets = args.scripts or None
    catalog = ScriptCatalog(config.scripts_dir, config.default_timeout_ms, config.interpreters, config.preflight)
    failures = 0
    if targets is None:
        if not os.path.isdir(config.scripts_dir):
            raise ConfigError(f"scripts dir {config.scripts_dir}: not a directory")
        found, failed = catalog.scan()
        for rel in sorted(found):
            print(f"ok      {rel}  {found[rel].cron.expression}  ({found[rel].cron.describe()})")
        for problem in failed:
            print(f"FAILED  {problem['path']}: {problem['reason']}")
        failures = len(failed)
    else:
        for path in targets:
            full = os.path.abspath(path)
            checker = ScriptCatalog(os.path.dirname(full), config.default_timeout_ms, config.interpreters,
                                    config.preflight)
            outcome = checker._outcome(os.path.basename(full)) if os.path.isfile(full) else \
                {"path": path, "reason": "no such file"}
            if isinstance(outcome, dict):
                print(f"FAILED  {path}: {outcome['reason']}")
                failures += 1
            elif outcome is None:
                print(f"skip    {path}: no @schedule")
            else:
                print(f"ok      {path}  {outcome.cron.expression}  ({outcome.cron.describe()})")
    return 1 if failures else 0


def cli_migrate(args: argparse.Namespace) -> int:
    """Copy a single-node data dir into an empty PostgreSQL database (the server must be stopped)."""
    config = load_config({"config": args.config, "data_dir": args.data_dir})
    url = _to_storage_url(args.to) if args.to else None
    if url is None:
        raise ConfigError("--to must be a postgresql:// URL")
    if not os.path.isdir(config.data_dir):
        raise ConfigError(f"data dir {config.data_dir}: not a directory")
    data_dir = DataDir(config.data_dir)
    db = PgDatabase(url, statement_timeout_ms=0, idle_in_transaction_ms=0)     # one long transaction
    try:
        data_dir.acquire()
        db.migrate()
        counts = migrate_to_postgres(config, db)
    except (StartupError, StorageError) as e:
        raise ConfigError(getattr(e, "message", None) or str(e)) from None
    finally:
        data_dir.release()
        db.close()
    print(f"copied {counts['definitions']} http schedules, {counts['registered']} script registrations and "
          f"{counts['runs']} run records from {config.data_dir} to {shown_storage_url(url)}")
    return 0


def migrate_to_postgres(config: Config, db: PgDatabase) -> dict:
    """The data dir's definitions, scripts' registry and runs logs (rotated files too), into `db`, in one
    transaction; refused unless the database holds nothing of schedserver's yet."""
    definitions = JournalStore(os.path.join(config.data_dir, "curl-schedules.json")).load()
    registry = JsonFile(os.path.join(config.data_dir, "exec-registered.json")).load(None)
    logs = {"http": NdjsonLog(os.path.join(config.data_dir, "curl-runs.log"), 0, config.runs_log_backups),
            "script": NdjsonLog(os.path.join(config.data_dir, "fires.log"), 0, config.fires_log_backups)}
    jsonb = db.psycopg.types.json.Jsonb
    counts = {"definitions": len(definitions), "registered": 0, "runs": 0}
    with db.transaction() as conn:
        if conn.execute("SELECT EXISTS (SELECT 1 FROM definitions) OR EXISTS (SELECT 1 FROM runs) "
                        "OR EXISTS (SELECT 1 FROM documents)").fetchone()[0]:
            raise StartupError("the target database already holds schedserver data; migrate into an empty one")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO definitions (kind, id, doc, version) "
                            "VALUES ('http', %s, %s, nextval('definition_versions'))",
                            [(d["id"], jsonb(d)) for d in definitions])
            if isinstance(registry, dict):
                cur.execute("INSERT INTO documents (name, doc) VALUES ('exec-registered', %s)", (jsonb(registry),))
                counts["registered"] = len(registry.get("registered") or ())
            for kind, runs_log in logs.items():
                ref_field, id_field = RECORD_FIELDS[kind][:2]
                batch = []
                for record in runs_log.read_after(None):
                    if isinstance(record.get(ref_field), str) and isinstance(record.get(id_field), str):
                        batch.append((kind, record[ref_field], record[id_field],
                                      json.dumps(record, separators=(",", ":"), ensure_ascii=False)))
                cur.executemany("INSERT INTO runs (kind, ref, run_id, line) VALUES (%s, %s, %s, %s) "
                                "ON CONFLICT (run_id) DO NOTHING", batch)
                counts["runs"] += len(batch)
    return counts


def cli_connection(args: argparse.Namespace) -> tuple[str, str | None]:
    """The server's URL and a token: flags, then SCHEDSERVER_URL / SCHEDSERVER_TOKEN, then the local config."""
    url, token = args.server or os.environ.get("SCHEDSERVER_URL"), args.token or os.environ.get("SCHEDSERVER_TOKEN")
    if url and token:
        return url, _first_token(token)
    config = load_config({"config": args.config})
    if not url:
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
        url = f"http://{f'[{host}]' if ':' in host else host}:{config.port}"
    if not token:
        token = (config.tokens or (None,))[0]
        if token is None and config.token_file:
            try:
                token = open(config.token_file, encoding="utf-8").read()
            except OSError:
                token = None
        if token is None:
            try:
                token = open(os.path.join(config.data_dir, "api-token"), encoding="utf-8").read().strip() or None
            except OSError:
                token = None
    return url, _first_token(token) if token else None


def _first_token(tokens: str) -> str | None:
    """The first of tokens written as the server reads them (comma- or space-separated)."""
    return next((t for t in re.split(r"[,\s]+", tokens) if t), None)


def cli_remote(args: argparse.Namespace) -> int:
    """The commands that ask the server."""
    url, token = cli_connection(args)
    with Client(url, token) as client:
        try:
            answer = cli_call(client, args)
        except ApiError as e:
            print(f"schedserver: {e.status or ''} {e.code}: {e.message}".replace("  ", " "), file=sys.stderr)
            return 1
    if answer is not None:
        print(json.dumps(answer, indent=2) if args.json or not isinstance(answer, str) else answer)
    return 0


def cli_call(client: Client, args: argparse.Namespace) -> Any:
    http, scripts = client.curl.schedules, client.exec.schedules
    command = args.command
    if command == "ls":
        rows = []
        if args.kind in (None, "http"):
            for s in http.list_iterator():
                rows.append(["http", s["id"], s.get("name") or "", s["cron"], "yes" if s["enabled"] else "no",
                             s.get("next_run") or "-", "", s["id"]])
        if args.kind in (None, "script"):
            for s in scripts.list_schedules()["schedules"]:
                rows.append(["script", s["scriptRel"], s.get("description") or "", s["expression"], "yes",
                             s.get("nextFire") or "-", s.get("lastFireStatus") or "-", None])
        for row in rows:
            if row[0] == "http":
                runs = next(http.runs(row[7], limit=1), {"items": []})["items"]
                row[6] = runs[0]["status"] if runs else "-"
        if args.json:
            return [dict(zip(("kind", "id", "name", "cron", "enabled", "next", "last_status"), row[:7]))
                    for row in rows]
        return _table(["KIND", "ID/SCRIPT", "NAME", "CRON", "ENABLED", "NEXT", "LAST"], [r[:7] for r in rows])
    if command == "get":
        return http.get(args.id)
    if command in ("add", "edit"):
        fields = cli_fields(args)
        return http.create(**fields) if command == "add" else http.update(args.id, **fields)
    if command in ("enable", "disable"):
        return http.toggle(args.id, enabled=command == "enable")
    if command == "rm":
        return http.delete(args.id)
    if command == "run":
        if _is_uuid(args.target):
            return http.run(args.target)
        return scripts.trigger_schedule(args.target, force=args.force)
    if command in ("runs", "history"):
        if args.target and _is_uuid(args.target):
            return next(http.runs(args.target, limit=args.limit))
        return scripts.schedule_history(script_path=args.target, limit=args.limit)
    if command == "reload":
        return scripts.reload_schedules(dry_run=args.dry_run)
    raise ConfigError(f"unknown command {command}")


def cli_fields(args: argparse.Namespace) -> dict:
    """An HTTP schedule's fields from `add`/`edit` options."""
    fields: dict[str, Any] = {}
    if args.cron:
        fields["cron"] = args.cron
    request: dict[str, Any] = {}
    if args.target:
        request["url"] = args.target
    if args.method:
        request["method"] = args.method
    if args.header:
        headers = {}
        for item in args.header:
            name, sep, value = item.partition(":")
            if not sep:
                raise ConfigError(f"--header {item!r}: use NAME:VALUE")
            headers[name.strip()] = value.strip()
        request["headers"] = headers
    if args.json_body is not None:
        try:
            request["json"] = json.loads(args.json_body)
        except ValueError as e:
            raise ConfigError(f"--json-body is not JSON ({e})") from None
    if args.body is not None:
        request["body"] = args.body
    if request:
        if "url" not in request:
            raise ConfigError("--url is needed with the request options (edit replaces the whole request)")
        fields["request"] = request
    for name in ("name", "timezone"):
        if getattr(args, name):
            fields[name] = getattr(args, name)
    if args.retry is not None:
        fields["retry"] = {"count": args.retry}
    if args.disabled:
        fields["enabled"] = False
    return fields


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


if __name__ == "__main__":
    sys.exit(main())
