"""The cron engine against a brute-force model of the written rules (RULES.md), on random expressions.

The model knows nothing of the engine: it parses the expression from the grammar, finds each zone's offset
changes by scanning the zone, and walks UTC time minute by minute. At each minute it reads the wall clock
and decides, by the rules:
- a minute whose wall time was already seen (after a fall-back, wall time < the change + the old offset) is
  the second pass: only wildcard-time jobs fire there;
- the first minute after a spring-forward fires a fixed-time job once if any wall minute of the skipped
  interval matches;
- otherwise a matching wall minute fires at each second of the seconds field.
The walk passes over wall dates, months and hours that cannot match, but never over an offset change and
never inside a second pass, so it stays a walk. Starts are random instants of 2020-2030 and instants just
before, at and inside every offset change of 2020-2030 in each zone. Fires are compared up to HORIZON.

CRON_MODEL_EXPRESSIONS sets the number of expressions (default 40,000); CRON_MODEL_SEED the seed.
"""

from __future__ import annotations

import bisect
import os
import random
import time
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

from schedserver import InvalidCron, parse_cron

EXPRESSIONS = int(os.environ.get("CRON_MODEL_EXPRESSIONS", "40000"))
SEED = int(os.environ.get("CRON_MODEL_SEED", "20250101"))
FIRES = 4                       # fires compared per expression and start
ZONE_NAMES = ("UTC", "Europe/Berlin", "Europe/London", "America/New_York", "America/Santiago",
              "Australia/Lord_Howe", "Pacific/Chatham")      # Chatham: DST on a +12:45 clock
FIRST_START = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()
LAST_START = datetime(2031, 1, 1, tzinfo=timezone.utc).timestamp()
SCAN_FROM = datetime(2019, 1, 1, tzinfo=timezone.utc).timestamp()
HORIZON = datetime(2040, 1, 1, tzinfo=timezone.utc).timestamp()   # fires compared up to here
ORDINAL_1970 = date(1970, 1, 1).toordinal()
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (low, high, names by value), written out here rather than imported so the model is independent.
FIELDS = ((0, 59, {}), (0, 59, {}), (0, 23, {}), (1, 31, {}),
          (1, 12, {n + 1: name for n, name in enumerate(MONTHS)}), (0, 7, dict(enumerate(DAYS))))
MACROS = {"@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
          "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *",
          "@hourly": "0 0 * * * *"}


###############################################################################
# The model
###############################################################################

def values_of(text: str, low: int, high: int, names: dict[int, str]) -> set[int]:
    """The values of a field: `*`, `a`, `a-b`, each with an optional `/n`; `a/n` runs to `high`."""
    by_name = {name: value for value, name in names.items()}
    out: set[int] = set()
    for item in text.split(","):
        base, slash, step = item.partition("/")
        if base in ("*", "?"):
            start, end = low, high
        elif "-" in base:
            start, end = (by_name.get(p.upper()) if p.upper() in by_name else int(p) for p in base.split("-"))
        else:
            start = by_name.get(base.upper()) if base.upper() in by_name else int(base)
            end = high if slash else start
        out.update(range(start, end + 1, int(step) if slash else 1))
    return out


