"""index/thumbnails.py: made once, kept on disk across restarts, bounded, read-only safe."""

import io
import logging
import os

from PIL import Image

import index.images
from index.thumbnails import ThumbnailStore


def photo(path, size=(900, 600), colour="red"):
    Image.new("RGB", size, colour).save(path, quality=90)
    return path


def test_made_once_then_read_after_a_restart(tmp_path, monkeypatch):
    src = photo(tmp_path / "a.jpg")
    data = ThumbnailStore(tmp_path / "thumbs").get(src, 256)
    assert Image.open(io.BytesIO(data)).size == (256, 171)

    def refuse(*a, **kw):
        raise AssertionError("an image was decoded")
    monkeypatch.setattr(index.images, "_open_header", refuse)
    again = ThumbnailStore(tmp_path / "thumbs")  # a new process: memory is empty
    assert again.cached(src, 256) == data
    assert again.get(src, 256) == data
    assert again.cached(src, 128) is None  # another size is another thumbnail


def test_an_edited_file_gets_a_new_thumbnail(tmp_path):
    src = photo(tmp_path / "a.jpg")
    store = ThumbnailStore(tmp_path / "thumbs")
    red = store.get(src, 64)
    photo(src, size=(600, 900), colour="blue")
    os.utime(src, ns=(1, 1))  # mtime and size both change
    blue = store.get(src, 64)
    assert blue != red and Image.open(io.BytesIO(blue)).size in ((42, 64), (43, 64))



def test_links_share_one_entry(tmp_path):
    src = photo(tmp_path / "a.jpg")
    link = tmp_path / "link.jpg"
    link.symlink_to(src)
    store = ThumbnailStore(tmp_path / "thumbs")
    assert store.get(link, 64) == store.get(src, 64)
    assert len(list((tmp_path / "thumbs").glob("*/*.jpg"))) == 1


def test_the_folder_stays_within_its_bound_and_keeps_the_recent(tmp_path):
    store = ThumbnailStore(tmp_path / "thumbs", max_bytes=60_000, memory_entries=0)
    sources = []
    for i in range(12):
        src = tmp_path / f"p{i}.png"
        Image.effect_noise((200, 200), 60 + i).convert("RGB").save(src)  # ~10+ kB as JPEG
        sources.append(src)
        store.get(src, 200)
        os.utime(store._file(store.key(src, 200, 85)), (i, i))  # a clear order of use
    on_disk = list((tmp_path / "thumbs").glob("*/*.jpg"))
    assert sum(f.stat().st_size for f in on_disk) <= 60_000
    assert store.cached(sources[-1], 200) is not None  # the latest survives
    assert store.cached(sources[0], 200) is None  # the oldest went first


def test_a_folder_that_cannot_be_written_keeps_them_in_memory(tmp_path, caplog):
    src = photo(tmp_path / "a.jpg")
    (tmp_path / "plain-file").write_bytes(b"")  # no folder can be made under a file
    store = ThumbnailStore(tmp_path / "plain-file" / "thumbs")
    with caplog.at_level(logging.WARNING):
        first = store.get(src, 64)
        photo(tmp_path / "b.jpg")
        assert store.get(tmp_path / "b.jpg", 64)
    assert first and store.cached(src, 64) == first
    assert len([r for r in caplog.records if "memory only" in r.message]) == 1


def test_a_broken_file_has_no_thumbnail(tmp_path, caplog):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    store = ThumbnailStore(tmp_path / "thumbs")
    with caplog.at_level(logging.WARNING):
        assert store.get(bad, 64) is None
        assert store.get(tmp_path / "missing.jpg", 64) is None
    assert "bad.jpg" in caplog.text
