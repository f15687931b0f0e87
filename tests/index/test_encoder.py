import asyncio
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from index.encoder import BULK, SEARCH, Encoder
from index.errors import Busy, ImageError
from index.synthetic import CONCEPTS


@pytest.fixture
def encoder(tiny):
    enc = Encoder(tiny, max_batch=16, max_wait_ms=20, queue_size=64)
    assert enc.wait_ready(30)
    yield enc
    enc.close()


def blocker(enc: Encoder):
    """Occupy the model thread until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(10)

    task = asyncio.ensure_future(enc.call(hold))
    return task, started, release


async def test_text_vectors_are_normalised_and_match_the_model(encoder, tiny):
    vecs = await encoder.encode_texts(["red circle", "blue square"])
    assert vecs.shape == (2, tiny.dim) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    with torch.inference_mode():
        ref = tiny.model.encode_text(tiny.tokenizer(["red circle", "blue square"]), normalize=True)
    assert np.abs(vecs - ref.numpy()).max() < 1e-5


async def test_concurrent_requests_share_forward_passes(encoder):
    before = encoder.stats.batches
    vecs = await asyncio.gather(*(encoder.encode_texts([c]) for c in CONCEPTS[:16]))
    assert len(vecs) == 16
    assert encoder.stats.batches - before <= 4  # 16 requests, far fewer passes


async def test_repeated_text_comes_from_the_cache(encoder):
    first = await encoder.encode_texts(["green triangle"])
    inputs = encoder.stats.inputs
    again = await encoder.encode_texts(["green triangle"])
    assert encoder.stats.inputs == inputs
    assert np.array_equal(first, again)


async def test_full_queue_answers_busy_at_once(tiny):
    enc = Encoder(tiny, queue_size=4, max_wait_ms=1)
    enc.wait_ready(30)
    task, started, release = blocker(enc)
    try:
        await asyncio.to_thread(started.wait, 5)
        queued = asyncio.ensure_future(enc.encode_texts(["a", "b", "c"]))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        with pytest.raises(Busy, match="busy, try again"):
            await enc.encode_texts(["d", "e"])
        assert time.perf_counter() - t0 < 0.5
        release.set()
        assert (await queued).shape[0] == 3
        await task
    finally:
        release.set()
        enc.close()


async def test_search_is_served_before_queued_bulk_work(encoder, tiny):
    task, started, release = blocker(encoder)
    await asyncio.to_thread(started.wait, 5)
    done: list[str] = []
    pixels = torch.stack([tiny.preprocess(Image.new("RGB", (64, 64)))] * 16)

    async def bulk(i):
        await encoder.encode_pixels(pixels, priority=BULK)
        done.append(f"bulk{i}")

    async def search():
        await encoder.encode_texts(["purple circle"], priority=SEARCH)
        done.append("search")

    jobs = [asyncio.ensure_future(bulk(i)) for i in range(3)]
    await asyncio.sleep(0.02)
    jobs.append(asyncio.ensure_future(search()))
    await asyncio.sleep(0.02)
    release.set()
    await asyncio.gather(task, *jobs)
    assert done[0] == "search"


async def test_event_loop_keeps_ticking_while_images_encode(encoder):
    ticks = []

    async def heartbeat():
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    hb = asyncio.ensure_future(heartbeat())
    imgs = [Image.new("RGB", (256, 256), (i, 0, 0)) for i in range(64)]
    await encoder.encode_images(imgs)
    hb.cancel()
    gaps = np.diff(ticks)
    assert len(ticks) > 3
    assert gaps.max() < 0.25  # never stalled for long


async def test_bad_image_bytes_raise_image_error(encoder):
    with pytest.raises(ImageError):
        await encoder.encode_images([b"this is not an image"])


async def test_a_lone_text_gives_the_models_vector_whichever_pass_warm_up_chose(encoder, tiny):
    assert encoder._packed_matches()  # the bundled tower has open_clip's block layout
    with torch.inference_mode():
        ref = tiny.model.encode_text(tiny.tokenizer(["purple triangle"]), normalize=True).numpy()
    for way in (False, True):
        encoder.pin("text", way)
        encoder._cache.clear()
        got = await encoder.encode_texts(["purple triangle"])
        assert np.abs(got - ref).max() < 1e-5


async def test_padded_texts_take_the_lean_walk_only_where_warm_up_found_it_equal(tiny,
                                                                                   monkeypatch):
    """The padded pass walks the blocks functionally when that gives the module walk's
    vectors; a tower where it does not (here: made to differ) keeps the module walk, and
    its vectors stay the model's."""
    import index.encoder as encoder_module
    with torch.inference_mode():
        ref = tiny.model.encode_text(tiny.tokenizer(["purple triangle"]), normalize=True).numpy()
    enc = Encoder(tiny)
    try:
        assert enc.wait_ready(30) and enc._lean_padded
    finally:
        enc.close()
    real = encoder_module.encode_text_trimmed

    def lean_differs(parts, tokens, normalize=True, attend=False, linear=None):
        out = real(parts, tokens, normalize, attend, linear)
        if linear is None:
            return out
        return (out[0] + 1e-3, out[1]) if attend else out + 1e-3

    monkeypatch.setattr(encoder_module, "encode_text_trimmed", lean_differs)
    enc = Encoder(tiny)
    try:
        assert enc.wait_ready(30) and not enc._lean_padded
        enc.pin("text", False)
        assert np.abs(await enc.encode_texts(["purple triangle"]) - ref).max() < 1e-5
    finally:
        enc.close()


