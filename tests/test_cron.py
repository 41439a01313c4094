"""The cron engine: what is accepted, what is refused (and how it is explained), and when a schedule fires.

Grouped by concern: parse/validate, next fire in UTC, zones, the DST rules, golden repros, describe. Time
is always passed in (a fixed NOW); instants are compared as ISO strings so that a failure reads like a
calendar: UTC ('...Z') where the zone does not matter, local time with its offset where it does.
"""

from __future__ import annotations

import time
from dataclasses import FrozenInstanceError
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from schedserver import CRON_HELP, CronExpr, InvalidCron, parse_cron

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
SANTIAGO = ZoneInfo("America/Santiago")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")

NOW = "2025-01-10T12:00:00Z"        # a Friday, in winter
FORMAT_HINT = "second minute hour day month weekday"


def ts(text: str) -> float:
    """An ISO 8601 instant ('...Z' or with an offset) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC instant with 'Z'."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local(epoch: float, tz: ZoneInfo) -> str:
    """Epoch seconds as local wall time with its UTC offset, to show which pass of a repeated hour it is."""
    return datetime.fromtimestamp(epoch, tz).isoformat()


def fires(expression: str, after: str, tz: ZoneInfo = UTC, count: int = 3) -> list[str | None]:
    """The next `count` fire instants strictly after `after`, by next_after, as UTC ISO strings."""
    spec = parse_cron(expression)
    out, at = [], ts(after)
    for _ in range(count):
        at = spec.next_after(at, tz)
        out.append(iso(at))
        if at is None:
            break
    return out


def local_fires(expression: str, after: str, tz: ZoneInfo, count: int = 3) -> list[str]:
    """The next `count` fire instants strictly after `after`, by iter_after, as local ISO strings."""
    out = []
    for fire in parse_cron(expression).iter_after(ts(after), tz):
        out.append(local(fire, tz))
        if len(out) == count:
            break
    return out


###############################################################################
# Parse and validate: accepted expressions
###############################################################################

VALID = [
    # expression, the six fields (seconds first) the scheduler will use
    ("0 0 9 * * MON-FRI", ("0", "0", "9", "*", "*", "MON-FRI")),
    ("*/2 * * * * *", ("*/2", "*", "*", "*", "*", "*")),
    ("0 0 9 * * mon-fri", ("0", "0", "9", "*", "*", "MON-FRI")),
    ("0 0 0 1 jan,Jul *", ("0", "0", "0", "1", "JAN,JUL", "*")),
    ("0 0 12 * JAN-MAR SAT,SUN", ("0", "0", "12", "*", "JAN-MAR", "SAT,SUN")),
    ("0 0 0 * * 0", ("0", "0", "0", "*", "*", "0")),
    ("0 0 0 * * 7", ("0", "0", "0", "*", "*", "7")),             # 7 is Sunday too, as in Vixie cron
    ("0 0 0 * * 5-7", ("0", "0", "0", "*", "*", "5-7")),
    ("59 59 23 31 12 6", ("59", "59", "23", "31", "12", "6")),  # every field at its maximum
    ("0 0 0 1 1 0", ("0", "0", "0", "1", "1", "0")),
    ("0,15,30,45 * * * * *", ("0,15,30,45", "*", "*", "*", "*", "*")),
    ("10-20/5 1-59/2 8-18 1-15 * *", ("10-20/5", "1-59/2", "8-18", "1-15", "*", "*")),
    ("5/15 * * * * *", ("5/15", "*", "*", "*", "*", "*")),
    ("0 0 12 ? * MON", ("0", "0", "12", "*", "*", "MON")),      # '?' means 'any' in day ...
    ("0 0 12 1 * ?", ("0", "0", "12", "1", "*", "*")),          # ... and in weekday
    ("0 0 0 29 2 *", ("0", "0", "0", "29", "2", "*")),          # leap day: rare, but it does fire
    ("  0   0  9 *  * MON-FRI  ", ("0", "0", "9", "*", "*", "MON-FRI")),
    # a field that covers every value keeps its text: only a leading `*` makes a field a wildcard
    ("0 0 0 1-31 * MON", ("0", "0", "0", "1-31", "*", "MON")),
    ("0 0-59 0-23 * * 0-7", ("0", "0-59", "0-23", "*", "*", "0-7")),
    ("0 0 0 * * 1/3", ("0", "0", "0", "*", "*", "1/3")),
    ("0 0 9-9 * * *", ("0", "0", "9", "*", "*", "*")),          # a one-value range is that value
    ("0 0 0 * * 0-0/2", ("0", "0", "0", "*", "*", "0")),
    # five fields, minute first: the seconds field becomes 0
    ("*/5 * * * *", ("0", "*/5", "*", "*", "*", "*")),
    ("30 9 * * mon-fri", ("0", "30", "9", "*", "*", "MON-FRI")),
    ("0 0 1 1 *", ("0", "0", "0", "1", "1", "*")),
    # macros, any case
    ("@yearly", ("0", "0", "0", "1", "1", "*")),
    ("@annually", ("0", "0", "0", "1", "1", "*")),
    ("@monthly", ("0", "0", "0", "1", "*", "*")),
    ("@weekly", ("0", "0", "0", "*", "*", "0")),
    ("@daily", ("0", "0", "0", "*", "*", "*")),
    ("@midnight", ("0", "0", "0", "*", "*", "*")),
    ("@hourly", ("0", "0", "*", "*", "*", "*")),
    ("@HOURLY", ("0", "0", "*", "*", "*", "*")),
]


@pytest.mark.parametrize("expression, fields", VALID, ids=[v[0] for v in VALID])
def test_it_accepts_a_valid_expression_and_keeps_what_the_user_wrote(expression, fields):
    spec = parse_cron(expression)
    assert spec.fields == fields
    assert spec.expression == expression
    assert spec.next_after(ts(NOW), UTC) > ts(NOW)


@pytest.mark.parametrize("expression, wildcard", [
    ("0 */5 * * * *", True), ("0 0 * * * *", True), ("@hourly", True), ("* 1 * * *", True),
    ("*/6 2 * 10 *", True), ("0 0 9 * * *", False), ("* 0 2 * * *", False),     # seconds do not count
    ("0 0-59 0-23 * * *", False), ("0 0/1 * * * *", True), ("0 5,*/10 1 * * *", False), ("@daily", False),
    ("26 0-23 * * *", False),
])
def test_a_job_is_wildcard_time_when_its_minute_or_hour_text_starts_with_a_star(expression, wildcard):
    assert parse_cron(expression).wildcard_time is wildcard


def test_a_parsed_expression_is_cached_immutable_and_comparable():
    spec = parse_cron("0 0 9 * * MON-FRI")
    assert parse_cron("0 0 9 * * MON-FRI") is spec
    with pytest.raises(FrozenInstanceError):
        spec.expression = "x"
    assert CronExpr("0 0 9 * * MON-FRI", spec.fields) == spec


###############################################################################
# Parse and validate: refused expressions, each with a message that says what is wrong
###############################################################################

INVALID = [
    # expression, what the message must say
    ("", "empty"),
    ("   ", "empty"),
    ("* * * *", "'* * * *' has 4 fields"),
    ("* * * * * * *", "has 7 fields"),
    ("0 0 9 * * MON-FRI 2025", "has 7 fields"),
    # out of range, field by field
    ("60 * * * * *", "second value 60 is out of range 0-59"),
    ("0 60 * * * *", "minute value 60 is out of range 0-59"),
    ("0 0 24 * * *", "hour value 24 is out of range 0-23"),
    ("0 0 0 0 * *", "day value 0 is out of range 1-31"),
    ("0 0 0 32 * *", "day value 32 is out of range 1-31"),
    ("0 0 0 * 0 *", "month value 0 is out of range 1-12"),
    ("0 0 0 * 13 *", "month value 13 is out of range 1-12"),
    ("0 0 0 * * 8", "weekday value 8 is out of range 0-7"),
    ("60 * * * *", "minute value 60 is out of range 0-59"),    # five fields: the first is the minute
    ("0 0-24 * * *", "hour value 24 is out of range 0-23"),
    ("0 0 0 1,32 * *", "day value 32 is out of range 1-31"),
    ("0 0 0 * * 0060", "weekday value 60 is out of range 0-7"),
    # ranges and steps
    ("0 30-10 * * * *", "minute range 30-10 runs backwards"),
    ("0 0 0 * * FRI-MON", "weekday range FRI-MON runs backwards"),
    ("0 0 0 * DEC-JAN *", "month range DEC-JAN runs backwards"),
    ("*/0 * * * * *", "second step /0 must be from 1 to 60"),
    ("0 0 */0 * * *", "hour step /0 must be from 1 to 24"),
    ("1-5/0 * * * *", "minute step /0 must be from 1 to 60"),
    ("*/61 * * * * *", "second step /61 must be from 1 to 60"),
    ("0 0 0 * * */9", "weekday step /9 must be from 1 to 8"),
    # unknown names
    ("0 0 0 * JANUARY *", "month value 'JANUARY' is not a number or a name"),
    ("0 0 0 * * MONDAY", "weekday value 'MONDAY' is not a number or a name"),
    ("0 0 0 * * MON-XYZ", "weekday value 'XYZ' is not a number or a name"),
    ("0 0 MON * * *", "hour value 'MON' is not a number"),
    # syntax
    ("1,,2 * * * * *", "second field '1,,2' is not valid"),
    ("0 0 0 * * -1", "weekday field '-1' is not valid"),
    ("0 0 0 * * 1.5", "weekday field '1.5' is not valid"),
    ("? * * * * *", "second field '?' is not valid"),          # '?' only stands for day and weekday
    ("0 0 0 ?,1 * *", "day field '?,1' is not valid"),
    ("0 0 0 * * ٣", "weekday field '٣' is not valid"),         # digits are ASCII digits
    # Quartz/Jenkins extensions that Vixie cron does not have
    ("0 0 0 L * *", "day value 'L' is not a number"),
    ("0 0 0 15W * *", "day value '15W' is not a number"),
    ("0 0 0 LW * *", "day value 'LW' is not a number"),
    ("0 0 0 * * 5#2", "weekday field '5#2' is not valid"),
    ("0 0 0 * * 5L", "weekday value '5L' is not a number or a name"),
    ("H * * * *", "minute value 'H' is not a number"),
    ("0 H * * * *", "minute value 'H' is not a number"),
    # macros
    ("@reboot", "unknown macro '@reboot'"),
    ("@every 5s", "unknown macro '@every 5s'"),
    ("@daily 0", "unknown macro '@daily 0'"),
    # not a string
    (None, "expected a string"),
    (5, "expected a string"),
    (b"0 0 9 * * *", "expected a string"),
    (["0", "0", "9", "*", "*", "*"], "expected a string"),
    # valid fields, impossible dates
    ("0 0 0 30 2 *", "'0 0 0 30 2 *' never fires (no such date)"),
    ("0 0 0 31 4 *", "never fires"),
    ("0 0 0 31 2,4,6,9,11 *", "never fires"),
    ("0 0 0 30-31 FEB */1", "never fires"),
    ("0 0 0 31 APR-APR ?", "never fires"),
]


@pytest.mark.parametrize("expression, problem", INVALID, ids=[repr(v[0]) for v in INVALID])
def test_it_refuses_an_invalid_expression_saying_what_is_wrong_and_showing_the_format(expression, problem):
    with pytest.raises(InvalidCron) as caught:
        parse_cron(expression)
    assert problem in caught.value.message
    assert caught.value.message.endswith("; " + CRON_HELP)
    assert FORMAT_HINT in caught.value.message


def test_the_never_fires_message_is_exactly_the_one_documented():
    with pytest.raises(InvalidCron) as caught:
        parse_cron("0 0 0 30 2 *")
    assert caught.value.message == (
        f"Invalid cron expression: '0 0 0 30 2 *' never fires (no such date); {CRON_HELP}")


def test_an_invalid_expression_is_a_value_error_whose_text_is_its_message():
    with pytest.raises(InvalidCron) as caught:
        parse_cron("0 0 25 * * *")
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == caught.value.message


def test_a_day_of_the_month_that_exists_in_one_allowed_month_is_accepted():
    assert fires("0 0 0 31 2,4,6,7 *", NOW, count=2) == ["2025-07-31T00:00:00Z", "2026-07-31T00:00:00Z"]
    # both fields restricted: either may match, so a weekday rescues a missing date
    assert fires("0 0 0 30 2 MON", NOW, count=2) == ["2025-02-03T00:00:00Z", "2025-02-10T00:00:00Z"]


@pytest.mark.parametrize("make, problem", [
    (lambda n: "1" * n + " * * * * *", "second value 1111111111... (5000 digits) is out of range 0-59"),
    (lambda n: "0 0 0 * * " + "7" * n, "weekday value 7777777777... (5000 digits) is out of range 0-7"),
    (lambda n: "0 0 0 1-" + "9" * n + " * *", "day value 9999999999... (5000 digits) is out of range 1-31"),
    (lambda n: "*/" + "1" * n + " * * * * *",
     "second step /1111111111... (5000 digits) must be from 1 to 60"),
    (lambda n: "0 0 0 * * 1/" + "0" * n, "weekday step /0000000000... (5000 digits) must be from 1 to 8"),
    (lambda n: "0 0 0 * * " + "0" * n + "60", "weekday value 60 is out of range 0-7"),
    (lambda n: "0 0 0 * " + "A" * n + " *", "month value 'AAAAAAAAAA"),
])
def test_a_number_thousands_of_digits_long_is_refused_cleanly_and_at_once(make, problem):
    expression = make(5000)
    started = time.perf_counter()
    with pytest.raises(InvalidCron) as caught:
        parse_cron(expression)
    assert time.perf_counter() - started < 0.05
    assert problem in caught.value.message
    assert len(caught.value.message) < 400          # the value is shortened, not echoed whole


def test_leading_zeros_do_not_make_a_value_long():
    assert parse_cron("0 0 0 * * " + "0" * 5000 + "1").fields[5] == "0" * 5000 + "1"
    assert fires("0 0 0 * * " + "0" * 5000 + "1", NOW, count=1) == ["2025-01-13T00:00:00Z"]
    spec = parse_cron("*/" + "0" * 5000 + "20 * * * * *")
    assert fires(spec.expression, NOW) == [
        "2025-01-10T12:00:20Z", "2025-01-10T12:00:40Z", "2025-01-10T12:01:00Z"]
    assert spec.describe() == "every 20 seconds"
    assert parse_cron("0 0 " + "0" * 5000 + "9 * * *").describe() == "at 09:00"


###############################################################################
# Next fire, UTC
###############################################################################

def test_a_six_field_expression_fires_at_its_seconds_cadence():
    assert fires("*/2 * * * * *", NOW) == [
        "2025-01-10T12:00:02Z", "2025-01-10T12:00:04Z", "2025-01-10T12:00:06Z"]


def test_the_next_fire_is_strictly_after_the_instant_given():
    spec = parse_cron("*/2 * * * * *")
    assert iso(spec.next_after(ts("2025-01-10T12:00:02Z"), UTC)) == "2025-01-10T12:00:04Z"
    assert iso(spec.next_after(ts("2025-01-10T12:00:01Z") + 0.5, UTC)) == "2025-01-10T12:00:02Z"
    assert iso(spec.next_after(ts("2025-01-10T12:00:02Z") - 0.001, UTC)) == "2025-01-10T12:00:02Z"


def test_answers_are_floats_on_whole_seconds():
    fire = parse_cron("*/2 * * * * *").next_after(ts(NOW) + 0.25, UTC)
    assert isinstance(fire, float) and fire == int(fire)


def test_a_weekday_only_expression_skips_the_weekend():
    assert fires("0 0 9 * * MON-FRI", NOW, count=6) == [
        "2025-01-13T09:00:00Z", "2025-01-14T09:00:00Z", "2025-01-15T09:00:00Z",
        "2025-01-16T09:00:00Z", "2025-01-17T09:00:00Z", "2025-01-20T09:00:00Z"]


def test_weekday_names_and_numbers_seven_and_zero_all_mean_sunday():
    expected = ["2025-01-12T00:00:00Z", "2025-01-19T00:00:00Z"]
    assert fires("0 0 0 * * SUN", NOW, count=2) == expected
    assert fires("0 0 0 * * 0", NOW, count=2) == expected
    assert fires("0 0 0 * * 7", NOW, count=2) == expected
    assert fires("0 0 0 * * 7-7", NOW, count=2) == expected
    assert fires("0 0 0 * * 7/1", NOW, count=2) == expected      # 7-7/1
    assert fires("@weekly", NOW, count=2) == expected


def test_a_monthly_expression_fires_on_the_first_at_midnight():
    assert fires("@monthly", NOW) == ["2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z"]


def test_a_day_31_expression_skips_the_short_months():
    assert fires("0 0 12 31 * *", NOW, count=4) == [
        "2025-01-31T12:00:00Z", "2025-03-31T12:00:00Z", "2025-05-31T12:00:00Z", "2025-07-31T12:00:00Z"]


def test_yearly_and_leap_day_expressions_fire_on_their_date():
    assert fires("@yearly", NOW, count=2) == ["2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"]
    assert fires("0 0 0 29 2 *", NOW, count=2) == ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
    # no 29 February in 2100
    assert fires("0 0 0 29 2 *", "2096-03-01T00:00:00Z", count=2) == [
        "2104-02-29T00:00:00Z", "2108-02-29T00:00:00Z"]
    # 29 February on a Sunday (both fields must match: the weekday starts with `*`)
    assert fires("0 0 0 29 2 */7", NOW, count=2) == ["2032-02-29T00:00:00Z", "2060-02-29T00:00:00Z"]


def test_a_five_field_expression_fires_at_second_zero():
    assert fires("*/15 * * * *", "2025-01-10T12:07:30Z") == [
        "2025-01-10T12:15:00Z", "2025-01-10T12:30:00Z", "2025-01-10T12:45:00Z"]
    assert fires("30 9 * * *", NOW, count=2) == ["2025-01-11T09:30:00Z", "2025-01-12T09:30:00Z"]


def test_hourly_fires_at_the_top_of_each_hour():
    assert fires("@hourly", "2025-01-10T12:00:00Z") == [
        "2025-01-10T13:00:00Z", "2025-01-10T14:00:00Z", "2025-01-10T15:00:00Z"]


def test_next_after_says_none_for_a_date_that_never_comes():
    never = CronExpr("0 0 0 30 2 *", ("0", "0", "0", "30", "2", "*"))
    assert never.never_fires()
    assert never.next_after(ts(NOW), UTC) is None
    assert list(never.iter_after(ts(NOW), UTC)) == []


def test_there_is_no_fire_after_the_year_9999():
    assert fires("@yearly", "9998-06-01T00:00:00Z", count=2) == ["9999-01-01T00:00:00Z", None]
    assert fires("* * * * * *", "9999-12-29T23:59:58Z", count=1) == ["9999-12-29T23:59:59Z"]
    assert fires("* * * * * *", "9999-12-31T23:59:58Z", count=1) == [None]     # datetime's edge
    assert fires("0 0 0 29 2 *", "9996-03-01T00:00:00Z", count=1) == [None]


@pytest.mark.parametrize("expression, meaning", [
    ("0 0 9-9 * * *", "0 0 9 * * *"),
    ("0 0 0 5-5 * *", "0 0 0 5 * *"),
    ("0 0 0 * MAR-MAR *", "0 0 0 * 3 *"),
    ("0 0 0 * * MON-MON", "0 0 0 * * 1"),
    ("0 0 0 * * 7-7", "0 0 0 * * 0"),
    ("0 0 0 * * 0-0/2", "0 0 0 * * 0"),
    ("30-30 * * * * *", "30 * * * * *"),
])
def test_a_range_of_one_value_means_that_one_value(expression, meaning):
    assert fires(expression, NOW, count=5) == fires(meaning, NOW, count=5)


@pytest.mark.parametrize("expression, meaning", [
    # `a/n` is `a-MAX/n` in every field, MAX being the field's maximum (7 for the weekday)
    ("5/20 * * * * *", "5,25,45 * * * * *"),
    ("0 50/4 * * * *", "0 50,54,58 * * * *"),
    ("0 0 20/2 * * *", "0 0 20,22 * * *"),
    ("0 0 0 25/3 * *", "0 0 0 25,28,31 * *"),
    ("0 0 0 1 10/2 *", "0 0 0 1 10,12 *"),
    ("0 0 0 * * 1/3", "0 0 0 * * 1,4,0"),        # Monday, Thursday and Sunday
    ("0 0 0 * * 5/1", "0 0 0 * * 5,6,0"),
    ("0 0 0 * * */2", "0 0 0 * * 0,2,4,6"),      # `*/n` is 0-7/n
    ("0 0 0 * * */7", "0 0 0 * * 0"),
    ("0 0 0 * * 0/7", "0 0 0 * * 0"),
])
def test_a_slash_n_runs_to_the_maximum_of_its_field(expression, meaning):
    assert fires(expression, NOW, count=8) == fires(meaning, NOW, count=8)


def test_weekday_one_slash_three_is_monday_thursday_and_sunday():
    days = [datetime.fromtimestamp(ts(t), timezone.utc).strftime("%a")
            for t in fires("0 0 0 * * 1/3", NOW, count=6)]
    assert days == ["Sun", "Mon", "Thu", "Sun", "Mon", "Thu"]


@pytest.mark.parametrize("expression, expected", [
    # Vixie cron: both fields must match when either starts with `*`, steps included.
    ("0 0 0 */2 * MON", ["2025-01-13T00:00:00Z", "2025-01-27T00:00:00Z", "2025-02-03T00:00:00Z"]),
    ("0 0 0 1 * */2", ["2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z"]),
    ("0 0 0 ? * MON", ["2025-01-13T00:00:00Z", "2025-01-20T00:00:00Z", "2025-01-27T00:00:00Z"]),
    # Both restricted (neither starts with `*`): either matches, even when a list holds a `*` further on.
    ("0 0 0 1 * MON", ["2025-01-13T00:00:00Z", "2025-01-20T00:00:00Z", "2025-01-27T00:00:00Z"]),
    ("0 0 0 1-31/2 * MON", ["2025-01-11T00:00:00Z", "2025-01-13T00:00:00Z", "2025-01-15T00:00:00Z"]),
    ("0 0 0 2 * 1,*", ["2025-01-11T00:00:00Z", "2025-01-12T00:00:00Z", "2025-01-13T00:00:00Z"]),
    ("0 0 0 1,* * SUN", ["2025-01-11T00:00:00Z", "2025-01-12T00:00:00Z", "2025-01-13T00:00:00Z"]),
    # a field covering every value without a leading `*` is restricted: either, so every day
    ("0 0 0 1-31 * MON", ["2025-01-11T00:00:00Z", "2025-01-12T00:00:00Z", "2025-01-13T00:00:00Z"]),
    ("0 0 0 13 * 0-7", ["2025-01-11T00:00:00Z", "2025-01-12T00:00:00Z", "2025-01-13T00:00:00Z"]),
    ("0 0 0 */1 * MON", ["2025-01-13T00:00:00Z", "2025-01-20T00:00:00Z", "2025-01-27T00:00:00Z"]),
])
def test_day_and_weekday_combine_by_whether_a_field_starts_with_a_star(expression, expected):
    assert fires(expression, NOW) == expected


def test_the_first_and_every_monday():
    assert fires("0 0 0 1 * MON", "2025-01-25T00:00:00Z", count=3) == [
        "2025-01-27T00:00:00Z", "2025-02-01T00:00:00Z", "2025-02-03T00:00:00Z"]


def test_iter_after_and_next_after_agree_and_are_strictly_increasing():
    spec = parse_cron("*/7 */13 * * * *")
    chain = []
    for fire in spec.iter_after(ts(NOW), UTC):
        chain.append(fire)
        if len(chain) == 50:
            break
    assert all(a < b for a, b in zip(chain, chain[1:]))
    assert [spec.next_after(a, UTC) for a in [ts(NOW)] + chain[:-1]] == chain


def test_asking_between_a_remembered_question_and_its_answer_gives_that_answer():
    spec = parse_cron("0 0 9 * * *")
    assert iso(spec.next_after(ts("2025-01-10T10:00:00Z"), UTC)) == "2025-01-11T09:00:00Z"
    assert iso(spec.next_after(ts("2025-01-10T20:00:00Z"), UTC)) == "2025-01-11T09:00:00Z"
    assert iso(spec.next_after(ts("2025-01-10T08:00:00Z"), UTC)) == "2025-01-10T09:00:00Z"
    assert iso(spec.next_after(ts("2025-01-11T09:00:00Z"), UTC)) == "2025-01-12T09:00:00Z"
    assert iso(spec.next_after(ts("2025-01-11T09:00:00Z"), BERLIN)) == "2025-01-12T08:00:00Z"


def test_an_every_second_job_is_cheap_to_ask_a_year_later_and_three_thousand_times_over():
    spec = parse_cron("* * * * * *")
    start = ts("2026-01-10T12:00:00Z")
    started = time.perf_counter()
    assert iso(spec.next_after(start, UTC)) == "2026-01-10T12:00:01Z"
    chain = []
    for fire in spec.iter_after(start, BERLIN):
        chain.append(fire)
        if len(chain) == 3000:
            break
    assert time.perf_counter() - started < 1.0
    assert chain == [start + n for n in range(1, 3001)]


###############################################################################
# Zones
###############################################################################

def test_a_schedule_in_berlin_fires_at_nine_local_which_is_eight_utc_in_winter():
    assert fires("0 0 9 * * MON-FRI", NOW, BERLIN, count=2) == [
        "2025-01-13T08:00:00Z", "2025-01-14T08:00:00Z"]


def test_a_schedule_in_berlin_fires_at_nine_local_which_is_seven_utc_in_summer():
    assert fires("0 0 9 * * MON-FRI", "2025-07-04T12:00:00Z", BERLIN, count=1) == ["2025-07-07T07:00:00Z"]


def test_the_date_is_the_local_date():
    # 23:30 UTC on Friday 10 January is already Saturday in Berlin
    assert local_fires("0 30 0 * * SAT", "2025-01-10T22:00:00Z", BERLIN, 1) == ["2025-01-11T00:30:00+01:00"]
    assert local_fires("0 0 0 1 * *", "2025-01-31T22:00:00Z", LORD_HOWE, 1) == ["2025-03-01T00:00:00+11:00"]


def test_python_orders_aware_datetimes_of_one_zone_by_wall_clock_so_the_engine_works_on_utc_instants():
    # New York, 2025-11-02: 02:00 EDT becomes 01:00 EST, so 01:00-01:59 happens twice.
    first_pass = datetime(2025, 11, 2, 1, 45, tzinfo=NEW_YORK)               # 01:45 EDT = 05:45Z
    second_pass = datetime(2025, 11, 2, 1, 10, tzinfo=NEW_YORK, fold=1)      # 01:10 EST = 06:10Z
    assert second_pass.timestamp() - first_pass.timestamp() == 25 * 60     # really 25 minutes later...
    assert second_pass < first_pass                                          # ...yet "earlier": fold ignored
    assert local_fires("0 10,45 * * * *", "2025-11-02T05:00:00Z", NEW_YORK, 3) == [
        "2025-11-02T01:10:00-04:00", "2025-11-02T01:45:00-04:00", "2025-11-02T01:10:00-05:00"]


###############################################################################
# DST rules
###############################################################################

def test_a_time_skipped_by_spring_forward_fires_once_right_after_the_jump():
    # Berlin, 2025-03-30: 02:00 CET becomes 03:00 CEST, so 02:30 does not exist that night.
    assert local_fires("0 30 2 * * *", "2025-03-29T12:00:00Z", BERLIN) == [
        "2025-03-30T03:00:00+02:00", "2025-03-31T02:30:00+02:00", "2025-04-01T02:30:00+02:00"]
    assert fires("0 30 2 * * *", "2025-03-29T12:00:00Z", BERLIN) == [
        "2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z", "2025-04-01T00:30:00Z"]


def test_several_skipped_times_give_one_catch_up_fire_and_a_matching_jump_time_is_not_doubled():
    assert local_fires("0 0,15,30 2 * * *", "2025-03-29T12:00:00Z", BERLIN) == [
        "2025-03-30T03:00:00+02:00", "2025-03-31T02:00:00+02:00", "2025-03-31T02:15:00+02:00"]
    assert local_fires("0 0 2,3 * * *", "2025-03-29T12:00:00Z", BERLIN) == [
        "2025-03-30T03:00:00+02:00", "2025-03-31T02:00:00+02:00", "2025-03-31T03:00:00+02:00"]


def test_a_catch_up_fire_depends_on_the_date_of_the_skipped_wall_time():
    # 02:30 on Sundays only: the night of the change is a Sunday
    assert local_fires("0 30 2 * * SUN", "2025-03-29T12:00:00Z", BERLIN, 2) == [
        "2025-03-30T03:00:00+02:00", "2025-04-06T02:30:00+02:00"]
    assert local_fires("0 30 2 * * SAT", "2025-03-29T12:00:00Z", BERLIN, 1) == ["2025-04-05T02:30:00+02:00"]


def test_a_wildcard_job_does_not_fire_for_skipped_times():
    # `* 2` is every minute of 02:xx: none exists on 2025-03-30 in Berlin, and none is made up.
    assert local_fires("0 * 2 * * *", "2025-03-30T00:59:00Z", BERLIN, 2) == [
        "2025-03-31T02:00:00+02:00", "2025-03-31T02:01:00+02:00"]
    assert fires("0 */15 * * * *", "2025-03-30T00:40:00Z", BERLIN, count=4) == [
        "2025-03-30T00:45:00Z",     # 01:45 CET
        "2025-03-30T01:00:00Z",     # 03:00 CEST: 02:00-02:45 do not exist
        "2025-03-30T01:15:00Z", "2025-03-30T01:30:00Z"]


def test_a_fixed_time_in_the_repeated_hour_fires_only_in_the_first_pass_of_fall_back():
    # New York, 2025-11-02: 02:00 EDT becomes 01:00 EST, so 01:00 happens twice (05:00Z and 06:00Z).
    assert fires("0 0 1 * * *", "2025-11-01T12:00:00Z", NEW_YORK, count=3) == [
        "2025-11-02T05:00:00Z", "2025-11-03T06:00:00Z", "2025-11-04T06:00:00Z"]


def test_after_the_first_pass_a_fixed_time_job_waits_for_the_next_day():
    spec = parse_cron("0 0 1 * * *")
    # 05:30Z is 01:30 EDT, between the two 01:00s.
    assert iso(spec.next_after(ts("2025-11-02T05:30:00Z"), NEW_YORK)) == "2025-11-03T06:00:00Z"
    # 06:00Z is 01:00 EST, the second 01:00 itself.
    assert iso(spec.next_after(ts("2025-11-02T05:59:59Z"), NEW_YORK)) == "2025-11-03T06:00:00Z"


def test_a_fixed_time_job_fires_after_the_repeated_hour_the_same_night():
    assert local_fires("0 30 1,2 * * *", "2025-11-02T05:00:00Z", NEW_YORK) == [
        "2025-11-02T01:30:00-04:00", "2025-11-02T02:30:00-05:00", "2025-11-03T01:30:00-05:00"]


@pytest.mark.parametrize("expression, tz, start, expected", [
    ("* 0 2 * * *", BERLIN, "2025-10-26T00:58:00Z", "2025-10-27T01:00:00Z"),
    ("*/5 30 2 * * *", BERLIN, "2025-10-26T00:58:00Z", "2025-10-27T01:30:00Z"),
    ("* 45 1 * * *", NEW_YORK, "2025-11-02T05:50:00Z", "2025-11-03T06:45:00Z"),
])
def test_a_fixed_time_job_of_many_seconds_keeps_firing_after_the_repeated_hour_of_a_fall_back_night(
        expression, tz, start, expected):
    assert iso(parse_cron(expression).next_after(ts(start), tz)) == expected


def test_a_quarter_hourly_job_fires_in_both_passes_of_the_repeated_hour():
    spec = parse_cron("0 */15 * * * *")
    at, seen = ts("2025-11-02T04:50:00Z"), []
    for _ in range(9):
        at = spec.next_after(at, NEW_YORK)
        seen.append(local(at, NEW_YORK))
    assert seen == [
        "2025-11-02T01:00:00-04:00", "2025-11-02T01:15:00-04:00", "2025-11-02T01:30:00-04:00",
        "2025-11-02T01:45:00-04:00",
        "2025-11-02T01:00:00-05:00", "2025-11-02T01:15:00-05:00", "2025-11-02T01:30:00-05:00",
        "2025-11-02T01:45:00-05:00",
        "2025-11-02T02:00:00-05:00"]


def test_six_field_seconds_across_dst():
    # a fixed time of many seconds in the skipped hour: one fire, at the jump itself (second 0)
    assert local_fires("*/20 30 2 * * *", "2025-03-30T00:00:00Z", BERLIN) == [
        "2025-03-30T03:00:00+02:00", "2025-03-31T02:30:00+02:00", "2025-03-31T02:30:20+02:00"]
    # ... and in the repeated hour: the first pass only
    assert local_fires("*/20 30 2 * * *", "2025-10-26T00:00:00Z", BERLIN, 4) == [
        "2025-10-26T02:30:00+02:00", "2025-10-26T02:30:20+02:00", "2025-10-26T02:30:40+02:00",
        "2025-10-27T02:30:00+01:00"]
    # a wildcard minute with seconds: both passes, and nothing for the skipped hour
    assert local_fires("15,45 * 2 * * *", "2025-10-26T01:59:00Z", BERLIN, 4) == [
        "2025-10-26T02:59:15+01:00", "2025-10-26T02:59:45+01:00",
        "2025-10-27T02:00:15+01:00", "2025-10-27T02:00:45+01:00"]
    assert local_fires("15,45 * 2 * * *", "2025-10-26T00:58:00Z", BERLIN, 3) == [
        "2025-10-26T02:58:15+02:00", "2025-10-26T02:58:45+02:00", "2025-10-26T02:59:15+02:00"]


def test_a_half_hour_change_lord_howe():
    # 2025-04-06: 02:00 +11 becomes 01:30 +10:30; 2025-10-05: 02:00 +10:30 becomes 02:30 +11.
    assert local_fires("0 45 1 * * *", "2025-04-05T12:00:00Z", LORD_HOWE) == [
        "2025-04-06T01:45:00+11:00", "2025-04-07T01:45:00+10:30", "2025-04-08T01:45:00+10:30"]
    assert local_fires("0 */20 1 * * *", "2025-04-05T14:30:00Z", LORD_HOWE, 5) == [
        "2025-04-06T01:40:00+11:00", "2025-04-06T01:40:00+10:30", "2025-04-07T01:00:00+10:30",
        "2025-04-07T01:20:00+10:30", "2025-04-07T01:40:00+10:30"]
    assert local_fires("0 15 2 * * *", "2025-10-04T12:00:00Z", LORD_HOWE, 2) == [
        "2025-10-05T02:30:00+11:00", "2025-10-06T02:15:00+11:00"]
    assert local_fires("0 45 2 * * *", "2025-10-04T12:00:00Z", LORD_HOWE, 2) == [
        "2025-10-05T02:45:00+11:00", "2025-10-06T02:45:00+11:00"]


def test_a_change_at_midnight_santiago():
    # 2024-09-08: 00:00 -04 becomes 01:00 -03 (00:xx of the 8th is skipped).
    assert local_fires("0 30 0 * * *", "2024-09-07T12:00:00Z", SANTIAGO) == [
        "2024-09-08T01:00:00-03:00", "2024-09-09T00:30:00-03:00", "2024-09-10T00:30:00-03:00"]
    assert local_fires("0 30 0 8 * *", "2024-09-07T12:00:00Z", SANTIAGO, 1) == ["2024-09-08T01:00:00-03:00"]
    assert local_fires("0 30 0 7 * *", "2024-09-07T12:00:00Z", SANTIAGO, 1) == ["2024-10-07T00:30:00-03:00"]
    assert local_fires("0 0 0 * * *", "2024-09-07T12:00:00Z", SANTIAGO, 2) == [
        "2024-09-08T01:00:00-03:00", "2024-09-09T00:00:00-03:00"]
    # 2024-04-07: 00:00 -03 becomes 23:00 -04 on the 6th (23:xx of the 6th repeats).
    assert local_fires("0 30 23 * * *", "2024-04-06T12:00:00Z", SANTIAGO) == [
        "2024-04-06T23:30:00-03:00", "2024-04-07T23:30:00-04:00", "2024-04-08T23:30:00-04:00"]
    assert local_fires("0 0 * * * *", "2024-04-07T01:30:00Z", SANTIAGO, 3) == [
        "2024-04-06T23:00:00-03:00", "2024-04-06T23:00:00-04:00", "2024-04-07T00:00:00-04:00"]


DST_DAYS = [
    (BERLIN, "2025-03-29T12:00:00Z"), (BERLIN, "2025-10-25T12:00:00Z"),
    (NEW_YORK, "2025-03-08T12:00:00Z"), (NEW_YORK, "2025-11-01T12:00:00Z"),
    (LORD_HOWE, "2025-04-05T00:00:00Z"), (LORD_HOWE, "2025-10-04T00:00:00Z"),
    (SANTIAGO, "2024-04-06T00:00:00Z"), (SANTIAGO, "2024-09-07T00:00:00Z"),
]
DST_EXPRESSIONS = ["0 30 2 * * *", "0 0 1 * * *", "0 */15 * * * *", "0 0 * * * *", "0 0,30 1-3 * * *",
                   "30 45 * * * *", "0 10,45 * * * *", "*/20 * 1 * * *", "0 30 23,0 * * *"]


@pytest.mark.parametrize("tz, day", DST_DAYS, ids=[f"{tz.key}-{day[:10]}" for tz, day in DST_DAYS])
@pytest.mark.parametrize("expression", DST_EXPRESSIONS)
def test_successive_fires_are_strictly_increasing_utc_instants_across_dst(tz, day, expression):
    spec = parse_cron(expression)
    start = ts(day)
    chain, at = [], start
    while at < start + 2 * 86400:
        following = spec.next_after(at, tz)
        assert following is not None and following > at, f"stuck after {iso(at)}"
        chain.append(following)
        at = following
    # Asking from any instant gives the first fire of the chain after it, wherever the walk started.
    for probe in range(int(start), int(chain[-2]), 1171):
        expected = next(f for f in chain if f > probe)
        assert iso(spec.next_after(probe, tz)) == iso(expected), f"asked after {iso(probe)}"


###############################################################################
# Golden repros (times local)
###############################################################################

def test_golden_1_a_wildcard_minute_in_the_skipped_hour_does_not_fire_london():
    assert local_fires("* 1 * * *", "2030-03-31T00:59:59+00:00", LONDON, 2) == [
        "2030-04-01T01:00:00+01:00", "2030-04-01T01:01:00+01:00"]


def test_golden_2_every_four_minutes_through_a_half_hour_fall_back_lord_howe():
    assert local_fires("*/4 * * * *", "2029-04-01T01:55:00+11:00", LORD_HOWE, 10) == [
        "2029-04-01T01:56:00+11:00",
        "2029-04-01T01:32:00+10:30", "2029-04-01T01:36:00+10:30", "2029-04-01T01:40:00+10:30",
        "2029-04-01T01:44:00+10:30", "2029-04-01T01:48:00+10:30", "2029-04-01T01:52:00+10:30",
        "2029-04-01T01:56:00+10:30",
        "2029-04-01T02:00:00+10:30", "2029-04-01T02:04:00+10:30"]


@pytest.mark.parametrize("expression", ["0 0 15 * 1/1", "0 0 * * 1/1"])
def test_golden_3_weekday_one_slash_one_is_every_day(expression):
    assert local_fires(expression, "2024-01-05T12:00:00+00:00", UTC, 4) == [
        "2024-01-06T00:00:00+00:00", "2024-01-07T00:00:00+00:00",      # Sunday included
        "2024-01-08T00:00:00+00:00", "2024-01-09T00:00:00+00:00"]


def test_golden_4_weekday_seven_slash_one_is_sunday_and_either_field_may_match():
    assert local_fires("* 14 24 * 7/1", "2021-05-10T10:05:04+00:00", UTC, 2) == [
        "2021-05-16T14:00:00+00:00", "2021-05-16T14:01:00+00:00"]
    days = set()
    for fire in parse_cron("* 14 24 * 7/1").iter_after(ts("2021-05-10T10:05:04Z"), UTC):
        if fire >= ts("2021-06-01T00:00:00Z"):
            break
        days.add(local(fire, UTC)[:10])
    assert sorted(days) == ["2021-05-16", "2021-05-23", "2021-05-24", "2021-05-30"]


def test_golden_5_a_fixed_minute_in_every_listed_hour_catches_up_once_berlin():
    assert local_fires("26 0-23 * * *", "2025-03-30T01:30:00+01:00", BERLIN, 3) == [
        "2025-03-30T03:00:00+02:00", "2025-03-30T03:26:00+02:00", "2025-03-30T04:26:00+02:00"]


def test_golden_6_a_wildcard_minute_fires_in_both_passes_berlin():
    assert local_fires("*/6 2 * 10 *", "2021-10-31T02:50:01+02:00", BERLIN, 5) == [
        "2021-10-31T02:54:00+02:00", "2021-10-31T02:00:00+01:00", "2021-10-31T02:06:00+01:00",
        "2021-10-31T02:12:00+01:00", "2021-10-31T02:18:00+01:00"]


###############################################################################
# Describe
###############################################################################

@pytest.mark.parametrize("expression, text", [
    ("*/5 * * * * *", "every 5 seconds"),
    ("* * * * * *", "every second"),
    ("0 * * * * *", "every minute"),
    ("*/15 * * * *", "every 15 minutes"),
    ("@hourly", "every hour"),
    ("0 30 * * * *", "at minute 30 past every hour"),
    ("0 0 */2 * * *", "at minute 0 past every 2nd hour"),
    ("0 0 9 * * MON-FRI", "at 09:00 on Monday through Friday"),
    ("30 9 * * *", "at 09:30"),
    ("15 30 9 * * *", "at 09:30:15"),
    ("0 0 9,17 * * *", "at 09:00 and 17:00"),
    ("0 0 0 1 * *", "at 00:00 on day 1 of the month"),
    ("@yearly", "at 00:00 on day 1 of the month in January"),
    ("@weekly", "at 00:00 on Sunday"),
    ("0 * 1 * * *", "every minute between 01:00 and 01:59"),
    ("0 */15 9-17 * * MON-FRI", "every 15 minutes between 09:00 and 17:59 on Monday through Friday"),
    ("*/10 30 9 * * *", "every 10 seconds during 09:30"),
    ("30 * * * * *", "at second 30 past every minute"),
    ("0 0 0 1 * MON", "at 00:00 on day 1 of the month and on Monday"),
    ("0 0 0 */2 * MON", "at 00:00 on every 2nd day of the month if it is Monday"),
    ("0 0 0 * * 1/3", "at 00:00 on Monday, Thursday and Sunday"),
    ("0 0 12 1,15 JAN-MAR *", "at 12:00 on days 1 and 15 of the month in January through March"),
    ("0 0 0 1-31 * MON", "at 00:00"),       # either field may match, and the day field matches every day
])
def test_describe_says_it_in_plain_english(expression, text):
    assert parse_cron(expression).describe() == text


###############################################################################
# Properties against a brute-force scan in UTC (the DST rules have their own model: test_cron_model.py)
###############################################################################

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
FIELDS = (
    ("second", 0, 59, {}), ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day", 1, 31, {}),
    ("month", 1, 12, {n + 1: name for n, name in enumerate(MONTHS)}),
    ("weekday", 0, 7, dict(enumerate(DAYS))),
)
MACROS = {"@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
          "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *",
          "@hourly": "0 0 * * * *"}


class NotCron(ValueError):
    """The oracle's verdict that a text is not a valid expression."""


