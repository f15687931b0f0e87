"""The query grammar, shared by the Discord bot and the CLI (DESIGN.md, "The query grammar").

A query is a list of terms; a term is a text phrase or an attached image, with a weight:

    blue sky*1 flower*2          -> "blue sky"*1, "flower"*2
    Tokyo tower at night         -> one phrase, weight 1
    horse + stripes - brown      -> horse*1, stripes*1, brown*-1
    "a, b"*2 #1*0.5 cars         -> quoted phrase, first attached image, "cars"

Rules, in the order the parser applies them:

- Whitespace of any kind (tabs, newlines, zero-width spaces) counts as one space; control
  characters are dropped; text is NFC-normalised and keeps its case and its non-ASCII letters.
  Curly double quotes count as straight ones.
- Bare words run together into one phrase until a weight, a `+`/`-` separator, a quote or an
  `#N` ends them. A `+` or `-` is a separator only when it is a word of its own (`t-shirt`,
  `c++`, `-b` stay words). A `-` separator negates the next term's weight, whatever its
  sign (`- dog*-1` is dog*1). Two separators in a row, or one at the end, are errors.
- `*W` after a term sets its weight. W is a plain decimal (`2`, `-1`, `.5`, `+2`; no exponents,
  no inf/nan), not 0, with |W| <= MAX_ABS_WEIGHT. Spaces may surround the `*`.
- `"..."` is one text term; a `"` always opens or closes a quote, so text never contains one.
- A word that starts with `#` is an image reference `#N`, 1-based; images no `#N` names join
  the query at the end, in order, with weight 1. An image may be named more than once (each
  `#N` is a term of its own).
- At most MAX_TERMS terms (joining images count), at least one with a positive weight.
- Filters, in the words of Discord's own search (index/filters.py): `in:#channel`,
  `from:@member`, `before:DATE`, `after:DATE`, `during:DATE`. A filter is a word of its
  own (its value may be quoted: `from:"Sam Smith"`); it ends a phrase like `#N` does, takes
  no weight and no `-`. They narrow where the terms are looked for, and are kept apart from
  the terms in `Query.filters`.

Every malformed query raises `QueryError` whose message is one line: the problem, quoting the
offending piece, then " — " and USAGE. No other exception escapes `parse_query` for any string.
`Query.describe()` is the canonical form: `parse_query(q.describe(), n) == q`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from index.errors import QueryError

from .filters import FilterParser, Filters, filter_key

MAX_TERMS = 16
MAX_ABS_WEIGHT = 10.0
MAX_TERM_CHARS = 300
USAGE = (
    'usage: red circle*1 blue square*2 | "quoted, phrase"*2 | #1*0.5 cars | horse + stripes - brown'
    " (#N = Nth attached image; *W = weight from -10 to 10, not 0; dog*-1 pushes dogs away)"
)

_WEIGHT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_IMAGE_RE = re.compile(r"#([0-9]+)")
# A word that may appear unquoted in a label: letters, digits, _ and a little punctuation.
_BARE_WORD_RE = re.compile(r"[\w'.&-]+")
_SEPARATORS = ("+", "-")
_QUOTE_CHARS = {"\u201c": '"', "\u201d": '"'}  # “ ” as typed by phone keyboards
_SPACE_LIKE = {"\u200b"}  # zero-width space: not str.isspace(), but a space to a reader
_DROPPED = {"\ufeff", "\u2060"}  # BOM / word joiner: invisible, meaningless here
_PIECE_CHARS = 40


@dataclass(frozen=True)
class Term:
    kind: Literal["text", "image"]
    weight: float
    text: str | None = None  # text terms: the phrase, whitespace collapsed, case kept
    image: int | None = None  # image terms: 0-based index into the attached images

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", float(self.weight))
        if self.kind == "text":
            if not self.text or self.image is not None:
                raise ValueError("a text term needs text and no image")
        elif self.kind == "image":
            if self.image is None or self.image < 0 or self.text is not None:
                raise ValueError("an image term needs an image index >= 0 and no text")
        else:
            raise ValueError(f"unknown term kind {self.kind!r}")

    def label(self) -> str:
        """The canonical form of this term, e.g. 'blue sky*1', '"a, b"*2' or '#1*0.5'."""
        w = _format_weight(self.weight)
        if self.kind == "image":
            return f"#{self.image + 1}*{w}"
        text = self.text
        if not _is_bare(text):
            text = f'"{text}"'
        return f"{text}*{w}"


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...]
    filters: Filters = Filters()

    @property
    def text_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.kind == "text")

    @property
    def image_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.kind == "image")

    def describe(self) -> str:
        """The canonical form of the whole query, e.g. 'blue sky*1 flower*2 #1*1 in:#memes'."""
        return " ".join([*(t.label() for t in self.terms), *self.filters.labels()])


def parse_query(text: str, n_images: int = 0) -> Query:
    """Parse a query typed by a user, with `n_images` images attached to it.

    Raises QueryError (one line, ending with USAGE) for anything malformed.
    """
    if not isinstance(text, str):
        raise TypeError(f"query text must be str, not {type(text).__name__}")
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, not {n_images}")
    return _Parser(_normalise(text), n_images).parse()


# ---------------------------------------------------------------------------------------------


def _fail(problem: str) -> QueryError:
    return QueryError(f"{problem} — {USAGE}")


def _piece(s: str) -> str:
    """An offending piece of the query, quoted and shortened for an error message."""
    if len(s) > _PIECE_CHARS:
        s = s[: _PIECE_CHARS - 1] + "…"
    return f"'{s}'"


def _images_attached(n: int) -> str:
    if n == 0:
        return "no image is attached"
    return "1 image is attached" if n == 1 else f"{n} images are attached"


def _normalise(text: str) -> str:
    """Every kind of whitespace to one space, control characters dropped, curly quotes
    straightened, stripped, then NFC."""
    out = []
    for c in text:
        if c.isspace() or c in _SPACE_LIKE:
            out.append(" ")
        elif c in _DROPPED or unicodedata.category(c) == "Cc":
            continue
        else:
            out.append(_QUOTE_CHARS.get(c, c))
    # NFC last, so that a dropped character cannot leave an uncomposed pair behind.
    return unicodedata.normalize("NFC", " ".join("".join(out).split()))


def _format_weight(w: float) -> str:
    """The shortest plain decimal that parses back to exactly `w` (no exponent)."""
    if w.is_integer():
        return str(int(w))
    s = format(Decimal(repr(w)), "f")
    return s.rstrip("0").rstrip(".") if "." in s else s


def _is_bare(text: str) -> bool:
    """Whether `text` reparses to itself unquoted (else its label quotes it)."""
    return all(
        _BARE_WORD_RE.fullmatch(word) and word not in _SEPARATORS for word in text.split(" ")
    )


@dataclass
class _Token:
    kind: Literal["word", "quoted", "star"]
    value: str
    start: int
    end: int


def _tokens(s: str) -> list[_Token]:
    """Split normalised text into words, quoted strings and `*`s (spaces separate, unkept)."""
    toks: list[_Token] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == " ":
            i += 1
        elif c == '"':
            j = s.find('"', i + 1)
            if j < 0:
                raise _fail(f'unterminated quote {_piece(s[i:])}: close it with another "')
            toks.append(_Token("quoted", " ".join(s[i + 1 : j].split()), i, j + 1))
            i = j + 1
        elif c == "*":
            toks.append(_Token("star", "*", i, i + 1))
            i += 1
        else:
            j = i
            while j < n and s[j] not in ' "*':
                j += 1
            toks.append(_Token("word", s[i:j], i, j))
            i = j
    return toks


@dataclass
class _Pending:
    """A term being read: a phrase still collecting words, a quote, or an image."""

    kind: Literal["text", "image"]
    start: int
    end: int
    negated: bool
    words: list[str]  # text: the words so far
    image: int | None = None
    weight: float | None = None
    quoted: bool = False

    @property
    def open_phrase(self) -> bool:
        return self.kind == "text" and not self.quoted and self.weight is None


class _Parser:
    def __init__(self, s: str, n_images: int):
        self.s = s
        self.n_images = n_images
        self.terms: list[Term] = []
        self.named: set[int] = set()
        self.current: _Pending | None = None
        self.sign: _Token | None = None  # a separator waiting for its term
        self.filters = FilterParser()
        self.last_filter: str | None = None  # the filter just read (a weight after it is an error)

    def parse(self) -> Query:
        toks = _tokens(self.s)
        i = 0
        while i < len(toks):
            tok = toks[i]
            if tok.kind == "star":
                nxt = toks[i + 1] if i + 1 < len(toks) else None
                if self.last_filter is not None and self.current is None:
                    raise self.filters.fail(
                        f"filter {_piece(self.last_filter)} takes no weight; weigh the words instead"
                    )
                self._weight(tok, nxt)
                i += 2
                continue
            self.last_filter = None
            if tok.kind == "word" and filter_key(tok.value) is not None:
                self._flush()
                if self.sign is not None:
                    raise self.filters.fail(
                        f"{_piece(self.sign.value + ' ' + tok.value)}: a filter cannot be pushed "
                        "away with -; it only narrows where to look"
                    )
                nxt = toks[i + 1] if i + 1 < len(toks) else None
                value_tok = None
                if nxt is not None and nxt.kind == "quoted" and nxt.start == tok.end:
                    value_tok = nxt  # from:"Sam Smith"
                self.last_filter = self.filters.add(tok.value, value_tok.value if value_tok else None)
                i += 2 if value_tok is not None else 1
                continue
            if tok.kind == "quoted":
                if not tok.value:
                    raise _fail(f"empty quotes {_piece(self.s[tok.start : tok.end])}")
                self._start("text", tok, [tok.value], quoted=True)
            elif tok.value in _SEPARATORS:
                self._flush()
                if self.sign is not None:
                    raise _fail(
                        f"two separators in a row {_piece(self.s[self.sign.start : tok.end])}"
                    )
                self.sign = tok
            elif tok.value.startswith("#"):
                self._start("image", tok, [], image=self._image(tok))
            elif self.current is not None and self.current.open_phrase:
                self.current.words.append(tok.value)
                self.current.end = tok.end
            else:
                self._start("text", tok, [tok.value])
            i += 1
        self._flush()
        if self.sign is not None:
            raise _fail(f"{_piece(self.sign.value)} at the end has no term after it")

        filters = self.filters.done()
        for k in range(self.n_images):
            if k not in self.named:
                self.terms.append(Term("image", 1.0, image=k))
        if not self.terms:
            if filters:
                raise _fail("a query needs words or an image to look for, not only filters")
            raise _fail("empty query: give some words or attach an image")
        if len(self.terms) > MAX_TERMS:
            joined = self.n_images - len(self.named)
            extra = f", {joined} of them attached images no #N names" if joined else ""
            raise _fail(f"too many terms: {len(self.terms)}{extra} (at most {MAX_TERMS})")
        if not any(t.weight > 0 for t in self.terms):
            desc = " ".join(t.label() for t in self.terms)
            raise _fail(
                f"no term has a positive weight in {_piece(desc)}: "
                "a query needs something to look for, not only things to push away"
            )
        return Query(tuple(self.terms), filters)

    def _start(self, kind, tok: _Token, words: list[str], image=None, quoted=False) -> None:
        self._flush()
        negated = self.sign is not None and self.sign.value == "-"
        start = self.sign.start if self.sign is not None else tok.start
        self.sign = None
        self.current = _Pending(kind, start, tok.end, negated, words, image=image, quoted=quoted)

    def _flush(self) -> None:
        p, self.current = self.current, None
        if p is None:
            return
        weight = 1.0 if p.weight is None else p.weight
        if p.negated:
            weight = -weight
        if p.kind == "image":
            self.named.add(p.image)
            self.terms.append(Term("image", weight, image=p.image))
            return
        text = " ".join(p.words)
        if len(text) > MAX_TERM_CHARS:
            raise _fail(
                f"term {_piece(text)} is {len(text)} characters long "
                f"(at most {MAX_TERM_CHARS}); split it with *W weights, + or quotes"
            )
        self.terms.append(Term("text", weight, text=text))

    def _image(self, tok: _Token) -> int:
        m = _IMAGE_RE.fullmatch(tok.value)
        if m is None:
            raise _fail(
                f"{_piece(tok.value)} is not an image reference like #1 "
                f"({_images_attached(self.n_images)}); to search for the text, quote it"
            )
        n = int(m.group(1))
        if n == 0:
            raise _fail(
                f"{_piece(tok.value)}: images are numbered from #1 "
                f"({_images_attached(self.n_images)})"
            )
        if n > self.n_images:
            raise _fail(
                f"{_piece(tok.value)} names image {n}, but {_images_attached(self.n_images)}"
            )
        return n - 1

    def _weight(self, star: _Token, nxt: _Token | None) -> None:
        after = nxt.value if nxt is not None and nxt.kind == "word" else ""
        p = self.current
        if p is None:
            what = _piece(self.s[star.start : nxt.end] if after else "*")
            if self.sign is not None:
                raise _fail(f"weight {what} follows {_piece(self.sign.value)}, not a term")
            raise _fail(f"weight {what} has no term before it; write it after one, like cat*2")
        if p.weight is not None:
            end = nxt.end if after else star.end
            raise _fail(f"{_piece(self.s[p.start : end])} has two weights; a term takes one *W")
        if not after:
            end = nxt.end if nxt is not None else star.end
            raise _fail(
                f"{_piece(self.s[p.start : end])} has no weight after '*'; "
                "write a number, like cat*2"
            )
        if not _WEIGHT_RE.fullmatch(after):
            raise _fail(
                f"weight {_piece(after)} in {_piece(self.s[p.start : nxt.end])} is not a plain "
                "number like 2, -1 or 0.5"
            )
        w = float(after)
        if w == 0:
            raise _fail(
                f"weight {_piece(after)} in {_piece(self.s[p.start : nxt.end])} is zero, "
                "which has no effect; leave the term out instead"
            )
        if not abs(w) <= MAX_ABS_WEIGHT:
            raise _fail(
                f"weight {_piece(after)} in {_piece(self.s[p.start : nxt.end])} is out of range; "
                f"weights go from -{MAX_ABS_WEIGHT:g} to {MAX_ABS_WEIGHT:g}"
            )
        p.weight = w
        p.end = nxt.end
