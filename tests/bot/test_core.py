"""bot/core.py: the command logic, every bad input of issue 3, paging, cooldown."""

from __future__ import annotations

import io
from dataclasses import replace
from types import SimpleNamespace

import pytest
from botutil import bomb_png, noise_png, png_bytes
from PIL import Image

from bot.core import (
    BUSY,
    NOT_READY,
    Attachment,
    Cooldown,
    Core,
    FindRequest,
    PagingState,
    _decode,
    split_urls,
)
from index import Query
from index.errors import Busy

ALICE = 1


def att(name: str, data: bytes | None, ctype: str | None = "image/png", size: int | None = None):
    """An attachment; data None means reading it fails the test."""
    reads = []

    async def read() -> bytes:
        reads.append(name)
        if data is None:
            raise AssertionError(f"{name} must not be downloaded")
        return data

    a = Attachment(name, len(data) if size is None and data is not None else size, ctype, read)
    a.reads = reads  # type: ignore[attr-defined]
    return a


@pytest.fixture
def core(settings, engine):
    c = Core(settings, engine)
    yield c


async def find(core: Core, text: str, *attachments, replied=(), author=ALICE):
    return await core.find(FindRequest(text, author, list(attachments), list(replied)))


def assert_one_line_error(reply, *words):
    assert reply.error, reply.text
    assert "\n" not in reply.text
    assert not reply.cards and reply.state is None
    for w in words:
        assert w in reply.text, (w, reply.text)


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, words", [
    ("", ["empty query"]),
    ("   ", ["empty query"]),
    ("red*x", ["not a plain number", "usage:"]),
    ("red*0", ["zero"]),
    ("red*11", ["out of range"]),
    ("dog*-1", ["no term has a positive weight"]),
    (" ".join(f"w{i}*1" for i in range(17)), ["too many terms"]),
    ("#3 cars", ["'#3'", "no image"]),
])
async def test_bad_queries_get_one_line(core, text, words):
    assert_one_line_error(await find(core, text), *words)


async def test_image_reference_beyond_the_attachments(core):
    a = att("one.png", noise_png())
    reply = await find(core, "#3 cars", a)
    assert_one_line_error(reply, "'#3'", "1 image is attached")
    assert a.reads == []  # refused before anything was downloaded


async def test_non_image_attachment_is_refused_without_reading(core):
    a = att("notes.txt", None, "text/plain; charset=utf-8", size=10)
    assert_one_line_error(await find(core, "cats", a), "notes.txt", "not an image (text/plain)")
    b = att("notes.txt", None, None, size=10)  # no content type: the extension decides
    assert_one_line_error(await find(core, "cats", b), "notes.txt", "not an image")


async def test_oversize_attachment_is_refused_before_downloading(core, settings):
    a = att("huge.png", None, size=settings.max_attachment_bytes + 1)
    reply = await find(core, "cats", a)
    assert_one_line_error(reply, "huge.png", "too large", "limit 8.0 MiB")
    assert a.reads == []


async def test_attachment_bigger_than_its_size_field_is_refused(settings, engine):
    core = Core(replace(settings, max_attachment_bytes=2048), engine)
    a = att("liar.png", noise_png(128), size=100)
    assert_one_line_error(await find(core, "cats", a), "liar.png", "too large")