def _number(text: str, low: int, high: int, names: dict[int, str]) -> int:
    by_name = {name: value for value, name in names.items()}
    if not text.isascii():
        raise NotCron(f"{text!r} is not ASCII")
    if text.isdigit():
        if len(text.lstrip("0")) > 3:
            raise NotCron("too long")
        value = int(text)
    elif text.upper() in by_name:
        value = by_name[text.upper()]
    else:
        raise NotCron(f"{text!r} is not a number or a name")
    if not low <= value <= high:
        raise NotCron(f"{value} is out of range {low}-{high}")
    return value


def oracle_values(text: str, low: int, high: int, names: dict[int, str], day_or_weekday: bool) -> set[int]:
    if text == "?" and day_or_weekday:
        return set(range(low, high + 1))
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or len(step_text.lstrip("0")) > 3 \
                    or not 1 <= int(step_text) <= high - low + 1:
                raise NotCron(f"bad step {step_text!r}")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif base.count("-") == 1:
            start, end = (_number(part, low, high, names) for part in base.split("-"))
            if start > end:
                raise NotCron(f"range {base} runs backwards")
        elif "-" not in base:
            start = _number(base, low, high, names)
            end = high if slash else start          # `a/n` means a-high/n
        else:
            raise NotCron(f"bad item {item!r}")
        values.update(range(start, end + 1, step))
    return values


