"""Bursts of searches: a search let in is answered whole; the engine's CPU work stays off
the event loop."""

import asyncio
import gc
import threading

import pytest
from PIL import Image

from index.engine import Engine, EngineOptions
from index.errors import Busy
from index.synthetic import CONCEPTS


@pytest.fixture(scope="module")
def small_queue(demo_collection):
    """One engine for the module (each test asks texts of its own, so the cache never answers)."""
    e = Engine.open(demo_collection, options=EngineOptions(queue_size=16))
    assert e.encoder.wait_ready(120)
    yield e
    e.close()


def two_terms(i: int, tag: str = "") -> str:
    return f"{CONCEPTS[i % len(CONCEPTS)]} {tag}{i}*1 {CONCEPTS[(i * 7 + 3) % len(CONCEPTS)]} x{tag}{i}*2"


def assert_explained(result) -> None:
    assert len(result.attention) == 2 and all(result.attention), result.attention
    assert result.attention_note is None


async def test_a_burst_that_fits_the_queue_is_answered_with_word_weights(small_queue):
    results = await asyncio.gather(*(small_queue.search(two_terms(i), k=3) for i in range(8)))
    assert len(results) == 8
    for r in results:
        assert len(r.hits) == 3
        assert_explained(r)


async def test_a_burst_larger_than_the_queue_is_answered_or_refused_at_once(small_queue):
    results = await asyncio.gather(*(small_queue.search(two_terms(i, "b"), k=3) for i in range(40)),
                                   return_exceptions=True)
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Busy)]
    assert len(answered) + len(refused) == 40  # nothing else went wrong
    assert len(answered) >= 8 and refused  # the queue (16 texts) is full, no fuller
    for r in answered:
        assert_explained(r)


async def test_a_search_that_does_not_fit_whole_takes_no_room(small_queue):
    enc = small_queue.encoder
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(10)

    held = asyncio.ensure_future(enc.call(hold))
    while not started.is_set():
        await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(enc.encode_texts([f"filler {i}" for i in range(14)]))
    await asyncio.sleep(0.05)
    before = enc.stats.inputs
    photo = Image.new("RGB", (64, 64), "red")
    # two texts would fit (16), the image with them would not: refused as a whole
    with pytest.raises(Busy):
        await small_queue.search("left text*1 right text*2 #1", [photo], k=3)
    # ... and it left the queue's room as it found it: two texts still fit
    also = asyncio.ensure_future(enc.encode_texts(["left text", "right text"]))
    release.set()
    await held
    assert len(await queued) == 14 and len(await also) == 2
    assert enc.stats.inputs - before == 16


async def test_tokenising_and_ranking_stay_off_the_event_loop(small_queue):
    loop_thread = threading.current_thread()
    seen: list[tuple[str, threading.Thread]] = []
    enc = small_queue.encoder
    tokenizer, search = enc.loaded.tokenizer, small_queue.collection.search

    class Recording:
        encode = tokenizer.encode  # the per-word pieces of the word weights

        def __call__(self, texts, *a, **kw):
            seen.append(("tokenize", threading.current_thread()))
            return tokenizer(texts, *a, **kw)

    def recording_search(*a, **kw):
        seen.append(("search", threading.current_thread()))
        return search(*a, **kw)

    enc.loaded.tokenizer = Recording()
    small_queue.collection.search = recording_search
    try:
        results = await asyncio.gather(*(small_queue.search(two_terms(i, "t"), k=3) for i in range(6)))
    finally:
        enc.loaded.tokenizer = tokenizer
        del small_queue.collection.search
    assert all(r.hits for r in results)
    assert {what for what, _ in seen} == {"tokenize", "search"}
    assert all(thread is not loop_thread for _, thread in seen)
    # the model's objects are out of the cyclic collector's full passes (a full pass over
    # them held the loop for a third of a second)
    assert gc.get_freeze_count() > 10_000
