"""Delivery windows: membership, next start, end, and cron rendering (table tests)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from herald_api.models import Window
from herald_api.windows import is_open, next_window_start, open_until, schedules

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
SEOUL = ZoneInfo("Asia/Seoul")
UTC = dt.UTC

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri"]
ALL_DAYS = [*WEEKDAYS, "Sat", "Sun"]


def window(start: str, end: str, days: list[str] | None = None) -> Window:
    return Window.model_validate({"days": days or ALL_DAYS, "start": start, "end": end})


@pytest.mark.parametrize(("win", "every", "expected"), [
    (window("09:00", "18:00", WEEKDAYS), 15, ["0,15,30,45 9-17 * * 1,2,3,4,5"]),
    (window("09:10", "17:50", WEEKDAYS), 15,
     ["10,25,40,55 9-16 * * 1,2,3,4,5", "10,25,40 17 * * 1,2,3,4,5"]),
    (window("09:00", "10:00", ["Mon"]), 60, ["0 9 * * 1"]),
    (window("09:30", "12:00", ["Mon"]), 60, ["30 9-11 * * 1"]),
    (window("09:00", "09:05", ["Sun"]), 1, ["0,1,2,3,4 9 * * 0"]),
    (window("08:20", "09:00", ["Tue"]), 20, ["20,40 8 * * 2"]),
    (window("08:00", "08:30", ["Wed"]), 30, ["0 8 * * 3"]),
    # crossing midnight: the part after midnight runs on the next day
    (window("22:00", "02:00", ["Fri"]), 30, ["0,30 22-23 * * 5", "0,30 0-1 * * 6"]),
    (window("23:45", "00:15", ["Sat"]), 10, ["45,55 23 * * 6", "5 0 * * 0"]),
    (window("22:00", "01:00", ["Sun", "Sat"]), 60, ["0 22-23 * * 0,6", "0 0 * * 0,1"]),
])
def test_schedules(win: Window, every: int, expected: list[str]) -> None:
    assert schedules(win, every) == expected


@pytest.mark.parametrize("every", [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60])
def test_every_resume_interval_starts_runs_from_the_window_start_to_its_end(every: int) -> None:
    win = window("09:07", "11:53", ["Mon"])
    minutes = []
    for line in schedules(win, every):
        mins, hours = line.split()[:2]
        first, _, last = hours.partition("-")
        for hour in range(int(first), int(last or first) + 1):
            minutes += [hour * 60 + int(m) for m in mins.split(",")]
    assert minutes == list(range(9 * 60 + 7, 11 * 60 + 53, every))


def local(zone: ZoneInfo, *args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=zone, fold=fold)  # type: ignore[misc]


@pytest.mark.parametrize(("zone", "win", "at", "inside"), [
    # an ordinary business window, Seoul; 2026-12-07 is a Monday
    (SEOUL, window("09:00", "18:00", WEEKDAYS), local(SEOUL, 2026, 12, 7, 9, 0), True),
    (SEOUL, window("09:00", "18:00", WEEKDAYS), local(SEOUL, 2026, 12, 7, 17, 59), True),
    (SEOUL, window("09:00", "18:00", WEEKDAYS), local(SEOUL, 2026, 12, 7, 18, 0), False),
    (SEOUL, window("09:00", "18:00", WEEKDAYS), local(SEOUL, 2026, 12, 6, 12, 0), False),
    (SEOUL, window("09:00", "18:00", WEEKDAYS), dt.datetime(2026, 12, 7, 0, 30, tzinfo=UTC),
     True),
    # crossing midnight belongs to the day it starts on (Fri 22:00 → Sat 02:00)
    (UTC, window("22:00", "02:00", ["Fri"]), local(UTC, 2026, 12, 5, 1, 59), True),
    (UTC, window("22:00", "02:00", ["Fri"]), local(UTC, 2026, 12, 6, 1, 0), False),
    (UTC, window("22:00", "02:00", ["Fri"]), local(UTC, 2026, 12, 4, 1, 0), False),
    # New York springs forward 2026-03-08 02:00 → 03:00: a 02:30 start opens at 03:00
    (NY, window("02:30", "04:00", ["Sun"]), local(NY, 2026, 3, 8, 1, 59), False),
    (NY, window("02:30", "04:00", ["Sun"]), local(NY, 2026, 3, 8, 3, 0), True),
    # a window that ends inside the gap closes when the clock jumps
    (NY, window("01:00", "02:30", ["Sun"]), local(NY, 2026, 3, 8, 1, 59), True),
    (NY, window("01:00", "02:30", ["Sun"]), local(NY, 2026, 3, 8, 3, 0), False),
    # New York falls back 2026-11-01 02:00 → 01:00: both 01:15s are inside
    (NY, window("01:00", "01:30", ["Sun"]), local(NY, 2026, 11, 1, 1, 15, fold=0), True),
    (NY, window("01:00", "01:30", ["Sun"]), local(NY, 2026, 11, 1, 1, 15, fold=1), True),
    (NY, window("01:00", "01:30", ["Sun"]), local(NY, 2026, 11, 1, 1, 45, fold=0), False),
    # Berlin springs forward 2026-03-29 02:00 → 03:00 and falls back 2026-10-25 03:00 → 02:00
    (BERLIN, window("02:15", "05:00", ["Sun"]), local(BERLIN, 2026, 3, 29, 3, 0), True),
    (BERLIN, window("02:15", "05:00", ["Sun"]), local(BERLIN, 2026, 3, 29, 1, 59), False),
    (BERLIN, window("02:00", "02:30", ["Sun"]), local(BERLIN, 2026, 10, 25, 2, 10, fold=0), True),
    (BERLIN, window("02:00", "02:30", ["Sun"]), local(BERLIN, 2026, 10, 25, 2, 10, fold=1), True),
    (BERLIN, window("02:00", "02:30", ["Sun"]), local(BERLIN, 2026, 10, 25, 2, 40, fold=0), False),
])
def test_is_open(zone: ZoneInfo, win: Window, at: dt.datetime, inside: bool) -> None:
    assert is_open([win], zone, at) is inside


def test_no_windows_means_any_time() -> None:
    now = dt.datetime(2026, 12, 3, 3, 30, tzinfo=UTC)
    assert is_open([], UTC, now)
    assert next_window_start([], UTC, now) is None


@pytest.mark.parametrize(("zone", "win", "now", "expected"), [
    # Thursday night in Seoul → Friday 09:00 +09:00
    (SEOUL, window("09:00", "18:00", WEEKDAYS), local(SEOUL, 2026, 12, 3, 20, 0),
     "2026-12-04T09:00:00+09:00"),
    # Friday evening → Monday
    (SEOUL, window("09:00", "18:00", WEEKDAYS), local(SEOUL, 2026, 12, 4, 18, 0),
     "2026-12-07T09:00:00+09:00"),
    # open now: the next one, not the current one
    (SEOUL, window("09:00", "18:00", WEEKDAYS), local(SEOUL, 2026, 12, 7, 10, 0),
     "2026-12-08T09:00:00+09:00"),
    # a start in the spring-forward gap moves to the first minute that exists
    (NY, window("02:30", "04:00", ["Sun"]), local(NY, 2026, 3, 7, 12, 0),
     "2026-03-08T03:00:00-04:00"),
    (BERLIN, window("02:15", "05:00", ["Sun"]), local(BERLIN, 2026, 3, 28, 12, 0),
     "2026-03-29T03:00:00+02:00"),
    # a start in the repeated hour: its first occurrence
    (NY, window("01:30", "03:00", ["Sun"]), local(NY, 2026, 10, 31, 12, 0),
     "2026-11-01T01:30:00-04:00"),
    (BERLIN, window("02:30", "04:00", ["Sun"]), local(BERLIN, 2026, 10, 24, 12, 0),
     "2026-10-25T02:30:00+02:00"),
])
def test_next_window_start(zone: ZoneInfo, win: Window, now: dt.datetime, expected: str) -> None:
    start = next_window_start([win], zone, now)
    assert start is not None
    assert start.isoformat() == expected


@pytest.mark.parametrize(("zone", "wins", "now", "expected"), [
    (SEOUL, [window("09:00", "18:00", WEEKDAYS)], local(SEOUL, 2026, 12, 7, 10, 0),
     "2026-12-07T18:00:00+09:00"),
    # back-to-back windows are one
    (UTC, [window("09:00", "12:00"), window("12:00", "13:00")], local(UTC, 2026, 12, 7, 10, 0),
     "2026-12-07T13:00:00+00:00"),
    # across midnight
    (UTC, [window("22:00", "02:00", ["Fri"])], local(UTC, 2026, 12, 4, 23, 0),
     "2026-12-05T02:00:00+00:00"),
    # an end inside the spring-forward gap: when the clock jumps past it
    (NY, [window("01:00", "02:30", ["Sun"])], local(NY, 2026, 3, 8, 1, 30),
     "2026-03-08T03:00:00-04:00"),
])
def test_open_until(zone: ZoneInfo, wins: list[Window], now: dt.datetime, expected: str) -> None:
    end = open_until(wins, zone, now)
    assert end is not None
    assert end.isoformat() == expected


def test_open_until_is_none_when_closed() -> None:
    assert open_until([window("09:00", "10:00")], UTC, local(UTC, 2026, 12, 7, 11, 0)) is None