def oracle(expression: object) -> tuple[list[set[int]], bool]:
    """The value sets of an expression (weekday 7 folded onto 0) and whether both day fields must match."""
    if not isinstance(expression, str):
        raise NotCron("not a string")
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise NotCron("unknown macro")
        text = MACROS[text.lower()]
    parts = text.split(" ") if text else []
    if len(parts) == 5:
        parts = ["0"] + parts
    if len(parts) != 6:
        raise NotCron(f"{len(parts)} fields")
    sets = [oracle_values(part, low, high, names, name in ("day", "weekday"))
            for part, (name, low, high, names) in zip(parts, FIELDS)]
    sets[5] = {v % 7 for v in sets[5]}
    both = parts[3].startswith(("*", "?")) or parts[5].startswith(("*", "?"))
    d = date(2000, 1, 1)
    if not any(date_matches(sets, both, d + timedelta(days=n)) for n in range(28 * 366)):
        raise NotCron("no date ever matches")
    return sets, both


def date_matches(sets: list[set[int]], both: bool, d: date) -> bool:
    if d.month not in sets[4]:
        return False
    day_ok, weekday_ok = d.day in sets[3], d.isoweekday() % 7 in sets[5]
    return (day_ok and weekday_ok) if both else (day_ok or weekday_ok)


