"""The query grammar (DESIGN.md, "The query grammar"): index/query.py."""

from __future__ import annotations

import random

import pytest

from index.errors import QueryError
from index.query import (
    MAX_ABS_WEIGHT,
    MAX_TERM_CHARS,
    MAX_TERMS,
    USAGE,
    Query,
    Term,
    parse_query,
)


def T(text: str, weight: float = 1.0) -> Term:
    return Term("text", weight, text=text)


def I(n: int, weight: float = 1.0) -> Term:  # noqa: E743 - n is 1-based, like #N
    return Term("image", weight, image=n - 1)


def terms(text: str, n_images: int = 0) -> list[Term]:
    return list(parse_query(text, n_images).terms)


def error(text: str, n_images: int = 0) -> str:
    with pytest.raises(QueryError) as e:
        parse_query(text, n_images)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    assert msg.endswith(" — " + USAGE), msg
    return msg


# --- the examples ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, n_images, expected",
    [
        ("flower*1 bee*2", 0, [T("flower"), T("bee", 2)]),
        ("Tokyo tower at night", 0, [T("Tokyo tower at night")]),
        ("blue sky*1 flower*2", 0, [T("blue sky"), T("flower", 2)]),
        ("horse + stripes - brown", 0, [T("horse"), T("stripes"), T("brown", -1)]),
        ("dog*-1 cat", 0, [T("dog", -1), T("cat")]),
        ('"a, b"*2', 0, [T("a, b", 2)]),
        ('"quoted phrase"', 0, [T("quoted phrase")]),
        ("#1*0.5 cars", 1, [I(1, 0.5), T("cars")]),
        ("cars", 1, [T("cars"), I(1)]),
        ("red circle*1 blue square*2", 0, [T("red circle"), T("blue square", 2)]),
    ],
)
def test_examples(text, n_images, expected):
    assert terms(text, n_images) == expected


# --- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weight, value",
    [
        ("2", 2.0),
        ("-1", -1.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("+2", 2.0),
        ("2.", 2.0),
        ("10", 10.0),
        ("-10", -10.0),
        ("10.0", 10.0),
        ("-10.000", -10.0),
        ("007", 7.0),
        ("0.001", 0.001),
        ("9.999999", 9.999999),
    ],
)
def test_weight_values(weight, value):
    assert terms(f"cat*{weight} dog") == [T("cat", value), T("dog")]


@pytest.mark.parametrize("text", ["flower * 2", "flower *2", "flower* 2", "flower  *   2"])
def test_spaces_around_star(text):
    assert terms(text) == [T("flower", 2)]


def test_weight_ends_a_phrase():
    assert terms("blue sky * 2 green grass") == [T("blue sky", 2), T("green grass")]


@pytest.mark.parametrize(
    "text, piece",
    [
        ("cat*10.5", "10.5"),
        ("cat*-10.5", "-10.5"),
        ("cat*10.0001", "10.0001"),
        ("cat*11", "11"),
        ("cat*1000000", "1000000"),
        ("cat*" + "9" * 400, "9999"),  # float() gives inf: still "out of range"
    ],
)
def test_weight_out_of_range(text, piece):
    msg = error(text)
    assert "out of range" in msg and piece in msg
    assert f"{MAX_ABS_WEIGHT:g}" in msg


@pytest.mark.parametrize(
    "text, piece",
    [
        ("cat*1e3", "1e3"),
        ("cat*1E3", "1E3"),
        ("cat*inf", "inf"),
        ("cat*-inf", "-inf"),
        ("cat*nan", "nan"),
        ("cat*Infinity", "Infinity"),
        ("cat*abc", "abc"),
        ("cat * abc", "abc"),
        ("cat*1_0", "1_0"),
        ("cat*0x10", "0x10"),
        ("cat*1.2.3", "1.2.3"),
        ("cat*2bee", "2bee"),
        ("cat*2-b", "2-b"),
        ("cat*-", "-"),
        ("cat * - 1", "-"),
        ("cat*.", "."),
        ("cat*+-1", "+-1"),
        ("cat*１", "１"),  # fullwidth digit
        ("cat*1/2", "1/2"),
        ("cat*1,5", "1,5"),
    ],
)
def test_weight_not_a_number(text, piece):
    msg = error(text)
    assert "not a plain number" in msg
    assert f"'{piece}'" in msg


