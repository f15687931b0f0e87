"""bot/render.py: cards within Discord's limits, the attention picture and its text form."""

from __future__ import annotations

import io
from dataclasses import replace
from types import SimpleNamespace

import discord
import numpy as np
from PIL import Image

from bot import render
from bot.core import Core, FindRequest
from bot.render import AttentionRow
from bot.reply import Card, Reply
from index.engine import Hit
from index.query import parse_query
from index.store import Item


def item(source: str, **kw) -> Item:
    return Item(source=source, id=kw.pop("id", 1), added_at=0.0, **kw)


def big_noise_file(path, seed: int, side: int = 1500):
    arr = (np.random.default_rng(seed).random((side, side, 3)) * 255).astype("uint8")
    Image.fromarray(arr).save(path, "PNG")
    return path


def test_cards_for_each_kind_of_source(tmp_path):
    pic = big_noise_file(tmp_path / "red_car.png", 0, side=300)
    hits = [
        Hit(1, 0.5, item(str(pic), title="a red car")),
        Hit(2, 0.4, item("https://img.example/cat.jpg")),
        Hit(3, 0.3, item("https://unsplash.com/photos/abc123", page_url="https://unsplash.com/photos/abc123",
                         credit="Photo by A B (@ab) on Unsplash", title="a dog")),
        Hit(4, 0.2, item("discord:1/2/3/4")),
        Hit(5, 0.1, item(str(tmp_path / "vanished.png"))),
    ]
    cards = render.make_cards(hits, thumbnail_size=128)
    local, url, unsplash, disc, gone = cards
    assert local.title == "a red car" and local.source == "red_car.png" and local.link is None
    thumb = Image.open(io.BytesIO(local.file.data))
    assert thumb.format == "JPEG" and max(thumb.size) == 128
    assert url.image_url == "https://img.example/cat.jpg" and url.file is None
    assert url.title == "img.example" and url.link == "https://img.example/cat.jpg"
    assert unsplash.image_url == "https://unsplash.com/photos/abc123/download?w=640"
    assert unsplash.link == "https://unsplash.com/photos/abc123" and "@ab" in unsplash.credit
    assert disc.link == "https://discord.com/channels/1/2/3" and disc.image_url is None
    assert gone.file is None and gone.title == "vanished"  # a missing file loses its picture only


def test_a_full_page_stays_within_discord_limits(tmp_path):
    src = big_noise_file(tmp_path / "noise.png", 0, side=600)
    hits = []
    for i in range(12):
        (tmp_path / f"n{i}.png").write_bytes(src.read_bytes())
        hits.append(Hit(i + 1, 0.9 - i / 100, item(str(tmp_path / f"n{i}.png"), id=i)))
    budget = 600_000  # forces the thumbnails to shrink
    cards = render.make_cards(hits, thumbnail_size=1024, budget=budget)
    assert len(cards) == render.MAX_EMBEDS  # never more than a message can show
    files = [c.file for c in cards if c.file]
    assert 0 < len(files) <= render.MAX_FILES
    assert sum(len(f.data) for f in files) <= budget
    reply = Reply("**Results 1–10**", cards, "word weights: red 100%", None)
    kw = render.to_discord(reply)
    assert len(kw["embeds"]) <= 10 and len(kw["files"]) <= 10
    assert all(isinstance(e, discord.Embed) for e in kw["embeds"])
    for e, c in zip(kw["embeds"], cards, strict=True):
        assert e.footer.text == f"score {c.score:.3f}"
        if c.file:
            assert e.image.url == f"attachment://{c.file.name}"
    assert "word weights: red 100%" in kw["content"]


async def test_ten_results_leave_room_for_no_eleventh_file(settings, engine):
    core = Core(replace(settings, results_per_page=10), engine)
    reply = await core.find(FindRequest("yellow square*1 red*1", 1))
    assert len(reply.cards) == 10
    kw = render.to_discord(reply)
    assert len(kw["embeds"]) == 10 and len(kw["files"]) <= 10
    total = sum(len(f.data) for f in reply.files)
    assert total < render.UPLOAD_LIMIT
    assert reply.attention_png is None and reply.attention_text.startswith("word weights:")