def brute_force(expression: str, after: float, count: int) -> list[float]:
    """The first `count` fires strictly after `after` in UTC, by scanning days, then each second of them
    (fewer if the scan of 30 years ends first)."""
    sets, both = oracle(expression)
    out = []
    day = datetime.fromtimestamp(after, timezone.utc).date()
    for _ in range(30 * 366):
        if date_matches(sets, both, day):
            midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
            for h in sorted(sets[2]):
                for m in sorted(sets[1]):
                    for s in sorted(sets[0]):
                        instant = midnight + h * 3600 + m * 60 + s
                        if instant > after:
                            out.append(instant)
                            if len(out) == count:
                                return out
        day += timedelta(days=1)
    return out


def value_text(draw, low: int, high: int, names: dict[int, str],
               at_least: int | None = None) -> tuple[int, str]:
    value = draw(st.integers(at_least if at_least is not None else low, high))
    if value in names and draw(st.booleans()):
        return value, draw(st.sampled_from([names[value], names[value].lower(), names[value].capitalize()]))
    return value, draw(st.sampled_from([str(value), f"{value:02d}"]))


@st.composite
def cron_item(draw, name: str, low: int, high: int, names: dict[int, str]) -> str:
    span = high - low + 1
    kind = draw(st.sampled_from(["star", "star-step", "value", "range", "range", "range-step", "value-step"]))
    if kind == "star":
        return "*"
    if kind == "star-step":
        return f"*/{draw(st.integers(1, span))}"
    if kind == "value":
        return value_text(draw, low, high, names)[1]
    if kind == "value-step":
        return f"{value_text(draw, low, high, names)[1]}/{draw(st.integers(1, span))}"
    start, start_text = value_text(draw, low, high, names)
    _, end_text = value_text(draw, low, high, names, at_least=start)
    if kind == "range-step":
        return f"{start_text}-{end_text}/{draw(st.integers(1, span))}"
    return f"{start_text}-{end_text}"