@pytest.mark.parametrize("weight", ["0", "-0", "+0", "0.0", "00.000", ".0", "0." + "0" * 400 + "1"])
def test_weight_zero(weight):
    msg = error(f"cat*{weight} dog")
    assert "zero" in msg and "no effect" in msg


@pytest.mark.parametrize("text", ["cat*", "cat *", "cat**2", 'cat*"dog"', "#1*"])
def test_weight_missing(text):
    msg = error(text, 1)
    assert "no weight after '*'" in msg
    assert "'cat" in msg or "'#1" in msg


@pytest.mark.parametrize("text", ["*2 cats", "*", " * 2", "*cats", "cats + *2", "- *2 cats"])
def test_weight_on_nothing(text):
    msg = error(text)
    assert "'*" in msg
    assert "no term before it" in msg or "not a term" in msg


@pytest.mark.parametrize("text", ["cat*2*3", "cat*2 *3", '"cat"*2*3', "#1*2*3"])
def test_two_weights(text):
    msg = error(text, 1)
    assert "two weights" in msg
    assert "*2" in msg and "*3" in msg


# --- separators ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Tokyo-tower", [T("Tokyo-tower")]),
        ("t-shirt", [T("t-shirt")]),
        ("c++", [T("c++")]),
        ("c++ code - java", [T("c++ code"), T("java", -1)]),
        ("a -b", [T("a -b")]),
        ("a +b", [T("a +b")]),
        ("+ cats", [T("cats")]),
        ("- dogs + cats", [T("dogs", -1), T("cats")]),
        ("- brown*2 horse", [T("brown", -2), T("horse")]),
        ("horse - brown*-1", [T("horse"), T("brown", 1)]),
        ("cats*2 - dogs*0.5", [T("cats", 2), T("dogs", -0.5)]),
        ('cats -"big dogs"', [T("cats"), T("big dogs", -1)]),
        ("cats - big dogs", [T("cats"), T("big dogs", -1)]),
        ("--", [T("--")]),
        ("++ c", [T("++ c")]),
    ],
)
def test_separators(text, expected):
    assert terms(text) == expected


def test_minus_separator_negates_an_image():
    assert terms("cats - #1", 1) == [T("cats"), I(1, -1)]


@pytest.mark.parametrize("text, piece", [("cats -", "'-'"), ("cats +", "'+'"), ("-", "'-'")])
def test_separator_at_end(text, piece):
    msg = error(text)
    assert piece in msg and "at the end" in msg


@pytest.mark.parametrize(
    "text, piece", [("a + - b", "'+ -'"), ("a - - b", "'- -'"), ("+ + a", "'+ +'")]
)
def test_two_separators(text, piece):
    msg = error(text)
    assert piece in msg and "two separators" in msg


# --- quotes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ('"a, b"', [T("a, b")]),
        ('"  spaced \t  out  "', [T("spaced out")]),
        ('red "blue" green', [T("red"), T("blue"), T("green")]),
        ('"a*2 + b"', [T("a*2 + b")]),
        ('"#1"', [T("#1")]),
        ('"x"*2 y', [T("x", 2), T("y")]),
        ('"x" * -2 y', [T("x", -2), T("y")]),
        ('"a""b"', [T("a"), T("b")]),
        ("“curly quotes”*2", [T("curly quotes", 2)]),
        ('ab"cd"', [T("ab"), T("cd")]),
    ],
)
def test_quotes(text, expected):
    assert terms(text) == expected


@pytest.mark.parametrize(
    "text, piece", [('"abc', "'\"abc'"), ('cats "big dogs', "'\"big dogs'"), ('"', "'\"'")]
)
def test_unterminated_quote(text, piece):
    msg = error(text)
    assert "unterminated quote" in msg and piece in msg


@pytest.mark.parametrize("text", ['""', '" "', 'cats ""', '"\t\n"*2'])
def test_empty_quotes(text):
    assert "empty quotes" in error(text)