async def test_corrupt_image(core):
    data = noise_png()
    assert_one_line_error(await find(core, "cats", att("broken.png", data[: len(data) // 2])),
                          "broken.png", "truncated or corrupt")
    assert_one_line_error(await find(core, "cats", att("junk.png", b"not a picture at all")),
                          "junk.png", "not an image")


async def test_decompression_bomb(core):
    reply = await find(core, "cats", att("bomb.png", bomb_png()))
    assert_one_line_error(reply, "bomb.png", "too large", "60000×60000")


async def test_image_over_the_pixel_limit(settings, engine):
    core = Core(replace(settings, max_image_pixels=10_000), engine)
    big = png_bytes(Image.new("RGB", (200, 200), "red"))
    assert_one_line_error(await find(core, "cats", att("big.png", big)), "big.png", "too large")


async def test_download_failure_is_one_line(core):
    async def read():
        raise ConnectionResetError("peer went away")

    a = Attachment("gone.png", 100, "image/png", read)
    assert_one_line_error(await find(core, "cats", a), "gone.png", "could not download")


@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:9/x.png", "loopback"),
    ("http://localhost:9/x.png", "non-public"),
    ("http://10.1.2.3/x.png", "private"),
    ("http://192.168.0.1/cam.jpg", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[::1]/x.png", "loopback"),
    ("http://0x7f000001/x.png", "loopback"),
])
async def test_private_and_loopback_urls_are_refused(core, url, why):
    reply = await find(core, f"red circle {url}")
    assert_one_line_error(reply, "refused", why)
    await core.close()


async def test_url_errors_name_the_url(core):
    reply = await find(core, "cats <http://127.0.0.1:1/secret.png>")
    assert_one_line_error(reply, "127.0.0.1")
    await core.close()


async def test_busy_is_answered_at_once(settings):
    async def search(*a, **k):
        raise Busy()

    busy = SimpleNamespace(ready=True, collection=[], search=search)
    core = Core(settings, busy)
    assert_one_line_error(await find(core, "red circle"), BUSY)
    state = PagingState(ALICE, "red circle", [], 0, 5, True, "red circle*1", 5)
    turned = await core.turn(state, 1)
    assert turned.text == BUSY and not turned.is_page


async def test_not_ready_while_the_model_loads(settings):
    core = Core(settings, None)
    assert_one_line_error(await find(core, "red circle"), NOT_READY)
    loading = SimpleNamespace(ready=False)
    core = Core(settings, loading)
    assert_one_line_error(await find(core, "red circle"), NOT_READY)
    # a malformed query is still explained while the model loads
    assert_one_line_error(await find(core, "red*x"), "not a plain number")
    core.load_error = "no collection at /x"
    assert_one_line_error(await find(core, "red circle"), "could not start", "no collection at /x")


async def test_cooldown_per_user(settings, engine):
    now = [0.0]
    core = Core(replace(settings, cooldown_rate=2, cooldown_per_s=10), engine, clock=lambda: now[0])
    assert not (await find(core, "red circle")).error
    assert (await find(core, "red*x")).error  # a malformed query costs nothing
    assert not (await find(core, "blue square")).error
    third = await find(core, "green")
    assert_one_line_error(third, "slow down", "10 s")
    assert not (await find(core, "green", author=2)).error  # others are not held up
    now[0] = 10.5
    assert not (await find(core, "green")).error


async def test_cooldown_is_charged_only_for_searches_that_run(settings, engine):
    core = Core(replace(settings, cooldown_rate=1, cooldown_per_s=60, max_attachment_bytes=2048),
                engine)
    data = noise_png()
    refused = [att("broken.png", data[: len(data) // 2]), att("junk.png", b"not a picture"),
               att("liar.png", noise_png(128), size=100), att("bomb.png", bomb_png())]
    for a in refused:  # each downloaded, then refused: the search never ran
        reply = await find(core, "cats", a)
        assert reply.error and "slow down" not in reply.text, reply.text
    assert not (await find(core, "red circle")).error  # the one search the minute allows
    assert_one_line_error(await find(core, "blue"), "slow down")


async def test_cooldown_is_given_back_when_busy(settings):
    async def search(*a, **k):
        raise Busy()

    busy = SimpleNamespace(ready=True, collection=[], search=search)
    core = Core(replace(settings, cooldown_rate=1, cooldown_per_s=60), busy)
    assert_one_line_error(await find(core, "red circle"), BUSY)
    assert_one_line_error(await find(core, "red circle"), BUSY)  # not "slow down"


def test_cooldown_off_and_sweep():
    assert Cooldown(0, 5).hit(1) is None
    t = [0.0]
    c = Cooldown(1, 5, clock=lambda: t[0])
    for u in range(10_001):
        assert c.hit(u) is None
    assert c.hit(5) == pytest.approx(5)
    t[0] = 6
    assert c.hit(123_456) is None
    assert len(c._uses) == 1  # the old users were swept


# -------------------------------------------------------------------------- results


async def test_a_text_query_gives_a_page(settings, any_engine):
    core = Core(settings, any_engine)
    reply = await find(core, "red circle*1 blue square*2")
    assert not reply.error and reply.is_page
    assert len(reply.cards) == settings.results_per_page
    assert [c.rank for c in reply.cards] == [1, 2, 3, 4, 5]
    assert reply.text.startswith("**Results 1–5** for `red circle*1 blue square*2`")
    for c in reply.cards:
        assert c.file is not None and c.file.name == f"result-{c.rank}.jpg"
        assert Image.open(io.BytesIO(c.file.data)).format == "JPEG"
        assert c.source.endswith(".png") and -1.0 <= c.score <= 1.0
    assert reply.attention_text.startswith("word weights: red ")
    assert "circle" in reply.attention_text and "(×2)" in reply.attention_text
    assert reply.attention_png is not None
    assert len(reply.files) == settings.results_per_page + 1
    st = reply.state
    assert (st.author_id, st.offset, st.k, st.has_more, st.shown) == (ALICE, 0, 5, True, 5)


async def test_a_query_with_an_attached_image(core):
    a = att("photo.png", noise_png())
    reply = await find(core, "#1*0.5 red circle", a)
    assert not reply.error and reply.is_page and reply.cards
    assert "#1*0.5" in reply.text
    assert reply.state.images and reply.state.images[0].mode == "RGB"
    assert a.reads == ["photo.png"]
    assert "red 5" in reply.attention_text or "red " in reply.attention_text


def test_big_query_images_are_kept_small():
    big = png_bytes(Image.new("RGB", (3000, 1500), "blue"))
    img = _decode(big, "big.png", 40_000_000)
    assert img.size == (1024, 512) and img.mode == "RGB"
    small = _decode(noise_png(64), "small.png", 40_000_000)
    assert small.size == (64, 64)


async def test_replied_images_join_and_non_images_are_skipped(core):
    pic = att("reply.png", noise_png(seed=3))
    doc = att("doc.pdf", None, "application/pdf", size=100)
    reply = await find(core, "blue square", replied=[doc, pic])
    assert not reply.error, reply.text
    assert "#1*1" in reply.text  # the replied-to image joined the query
    assert doc.reads == []


async def test_image_only_query_has_no_word_weights(core):
    reply = await find(core, "", att("a.png", noise_png(seed=5)))
    assert reply.is_page
    assert reply.attention_text == "" and reply.attention_png is None


async def test_paging_forward_back_and_past_the_end(settings, any_engine):
    engine = any_engine
    core = Core(replace(settings, results_per_page=10), engine)
    first = await find(core, "green triangle")
    state = first.state
    seen = [c.rank for c in first.cards]
    copies = sum(len(c.copies) for c in first.cards)
    assert core.engine is engine
    back = await core.turn(state, -1)
    assert not back.is_page and back.text == "this is the first page" and not back.error
    pages = 1
    while state.has_more:
        page = await core.turn(state, 1)
        assert page.is_page
        assert page.cards[0].rank == state.offset + state.k + 1
        seen += [c.rank for c in page.cards]
        copies += sum(len(c.copies) for c in page.cards)
        state = page.state
        pages += 1
    # every picture once: as a result, or as a near-copy under one (index/nearcopies.py)
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) + copies == len(engine.collection)
    assert pages == -(-len(seen) // 10)
    end = await core.turn(state, 1)
    assert not end.is_page and not end.error
    assert end.text == f"no more results: #{seen[-1]} was the last match"
    prev = await core.turn(state, -1)
    assert prev.is_page and prev.cards[0].rank == state.offset - state.k + 1


async def test_the_query_is_parsed_once_per_search(settings, engine, monkeypatch):
    """A page turn hands the engine the query parsed when it was asked, not its text."""
    import bot.core

    parses, given = [], []
    real_parse, real_search = bot.core.parse_query, engine.search

    def counting_parse(*a, **k):
        parses.append(a)
        return real_parse(*a, **k)

    async def spying_search(query, *a, **k):
        given.append(query)
        return await real_search(query, *a, **k)

    monkeypatch.setattr(bot.core, "parse_query", counting_parse)
    monkeypatch.setattr(engine, "search", spying_search)
    core = Core(settings, engine)
    first = await find(core, "red circle*1 blue square*2")
    second = await core.turn(first.state, 1)
    third = await core.turn(second.state, -1)
    assert second.is_page and third.is_page
    assert len(parses) == 1
    assert len(given) == 3 and all(q is given[0] for q in given)
    assert isinstance(given[0], Query)
    assert given[0].describe() == "red circle*1 blue square*2"


async def test_a_page_that_turns_out_empty_says_so(core):
    first = await find(core, "red")
    ghost = replace(first.state, offset=10_000, has_more=True)
    reply = await core.turn(ghost, 1)
    assert not reply.is_page and "no more results" in reply.text


def test_split_urls():
    text, urls = split_urls("cars https://a.example/x.png*0.5 <http://b.example/y.jpg>*2, blue", 3)
    assert urls == ["https://a.example/x.png", "http://b.example/y.jpg"]
    assert text == "cars #3*0.5 #4 *2, blue"  # spaces around * are allowed
    assert split_urls("see https://a.example/p.png.") == ("see #1", ["https://a.example/p.png"])
    assert split_urls("no links here") == ("no links here", [])


async def test_url_images_are_numbered_after_the_attachments(core):
    a = att("one.png", None, "image/png", size=100)
    # the URL is image #2, so '#3' names nothing: refused before any download
    reply = await find(core, "#3 https://img.example/cat.png", a)
    assert_one_line_error(reply, "'#3'", "2 images are attached")


def test_help_mentions_both_forms(core):
    text = core.help("?").text
    assert "`?find red circle*1 blue square*2`" in text and "/find query:" in text
    assert "#1*0.5" in text and "◀️" in text and len(text) < 2000


async def test_page_turns_only_read_thumbnails_made_before(settings, engine, tmp_path, monkeypatch):
    import asyncio

    import index.images
    from index.thumbnails import ThumbnailStore

    monkeypatch.setitem(engine.__dict__, "thumbnails", ThumbnailStore(tmp_path / "thumbs"))
    core = Core(replace(settings, results_per_page=5), engine)
    core.prefetch_delay_s = 0.0
    first = await find(core, "orange square*1 small circle*2")
    assert sum(c.file is not None for c in first.cards) == 5
    await asyncio.gather(*core._prefetching)  # the next page's, made in the background
    made = len(list((tmp_path / "thumbs").glob("*/*.jpg")))
    assert made == 10

    def refuse(*a, **kw):
        raise AssertionError("an image was decoded while a member waited")
    monkeypatch.setattr(index.images, "_open_header", refuse)
    second = await core.turn(first.state, 1)
    assert second.is_page and sum(c.file is not None for c in second.cards) == 5
    again = await core.turn(second.state, -1)  # back: read, not made again
    assert [c.file.data for c in again.cards] == [c.file.data for c in first.cards]
    await core.close()


# -------------------------------------------------------------------------- filters (issue 12)


class Dir:
    """A server's channels and members, as a transport would look them up."""

    channels = {"memes": 501, "art": 502}
    members = {"sam": 701}

    def has_channel(self, channel_id):
        return channel_id in self.channels.values()

    async def channel_named(self, name):
        return self.channels.get(name)

    async def member_named(self, name):
        return self.members.get(name)


async def find_in_server(core, text):
    return await core.find(FindRequest(text, ALICE, guild_id=9, directory=Dir()))


@pytest.mark.parametrize("text, words, absent", [
    ("red in:#nope", ["in:#nope", "no such channel", "filters:"], []),
    ("red in:<#123456789>", ["not one of this server's", "filters:"], ["123456789"]),
    ("red from:@nobody", ["from:@nobody", "no member", "filters:"], []),
    ("red before:2025-13-45", ["not a real date", "filters:"], []),
    ("red after:2025-06-01 before:2025-05-01", ["leaves no time"], []),
    ("red " + " ".join(f"in:#c{i}" for i in range(50)), ["too many in: filters"], []),
    # resolved, then refused by the engine: the global collection has no posts
    ("red in:#memes from:@sam", ["need a server library"], []),
])
async def test_bad_filters_get_one_line_naming_nothing_of_other_servers(core, text, words, absent):
    reply = await find_in_server(core, text)
    assert_one_line_error(reply, *words)
    for w in absent:
        assert w not in reply.text


async def test_filter_names_resolve_to_this_servers_ids_and_need_a_server(core):
    from bot.core import resolve_filters
    from index import parse_query

    q = await resolve_filters(parse_query("red in:#memes in:<#502> from:@sam from:<@42>"),
                              FindRequest("", ALICE, guild_id=9, directory=Dir()))
    assert [r.id for r in q.filters.channels] == [501, 502]
    assert [r.id for r in q.filters.members] == [701, 42] and not q.filters.names
    assert_one_line_error(await find(core, "red in:#memes"), "known only in a server")
    assert "in:#channel" in core.help().text and "from:@" in core.help().text
