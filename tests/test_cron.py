"""Cron expressions: what is accepted, what is refused (and how it is explained), and when a schedule fires.

Grouped by concern as in cronsim's tests: validation, next fire, time zones, DST. Time is always passed in
(a fixed NOW); instants are compared as ISO strings so that a failure reads like a calendar.
"""

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from schedserver import CronSpec, InvalidCron, parse_cron

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")

NOW = "2025-01-10T12:00:00Z"        # a Friday, in winter
FORMAT_HINT = "second minute hour day month weekday"


def ts(text: str) -> float:
    """An ISO 8601 UTC instant ('...Z') as epoch seconds."""
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
    """The next `count` fire instants strictly after `after`, as UTC ISO strings."""
    spec = parse_cron(expression)
    out, at = [], ts(after)
    for _ in range(count):
        at = spec.next_after(at, tz)
        out.append(iso(at))
        if at is None:
            break
    return out


###############################################################################
# Validation: accepted expressions
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


###############################################################################
# Validation: refused expressions, each with a message that says what is wrong
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
    # ranges and steps
    ("0 30-10 * * * *", "minute range 30-10 runs backwards"),
    ("0 0 0 * * FRI-MON", "weekday range FRI-MON runs backwards"),
    ("0 0 0 * DEC-JAN *", "month range DEC-JAN runs backwards"),
    ("*/0 * * * * *", "second step /0 must be from 1 to 60"),
    ("0 0 */0 * * *", "hour step /0 must be from 1 to 24"),
    ("1-5/0 * * * *", "minute step /0 must be from 1 to 60"),
    ("*/61 * * * * *", "second step /61 must be from 1 to 60"),
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
    (["0", "0", "9", "*", "*", "*"], "expected a string"),
    # valid fields, impossible dates
    ("0 0 0 30 2 *", "'0 0 0 30 2 *' never fires"),
    ("0 0 0 31 4 *", "never fires"),
    ("0 0 0 31 2,4,6,9,11 *", "never fires"),
]


@pytest.mark.parametrize("expression, problem", INVALID, ids=[repr(v[0]) for v in INVALID])
def test_it_refuses_an_invalid_expression_saying_what_is_wrong_and_showing_the_format(expression, problem):
    with pytest.raises(InvalidCron) as caught:
        parse_cron(expression)
    assert problem in caught.value.message
    assert FORMAT_HINT in caught.value.message


def test_an_invalid_expression_is_a_400_with_the_contract_code_and_a_value_error():
    with pytest.raises(InvalidCron) as caught:
        parse_cron("0 0 25 * * *")
    assert caught.value.status == 400
    assert caught.value.code == "INVALID_CRON_EXPRESSION"
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == caught.value.message


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


def test_a_weekday_only_expression_skips_the_weekend():
    assert fires("0 0 9 * * MON-FRI", NOW, count=6) == [
        "2025-01-13T09:00:00Z", "2025-01-14T09:00:00Z", "2025-01-15T09:00:00Z",
        "2025-01-16T09:00:00Z", "2025-01-17T09:00:00Z", "2025-01-20T09:00:00Z"]


def test_weekday_names_and_numbers_seven_and_zero_all_mean_sunday():
    expected = ["2025-01-12T00:00:00Z", "2025-01-19T00:00:00Z"]
    assert fires("0 0 0 * * SUN", NOW, count=2) == expected
    assert fires("0 0 0 * * 0", NOW, count=2) == expected
    assert fires("0 0 0 * * 7", NOW, count=2) == expected
    assert fires("@weekly", NOW, count=2) == expected


def test_a_monthly_expression_fires_on_the_first_at_midnight():
    assert fires("@monthly", NOW) == ["2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z"]


def test_a_day_31_expression_skips_the_short_months():
    assert fires("0 0 12 31 * *", NOW, count=4) == [
        "2025-01-31T12:00:00Z", "2025-03-31T12:00:00Z", "2025-05-31T12:00:00Z", "2025-07-31T12:00:00Z"]


def test_yearly_and_leap_day_expressions_fire_on_their_date():
    assert fires("@yearly", NOW, count=2) == ["2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"]
    assert fires("0 0 0 29 2 *", NOW, count=2) == ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]


def test_a_five_field_expression_fires_at_second_zero():
    assert fires("*/15 * * * *", "2025-01-10T12:07:30Z") == [
        "2025-01-10T12:15:00Z", "2025-01-10T12:30:00Z", "2025-01-10T12:45:00Z"]
    assert fires("30 9 * * *", NOW, count=2) == ["2025-01-11T09:30:00Z", "2025-01-12T09:30:00Z"]


def test_hourly_fires_at_the_top_of_each_hour():
    assert fires("@hourly", "2025-01-10T12:00:00Z") == [
        "2025-01-10T13:00:00Z", "2025-01-10T14:00:00Z", "2025-01-10T15:00:00Z"]


def test_next_after_says_none_for_a_date_that_never_comes():
    never = CronSpec("0 0 0 30 2 *", ("0", "0", "0", "30", "2", "*"))
    assert never.next_after(ts(NOW), UTC) is None


###############################################################################
# Time zones and DST
###############################################################################

def test_a_schedule_in_berlin_fires_at_nine_local_which_is_eight_utc_in_winter():
    assert fires("0 0 9 * * MON-FRI", NOW, BERLIN, count=2) == ["2025-01-13T08:00:00Z", "2025-01-14T08:00:00Z"]


def test_a_schedule_in_berlin_fires_at_nine_local_which_is_seven_utc_in_summer():
    assert fires("0 0 9 * * MON-FRI", "2025-07-04T12:00:00Z", BERLIN, count=1) == ["2025-07-07T07:00:00Z"]


def test_a_time_skipped_by_spring_forward_fires_once_right_after_the_jump():
    # Berlin, 2025-03-30: 02:00 CET becomes 03:00 CEST, so 02:30 does not exist that night.
    # Vixie cron runs such a job as soon as the clock has jumped: 03:00 local = 01:00Z.
    spec = parse_cron("0 30 2 * * *")
    first = spec.next_after(ts("2025-03-29T12:00:00Z"), BERLIN)
    assert iso(first) == "2025-03-30T01:00:00Z"
    assert local(first, BERLIN) == "2025-03-30T03:00:00+02:00"
    assert fires("0 30 2 * * *", "2025-03-29T12:00:00Z", BERLIN, count=3) == [
        "2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z", "2025-04-01T00:30:00Z"]


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


def test_a_quarter_hourly_job_is_not_interrupted_by_spring_forward():
    assert fires("0 */15 * * * *", "2025-03-30T00:40:00Z", BERLIN, count=4) == [
        "2025-03-30T00:45:00Z",     # 01:45 CET
        "2025-03-30T01:00:00Z",     # 03:00 CEST: 02:00-02:45 do not exist
        "2025-03-30T01:15:00Z", "2025-03-30T01:30:00Z"]


DST_DAYS = [
    (BERLIN, "2025-03-29T12:00:00Z"), (BERLIN, "2025-10-25T12:00:00Z"),
    (NEW_YORK, "2025-03-08T12:00:00Z"), (NEW_YORK, "2025-11-01T12:00:00Z"),
    (ZoneInfo("Australia/Lord_Howe"), "2025-04-05T00:00:00Z"),     # a half-hour shift
]
DST_EXPRESSIONS = ["0 30 2 * * *", "0 0 1 * * *", "0 */15 * * * *", "0 0 * * * *", "0 0,30 1-3 * * *",
                   "30 45 * * * *"]


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
