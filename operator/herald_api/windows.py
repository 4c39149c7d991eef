"""Delivery windows: when a campaign may send, and the cron schedules that start its runs.

A window is `[start, end)` in local wall-clock time of the campaign's zone, opening on each
of its `days`; an `end` earlier than `start` closes it on the next day. Whether a moment is
inside is decided by its local wall-clock time alone, which gives the contract's daylight
saving rules for free: a start inside a spring-forward gap never shows on the clock, so the
window opens at the first minute after the gap; an hour repeated at fall-back shows twice,
and both occurrences are inside.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from herald_api.models import DAYS, Window

_MINUTE = dt.timedelta(minutes=1)
# Cron numbers days from Sunday = 0.
_CRON_DAY = {day: (i + 1) % 7 for i, day in enumerate(DAYS)}


def minutes_of(resume_every: str) -> int:
    """'15m' → 15."""
    return int(resume_every.rstrip("m"))


def _hhmm(value: str) -> dt.time:
    hours, minutes = value.split(":")
    return dt.time(int(hours), int(minutes))


def _bounds(window: Window, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The naive local start and end of `window` opening on `day`."""
    start = dt.datetime.combine(day, _hhmm(window.start))
    end = dt.datetime.combine(day, _hhmm(window.end))
    if end <= start:
        end += dt.timedelta(days=1)
    return start, end


def _opens_on(window: Window, day: dt.date) -> bool:
    return DAYS[day.weekday()] in window.days


def is_open(windows: Sequence[Window], zone: ZoneInfo, at: dt.datetime) -> bool:
    """Whether the aware moment `at` is inside a window (no windows: always)."""
    if not windows:
        return True
    local = at.astimezone(zone).replace(tzinfo=None)
    for window in windows:
        for day in (local.date() - dt.timedelta(days=1), local.date()):
            if _opens_on(window, day):
                start, end = _bounds(window, day)
                if start <= local < end:
                    return True
    return False


def _aware(local: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The first moment the wall clock shows `local` or, inside a gap, the first after it."""
    moment = local
    while True:
        aware = moment.replace(tzinfo=zone, fold=0)
        if aware.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None) == moment:
            return aware
        moment += _MINUTE  # a wall time the clock skips; gaps are whole minutes


def next_window_start(
    windows: Sequence[Window], zone: ZoneInfo, now: dt.datetime
) -> dt.datetime | None:
    """The first window opening strictly after `now`, in the campaign's zone."""
    if not windows:
        return None
    today = now.astimezone(zone).date()
    starts = [
        _aware(_bounds(window, day)[0], zone)
        for window in windows
        for day in (today + dt.timedelta(days=n) for n in range(9))
        if _opens_on(window, day)
    ]
    future = [s for s in starts if s > now]
    return min(future) if future else None


def open_until(windows: Sequence[Window], zone: ZoneInfo, now: dt.datetime) -> dt.datetime | None:
    """When the window open at `now` closes (None: no windows, never; or not open now).

    Overlapping and back-to-back windows count as one.
    """
    if not windows or not is_open(windows, zone, now):
        return None
    moment = now
    for _ in range(8 * 24):  # windows longer than a week are back-to-back every day
        local = moment.astimezone(zone).replace(tzinfo=None)
        ends = [
            _aware(end, zone)
            for window in windows
            for day in (local.date() - dt.timedelta(days=1), local.date())
            if _opens_on(window, day)
            for start, end in [_bounds(window, day)]
            if start <= local < end
        ]
        moment = max(ends)
        if not is_open(windows, zone, moment):
            return moment
    return moment


def schedules(window: Window, every_minutes: int) -> list[str]:
    """Cron lines (local time) starting a run every `every_minutes` from the window's start.

    `every_minutes` divides 60, so the minutes of every hour are the same set shifted from
    the start minute; only the first and last hour of a window can have fewer of them.
    Hours with the same minutes and the same days share one line.
    """
    start, end = _bounds(window, dt.date(2000, 1, 3))  # any date; only the clock matters
    phase = start.minute % every_minutes
    groups: list[tuple[tuple[int, ...], int, list[int]]] = []  # (minutes, day shift, hours)
    hour = start.replace(minute=0)
    while hour < end:
        minutes = tuple(
            m for m in range(phase, 60, every_minutes)
            if start <= hour.replace(minute=m) < end
        )
        shift = (hour.date() - start.date()).days
        if minutes:
            if groups and groups[-1][0] == minutes and groups[-1][1] == shift:
                groups[-1][2].append(hour.hour)
            else:
                groups.append((minutes, shift, [hour.hour]))
        hour += dt.timedelta(hours=1)
    lines = []
    for minutes, shift, hours in groups:
        days = sorted((_CRON_DAY[d] + shift) % 7 for d in window.days)
        hour_field = str(hours[0]) if len(hours) == 1 else f"{hours[0]}-{hours[-1]}"
        lines.append(f"{','.join(map(str, minutes))} {hour_field} * * {','.join(map(str, days))}")
    return lines


def max_length(window: Window) -> dt.timedelta:
    start, end = _bounds(window, dt.date(2000, 1, 3))
    return end - start
