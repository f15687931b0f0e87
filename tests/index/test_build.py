"""Building from URL sources (a local server stands in for the web) and from bad files."""

import io
import os

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from index.build import build
from index.engine import Engine
from index.netfetch import FetchLimits
from index.sources import read_unsplash_tsv, read_url_list, scan_folder
from index.synthetic import render, scenes


def png(i: int) -> bytes:
    out = io.BytesIO()
    render(list(scenes(i + 1, seed=21))[i]).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
async def web_images():
    served = []

    async def image(request):
        served.append(request.path_qs)
        n = int(request.match_info["n"])
        return web.Response(body=png(n), content_type="image/png")

    async def page(request):
        return web.Response(text="<html>no</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/img/{n}.png", image)
    app.router.add_get("/page", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", served
    await server.close()


@pytest.fixture
def engine(tmp_path):
    e = Engine.open(tmp_path / "c", model="builtin:tiny-shapes", create=True)
    yield e
    e.close()


async def test_url_list_build_reports_failures_and_keeps_going(tmp_path, web_images, engine):
    base, served = web_images
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# three images, a web page and a missing file\n{base}/img/0.png\n"
                    f"{base}/img/1.png\n{base}/img/2.png\n{base}/page\n{base}/gone.png\n")
    records, bad = read_url_list(urls)
    report = await build(engine.collection, engine.encoder, records, limits=FetchLimits(retries=0))
    assert report.added == 3
    reasons = dict(report.failed)
    assert "text/html" in reasons[f"{base}/page"]
    assert "404" in reasons[f"{base}/gone.png"]
    again = await build(engine.collection, engine.encoder, records, limits=FetchLimits(retries=0))
    assert again.added == 0 and again.unchanged == 3
    assert served.count("/img/0.png") == 1  # stored URLs are not fetched again


async def test_member_style_public_only_build_refuses_loopback(tmp_path, web_images, engine):
    base, served = web_images
    records, _ = read_url_list(_write(tmp_path / "u.txt", f"{base}/img/0.png\n"))
    report = await build(engine.collection, engine.encoder, records, public_only=True)
    assert report.added == 0 and len(report.failed) == 1 and served == []


def _write(path, text):
    path.write_text(text)
    return path


async def test_unsplash_tsv_keeps_credit_and_page(tmp_path, web_images, engine):
    base, served = web_images
    header = ("photo_id\tphoto_url\tphoto_image_url\tphoto_submitted_at\tphoto_featured\tphoto_width\t"
              "photo_height\tphoto_aspect_ratio\tphoto_description\tphotographer_username\t"
              "photographer_first_name\tphotographer_last_name\tai_description")
    rows = [f"p{i}\thttps://unsplash.com/photos/p{i}\t{base}/img/{i}.png\t2020-01-01\tt\t64\t64\t1\t"
            f"shapes number {i}\tuser{i}\tAda\tLovelace\tsome shapes" for i in range(3)]
    tsv = _write(tmp_path / "photos.tsv000", header + "\n" + "\n".join(rows) + "\n")
    report = await build(engine.collection, engine.encoder, read_unsplash_tsv(tsv))
    assert report.added == 3
    assert served[0].endswith("?w=640")
    item = engine.collection.by_source(f"{base}/img/1.png?w=640")
    assert item.page_url == "https://unsplash.com/photos/p1"
    assert item.title == "shapes number 1"
    assert "Ada Lovelace" in item.credit and "Unsplash" in item.credit


async def test_bad_files_are_skipped_and_reported(tmp_path, engine):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "good.png").write_bytes(png(0))
    (folder / "text.jpg").write_text("hello")
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # 144 Mpx, tiny file
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    (folder / "same.png").write_bytes(png(0))  # the same picture under another name
    report = await build(engine.collection, engine.encoder, scan_folder(folder))
    failed = dict(report.failed)
    assert report.added == 1 and report.duplicates == 1
    assert any("too large" in why for why in failed.values())
    assert any("not an image" in why for why in failed.values())
    assert len(engine.collection) == 1


async def test_a_file_name_that_is_not_utf8_is_indexed_with_its_path_kept(tmp_path, engine):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(0))
    odd = os.fsencode(folder) + b"/b\xe9\xff.png"  # Latin-1 names from an old disk
    with open(odd, "wb") as f:
        f.write(png(1))
    (folder / "c.png").write_bytes(png(2))
    report = await build(engine.collection, engine.encoder, scan_folder(folder))
    assert report.added == 3 and report.failed == []
    item = engine.collection.by_source(os.fsdecode(odd))
    assert item is not None and os.fsencode(item.source) == odd  # the very same bytes
    assert open(item.source, "rb").read() == png(1)
    again = await build(engine.collection, engine.encoder, scan_folder(folder))
    assert again.added == 0 and again.unchanged == 3  # found again by its source


async def test_a_non_finite_vector_fails_its_item_not_its_chunk(tmp_path, engine, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.png").write_bytes(png(i))
    real = engine.encoder.encode_pixels

    async def one_nan(pixels, **kw):
        v = np.array(await real(pixels, **kw))
        v[2, 0] = np.nan
        return v

    monkeypatch.setattr(engine.encoder, "encode_pixels", one_nan)
    report = await build(engine.collection, engine.encoder, scan_folder(folder))
    assert report.added == 3 and len(engine.collection) == 3
    [(source, why)] = report.failed
    assert source.endswith("2.png") and "NaN" in why