@st.composite
def cron_field(draw, name: str, low: int, high: int, names: dict[int, str]) -> str:
    if name in ("day", "weekday") and draw(st.integers(0, 9)) == 0:
        return "?"
    return ",".join(draw(st.lists(cron_item(name, low, high, names), min_size=1, max_size=3)))


@st.composite
def valid_expressions(draw) -> str:
    shape = draw(st.sampled_from(["six", "six", "six", "five", "macro"]))
    if shape == "macro":
        return draw(st.sampled_from(sorted(MACROS) + ["@DAILY", "@Hourly"]))
    fields = [draw(cron_field(*spec)) for spec in FIELDS]
    if shape == "five":
        fields = fields[1:]
    expression = draw(st.sampled_from([" ", "  ", "\t"])).join(fields)
    try:
        oracle(expression)
    except NotCron:
        assume(False)
    return expression


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=valid_expressions(),
       start=st.sampled_from(["2025-01-10T12:00:00Z", "2025-06-30T23:59:58Z", "2025-12-31T23:59:30Z",
                              "2024-02-28T00:00:00Z"]))
@example(expression="0 0 0 */2 * MON", start="2025-01-10T12:00:00Z")
@example(expression="0 0 0 1,15 * MON", start="2025-01-10T12:00:00Z")
@example(expression="0 0 0 * * 1/3", start="2025-01-10T12:00:00Z")
@example(expression="0 0 0 29 2 *", start="2025-01-10T12:00:00Z")
@example(expression="*/7 */13 * * * *", start="2025-12-31T23:59:30Z")
def test_in_utc_random_valid_expressions_fire_exactly_when_a_brute_force_scan_says(expression, start):
    expected = brute_force(expression, ts(start), 10)
    got = []
    for fire in parse_cron(expression).iter_after(ts(start), UTC):
        if len(got) == 10 or (len(expected) < 10 and fire > ts(start) + 30 * 365 * 86400):
            break
        got.append(fire)
    assert [iso(t) for t in got] == [iso(t) for t in expected]