def test_close_during_warm_up_stops_the_model_thread(tiny, monkeypatch):
    """A process that exits while the model thread runs torch ops aborts (SIGABRT,
    'terminate called without an active exception'): close() must leave no model thread
    running, and must not sit out a long warm-up to get there."""
    started = threading.Event()
    real_forward = Encoder._forward

    def slow_forward(self, kind, inputs, *way, **how):
        started.set()
        time.sleep(0.5)  # a warm-up of ~24 passes: longer than any join timeout
        return real_forward(self, kind, inputs, *way, **how)

    monkeypatch.setattr(Encoder, "_forward", slow_forward)
    enc = Encoder(tiny)
    assert started.wait(30)
    t0 = time.perf_counter()
    enc.close()
    assert not enc._thread.is_alive()
    assert time.perf_counter() - t0 < 5


def test_pass_threads_follow_the_load():
    from index.passchoice import PassChoice

    choice = PassChoice({2: 0.010, 1: 0.012}, explore=5)
    picks = []
    for _ in range(10):
        picks.append(n := choice.pick())
        choice.record(n, 0.010 if n == 2 else 0.012)
    assert picks == [2, 2, 2, 2, 1, 2, 2, 2, 2, 2]  # the other count, now and then
    # the host gets busy: two-thread passes now wait for a second free core
    for _ in range(30):
        n = choice.pick()
        choice.record(n, 0.100 if n == 2 else 0.012)
    assert choice.best == 1
    # it stays busy: tries of two threads grow rare (each lost try doubles the interval)
    tries = 0
    for _ in range(1000):
        n = choice.pick()
        tries += n == 2
        choice.record(n, 0.100 if n == 2 else 0.012)
    assert choice.best == 1 and tries <= 8
    # ... and quiet again: a try wins, and two threads are back
    for _ in range(2000):
        n = choice.pick()
        choice.record(n, 0.008 if n == 2 else 0.012)
    assert choice.best == 2
    alone = PassChoice({1: 0.01})
    assert {alone.pick() for _ in range(50)} == {1}


def test_closing_during_warm_up_ends_the_model_thread_soon(tiny, monkeypatch):
    """A command-line run that fails early closes the encoder mid warm-up: the model thread
    must stop at the next pass, not run on (torch still working at exit aborts the process)."""
    forward = Encoder._forward

    def slow_forward(self, kind, inputs, *way, **how):  # a warm-up of many seconds, as on a busy host
        time.sleep(0.2)
        return forward(self, kind, inputs, *way, **how)

    monkeypatch.setattr(Encoder, "_forward", slow_forward)
    enc = Encoder(tiny)
    time.sleep(0.1)
    t0 = time.perf_counter()
    enc.close()
    assert time.perf_counter() - t0 < 3.0
    assert not enc._thread.is_alive()


def test_every_way_of_a_pass_is_revisited_not_only_the_thread_count():
    """A lone text can run on 1 or 2 threads, padded or packed: a way that lost at a busy
    warm-up is tried again and taken once it is the faster."""
    from index.passchoice import PassChoice

    arms = {(2, True): 0.004, (2, False): 0.003, (1, True): 0.009, (1, False): 0.005}
    choice = PassChoice(arms, explore=4)
    true = {(2, True): 0.001, (2, False): 0.003, (1, True): 0.002, (1, False): 0.005}
    tried = set()
    for _ in range(40):
        arm = choice.pick()
        tried.add(arm)
        choice.record(arm, true[arm])
    assert choice.best == (2, True)
    assert tried == set(arms)  # each other way had its turn


