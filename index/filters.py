"""Search filters, in the words of Discord's own search: the part of the query grammar that
narrows WHERE the terms are looked for (index/query.py reads them out of a query).

    in:#memes  in:<#123>  in:memes  in:123      posted in that channel
    from:@sam  from:<@456>  from:<@!456>  from:"Sam Smith"   posted by that member
    before:2025-06-01   posted before that day began
    after:2025-01-31    posted after that day ended
    during:2025-03      posted in that month (during:2025, during:2025-03-05 too)

- Several `in:` match any of the channels, several `from:` any of the members; different
  kinds all apply (`in:#a in:#b from:@sam` = (#a or #b) and by Sam).
- `before:`/`after:`/`during:` take YYYY, YYYY-MM or YYYY-MM-DD; before: is before the
  start of that period, after: after its end, during: within it. Days are UTC days. Each
  kind at most once; together they must leave some time (after:X before:Y with X before Y).
- A channel or member is named by id (a mention as Discord sends it, `<#id>`, `<@id>`,
  `<@!id>`, or the bare digits) or by name (`#memes`, `@sam`). Only a Discord server knows
  names: the bot resolves them (`Filters.resolve`); the engine takes ids only.
- A filter applies to the posts of a picture (a server library knows each post's channel,
  author and time): a picture matches when one of its posts passes every filter.

Every malformed filter raises QueryError: one line, the problem, " — ", FILTER_USAGE.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

from index.errors import QueryError

MAX_REFS = 10  # in: (and from:) filters per query: more is a typo or a paste, not a search
FILTER_USAGE = (
    "filters: in:#channel from:@member before:2025-06-01 after:2025-01-31 during:2025-03 "
    "(several in:/from: match any; dates are UTC days)"
)
KINDS = ("in", "from", "before", "after", "during")
# Discord search filters clipfind does not have: refused by name rather than searched as text
UNSUPPORTED = ("has", "mentions", "pinned", "on", "authortype", "link", "filetype")

_KEY_RE = re.compile(r"([A-Za-z]+):(.*)", re.DOTALL)
_CHANNEL_MENTION = re.compile(r"<#([0-9]+)>")
_MEMBER_MENTION = re.compile(r"<@!?([0-9]+)>")
_ROLE_MENTION = re.compile(r"<@&([0-9]+)>")
_DIGITS = re.compile(r"[0-9]+")
_DATE_RE = re.compile(r"([0-9]{4})(?:-([0-9]{1,2})(?:-([0-9]{1,2}))?)?")
_SNOWFLAKE_MAX = 2**63 - 1
_PIECE = 40


def _fail(problem: str) -> QueryError:
    return QueryError(f"{problem} — {FILTER_USAGE}")


def _piece(s: str) -> str:
    return f"'{s[: _PIECE - 1]}…'" if len(s) > _PIECE else f"'{s}'"


def filter_key(word: str) -> str | None:
    """The filter kind a word of a query starts with ('in', 'from', ...), else None. Words
    that look like a filter clipfind lacks (`has:link`) give their key too (refused later)."""
    m = _KEY_RE.fullmatch(word)
    if m is None:
        return None
    key = m.group(1).lower()
    return key if key in KINDS or key in UNSUPPORTED else None


@dataclass(frozen=True)
class Ref:
    """A channel or a member a filter names: by id, or by name (the bot resolves names)."""

    id: int | None = None
    name: str | None = None

    def label(self, sigil: str) -> str:
        if self.id is not None:
            return f"<{sigil}{self.id}>"
        name = self.name or ""
        return f'"{name}"' if re.search(r'[\s"*]', name) else f"{sigil}{name}"


@dataclass(frozen=True)
class Period:
    """A date as typed (YYYY, YYYY-MM or YYYY-MM-DD) and the UTC time span it covers."""

    text: str
    start: float  # unix time, inclusive
    end: float  # unix time, exclusive


@dataclass(frozen=True)
class Filters:
    channels: tuple[Ref, ...] = ()  # in:
    members: tuple[Ref, ...] = ()  # from:
    before: Period | None = None
    after: Period | None = None
    during: Period | None = None

    def __bool__(self) -> bool:
        return bool(self.channels or self.members or self.before or self.after or self.during)

    @property
    def since(self) -> float | None:
        """Posted at or after this unix time (None: no lower bound)."""
        lows = [p.end for p in (self.after,) if p] + [p.start for p in (self.during,) if p]
        return max(lows) if lows else None

    @property
    def until(self) -> float | None:
        """Posted before this unix time (None: no upper bound)."""
        highs = [p.start for p in (self.before,) if p] + [p.end for p in (self.during,) if p]
        return min(highs) if highs else None

    @property
    def names(self) -> list[str]:
        """The filters that name a channel or member by name (labels), which need a server."""
        return [f"in:{r.label('#')}" for r in self.channels if r.id is None] + [
            f"from:{r.label('@')}" for r in self.members if r.id is None
        ]

    def labels(self) -> list[str]:
        """The canonical form of each filter (parses back to the same Filters)."""
        out = [f"in:{r.label('#')}" for r in self.channels]
        out += [f"from:{r.label('@')}" for r in self.members]
        out += [f"{k}:{p.text}" for k, p in (("after", self.after), ("before", self.before),
                                              ("during", self.during)) if p is not None]
        return out

    def resolved(self, channels: tuple[int, ...] | None = None,
                 members: tuple[int, ...] | None = None) -> Filters:
        """These filters with the channels/members replaced by ids (the bot's resolution)."""
        return replace(
            self,
            channels=self.channels if channels is None else _dedupe(Ref(int(i)) for i in channels),
            members=self.members if members is None else _dedupe(Ref(int(i)) for i in members),
        )

    def need_ids(self) -> None:
        """QueryError when a filter names a channel or member by name: only a Discord server
        can resolve names (the bot does); elsewhere filters take ids."""
        if self.names:
            raise QueryError(
                f"{self.names[0]} names a channel or member by name, which only a Discord "
                "server can resolve; give the id instead (in:<#ID> or --in ID, from:<@ID> or "
                "--from ID)")


def _dedupe(refs) -> tuple[Ref, ...]:
    return tuple(dict.fromkeys(refs))


def parse_period(kind: str, text: str) -> Period:
    """YYYY, YYYY-MM or YYYY-MM-DD -> the UTC span it covers; QueryError when it is not a
    real date."""
    how = f"write {kind}:YYYY-MM-DD, like {kind}:2025-06-01 (or {kind}:2025-06)"
    m = _DATE_RE.fullmatch(text)
    if m is None:
        raise _fail(f"{kind}:{_piece(text)[1:-1]} is not a date; {how}")
    y, mo, d = int(m.group(1)), m.group(2), m.group(3)
    try:
        if mo is None:
            first, last = date(y, 1, 1), date(y, 12, 31)
        elif d is None:
            first = date(y, int(mo), 1)
            last = date(y, int(mo), calendar.monthrange(y, int(mo))[1])
        else:
            first = last = date(y, int(mo), int(d))
    except ValueError as e:  # month 13, February 30, year 0
        raise _fail(f"{kind}:{text} is not a real date ({e}); {how}") from None
    start = datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()
    end = datetime(last.year, last.month, last.day, tzinfo=UTC).timestamp() + 86400.0
    canonical = f"{first.year:04d}" + ("" if mo is None else f"-{first.month:02d}") + (
        "" if d is None else f"-{first.day:02d}")
    return Period(canonical, start, end)


@dataclass
class FilterParser:
    """Collects the filters of one query, word by word (used by index.query's parser)."""

    channels: list[Ref] = field(default_factory=list)
    members: list[Ref] = field(default_factory=list)
    dates: dict[str, Period] = field(default_factory=dict)

    @staticmethod
    def fail(problem: str) -> QueryError:
        return _fail(problem)

    def add(self, word: str, quoted: str | None = None) -> str:
        """Read one filter word (`quoted`: the quoted value right after `key:`); returns the
        filter as typed, for messages."""
        m = _KEY_RE.fullmatch(word)
        assert m is not None
        key, value = m.group(1).lower(), m.group(2)
        typed = word if quoted is None else f'{word}"{quoted}"'
        if key in UNSUPPORTED:
            raise _fail(f"{_piece(typed)}: clipfind has no {key}: filter")
        if quoted is not None:
            if value or key not in ("in", "from"):
                raise _fail(f"{_piece(typed)}: only in: and from: take a quoted name")
            value = quoted.strip()
        if not value:
            what = {"in": "a channel", "from": "a member"}.get(key, "a date")
            like = {"in": "in:#memes", "from": "from:@sam"}.get(key, f"{key}:2025-06-01")
            raise _fail(f"{_piece(typed)} needs {what} right after the colon, like {like}")
        if key == "in":
            self._ref(self.channels, self._channel(value, typed), "in", typed)
        elif key == "from":
            self._ref(self.members, self._member(value, typed), "from", typed)
        else:
            if key in self.dates:
                raise _fail(f"two {key}: filters ({key}:{self.dates[key].text} and {typed}); "
                            "give one")
            self.dates[key] = parse_period(key, value)
        return typed

    def done(self) -> Filters:
        f = Filters(tuple(self.channels), tuple(self.members), self.dates.get("before"),
                    self.dates.get("after"), self.dates.get("during"))
        if f.since is not None and f.until is not None and f.since >= f.until:
            given = " ".join(x for x in f.labels() if not x.startswith(("in:", "from:")))
            raise _fail(f"{_piece(given)} leaves no time: after: must be earlier than before: "
                        "(and overlap during:); swap or widen them")
        return f

    @staticmethod
    def _ref(refs: list[Ref], ref: Ref, key: str, typed: str) -> None:
        if ref in refs:
            return
        if len(refs) >= MAX_REFS:
            raise _fail(f"too many {key}: filters (more than {MAX_REFS}, at {_piece(typed)}); "
                        f"search fewer {'channels' if key == 'in' else 'members'} at once")
        refs.append(ref)

    @staticmethod
    def _channel(value: str, typed: str) -> Ref:
        if (m := _CHANNEL_MENTION.fullmatch(value)) or (m := _DIGITS.fullmatch(value)):
            return Ref(id=_snowflake(m.group(1) if m.groups() else m.group(0), typed))
        if value.startswith(("@", "<@")):
            raise _fail(f"{_piece(typed)}: in: takes a channel, like in:#memes; "
                        f"for a member write from:{value}")
        name = value[1:] if value.startswith("#") else value
        if not name or name.startswith("<"):
            raise _fail(f"{_piece(typed)} is not a channel; write in:#name or in:<#id>")
        return Ref(name=name)

    @staticmethod
    def _member(value: str, typed: str) -> Ref:
        if (m := _MEMBER_MENTION.fullmatch(value)) or (m := _DIGITS.fullmatch(value)):
            return Ref(id=_snowflake(m.group(1) if m.groups() else m.group(0), typed))
        if _ROLE_MENTION.fullmatch(value):
            raise _fail(f"{_piece(typed)} is a role; from: takes a member, like from:@sam")
        if value.startswith(("#", "<#")):
            raise _fail(f"{_piece(typed)}: from: takes a member, like from:@sam; "
                        f"for a channel write in:{value}")
        name = value[1:] if value.startswith("@") else value
        if not name or name.startswith("<"):
            raise _fail(f"{_piece(typed)} is not a member; write from:@name or from:<@id>")
        return Ref(name=name)


def _snowflake(digits: str, typed: str) -> int:
    v = int(digits)
    if not 0 < v <= _SNOWFLAKE_MAX:
        raise _fail(f"{_piece(typed)}: {digits} is not a Discord id")
    return v