@st.composite
def invalid_expressions(draw) -> str:
    """A valid expression with one field made wrong in one of the ways people get it wrong."""
    index = draw(st.integers(0, 5))
    name, low, high, names = FIELDS[index]
    fields = [draw(cron_field(*spec)) for spec in FIELDS]
    bad = draw(st.one_of(st.integers(high + 1, high + 10_000), st.just(10 ** 30)))
    tokens = [f"{bad}", f"{low}-{bad}", f"*/1,{bad}", f"{bad}/2", f"*/{high - low + 2}", f"*/{10 ** 12}",
              f"{low}/0", "L", "W", "5L", "1#2", "**", "*-5", "1-", "-", ",", "1,,2", "*/", "/5", "1-2-3",
              "1/2/3", "?/2", "*?", "½", "٣", "MONDAY", "JANUARY", "0x5", "+1", "1e1", "1.0", "H", "@daily"]
    if high > low + 1:
        tokens.append(f"{high}-{low}")
    fields[index] = draw(st.sampled_from(tokens + (["?"] if index in (0, 1, 2, 4) else [])))
    return " ".join(fields)


@settings(max_examples=200, deadline=None)
@given(expression=st.one_of(
    invalid_expressions(),
    st.builds(lambda day, months, weekday: f"0 0 0 {day} {months} {weekday}",
              st.sampled_from(["30", "31", "30-31", "31/1"]),
              st.sampled_from(["2", "FEB", "2,4", "4,6,9,11"]),
              st.sampled_from(["*", "?", "*/1"])),
    st.sampled_from(["", " ", "\t\n", "@", "@every 5m", "@reboot", "@hourlyx", "@ daily", "* * * * * * *"])))