# --- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, n_images, expected",
    [
        ("#1", 1, [I(1)]),
        ("", 1, [I(1)]),
        ("   ", 2, [I(1), I(2)]),
        ("cars", 2, [T("cars"), I(1), I(2)]),
        ("#2*0.5 cars", 3, [I(2, 0.5), T("cars"), I(1), I(3)]),
        ("#3 #1", 3, [I(3), I(1), I(2)]),
        ("red #1 car", 1, [T("red"), I(1), T("car")]),
        ("#01", 1, [I(1)]),
        ("#1 * -1 cars", 1, [I(1, -1), T("cars")]),
        ("#1 #1*2", 1, [I(1), I(1, 2)]),
        ("C# code", 0, [T("C# code")]),
    ],
)
def test_images(text, n_images, expected):
    assert terms(text, n_images) == expected


@pytest.mark.parametrize(
    "text, n_images, says",
    [
        ("#3", 1, "1 image is attached"),
        ("#1", 0, "no image is attached"),
        ("#5 cats", 2, "2 images are attached"),
        ("#0", 1, "numbered from #1"),
        ("#0", 0, "no image is attached"),
        ("#x", 1, "not an image reference"),
        ("#", 0, "not an image reference"),
        ("#1.5", 2, "not an image reference"),
        ("#1abc", 2, "not an image reference"),
        ("#-1", 2, "not an image reference"),
        ("#hashtag", 0, "quote it"),
        ("#99999999999999999999999", 2, "2 images are attached"),
    ],
)
def test_image_errors(text, n_images, says):
    msg = error(text, n_images)
    assert says in msg
    assert f"'{text.split()[0]}'" in msg


def test_image_errors_name_the_count():
    for n in range(4):
        msg = error("#9", n)
        assert ("no image" if n == 0 else str(n)) in msg


# --- counts, positivity, emptiness ------------------------------------------------------------


def test_max_terms():
    q = " ".join(f"w{i}*1" for i in range(MAX_TERMS))
    assert len(terms(q)) == MAX_TERMS
    msg = error(q + " one_more")
    assert f"{MAX_TERMS + 1}" in msg and f"at most {MAX_TERMS}" in msg


def test_max_terms_counts_joining_images():
    q = " ".join(f"w{i}*1" for i in range(MAX_TERMS - 2))
    assert len(terms(q, 2)) == MAX_TERMS
    msg = error(q, 3)
    assert "too many terms" in msg and "attached images" in msg
    # named images count once
    assert len(terms(q + " #1 #2", 2)) == MAX_TERMS


@pytest.mark.parametrize("n_images", [MAX_TERMS + 1, 40])
def test_too_many_images_alone(n_images):
    assert "too many terms" in error("", n_images)


@pytest.mark.parametrize("text", ["dog*-1", "dog*-1 - cat", "- cat", "- #1"])
def test_needs_a_positive_weight(text):
    msg = error(text, 1 if "#1" in text else 0)
    assert "positive weight" in msg


def test_negative_text_with_an_unnamed_image_is_fine():
    assert terms("dog*-1", 1) == [T("dog", -1), I(1)]


@pytest.mark.parametrize("text", ["", " ", "\t\n  \r\n", "\u200b", "\x00\x07"])
def test_empty(text):
    assert "empty query" in error(text)


def test_term_length():
    ok = "x" * MAX_TERM_CHARS
    assert terms(ok) == [T(ok)]
    words = " ".join(["word"] * 80)  # 399 characters
    msg = error(words)
    assert "399 characters" in msg and str(MAX_TERM_CHARS) in msg
    assert "…" in msg  # the piece is shortened
    assert "at most" in error(f'"{"y" * (MAX_TERM_CHARS + 1)}"*2')
    assert terms(f"{ok}*2 {ok}") == [T(ok, 2), T(ok)]