def result_like(text: str, attention, note=None):
    return SimpleNamespace(query=parse_query(text, 0), attention=attention, attention_note=note)


def test_attention_rows_text_and_picture():
    res = result_like("red circle*1 blue square*-0.5 green",
                      [[("red", 0.41), ("circle", 0.59)], [("blue", 0.5), ("square", 0.5)],
                       [("green", 1.0)]])
    rows = render.attention_rows(res)
    assert [r.label for r in rows] == ["red circle", "blue square", "green"]
    assert [r.weight for r in rows] == [1.0, -0.5, 1.0]
    text = render.attention_text(rows)
    assert text == ("word weights: red 41% · circle 59% | blue 50% · square 50% (×-0.5) | "
                    "green 100%")
    data = render.attention_png(rows)
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG" and img.mode == "RGB"
    assert img.text["Rows"] == "3" and img.text["Lines"] == "1,1,1"
    box_h = render.BOX_PAD * 2 + render.WORD_SIZE + 4 + render.PCT_SIZE
    assert img.height == 2 * render.PAD + 3 * box_h + 2 * render.GAP
    # the strongest word of a row has the most intense background
    y = render.PAD + 2
    row = np.asarray(img)[y]
    assert (row != render.BG).any(axis=1).sum() > 50


def test_long_terms_wrap_and_missing_weights_are_said():
    words = [(f"word{i}", 1 / 40) for i in range(40)]
    rows = [AttentionRow("long", 2.0, tuple(words)), AttentionRow("other", 1.0, None)]
    img = Image.open(io.BytesIO(render.attention_png(rows)))
    lines = [int(n) for n in img.text["Lines"].split(",")]
    assert lines[0] > 1 and lines[1] == 1 and img.text["Rows"] == "2"
    assert img.width <= render.MAX_WIDTH
    assert "other (no word weights)" in render.attention_text(rows)


def test_a_note_replaces_the_numbers():
    res = result_like("rouge cercle", [None], note="word weights are not available for this model")
    rows = render.attention_rows(res)
    assert render.attention_text(rows, res.attention_note) == (
        "word weights: word weights are not available for this model")
    assert render.attention_text([], None) == ""


def test_content_is_clipped_to_discord_length():
    reply = Reply("x" * 2500)
    assert len(render.to_discord(reply)["content"]) == render.MAX_CONTENT


def test_a_shown_result_is_not_decoded_again_until_its_file_changes(tmp_path, monkeypatch):
    pic = big_noise_file(tmp_path / "photo.png", 1, side=300)
    opened = []
    real = render.open_image
    monkeypatch.setattr(render, "open_image", lambda p, **kw: opened.append(p) or real(p, **kw))
    hits = [Hit(1, 0.5, item(str(pic)))]
    first = render.make_cards(hits, thumbnail_size=96)[0].file.data
    again = render.make_cards(hits, thumbnail_size=96)[0].file.data  # a page turn back
    assert again == first and len(opened) == 1
    big_noise_file(pic, 2, side=200)  # the file is replaced: its new picture is shown
    changed = render.make_cards(hits, thumbnail_size=96)[0].file.data
    assert changed != first and len(opened) == 2
    assert Image.open(io.BytesIO(changed)).size == (96, 96)


def test_clean_drops_bidi_and_invisible_characters_only():
    tricky = "cat\u202egnp.exe \u2066x\u2069 a\u200bb\ufeff\u00ad\x07"
    assert render.clean(tricky) == "catgnp.exe x ab"
    family = "👨\u200d👩\u200d👧 \u0645\u06cc\u200cخواهم"  # joiners carry meaning: kept
    assert render.clean(family) == family
    assert render.clean("line 1\nline 2") == "line 1\nline 2"
    card = Card(1, 0.5, "x\u202eevil", "by \u202eme", None)
    kw = render.to_discord(Reply("**Results 1–1** for `a\u202eb`", [card]))
    assert "\u202e" not in kw["content"] and "\u202e" not in kw["embeds"][0].title
    assert "\u202e" not in kw["embeds"][0].description