def test_every_invalid_expression_is_refused_with_a_message_showing_the_six_field_format(expression):
    try:
        oracle(expression)
    except NotCron:
        pass
    else:
        assume(False)       # the replacement happened to make a valid expression
    with pytest.raises(InvalidCron) as refused:
        parse_cron(expression)
    assert refused.value.message.endswith("; " + CRON_HELP)


CRON_ALPHABET = st.sampled_from(list("0123456789*/,-? @") + [
    "MON", "JAN", "sun", "L", "#", "\x00", "é", "\u2003", "99", "7", "60", "24", "32", "13", "daily", "hourly"])


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.lists(CRON_ALPHABET, max_size=24).map("".join), st.text(max_size=40)))
def test_random_text_is_accepted_exactly_when_the_grammar_says_it_is_an_expression(text):
    try:
        oracle(text)
    except NotCron:
        with pytest.raises(InvalidCron):
            parse_cron(text)
    else:
        assert parse_cron(text).next_after(ts(NOW), UTC) is not None


###############################################################################
# Golden tables: what these expressions mean, pinned (unchanged from the croniter-based engine)
###############################################################################

GOLDEN_START = "2025-01-10T12:00:00Z"      # a Friday, in winter
GOLDEN_UTC = [
    ("0 0 9 * * MON-FRI", ["2025-01-13T09:00:00Z", "2025-01-14T09:00:00Z", "2025-01-15T09:00:00Z"]),
    ("* * * * * *", ["2025-01-10T12:00:01Z", "2025-01-10T12:00:02Z", "2025-01-10T12:00:03Z"]),
    ("*/15 * * * * *", ["2025-01-10T12:00:15Z", "2025-01-10T12:00:30Z", "2025-01-10T12:00:45Z"]),
    ("0 */5 * * * *", ["2025-01-10T12:05:00Z", "2025-01-10T12:10:00Z", "2025-01-10T12:15:00Z"]),
    ("30 15 10 * * *", ["2025-01-11T10:15:30Z", "2025-01-12T10:15:30Z", "2025-01-13T10:15:30Z"]),
    ("0 0 0 1 * *", ["2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z"]),
    ("0 0 12 1 * *", ["2025-02-01T12:00:00Z", "2025-03-01T12:00:00Z", "2025-04-01T12:00:00Z"]),
    ("0 0 0 31 * *", ["2025-01-31T00:00:00Z", "2025-03-31T00:00:00Z", "2025-05-31T00:00:00Z"]),
    ("0 0 0 29 2 *", ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z", "2036-02-29T00:00:00Z"]),
    ("0 0 0 * * 7", ["2025-01-12T00:00:00Z", "2025-01-19T00:00:00Z", "2025-01-26T00:00:00Z"]),
    ("0 0 0 * * 0", ["2025-01-12T00:00:00Z", "2025-01-19T00:00:00Z", "2025-01-26T00:00:00Z"]),
    ("0 0 0 * * 5-7", ["2025-01-11T00:00:00Z", "2025-01-12T00:00:00Z", "2025-01-17T00:00:00Z"]),
    ("0 0 0 1,15 * MON", ["2025-01-13T00:00:00Z", "2025-01-15T00:00:00Z", "2025-01-20T00:00:00Z"]),
    ("0 0 6 13 * FRI", ["2025-01-13T06:00:00Z", "2025-01-17T06:00:00Z", "2025-01-24T06:00:00Z"]),
    ("0 0 0 ? * MON", ["2025-01-13T00:00:00Z", "2025-01-20T00:00:00Z", "2025-01-27T00:00:00Z"]),
    ("0 0 0 1 JAN,JUL *", ["2025-07-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-07-01T00:00:00Z"]),
    ("0 0 8-17/3 * * *", ["2025-01-10T14:00:00Z", "2025-01-10T17:00:00Z", "2025-01-11T08:00:00Z"]),
    ("0 5/20 * * * *", ["2025-01-10T12:05:00Z", "2025-01-10T12:25:00Z", "2025-01-10T12:45:00Z"]),
    ("0 0 0 1-7 * MON", ["2025-01-13T00:00:00Z", "2025-01-20T00:00:00Z", "2025-01-27T00:00:00Z"]),
    ("*/20 30 9 * * SAT,SUN", ["2025-01-11T09:30:00Z", "2025-01-11T09:30:20Z", "2025-01-11T09:30:40Z"]),
    ("0 9 * * 1-5", ["2025-01-13T09:00:00Z", "2025-01-14T09:00:00Z", "2025-01-15T09:00:00Z"]),
    ("*/10 * * * *", ["2025-01-10T12:10:00Z", "2025-01-10T12:20:00Z", "2025-01-10T12:30:00Z"]),
    ("@hourly", ["2025-01-10T13:00:00Z", "2025-01-10T14:00:00Z", "2025-01-10T15:00:00Z"]),
    ("@daily", ["2025-01-11T00:00:00Z", "2025-01-12T00:00:00Z", "2025-01-13T00:00:00Z"]),
    ("@weekly", ["2025-01-12T00:00:00Z", "2025-01-19T00:00:00Z", "2025-01-26T00:00:00Z"]),
    ("@monthly", ["2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z"]),
    ("@yearly", ["2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"]),
]
GOLDEN_ZONES = [
    ("0 0 9 * * *", BERLIN, "2025-03-28T12:00:00Z",
     ["2025-03-29T08:00:00Z", "2025-03-30T07:00:00Z", "2025-03-31T07:00:00Z"]),
    ("0 30 2 * * *", BERLIN, "2025-03-29T12:00:00Z",
     ["2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z", "2025-04-01T00:30:00Z"]),
    ("0 0 1 * * *", NEW_YORK, "2025-11-01T12:00:00Z",
     ["2025-11-02T05:00:00Z", "2025-11-03T06:00:00Z", "2025-11-04T06:00:00Z"]),
    ("0 */30 1 * * *", NEW_YORK, "2025-11-02T04:50:00Z",
     ["2025-11-02T05:00:00Z", "2025-11-02T05:30:00Z", "2025-11-02T06:00:00Z"]),
    ("0 0 9 * * MON-FRI", NEW_YORK, "2025-03-07T12:00:00Z",
     ["2025-03-07T14:00:00Z", "2025-03-10T13:00:00Z", "2025-03-11T13:00:00Z"]),
]


@pytest.mark.parametrize("expression, expected", GOLDEN_UTC, ids=[e for e, _ in GOLDEN_UTC])
def test_golden_an_expression_in_utc_still_means_what_it_meant(expression, expected):
    assert fires(expression, GOLDEN_START) == expected
    assert [iso(t) for t in brute_force(expression, ts(GOLDEN_START), 3)] == expected


@pytest.mark.parametrize("expression, tz, start, expected", GOLDEN_ZONES,
                         ids=[f"{e} {tz.key}" for e, tz, _, _ in GOLDEN_ZONES])
def test_golden_an_expression_in_a_zone_still_means_what_it_meant_across_dst(expression, tz, start, expected):
    assert fires(expression, start, tz) == expected


def test_an_invalid_expression_is_a_400_with_the_contract_code_and_a_value_error():
    with pytest.raises(InvalidCron) as caught:
        parse_cron("0 0 25 * * *")
    assert caught.value.status == 400
    assert caught.value.code == "INVALID_CRON_EXPRESSION"
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == caught.value.message
