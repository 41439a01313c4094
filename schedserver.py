"""schedserver: a cron scheduling server for script and HTTP request schedules, driven over REST.

One module by design: drop it on a box or embed it.

    schedserver [serve] [--config FILE] [--host HOST] [--port PORT] [--data-dir DIR] [--scripts-dir DIR]

is the same as ``python schedserver.py ...`` and ``python -m schedserver ...``. Sections follow the data:
constants, errors, config, time and cron, storage, runners, scheduler, services, web, CLI.
"""

from __future__ import annotations

__version__ = "0.1.0"

import argparse
import bisect
import calendar
import copy
import fcntl
import functools
import gc
import hmac
import ipaddress
import itertools
import heapq
import http.client
import json
import logging
import os
import re
import resource
import secrets
import select
import selectors
import shlex
import shutil
import signal
import subprocess
import socket
import sys
import tempfile
import threading
import time
import tomllib
import traceback
import urllib.parse
import uuid
from collections import deque
import queue
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import bottle
import certifi
import croniter
import filelock
import urllib3
import urllib3.connection
import urllib3.exceptions
import waitress.channel
import waitress.parser
import waitress.server
import waitress.task

log = logging.getLogger("schedserver")


###############################################################################
# Constants and defaults #######################################################
###############################################################################

API_PREFIX = "/api/v1"
CURL_PREFIX = API_PREFIX + "/curl/schedule"
EXEC_PREFIX = API_PREFIX + "/exec/schedules"

MAX_BODY_BYTES = 1024 * 1024            # request bodies above this answer 413
MAX_RESPONSE_BYTES = 64 * 1024          # an HTTP run reads at most this much of the target's answer
HISTORY_SIZE = 20                       # runs kept per HTTP schedule for GET /{id}
MAX_NAME_LENGTH = 200
MAX_HTTP_TIMEOUT = 300.0
MAX_REDIRECTS = 10
TICKER_SEND_MAX_BYTES = 16 * 1024       # a run the ticker starts itself writes at most this much
TICKER_SEND_TIMEOUT = 0.5               # and waits at most this long for the write (an idle connection: never)
KEPT_PER_ORIGIN_MAX = 1024              # idle connections kept per origin for runs due soon
KEPT_CONNECTIONS_MAX = 8192             # and in all (also at most half the process's descriptor limit)
KEPT_IDLE_SECONDS = 30.0                # a kept connection unused this long is closed
KEPT_CONNECT_TIMEOUT = 10.0
KEPT_RETRY_SECONDS = 30.0               # after a failed open, no connections are opened ahead for that origin
OPEN_FILES_WANTED = 65536               # the soft descriptor limit main() raises to (within the hard limit)
MISSED_SCAN_LIMIT = 3000                # missed slots counted one by one (~60 us each); beyond, "at least"
FILE_LOCK_TIMEOUT = 10.0                # seconds a writer waits for a file lock before reporting a storage error
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CRON_HELP = ("use 6 fields: second minute hour day month weekday, e.g. '0 0 9 * * MON-FRI' "
             "(5-field expressions and @hourly, @daily, @weekly, @monthly, @yearly are accepted too)")
MAX_SCRIPT_TIMEOUT_MS = 24 * 3600 * 1000
MAX_OUTPUT_BYTES = 64 * 1024            # the tail of a script's stdout and of its stderr kept in memory
HEADER_BYTES = 16 * 1024                # directives are read from at most this much of a script's head
MARKER_SLOTS_KEPT = 1024                # empty run-marker files kept open for the next runs (at most 1/8 of the
                                        # descriptors this process may open)
OUTPUT_DRAIN_SECONDS = 5.0              # after a script exits, its pipes may stay open this long
KILL_GRACE_SECONDS = 2.0                # between SIGTERM and SIGKILL for a script's process group
PREFLIGHT_TIMEOUT_SECONDS = 20.0
PREFLIGHT_DRIVERS = min(4, os.cpu_count() or 1)     # processes running syntax checks during a rescan
HISTORY_MAX_LIMIT = 1000
MAX_JSON_DEPTH = 64                     # nesting allowed in a stored request.json
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
        if code:
            self.code = code
        if status:
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


class StorageError(ApiError, OSError):
    status, code = 500, "STORAGE_ERROR"


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
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(v.strip() for v in value if v.strip())


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
        if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
            raise ValueError(f"{ext}: expected a command as a string or a list of strings")
        table[ext.lower()] = tuple(command)
    return table


# (section, key, converter, default, environment variable). Every config key is here; anything else is an error.
CONFIG_TABLE: tuple[tuple[str, str, Callable[[Any], Any], Any, str | None], ...] = (
    ("server", "host", _to_str, "127.0.0.1", "SCHEDSERVER_HOST"),
    ("server", "port", _to_int(0, 65535), 8080, "SCHEDSERVER_PORT"),
    ("server", "data_dir", _to_str, DEFAULT_DATA_DIR, "SCHEDSERVER_DATA_DIR"),
    ("server", "scripts_dir", _to_str, DEFAULT_SCRIPTS_DIR, "SCHEDSERVER_SCRIPTS_DIR"),
    ("server", "threads", _to_int(1, 256), 8, "SCHEDSERVER_THREADS"),
    ("server", "log_level", _to_log_level, "INFO", "SCHEDSERVER_LOG_LEVEL"),
    ("server", "access_log", _to_bool, False, "SCHEDSERVER_ACCESS_LOG"),
    ("server", "shutdown_grace_seconds", _to_int(0, 3600), 10, "SCHEDSERVER_SHUTDOWN_GRACE_SECONDS"),
    ("scheduler", "timezone", _to_timezone_name, "UTC", "SCHEDSERVER_TIMEZONE"),
    ("scheduler", "workers", _to_int(1, 1024), 8, "SCHEDSERVER_WORKERS"),
    ("scheduler", "misfire_grace_seconds", _to_int(1, 3600), 30, "SCHEDSERVER_MISFIRE_GRACE_SECONDS"),
    ("auth", "tokens", _to_str_list, (), "SCHEDSERVER_TOKEN"),
    ("auth", "read_tokens", _to_str_list, (), "SCHEDSERVER_READ_TOKEN"),
    ("auth", "token_file", _to_str, None, "SCHEDSERVER_TOKEN_FILE"),
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
)
PATH_KEYS = ("data_dir", "scripts_dir", "token_file")


@dataclass(frozen=True)
class Config:
    """Validated settings; paths are absolute."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = DEFAULT_DATA_DIR
    scripts_dir: str = DEFAULT_SCRIPTS_DIR
    threads: int = 8
    log_level: str = "INFO"
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
    config_file: str | None = None


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
                shown = "a value (not shown: it may be a secret)" if section == "auth" else repr(value)
                raise ConfigError(f"{where}: {e}, got {shown}") from None
        if key in PATH_KEYS and value is not None:
            value = os.path.abspath(os.path.join(origin_dir, os.path.expanduser(value)))
        values[key] = value
    return Config(**values, config_file=config_file)


def _from_text(text: Any, default: Any) -> Any:
    """An environment variable or flag as the type of its key: whole numbers, comma-separated lists."""
    if not isinstance(text, str):
        return text
    if isinstance(default, bool):
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
            text.strip().lower(), text)
    if isinstance(default, int) and re.fullmatch(r"\s*-?[0-9]+\s*", text):
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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


###############################################################################
# Time and cron ################################################################
###############################################################################

def load_timezone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError with a readable message when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):     # OSError: 'America' is a directory
        raise ValueError(f"unknown timezone {name!r} (use an IANA name such as 'UTC' or 'Europe/Berlin')") from None


def utc_iso(ts: float | None, *, ms: bool = False) -> str | None:
    """An epoch instant as UTC ISO 8601 with `Z`: second precision, or milliseconds with ms=True."""
    if ts is None:
        return None
    # isoformat is C and five times faster than strftime; "+00:00" becomes "Z", milliseconds are truncated
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds" if ms else "seconds")[:-6] + "Z"


def parse_iso(text: str) -> float:
    """An ISO 8601 timestamp as an epoch instant (naive means UTC). ValueError if unparsable."""
    if not isinstance(text, str):
        raise ValueError("expected an ISO 8601 string")
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


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
CRON_CHECK_FROM = 946684800.0    # 2000-01-01: every valid expression fires within croniter's search window from here
_CRON_ITEM = re.compile(r"^(?:(\*)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?$")


@dataclass(frozen=True)
class CronSpec:
    """A validated cron expression: as the user wrote it, and as six fields, seconds first."""

    expression: str
    fields: tuple[str, ...]
    # Vixie cron: when the day or the weekday field starts with `*`, a date must match both fields, else
    # either. croniter decides by "is the field exactly *", so parse_cron works the mode out and passes it on.
    day_and_weekday: bool = True

    @property
    def wildcard_time(self) -> bool:
        """True when the minute or hour field starts with `*` (Vixie cron's 'wildcard job')."""
        return self.fields[1].startswith("*") or self.fields[2].startswith("*")

    def next_after(self, after: float, tz: ZoneInfo) -> float | None:
        """The first fire instant strictly after `after` (epoch seconds), or None if it never fires again.

        Remembers its last answer per timezone: every `after` from the last one asked up to that answer has
        the same answer, so schedules sharing an expression (and a last slot) cost one croniter step together.
        """
        key = getattr(tz, "key", None) or str(tz)
        known = self._memo.get(key)
        if known is not None and known[0] <= after < known[1]:
            return known[1]
        result = self._next_once(after, tz)
        if result is not None:
            self._memo[key] = (after, result)
        return result

    def iter_after(self, after: float, tz: ZoneInfo) -> Iterator[float]:
        """Fire instants strictly after `after`, strictly increasing as UTC instants."""
        while True:
            after = self._next_once(after, tz)
            if after is None:
                return
            yield after

    @functools.cached_property
    def _memo(self) -> dict[str, tuple[float, float]]:
        return {}

    @functools.cached_property
    def _template(self) -> croniter.croniter:
        """A croniter with the expression expanded once; the slow path copies it (building one costs ~150 us)."""
        return croniter.croniter(" ".join(self.fields), 0.0, second_at_beginning=True,
                                 implement_cron_bug=self.day_and_weekday)

    @functools.cached_property
    def _sets(self) -> tuple | None:
        """The fields as croniter expands them, as sorted tuples (None for every value), for the fast path."""
        try:
            second, minute, hour, day, month, weekday = (_croniter_field(i, text) for i, text in enumerate(self.fields))
        except (croniter.CroniterError, ValueError, TypeError):
            return None
        either = day is not None and weekday is not None and not self.day_and_weekday
        return second, minute, hour, day, month, frozenset(weekday) if weekday else None, either

    def _next_once(self, after: float, tz: ZoneInfo) -> float | None:
        """The next fire strictly after `after`: on the local calendar when the clock keeps one UTC offset from
        `after` to the answer (and the answer's wall time is not repeated), else by croniter, which handles DST."""
        sets = self._sets
        if sets is not None:
            try:
                start = datetime.fromtimestamp(after, tz)
                wall = _next_wall(sets, start.replace(tzinfo=None, microsecond=0))
                if wall is not None:
                    candidate = wall.replace(tzinfo=tz)
                    offset = candidate.utcoffset()
                    if offset == start.utcoffset() and offset == candidate.replace(fold=1).utcoffset():
                        ts = candidate.timestamp()
                        if ts > after:
                            return ts
            except (OverflowError, ValueError):
                pass
        return next(self._croniter_after(after, tz), None)

    def _croniter_after(self, after: float, tz: ZoneInfo) -> Iterator[float]:
        """Fire instants strictly after `after` by croniter, strictly increasing as UTC instants.

        Vixie cron runs a fixed-time job once when the clock falls back; croniter would run it in both
        passes of the repeated hour, so the second pass is skipped here for non-wildcard jobs.
        """
        try:
            it = copy.copy(self._template)
            it.set_current(datetime.fromtimestamp(after, tz), force=True)
            last, stuck = after, 0
            while stuck < 8:        # croniter answering the same instant again and again: give up
                ts = it.get_next(datetime).timestamp()
                if ts <= last:
                    stuck += 1
                    continue
                last, stuck = ts, 0
                if not self.wildcard_time and _in_repeated_second_pass(ts, tz):
                    continue        # at most an hour of candidates, each later than the last
                yield ts
        except (croniter.CroniterBadDateError, OverflowError, ValueError):
            return


@functools.lru_cache(maxsize=2048)
def _croniter_field(index: int, text: str) -> tuple[int, ...] | None:
    """croniter's expansion of one field (CRON_FIELDS order) alone, None for every value. Fields recur across
    expressions far more than whole expressions do, and expanding an expression is most of a croniter's cost."""
    fields = ["*"] * 6
    fields[index] = text
    expanded = croniter.croniter(" ".join(fields), 0.0, second_at_beginning=True).expanded
    values = expanded[(5, 0, 1, 2, 3, 4)[index]]      # croniter keeps the seconds field last
    if values == ["*"]:
        return None
    if not all(isinstance(v, int) for v in values):
        raise ValueError(f"unexpected expansion {values!r}")
    return tuple(sorted(set(values)))


_FAST_SCAN_DAYS = 1000      # days without a matching date after which the fast path hands over to croniter


def _first_at_least(values: tuple[int, ...] | None, value: int) -> int | None:
    """The smallest of `values` (None: any value) that is >= `value`, or None."""
    if values is None:
        return value
    i = bisect.bisect_left(values, value)
    return values[i] if i < len(values) else None


def _next_wall(sets: tuple, wall: datetime) -> datetime | None:
    """The first local wall-clock time strictly after `wall` (whole seconds) that matches the fields, on the
    plain calendar; None when none is found within _FAST_SCAN_DAYS."""
    seconds, minutes, hours, days, months, weekdays, either = sets
    day = wall.date()
    h, m, sec = wall.hour, wall.minute, wall.second + 1
    for _ in range(_FAST_SCAN_DAYS):
        if months is not None and day.month not in months:
            first = _first_at_least(months, day.month + 1)
            day = date(day.year, first, 1) if first is not None else date(day.year + 1, months[0], 1)
            h = m = sec = 0
            continue
        day_match = days is None or day.day in days
        if not day_match and weekdays is None:
            # Only days of the month count: on to the next listed day (a yearly or monthly job would otherwise
            # walk a month day by day), or to the first of the next month.
            following = _first_at_least(days, day.day + 1)
            if following is not None and following <= calendar.monthrange(day.year, day.month)[1]:
                day = day.replace(day=following)
            else:
                day = date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)
            h = m = sec = 0
            continue
        weekday_match = weekdays is None or (day.weekday() + 1) % 7 in weekdays
        if (day_match or weekday_match) if either else (day_match and weekday_match):
            while h < 24:
                hour = _first_at_least(hours, h)
                if hour is None:
                    break
                if hour != h:
                    h, m, sec = hour, 0, 0
                minute = _first_at_least(minutes, m) if m < 60 else None
                if minute is None:
                    h, m, sec = h + 1, 0, 0
                    continue
                if minute != m:
                    m, sec = minute, 0
                second = _first_at_least(seconds, sec) if sec < 60 else None
                if second is None:
                    m, sec = m + 1, 0
                    continue
                return datetime(day.year, day.month, day.day, h, m, second)
        day += _ONE_DAY
        h = m = sec = 0
    return None


_ONE_DAY = timedelta(days=1)


def _in_repeated_second_pass(ts: float, tz: ZoneInfo) -> bool:
    local = datetime.fromtimestamp(ts, tz)
    if local.fold != 1:
        return False
    return local.replace(fold=0).utcoffset() != local.utcoffset()


def parse_cron(expression: Any) -> CronSpec:
    """Validate a cron expression (6 fields seconds first, 5 fields, or a macro). Raises InvalidCron."""
    if not isinstance(expression, str):
        raise InvalidCron(f"Invalid cron expression: expected a string; {CRON_HELP}")
    return _parse_cron(expression)


@functools.lru_cache(maxsize=32768)
def _parse_cron(expression: str) -> CronSpec:
    """parse_cron for a string; specs are immutable, so one parse serves every schedule with the expression."""
    text = " ".join(expression.split())
    if not text:
        raise InvalidCron(f"Invalid cron expression: empty; {CRON_HELP}")
    if text.startswith("@"):
        six = CRON_MACROS.get(text.lower())
        if six is None:
            raise InvalidCron(f"Invalid cron expression: unknown macro {text!r}; {CRON_HELP}")
        return CronSpec(expression, tuple(six.split()))
    parts = text.split(" ")
    if len(parts) == 5:
        parts = ["0"] + parts
    elif len(parts) != 6:
        raise InvalidCron(f"Invalid cron expression: {text!r} has {len(parts)} fields; {CRON_HELP}")
    fields = tuple(_validate_cron_field(part, *spec) for part, spec in zip(parts, CRON_FIELDS))
    both = fields[3].startswith("*") or fields[5].startswith("*")
    if not both and (_covers_all(fields[3], *CRON_FIELDS[3]) or _covers_all(fields[5], *CRON_FIELDS[5])):
        fields, both = fields[:3] + ("*", fields[4], "*"), True     # "either field" with one matching every day
    result = CronSpec(expression, fields, both)
    # Only days 29-31 can be missing from a month (and from every allowed month): ask croniter only then.
    if min(_field_values(fields[3], *CRON_FIELDS[3])) >= 29 \
            and result.next_after(CRON_CHECK_FROM, ZoneInfo("UTC")) is None:
        raise InvalidCron(f"Invalid cron expression: {text!r} never fires (no such date); {CRON_HELP}")
    return result


@functools.lru_cache(maxsize=4096)
def _validate_cron_field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> str:
    """The field checked and normalised for croniter: upper case, `?` as `*`, and a one-value range `a-a` (or
    `a-a/n`) as `a`, since croniter 7 reads `a-a` as `*`."""
    if text == "?" and name in ("day", "weekday"):
        return "*"
    items = []
    for item in text.split(","):
        match = _CRON_ITEM.match(item)
        if not match:
            raise InvalidCron(f"Invalid cron expression: {name} field {text!r} is not valid "
                              f"(use numbers, names, '*', ranges a-b, lists a,b and steps */n); {CRON_HELP}")
        star, start, end, step = match.groups()
        values = [_cron_value(v, name, low, high, names) for v in (start, end) if v is not None]
        if len(values) == 2 and values[0] > values[1]:
            raise InvalidCron(f"Invalid cron expression: {name} range {start}-{end} runs backwards; {CRON_HELP}")
        if step is not None and not 1 <= int(step) <= high - low + 1:
            raise InvalidCron(f"Invalid cron expression: {name} step /{step} must be from 1 to "
                              f"{high - low + 1}; {CRON_HELP}")
        if star is None and not values:
            raise InvalidCron(f"Invalid cron expression: {name} field {text!r} is empty; {CRON_HELP}")
        items.append(start.upper() if len(values) == 2 and values[0] == values[1] else item.upper())
    return ",".join(items)