def test_warm_up_times_the_ways_in_interleaved_rounds_and_keeps_each_ones_least():
    from index.passchoice import time_arms

    order = []
    slow_once = {"b": [0.05]}  # a burst of load during one of b's passes

    def run(arm):
        order.append(arm)
        time.sleep(slow_once[arm].pop() if slow_once.get(arm) else 0.001)

    best = time_arms(["a", "b"], run, rounds=3)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # untimed each, then rounds
    assert best["b"] < 0.02  # the least time: the burst does not decide


def test_the_pass_after_a_change_of_threads_is_not_the_one_timed():
    from index.passchoice import time_arms

    now = {"threads": 2}
    passes = []

    def switch(arm):
        changed = now["threads"] != arm[0]
        now["threads"] = arm[0]
        now["fresh"] = changed
        return changed

    def run(arm):
        passes.append(arm)
        # the first pass on a new thread count pays for the team's change
        time.sleep(0.03 if now.pop("fresh", False) else 0.001)

    arms = [(2, "x"), (1, "x")]
    best = time_arms(arms, run, rounds=4, switch=switch)
    assert max(best.values()) < 0.02
    assert len(passes) < 2 * len(arms) * 5  # few changes: rounds walk back and forth


def test_an_encoder_can_be_pinned_to_one_way_and_reports_it(encoder):
    encoder.pin("text", False)
    assert encoder.lone_packed is False and encoder.packed is False
    assert {way for _, way in encoder._choices["text", True].avg} == {False}
    with pytest.raises(ValueError):
        encoder.pin("image", "no-such-tower")


async def test_a_batch_split_across_threads_gives_each_input_its_own_vector_and_words(tiny):
    """A SPLIT pass (the batch cut in parts encoded side by side on one torch thread each)
    must give every input, in order, what one pass over the whole batch gives it."""
    from index.encoder import SPLIT
    from index.passchoice import PassChoice

    enc = Encoder(tiny, threads=2)
    try:
        assert enc.wait_ready(30)
        # warm-up offers the split layout to batches, never to a lone input, and starts no
        # helper thread for it (an idle process would carry its memory)
        assert any(n == SPLIT for n, _ in enc._choices["image", False].avg)
        assert any(n == SPLIT for n, _ in enc._choices["text", False].avg)
        assert not any(n == SPLIT for n, _ in enc._choices["text", True].avg)
        assert enc._helpers is None
        texts = ["red circle", "a blue square on green", "purple triangle", "yellow star",
                 "two red circles"]
        whole = await enc.call(lambda: enc._forward("text", texts))
        images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green", "white", "black")]
        images[1].paste((255, 255, 0), (8, 8, 40, 40))
        pixels = await enc.preprocess(images)
        for kind in ("text", "image"):
            way = enc._choices[kind, False].best[1]
            enc._choices[kind, False] = PassChoice({(SPLIT, way): 0.0}, guessed=[(SPLIT, way)])
        enc._cache.clear()
        split_texts = await asyncio.gather(*(enc.encode_text_codes([t]) for t in texts))
        split_images = await enc.encode_pixels(pixels)
        assert enc.stats.sizes.get(5, 0) >= 2  # both batches went as one request each
        for kind in ("text", "image"):  # the real passes' times replaced the guess
            assert min(enc._choices[kind, False].avg.values()) > 0
        for got, ref in zip((c for [c] in split_texts), whole, strict=True):
            assert np.abs(got.vector - ref.vector).max() < 1e-5
            assert [w for w, _ in got.words] == [w for w, _ in ref.words]
            assert np.allclose([x for _, x in got.words], [x for _, x in ref.words], atol=1e-5)
        with torch.inference_mode():
            ref = torch.nn.functional.normalize(tiny.model.encode_image(pixels), dim=-1).numpy()
        assert np.abs(split_images - ref).max() < 1e-5
    finally:
        enc.close()


def test_an_arm_that_starts_from_an_estimate_takes_its_first_real_time_whole():
    from index.passchoice import PassChoice

    choice = PassChoice({"a": 1.0, "b": 0.1}, guessed=["b"])
    assert choice.pick() == "b"  # the estimate looks best: the next pass tries it
    choice.record("b", 3.0)
    assert choice.avg["b"] == 3.0 and choice.best == "a"  # not averaged with the guess
    choice.record("a", 2.0)
    assert choice.avg["a"] == pytest.approx(0.8 * 1.0 + 0.2 * 2.0)  # a timed arm averages
