"""Rotation windows (rotator.window): DST days in three zones, overnight windows, the cron form
(including where APScheduler's own zoneinfo walk goes wrong), validation, start_at/may_start, and
the window invariants as a property."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator import config
from rotator.errors import ConfigError
from rotator.window import Window, may_start, start_at

AMS, NYC, SYD = "Europe/Amsterdam", "America/New_York", "Australia/Sydney"
NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)   # the "now" parse checks from, fixed


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def local(zone: str, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=ZoneInfo(zone))


def daily(start: str, end: str, zone: str = "UTC", days: str = "*") -> Window:
    return Window.parse(days=days, start=start, end=end, timezone=zone, now=NOW)


def cron(expr: str, duration: timedelta, zone: str = "UTC") -> Window:
    return Window.parse(cron=expr, duration=duration, timezone=zone, now=NOW)


def interval_on(window: Window, day_start: datetime) -> tuple[datetime, datetime]:
    opens = window.opening(day_start)
    assert opens is not None
    closes = window.closing(opens)
    assert closes is not None
    return opens, closes


# --- days/start/end across DST changes ------------------------------------------------------------

# 2025: Amsterdam springs forward 30 Mar, falls back 26 Oct; New York 9 Mar / 2 Nov;
# Sydney (southern hemisphere) springs forward 5 Oct, falls back 6 Apr.
DST_DAYS = [
    (AMS, (2025, 3, 30), utc(2025, 3, 30, 7), utc(2025, 3, 30, 14)),    # CEST, +2
    (AMS, (2025, 10, 26), utc(2025, 10, 26, 8), utc(2025, 10, 26, 15)),  # CET, +1
    (NYC, (2025, 3, 9), utc(2025, 3, 9, 13), utc(2025, 3, 9, 20)),      # EDT, -4
    (NYC, (2025, 11, 2), utc(2025, 11, 2, 14), utc(2025, 11, 2, 21)),   # EST, -5
    (SYD, (2025, 10, 5), utc(2025, 10, 4, 22), utc(2025, 10, 5, 5)),    # AEDT, +11
    (SYD, (2025, 4, 6), utc(2025, 4, 5, 23), utc(2025, 4, 6, 6)),       # AEST, +10
]


@pytest.mark.parametrize("zone, day, opens, closes", DST_DAYS)
def test_window_nine_to_four_stays_nine_to_four_local_on_dst_days(zone, day, opens, closes):
    window = daily("09:00", "16:00", zone)
    assert interval_on(window, local(zone, *day)) == (opens, closes)
    assert opens.astimezone(ZoneInfo(zone)).hour == 9


@pytest.mark.parametrize("zone, day, length", [
    (AMS, (2025, 3, 30), timedelta(hours=2)), (AMS, (2025, 10, 26), timedelta(hours=4)),
    (NYC, (2025, 3, 9), timedelta(hours=2)), (NYC, (2025, 11, 2), timedelta(hours=4)),
    (SYD, (2025, 10, 5), timedelta(hours=2)), (SYD, (2025, 4, 6), timedelta(hours=4)),
    (AMS, (2025, 3, 31), timedelta(hours=3)),                    # an ordinary day
])
def test_window_spanning_the_transition_has_its_real_length(zone, day, length):
    opens, closes = interval_on(daily("01:00", "04:00", zone), local(zone, *day))
    # 01:00 local, the first one when repeated (an ambiguous aware time never equals one in another zone)
    assert opens == local(zone, *day, 1).astimezone(timezone.utc)
    assert closes - opens == length


@pytest.mark.parametrize("zone, saturday, opens, length", [
    (AMS, (2025, 3, 29), utc(2025, 3, 29, 21), timedelta(hours=7)),
    (AMS, (2025, 10, 25), utc(2025, 10, 25, 20), timedelta(hours=9)),
    (NYC, (2025, 3, 8), utc(2025, 3, 9, 3), timedelta(hours=7)),
    (NYC, (2025, 11, 1), utc(2025, 11, 2, 2), timedelta(hours=9)),
])
def test_window_overnight_across_a_transition_ends_at_local_end_time(zone, saturday, opens, length):
    window = daily("22:00", "06:00", zone, days="sat")
    assert interval_on(window, local(zone, *saturday)) == (opens, opens + length)
    assert (opens + length).astimezone(ZoneInfo(zone)).hour == 6


@pytest.mark.parametrize("zone, day, opens", [
    (AMS, (2025, 3, 30), utc(2025, 3, 30, 1, 15)),    # 03:15 CEST
    (NYC, (2025, 3, 9), utc(2025, 3, 9, 7, 15)),      # 03:15 EDT
    (AMS, (2025, 3, 29), utc(2025, 3, 29, 1, 15)),    # the day before: 02:15 CET, as written
])
def test_window_inside_the_skipped_hour_opens_shifted_forward_that_day(zone, day, opens):
    window = daily("02:15", "02:45", zone)
    assert interval_on(window, local(zone, *day)) == (opens, opens + timedelta(minutes=30))


def test_window_whose_end_lands_before_its_shifted_start_keeps_its_wall_clock_length():
    # 02:30 -> 03:30 CEST, but 03:10 CEST exists: the window runs its 40 minutes from 03:30.
    window = daily("02:30", "03:10", AMS)
    assert interval_on(window, local(AMS, 2025, 3, 30)) == (utc(2025, 3, 30, 1, 30), utc(2025, 3, 30, 2, 10))


def test_window_start_in_the_repeated_hour_means_its_first_occurrence():
    window = daily("02:30", "05:00", AMS)
    assert interval_on(window, local(AMS, 2025, 10, 26)) == (utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 4))


# --- opening, closing, weekdays, overnight ------------------------------------------------------

def test_window_opening_inside_before_and_after_skips_the_weekend():
    window = daily("09:00", "16:00", days="mon-fri")    # 2025-06-02 is a Monday
    wednesday = utc(2025, 6, 4, 12, 30)
    assert window.opening(wednesday) == wednesday and window.contains(wednesday)
    assert window.closing(wednesday) == utc(2025, 6, 4, 16)
    assert window.opening(utc(2025, 6, 4, 7)) == utc(2025, 6, 4, 9)
    assert window.opening(utc(2025, 6, 4, 17)) == utc(2025, 6, 5, 9)
    assert window.opening(utc(2025, 6, 6, 16)) == utc(2025, 6, 9, 9)        # Friday at closing -> Monday
    assert window.opening(utc(2025, 6, 7, 12)) == utc(2025, 6, 9, 9)        # Saturday
    assert window.contains(utc(2025, 6, 4, 9)) and not window.contains(utc(2025, 6, 4, 16))
    assert window.closing(utc(2025, 6, 4, 17)) is None
    # any zone in, UTC out
    assert window.opening(local(AMS, 2025, 6, 4, 8)) == utc(2025, 6, 4, 9)


def test_window_overnight_belongs_to_the_day_it_starts():
    friday_night = daily("22:00", "02:00", days="fri")
    assert friday_night.contains(utc(2025, 6, 7, 1))              # Saturday 01:00, started Friday
    assert not friday_night.contains(utc(2025, 6, 6, 1))          # Friday 01:00 would have started Thursday
    assert friday_night.opening(utc(2025, 6, 7, 3)) == utc(2025, 6, 13, 22)
    assert friday_night.closing(utc(2025, 6, 6, 23)) == utc(2025, 6, 7, 2)
    saturday_night = daily("22:00", "02:00", days="sat")
    assert not saturday_night.contains(utc(2025, 6, 7, 1)) and saturday_night.contains(utc(2025, 6, 8, 1))


def test_window_days_lists_ranges_and_whole_days():
    assert daily("09:00", "10:00", days="fri-mon").days == {4, 5, 6, 0}     # a range may wrap
    assert daily("09:00", "10:00", days="Sat, sun").days == {5, 6}
    weekend = Window.parse(days="sat,sun", now=NOW)                           # no times: whole days
    assert weekend.opening(utc(2025, 6, 4)) == utc(2025, 6, 7)
    assert weekend.closing(utc(2025, 6, 7, 12)) == utc(2025, 6, 9)            # Sat + Sun merge into one


# --- the cron form ------------------------------------------------------------------------------

def test_window_cron_weekdays_in_local_time():
    window = cron("0 9 * * mon-fri", timedelta(hours=7), AMS)
    assert window.contains(utc(2025, 3, 28, 14, 30))                          # Friday, CET
    assert interval_on(window, utc(2025, 3, 28, 15)) == (utc(2025, 3, 31, 7), utc(2025, 3, 31, 14))  # Monday, CEST


def test_window_cron_duration_is_elapsed_time_across_dst():
    window = cron("0 0 * * *", timedelta(hours=7), AMS)
    # midnight CET, 7 real hours later it is 08:00 CEST
    assert interval_on(window, utc(2025, 3, 29, 22, 30)) == (utc(2025, 3, 29, 23), utc(2025, 3, 30, 6))


def test_window_cron_keeps_the_midnight_after_spring_forward():
    # APScheduler 3.11's CronTrigger in America/New_York goes from 9 March straight to 11 March.
    window = cron("0 0 * * *", timedelta(hours=1), NYC)
    assert window.opening(utc(2025, 3, 9, 8)) == utc(2025, 3, 10, 4)


def test_window_cron_in_the_skipped_hour_is_shifted_and_seen_from_inside():
    window = cron("30 2 * * *", timedelta(hours=1), AMS)
    assert window.opening(utc(2025, 3, 30)) == utc(2025, 3, 30, 1, 30)        # 02:30 -> 03:30 CEST
    assert window.contains(utc(2025, 3, 30, 2))       # CronTrigger, asked from 04:00 CEST, misses it
    assert window.closing(utc(2025, 3, 30, 2)) == utc(2025, 3, 30, 2, 30)


def test_window_cron_opens_at_both_occurrences_of_a_repeated_hour():
    window = cron("30 2 * * *", timedelta(minutes=30), AMS)
    assert window.closing(utc(2025, 10, 26, 0, 40)) == utc(2025, 10, 26, 1)    # 02:30 CEST
    assert window.opening(utc(2025, 10, 26, 1, 10)) == utc(2025, 10, 26, 1, 30)  # 02:30 CET
    quarterly = cron("*/15 * * * *", timedelta(minutes=15), AMS)
    night = utc(2025, 10, 25, 23)
    assert all(quarterly.contains(night + timedelta(minutes=m)) for m in range(0, 240, 7))


def test_window_cron_on_29_february_opens_in_the_next_leap_year():
    window = cron("0 0 29 2 *", timedelta(hours=1))
    assert window.opening(utc(2025, 3, 1)) == utc(2028, 2, 29)


# --- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    dict(cron="0 0 30 2 *", duration=timedelta(hours=1)),
    dict(cron="0 0 31 4 *", duration=timedelta(hours=1)),
    dict(days="", start="09:00", end="16:00"),
])
def test_window_that_never_opens_is_refused(fields):
    with pytest.raises(ValueError, match="never opens"):
        Window.parse(**fields, now=NOW)


@pytest.mark.parametrize("fields, message", [
    (dict(days="mnd", start="09:00", end="16:00"), "days: unknown day 'mnd' (use mon, tue"),
    (dict(days="mon-frii", start="09:00", end="16:00"), "days: unknown day 'frii'"),
    (dict(days="*", start="9am", end="16:00"), "start: expected HH:MM"),
    (dict(days="*", start="09:00", end="16:60"), "end: expected HH:MM"),
    (dict(days="*", start="24:00", end="16:00"), "start: expected HH:MM"),
    (dict(days="*", start="09:00"), "end: required"),
    (dict(days="*", start="09:00", end="09:00"), "empty window"),
    (dict(days="*", start="09:00", end="16:00", timezone="Europe/Amsterdm"),
     "timezone: unknown time zone 'Europe/Amsterdm'"),
    (dict(cron="0 9 * * *", duration=timedelta(hours=1), timezone="../etc/passwd"), "timezone: unknown time zone"),
    (dict(days="*", start="09:00", end="16:00", cron="0 9 * * *"), "give days/start/end or cron/duration, not both"),
    (dict(start="09:00", end="16:00", duration=timedelta(hours=1)), "not both"),
    (dict(cron="0 9 * * mon-fri"), "duration: required with cron"),
    (dict(duration=timedelta(hours=1)), "cron: required with duration"),
    (dict(cron="0 9 * * *", duration=timedelta(0)), "duration: must be positive"),
    (dict(cron="0 9 * * *", duration=timedelta(days=8)), "duration: at most 7d"),
    (dict(cron="0 9 * *", duration=timedelta(hours=1)), "cron: Wrong number of fields"),
    (dict(cron="61 9 * * *", duration=timedelta(hours=1)), "cron: "),
    (dict(cron="0 9 * * 1-5", duration=timedelta(hours=1)), "cron: write the day of week '1-5' with names"),
    (dict(cron="0 9 1 * mon", duration=timedelta(hours=1)), "cron: restrict the day of month or the day of week"),
    (dict(), "give days/start/end"),
])
def test_window_bad_fields_are_named(fields, message):
    with pytest.raises(ValueError) as caught:
        Window.parse(**fields, now=NOW)
    assert message in str(caught.value)


def test_window_config_error_names_the_field():
    bad = {"days": "mon-fri", "start": "09:00", "end": "16:00", "timezone": "Europe/Amsterdm"}
    with pytest.raises(ConfigError) as caught:
        config.load(data={"rotator": {"window": bad}})
    assert "rotator.window" in str(caught.value) and "timezone" in str(caught.value)
    good = config.load(data={"rotator": {"window": {**bad, "timezone": AMS}}})
    assert good.rotator.window.build() == daily("09:00", "16:00", AMS, days="mon-fri")


def test_window_describe_for_people():
    assert daily("09:00", "16:00", AMS, days="mon-fri").describe() == "mon-fri 09:00-16:00 Europe/Amsterdam"
    assert daily("22:00", "02:00").describe() == "every day 22:00-02:00 (into the next day) UTC"
    assert cron("0 9 * * mon-fri", timedelta(hours=7), AMS).describe() == \
        "cron '0 9 * * mon-fri' for 7h (Europe/Amsterdam)"


# --- start_at / may_start -----------------------------------------------------------------------

OFFICE = daily("09:00", "16:00", days="mon-fri")


def test_window_start_at_waits_for_an_opening_before_the_deadline():
    due = utc(2025, 6, 6, 18)                                  # Friday evening
    assert start_at(None, due, utc(2025, 6, 7)) == (due, False)
    assert start_at(OFFICE, due, utc(2025, 6, 20)) == (utc(2025, 6, 9, 9), False)
    assert start_at(OFFICE, utc(2025, 6, 9, 10), utc(2025, 6, 20)) == (utc(2025, 6, 9, 10), False)   # inside
    assert start_at(OFFICE, due, utc(2025, 6, 9, 9)) == (utc(2025, 6, 9, 9), False)   # opens at the deadline


def test_window_start_at_forces_the_deadline_when_no_opening_comes_in_time():
    due = utc(2025, 6, 6, 18)
    assert start_at(OFFICE, due, utc(2025, 6, 8, 12)) == (utc(2025, 6, 8, 12), True)
    # already past the deadline: now (at due), outside the window
    assert start_at(OFFICE, due, utc(2025, 6, 1)) == (due, True)


def test_window_may_start_agrees_with_start_at():
    due, deadline = utc(2025, 6, 6, 18), utc(2025, 6, 8, 12)
    assert not may_start(OFFICE, utc(2025, 6, 6, 17), due, deadline)      # not yet due
    assert not may_start(OFFICE, utc(2025, 6, 7, 10), due, deadline)      # due, window shut
    assert may_start(OFFICE, utc(2025, 6, 8, 12), due, deadline)          # the deadline forces it
    assert may_start(OFFICE, utc(2025, 6, 9, 9), due, utc(2025, 6, 20))   # window open
    assert may_start(None, due, due, deadline)
    for deadline in (utc(2025, 6, 8, 12), utc(2025, 6, 20), utc(2025, 6, 1)):
        start, _ = start_at(OFFICE, due, deadline)
        assert may_start(OFFICE, start, due, deadline)
        assert not may_start(OFFICE, start - timedelta(minutes=1), due, deadline) or start == due


# --- invariants ---------------------------------------------------------------------------------

ZONES = ["UTC", AMS, NYC, SYD, "Australia/Lord_Howe", "Asia/Kolkata"]
TRANSITIONS = [utc(2025, 3, 30, 1), utc(2025, 10, 26, 1), utc(2025, 3, 9, 7), utc(2025, 11, 2, 6),
               utc(2025, 4, 5, 16), utc(2025, 10, 4, 16), utc(2025, 4, 5, 15), utc(2025, 10, 4, 15, 30)]
CRONS = [("0 9 * * mon-fri", timedelta(hours=7)), ("30 2 * * *", timedelta(minutes=45)),
         ("*/20 1-3 * * *", timedelta(minutes=10)), ("0 0 * * sun", timedelta(days=2)),
         ("15 * * * *", timedelta(minutes=1)), ("0 2 * * sat", timedelta(hours=26))]


@st.composite
def windows(draw) -> Window:
    zone = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):
        expr, duration = draw(st.sampled_from(CRONS))
        return cron(expr, duration, zone)
    days = draw(st.sets(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1))
    start = draw(st.integers(0, 24 * 60 - 1))
    end = start + draw(st.integers(1, 24 * 60 if start == 0 else 24 * 60 - 1))   # never == start
    end = end - 24 * 60 if end > 24 * 60 else end                                # overnight
    end = 0 if end == 24 * 60 and start and draw(st.booleans()) else end         # "00:00" = "24:00"
    return daily(f"{start // 60:02d}:{start % 60:02d}", f"{end // 60:02d}:{end % 60:02d}", zone, ",".join(days))


instants = st.one_of(
    st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2031, 1, 1), timezones=st.just(timezone.utc)),
    st.builds(lambda t, m: t + timedelta(minutes=m), st.sampled_from(TRANSITIONS), st.integers(-2 * 1440, 2 * 1440)),
)


@settings(max_examples=150, deadline=None)
@given(window=windows(), moment=instants)
def test_window_opening_is_the_first_instant_inside(window, moment):
    opens = window.opening(moment)
    assert opens is not None and opens >= moment
    assert window.contains(opens)
    assert window.contains(moment) == (opens == moment)
    if opens > moment:
        assert not window.contains(opens - timedelta(microseconds=1))
    closes = window.closing(opens)
    assert closes is not None and closes > opens
    assert window.contains(closes - timedelta(microseconds=1))
    if closes - opens < timedelta(days=30):    # not a window left open past closing()'s walk
        assert not window.contains(closes)
