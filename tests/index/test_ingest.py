"""One ingestion path (index.build) for files, URLs and Discord posts, one de-duplication
rule: by source (unchanged sources are not read again), then by content hash within the
item's scope (its guild; the whole collection for guild-less items)."""

from __future__ import annotations

import shutil

import pytest

from index import Engine, NewItem, build_collection, scan_folder


@pytest.fixture
def pictures(demo_gallery, tmp_path):
    """A folder: two pictures, a copy of the first under another name, and a broken file."""
    folder = tmp_path / "pics"
    folder.mkdir()
    a, b = sorted(demo_gallery.glob("*.png"))[:2]
    shutil.copy(a, folder / "a.png")
    shutil.copy(b, folder / "b.png")
    shutil.copy(a, folder / "c-copy-of-a.png")
    (folder / "d-broken.png").write_bytes(b"\x89PNG not really")
    return folder


def post(guild: int, n: int) -> NewItem:
    return NewItem(source=f"discord:{guild}/1/{n}/{n}", title=f"p{n}.png", guild_id=guild,
                   channel_id=1, message_id=n, attachment_id=n, author_id=9)


@pytest.fixture
def engine(tmp_path):
    e = Engine.open(tmp_path / "c", model="builtin:tiny-shapes", create=True)
    yield e
    e.close()


async def test_files_and_posts_get_the_same_answers(engine, pictures):
    files = scan_folder(pictures)
    built = await build_collection(engine.collection, engine.encoder, files, save=False)
    assert (built.added, built.duplicates, len(built.failed)) == (2, 1, 1)

    datas = [f.read_bytes() for f in sorted(pictures.iterdir())]
    posts = [post(5, n) for n in range(4)]
    added = await engine.add_images(posts, datas)
    # the same outcome: two stored, the copy a duplicate, the broken one failed
    assert len(added.ids) == 2
    assert added.duplicates == [posts[2].source]
    assert [s for s, _ in added.failed] == [posts[3].source]
    # failures name the post, as a build's name the file
    (source, why), = added.failed
    assert why.startswith(f"{source}: not an image")
    assert built.failed[0][1].startswith(f"{files[3].source}: not an image")


async def test_a_picture_is_stored_once_per_guild(engine, pictures):
    data = (pictures / "a.png").read_bytes()
    first = await engine.add_images([post(5, 1), post(5, 2)], [data, data])
    assert len(first.ids) == 1 and first.duplicates == [post(5, 2).source]
    # the same picture in another server is that server's own item
    other = await engine.add_images([post(6, 1)], [data])
    assert len(other.ids) == 1
    # a source already stored is not read again: no new item, reported as a duplicate
    again = await engine.add_images([post(5, 1)], [b"anything"])
    assert again.ids == [] and again.duplicates == [post(5, 1).source] and not again.failed
    assert len(engine.collection) == 2
    # a folder build (guild-less: its scope is the whole collection) skips the stored picture
    built = await build_collection(engine.collection, engine.encoder,
                                   [r for r in scan_folder(pictures) if r.source.endswith("/a.png")])
    assert built.added == 0 and built.duplicates == 1


async def test_repeats_are_dropped_before_the_model_and_their_posts_kept(
        engine, pictures, monkeypatch):
    import index.build
    decoded, encoded = [], []
    open_image, encode = index.build.open_image, engine.encoder.encode_pixels

    def counting_open(data, name=""):
        decoded.append(name)
        return open_image(data, name=name)

    async def counting_encode(pixels, **kw):
        encoded.append(len(pixels))
        return await encode(pixels, **kw)

    monkeypatch.setattr(index.build, "open_image", counting_open)
    monkeypatch.setattr(engine.encoder, "encode_pixels", counting_encode)
    a, b = (pictures / "a.png").read_bytes(), (pictures / "b.png").read_bytes()
    posts = [post(5, n) for n in range(6)]  # a, b, a, a, b, b: each posted three times
    added = await engine.add_images(posts, [a, b, a, a, b, b])
    assert len(added.ids) == 2 and added.duplicates == [p.source for p in posts[2:]]
    assert decoded == [posts[0].source, posts[1].source] and sum(encoded) == 2
    # every repeat is still a post of its picture: it stays while any of them remains
    by_item = {}
    for p in engine.posts(5):
        by_item.setdefault(p.item_id, []).append(p.message_id)
    assert sorted(by_item.values()) == [[0, 2, 3], [1, 4, 5]]
    # a later chunk of repeats alone (nothing to encode) is recorded too
    again = await engine.add_images([post(5, 7)], [a])
    assert again.duplicates == [post(5, 7).source] and sum(encoded) == 2
    assert sorted(p.message_id for p in engine.posts(5)) == [0, 1, 2, 3, 4, 5, 7]