# --- unicode and whitespace -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("東京タワー", [T("東京タワー")]),
        ("café*2", [T("café", 2)]),
        ("cafe\u0301", [T("café")]),  # NFC
        ("Ünïcödé Wörds", [T("Ünïcödé Wörds")]),
        ("🐱 + 🐶*0.5", [T("🐱"), T("🐶", 0.5)]),
        ("кошка - собака", [T("кошка"), T("собака", -1)]),
        ("blue\tsky\n*2\r\nflower", [T("blue sky", 2), T("flower")]),
        ("  lots   of\u00a0\u2003space  ", [T("lots of space")]),
        ("zero\u200bwidth", [T("zero width")]),
        ("\ufeffbom", [T("bom")]),
        ("bell\x07s", [T("bells")]),
        ("cafe\x00\u0301", [T("café")]),  # NFC after dropping the control character
        ("CaSe KePt", [T("CaSe KePt")]),
    ],
)
def test_unicode_and_whitespace(text, expected):
    assert terms(text) == expected


@pytest.mark.parametrize("text", ['"a\nb', "a\n*x", "a\u2028*0", "#9\u2029x", "a\x85*"])
def test_errors_are_one_line_even_with_line_breaks_in_input(text):
    error(text)


# --- Term / Query ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "term, label",
    [
        (T("blue sky"), "blue sky*1"),
        (T("a, b", 2), '"a, b"*2'),
        (I(1, 0.5), "#1*0.5"),
        (T("dog", -1), "dog*-1"),
        (T("t-shirt"), "t-shirt*1"),
        (T("c++"), '"c++"*1'),
        (T("#1"), '"#1"*1'),
        (T("a - b"), '"a - b"*1'),
        (T("a*b"), '"a*b"*1'),
        (T("東京タワー", 2.5), "東京タワー*2.5"),
        (T("x", 0.1), "x*0.1"),
        (T("x", 1e-5), "x*0.00001"),
        (T("x", -9.75), "x*-9.75"),
    ],
)
def test_label(term, label):
    assert term.label() == label


def test_describe_and_term_views():
    q = parse_query("blue sky flower*2 - #2 cars", 2)
    assert q.describe() == "blue sky flower*2 #2*-1 cars*1 #1*1"
    assert q.text_terms == (T("blue sky flower", 2), T("cars"))
    assert q.image_terms == (I(2, -1), I(1))
    assert isinstance(q, Query) and isinstance(q.terms, tuple)


def test_term_rejects_inconsistent_fields():
    with pytest.raises(ValueError):
        Term("text", 1.0)
    with pytest.raises(ValueError):
        Term("image", 1.0, text="x")
    with pytest.raises(ValueError):
        Term("video", 1.0, text="x")  # type: ignore[arg-type]


def test_terms_are_frozen():
    t = T("x")
    with pytest.raises(AttributeError):
        t.weight = 2.0  # type: ignore[misc]


ROUND_TRIP = [
    ("flower*1 bee*2", 0),
    ("Tokyo tower at night", 0),
    ("horse + stripes - brown", 0),
    ('"a, b"*2 "#1" c++ "a*b" "x - y"', 0),
    ("#1*0.5 cars", 2),
    ("- #2 dog*0.3333 东京 café*.1", 3),
    ("t-shirt Tokyo-tower*-2.5 pants", 0),
    ("cat*0." + "0" * 300 + "1", 0),
    ("🐱*9.99 «quotes» 'apos' a&b", 0),
    ("", 4),
]


@pytest.mark.parametrize("text, n_images", ROUND_TRIP)
def test_round_trip(text, n_images):
    q = parse_query(text, n_images)
    assert parse_query(q.describe(), n_images) == q
    assert parse_query(q.describe(), n_images).describe() == q.describe()


# --- fuzz --------------------------------------------------------------------------------------

_ALPHABET = list('ab c#*+-."\t\n0123456789') + ["e", "inf", "nan", "東", "é", "\u2028", "“", "”"]
_PIECES = ["cat", "dog", "#1", "#2", "#0", "*2", "*-1", " + ", " - ", '"x y"', "*", "*0"]