def _covers_all(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    """True when a validated field matches every value of its range (weekday 7 is 0)."""
    values = _field_values(text, name, low, high, names)
    if name == "weekday":
        return {v % 7 for v in values} >= set(range(7))
    return values >= set(range(low, high + 1))


@functools.lru_cache(maxsize=4096)
def _field_values(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    """The values a validated field matches."""
    values: set[int] = set()
    for item in text.split(","):
        star, start, end, step = _CRON_ITEM.match(item).groups()
        first = low if star else _cron_value(start, name, low, high, names)
        last = high if star or (end is None and step is not None) else (
            _cron_value(end, name, low, high, names) if end else first)
        values.update(range(first, last + 1, int(step) if step else 1))
    return frozenset(values)


def _cron_value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.isdigit():
        value = int(text)
    elif text.upper() in names:
        value = names.index(text.upper()) + (1 if name == "month" else 0)
    else:
        raise InvalidCron(f"Invalid cron expression: {name} value {text!r} is not a number"
                          + (f" or a name ({', '.join(names)})" if names else "") + f"; {CRON_HELP}")
    if not low <= value <= high:
        raise InvalidCron(f"Invalid cron expression: {name} value {value} is out of range {low}-{high}; "
                          f"{CRON_HELP}")
    return value


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

    durable=False skips the fsyncs (for markers whose loss on power failure costs little).
    """
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
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


class JsonStore:
    """A JSON document on disk, read once at start and replaced atomically under a file lock."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._file_lock = filelock.FileLock(path + ".lock", timeout=FILE_LOCK_TIMEOUT, mode=0o600)

    def load(self, default: Any) -> Any:
        """The stored document, or `default` when there is no file. A corrupt file raises StartupError."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return default
        except OSError as e:
            raise StartupError(f"{self.path}: cannot read ({e.strerror})") from None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise StartupError(f"{self.path}: corrupt JSON ({e}); the file was left as it is for inspection, "
                               "restore it from a backup or move it away") from None

    def save(self, document: Any) -> None:
        """Write `document` crash-safely; raises OSError (or filelock.Timeout) on failure.

        A failure after the rename (the directory fsync) would leave the new file in place while the caller
        reports the change as failed; the previous contents are put back first, so a 500 never takes effect.
        """
        data = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
        with self._lock, self._file_lock:
            try:
                with open(self.path, "rb") as f:
                    previous: bytes | None = f.read()
            except FileNotFoundError:
                previous = None
            try:
                atomic_write(self.path, data)
            except OSError:
                self._restore(previous, data)
                raise

    def _restore(self, previous: bytes | None, attempted: bytes) -> None:
        try:
            with open(self.path, "rb") as f:
                if f.read() != attempted:
                    return                  # the failure came before the rename: the old file is intact
            if previous is None:
                os.unlink(self.path)
            else:
                atomic_write(self.path, previous, durable=False)
        except OSError as e:
            log.error("%s: could not put the previous contents back after a failed write: %s", self.path, e)


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
        self._file_lock = filelock.FileLock(path + ".lock", timeout=FILE_LOCK_TIMEOUT, mode=0o600)
        self._items: dict[str, dict] = {}
        self._seq = 0
        self._journal_lines = 0
        self._journal_size: int | None = None      # bytes of good lines; None until known
        self._compacting = False
        self._compact_at = self.COMPACT_MIN_LINES

    # -- reading ---------------------------------------------------------------------------------------------
    def load(self) -> list[dict]:
        """The stored definitions in creation order. A corrupt snapshot or journal raises StartupError."""
        snapshot = JsonStore(self.path).load({"version": 1, "schedules": []})
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
            except ValueError:
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
        """Store `item` (a new definition, or a new version of one, by its "id"); raises OSError or
        filelock.Timeout when it could not be made durable, and then nothing changed."""
        self._change({"put": item}, item["id"], item)

    def delete(self, item_id: str) -> None:
        self._change({"delete": item_id}, item_id, None)

    def _change(self, change: dict, item_id: str, item: dict | None) -> None:
        with self._lock:
            seq = self._seq + 1
            line = json.dumps({"seq": seq, **change}, separators=(",", ":"), sort_keys=True).encode() + b"\n"
            with self._file_lock:
                self._append(line)
            self._seq = seq
            if item is None:
                self._items.pop(item_id, None)
            else:
                self._items[item_id] = item
            self._journal_lines += 1
            if self._journal_lines < self._compact_at or self._compacting:
                return
            self._compacting = True
        try:
            threading.Thread(target=self._compact_in_background, name="schedserver-compact", daemon=True).start()
        except RuntimeError as e:       # no thread to be had: the change itself is durable; try again later
            log.error("%s: cannot start a compaction: %s", self.path, e)
            with self._lock:
                self._compacting = False
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
                self._compacting = False

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
                with self._lock, self._file_lock:
                    entries, _ = self._read_journal()
                    kept = b"".join(json.dumps(entry, separators=(",", ":"), sort_keys=True).encode() + b"\n"
                                    for entry in entries if entry.get("seq", 0) > seq)
                    atomic_write(self.journal_path, kept)
                    self._journal_lines = kept.count(b"\n")
                    self._journal_size = len(kept)
                    self._compact_at = max(self.COMPACT_MIN_LINES, len(self._items))
            except (OSError, filelock.Timeout, StartupError) as e:
                log.error("%s: compaction failed, the journal keeps growing until it works: %s", self.path, e)
                with self._lock:
                    self._compact_at = self._journal_lines + self.COMPACT_MIN_LINES


class FlockFile:
    """A cross-process lock on `path` held through one descriptor kept open: two system calls a use.

    filelock.FileLock opens, locks, unlocks and closes its file each time, about 0.25 ms of Python -- a quarter
    of a run's own overhead on the runs log. Use it after an in-process lock (one descriptor per object, so
    threads must not share it unguarded). Raises filelock.Timeout like FileLock after FILE_LOCK_TIMEOUT.
    """

    def __init__(self, path: str, timeout: float = FILE_LOCK_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self._fd = -1

    def __enter__(self) -> "FlockFile":
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = None
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                now = time.monotonic()
                deadline = deadline or now + self.timeout
                if now >= deadline:
                    raise filelock.Timeout(self.path) from None
                time.sleep(0.001)

    def __exit__(self, *exc_info: Any) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class NdjsonLog:
    """An append-only NDJSON log, rotated by size (`name.1` is the newest backup), read newest first.

    A crash mid-append leaves a torn last line: readers skip it and the next append starts on a new line.
    Appends take an in-process lock, then a FlockFile (writers in other processes, rotation included).
    """

    def __init__(self, path: str, max_bytes: int, backups: int):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._file_lock = FlockFile(path + ".lock")
        self._warned: set[str] = set()

    def append(self, record: dict) -> bytes:
        """Append one record as one line (returned, newline included); raises OSError (or filelock.Timeout)."""
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace") + b"\n"
        with self._lock, self._file_lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and self.max_bytes and size + len(line) > self.max_bytes:
                    os.close(fd)
                    fd = -1
                    self._rotate()
                    fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                    size = 0
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    os.write(fd, b"\n")      # a torn line from a crash: never glue onto it
                os.write(fd, line)
            finally:
                if fd >= 0:
                    os.close(fd)
        return line

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

    def files(self, include_rotated: bool = True) -> list[str]:
        """The log's files, newest first."""
        paths = [self.path]
        if include_rotated:
            paths += [f"{self.path}.{n}" for n in range(1, self.backups + 1)]
        return paths

    def read_newest(self, include_rotated: bool = True, contains: bytes | None = None) -> Iterator[dict]:
        """Records newest first, reading each file backwards in blocks; lines without `contains` are skipped
        before JSON parsing."""
        for path in self.files(include_rotated):
            for line in _lines_backwards(path, contains=contains):
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    self._warn_malformed(path)
                    continue
                yield record

    def chunks_newest(self, include_rotated: bool = True) -> Iterator[tuple[str, int, bytes]]:
        """Runs of complete lines (newline-separated, in file order), the newest run first, each with its file
        and offset: for scans that sift whole blocks with one regex instead of looking at every line."""
        for path in self.files(include_rotated):
            for offset, chunk in _chunks_backwards_at(path, block=1024 * 1024):
                yield path, offset, chunk

    def _warn_malformed(self, path: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("%s: skipping a malformed line (reported once per file)", path)


def _chunks_backwards(path: str, block: int = 64 * 1024) -> Iterator[bytes]:
    """A file's complete lines in runs of about `block` bytes, the last run first (lines within a run keep their
    order); a final line without a newline (torn by a crash) is left out."""
    for _, chunk in _chunks_backwards_at(path, block):
        yield chunk


def _chunks_backwards_at(path: str, block: int = 64 * 1024) -> Iterator[tuple[int, bytes]]:
    """_chunks_backwards, each run with the file offset of its first byte."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        tail = b""              # the start of a line whose rest came in the previous run
        first = True
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start) + tail
            end = start
            if first:
                cut = chunk.rfind(b"\n")
                if cut < 0:     # no newline yet: all of it belongs to a torn last line
                    continue
                chunk, first = chunk[:cut], False
            offset = 0
            if start == 0:
                tail = b""
            else:
                nl = chunk.find(b"\n")
                if nl < 0:
                    tail = chunk
                    continue
                tail, chunk, offset = chunk[:nl], chunk[nl + 1:], start + nl + 1
            if chunk:
                yield offset, chunk


def _lines_backwards(path: str, block: int = 64 * 1024, contains: bytes | None = None) -> Iterator[bytes]:
    """Complete non-blank lines of a file, last first, optionally only those holding `contains` (a block that
    does not hold it is skipped whole); a final line without a newline (torn by a crash) is skipped."""
    for chunk in _chunks_backwards(path, block):
        if contains is None:
            for line in reversed(chunk.split(b"\n")):
                if line.strip():
                    yield line
            continue
        end = len(chunk)        # lines holding `contains`, found by searching (in C) rather than line by line
        while (hit := chunk.rfind(contains, 0, end)) >= 0:
            start = chunk.rfind(b"\n", 0, hit) + 1
            stop = chunk.find(b"\n", hit)
            yield chunk[start:stop if stop >= 0 else len(chunk)]
            end = start


class DataDirLock:
    """Holds `<data-dir>/schedserver.lock` for the life of the process, so one server owns a data dir at a time."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self._lock = filelock.FileLock(os.path.join(data_dir, "schedserver.lock"), thread_local=False, mode=0o600)

    def acquire(self) -> None:
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise StartupError(f"data dir {self.data_dir} is in use by another schedserver process") from None

    def release(self) -> None:
        self._lock.release()


def remove_stale_temp_files(data_dir: str) -> None:
    """Delete atomic_write temp files that a killed process left behind (they may hold copies of secrets).
    Only safe with the data dir lock held: then no other writer can own them."""
    for name in os.listdir(data_dir):
        if ".tmp-" in name:
            try:
                os.unlink(os.path.join(data_dir, name))
                log.info("removed %s, left by an interrupted write", name)
            except OSError as e:
                log.warning("cannot remove %s: %s", name, e)


def prepare_data_dir(path: str) -> None:
    """Create the data dir (0700) if missing and check it is writable; ConfigError otherwise."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"data dir {path}: cannot create ({e.strerror})") from None
    if not os.path.isdir(path):
        raise ConfigError(f"data dir {path}: not a directory")
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o700)       # it holds tokens and stored request headers
    except OSError as e:
        raise ConfigError(f"data dir {path}: cannot make it private ({e.strerror})") from None
    probe = os.path.join(path, f".write-test-{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"data dir {path}: not writable ({e.strerror})") from None


###############################################################################
# Runners ######################################################################
###############################################################################

@dataclass
class RunResult:
    """What a run did. A failed run is a result, not an exception."""

    status: str                     # ok | error | timeout
    started_at: float
    duration_ms: int
    status_code: int | None = None
    error: str | None = None


_http_run = threading.local()       # the HttpRunner run in progress on this thread, for the pools below


class EgressPolicy:
    """Where HTTP runs may connect: [curl] allow_networks / deny_networks (off when both are empty).

    Checked on the address a connection actually goes to (every redirect hop opens its own), and the
    connection is made to that very address, so a name cannot resolve one way for the check and another for
    the connect.
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
        if any(ip in network for network in self.deny):
            return False
        return not self.allow or any(ip in network for network in self.allow)

    def refuses_literal(self, host: str) -> bool:
        """True when `host` is an IP address literal the policy refuses (checked when a schedule is created)."""
        try:
            ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            return False
        return self.active and not self.permits(host.strip("[]"))


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
    try:
        ipaddress.ip_address(host.strip("[]"))
        return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host.strip("[]"), port,
                                                                             type=socket.SOCK_STREAM)))
    except ValueError:
        pass                            # a name: looked up in a thread of its own, below
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
                    return super()._new_conn()          # type: ignore[misc]
                except urllib3.exceptions.NewConnectionError as e:
                    last_error = e                      # e.g. ::1 refused: try 127.0.0.1 next
            raise last_error
        finally:
            self._dns_host = resolved


class _PolicyHTTPConnection(_PolicyConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _PolicyHTTPSConnection(_PolicyConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _DeadlinePoolMixin:
    """Hands each connection a run takes to that run, so its deadline can cut the connection."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)       # type: ignore[misc]
        connections = getattr(_http_run, "connections", None)
        if connections is not None:
            connections.append(conn)
        return conn


class _DeadlineHTTPPool(_DeadlinePoolMixin, urllib3.HTTPConnectionPool):
    ConnectionCls = _PolicyHTTPConnection


class _DeadlineHTTPSPool(_DeadlinePoolMixin, urllib3.HTTPSConnectionPool):
    ConnectionCls = _PolicyHTTPSConnection


def _cut(connections: list) -> None:
    """Shut down the sockets of a run past its deadline: a blocked read returns at once."""
    for conn in list(connections):
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DeadlineWatcher:
    """One thread that calls each registered action at its deadline (time.monotonic()) unless cancelled first:
    a run's connection cut, without starting a timer thread per run."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._seq = 0
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, action: Callable[[], None]) -> int:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, action))
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="schedserver-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][1] == self._seq:
                self._cond.notify()         # the new deadline is the earliest: wake the watcher to re-sleep
            return self._seq

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._cancelled.add(handle)

    def _watch(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] in self._cancelled:
                    self._cancelled.discard(heapq.heappop(self._heap)[1])
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, handle, action = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            try:
                action()
            except Exception:
                log.exception("deadline action failed")


_deadlines = DeadlineWatcher()


class _Outcome:
    """The clock of one HTTP run, and how its end is told: ok, error or timeout, never an exception."""

    def __init__(self, started: float, t0: float, timeout: float):
        self.started = started
        self.t0 = t0
        self.timeout = timeout
        self.deadline = t0 + timeout

    def result(self, status: str, code: int | None = None, error: str | None = None) -> RunResult:
        return RunResult(status, self.started, int((time.monotonic() - self.t0) * 1000), code, error)

    def surprise(self, exc: BaseException) -> RunResult:
        """A bug or a surprise from a library: logged with its traceback, and still a result."""
        log.exception("http run failed unexpectedly")
        return self.result("error", error=_short_error(exc))

    def failure(self, exc: BaseException, code: int | None = None) -> RunResult:
        if time.monotonic() >= self.deadline or _is_timeout(exc):
            return self.result("timeout", code, f"timed out after {self.timeout:g} s")
        return self.result("error", code, _short_error(exc))


@dataclass(eq=False)
class PendingRun:
    """An HTTP run the ticker started itself: its request is written on a kept connection; finish() reads the
    answer in a worker."""

    origin: tuple[str, str, int]
    conn: Any
    method: str
    outcome: _Outcome
    error: BaseException | None = None


@functools.lru_cache(maxsize=4096)
def _origin_of(url: str) -> tuple[tuple[str, str, int], str]:
    """((scheme, host, port), request target) of an http(s) URL."""
    parsed = urllib3.util.parse_url(url)
    scheme = (parsed.scheme or "http").lower()
    port = parsed.port or (443 if scheme == "https" else 80)
    return (scheme, (parsed.host or "").lower(), port), parsed.request_uri


def _descriptor_limit() -> int:
    """How many descriptors this process may open (the soft limit)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = 1024
    return 1 << 16 if soft == resource.RLIM_INFINITY else soft


def _kept_connection_budget() -> int:
    """How many idle connections all origins together may keep: half the descriptors this process may open."""
    return max(0, min(_descriptor_limit() // 2 - 64, KEPT_CONNECTIONS_MAX))


class HttpRunner:
    """Sends one scheduled HTTP request with bounded time and memory; never reads ~/.netrc or proxy env.

    It speaks urllib3 (what requests runs on) directly: requests' sessions, hooks and prepared requests cost
    0.96 ms of CPU per request here against urllib3's 0.34 ms, and with one interpreter lock that CPU is what
    makes runs due in the same second start late. urllib3 never reads ~/.netrc or proxy variables. A read
    timeout applies to each socket read, so a target that dribbles bytes could hold a run for ever; the deadline
    watcher cuts the run's connection at its overall deadline instead.

    Two ways to run. run() does the whole exchange in a worker. The ticker itself starts runs that have an open,
    idle connection kept for their origin (checkout() + send(): a few dozen microseconds of writing, no thread
    hand-off), and a worker then reads the answer (finish()). Connections are kept for runs due in the next
    second: open_kept() makes them in a worker ahead of time, prune() closes those left unused.
    """

    def __init__(self, clock: Callable[[], float] = time.time, max_response_bytes: int = MAX_RESPONSE_BYTES,
                 policy: EgressPolicy | None = None):
        self.clock = clock
        self.max_response_bytes = max_response_bytes
        self.policy = policy or EgressPolicy()
        self._local = threading.local()
        self._kept_lock = threading.Lock()
        self._kept: dict[tuple[str, str, int], deque] = {}     # origin -> (idle since, connection), newest last
        self._kept_count = 0
        self._opening: dict[tuple[str, str, int], int] = {}
        self._open_failed: dict[tuple[str, str, int], float] = {}  # origin -> when opening one last failed
        self.kept_budget = _kept_connection_budget()
        self._factory = self._new_pools(num_pools=256)         # builds connections configured as urllib3's pools

    @staticmethod
    def _new_pools(num_pools: int) -> urllib3.PoolManager:
        pools = urllib3.PoolManager(num_pools=num_pools, maxsize=1, ca_certs=certifi.where())
        pools.pool_classes_by_scheme = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}
        return pools

    def _pools(self) -> urllib3.PoolManager:
        """This thread's connection pools (keep-alive per worker thread, as a requests session per thread)."""
        pools = getattr(self._local, "pools", None)
        if pools is None:
            pools = self._local.pools = self._new_pools(num_pools=64)
        return pools

    def run(self, spec: dict, extra_headers: dict[str, str]) -> RunResult:
        """Send the request; always a RunResult (ok, error or timeout), never an exception."""
        try:
            return self._send(spec, extra_headers)
        except Exception as e:              # a malformed spec, a bug, a surprise from a library
            log.exception("http run failed unexpectedly")
            return RunResult("error", self.clock(), 0, error=_short_error(e))

    @staticmethod
    def _request(spec: dict, extra_headers: dict[str, str]) -> tuple[dict[str, str], bytes | None]:
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

    def _send(self, spec: dict, extra_headers: dict[str, str]) -> RunResult:
        timeout = float(spec.get("timeout", 30))
        outcome = _Outcome(self.clock(), time.monotonic(), timeout)
        _http_run.connections = connections = []
        _http_run.policy = self.policy
        _http_run.deadline = outcome.deadline
        timer = _deadlines.add(outcome.deadline, functools.partial(_cut, connections))
        try:
            headers, body = self._request(spec, extra_headers)
            follow = bool(spec.get("follow_redirects"))
            retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=MAX_REDIRECTS,
                                    raise_on_status=False) if follow else False
            try:
                response = self._pools().request(
                    spec["method"], spec["url"], body=body, headers=headers, redirect=follow, retries=retries,
                    timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout), preload_content=False)
            except Exception as e:
                return outcome.failure(e)
            result, whole = self._answer(response, outcome, follow)
            if not whole:
                response.close()            # the rest is never read: the connection cannot be used again
            response.release_conn()
            return result
        except Exception as e:              # a bug or a surprise from a library: still a result
            return outcome.surprise(e)
        finally:
            _deadlines.cancel(timer)
            _http_run.connections = _http_run.deadline = None

    def _answer(self, response: Any, outcome: _Outcome, follow: bool) -> tuple[RunResult, bool]:
        """Read at most max_response_bytes of the answer within the deadline: (result, read to its end)."""
        try:
            read = 0
            read1 = getattr(response, "read1", None) or response.read
            while read < self.max_response_bytes:
                if time.monotonic() >= outcome.deadline:
                    return outcome.result("timeout", response.status, f"timed out after {outcome.timeout:g} s"), False
                chunk = read1(min(16384, self.max_response_bytes - read))
                if not chunk:
                    break
                read += len(chunk)
            else:
                return self._judge(response, outcome, follow), False
        except Exception as e:              # urllib3 and socket errors while streaming, a cut connection
            return outcome.failure(e, response.status), False
        return self._judge(response, outcome, follow), True

    @staticmethod
    def _judge(response: Any, outcome: _Outcome, follow: bool) -> RunResult:
        code = response.status
        if 200 <= code < 300 or (300 <= code < 400 and not follow):
            return outcome.result("ok", code)
        return outcome.result("error", code, f"HTTP {code} {response.reason or ''}".strip())

    # -- runs the ticker starts on kept connections ---------------------------------------------------------
    def origin(self, spec: dict) -> tuple[str, str, int] | None:
        """The origin a run could be started on by the ticker, or None when a worker must run it whole: it
        follows redirects (a chain of exchanges); it is HTTPS (TLS 1.3 session tickets make an idle TLS
        connection look readable, so a kept one could not be told from a closed one); it frames its own body
        (Transfer-Encoding); it is too big to be sure a write never waits; or urllib3 cannot parse its URL
        (then a worker's run reports that as its error)."""
        headers = spec.get("headers") or {}
        if spec.get("follow_redirects") or any(name.lower() == "transfer-encoding" for name in headers):
            return None
        size = sum(len(name) + len(value) for name, value in headers.items()) + len(
            json.dumps(spec["json"]) if "json" in spec else (spec.get("body") or "").encode())
        if size > TICKER_SEND_MAX_BYTES:
            return None
        try:
            origin = _origin_of(spec["url"])[0]
        except (ValueError, urllib3.exceptions.LocationParseError):
            return None
        return origin if origin[0] == "http" else None

    def checkout(self, spec: dict) -> Any:
        """An open, idle kept connection for this run's origin (now the caller's), or None."""
        origin = self.origin(spec)
        if origin is None:
            return None
        while True:
            with self._kept_lock:
                idle = self._kept.get(origin)
                if not idle:
                    return None
                conn = idle.pop()[1]
                self._kept_count -= 1
            if self.is_open(conn):
                return conn
            conn.close()                    # closed by the other end while idle: try the next one

    @staticmethod
    def is_open(conn: Any) -> bool:
        """The connection is open and nothing came on it while idle (a close, or bytes no request asked for)."""
        return conn.sock is not None and not urllib3.util.is_connection_dropped(conn)

    def put_back(self, spec: dict, conn: Any) -> None:
        """A connection from checkout() that was not used: kept again if it is still open."""
        origin = self.origin(spec)
        if origin is not None and self.is_open(conn):
            self._keep(origin, conn)
        else:
            conn.close()

    def send(self, conn: Any, spec: dict, extra_headers: dict[str, str]) -> PendingRun:
        """Write the request on `conn` (from checkout()); never raises: a failed write is told by finish()."""
        try:
            data = self.wire(conn, spec, extra_headers)
        except Exception as e:
            pending = self._pending(conn, spec)
            pending.error = e
            return pending
        return self.send_wire(conn, spec, data)

    def send_wire(self, conn: Any, spec: dict, data: bytes) -> PendingRun:
        """Write `data` (from wire()) on `conn`; never raises, as send()."""
        pending = self._pending(conn, spec)
        try:
            conn.sock.settimeout(TICKER_SEND_TIMEOUT)
            conn.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass            # as urllib3: the other end may have answered and closed; the answer is still read
        except Exception as e:
            pending.error = e
        return pending

    def _pending(self, conn: Any, spec: dict) -> PendingRun:
        """A run starting now on `conn`."""
        return PendingRun(_origin_of(spec["url"])[0], conn, spec["method"],
                          _Outcome(self.clock(), time.monotonic(), float(spec.get("timeout", 30))))

    def wire(self, conn: Any, spec: dict, extra_headers: dict[str, str]) -> bytes:
        """The request as http.client and urllib3 write it (Host, Accept-Encoding: identity, Content-Length),
        built in one go: their header-by-header writing is half the ticker's cost of beginning a run."""
        _, target = _origin_of(spec["url"])
        headers, body = self._request(spec, extra_headers)
        if any(c <= " " or c == "\x7f" for c in target) or any("\r" in v or "\n" in v for v in headers.values()):
            raise ValueError("control character in the request target or a header")
        names = {name.lower() for name in headers}
        lines = [f"{spec['method']} {target} HTTP/1.1"]
        if "host" not in names:
            host = conn.host if ":" not in conn.host else f"[{conn.host}]"
            lines.append(f"Host: {host}" if conn.port == conn.default_port else f"Host: {host}:{conn.port}")
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: identity")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if "content-length" not in names and "transfer-encoding" not in names:
            if body is not None:
                lines.append(f"Content-Length: {len(body)}")
            elif spec["method"] in ("POST", "PUT", "PATCH"):
                lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def finish(self, pending: PendingRun) -> RunResult:
        """Read the answer of a run send() started; the connection is kept again if it can be used again.

        The time limit counts from here, when a worker gets to the run, not from the write: with every worker
        busy, an answer that came at once must not be cut as late."""
        conn, outcome, response, whole = pending.conn, pending.outcome, None, False
        outcome.deadline = time.monotonic() + outcome.timeout
        timer = _deadlines.add(outcome.deadline, functools.partial(_cut, [conn]))
        try:
            if pending.error is not None:
                return outcome.failure(pending.error)
            try:
                conn.sock.settimeout(outcome.timeout)           # for each read of the answer
                response = http.client.HTTPResponse(conn.sock, method=pending.method)
                response.begin()
            except Exception as e:
                return outcome.failure(e)
            result, whole = self._answer(response, outcome, follow=False)
            return result
        except Exception as e:              # a bug or a surprise from a library: still a result
            return outcome.surprise(e)
        finally:
            _deadlines.cancel(timer)
            if response is not None:
                response.close()
            if whole and not response.will_close and time.monotonic() < outcome.deadline:
                self._keep(pending.origin, conn)
            else:
                conn.close()

    def _keep(self, origin: tuple[str, str, int], conn: Any) -> None:
        with self._kept_lock:
            idle = self._kept.setdefault(origin, deque())
            if len(idle) < KEPT_PER_ORIGIN_MAX and self._kept_count < self.kept_budget:
                idle.append((time.monotonic(), conn))
                self._kept_count += 1
                return
        conn.close()

    def kept(self, origin: tuple[str, str, int]) -> int:
        with self._kept_lock:
            return len(self._kept.get(origin) or ())

    def to_open(self, origin: tuple[str, str, int], wanted: int) -> int:
        """How many connections to open for `wanted` runs due soon on `origin`; counted as opening until each
        open_kept() ends."""
        with self._kept_lock:
            if time.monotonic() - self._open_failed.get(origin, -KEPT_RETRY_SECONDS) < KEPT_RETRY_SECONDS:
                return 0            # it failed just now: the runs connect themselves, no worker waits twice
            have = len(self._kept.get(origin) or ()) + self._opening.get(origin, 0)
            room = min(KEPT_PER_ORIGIN_MAX, self.kept_budget - self._kept_count) - have
            count = max(0, min(wanted - have, room))
            if count:
                self._opening[origin] = self._opening.get(origin, 0) + count
            return count

    def open_kept(self, origin: tuple[str, str, int], url: str) -> None:
        """Open one connection to `url`'s origin (a worker's task) and keep it; a failure is left for the run."""
        conn = None
        _http_run.policy = self.policy
        _http_run.deadline = time.monotonic() + KEPT_CONNECT_TIMEOUT
        try:
            pool = self._factory.connection_from_url(url)
            conn = pool._new_conn()
            conn.timeout = KEPT_CONNECT_TIMEOUT
            conn.connect()
        except Exception as e:
            log.debug("opening a connection to %s://%s:%s failed: %s", *origin, _short_error(e))
            if conn is not None:
                conn.close()
            conn = None
        finally:
            _http_run.deadline = None
            with self._kept_lock:
                self._opening[origin] -= 1
                if not self._opening[origin]:
                    del self._opening[origin]
                if conn is None:
                    self._open_failed[origin] = time.monotonic()
                else:
                    self._open_failed.pop(origin, None)
        if conn is not None:
            self._keep(origin, conn)

    def prune(self, idle_for: float = KEPT_IDLE_SECONDS) -> None:
        """Close the kept connections unused for `idle_for` seconds."""
        stale = []
        limit = time.monotonic() - idle_for
        with self._kept_lock:
            for origin, idle in list(self._kept.items()):
                while idle and idle[0][0] < limit:
                    stale.append(idle.popleft()[1])
                    self._kept_count -= 1
                if not idle:
                    del self._kept[origin]
        for conn in stale:
            conn.close()