class Model:
    """An expression as value sets, with the day/weekday rule and the wildcard-time flag."""

    def __init__(self, expression: str):
        text = " ".join(expression.split())
        text = MACROS.get(text.lower(), text)
        parts = text.split(" ")
        if len(parts) == 5:
            parts = ["0"] + parts
        sets = [values_of(part, *spec) for part, spec in zip(parts, FIELDS)]
        self.seconds = sorted(sets[0])
        self.minutes, self.hours, self.days, self.months = sets[1], sets[2], sets[3], sets[4]
        self.weekdays = {v % 7 for v in sets[5]}           # Sunday 0; 7 is Sunday too
        self.both = parts[3][0] in "*?" or parts[5][0] in "*?"
        self.wildcard = parts[1][0] == "*" or parts[2][0] == "*"

    def date_ok(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        day_ok, weekday_ok = d.day in self.days, d.isoweekday() % 7 in self.weekdays
        return (day_ok and weekday_ok) if self.both else (day_ok or weekday_ok)

    def wall_ok(self, wall: int) -> bool:
        """Whether a wall minute (seconds since 1970-01-01 on the wall clock) matches."""
        day, rest = divmod(wall, 86400)
        return (rest // 3600 in self.hours and rest % 3600 // 60 in self.minutes
                and self.date_ok(date.fromordinal(ORDINAL_1970 + day)))

    def ever_fires(self) -> bool:
        d = date(2000, 1, 1).toordinal()
        return any(self.date_ok(date.fromordinal(d + n)) for n in range(29 * 366))


def offset(tz: ZoneInfo, u: float) -> int:
    return int(datetime.fromtimestamp(u, tz).utcoffset().total_seconds())


def scan_changes(tz: ZoneInfo) -> list[tuple[int, int, int]]:
    """(instant, offset before, offset after) for each offset change from SCAN_FROM to HORIZON: probed every
    3 hours (changes in these zones are months apart), then found to the minute."""
    changes = []
    u, before = int(SCAN_FROM), offset(tz, SCAN_FROM)
    while u < HORIZON + 86400:
        after = offset(tz, u + 3 * 3600)
        if after != before:
            low, high = u, u + 3 * 3600         # before at low, changed at high
            while high - low > 60:
                middle = low + (high - low) // 120 * 60
                if offset(tz, middle) == before:
                    low = middle
                else:
                    high = middle
            changes.append((high, before, after))
        u, before = u + 3 * 3600, after
    return changes


def model_fires(model: Model, tz: ZoneInfo, changes: list[tuple[int, int, int]], instants: list[int],
                after: float, count: int, tally: dict | None = None) -> list[int]:
    """The first `count` fires strictly after `after` and before HORIZON, by walking the minutes; `tally`
    counts the fires the DST rules made or kept out (catch-ups, second-pass fires, second-pass skips)."""
    tally = {} if tally is None else tally
    fires: list[int] = []
    u = int(after // 60) * 60
    while u < HORIZON:
        o = offset(tz, u)
        wall = u + o
        i = bisect.bisect_right(instants, u) - 1         # the last change at or before u
        last = changes[i] if i >= 0 else None
        second_pass = last is not None and last[2] < last[1] and wall < last[0] + last[1]
        found = set()
        if last is not None and last[0] == u and last[2] > last[1] and not model.wildcard:
            if any(model.wall_ok(w) for w in range(u + last[1], u + last[2], 60)):     # skipped minutes
                found.add(u)
                tally["catch-up"] = tally.get("catch-up", 0) + 1
        if model.wall_ok(wall):
            if model.wildcard or not second_pass:
                found.update(u + s for s in model.seconds)
                if second_pass:
                    tally["second-pass fire"] = tally.get("second-pass fire", 0) + 1
            else:
                tally["second-pass skip"] = tally.get("second-pass skip", 0) + 1
        for fire in sorted(found):
            if fire > after:
                fires.append(fire)
                if len(fires) == count:
                    return fires
        step = 60
        if not second_pass:         # pass over wall time that cannot match
            day, rest = divmod(wall, 86400)
            d = date.fromordinal(ORDINAL_1970 + day)
            if d.month not in model.months:
                first = date(d.year + d.month // 12, d.month % 12 + 1, 1)
                step = (first.toordinal() - d.toordinal()) * 86400 - rest
            elif not model.date_ok(d):
                step = 86400 - rest
            elif rest // 3600 not in model.hours:
                step = 3600 - rest % 3600
        if i + 1 < len(instants):
            step = min(step, instants[i + 1] - u)        # never over a change of offset
        u += step
    return fires


def engine_fires(expression: str, tz: ZoneInfo, after: float, count: int) -> list[int]:
    out = []
    for fire in parse_cron(expression).iter_after(after, tz):
        if fire >= HORIZON:
            break
        assert fire == int(fire)
        out.append(int(fire))
        if len(out) == count:
            break
    return out


###############################################################################
# Random expressions, biased towards dense ones and the hours where clocks change
###############################################################################

def spelled(r: random.Random, value: int, names: dict[int, str]) -> str:
    if value in names and r.random() < 0.4:
        return r.choice([str.upper, str.lower, str.capitalize])(names[value])
    return f"{value:02d}" if r.random() < 0.1 else str(value)


def item(r: random.Random, index: int) -> str:
    low, high, names = FIELDS[index]
    kind = r.choices(["value", "range", "star-step", "a-b/n", "a/n"], [40, 25, 15, 10, 10])[0]
    if index == 2 and r.random() < 0.6:     # hours where the zones change their clocks
        a = r.choice([0, 1, 2, 3, 23])
    elif index == 5 and r.random() < 0.15:
        a = 7
    elif index == 3 and r.random() < 0.15:
        a = r.randint(28, 31)
    else:
        a = r.randint(low, high)
    b = min(high, a + r.choice([0, 1, 2, 3, 5, 10, 30]))
    n = r.choice([1, 2, 3, 4, 5, 6, 7, 10, 15, 20, 30, high - low + 1]) if index < 3 else r.randint(1, 8)
    n = min(n, high - low + 1)
    if kind == "value":
        return spelled(r, a, names)
    if kind == "range":
        return f"{spelled(r, a, names)}-{spelled(r, b, names)}"
    if kind == "star-step":
        return f"*/{n}"
    if kind == "a-b/n":
        return f"{spelled(r, a, names)}-{spelled(r, b, names)}/{n}"
    return f"{spelled(r, a, names)}/{n}"


def field_text(r: random.Random, index: int) -> str:
    star = (0.3, 0.35, 0.35, 0.6, 0.75, 0.6)[index]
    if index == 0 and r.random() < 0.4:
        return "0"
    if r.random() < star:
        if index in (3, 5) and r.random() < 0.15:
            return "?"
        low, high, _ = FIELDS[index]
        return "*" if r.random() < 0.8 else f"*/{min(r.choice([1, 2, 3, 5, 7, 15]), high - low + 1)}"
    return ",".join(item(r, index) for _ in range(r.choice([1, 1, 1, 2, 3])))


def aimed_expression(r: random.Random, hour: int) -> str:
    """An expression whose hour field holds `hour` (the wall hour where a zone changes its clock)."""
    hours = r.choice([str(hour), f"{hour}-{min(hour + 1, 23)}", f"{max(hour - 1, 0)}-{hour}", "0-23", "*",
                      f"{hour},{(hour + 12) % 24}", f"{hour}/1", f"*/{r.choice([1, 2, 3])}"])
    minutes = r.choice(["0", "30", str(r.randint(0, 59)), f"{r.randint(0, 30)}-{r.randint(31, 59)}",
                        f"{r.randint(0, 59)},{r.randint(0, 59)}", "*", f"*/{r.choice([4, 7, 15, 20])}",
                        f"{r.randint(0, 14)}/15"])
    seconds = r.choice(["0", "0", str(r.randint(0, 59)), "*/20", "*", f"{r.randint(1, 59)}/30"])
    weekday = r.choice(["*", "*", "*", "SUN", "0-6", "MON-FRI", "7", "6/1"])
    day = r.choice(["*", "*", "*", "?", "1-31", str(r.randint(1, 28)), "*/2"])
    return f"{seconds} {minutes} {hours} {day} * {weekday}"


def random_expression(r: random.Random) -> str:
    shape = r.choices(["six", "five", "macro"], [60, 34, 6])[0]
    if shape == "macro":
        return r.choice(sorted(MACROS) + ["@DAILY", "@Hourly"])
    fields = [field_text(r, i) for i in range(6)]
    if shape == "five":
        fields = fields[1:]
    return r.choice([" ", " ", "  ", "\t"]).join(fields)


###############################################################################
# The run
###############################################################################

def change_starts(r: random.Random, changes: list[tuple[int, int, int]]) -> list[float]:
    """Starts just before, at and inside each offset change of 2020-2030."""
    starts = []
    for change, before, after in changes:
        if FIRST_START <= change < LAST_START:
            width = abs(after - before)
            starts += [change - 1, change - 0.5, change, change - r.randint(60, 3 * 3600),
                       change + r.randint(0, width), change + r.randint(0, width) + 0.25]
    return starts


def run_model(count: int = EXPRESSIONS, seed: int = SEED) -> dict:
    """Compare the engine with the model on `count` random expressions; the figures and the first few
    disagreements."""
    r = random.Random(seed)
    zones = [ZoneInfo(name) for name in ZONE_NAMES]
    changes = {tz: scan_changes(tz) for tz in zones}
    instants = {tz: [c[0] for c in changes[tz]] for tz in zones}
    near = [(tz, start) for tz in zones for start in change_starts(r, changes[tz])]
    r.shuffle(near)
    stats = {"expressions": 0, "comparisons": 0, "disagreements": 0, "refused": 0, "examples": [],
             "seconds": 0.0, "dst": {}}
    started = time.perf_counter()
    for n in range(count):
        expression = random_expression(r)
        if n % 2 == 0:          # every change of every zone in turn, then again with other expressions
            tz, after = near[n // 2 % len(near)]
            if r.random() < 0.3:
                change = changes[tz][bisect.bisect_left(instants[tz], after - 4 * 3600)]
                expression = aimed_expression(r, (change[0] + change[1]) % 86400 // 3600)
        else:
            tz, after = r.choice(zones), r.uniform(FIRST_START, LAST_START)
            if r.random() < 0.5:
                after = float(int(after))
        stats["expressions"] += 1
        model = Model(expression)
        try:
            parse_cron(expression)
        except InvalidCron as refused:
            stats["refused"] += 1
            if model.ever_fires() or "never fires" not in refused.message:
                stats["disagreements"] += 1
                stats["examples"].append((expression, "refused", refused.message))
            continue
        expected = model_fires(model, tz, changes[tz], instants[tz], after, FIRES, stats["dst"])
        got = engine_fires(expression, tz, after, FIRES)
        stats["comparisons"] += max(len(expected), len(got))
        if got != expected:
            stats["disagreements"] += 1
            if len(stats["examples"]) < 10:
                stats["examples"].append((expression, tz.key, after, [show(f, tz) for f in got],
                                          [show(f, tz) for f in expected]))
    stats["seconds"] = time.perf_counter() - started
    return stats


def show(epoch: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch, tz).isoformat()


def model_figure(stats: dict) -> str:
    """The figure line for the README."""
    return (f"cron model: {stats['expressions']:,} expressions, {stats['comparisons']:,} comparisons, "
            f"{stats['disagreements']:,} disagreements")


def test_the_engine_fires_exactly_when_the_model_of_the_written_rules_says(figure):
    stats = run_model()
    figure(f"{model_figure(stats)} ({stats['refused']} refused as never firing, {stats['seconds']:.1f} s; "
           f"DST rules applied: {stats['dst']})")
    assert stats["disagreements"] == 0, "\n".join(repr(e) for e in stats["examples"])
    assert stats["comparisons"] >= 3 * stats["expressions"]
    if stats["expressions"] >= 5000:        # the DST rules were exercised, each many times
        assert min(stats["dst"].get(k, 0) for k in ("catch-up", "second-pass fire", "second-pass skip")) >= 50


def test_the_model_sees_the_changes_the_rules_are_about():
    """The model's own scan finds the changes the golden repros are about (so its walk is not vacuous)."""
    lord_howe = scan_changes(ZoneInfo("Australia/Lord_Howe"))
    santiago = scan_changes(ZoneInfo("America/Santiago"))
    change = datetime(2029, 3, 31, 15, tzinfo=timezone.utc).timestamp()
    assert (change, 11 * 3600, 10 * 3600 + 1800) in lord_howe
    assert (datetime(2024, 9, 8, 4, tzinfo=timezone.utc).timestamp(), -4 * 3600, -3 * 3600) in santiago