def _fuzz_strings(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        if rng.random() < 0.5:
            parts = rng.choices(_ALPHABET, k=rng.randint(0, 24))
        else:
            parts = [rng.choice(_PIECES) + rng.choice(["", " "]) for _ in range(rng.randint(0, 8))]
        yield "".join(parts), rng.randint(0, 3)


def test_fuzz_only_query_or_query_error():
    parsed = 0
    for text, n_images in _fuzz_strings(seed=1234, count=2000):
        try:
            q = parse_query(text, n_images)
        except QueryError as e:
            msg = str(e)
            assert len(msg.splitlines()) == 1, (text, msg)
            assert msg.endswith(" — " + USAGE), (text, msg)
            continue
        parsed += 1
        assert 1 <= len(q.terms) <= MAX_TERMS
        assert any(t.weight > 0 for t in q.terms)
        assert all(0 < abs(t.weight) <= MAX_ABS_WEIGHT for t in q.terms)
        assert all(t.text is None or 0 < len(t.text) <= MAX_TERM_CHARS for t in q.terms)
        assert {t.image for t in q.image_terms} >= set(range(n_images))
        assert parse_query(q.describe(), n_images) == q, (text, q.describe())
    assert parsed > 200  # the fuzz reaches valid queries too, not only errors


def test_fuzz_any_code_points():
    rng = random.Random(99)
    for _ in range(500):
        text = "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 10)))
        text += rng.choice(["", " *2", " - x", ' "y"', " #1"])
        try:
            q = parse_query(text, 1)
        except QueryError as e:
            assert len(str(e).splitlines()) == 1
            continue
        assert parse_query(q.describe(), 1) == q


def test_usage_is_one_line():
    assert USAGE.startswith("usage: ") and "\n" not in USAGE


# -- filters (issue 12): in: from: before: after: during: ------------------------------------

def test_filters_are_kept_apart_from_the_terms_and_end_a_phrase():
    from index.filters import Ref
    q = parse_query('red circle in:#memes blue from:"Sam Smith" in:<#12> from:<@!34> IN:56')
    assert q.terms == (T("red circle"), T("blue"))
    assert q.filters.channels == (Ref(name="memes"), Ref(id=12), Ref(id=56))
    assert q.filters.members == (Ref(name="Sam Smith"), Ref(id=34))
    assert q.filters.names == ["in:#memes", 'from:"Sam Smith"']
    assert parse_query(q.describe()) == q
    assert parse_query('"from:space" cat').filters.channels == ()  # quoted: text


def test_dates_are_utc_days_and_combine():
    f = parse_query("cat after:2025-01-31 before:2025-06").filters
    assert f.since == 1738368000.0  # 2025-02-01 00:00 UTC: after the 31st ended
    assert f.until == 1748736000.0  # 2025-06-01 00:00 UTC: before June began
    d = parse_query("cat during:2024-02").filters  # a leap year's February
    assert (d.until - d.since) / 86400 == 29
    both = parse_query("cat during:2025 after:2025-11-30").filters
    assert both.since == 1764547200.0 and both.until == 1767225600.0  # December 2025
    assert parse_query("cat during:2025 after:2025-11-30").describe() == \
        "cat*1 after:2025-11-30 during:2025"


@pytest.mark.parametrize("text, says", [
    ("cat before:2025-13-45", "not a real date"),
    ("cat during:2025-02-30", "not a real date"),
    ("cat after:yesterday", "not a date"),
    ("cat after:2025-06-01 before:2025-05-01", "leaves no time"),
    ("cat after:2025-05-01 before:2025-05-02", "leaves no time"),  # after the 1st = from the 2nd
    ("cat before:2025 before:2026", "two before: filters"),
    ("cat " + " ".join(f"in:#c{i}" for i in range(50)), "too many in: filters"),
    ("cat " + " ".join(f"from:<@{i + 1}>" for i in range(11)), "too many from: filters"),
    ("in:#memes", "not only filters"),
    ("cat in:", "needs a channel"),
    ("cat in:#memes*2", "takes no weight"),
    ("cat - from:@sam", "cannot be pushed away"),
    ("cat in:@sam", "for a member write from:@sam"),
    ("cat from:#memes", "for a channel write in:#memes"),
    ("cat from:<@&5>", "is a role"),
    ("cat has:link", "no has: filter"),
    ("cat in:0", "not a Discord id"),
])
def test_bad_filters_are_one_line_with_the_filter_usage(text, says):
    from index.filters import FILTER_USAGE
    with pytest.raises(QueryError) as e:
        parse_query(text)
    msg = str(e.value)
    assert says in msg and "\n" not in msg
    assert msg.endswith(FILTER_USAGE) or msg.endswith(USAGE)
