"""Who may be rung now: do-not-disturb, quiet hours and a site's away mode.

Sans-I/O: the rules take the time they are asked about, so they are tested to the minute
against any clock, across midnight and daylight saving changes. Quiet hours are wall-clock
times in the site's time zone: "22:00 to 07:00" stays 22:00 to 07:00 after the clocks change,
and a window that starts on Friday night ends on Saturday morning.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from intercom_protocol.calls import iso

from .records import User, UserKind

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 7
MAX_DND_S = 366 * 86400
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class Unavailable(StrEnum):
    """Why a resident is not rung."""
    AWAY = "away"
    DO_NOT_DISTURB = "do_not_disturb"
    QUIET_HOURS = "quiet_hours"


class RuleError(ValueError):
    """A setting that cannot be kept; the message names what is wrong."""


@dataclass(frozen=True)
class QuietWindow:
    #: The days the window starts on (0 is Monday); one that ends before it starts ends the next
    #: day, and one that ends when it starts is the whole day.
    days: frozenset[int]
    start: time
    end: time

    def covers(self, local: datetime) -> bool:
        now, day = local.time().replace(tzinfo=None), local.weekday()
        if self.start == self.end:  # the whole day
            return day in self.days
        if self.start < self.end:
            return day in self.days and self.start <= now < self.end
        return (day in self.days and now >= self.start) or ((day - 1) % 7 in self.days and now < self.end)

    def as_json(self) -> dict[str, Any]:
        return {"days": [DAYS[d] for d in sorted(self.days)], "start": self.start.strftime("%H:%M"),
                "end": self.end.strftime("%H:%M")}

    @classmethod
    def parse(cls, value: Any, where: str) -> QuietWindow:
        if not isinstance(value, dict) or set(value) - {"days", "start", "end"} or not {"start", "end"} <= set(value):
            raise RuleError(f"{where} must be {{days, start, end}}, e.g. "
                            '{"days": ["mon", "tue"], "start": "22:00", "end": "07:00"}')
        days = value.get("days", list(DAYS))
        if not isinstance(days, list) or not days or not all(d in DAYS for d in days):
            raise RuleError(f"{where}.days must be a non-empty list of {', '.join(DAYS)}")
        start, end = (_clock(value[k], f"{where}.{k}") for k in ("start", "end"))
        return cls(frozenset(DAYS.index(d) for d in days), start, end)


def _clock(value: Any, where: str) -> time:
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if match is None:
        raise RuleError(f"{where} must be a time of day as HH:MM, such as 07:30")
    return time(int(match[1]), int(match[2]))


#: The IANA time zones this machine knows (its tzdata); a site's must be one of them.
TIME_ZONES = frozenset(available_timezones())


def zone(name: Any) -> ZoneInfo:
    """An IANA time zone such as Europe/Berlin."""
    if not isinstance(name, str) or name not in TIME_ZONES:
        raise RuleError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin or UTC")
    return ZoneInfo(name)


@dataclass(frozen=True)
class ResidentRules:
    do_not_disturb: bool = False
    #: When do-not-disturb ends by itself; None: until switched off.
    until: float | None = None
    quiet_hours: tuple[QuietWindow, ...] = ()

    def dnd_on(self, now: float) -> bool:
        """Do-not-disturb is on and has not ended by itself."""
        return self.do_not_disturb and (self.until is None or now < self.until)

    def as_json(self) -> dict[str, Any]:
        return {"do_not_disturb": {"on": self.do_not_disturb, "until": iso(self.until) if self.until else None},
                "quiet_hours": [w.as_json() for w in self.quiet_hours]}


@dataclass(frozen=True)
class SiteRules:
    away: bool = False
    time_zone: str = "UTC"

    def as_json(self) -> dict[str, Any]:
        return {"away": self.away, "time_zone": self.time_zone}


def unavailable(resident: ResidentRules, site: SiteRules, now: float) -> Unavailable | None:
    """Why this resident may not be rung at `now` (a Unix time), or None."""
    if site.away:
        return Unavailable.AWAY
    if resident.dnd_on(now):
        return Unavailable.DO_NOT_DISTURB
    if resident.quiet_hours:
        local = datetime.fromtimestamp(now, zone(site.time_zone))
        if any(w.covers(local) for w in resident.quiet_hours):
            return Unavailable.QUIET_HOURS
    return None


def parse_resident(body: dict[str, Any], current: ResidentRules, now: float) -> ResidentRules:
    """A change of a resident's rules: `do_not_disturb` {on, for_s} and/or `quiet_hours`."""
    dnd, until = current.do_not_disturb, current.until
    if "do_not_disturb" in body:
        value = body["do_not_disturb"]
        if not isinstance(value, dict) or set(value) - {"on", "for_s"} or not isinstance(value.get("on"), bool):
            raise RuleError('do_not_disturb must be {"on": true|false}, with "for_s" to end it by itself')
        dnd, until = value["on"], None
        if "for_s" in value:
            length = value["for_s"]
            if isinstance(length, bool) or not isinstance(length, int | float) or not 0 < length <= MAX_DND_S:
                raise RuleError("do_not_disturb.for_s must be a number of seconds, up to a year")
            until = now + float(length)
    quiet = current.quiet_hours
    if "quiet_hours" in body:
        windows = body["quiet_hours"]
        if not isinstance(windows, list) or len(windows) > MAX_WINDOWS:
            raise RuleError(f"quiet_hours must be a list of at most {MAX_WINDOWS} windows")
        quiet = tuple(QuietWindow.parse(w, f"quiet_hours[{i}]") for i, w in enumerate(windows))
    return ResidentRules(dnd, until if dnd else None, quiet)