def _is_timeout(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", None)      # MaxRetryError (redirects on) carries the cause as `reason`
    return any(isinstance(e, (urllib3.exceptions.TimeoutError, socket.timeout))
               and not isinstance(e, urllib3.exceptions.NewConnectionError)     # "refused" subclasses it, too
               for e in (exc, reason))


_URL_QUERY = re.compile(r"((?:\bhttps?://|\burl: )[^\s?#'\"]*)\?[^\s#'\")]*")


def _short_error(exc: BaseException) -> str:
    """An exception as one short line: its root cause, with URL query strings (often holding keys) taken out."""
    reason = getattr(exc, "reason", None)      # urllib3's MaxRetryError: the cause (too many redirects, refused...)
    text = f"{type(exc).__name__}: {reason if reason is not None else exc}"
    text = _URL_QUERY.sub(r"\1?<query>", text).replace("_PolicyHTTP", "HTTP")
    return text if len(text) <= 500 else text[:497] + "..."


class OutputTail:
    """The last `limit` bytes of a pipe's output, counting the rest (fed by the ScriptReaper)."""

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


@dataclass
class ScriptResult(RunResult):
    """A script run: RunResult plus the script's last stdout line and how much output was dropped."""

    return_preview: str | None = None
    exit_code: int | None = None
    output_dropped: int = 0


class SpawnedScript:
    """A script process from spawn to end: its output tails, time limit, and how it ended."""

    def __init__(self, proc: subprocess.Popen, started: float, t0: float, timeout_ms: int, kill_grace: float):
        self.proc = proc
        self.started = started
        self.t0 = t0
        self.timeout_ms = timeout_ms
        self.kill_grace = kill_grace
        self.stdout, self.stderr = OutputTail(), OutputTail()
        self.ended_at: float | None = None          # time.monotonic() when the process was seen to exit
        self.timed_out = False
        self._lock = threading.Lock()
        self._kill: int | str | None = None         # the SIGKILL deadline's handle; "done" once the run ended
        # At the time limit SIGTERM to the group, SIGKILL after the grace (the deadline watcher: no thread each).
        self._term = _deadlines.add(t0 + timeout_ms / 1000, self._expire)

    def _expire(self) -> None:
        with self._lock:
            if self._kill == "done":
                return
            self.timed_out = True
            self._kill = _deadlines.add(time.monotonic() + self.kill_grace,
                                        functools.partial(_kill_group, self.proc.pid, signal.SIGKILL))
        _kill_group(self.proc.pid, signal.SIGTERM)

    def exited(self) -> None:
        """The process ended: reap it, stop its timers, and kill whatever is left of its group (grandchildren)."""
        self.ended_at = time.monotonic()
        with self._lock:
            _deadlines.cancel(self._term)
            if isinstance(self._kill, int):
                _deadlines.cancel(self._kill)
            self._kill = "done"
        _kill_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def result(self, preview_chars: int) -> ScriptResult:
        duration = int(((self.ended_at or time.monotonic()) - self.t0) * 1000)
        dropped = self.stdout.dropped + self.stderr.dropped
        code = self.proc.returncode
        if self.timed_out:
            return ScriptResult("timeout", self.started, duration, error=f"timed out after {self.timeout_ms} ms",
                                exit_code=code, output_dropped=dropped)
        if code == 0:
            return ScriptResult("ok", self.started, duration, return_preview=self.stdout.last_line(preview_chars),
                                exit_code=0, output_dropped=dropped)
        error = self.stderr.last_line(500)
        if error is None:
            error = f"killed by signal {_signal_name(-code)}" if code < 0 else f"exit status {code}"
        return ScriptResult("error", self.started, duration, error=error, exit_code=code,
                            output_dropped=dropped)


class ScriptReaper:
    """One thread that sees every running script through: reads both its pipes into bounded tails, notices its
    exit (a pidfd; polled every 20 ms where there is none), kills what is left of its process group, and waits
    at most OUTPUT_DRAIN_SECONDS more for the pipes to close (a grandchild that left the group may hold them).
    Then it calls the run's `on_end(spawned)`.

    So a worker only spawns a script and is free again: 200 scripts due in the same second all start within
    a few hundred milliseconds, and a script that runs for an hour holds no thread.
    """

    POLL_SECONDS = 0.02

    def __init__(self):
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._new: list[tuple[SpawnedScript, Callable[[SpawnedScript], None]]] = []
        self._watched: dict[SpawnedScript, dict] = {}
        self._polled: set[SpawnedScript] = set()                   # watched without a pidfd: polled for exit
        self._ending: dict[SpawnedScript, dict] = {}              # exited, their pipes not yet closed
        self._thread: threading.Thread | None = None

    def watch(self, spawned: SpawnedScript, on_end: Callable[[SpawnedScript], None]) -> None:
        with self._lock:
            self._new.append((spawned, on_end))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="schedserver-reaper", daemon=True)
                self._thread.start()
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass                            # a wake-up is pending already

    def _loop(self) -> None:
        while True:
            try:
                self._turn()
            except Exception:
                log.exception("script reaper failed; carrying on")
                time.sleep(self.POLL_SECONDS)

    def _turn(self) -> None:
        # Work per turn follows the events and the runs that are ending, never every run watched: 200 scripts
        # starting in one burst would otherwise cost the spawning workers a visit of each run at every event.
        timeout = self.POLL_SECONDS if self._polled else None
        if self._ending:
            first = min(state["drain_until"] for state in self._ending.values())
            timeout = max(0.0, min(first, time.monotonic() + (timeout or 3600.0)) - time.monotonic())
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._take_new()
                continue
            spawned, what = key.data
            state = self._watched[spawned]
            if what == "exit":
                self._forget(key.fd, state, "pidfd")
                self._exited(spawned, state)
            else:
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    (spawned.stdout if what == "stdout" else spawned.stderr).add(chunk)
                else:
                    self._forget(key.fd, state, what)
        for spawned in [s for s in self._polled if s.proc.poll() is not None]:
            self._exited(spawned, self._watched[spawned])
        now = time.monotonic()
        for spawned, state in list(self._ending.items()):
            if state["stdout"] is None and state["stderr"] is None or now >= state["drain_until"]:
                for what in ("stdout", "stderr"):
                    if state[what] is not None:
                        self._forget(state[what], state, what)
                del self._ending[spawned]
                try:
                    state["on_end"](spawned)
                except Exception:
                    log.exception("recording the end of a script run failed")
                with self._lock:
                    del self._watched[spawned]

    def _exited(self, spawned: SpawnedScript, state: dict) -> None:
        """Its process has ended: reap it, and give its pipes OUTPUT_DRAIN_SECONDS more to close."""
        self._polled.discard(spawned)
        spawned.exited()
        state["drain_until"] = time.monotonic() + OUTPUT_DRAIN_SECONDS
        self._ending[spawned] = state

    def busy(self) -> bool:
        """True while a script it was given has not been seen through (its on_end not yet called)."""
        with self._lock:
            return bool(self._new or self._watched)

    def _take_new(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            new = list(self._new)
        for spawned, on_end in new:
            state: dict[str, Any] = {"spawned": spawned, "on_end": on_end, "drain_until": None, "pidfd": None,
                                     "stdout": None, "stderr": None}
            try:
                for what, pipe in (("stdout", spawned.proc.stdout), ("stderr", spawned.proc.stderr)):
                    fd = pipe.fileno()
                    os.set_blocking(fd, False)
                    self._selector.register(fd, selectors.EVENT_READ, (spawned, what))
                    state[what] = fd
            except (OSError, ValueError) as e:      # e.g. the epoll watch limit: run on, its output unread
                log.error("cannot read the output of a script (%s); its output is dropped", e)
                for what in ("stdout", "stderr"):
                    if state[what] is not None:
                        self._forget(state[what], state, what)
                    else:
                        (spawned.proc.stdout if what == "stdout" else spawned.proc.stderr).close()
            pidfd = None
            try:
                pidfd = os.pidfd_open(spawned.proc.pid)
                self._selector.register(pidfd, selectors.EVENT_READ, (spawned, "exit"))
                state["pidfd"] = pidfd
            except (AttributeError, OSError, ValueError):
                if pidfd is not None:
                    os.close(pidfd)         # no pidfd (kernel before 5.3, a filter): its exit is polled for
                self._polled.add(spawned)
            with self._lock:
                self._watched[spawned] = state
                self._new.remove((spawned, on_end))

    def _forget(self, fd: int, state: dict, what: str) -> None:
        self._selector.unregister(fd)
        spawned = state["spawned"]
        if what == "pidfd":
            os.close(fd)
        else:
            (spawned.proc.stdout if what == "stdout" else spawned.proc.stderr).close()
        state[what] = None


_reaper = ScriptReaper()


class ScriptRunner:
    """Runs a script as a subprocess in its own process group, with a time limit and bounded output.

    When the script ends (or times out) the whole process group is killed, so grandchildren such as a
    `sleep 300 &` never outlive their run. start() spawns and returns at once (the reaper sees the run through);
    run() waits for the result.
    """

    def __init__(self, clock: Callable[[], float] = time.time, preview_chars: int = 200,
                 kill_grace: float = KILL_GRACE_SECONDS, reaper: ScriptReaper | None = None):
        self.clock = clock
        self.preview_chars = preview_chars
        self.kill_grace = kill_grace
        self.reaper = reaper or _reaper

    def start(self, argv: list[str], cwd: str, env: dict[str, str], timeout_ms: int,
              on_end: Callable[[ScriptResult], None], on_spawn: Callable[[int], None] | None = None) -> None:
        """Spawn the script and return; `on_end(result)` is called (in the reaper's thread) when it has ended,
        at once if it could not start. `on_spawn(pgid)` is told the process group as soon as it exists."""
        started = self.clock()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        except OSError as e:
            on_end(ScriptResult("error", started, int((time.monotonic() - t0) * 1000),
                                error=f"cannot start: {_start_failure(argv, e)}"))
            return
        if on_spawn is not None:
            on_spawn(proc.pid)
        spawned = SpawnedScript(proc, started, t0, timeout_ms, self.kill_grace)
        self.reaper.watch(spawned, lambda s: on_end(s.result(self.preview_chars)))

    def run(self, argv: list[str], cwd: str, env: dict[str, str], timeout_ms: int,
            on_spawn: Callable[[int], None] | None = None) -> ScriptResult:
        """Run to completion; `on_spawn(pgid)` is told the process group as soon as it exists."""
        ended = threading.Event()
        results: list[ScriptResult] = []
        self.start(argv, cwd, env, timeout_ms, lambda result: (results.append(result), ended.set()),
                   on_spawn=on_spawn)
        ended.wait()
        return results[0]


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


class InFlightRun:
    """One run in progress, as InFlightRuns tracks it."""

    def __init__(self, marker: dict, on_interrupt: Callable[[dict, str], None]):
        self.marker = marker
        self.on_interrupt = on_interrupt
        self.pgid: int | None = None
        self.interrupted = False
        self._lock = threading.Lock()

    def set_pgid(self, pgid: int) -> None:
        """The run's process group (scripts); killed at once if shutdown already gave up on this run."""
        with self._lock:
            self.pgid = pgid
            interrupted = self.interrupted
        if interrupted:
            _kill_group(pgid, signal.SIGKILL)

    def signal(self, sig: int) -> None:
        with self._lock:
            self.interrupted = True
            pgid = self.pgid
        if pgid is not None:
            _kill_group(pgid, sig)


class InFlightRuns:
    """Runs in progress. Each has a marker file while it runs, so a run cut short by SIGKILL or power loss is
    found (and recorded as interrupted) at the next start; graceful shutdown waits for them, then stops the rest.

    Marker files are slots kept open and used again: a run's marker is one write into an empty slot, and emptied
    (truncated) when its result is recorded. Creating and removing a file per run cost 50-80 us of the ticker's
    time for each run it begins, and 0.4 ms at times on this VM's disk. Empty files mean nothing; at most
    `slots_kept` empty ones stay, and stock() makes them ahead, in a worker, for the runs due next. An HTTP run
    readied ahead of its second has its marker written then (reserve()), so a crash in the 0.1 s before that
    second is recorded as an interrupted run that may not have been sent.
    """

    def __init__(self, marker_dir: str | None = None):
        self.marker_dir = marker_dir
        self._cond = threading.Condition()
        self._runs: dict[str, InFlightRun] = {}     # running: shutdown may interrupt these
        self._ending: set[str] = set()              # finished, their record being written: shutdown waits
        self._free: list[tuple[int, str]] = []      # empty marker slots: (descriptor, path)
        self._slots: dict[str, tuple[int, str]] = {}    # run id -> the slot holding its marker
        self._reserved: set[tuple[int, str]] = set()    # slots holding the marker of a run about to begin
        self._made = 0
        self._stocking = False                      # a stock() asked for or under way
        self._stock_failed = -60.0                  # time.monotonic() when making a slot last failed
        self.slots_kept = min(MARKER_SLOTS_KEPT, _descriptor_limit() // 8)
        if marker_dir:
            os.makedirs(marker_dir, mode=0o700, exist_ok=True)

    def _slot(self) -> tuple[int, str]:
        with self._cond:
            if self._free:
                return self._free.pop()
        return self._new_slot()

    def _new_slot(self) -> tuple[int, str]:
        """A new empty marker file, open: (descriptor, path)."""
        with self._cond:
            self._made += 1
            path = os.path.join(self.marker_dir, f"slot-{os.getpid()}-{self._made}.json")
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600), path

    def reserve(self, marker: dict) -> tuple[int, str] | None:
        """Write `marker` into a slot for a run about to begin (then begin(reserved=) it, or release() it);
        None without a marker directory or when the write fails (logged)."""
        if not self.marker_dir:
            return None
        slot = None
        try:        # written in place: a marker torn by a crash is skipped as unreadable by recover()
            slot = self._slot()
            os.pwrite(slot[0], json.dumps(marker).encode(), 0)
        except OSError as e:
            log.error("cannot write a run marker in %s: %s", self.marker_dir, e)
            if slot is not None:
                self._discard(slot)
            return None
        with self._cond:
            self._reserved.add(slot)
        return slot

    def release(self, reserved: tuple[int, str] | None) -> None:
        """A reserved marker whose run never began: emptied, its slot kept for the next run."""
        if reserved is not None:
            with self._cond:
                self._reserved.discard(reserved)
            self._empty(reserved)

    def begin(self, run_id: str, marker: dict, on_interrupt: Callable[[dict, str], None],
              reserved: tuple[int, str] | None = None) -> InFlightRun:
        """Track a run starting now; `on_interrupt(marker, reason)` records it if it never finishes. Its marker
        is written now, unless `reserved` holds it already (from reserve())."""
        run = InFlightRun(marker, on_interrupt)
        slot = reserved if reserved is not None else self.reserve(marker)
        with self._cond:
            self._runs[run_id] = run
            if slot is not None:
                self._reserved.discard(slot)
                self._slots[run_id] = slot
        return run

    def finish(self, run_id: str) -> bool:
        """The run ended: True if the caller now records its result (then calls done()), False if shutdown
        already recorded it as interrupted (then record nothing more)."""
        with self._cond:
            if self._runs.pop(run_id, None) is None:
                return False
            self._ending.add(run_id)
            return True

    def done(self, run_id: str) -> None:
        """The result of a finished run is recorded: drop its marker. Harmless for unknown ids."""
        with self._cond:
            if run_id not in self._ending:
                return
            self._ending.discard(run_id)
            self._cond.notify_all()
        self._remove_marker(run_id)

    def _remove_marker(self, run_id: str) -> None:
        with self._cond:
            slot = self._slots.pop(run_id, None)
        if slot is not None:
            self._empty(slot)

    def _empty(self, slot: tuple[int, str]) -> None:
        try:
            os.ftruncate(slot[0], 0)
        except OSError:
            self._discard(slot)
            return
        with self._cond:
            if len(self._free) < self.slots_kept:
                self._free.append(slot)
                return
        self._discard(slot)

    def wants_stock(self, count: int) -> bool:
        """True when fewer than `count` empty slots are ready (within slots_kept), no stock() is asked for or
        under way, and making one did not fail in the last minute. A True answer is an order: the caller must
        have stock(count) run, and no other is asked for until it ends."""
        with self._cond:
            if (not self.marker_dir or self._stocking or len(self._free) >= min(count, self.slots_kept)
                    or time.monotonic() - self._stock_failed < 60.0):
                return False
            self._stocking = True
            return True

    def stock(self, count: int) -> None:
        """Make empty slots until `count` (within slots_kept) are ready: a worker's task, so the runs due next
        find their marker files made and neither the ticker nor a spawning worker waits on a file creation."""
        with self._cond:
            self._stocking = True
        try:
            while True:
                with self._cond:
                    if len(self._free) >= min(count, self.slots_kept):
                        return
                slot = self._new_slot()
                with self._cond:
                    self._free.append(slot)
        except OSError as e:
            log.error("cannot make run marker files in %s: %s (trying again in a minute)", self.marker_dir, e)
            with self._cond:
                self._stock_failed = time.monotonic()
        finally:
            with self._cond:
                self._stocking = False

    @staticmethod
    def _discard(slot: tuple[int, str]) -> None:
        for step in (functools.partial(os.unlink, slot[1]), functools.partial(os.close, slot[0])):
            try:
                step()
            except OSError:
                pass

    def count(self) -> int:
        with self._cond:
            return len(self._runs) + len(self._ending)

    def wait_idle(self, deadline: float) -> bool:
        """Wait until no run is in flight or time.monotonic() reaches `deadline`; True if idle."""
        with self._cond:
            while self._runs or self._ending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def interrupt_all(self, reason: str, kill_grace: float = 1.0) -> int:
        """Stop every run still in flight (SIGTERM, then SIGKILL, to whole process groups) and record each
        through its `on_interrupt` with `reason`. Returns how many there were."""
        with self._cond:
            runs = dict(self._runs)
            self._runs.clear()
            self._cond.notify_all()
        for run in runs.values():
            run.signal(signal.SIGTERM)
        deadline = time.monotonic() + kill_grace
        while time.monotonic() < deadline and any(_group_alive(r.pgid) for r in runs.values()):
            time.sleep(0.02)
        for run_id, run in runs.items():
            run.signal(signal.SIGKILL)
            try:
                run.on_interrupt(run.marker, reason)
            except Exception:
                log.exception("recording the interrupted run %s failed", run_id)
            self._remove_marker(run_id)
        with self._cond:    # runs that ended meanwhile are writing their records: give them a moment
            end = time.monotonic() + 2.0
            while self._ending and time.monotonic() < end:
                self._cond.wait(end - time.monotonic())
        return len(runs)

    def recover(self) -> list[dict]:
        """Markers a previous process left behind (it died with those runs in flight); removed once read."""
        if not self.marker_dir:
            return []
        markers = []
        with self._cond:
            own = {path for _, path in self._free} | {path for _, path in self._slots.values()} | {
                path for _, path in self._reserved}
        for name in sorted(os.listdir(self.marker_dir)):
            path = os.path.join(self.marker_dir, name)
            if path in own:
                continue
            if name.endswith(".json"):
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                    marker = json.loads(data) if data else None     # an empty slot: no run in it
                    if data and isinstance(marker, dict):
                        markers.append(marker)
                except (OSError, ValueError) as e:
                    log.warning("%s: unreadable run marker (%s); ignored", path, e)
            try:
                os.unlink(path)
            except OSError:
                pass
        return markers


def _group_alive(pgid: int | None) -> bool:
    """True while a process of the group is alive; zombies (left when PID 1 does not reap) do not count."""
    if pgid is None:
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
            return True
    return False


###############################################################################
# Scheduler ####################################################################
###############################################################################

RUN_GOES_ON: Any = type("RunGoesOn", (), {"__repr__": lambda self: "RUN_GOES_ON"})()


@dataclass(eq=False)
class Job:
    """One registered schedule as the scheduler sees it.

    `fire(slot)` runs in a worker thread; if it returns RUN_GOES_ON, the run goes on after it returns and its
    owner calls Scheduler.release(key) when it ends. `record(status, slot, count, last_slot)` writes a `skipped` or
    `missed` record for `count` slots from `slot` to `last_slot` (also in a worker thread, so the ticker never
    waits on a file). `start(slot)`, when a job has it, is tried first, on the ticker thread itself: it begins
    the run without waiting on anything and returns the rest of the run for a worker (or None: then `fire`
    runs the whole of it in a worker); it must not raise once its run has begun. `prepare(slot)`, when a job has
    it, is called shortly before `slot` to do the slow part of beginning that run ahead (True if it readied
    something); `fire` or `start` for that slot then uses it, and `unprepare(slot)` lets go of whatever was
    readied and not used (it must be harmless when nothing was).
    """

    key: str
    spec: CronSpec
    tz: ZoneInfo
    fire: Callable[[float], None]
    record: Callable[[str, float, int, float], None]
    start: Callable[[float], Callable[[], None] | None] | None = None
    prepare: Callable[[float], bool] | None = None
    unprepare: Callable[[float], None] | None = None
    next_at: float | None = None
    last_slot: float | None = None
    generation: int = 0


class WorkerPool:
    """A fixed number of daemon threads running submitted calls; a failing call is logged, the thread lives on.

    Daemon threads, unlike concurrent.futures', never hold the process open at exit behind a hung HTTP run.
    """

    def __init__(self, workers: int):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._workers = workers
        for n in range(workers):
            threading.Thread(target=self._work, name=f"schedserver-worker-{n}", daemon=True).start()

    def submit(self, fn: Callable, *args: Any) -> None:
        if self._closed:
            raise RuntimeError("worker pool is shut down")
        self._queue.put((fn, args))

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

    def shutdown(self) -> None:
        """Stop taking work; each worker ends when it reaches its end marker."""
        self._closed = True
        for _ in range(self._workers):
            self._queue.put(None)


class Scheduler:
    """Keeps jobs ordered by next fire instant; `tick(now)` fires what is due into a bounded worker pool.

    Runs due in the same second would start one after the other as workers take them, each behind the thread
    hand-offs of those before it. So a job that can begin its run without waiting (`Job.start`) is begun by
    the ticker itself, all of them before any worker is woken; workers do the waiting. After each tick,
    `on_upcoming(jobs)` is told the jobs due within the next LOOKAHEAD seconds, to get ready for them. And
    PREPARE_AHEAD seconds before each second, the jobs due then that can (`Job.prepare`) ready their runs, so at
    the second itself beginning a run is little more than a write.
    """

    LOOKAHEAD = 1.5
    PREPARE_AHEAD = 0.1
    PREPARE_MARGIN = 0.01       # preparing stops this long before the second, so the ticker is back on time

    def __init__(self, workers: int = 8, misfire_grace: float = 30.0, clock: Callable[[], float] = time.time,
                 submit: Callable[..., Any] | None = None, monotonic: Callable[[], float] = time.monotonic,
                 on_tick: Callable[[float], None] | None = None):
        self.misfire_grace = misfire_grace
        self.clock = clock
        self.monotonic = monotonic
        self.on_tick = on_tick          # called by the ticker thread after each good tick (the systemd watchdog)
        self.on_upcoming: Callable[[list[Job]], None] | None = None
        self._pool = None if submit else WorkerPool(workers)
        self._submit = submit or self._pool.submit
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._running: set[str] = set()     # keys with a run in flight; outlives remove(), so re-adding a
                                            # job while its old run still goes on cannot overlap it
        self._seq = 0
        # key -> (job, slot, the slot after it) of the runs prepare() readied
        self._prepared: dict[str, tuple[Job, float, float | None]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_tick: float | None = None                 # the `now` of the last tick (wall clock)
        self.last_tick_monotonic: float | None = None       # when it happened, for health checks

    # -- registrations --------------------------------------------------------------------------------------
    def add(self, job: Job, anchor: float) -> None:
        """Register (or replace) `job`; its first fire is the first slot strictly after `anchor`."""
        with self._lock:
            old = self._jobs.get(job.key)
            if old is not None:
                job.generation = old.generation + 1
            job.last_slot = anchor
            job.next_at = job.spec.next_after(anchor, job.tz)
            self._jobs[job.key] = job
            self._push(job)

    def remove(self, key: str) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def get(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def next_at(self, key: str) -> float | None:
        with self._lock:
            job = self._jobs.get(key)
            return job.next_at if job else None

    def is_running(self, key: str) -> bool:
        with self._lock:
            return key in self._running

    def states(self, keys: list[str]) -> list[tuple[float | None, bool]]:
        """(next_at, is running) of each key, under one hold of the lock: for listings."""
        with self._lock:
            jobs, running = self._jobs, self._running
            return [(job.next_at if (job := jobs.get(key)) is not None else None, key in running) for key in keys]

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def claim(self, key: str) -> bool:
        """Mark a registered job as running (for a manual run); False if unknown or already running."""
        with self._lock:
            if key not in self._jobs or key in self._running:
                return False
            self._running.add(key)
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._running.discard(key)

    def _push(self, job: Job) -> None:
        if job.next_at is not None:
            self._seq += 1
            heapq.heappush(self._heap, (job.next_at, self._seq, job.key, job.generation))

    # -- firing ---------------------------------------------------------------------------------------------
    def submit(self, fn: Callable, *args: Any) -> None:
        """Run `fn(*args)` in a worker; dropped (with a warning) once the pool is shut down."""
        try:
            self._submit(fn, *args)
        except RuntimeError:
            log.warning("worker pool is shut down; dropped %s", getattr(fn, "__name__", fn))

    def tick(self, now: float) -> None:
        """Fire every job due at or before `now`. Costs nothing per job that is not due."""
        actions: list[tuple] = []
        unused: list[tuple[Job, float]] = []
        with self._lock:
            self.last_tick = now
            self.last_tick_monotonic = self.monotonic()
            while self._heap and self._heap[0][0] <= now:
                at, _, key, generation = heapq.heappop(self._heap)
                job = self._jobs.get(key)
                if job is None or job.generation != generation or job.next_at != at:
                    continue        # removed or re-registered since this entry was pushed
                actions.extend(self._due(job, at, now))
                self._push(job)
            if self._prepared:      # readied for a slot now past that did not fire (removed, skipped, ...), or
                                    # far ahead: the clock was set back
                unused = [self._prepared.pop(key)[:2] for key, (_, at, _) in list(self._prepared.items())
                          if at <= now or at > now + self.LOOKAHEAD]
        if actions:
            self._hand_over(actions)
        self._unprepare(unused)
        if self.on_upcoming is not None:
            try:
                self.on_upcoming(self._upcoming(now + self.LOOKAHEAD))
            except Exception:
                log.exception("getting ready for upcoming runs failed")

    def _hand_over(self, actions: list[tuple]) -> None:
        """Runs the ticker can begin itself go first, all of them, before any worker is woken."""
        started = [self._start_here(*action[1:]) if action[0] == self._run_fire and action[1].start else action
                   for action in actions]
        for action in sorted(started, key=lambda a: a[0] != self._run_started):
            try:
                self._submit(*action)
            except RuntimeError:    # pool shut down while stopping
                log.warning("worker pool is shut down; dropped a fire of %s", action[1].key)

    def _start_here(self, job: Job, slot: float) -> tuple:
        """Begin `job`'s run on this (the ticker) thread: the worker action for the rest of it."""
        try:
            rest = job.start(slot)
        except Exception:
            log.exception("starting %s failed; a worker runs it", job.key)
            rest = None
        return (self._run_started, job, rest) if rest is not None else (self._run_fire, job, slot)

    def _upcoming(self, horizon: float) -> list[Job]:
        """The jobs whose next fire is at or before `horizon`."""
        with self._lock:
            return [job for _, job in self._due_by(horizon)]

    def _due_by(self, horizon: float) -> list[tuple[tuple[float, int], Job]]:
        """((next fire, order pushed), job) of the jobs whose next fire is at or before `horizon`. Lock held."""
        found = []
        heap, todo = self._heap, [0]
        while todo:
            i = todo.pop()
            if i < len(heap) and heap[i][0] <= horizon:     # else neither it nor its children
                at, seq, key, generation = heap[i]
                job = self._jobs.get(key)
                if job is not None and job.generation == generation and job.next_at == at:
                    found.append(((at, seq), job))
                todo += (2 * i + 1, 2 * i + 2)
        return found

    def prepare(self, slot: float, until: float | None = None) -> int:
        """Ready ahead the runs due at or before `slot` whose jobs can (`Job.prepare`), in the order they will
        fire, until the clock reaches `until`; the rest begin the ordinary way. Returns how many were readied."""
        now = self.clock()
        with self._lock:
            if not self._heap or self._heap[0][0] > slot:
                return 0
            due = sorted((order, job) for order, job in self._due_by(slot)
                         if order[0] > now and job.prepare is not None and job.key not in self._running
                         and job.key not in self._prepared)       # overdue ones: missed or fired, as they are
        readied = 0
        for (at, _), job in due:
            if until is not None and self.clock() >= until:
                break
            try:
                if not job.prepare(at):
                    continue
            except Exception:
                log.exception("preparing a run of %s failed", job.key)
                continue
            following = job.spec.next_after(at, job.tz)     # worked out now, not at the second
            with self._lock:
                stopping = self._stop.is_set()      # stop_ticking() may have let go of the others already
                if not stopping:
                    self._prepared[job.key] = (job, at, following)
            if stopping:
                self._unprepare([(job, at)])
                break
            readied += 1
        return readied

    def _unprepare(self, prepared: list[tuple[Job, float]]) -> None:
        for job, slot in prepared:
            try:
                job.unprepare(slot)
            except Exception:
                log.exception("letting go of a run readied for %s failed", job.key)

    def _due(self, job: Job, slot: float | None, now: float) -> list[tuple]:
        """Decide what happens to `job` whose slot `slot` is due; sets its next slot. Lock held.

        Slots past the grace, and all but the latest slot within it, are missed: one `missed` record with a
        count, never a burst of catch-up runs. Counting stops at MISSED_SCAN_LIMIT (then the count is a lower
        bound), so a clock jumping forward by a year costs a bounded amount of work.
        """
        actions: list[tuple] = []
        missed, first_missed, last_missed = 0, slot, slot
        readied = self._prepared.get(job.key)
        if readied is not None and readied[0] is job and readied[1] == slot:
            slots, following = None, readied[2]         # prepare() worked the next slot out
        else:
            slots = job.spec.iter_after(slot, job.tz)
            following = next(slots, None)
        while slot is not None and slot <= now:
            if now - slot <= self.misfire_grace and (following is None or following > now):
                break                       # the latest due slot, within the grace: it runs
            missed, last_missed = missed + 1, slot
            if missed >= MISSED_SCAN_LIMIT and following is not None and following <= now - self.misfire_grace:
                slots = job.spec.iter_after(now - self.misfire_grace, job.tz)
                following = next(slots, None)
            elif slots is None:
                slots = job.spec.iter_after(following, job.tz) if following is not None else iter(())
            slot, following = following, next(slots, None)
        if missed:
            actions.append((self._run_record, job, "missed", first_missed, missed, last_missed))
        if slot is not None and slot <= now:
            if job.key in self._running:
                actions.append((self._run_record, job, "skipped", slot, 1, slot))
            else:
                self._running.add(job.key)
                actions.append((self._run_fire, job, slot))
                if readied is not None and readied[0] is job and readied[1] == slot:
                    del self._prepared[job.key]     # its fire (or start) takes what was readied
            job.last_slot = slot
            job.next_at = following
        else:
            job.next_at = slot
        return actions

    def _run_fire(self, job: Job, slot: float) -> None:
        goes_on = False
        try:
            if self.clock() - slot > self.misfire_grace:
                # Every worker was busy for longer than the grace: too late to be the run that was asked for.
                job.record("missed", slot, 1, slot)
                return
            goes_on = job.fire(slot) is RUN_GOES_ON
        except Exception:
            log.exception("fire of %s failed", job.key)
        finally:
            if job.unprepare is not None:
                self._unprepare([(job, slot)])      # readied and left unused (missed, or begun the ordinary way)
            if not goes_on:
                with self._lock:
                    self._running.discard(job.key)

    def _run_started(self, job: Job, rest: Callable[[], None]) -> None:
        try:
            rest()
        except Exception:
            log.exception("run of %s failed", job.key)
        finally:
            with self._lock:
                self._running.discard(job.key)

    def _run_record(self, job: Job, status: str, slot: float, count: int, last_slot: float) -> None:
        try:
            job.record(status, slot, count, last_slot)
        except Exception:
            log.exception("recording %s for %s failed", status, job.key)

    # -- the ticker thread ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="schedserver-ticker", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now, since = self.clock(), time.monotonic()
            second = now // 1.0 + 1.0
            # Wake PREPARE_AHEAD before the next whole second to ready its runs, then just after it to fire.
            if self._stop.wait(max(0.0, second - now - self.PREPARE_AHEAD)):
                break
            try:
                self.prepare(second, until=second - self.PREPARE_MARGIN)
            except Exception:
                log.exception("preparing runs failed")
            if self._stop.wait(max(0.0, second - now - (time.monotonic() - since)) + 0.0005):
                break
            try:
                now = self.clock()
                self.tick(now)
            except Exception:
                log.exception("tick failed")
                continue
            if self.on_tick is not None:
                try:
                    self.on_tick(now)
                except Exception:
                    log.exception("tick hook failed")

    def stop_ticking(self) -> None:
        """No more fires; runs in flight go on. Runs readied for a second not reached are let go."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            unused, self._prepared = [readied[:2] for readied in self._prepared.values()], {}
        self._unprepare(unused)

    def stop(self) -> None:
        self.stop_ticking()
        if self._pool is not None:
            self._pool.shutdown()


###############################################################################
# Services: HTTP request schedules #############################################
###############################################################################

EMPTY_BODY: Any = type("EmptyBody", (), {"__repr__": lambda self: "EMPTY_BODY"})()   # a request with no body
REQUEST_FIELDS = ("url", "method", "headers", "body", "json", "timeout", "follow_redirects")
CREATE_FIELDS = ("cron", "request", "name", "enabled", "timezone")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def validate_request(value: Any) -> dict:
    """The `request` of an HTTP schedule, normalised; InvalidParameter naming the field otherwise."""
    if not isinstance(value, dict):
        raise InvalidParameter("request must be an object with at least a url")
    for key in value:
        if key not in REQUEST_FIELDS:
            raise InvalidParameter(f"request.{key} is not a known field (known: {', '.join(REQUEST_FIELDS)})")
    url = value.get("url")
    if not isinstance(url, str) or not url.strip():
        raise InvalidParameter("request.url is required and must be a string")
    url = url.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port                      # raises ValueError on a bad port
    except ValueError:
        raise InvalidParameter(f"request.url {url!r} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidParameter(f"request.url {url!r} must be an http or https URL with a host")
    if len(url) > 8192 or any(c in url for c in "\r\n\t \x00"):
        raise InvalidParameter("request.url must be at most 8192 characters with no spaces or control characters")
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
        if not _HEADER_NAME.match(name):
            raise InvalidParameter(f"request.headers: {name!r} is not a valid header name")
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


def validate_create(payload: Any, default_timezone: str, policy: EgressPolicy | None = None) -> dict:
    """A create body checked and normalised: cron, request, name, enabled, timezone."""
    if not isinstance(payload, dict):
        raise InvalidParameter("body must be a JSON object")
    for key in payload:
        if key not in CREATE_FIELDS:
            raise InvalidParameter(f"{key} is not a known field (known: {', '.join(CREATE_FIELDS)})")
    if "cron" not in payload:
        raise InvalidParameter("cron is required: a six-field expression such as '0 0 9 * * MON-FRI'")
    if not isinstance(payload["cron"], str):
        raise InvalidParameter("cron must be a string such as '0 0 9 * * MON-FRI'")
    spec = parse_cron(payload["cron"])
    if "request" not in payload:
        raise InvalidParameter("request is required: an object with at least a url")
    request = validate_request(payload["request"])
    host = urllib.parse.urlsplit(request["url"]).hostname or ""
    if policy is not None and policy.refuses_literal(host):
        raise InvalidParameter(f"request.url: address {host} is refused by the egress policy "
                               "([curl] allow_networks / deny_networks)")
    name = payload.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_LENGTH):
        raise InvalidParameter(f"name must be a string of at most {MAX_NAME_LENGTH} characters")
    enabled = payload.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidParameter("enabled must be true or false")
    tz_name = payload.get("timezone", default_timezone)
    if tz_name is None:
        tz_name = default_timezone
    if not isinstance(tz_name, str):
        raise InvalidParameter("timezone must be an IANA name such as 'Europe/Berlin'")
    try:
        load_timezone(tz_name)
    except ValueError as e:
        raise InvalidParameter(f"timezone: {e}") from None
    return {"cron": spec.expression, "request": request, "name": name, "enabled": enabled, "timezone": tz_name}


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except (ValueError, AttributeError, TypeError):
        return False


@dataclass
class CurlSchedule:
    """One HTTP request schedule: its definition plus run state rebuilt from the runs log."""

    id: str
    cron: str
    request: dict
    name: str | None
    enabled: bool
    timezone: str
    created_at: float
    enabled_at: float
    last_run: float | None = None
    last_slot: float | None = None
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_SIZE))     # runs-log lines, oldest first
    summary_cache: tuple | None = field(default=None, repr=False, compare=False)    # (state key, JSON bytes)

    def definition(self) -> dict:
        return {"id": self.id, "cron": self.cron, "request": self.request, "name": self.name,
                "enabled": self.enabled, "timezone": self.timezone,
                "created_at": utc_iso(self.created_at, ms=True), "enabled_at": utc_iso(self.enabled_at, ms=True)}

    @classmethod
    def from_definition(cls, d: dict) -> "CurlSchedule":
        return cls(id=d["id"], cron=d["cron"], request=d["request"], name=d.get("name"),
                   enabled=bool(d["enabled"]), timezone=d.get("timezone") or "UTC",
                   created_at=parse_iso(d["created_at"]),
                   enabled_at=parse_iso(d.get("enabled_at") or d["created_at"]))


class LogIdScan:
    """The schedule ids a runs log's files hold, gathered by a child interpreter on another core while start-up
    reads the newest lines itself: without it, schedules that never ran make start-up read every line (1.2 s
    of a start with a 300 MB log). result() is None until the child is done, or when it failed; the start-up
    scan goes on reading meanwhile and uses the answer as soon as it is there."""

    MIN_BYTES = 32 * 1024 * 1024        # below this, reading the files here costs less than starting a child
    # argv: the id regex, then the files. Writes the ids it found to stdout, one per line, then END.
    CHILD = r"""
import re, sys
pattern, seen = re.compile(sys.argv[1].encode("latin-1")), set()
for path in sys.argv[2:]:
    try:
        f = open(path, "rb")
    except OSError:
        continue
    with f:
        rest = b""
        while block := f.read(1 << 20):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            seen.update(pattern.findall(data, 0, cut))
            rest = data[cut:]
        seen.update(pattern.findall(rest))
sys.stdout.buffer.write(b"\n".join(seen) + b"\nEND")
"""

    def __init__(self, proc: subprocess.Popen, out: Any):
        self._proc, self._out = proc, out

    @classmethod
    def start(cls, paths: list[str]) -> "LogIdScan | None":
        """A scan of `paths` (missing files are skipped), or None when they are small or no child can start."""
        size = 0
        for path in paths:
            try:
                size += os.stat(path).st_size
            except OSError:
                pass
        if size < cls.MIN_BYTES:
            return None
        out = None
        try:
            out = tempfile.TemporaryFile()
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", cls.CHILD,
                                     _SCHEDULE_ID.pattern.decode("latin-1"), *paths],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL)
        except OSError as e:
            if out is not None:
                out.close()
            log.info("runs log read in this process alone (cannot start %s: %s)", sys.executable, e.strerror or e)
            return None
        return cls(proc, out)

    def result(self) -> set[bytes] | None:
        """The ids, once the child has ended well; None before that or when it failed."""
        if self._proc.poll() is None or self._proc.returncode != 0:
            return None
        self._out.seek(0)
        lines = self._out.read().split(b"\n")
        if lines[-1] != b"END":     # not the whole answer (sys.executable may not be a Python when embedded)
            return None
        return set(lines[:-1]) - {b""}

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._out.close()


@dataclass(eq=False)
class ReadiedRun:
    """An HTTP run readied ahead of its slot: its request bytes, on a kept connection, its marker written."""

    request: dict
    conn: Any
    wire: bytes
    run_id: str
    marker: dict
    reserved: tuple[int, str] | None


class CurlSchedules:
    """The HTTP request schedule surface: create, list, get, toggle, delete, and firing."""

    def __init__(self, store: JournalStore, runs: NdjsonLog, scheduler: Scheduler, runner: HttpRunner,
                 default_timezone: str = "UTC", clock: Callable[[], float] = time.time,
                 inflight: InFlightRuns | None = None):
        self.store = store
        self.inflight = inflight or InFlightRuns()
        self.runs = runs
        self.scheduler = scheduler
        self.runner = runner
        self.default_timezone = default_timezone
        self.clock = clock
        self._lock = threading.Lock()           # guards self._schedules (memory only)
        self._write_lock = threading.Lock()     # serialises mutations, which include a file write
        self._schedules: dict[str, CurlSchedule] = {}
        self._order: list[tuple[float, int, str]] = []  # (created_at, sequence, id) ascending, for listing
        self._order_keys: dict[str, tuple[float, int, str]] = {}
        self._arrivals = 0
        self._prepared: dict[tuple[str, float], ReadiedRun] = {}  # (id, slot) -> a run readied ahead of its slot

    # -- start-up --------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Read definitions and rebuild run state from the runs log; register enabled schedules."""
        checkpoint = self._read_checkpoint()
        # Without a checkpoint, a child process gathers which schedules the whole log holds, meanwhile.
        present = LogIdScan.start(self.runs.files()) if checkpoint[1] < 0 else None
        try:
            self._load(checkpoint, present)
        finally:
            if present is not None:
                present.close()

    def _load(self, checkpoint: tuple[set[bytes], int], present: LogIdScan | None) -> None:
        items = self.store.load()
        try:
            schedules = [CurlSchedule.from_definition(d) for d in items]
            for s in schedules:
                parse_cron(s.cron)
                load_timezone(s.timezone)
                normal = validate_request(s.request)
                if normal != s.request:     # else keep the object the store holds too (no second copy)
                    s.request = normal
        except (KeyError, TypeError, ValueError, ApiError) as e:
            raise StartupError(f"{self.store.path}: not a valid schedules file ({e!r}); left as it is for "
                               "inspection") from None
        schedules.sort(key=lambda s: s.created_at)
        self._rebuild_run_state({s.id: s for s in schedules}, checkpoint, present)
        with self._lock:
            self._schedules = {}
            self._order, self._order_keys = [], {}
            for s in schedules:
                self._add(s)
        for s in schedules:
            if s.enabled:
                self._register(s)

    def _rebuild_run_state(self, by_id: dict[str, CurlSchedule], checkpoint: tuple[set[bytes], int] = (set(), -1),
                           present: LogIdScan | None = None) -> None:
        """History, last run and last slot of each schedule from the runs log, newest lines first, until every
        schedule has HISTORY_SIZE entries. A block is read line by line while blocks hold lines still wanted;
        otherwise one regex tells whether it holds any. A schedule that never ran would make the scan read every
        file: the checkpoint of the last clean stop, or else `present` (the ids the whole log holds, once its
        child process is done), tells which those are. History lines are kept as bytes, parsed when asked for."""
        wanted = {schedule_id.encode(): schedule for schedule_id, schedule in by_id.items()}
        first_created, counted = 0.0, -1       # the earliest creation among `wanted`, when it had `counted`
        never_ran, below = checkpoint
        hits = 0
        for path, offset, chunk in self.runs.chunks_newest():
            if never_ran and path == self.runs.path and offset <= below:
                never_ran = self._past_checkpoint(never_ran, wanted, chunk)
            if present is not None and not hits and (found := present.result()) is not None:
                for key in [key for key in wanted if key not in found]:
                    del wanted[key]         # no line anywhere in the log
                present = None
            if not wanted:
                break
            if hits or not wanted.keys().isdisjoint(_SCHEDULE_ID.findall(chunk)):
                hits = self._take_lines(chunk, wanted)
                if hits:
                    continue
            # Nothing wanted here. Lines are appended in time order, so once the oldest line of a block
            # predates the creation of every schedule still wanted, older blocks cannot hold them either.
            if counted != len(wanted):
                first_created, counted = min(s.created_at for s in wanted.values()), len(wanted)
            oldest = _parse_optional_iso(chunk[7:31].decode("ascii", "replace")) if chunk.startswith(b'{"ts":"') else None
            if oldest is not None and oldest < first_created - 3600:
                break

    def _take_lines(self, chunk: bytes, wanted: dict[bytes, CurlSchedule]) -> int:
        """_rebuild_run_state for one block, newest line first: how many lines of `wanted` schedules it held.
        Schedules with a full history and their last run leave `wanted`. A few hundred thousand lines go through
        here at a start, so the layout _record_result writes is tested inline and cut by position."""
        hits = 0
        for line in reversed(chunk.split(b"\n")):
            if line[31:48] == _LAYOUT_MIDDLE and line[:7] == _LAYOUT_HEAD:
                schedule = wanted.get(line[48:84])
            else:
                match = _SCHEDULE_ID.search(line)
                schedule = wanted.get(match.group(1)) if match else None
            if schedule is None:
                continue
            hits += 1
            history = schedule.history
            if len(history) < 2 or schedule.last_run is None:
                times = _slot_and_start(line)
                if times is None:
                    self.runs._warn_malformed(self.runs.path)
                    continue
                slot, started = times
                if slot is not None:    # lines are appended when runs end: the latest slot of the newest few
                    schedule.last_slot = max(slot, schedule.last_slot or 0.0)
                if schedule.last_run is None and started is not None:
                    schedule.last_run = started
            if len(history) < HISTORY_SIZE:
                history.appendleft(b"{" + line[86:-18] + b"}" if line[-18:] == _LAYOUT_CRON_END
                                   and line[31:48] == _LAYOUT_MIDDLE and line[:7] == _LAYOUT_HEAD
                                   else _history_line(line))
            if len(history) >= HISTORY_SIZE and schedule.last_run is not None:
                del wanted[schedule.id.encode()]
                if not wanted:
                    break
        return hits

    def _past_checkpoint(self, never_ran: set[bytes], wanted: dict[bytes, CurlSchedule], chunk: bytes) -> set[bytes]:
        """The scan reached the checkpoint's offset with this block: schedules that had no line when the
        checkpoint was written have none below it, so once the block's lines above it are read, they are done."""
        for line in chunk.split(b"\n"):
            match = _SCHEDULE_ID.search(line)
            if match and match.group(1) in never_ran and match.group(1) in wanted:
                return never_ran    # a line of theirs in this very block: finish the block first, next one
        for key in never_ran:
            wanted.pop(key, None)
        return set()

    # -- the run-state checkpoint ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(os.path.dirname(self.runs.path), "curl-runs.checkpoint.json")

    def write_checkpoint(self) -> None:
        """At a clean stop: which schedules have no line in the runs log, and where the log ends. The next
        start then need not read the whole log to learn that they never ran (a full read of a 300 MB log is
        half a second). Consumed by the next start; a crash leaves none, and a start without one reads it all."""
        try:
            st = os.stat(self.runs.path)
            with self._lock:
                never_ran = [s.id for s in self._schedules.values() if not s.history and s.last_slot is None]
            atomic_write(self.checkpoint_path, json.dumps({"version": 1, "log_inode": st.st_ino,
                                                           "log_size": st.st_size, "never_ran": never_ran}).encode())
        except OSError as e:
            log.warning("cannot write %s (the next start reads the whole runs log): %s", self.checkpoint_path, e)

    def _read_checkpoint(self) -> tuple[set[bytes], int]:
        """(schedules that never ran, the log offset below which they have no line), or nothing when there is no
        checkpoint or the runs log is not the file it was written for. Removed once read: it holds only for
        the log as it was at the stop that wrote it."""
        try:
            with open(self.checkpoint_path, "rb") as f:
                document = json.loads(f.read())
            os.unlink(self.checkpoint_path)
            st = os.stat(self.runs.path)
            if st.st_ino != document["log_inode"] or st.st_size < document["log_size"]:
                return set(), -1
            return {str(i).encode() for i in document["never_ran"]}, int(document["log_size"])
        except FileNotFoundError:
            return set(), -1
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: unusable (%s); reading the whole runs log", self.checkpoint_path, e)
            try:
                os.unlink(self.checkpoint_path)
            except OSError:
                pass
            return set(), -1

    # -- the API ---------------------------------------------------------------------------------------------
    def create(self, payload: Any) -> dict:
        values = validate_create(payload, self.default_timezone, getattr(self.runner, "policy", None))
        now = self.clock()
        schedule = CurlSchedule(id=str(uuid.uuid4()), created_at=now, enabled_at=now, **values)
        with self._write_lock:
            self._save(lambda: self.store.put(schedule.definition()), code="SCHEDULE_CREATION_FAILED",
                       action="create schedule")
            with self._lock:
                self._add(schedule)
            if schedule.enabled:
                self._register(schedule)
        result = self._summary(schedule)
        result["request"] = dict(schedule.request)
        return result

    def list(self, page: int = 1, limit: int | None = None) -> dict:
        return json.loads(self.list_json(page, limit))

    def list_json(self, page: int = 1, limit: int | None = None) -> bytes:
        """list() as the JSON bytes the route sends, joined from per-schedule cached items."""
        # Newest first from the maintained order, so a page costs its size, never a sort of every schedule.
        with self._lock:
            total = len(self._order)
            newest_first = (self._schedules[sid] for _, _, sid in reversed(self._order))
            if limit is None:
                chosen = list(newest_first) if page == 1 else []
            else:
                chosen = list(itertools.islice(newest_first, (page - 1) * limit, page * limit))
        meta_limit = len(chosen) if limit is None else limit
        meta = json.dumps({"page": page, "limit": meta_limit, "total": total}).encode()
        states = self.scheduler.states([_curl_key(s.id) for s in chosen])
        items = [self._summary_json(s, next_at if s.enabled else None) for s, (next_at, _) in zip(chosen, states)]
        return b'{"items":[' + b",".join(items) + b'],"meta":' + meta + b"}"

    def get(self, schedule_id: str) -> dict:
        schedule = self._find(schedule_id)
        with self._lock:
            lines = list(reversed(schedule.history))
        history = [entry for entry in map(_history_entry, lines) if entry is not None]
        result = self._summary(schedule)
        result["request"] = dict(schedule.request)
        result["last_status"] = history[0]["status"] if history else None
        result["history"] = history
        return result

    def toggle(self, schedule_id: str, payload: Any = EMPTY_BODY) -> dict:
        """Set `enabled` from `{"enabled": bool}`; an empty body (EMPTY_BODY) flips it."""
        if payload is EMPTY_BODY:
            wanted = None
        elif isinstance(payload, dict) and set(payload) == {"enabled"} and isinstance(payload["enabled"], bool):
            wanted = payload["enabled"]
        else:
            raise InvalidParameter('body must be {"enabled": true} or {"enabled": false}, or empty to flip the state')
        with self._write_lock:
            schedule = self._find(schedule_id)
            enabled = (not schedule.enabled) if wanted is None else wanted
            now = self.clock()
            changed = enabled != schedule.enabled
            if changed:
                definition = schedule.definition()
                definition["enabled"] = enabled
                if enabled:
                    definition["enabled_at"] = utc_iso(now, ms=True)
                self._save(lambda: self.store.put(definition), action="toggle schedule")
                with self._lock:
                    schedule.enabled = enabled
                    if enabled:
                        schedule.enabled_at = now
                if enabled:
                    self._register(schedule, anchor=now)
                else:
                    self.scheduler.remove(_curl_key(schedule.id))
        return {"id": schedule.id, "enabled": enabled, "next_run": utc_iso(self._next_run(schedule))}

    def delete(self, schedule_id: str) -> dict:
        with self._write_lock:
            schedule = self._find(schedule_id)
            self._save(lambda: self.store.delete(schedule_id), action="delete schedule")
            with self._lock:
                self._schedules.pop(schedule_id, None)
                key = self._order_keys.pop(schedule_id, None)
                if key is not None:
                    del self._order[bisect.bisect_left(self._order, key)]
            self.scheduler.remove(_curl_key(schedule.id))
        return {"id": schedule.id}

    def count(self) -> int:
        with self._lock:
            return len(self._schedules)

    # -- internals -------------------------------------------------------------------------------------------
    def _add(self, schedule: CurlSchedule) -> None:
        """Hold `schedule` in memory and in the listing order (by created_at, then by arrival). Lock held."""
        self._arrivals += 1
        key = (schedule.created_at, self._arrivals, schedule.id)
        self._schedules[schedule.id] = schedule
        self._order_keys[schedule.id] = key
        bisect.insort(self._order, key)

    def _find(self, schedule_id: str) -> CurlSchedule:
        with self._lock:
            schedule = self._schedules.get(schedule_id) if _is_uuid(schedule_id) else None
        if schedule is None:
            raise NotFound("Schedule not found", code="SCHEDULE_NOT_FOUND")
        return schedule

    def _save(self, change: Callable[[], None], action: str, code: str = "STORAGE_ERROR") -> None:
        try:
            change()
        except (OSError, filelock.Timeout) as e:
            log.error("cannot %s: %s: %s", action, self.store.path, e)
            raise StorageError(f"Failed to {action}: the schedules file could not be written", code=code) from None

    def _summary(self, s: CurlSchedule) -> dict:
        summary = json.loads(self._summary_json(s))     # a copy the caller may change
        return summary

    def _summary_json(self, s: CurlSchedule, next_run: float | None | object = ...) -> bytes:
        """A schedule as list items show it, JSON-encoded; kept until its state (enabled, last run, next run)
        changes, so a listing costs a dictionary lookup per item, not the formatting of four instants.
        `next_run` when the caller has it already (a list asks the scheduler once for the whole page)."""
        if next_run is ...:
            next_run = self._next_run(s)
        key = (s.enabled, s.last_run, next_run)
        cached = s.summary_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        encoded = json.dumps({
            "id": s.id, "cron": s.cron, "enabled": s.enabled, "created_at": utc_iso(s.created_at),
            "last_run": utc_iso(s.last_run), "name": s.name, "timezone": s.timezone, "next_run": utc_iso(next_run),
            "request": {"url": s.request["url"], "method": s.request["method"]}}).encode()
        s.summary_cache = (key, encoded)
        return encoded

    def _next_run(self, s: CurlSchedule) -> float | None:
        return self.scheduler.next_at(_curl_key(s.id)) if s.enabled else None

    def _register(self, s: CurlSchedule, anchor: float | None = None) -> None:
        if anchor is None:
            anchor = max(s.enabled_at, s.last_slot or 0.0)
        kept = hasattr(self.runner, "checkout")     # a runner that can start runs on kept connections
        job = Job(key=_curl_key(s.id), spec=parse_cron(s.cron), tz=load_timezone(s.timezone),
                  fire=lambda slot, sid=s.id: self._fire(sid, slot),
                  record=lambda status, slot, count, last, sid=s.id: self._record(sid, status, slot, count, last),
                  start=functools.partial(self._start, s.id) if kept else None,
                  prepare=functools.partial(self._prepare, s.id) if kept else None,
                  unprepare=functools.partial(self._unprepare, s.id) if kept else None)
        self.scheduler.add(job, anchor)

    def _fire(self, schedule_id: str, slot: float) -> None:
        """A run, whole, in a worker."""
        with self._lock:
            schedule = self._schedules.get(schedule_id)
        if schedule is not None:
            run_id = self._begin(schedule_id, slot)
            self._complete(schedule_id, run_id, slot, functools.partial(
                self.runner.run, schedule.request, self._run_headers(schedule_id, slot)))

    def _start(self, schedule_id: str, slot: float) -> Callable[[], None] | None:
        """On the ticker: write the run's request on a kept connection, and return the rest of the run (reading
        the answer, recording it) for a worker; None when there is no kept connection for it. A run readied by
        _prepare() costs only the write."""
        with self._lock:
            schedule = self._schedules.get(schedule_id)
            readied = self._prepared.pop((schedule_id, slot), None)
        if readied is not None:
            if schedule is not None and readied.request is schedule.request and self.runner.is_open(readied.conn):
                self.inflight.begin(readied.run_id, readied.marker, self.record_interrupted, reserved=readied.reserved)
                pending = self.runner.send_wire(readied.conn, schedule.request, readied.wire)
                return functools.partial(self._complete, schedule_id, readied.run_id, slot,
                                         functools.partial(self.runner.finish, pending))
            self._let_go(readied)       # closed meanwhile (or the schedule changed): begun the ordinary way
        if schedule is None:
            return lambda: None
        conn = self.runner.checkout(schedule.request)
        if conn is None:
            return None
        run_id = self._begin(schedule_id, slot)
        pending = self.runner.send(conn, schedule.request, self._run_headers(schedule_id, slot))
        return functools.partial(self._complete, schedule_id, run_id, slot,
                                 functools.partial(self.runner.finish, pending))

    def _prepare(self, schedule_id: str, slot: float) -> bool:
        """On the ticker, shortly before `slot`: ready the run due then, so _start() only writes it. It gets a
        kept connection, its run id, its request bytes and its marker, written now; the marker's start is the
        slot. False (nothing readied) when there is no kept connection for it."""
        with self._lock:
            schedule = self._schedules.get(schedule_id)
        if schedule is None:
            return False
        conn = self.runner.checkout(schedule.request)
        if conn is None:
            return False
        try:
            wire = self.runner.wire(conn, schedule.request, self._run_headers(schedule_id, slot))
        except Exception:           # e.g. a control character: the ordinary way reports it as the run's error
            self.runner.put_back(schedule.request, conn)
            return False
        run_id = str(uuid.uuid4())
        marker = self._marker(schedule_id, run_id, slot, started=slot)
        readied = ReadiedRun(schedule.request, conn, wire, run_id, marker, self.inflight.reserve(marker))
        with self._lock:
            self._prepared[(schedule_id, slot)] = readied
        return True

    def _unprepare(self, schedule_id: str, slot: float) -> None:
        with self._lock:
            readied = self._prepared.pop((schedule_id, slot), None)
        if readied is not None:
            self._let_go(readied)

    def _let_go(self, readied: ReadiedRun) -> None:
        self.inflight.release(readied.reserved)
        self.runner.put_back(readied.request, readied.conn)

    @staticmethod
    def _run_headers(schedule_id: str, slot: float) -> dict[str, str]:
        return {"X-Schedserver-Schedule-Id": schedule_id, "X-Schedserver-Scheduled-At": utc_iso(slot)}

    @staticmethod
    def _marker(schedule_id: str, run_id: str, slot: float, started: float) -> dict:
        return {"surface": "curl", "schedule_id": schedule_id, "run_id": run_id, "scheduled_at": utc_iso(slot, ms=True),
                "started_at": utc_iso(started, ms=True), "trigger": "cron"}

    def _begin(self, schedule_id: str, slot: float) -> str:
        """A new run's id, tracked as in flight (with its marker) from now."""
        run_id = str(uuid.uuid4())
        self.inflight.begin(run_id, self._marker(schedule_id, run_id, slot, self.clock()), self.record_interrupted)
        return run_id

    def _complete(self, schedule_id: str, run_id: str, slot: float, outcome: Callable[[], RunResult]) -> None:
        """Wait for the run's result and record it, unless shutdown already recorded it as interrupted."""
        try:
            try:
                result = outcome()
            finally:
                own = self.inflight.finish(run_id)
            if own:
                self._record_result(schedule_id, run_id, slot, result)
        finally:
            self.inflight.done(run_id)

    def prepare_upcoming(self, jobs: list[Job]) -> None:
        """The ticker, each second: open connections (in workers) for the runs due next that it could start
        itself, and close kept connections left unused."""
        if not hasattr(self.runner, "checkout"):
            return
        self.runner.prune()
        with self._lock:
            requests_due = [s.request for s in (self._schedules.get(job.key[len(CURL_KEY_PREFIX):])
                                                for job in jobs if job.key.startswith(CURL_KEY_PREFIX))
                            if s is not None]
        wanted: dict[tuple[str, str, int], list[str]] = {}
        for request in requests_due:
            origin = self.runner.origin(request)
            if origin is not None:
                wanted.setdefault(origin, []).append(request["url"])
        for origin, urls in wanted.items():
            for _ in range(self.runner.to_open(origin, len(urls))):
                self.scheduler.submit(self.runner.open_kept, origin, urls[0])

    def _record_result(self, schedule_id: str, run_id: str, slot: float, result: RunResult) -> None:
        record = {"ts": utc_iso(result.started_at, ms=True), "schedule_id": schedule_id, "run_id": run_id,
                  "scheduled_at": utc_iso(slot, ms=True), "started_at": utc_iso(result.started_at, ms=True),
                  "status": result.status, "status_code": result.status_code, "duration_ms": result.duration_ms,
                  "error": result.error, "trigger": "cron"}
        log.info("http run %s status=%s http_status=%s duration_ms=%d%s", schedule_id, result.status,
                 result.status_code, result.duration_ms, f" error={result.error}" if result.error else "")
        self._append(schedule_id, record, slot)

    def record_interrupted(self, marker: dict, reason: str) -> None:
        """Record a run that never finished (shutdown, or found by its marker at the next start)."""
        started = _parse_optional_iso(marker.get("started_at"))
        now = self.clock()
        slot = _parse_optional_iso(marker.get("scheduled_at")) or now
        record = {"ts": utc_iso(now, ms=True), "schedule_id": marker.get("schedule_id"), "run_id": marker.get("run_id"),
                  "scheduled_at": marker.get("scheduled_at"), "started_at": marker.get("started_at"),
                  "status": "error", "status_code": None,
                  "duration_ms": max(0, int((now - started) * 1000)) if started else 0, "error": reason,
                  "trigger": marker.get("trigger", "cron")}
        log.warning("http run %s status=error error=%s", marker.get("schedule_id"), reason)
        self._append(str(marker.get("schedule_id")), record, slot)

    def _record(self, schedule_id: str, status: str, slot: float, count: int, last_slot: float) -> None:
        if status == "missed":
            error = f"missed {_count_text(count)} run{'s' if count != 1 else ''} from {utc_iso(slot)} (server " \
                    f"down, suspended or busy beyond the misfire grace)"
        else:
            error = "previous run still in progress"
        record = {"ts": utc_iso(self.clock(), ms=True), "schedule_id": schedule_id, "run_id": str(uuid.uuid4()),
                  "scheduled_at": utc_iso(slot, ms=True), "started_at": None, "status": status,
                  "status_code": None, "duration_ms": 0, "error": error, "trigger": "cron", "count": count,
                  "last_scheduled_at": utc_iso(last_slot, ms=True)}
        log.info("http run %s status=%s count=%d", schedule_id, status, count)
        self._append(schedule_id, record, last_slot)

    def _append(self, schedule_id: str, record: dict, slot: float) -> None:
        try:
            line = self.runs.append(record).rstrip(b"\n")
        except (OSError, filelock.Timeout) as e:
            log.error("cannot append to %s: %s", self.runs.path, e)
            line = json.dumps(record, separators=(",", ":")).encode()
        with self._lock:
            schedule = self._schedules.get(schedule_id)
            if schedule is not None:
                schedule.history.append(_history_line(line))   # bytes: a fifth of a dict's memory; parsed on GET
                schedule.last_slot = max(slot, schedule.last_slot or 0.0)
                if record["started_at"]:
                    schedule.last_run = _parse_optional_iso(record["started_at"])


def _count_text(count: int) -> str:
    return f"at least {count}" if count >= MISSED_SCAN_LIMIT else str(count)


CURL_KEY_PREFIX = "curl:"


def _curl_key(schedule_id: str) -> str:
    return CURL_KEY_PREFIX + schedule_id


def _parse_optional_iso(text: Any) -> float | None:
    try:
        return parse_iso(text) if text else None
    except ValueError:
        return None


_SCHEDULE_ID = re.compile(rb'"schedule_id":\s*"([0-9a-f-]{36})"')


_NOT_IN_HISTORY = re.compile(rb'"(?:ts|schedule_id|trigger)":"[^"]*",?')


_LAYOUT_HEAD, _LAYOUT_MIDDLE, _LAYOUT_CRON_END = b'{"ts":"', b'","schedule_id":"', b',"trigger":"cron"}'


def _in_record_layout(line: bytes) -> bool:
    """True for a line as _record_result writes it: {"ts":"<24 chars>","schedule_id":"<36 chars>",... -- the
    id is then line[48:84] and the fields can be cut by position, without a regex or a JSON parse."""
    return line[:7] == _LAYOUT_HEAD and line[31:48] == _LAYOUT_MIDDLE


def _history_line(line: bytes) -> bytes:
    """A runs-log line as kept in memory for GET /{id}: without the fields history does not show."""
    if _in_record_layout(line) and line.endswith(_LAYOUT_CRON_END):
        return b"{" + line[86:-18] + b"}"       # the layout _record_result writes, cut without a regex
    return _NOT_IN_HISTORY.sub(b"", line).replace(b",}", b"}")


def _slot_and_start(line: bytes) -> tuple[float | None, float | None] | None:
    """(the last slot, the start) a runs-log line records, None for a malformed line. A run's result in the layout
    _record_result writes is cut by position; other lines (missed, interrupted, older layouts) are parsed."""
    if (line[132:150] == b'","scheduled_at":"' and line[174:190] == b'","started_at":"' and _in_record_layout(line)
            and line.endswith(_LAYOUT_CRON_END)):      # whole: a torn line is left to the JSON parse
        return _parse_optional_iso(line[150:174].decode("ascii", "replace")), \
            _parse_optional_iso(line[190:214].decode("ascii", "replace"))
    record = _parse_record(line)
    if record is None:
        return None
    return (_parse_optional_iso(record.get("last_scheduled_at") or record.get("scheduled_at")),
            _parse_optional_iso(record.get("started_at")))


def _parse_record(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _history_entry(line: bytes | dict) -> dict | None:
    """A runs-log line (or record) as the API shows it: UTC, second precision; None for a malformed line."""
    record = _parse_record(line) if isinstance(line, bytes) else line
    if record is None:
        return None
    entry = {"run_id": record.get("run_id"),
             "scheduled_at": utc_iso(_parse_optional_iso(record.get("scheduled_at"))),
             "started_at": utc_iso(_parse_optional_iso(record.get("started_at"))),
             "status": record.get("status"), "status_code": record.get("status_code"),
             "duration_ms": record.get("duration_ms"), "error": record.get("error")}
    if record.get("status") == "missed":
        entry["count"] = record.get("count", 1)
    return entry


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
_DURATION = re.compile(r"^([0-9]+)\s*(ms|s|m|h)?$")


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
        raise RegistrationError(f"invalid @timeout: {value!r} (use milliseconds or a unit: 500ms, 30s, 5m)")
    ms = int(match.group(1)) * {"ms": 1, None: 1, "s": 1000, "m": 60000, "h": 3600000}[match.group(2)]
    if not 0 < ms <= MAX_SCRIPT_TIMEOUT_MS:
        raise RegistrationError(f"invalid @timeout: {value!r} (must be more than 0 and at most 24h)")
    return ms


def script_identity(rel: str) -> dict[str, str]:
    """The contract's names for a script: subdomain and execId are its first directory ('default' at top level)."""
    parts = rel.split("/")
    exec_id = parts[0] if len(parts) > 1 else "default"
    return {"scriptRel": rel, "subdomain": exec_id, "execId": exec_id, "vmCacheKey": f"{exec_id}:{rel}"}


def discover_scripts(root: str) -> list[str]:
    """scriptRel of every regular file under `root`, skipping hidden entries, __pycache__ and node_modules;
    symlinks are followed only when they stay inside `root`, and never into directories. Directory entries
    tell files, directories and links apart without a system call, so only links are resolved."""
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
class ScriptSchedule:
    """A registered script schedule."""

    rel: str
    path: str
    spec: CronSpec
    timeout_ms: int
    argv: tuple[str, ...]
    description: str | None = None
    token: bool = False
    registered_at: float = 0.0
    summary_cache: tuple | None = field(default=None, repr=False, compare=False)    # (state key, JSON bytes)

    def signature(self) -> tuple:
        """What a reload compares to tell a kept script from a changed one."""
        return (self.spec.expression, self.timeout_ms, self.argv, self.description, self.token)


@dataclass
class ReloadPlan:
    """A reload's diff against the registered scripts."""

    registrations: dict[str, ScriptSchedule]
    added: list[str]
    kept: list[str]
    changed: list[str]
    removed: list[str]
    failed: list[dict]


class SyntaxChecks:
    """Syntax checks of many scripts, run one after another by /bin/sh driver processes (one per command,
    or `drivers` per command): each check is a fork and exec done by the driver, so none of it holds this
    interpreter. 1,000 checks spawned from threads took about 1 s of a start; driven this way they run on
    another core while start-up loads the HTTP schedules. Results are read in order by result(), which gives
    UNCHECKED for a script it does not hold (or when its driver died), so the caller checks that one alone."""

    UNCHECKED = object()
    # stdin: the scripts, one path per line. $1 is a private directory for the outputs; then the command. Writes
    # each check's exit status on a line of its own; the Nth check (from 0), if it failed, leaves its output in
    # N.out and N.err (renamed: creating two files for every check would double the driver's time on ext4).
    DRIVER = r"""
dir=$1; shift; n=0
while IFS= read -r f; do
  ( cd -- "${f%/*}" && exec "$@" "$f" ) </dev/null >"$dir/out" 2>"$dir/err"
  rc=$?
  [ "$rc" -eq 0 ] || { mv -f -- "$dir/out" "$dir/$n.out"; mv -f -- "$dir/err" "$dir/$n.err"; }
  echo "$rc"
  n=$((n + 1))
done
"""

    def __init__(self, checks: list[tuple[str, tuple[str, ...], tuple[int, int]]], env: dict[str, str],
                 drivers: int = 1):
        self._where: dict[str, tuple[_CheckDriver, int]] = {}
        self._drivers: list[_CheckDriver] = []
        self._stamps: dict[str, tuple[int, int]] = {}     # (size, mtime) of each script when the checks began
        by_command: dict[tuple[str, ...], list[str]] = {}
        for path, command, stamp in checks:
            if "\n" not in path and path not in self._stamps:
                by_command.setdefault(command, []).append(path)
                self._stamps[path] = stamp
        for command, paths in by_command.items():
            per = -(-len(paths) // max(1, drivers))
            for first in range(0, len(paths), per):
                self._start(command, paths[first:first + per], env)

    def __len__(self) -> int:
        return len(self._where)

    def _start(self, command: tuple[str, ...], paths: list[str], env: dict[str, str]) -> None:
        scratch = None
        try:
            scratch = tempfile.mkdtemp(prefix="schedserver-check-")
            with tempfile.TemporaryFile() as listing:
                listing.write("".join(f"{p}\n" for p in paths).encode("utf-8", "surrogateescape"))
                listing.seek(0)
                proc = subprocess.Popen(["/bin/sh", "-c", self.DRIVER, "schedserver-check", scratch, *command],
                                        stdin=listing, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
        except OSError as e:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            log.warning("syntax checks run one by one (cannot start a /bin/sh driver: %s)", e.strerror or e)
            return
        driver = _CheckDriver(proc, command, scratch)
        self._drivers.append(driver)
        for index, path in enumerate(paths):
            self._where[path] = (driver, index)

    def result(self, path: str, command: tuple[str, ...], stamp: tuple[int, int] | None) -> Any:
        """The problem the check of `path` found (None: it passed); UNCHECKED if it is not checked here, or if
        the file (its size and mtime, `stamp`) has changed since the checks began."""
        driver, index = self._where.get(path, (None, 0))
        if driver is None or driver.command != command or self._stamps.get(path) != stamp:
            return self.UNCHECKED
        while len(driver.results) <= index:
            if driver.done:
                return self.UNCHECKED
            driver.read()
        return driver.results[index]

    def close(self) -> None:
        """Stop what is still running (a scan that ended early) and remove the scratch directories."""
        for driver in self._drivers:
            driver.finish()


class _CheckDriver:
    """One /bin/sh driver of SyntaxChecks and the results it has written so far, in the order of its scripts."""

    def __init__(self, proc: subprocess.Popen, command: tuple[str, ...], scratch: str):
        self.proc, self.command, self.scratch = proc, command, scratch
        self.results: list[str | None] = []
        self.done = False
        self._buffer = b""
        self._poll = select.poll()      # not select(): descriptors here can be past 1023
        self._poll.register(proc.stdout.fileno(), select.POLLIN)

    def read(self) -> None:
        """Wait for the next results; a check silent for PREFLIGHT_TIMEOUT_SECONDS is stopped with its driver
        (the scripts after it are then checked one by one by the caller)."""
        if not self._poll.poll(PREFLIGHT_TIMEOUT_SECONDS * 1000):
            self.results.append(f"{self.command[0]} took longer than {PREFLIGHT_TIMEOUT_SECONDS:g} s")
            self.finish()
            return
        data = os.read(self.proc.stdout.fileno(), 65536)
        if not data:
            self.finish()
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            index, status = len(self.results), line.decode("ascii", "replace").strip()
            self.results.append(None if status == "0" else _check_problem(self._output(index), status))

    def _output(self, index: int) -> bytes:
        """What the check wrote: its stderr, or its stdout when stderr is empty (as subprocess.run shows it)."""
        texts = []
        for name in (f"{index}.err", f"{index}.out"):
            try:
                with open(os.path.join(self.scratch, name), "rb") as f:
                    texts.append(f.read())
            except OSError:
                texts.append(b"")
        return texts[0] or texts[1]

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.proc.poll() is None:
            _kill_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


class ScriptSchedules:
    """The script schedule surface: scan and register @schedule scripts, fire them, list, history, trigger."""

    def __init__(self, scripts_dir: str, fires: NdjsonLog, scheduler: Scheduler, runner: ScriptRunner, *,
                 default_timeout_ms: int = 30000, timezone_name: str = "UTC",
                 interpreters: dict[str, tuple[str, ...]] | None = None,
                 preflight: dict[str, tuple[str, ...]] | None = None,
                 secret_values: tuple[str, ...] = (), clock: Callable[[], float] = time.time,
                 inflight: InFlightRuns | None = None, notify: Callable[[str], Any] | None = None):
        self.scripts_dir = os.path.abspath(scripts_dir)
        self.inflight = inflight or InFlightRuns()
        self.notify = notify or (lambda message: None)      # systemd notifications around reloads
        self.fires = fires
        self.scheduler = scheduler
        self.runner = runner
        self.default_timeout_ms = default_timeout_ms
        self.tz = load_timezone(timezone_name)
        self.interpreters = dict(interpreters or {})
        self.preflight = dict(preflight or {})
        self.secret_values = tuple(secret_values)
        self.clock = clock
        self._lock = threading.Lock()               # guards the dicts below (memory only)
        self._reload_lock = threading.Lock()        # one reload at a time
        self._registered: dict[str, ScriptSchedule] = {}
        self._last_fire: dict[str, dict] = {}       # scriptRel -> newest fires-log record
        self._last_cron_slot: dict[str, float] = {}
        # path -> (size, mtime_ns, interpreter, problem): kept in exec-registered.json too, so a restart with
        # a thousand unchanged scripts does not run a thousand syntax checks before it listens.
        self._preflight_cache: dict[str, tuple[int, int, str | None, str | None]] = {}
        self._preflight_changed = False
        self._begun: SyntaxChecks | None = None            # begun by begin_checks(), taken by the next plan()
        self._checks: SyntaxChecks | None = None           # the checks of the plan() running (under _reload_lock)
        self._begun_lock = threading.Lock()
        self._closed = False                                # close(): the server is stopping
        self._state_read = False
        self._programs: dict[str, str | None] | None = None    # shutil.which answers during one scan
        # Which scripts were registered, kept beside the fires log so a restart knows whose downtime counts.
        self.state = JsonStore(os.path.join(os.path.dirname(fires.path), "exec-registered.json"))
        self._registered_at_stop: set[str] | None = None    # None: unknown, so every script counts
        self._env_seen: dict | None = None
        self._env_base: dict[str, str] = {}
        self._saved_registered: set[str] | None = None
        self._prepared: dict[tuple[str, float], tuple] = {}    # (rel, slot) -> _new_run() of a fire readied ahead
                                                                # (memory only: no marker, nothing open)

    # -- registration ----------------------------------------------------------------------------------------
    def inspect(self, rel: str) -> ScriptSchedule | None:
        """The registration for one script, None if it has no @schedule; RegistrationError if it cannot run."""
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
            spec = parse_cron(expression)
        except InvalidCron as e:
            detail = e.message.split(": ", 1)[-1].split("; use 6 fields")[0]
            raise RegistrationError(f"Invalid cron expression: {expression!r} ({detail})") from None
        timeout_ms = parse_timeout(values["timeout"]) if "timeout" in values else self.default_timeout_ms
        argv = self._command_for(path, head)
        self._check_preflight(path, _interpreter_name(argv, head))
        return ScriptSchedule(rel=rel, path=path, spec=spec, timeout_ms=timeout_ms, argv=argv,
                              description=values.get("description") or None, token="token" in names)

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
            program = self._which(command[0])
            if program:
                return (program, *command[1:], path)
        tried = ", ".join(c[0] for c in candidates)
        raise RegistrationError(f"no interpreter for {ext!r}: {tried} not found on PATH (install it or set "
                                f"[exec.interpreters] \"{ext}\" in the config)")

    def _check_preflight(self, path: str, interpreter: str | None) -> None:
        """Compile/syntax-check a script before registering it; results cached by path, size, mtime and the
        interpreter that will run it."""
        st = os.stat(path)
        cached = self._preflight_cache.get(path)
        if cached and tuple(cached[:3]) == (st.st_size, st.st_mtime_ns, interpreter):
            problem = cached[3]
        else:
            problem = self._run_preflight(path, interpreter)
            self._preflight_cache[path] = (st.st_size, st.st_mtime_ns, interpreter, problem)
            self._preflight_changed = True
        if problem:
            raise RegistrationError(f"preflight failed: {problem}")

    def _run_preflight(self, path: str, interpreter: str | None = None) -> str | None:
        """The check for the interpreter that will run the script: from the scan's SyntaxChecks when they hold
        it, else run here."""
        command = self._preflight_command(path, interpreter)
        if command == _COMPILE_PYTHON:
            return _compile_python(path)
        if command is None:
            return None
        if self._checks is not None:
            try:
                st = os.stat(path)
            except OSError:
                st = None
            found = self._checks.result(path, command, (st.st_size, st.st_mtime_ns) if st else None)
            if found is not SyntaxChecks.UNCHECKED:
                return found
        try:
            done = subprocess.run([*command, path], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=PREFLIGHT_TIMEOUT_SECONDS, cwd=os.path.dirname(path),
                                  env=self._environment({}), start_new_session=True)
        except subprocess.TimeoutExpired:
            return f"{command[0]} took longer than {PREFLIGHT_TIMEOUT_SECONDS:g} s"
        except OSError as e:
            return f"{command[0]}: {e.strerror}"
        if done.returncode == 0:
            return None
        return _check_problem(done.stderr or done.stdout, done.returncode)

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
        if not command or not self._which(command[0]):
            return None
        return command

    def _which(self, program: str) -> str | None:
        """shutil.which, remembered for the length of one scan: a scan asks the same few names for every script."""
        if self._programs is None:
            return shutil.which(program)
        if program not in self._programs:
            self._programs[program] = shutil.which(program)
        return self._programs[program]

    def begin_checks(self, drivers: int = 1) -> None:
        """Start the syntax checks the next scan will need (scripts new or changed since their cached check),
        so they run while the caller does other work: Server.start loads the HTTP schedules meanwhile."""
        self._read_state()
        with self._reload_lock:             # not while a scan's own checks are being chosen and read
            self._programs = {}
            try:
                needed = self._checks_needed(discover_scripts(self.scripts_dir))
            finally:
                self._programs = None
        begun = SyntaxChecks(needed, self._environment({}), drivers)
        with self._begun_lock:
            previous, self._begun = self._begun, begun
        if previous is not None:
            previous.close()

    def close(self) -> None:
        """The server is stopping: stop checks begun for a scan that will not come, and take no more scans (a
        SIGHUP reload waiting for the lock does nothing). A scan already running finishes with its own checks."""
        with self._begun_lock:
            self._closed = True
            begun, self._begun = self._begun, None
        if begun is not None:
            begun.close()

    def _checks_needed(self, rels: list[str]) -> list[tuple[str, tuple[str, ...], tuple[int, int]]]:
        """(path, command, (size, mtime)) of each script that declares @schedule and whose check is not cached. A
        cheap pass: inspect() decides everything else later, and a script listed here needlessly costs one check."""
        needed = []
        for rel in rels:
            path = os.path.join(self.scripts_dir, *rel.split("/"))
            try:
                with open(path, "rb") as f:
                    head = f.read(HEADER_BYTES)
                if b"@schedule" not in head:
                    continue
                argv = self._command_for(path, head)
                st = os.stat(path)
            except (OSError, RegistrationError):
                continue
            interpreter = _interpreter_name(argv, head)
            cached = self._preflight_cache.get(path)
            if cached and tuple(cached[:3]) == (st.st_size, st.st_mtime_ns, interpreter):
                continue
            command = self._preflight_command(path, interpreter)
            if command is not None and command != _COMPILE_PYTHON:
                needed.append((path, command, (st.st_size, st.st_mtime_ns)))
        return needed

    def plan(self) -> ReloadPlan:
        """Scan the scripts dir and diff it against what is registered (changes nothing)."""
        registrations: dict[str, ScriptSchedule] = {}
        failed = []

        def inspect(rel: str) -> ScriptSchedule | dict | None:
            if not _is_utf8(rel):
                return {"path": _printable(rel), "reason": "file name is not valid UTF-8; rename it"}
            try:
                return self.inspect(rel)
            except (RegistrationError, OSError) as e:
                return {"path": rel, "reason": str(e)}

        # Syntax checks run in SyntaxChecks' drivers (begun at start-up, or here), one per core; the rest of
        # inspecting a script is cheap. Results come back in discovery order.
        rels = discover_scripts(self.scripts_dir)
        with self._begun_lock:
            checks, self._begun = self._begun, None
        self._programs = {}
        try:
            self._checks = checks if checks is not None else SyntaxChecks(
                self._checks_needed(rels), self._environment({}), PREFLIGHT_DRIVERS)
            outcomes = [inspect(rel) for rel in rels]
        finally:
            self._programs = None
            if self._checks is not None:
                self._checks.close()
                self._checks = None
        for rel, outcome in zip(rels, outcomes):
            if isinstance(outcome, dict):
                failed.append(outcome)
            elif outcome is not None:
                registrations[rel] = outcome
        with self._lock:
            current = dict(self._registered)
        kept = sorted(set(registrations) & set(current))
        changed = [rel for rel in kept if registrations[rel].signature() != current[rel].signature()]
        return ReloadPlan(registrations=registrations, added=sorted(set(registrations) - set(current)), kept=kept,
                          changed=changed, removed=sorted(set(current) - set(registrations)), failed=failed)

    def reload(self, dry_run: bool = False, *, reason: str = "api") -> dict:
        """Rescan and reconcile; the answer lists added, kept, changed, removed and failed scripts.

        `reason` ("start", "api", "SIGHUP") goes into the one summary line a reload logs.
        """
        with self._reload_lock:
            if self._closed:
                log.info("scripts not reloaded (%s): the server is stopping", reason)
                return {"dry_run": dry_run, "added": [], "kept": [], "changed": [], "removed": [], "failed": []}
            if not dry_run and reason != "start":
                self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
            try:
                plan = self.plan()
                if not dry_run:
                    self._apply(plan, reason)
            finally:
                if not dry_run and reason != "start":
                    self.notify("READY=1")
        return {"dry_run": dry_run, "added": plan.added, "kept": plan.kept, "changed": plan.changed,
                "removed": plan.removed, "failed": plan.failed}

    def _apply(self, plan: ReloadPlan, reason: str) -> None:
        now = self.clock()
        with self._lock:
            previous = self._registered
            registered = {}     # in scriptRel order, the order of the list
            for rel, schedule in sorted(plan.registrations.items()):
                if rel in previous and rel not in plan.changed:
                    registered[rel] = previous[rel]
                else:
                    schedule.registered_at = now
                    registered[rel] = schedule
            self._registered = registered
        for rel in plan.removed:
            self.scheduler.remove(_exec_key(rel))
        for rel in plan.added + plan.changed:
            schedule = registered[rel]
            anchor = now
            if reason == "start" and (self._registered_at_stop is None or rel in self._registered_at_stop):
                # Fires due while the server was down are recorded as missed, counted from the last cron fire;
                # only for scripts that were registered when it went down (not for ones broken back then).
                with self._lock:
                    anchor = min(now, self._last_cron_slot.get(rel, now))
            self.scheduler.add(Job(key=_exec_key(rel), spec=schedule.spec, tz=self.tz,
                                   fire=lambda slot, r=rel: self._fire_cron(r, slot),
                                   record=lambda status, slot, count, last, r=rel: self._record(
                                       r, status, slot, count, last),
                                   prepare=functools.partial(self._prepare, rel),
                                   unprepare=functools.partial(self._unprepare, rel)),
                               anchor)
        log.info("scripts reloaded (%s): %d added, %d kept, %d changed, %d removed, %d failed; %d registered",
                 reason, len(plan.added), len(plan.kept), len(plan.changed), len(plan.removed), len(plan.failed),
                 len(registered))
        for failure in plan.failed:
            log.warning("script %s not scheduled: %s", failure["path"], failure["reason"])
        if set(registered) != self._saved_registered or self._preflight_changed:
            try:
                on_disk = {path: list(entry) for path, entry in self._preflight_cache.items() if os.path.exists(path)}
                self.state.save({"version": 1, "registered": sorted(registered), "preflight": on_disk})
                self._saved_registered = set(registered)
                self._preflight_changed = False
            except (OSError, filelock.Timeout) as e:
                log.error("cannot write %s: %s", self.state.path, e)

    def _read_state(self) -> None:
        """Once, at start: which scripts were registered at the last stop, and the cached syntax checks."""
        if self._state_read:
            return
        self._state_read = True
        try:
            registered = self.state.load(None)
            if registered is not None:
                self._registered_at_stop = set(registered["registered"])
                self._saved_registered = set(self._registered_at_stop)
                for path, entry in (registered.get("preflight") or {}).items():
                    if isinstance(entry, list) and len(entry) == 4:
                        self._preflight_cache[path] = tuple(entry)
        except (StartupError, KeyError, TypeError) as e:
            log.warning("%s: unreadable (%s); treating every script as registered before", self.state.path, e)

    def load(self) -> None:
        """Rebuild last-fire state from the fires log's tail, then register the scripts."""
        self._read_state()
        # Newest first, into the rotated files if need be, until every script on disk has its last fire and
        # last cron slot (lines are appended when runs end, so keep the latest slot of the first few seen).
        wanted = set(discover_scripts(self.scripts_dir))
        seen_cron: dict[str, int] = {}
        with self._lock:
            for record in self.fires.read_newest(include_rotated=True):
                rel = record.get("scriptPath")
                if not isinstance(rel, str):
                    continue
                self._last_fire.setdefault(rel, record)
                slot = _parse_optional_iso(record.get("lastSlot") or record.get("ts"))
                if record.get("trigger") == "cron" and slot is not None:
                    self._last_cron_slot[rel] = max(slot, self._last_cron_slot.get(rel, 0.0))
                    seen_cron[rel] = seen_cron.get(rel, 0) + 1
                if wanted and all(seen_cron.get(r, 0) >= 8 for r in wanted):
                    break
        self.reload(reason="start")

    # -- firing ----------------------------------------------------------------------------------------------
    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        """The server's environment without API tokens (or any variable holding one), plus `extra`. Filtered
        again only when the environment changed: filtering is ~80 us, a tenth of spawning a script."""
        seen = getattr(os.environ, "_data", None)       # os._Environ's own dict: comparing it costs ~1 us
        if seen is None or seen != self._env_seen:
            self._env_base = {k: v for k, v in os.environ.items()
                              if k not in ("SCHEDSERVER_TOKEN", "SCHEDSERVER_READ_TOKEN")
                              and not any(secret in v for secret in self.secret_values)}
            self._env_seen = dict(seen) if seen is not None else None
        env = dict(self._env_base)
        env.update(extra)
        return env

    def _begin(self, rel: str, slot: float, trigger: str) -> tuple | None:
        """A new run of a registered script, tracked as in flight (with its marker): (schedule, run id, marker,
        environment, InFlightRun), or None if the script is no longer registered. A cron fire readied by
        _prepare() for this slot is taken as it is."""
        with self._lock:
            schedule = self._registered.get(rel)
            readied = self._prepared.pop((rel, slot), None) if trigger == "cron" else None
        if readied is None or readied[0] is not schedule:     # none, or re-registered since: begun afresh
            if schedule is None:
                return None
            readied = self._new_run(rel, schedule, slot, trigger)
        schedule, run_id, marker, env = readied
        marker["startedAt"] = utc_iso(self.clock(), ms=True)
        return schedule, run_id, marker, env, self.inflight.begin(run_id, marker, self.record_interrupted)

    def _new_run(self, rel: str, schedule: ScriptSchedule, slot: float, trigger: str) -> tuple:
        """(schedule, run id, marker without its start, environment) of a run about to begin."""
        run_id = str(uuid.uuid4())
        env = self._environment({"SCHEDSERVER_RUN_ID": run_id, "SCHEDSERVER_SCRIPT": rel,
                                 "SCHEDSERVER_TRIGGER": trigger, "SCHEDSERVER_SCHEDULED_AT": utc_iso(slot, ms=True)})
        marker = {"surface": "exec", "ts": utc_iso(slot, ms=True), "scriptPath": rel,
                  "expression": schedule.spec.expression, "runId": run_id, "trigger": trigger}
        return schedule, run_id, marker, env

    def _prepare(self, rel: str, slot: float) -> bool:
        """On the ticker, shortly before `slot`: ready the cron fire due then (its run id and environment), so
        the worker that fires it does less before the spawn. Its marker is still written by that worker, when
        the run begins: a fire may wait in the workers' queue, and a marker then would outlive a stop."""
        with self._lock:
            schedule = self._registered.get(rel)
        if schedule is None:
            return False
        readied = self._new_run(rel, schedule, slot, "cron")
        with self._lock:
            self._prepared[(rel, slot)] = readied
        return True

    def _unprepare(self, rel: str, slot: float) -> None:
        with self._lock:
            self._prepared.pop((rel, slot), None)

    def _end(self, rel: str, slot: float, trigger: str, schedule: ScriptSchedule, run_id: str, marker: dict,
             result: ScriptResult) -> dict:
        """Record a run's result, unless shutdown gave up on the run and recorded it already."""
        try:
            if not self.inflight.finish(run_id):
                return {**marker, "status": "error", "durationMs": 0, "error": "interrupted by shutdown"}
            return self._record_result(rel, run_id, slot, trigger, schedule, result)
        finally:
            self.inflight.done(run_id)

    def _fire(self, rel: str, slot: float, trigger: str) -> dict:
        """A run, whole, in the caller's thread (a manual trigger answers with its result)."""
        begun = self._begin(rel, slot, trigger)
        if begun is None:
            return {}
        schedule, run_id, marker, env, run = begun
        result = None
        try:
            result = self.runner.run(list(schedule.argv), os.path.dirname(schedule.path), env, schedule.timeout_ms,
                                     on_spawn=run.set_pgid)
        finally:
            if result is None:          # the runner raised: still let go of the run
                self.inflight.finish(run_id)
                self.inflight.done(run_id)
        return self._end(rel, slot, trigger, schedule, run_id, marker, result)

    def _fire_cron(self, rel: str, slot: float) -> Any:
        """A cron fire, in a worker: spawn the script and return RUN_GOES_ON at once. The reaper sees the run
        through; its end is recorded in a worker, which then lets the scheduler fire the script again."""
        start = getattr(self.runner, "start", None)
        if start is None:               # a runner that only runs whole
            return self._fire(rel, slot, "cron")
        begun = self._begin(rel, slot, "cron")
        if begun is None:
            return None
        schedule, run_id, marker, env, run = begun
        key = _exec_key(rel)

        def ended(result: ScriptResult) -> None:
            self.scheduler.submit(self._end_cron, key, (rel, slot, "cron", schedule, run_id, marker, result))
        try:
            start(list(schedule.argv), os.path.dirname(schedule.path), env, schedule.timeout_ms, ended,
                  on_spawn=run.set_pgid)
        except Exception as e:          # a bug or a surprise: the run still ends, as an error
            self._end(rel, slot, "cron", schedule, run_id, marker,
                      ScriptResult("error", self.clock(), 0, error=_short_error(e)))
            raise
        return RUN_GOES_ON

    def _end_cron(self, key: str, run: tuple) -> None:
        try:
            self._end(*run)
        finally:
            self.scheduler.release(key)

    def _record_result(self, rel: str, run_id: str, slot: float, trigger: str, schedule: ScriptSchedule,
                       result: ScriptResult) -> dict:
        record = {"ts": utc_iso(slot, ms=True), "scriptPath": rel, "expression": schedule.spec.expression,
                  "runId": run_id, "status": result.status, "durationMs": result.duration_ms, "trigger": trigger,
                  "startedAt": utc_iso(result.started_at, ms=True)}
        if result.status == "ok":
            record["returnPreview"] = result.return_preview
        else:
            record["error"] = result.error
        if result.output_dropped:
            record["outputDropped"] = result.output_dropped
        log.info("script fire %s trigger=%s status=%s duration_ms=%d%s", rel, trigger, result.status,
                 result.duration_ms, f" error={result.error}" if result.error else "")
        self._append(record)
        return record

    def record_interrupted(self, marker: dict, reason: str) -> None:
        """Record a fire that never finished (shutdown, or found by its marker at the next start)."""
        started = _parse_optional_iso(marker.get("startedAt"))
        now = self.clock()
        record = {key: marker.get(key) for key in ("ts", "scriptPath", "expression", "runId", "trigger", "startedAt")}
        record.update(status="error", durationMs=max(0, int((now - started) * 1000)) if started else 0, error=reason)
        log.warning("script fire %s status=error error=%s", record["scriptPath"], reason)
        self._append(record)

    def _record(self, rel: str, status: str, slot: float, count: int, last_slot: float) -> None:
        with self._lock:
            schedule = self._registered.get(rel)
        record = {"ts": utc_iso(slot, ms=True), "scriptPath": rel,
                  "expression": schedule.spec.expression if schedule else None, "runId": str(uuid.uuid4()),
                  "status": status, "durationMs": 0, "trigger": "cron", "count": count,
                  "lastSlot": utc_iso(last_slot, ms=True),
                  "error": (f"missed {_count_text(count)} fire{'s' if count != 1 else ''} from {utc_iso(slot)} (server down, "
                            "suspended or busy beyond the misfire grace)") if status == "missed"
                  else "previous run still in progress"}
        log.info("script fire %s status=%s count=%d", rel, status, count)
        self._append(record)

    def _append(self, record: dict) -> None:
        record["loggedAt"] = utc_iso(self.clock(), ms=True)
        try:
            self.fires.append(record)
        except (OSError, filelock.Timeout) as e:
            log.error("cannot append to %s: %s", self.fires.path, e)
        with self._lock:
            self._last_fire[record["scriptPath"]] = record
            slot = _parse_optional_iso(record.get("lastSlot") or record.get("ts"))
            if record.get("trigger") == "cron" and slot is not None:
                self._last_cron_slot[record["scriptPath"]] = max(slot, self._last_cron_slot.get(record["scriptPath"], 0))

    # -- the API ---------------------------------------------------------------------------------------------
    def list(self) -> dict:
        return json.loads(self.list_json())

    def list_json(self) -> bytes:
        """list() as the JSON bytes the route sends; each item is encoded again only when its state changed."""
        with self._lock:
            schedules = list(self._registered.values())
            last = [self._last_fire.get(s.rel) for s in schedules]
        items = []
        for s, fire, (next_at, running) in zip(schedules, last,
                                               self.scheduler.states([_exec_key(s.rel) for s in schedules])):
            state = (s.registered_at, next_at, running,
                     (fire.get("runId"), fire.get("status"), fire.get("ts")) if fire else None)
            cached = s.summary_cache
            if cached is None or cached[0] != state:
                fire = fire or {}
                cached = s.summary_cache = (state, json.dumps({
                    "scriptPath": s.path, **script_identity(s.rel), "expression": s.spec.expression,
                    "timeoutMs": s.timeout_ms, "registeredAt": utc_iso(s.registered_at, ms=True),
                    "nextFire": utc_iso(state[1], ms=True), "lastFireAt": fire.get("ts"),
                    "lastFireStatus": fire.get("status"), "lastFireRunId": fire.get("runId"),
                    "description": s.description, "running": state[2]}).encode())
            items.append(cached[1])
        return b'{"total":' + str(len(items)).encode() + b',"schedules":[' + b",".join(items) + b"]}"

    def relative_path(self, script_path: Any) -> str:
        """scriptRel for a path given relative to the scripts dir or absolute inside it; 400 when it escapes."""
        if not isinstance(script_path, str) or not script_path.strip() or "\x00" in script_path:
            raise InvalidParameter("scriptPath must be a non-empty string")
        text = script_path.strip()
        if os.path.isabs(text):
            full = os.path.normpath(text)
            if os.path.commonpath([self.scripts_dir, full]) != self.scripts_dir:
                raise InvalidParameter("scriptPath must be inside the scripts directory")
            rel = os.path.relpath(full, self.scripts_dir)
        else:
            rel = os.path.normpath(text)
        rel = rel.replace(os.sep, "/")
        if rel in (".", "") or rel == ".." or rel.startswith("../") or rel.startswith("/"):
            raise InvalidParameter("scriptPath must be inside the scripts directory")
        return rel

    def history(self, script_path: str | None = None, since: float | None = None, limit: int = 100,
                include_rotated: bool = False) -> dict:
        """Newest-first fires, read backwards from the log's end; stops once it has `limit` entries."""
        rel = self.relative_path(script_path) if script_path is not None else None
        contains = None
        if rel is not None:
            contains = json.dumps(rel, ensure_ascii=False).encode("utf-8", "backslashreplace")
        entries = []
        for record in self.fires.read_newest(include_rotated=include_rotated, contains=contains):
            if rel is not None and record.get("scriptPath") != rel:
                continue
            if since is not None:
                ts = _parse_optional_iso(record.get("ts"))
                logged = _parse_optional_iso(record.get("loggedAt"))
                if logged is not None and logged < since:
                    break   # a line is logged after its `ts`, so every line before this one is older than `since`
                if ts is None or ts < since:
                    if logged is None and ts is not None and ts < since - MAX_SCRIPT_TIMEOUT_MS / 1000:
                        break   # no loggedAt (older lines): a fire is logged at most one run time after its ts
                    continue
            entries.append(record)
            if len(entries) >= limit:
                break
        return {"total": len(entries), "limit": limit, "includeRotated": include_rotated, "entries": entries}

    def trigger(self, payload: Any) -> dict:
        """Fire a registered script now, in the caller's thread, and answer with the result."""
        if not isinstance(payload, dict):
            raise InvalidParameter("body must be a JSON object with scriptPath")
        unknown = set(payload) - {"scriptPath", "force"}
        if unknown:
            raise InvalidParameter(f"{sorted(unknown)[0]} is not a known field (known: scriptPath, force)")
        if "scriptPath" not in payload:
            raise InvalidParameter("scriptPath is required")
        force = payload.get("force", False)
        if not isinstance(force, bool):
            raise InvalidParameter("force must be true or false")
        rel = self.relative_path(payload["scriptPath"])
        with self._lock:
            schedule = self._registered.get(rel)
        if schedule is None:
            raise NotFound(f"no registered @schedule script {rel!r}")
        if schedule.token and not force:
            raise Forbidden(f"{rel} declares @token; pass \"force\": true to fire it without a token")
        key = _exec_key(rel)
        if not self.scheduler.claim(key):
            raise ApiError(f"{rel} is already running", code="CONFLICT", status=409)
        try:
            record = self._fire(rel, self.clock(), "manual")
        finally:
            self.scheduler.release(key)
        if not record:
            raise NotFound(f"no registered @schedule script {rel!r}")
        result = {"triggered": True, "scriptPath": rel, "runId": record["runId"], "status": record["status"],
                  "durationMs": record["durationMs"]}
        if "returnPreview" in record:
            result["returnPreview"] = record["returnPreview"]
        if "error" in record:
            result["error"] = record["error"]
        return result

    def count(self) -> int:
        with self._lock:
            return len(self._registered)


def _interpreter_name(argv: tuple[str, ...], head: bytes) -> str | None:
    """The base name of the program that runs a script: from its shebang when it runs directly."""
    if len(argv) == 1 and head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
        if words and os.path.basename(words[0]) == "env":
            words = [w for w in words[1:] if not w.startswith("-")]
        return os.path.basename(words[0]) if words else None
    return os.path.basename(argv[0]) if argv else None


_COMPILE_PYTHON = ("<compile>",)     # _preflight_command's answer for Python: compiled in this process


def _check_problem(output: bytes, status: int | str) -> str:
    """A failed syntax check in one line: the first non-blank line of what it wrote, else its exit status."""
    text = output.decode("utf-8", errors="replace")
    return next((line.strip() for line in text.splitlines() if line.strip()), f"exit status {status}")[:300]


def _compile_python(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            compile(f.read(), path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
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


def _exec_key(rel: str) -> str:
    return "exec:" + rel


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
        given = authorization[7:].strip().encode()
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
               404: "Resource not found", 409: "Conflict", 500: "Internal server error", 503: "Service unavailable"}


EXEC_CODES = {"INVALID_PARAMETER": "VALIDATION_ERROR", "INVALID_CRON_EXPRESSION": "VALIDATION_ERROR",
              "INTERNAL_ERROR": "ERROR_500", "STORAGE_ERROR": "ERROR_500"}


def error_body(path: str, status: int, code: str, message: str, now: float | None = None) -> dict:
    """An error in the shape of the surface that `path` belongs to."""
    if path.startswith(EXEC_PREFIX):
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
        raise InvalidParameter(f"body must be JSON with Content-Type application/json, not {content_type!r}")
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


def make_app(curl: CurlSchedules, auth: Auth, scripts: ScriptSchedules | None = None,
             health: Any = None) -> bottle.Bottle:
    """The WSGI app: thin routes over the services, every answer JSON."""
    app = bottle.Bottle(catchall=True)
    request = bottle.request

    def api(callback: Callable) -> Callable:
        """Route wrapper: auth, then the callback; any error becomes JSON in the surface's shape."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                auth.check(request.environ.get("HTTP_AUTHORIZATION"), request.method)
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

    if health is not None:
        @app.get("/healthz")
        def healthz() -> bottle.HTTPResponse:     # no auth: for load balancers and monitors
            status, body = health.report()
            return json_response(body, status)

    @app.get(CURL_PREFIX)
    @api
    def list_curl() -> dict:
        page = _query_int(request, "page", 1) or 1
        limit = _query_int(request, "limit", 1, 1000)
        return curl.list_json(page, limit)

    @app.post(CURL_PREFIX)
    @api
    def create_curl() -> tuple[int, dict]:
        return 201, curl.create(read_json_body(request))

    @app.get(CURL_PREFIX + "/<schedule_id>")
    @api
    def get_curl(schedule_id: str) -> dict:
        return curl.get(schedule_id)

    @app.route(CURL_PREFIX + "/<schedule_id>/toggle", method="PATCH")
    @api
    def toggle_curl(schedule_id: str) -> dict:
        curl._find(schedule_id)     # 404 before complaining about the body
        return curl.toggle(schedule_id, read_json_body(request, empty=EMPTY_BODY))

    # An id holding a slash (`..%2Fx` arrives decoded) is a malformed id, not an unknown route.
    @app.route(CURL_PREFIX + "/<schedule_id:re:(?!.*/toggle$).+/.+>", method=["GET", "DELETE"])
    @app.route(CURL_PREFIX + "/<schedule_id:re:.+/.+>/toggle", method="PATCH")
    @api
    def malformed_curl_id(schedule_id: str) -> dict:
        raise NotFound("Schedule not found", code="SCHEDULE_NOT_FOUND")

    @app.delete(CURL_PREFIX + "/<schedule_id>")
    @api
    def delete_curl(schedule_id: str) -> dict:
        return curl.delete(schedule_id)

    if scripts is not None:
        @app.get(EXEC_PREFIX + "/list")
        @api
        def list_scripts() -> bytes:
            return scripts.list_json()

        @app.get(EXEC_PREFIX + "/history")
        @api
        def script_history() -> dict:
            known = {"scriptPath", "since", "limit", "includeRotated"}
            for name in request.query.keys():
                if name not in known:
                    raise InvalidParameter(f"unknown query parameter {name!r} (known: {', '.join(sorted(known))})")
            since = None
            if "since" in request.query:
                try:
                    since = parse_iso(request.query.getunicode("since") or "")
                except ValueError:
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
        @api
        def reload_scripts() -> dict:
            body = read_json_body(request)
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise InvalidParameter('body must be a JSON object such as {"dry_run": true}')
            unknown = set(body) - {"dry_run"}
            if unknown:
                raise InvalidParameter(f"{sorted(unknown)[0]} is not a known field (known: dry_run)")
            dry_run = body.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise InvalidParameter("dry_run must be true or false")
            return scripts.reload(dry_run)

        @app.post(EXEC_PREFIX + "/trigger")
        @api
        def trigger_script() -> dict:
            return scripts.trigger(read_json_body(request))

    def router_error(status: int, code: str, message: str) -> Callable:
        def handler(error: bottle.HTTPError) -> str:
            bottle.response.content_type = "application/json"
            if status == 405 and error.status_code == 405:
                message_text = f"Method {request.method} is not allowed here"
            elif status == 500 and error.traceback:
                log.error("unexpected error on %s %s\n%s", request.method, request.path, error.traceback)
                message_text = message
            else:
                message_text = message
            return json.dumps(error_body(request.path, status, code, message_text))
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


###############################################################################
# CLI and serving ##############################################################
###############################################################################

def resolve_admin_tokens(config: Config) -> tuple[str, ...]:
    """Admin tokens from config/env and the token file; with none, a generated `<data-dir>/api-token`."""
    tokens = list(config.tokens)
    if config.token_file:
        try:
            with open(config.token_file, encoding="utf-8") as f:
                tokens += [t.strip() for t in re.split(r"[,\s]+", f.read()) if t.strip()]
        except OSError as e:
            raise ConfigError(f"auth.token_file {config.token_file}: cannot read ({e.strerror})") from None
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
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
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

    def __init__(self, scheduler: Scheduler, curl: CurlSchedules, scripts: ScriptSchedules | None):
        self.scheduler = scheduler
        self.curl = curl
        self.scripts = scripts
        self.started = scheduler.monotonic()

    def report(self) -> tuple[int, dict]:
        now = self.scheduler.monotonic()
        last = self.scheduler.last_tick_monotonic
        age = now - (last if last is not None else self.started)
        stalled = age >= self.STALL_SECONDS
        body = {"status": "stalled" if stalled else "ok", "version": __version__,
                "uptime_s": round(now - self.started, 3), "last_tick_age_ms": int(age * 1000),
                "schedules": {"scripts": self.scripts.count() if self.scripts else 0, "http": self.curl.count()},
                "running": self.scheduler.running_count()}
        return (503 if stalled else 200), body


class AccessLog:
    """WSGI middleware: one line per request with method, path, status and duration (never headers)."""

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
    header, an oversized head, a target with a space) is still answered in its surface's shape."""

    raw_target = b""

    def received(self, data: bytes) -> int:
        if not self.raw_target and data:
            start = data.split(b"\r\n", 1)[0].split(b" ")
            self.raw_target = start[1] if len(start) > 1 else b""
        return super().received(data)


class JsonErrorChannel(waitress.channel.HTTPChannel):
    error_task_class = JsonErrorTask
    parser_class = TargetRememberingParser


class Server:
    """Everything a running schedserver holds, wired together: start(), serve(), then shutdown()."""

    def __init__(self, config: Config):
        self.config = config
        self.data_lock = DataDirLock(config.data_dir)
        self.inflight = InFlightRuns()
        self.scheduler = Scheduler(workers=config.workers, misfire_grace=config.misfire_grace_seconds,
                                   on_tick=self._on_tick if os.environ.get("NOTIFY_SOCKET") else None)
        self.curl = CurlSchedules(
            JournalStore(os.path.join(config.data_dir, "curl-schedules.json")),
            NdjsonLog(os.path.join(config.data_dir, "curl-runs.log"), config.runs_log_max_bytes,
                      config.runs_log_backups),
            self.scheduler, HttpRunner(policy=EgressPolicy(config.allow_networks, config.deny_networks)),
            default_timezone=config.timezone, inflight=self.inflight)
        self.scripts: ScriptSchedules | None = None
        self.wsgi_server: Any = None
        self.app: Callable | None = None
        self._watchdog = watchdog_enabled()

    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        # waitress binds before the app exists (so a taken port is the first and only error); requests are
        # served only from serve(), after start() has set self.app.
        return self.app(environ, start_response)

    def _on_tick(self, now: float) -> None:
        """After each good tick: the systemd watchdog ping and status line. A stalled ticker sends neither."""
        status = (f"STATUS={self.scripts.count() if self.scripts else 0} script and {self.curl.count()} http "
                  f"schedules, {self.scheduler.running_count()} running; last tick {utc_iso(now)}")
        sd_notify(("WATCHDOG=1\n" if self._watchdog else "") + status)

    def start(self) -> None:
        """Claim the data dir, bind the port, load state; raises ConfigError/StartupError with one line."""
        # What start-up builds lives as long as the process: the collector would only walk it again and again
        # (~460 collections, 0.25 s of a start with 10,000 schedules), so it is off until the load is done.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._start()
        finally:
            if collecting:
                gc.enable()

    def _start(self) -> None:
        cfg = self.config
        prepare_data_dir(cfg.data_dir)
        try:
            os.makedirs(cfg.scripts_dir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"scripts dir {cfg.scripts_dir}: cannot create ({e.strerror})") from None
        if not os.access(cfg.scripts_dir, os.R_OK | os.X_OK):
            raise ConfigError(f"scripts dir {cfg.scripts_dir}: not readable")
        self.data_lock.acquire()
        remove_stale_temp_files(cfg.data_dir)
        try:
            self.wsgi_server = waitress.server.create_server(
                self._wsgi, host=cfg.host, port=cfg.port, threads=cfg.threads, ident="schedserver",
                max_request_body_size=2 * MAX_BODY_BYTES, clear_untrusted_proxy_headers=True,
                asyncore_use_poll=True)     # select() fails on descriptors past 1023: kept connections get there
        except (OSError, ValueError) as e:     # waitress raises ValueError for a host it cannot resolve
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {getattr(e, 'strerror', None) or e}") from None
        self.wsgi_server.channel_class = JsonErrorChannel
        admin_tokens = resolve_admin_tokens(cfg)
        auth = Auth(admin_tokens, cfg.read_tokens)
        self.inflight = InFlightRuns(os.path.join(cfg.data_dir, "running"))
        self.curl.inflight = self.inflight
        self.scripts = ScriptSchedules(
            cfg.scripts_dir,
            NdjsonLog(os.path.join(cfg.data_dir, "fires.log"), cfg.fires_log_max_bytes, cfg.fires_log_backups),
            self.scheduler, ScriptRunner(preview_chars=cfg.return_preview_chars),
            default_timeout_ms=cfg.default_timeout_ms, timezone_name=cfg.timezone,
            interpreters=cfg.interpreters, preflight=cfg.preflight,
            secret_values=admin_tokens + cfg.read_tokens, inflight=self.inflight, notify=sd_notify)
        # Runs in flight when the last process died hard: recorded as interrupted, never re-run.
        for marker in self.inflight.recover():
            service = self.scripts if marker.get("surface") == "exec" else self.curl
            service.record_interrupted(marker, "interrupted")
        # The scripts' syntax checks run in processes of their own while the HTTP schedules load.
        self.scripts.begin_checks()
        self.curl.load()
        self.scripts.load()
        app = make_app(self.curl, auth, self.scripts, Health(self.scheduler, self.curl, self.scripts))
        self.app = AccessLog(app) if cfg.access_log else app
        self.scheduler.on_upcoming = self._get_ready
        # What start-up loaded lives as long as the process: out of the collector's sight, a full collection
        # costs microseconds instead of ~90 ms with 10,000 schedules, which would stall every run due meanwhile.
        gc.freeze()
        self.scheduler.start()
        host = self.wsgi_server.effective_host
        shown = f"[{host}]" if ":" in str(host) else host
        log.info("schedserver listening on http://%s:%s", shown, self.wsgi_server.effective_port)
        log.info("%d http schedules and %d script schedules loaded; data dir %s, scripts dir %s",
                 self.curl.count(), self.scripts.count(), cfg.data_dir, cfg.scripts_dir)
        sd_notify(f"READY=1\nSTATUS=listening on port {self.wsgi_server.effective_port}")

    def serve(self) -> None:
        self.wsgi_server.run()

    def reload_scripts(self) -> None:
        """SIGHUP: rescan the scripts dir in a thread of its own (never inside the signal handler)."""
        def run() -> None:
            try:
                if self.scripts is not None:
                    self.scripts.reload(reason="SIGHUP")
            except Exception:
                log.exception("SIGHUP reload failed")
        if self.app is None:    # before the start's own scan: a reload now would hide downtime misses from it
            log.info("SIGHUP while starting: ignored (the start scans the scripts dir itself)")
            return
        threading.Thread(target=run, name="schedserver-reload", daemon=True).start()

    def _get_ready(self, jobs: list[Job]) -> None:
        """After each tick, for the runs due next: connections for the HTTP ones, and marker files for all, made
        in workers."""
        self.curl.prepare_upcoming(jobs)
        if self.inflight.wants_stock(len(jobs)):
            self.scheduler.submit(self.inflight.stock, len(jobs))

    def shutdown(self, deadline: float) -> None:
        """Stop firing and serving, give runs in flight until `deadline` (time.monotonic()), then stop the rest
        (recorded as `interrupted by shutdown`) and let go of the data dir."""
        sd_notify("STOPPING=1")
        self.scheduler.stop_ticking()
        if self.wsgi_server is not None:
            self.wsgi_server.close()
        if self.inflight.count():
            log.info("waiting up to %.0f s for %d run(s) in flight", max(0.0, deadline - time.monotonic()),
                     self.inflight.count())
        if not self.inflight.wait_idle(deadline):
            count = self.inflight.interrupt_all("interrupted by shutdown")
            log.warning("%d run(s) interrupted by shutdown", count)
        self.curl.write_checkpoint()
        self.stop()

    def stop(self) -> None:
        """Let go at once (also after a failed start)."""
        if self.scripts is not None:
            self.scripts.close()
        self.scheduler.stop()
        if self.wsgi_server is not None:
            self.wsgi_server.close()
        self.data_lock.release()        # a no-op when it was never acquired


class _Shutdown(SystemExit):
    """Raised in the main thread by SIGTERM/SIGINT; waitress stops its loop and request threads on SystemExit."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="schedserver", description="Cron scheduling server (REST).")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"], help="what to do (default: serve)")
    parser.add_argument("--config", help="TOML config file (also SCHEDSERVER_CONFIG)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", help="port to listen on; 0 picks a free one (default 8080)")
    parser.add_argument("--data-dir", dest="data_dir", help="where schedules and logs live (default ./data)")
    parser.add_argument("--scripts-dir", dest="scripts_dir", help="where scripts live (default ./scripts)")
    parser.add_argument("--version", action="version", version=f"schedserver {__version__}")
    return parser.parse_args(argv)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    under_journald = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    fmt = "%(levelname)s %(message)s" if under_journald else "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    logging.getLogger("waitress").setLevel(logging.ERROR if level != "DEBUG" else logging.INFO)


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise the soft limit on open files toward `wanted` (never past the hard limit): connections kept for
    runs due soon and run markers take a descriptor each, and systemd's default soft limit is 1,024. Returns
    the soft limit now."""
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


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for problems the user can fix)."""
    args = parse_args(argv)
    try:
        config = load_config(vars(args))
    except ConfigError as e:
        print(f"schedserver: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    raise_open_file_limit()
    server = Server(config)
    stopping: list[tuple[str, float]] = []

    def on_signal(signum: int, frame: Any) -> None:
        if stopping:
            os._exit(1)         # a second signal: stop at once
        stopping.append((signal.Signals(signum).name, time.monotonic() + config.shutdown_grace_seconds))
        raise _Shutdown(0)

    handlers = {signal.SIGTERM: on_signal, signal.SIGINT: on_signal,
                signal.SIGHUP: lambda signum, frame: server.reload_scripts()}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        try:
            server.start()
        except (ConfigError, StartupError) as e:
            print(f"schedserver: {e}", file=sys.stderr)
            server.stop()
            return 2
        except _Shutdown:       # stopped while starting: let go of what the start had begun (e.g. syntax checks)
            sd_notify("STOPPING=1")
            log.info("schedserver stopped while starting (%s)", stopping[0][0] if stopping else "signal")
            server.stop()
            return 0
        try:
            server.serve()
        except _Shutdown:
            pass
        reason, deadline = stopping[0] if stopping else ("server loop ended", time.monotonic())
        log.info("schedserver stopping (%s)", reason)
        server.shutdown(deadline)
        log.info("schedserver stopped")
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
