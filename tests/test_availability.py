"""Who may be rung: the rules against a given clock, to the minute, in real time zones."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from intercom_server.availability import (
    QuietWindow,
    ResidentRules,
    RuleError,
    SiteRules,
    Unavailable,
    parse_resident,
    parse_site,
    unavailable,
)

BERLIN = SiteRules(time_zone="Europe/Berlin")


def at(text: str, zone: str = "Europe/Berlin") -> float:
    """A Unix time from a wall-clock time in a zone (fold=0: the first of a repeated hour)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def nights(*days: str, start: str = "22:00", end: str = "07:00") -> ResidentRules:
    return ResidentRules(quiet_hours=(QuietWindow.parse({"days": list(days), "start": start, "end": end}, "w"),))


@pytest.mark.parametrize("when, quiet", [
    ("2026-11-20 21:59", False),  # Friday evening
    ("2026-11-20 22:00", True),
    ("2026-11-21 03:00", True),   # Saturday night-time: the window that started on Friday
    ("2026-11-21 06:59", True),
    ("2026-11-21 07:00", False),
    ("2026-11-21 23:00", False),  # Saturday's own night is not listed
    ("2026-11-22 03:00", False),
    ("2026-11-19 23:30", False),  # Thursday
])
def test_quiet_hours_across_midnight_belong_to_the_day_they_start(when, quiet):
    rules = nights("fri")
    assert (unavailable(rules, BERLIN, at(when)) is Unavailable.QUIET_HOURS) is quiet


def test_a_daytime_window_and_a_whole_day():
    meetings = ResidentRules(quiet_hours=(QuietWindow.parse({"days": ["mon", "wed"], "start": "09:00",
                                                              "end": "12:30"}, "w"),
                                          QuietWindow.parse({"days": ["sun"], "start": "00:00", "end": "00:00"}, "w")))
    assert unavailable(meetings, BERLIN, at("2026-11-23 10:00")) is Unavailable.QUIET_HOURS  # Monday
    assert unavailable(meetings, BERLIN, at("2026-11-24 10:00")) is None  # Tuesday
    assert unavailable(meetings, BERLIN, at("2026-11-25 12:30")) is None  # Wednesday, at its end
    assert unavailable(meetings, BERLIN, at("2026-11-22 18:00")) is Unavailable.QUIET_HOURS  # all of Sunday


def test_quiet_hours_keep_to_the_wall_clock_across_daylight_saving_changes():
    rules = nights("sat", "sun", start="01:30", end="03:30")
    # Spring forward in Berlin on 2026-03-29: 02:00 became 03:00. 03:10 local is still quiet,
    # and 03:30 local (only 1 h 00 after 01:30 in real time) ends it, as the clock on the wall says.
    assert unavailable(rules, BERLIN, at("2026-03-29 03:10")) is Unavailable.QUIET_HOURS
    assert unavailable(rules, BERLIN, at("2026-03-29 03:30")) is None
    # Fall back on 2026-10-25: 02:30 happens twice, quiet both times.
    first = at("2026-10-25 02:30")
    assert unavailable(rules, BERLIN, first) is Unavailable.QUIET_HOURS
    assert unavailable(rules, BERLIN, first + 3600) is Unavailable.QUIET_HOURS
    assert unavailable(rules, BERLIN, first + 2 * 3600) is None  # 03:30 local
    # The same instant is not quiet for a site in New York (20:30 the evening before).
    assert unavailable(rules, SiteRules(time_zone="America/New_York"), first) is None


def test_do_not_disturb_ends_by_itself_or_when_switched_off_and_away_comes_first():
    now = at("2026-11-22 12:00")
    rules = parse_resident({"do_not_disturb": {"on": True, "for_s": 3600}}, ResidentRules(), now)
    assert unavailable(rules, BERLIN, now + 3599) is Unavailable.DO_NOT_DISTURB
    assert unavailable(rules, BERLIN, now + 3600) is None
    forever = parse_resident({"do_not_disturb": {"on": True}}, rules, now)
    assert forever.until is None and unavailable(forever, BERLIN, now + 86400 * 300) is Unavailable.DO_NOT_DISTURB
    off = parse_resident({"do_not_disturb": {"on": False}}, forever, now)
    assert unavailable(off, BERLIN, now) is None
    away = SiteRules(away=True, time_zone="Europe/Berlin")
    assert unavailable(forever, away, now) is Unavailable.AWAY and unavailable(ResidentRules(), away, now) is \
        Unavailable.AWAY


def test_changing_one_rule_keeps_the_others():
    now = at("2026-11-22 12:00")
    rules = parse_resident({"quiet_hours": [{"start": "22:00", "end": "07:00"}]}, ResidentRules(), now)
    assert rules.quiet_hours[0].days == frozenset(range(7))
    rules = parse_resident({"do_not_disturb": {"on": True, "for_s": 60}}, rules, now)
    assert len(rules.quiet_hours) == 1 and rules.do_not_disturb


@pytest.mark.parametrize("body, message", [
    ({"do_not_disturb": True}, "do_not_disturb must be"),
    ({"do_not_disturb": {"on": True, "for_s": 0}}, "for_s must be"),
    ({"do_not_disturb": {"on": True, "for_s": True}}, "for_s must be"),
    ({"do_not_disturb": {"on": "yes"}}, "do_not_disturb must be"),
    ({"quiet_hours": [{"start": "22:00", "end": "24:00"}]}, "quiet_hours[0].end must be a time of day"),
    ({"quiet_hours": [{"days": ["monday"], "start": "22:00", "end": "07:00"}]}, "quiet_hours[0].days"),
    ({"quiet_hours": [{"start": "22:00"}]}, "quiet_hours[0] must be"),
    ({"quiet_hours": [{"start": "01:00", "end": "02:00"}] * 8}, "at most 7"),
])
def test_bad_rules_name_what_is_wrong(body, message):
    with pytest.raises(RuleError) as exc:
        parse_resident(body, ResidentRules(), 0.0)
    assert message in str(exc.value)


def test_a_site_s_time_zone_must_be_a_real_one():
    assert parse_site({"time_zone": "Europe/Vienna"}, SiteRules()).time_zone == "Europe/Vienna"
    for bad in ("Mars/Olympus", "../../etc/passwd", 5, ""):
        with pytest.raises(RuleError):
            parse_site({"time_zone": bad}, SiteRules())
    with pytest.raises(RuleError):
        parse_site({"away": "yes"}, SiteRules())