def parse_site(body: dict[str, Any], current: SiteRules) -> SiteRules:
    """A change of a site's rules: `away` and/or `time_zone`."""
    away = body.get("away", current.away)
    if not isinstance(away, bool):
        raise RuleError("away must be true or false")
    time_zone = body.get("time_zone", current.time_zone)
    zone(time_zone)
    return SiteRules(away, time_zone)


class RuleBook:
    """Every resident's and site's rules, in memory: a press reads no disk. Kept in the store
    and read again when another process changed it (`reload`)."""

    def __init__(self, store: Any, default_time_zone: str) -> None:
        self.store = store
        self.default_time_zone = default_time_zone
        self._residents: dict[str, ResidentRules] = {}
        self._sites: dict[str, SiteRules] = {}
        #: Told of each change made here: ("resident", user_id) or ("site", site_id).
        self.listeners: list[Callable[[str, str], None]] = []

    async def reload(self) -> None:
        """At start, and when another process changed the rules."""
        residents, sites = await self.store.rules.availability_rules()
        self._residents = {user_id: ResidentRules(bool(r["do_not_disturb"]), r["until"], tuple(
            QuietWindow.parse(w, "quiet_hours") for w in r["quiet_hours"])) for user_id, r in residents.items()}
        self._sites = {site_id: SiteRules(bool(r["away"]), r["time_zone"]) for site_id, r in sites.items()}

    def resident(self, user_id: str) -> ResidentRules:
        return self._residents.get(user_id, ResidentRules())

    def site(self, site_id: str) -> SiteRules:
        return self._sites.get(site_id) or SiteRules(time_zone=self.default_time_zone)

    async def set_resident(self, user_id: str, rules: ResidentRules) -> None:
        await self.store.rules.set_resident_rules(user_id, rules.do_not_disturb, rules.until,
                                      [w.as_json() for w in rules.quiet_hours])
        self._residents[user_id] = rules
        for listener in self.listeners:
            listener("resident", user_id)

    async def set_site(self, site_id: str, rules: SiteRules) -> None:
        await self.store.rules.set_site_rules(site_id, rules.away, rules.time_zone)
        self._sites[site_id] = rules
        for listener in self.listeners:
            listener("site", site_id)

    def why_not(self, user: User, now: float) -> Unavailable | None:
        if user.kind != UserKind.RESIDENT:
            return None
        return unavailable(self.resident(user.user_id), self.site(user.site_id), now)
