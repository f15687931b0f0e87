"""index.sources: folders, URL lists, Unsplash TSVs, precomputed feature files."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.errors import ClipfindError, SourceError
from index.sources import (
    SourceRecord,
    classify_source,
    read_features,
    read_unsplash_tsv,
    read_url_list,
    scan_folder,
)


def _png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (2, 2), "red").save(out, format="PNG")
    return out.getvalue()


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    assert isinstance(excinfo.value, ClipfindError)
    return msg


# ---------------------------------------------------------------------------- folders


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    root = tmp_path / "gallery"
    (root / "cars" / "red").mkdir(parents=True)
    (root / ".hidden").mkdir()
    png = _png_bytes()
    (root / "blue_sky-at-noon.png").write_bytes(png)
    (root / "cars" / "Fast_Car.JPG").write_bytes(png)
    (root / "cars" / "red" / "truck.webp").write_bytes(png)
    (root / "cars" / "notes.txt").write_text("not an image")
    (root / "fake.png").write_text("text pretending to be a png")  # listed; decoding fails later
    (root / ".hidden" / "secret.png").write_bytes(png)
    (root / "._resource_fork.jpg").write_bytes(b"\0\5\26\7")
    return root


def test_scan_folder(gallery: Path):
    recs = scan_folder(gallery)
    rel = [os.path.relpath(r.source, gallery) for r in recs]
    assert rel == [
        "blue_sky-at-noon.png",
        os.path.join("cars", "Fast_Car.JPG"),
        os.path.join("cars", "red", "truck.webp"),
        "fake.png",
    ]
    first = recs[0]
    assert first.title == "blue sky at noon"
    assert recs[1].title == "Fast Car"
    assert all(
        not r.is_url and r.location == r.source and Path(r.source).is_absolute() for r in recs
    )
    st = (gallery / "fake.png").stat()
    assert recs[3].stamp == f"{st.st_mtime_ns}:{st.st_size}"
    assert recs[0].credit == recs[0].page_url == ""


def test_scan_folder_relative_path(gallery: Path, monkeypatch):
    monkeypatch.chdir(gallery.parent)
    recs = scan_folder(Path("gallery"))
    assert recs and all(Path(r.source).is_absolute() for r in recs)


def test_scan_folder_symlink_loop(gallery: Path):
    os.symlink(gallery, gallery / "cars" / "loop")  # points back to the root
    os.symlink(gallery / "missing.png", gallery / "broken.png")
    recs = scan_folder(gallery)
    assert len(recs) == 4  # each real folder walked once, the broken link skipped


def test_scan_folder_bad(tmp_path: Path):
    with pytest.raises(SourceError) as e:
        scan_folder(tmp_path / "nope")
    assert "no such folder" in _one_line_error(e)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(SourceError, match="not a folder"):
        scan_folder(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert scan_folder(empty) == []


# ---------------------------------------------------------------------------- URL lists


def test_read_url_list(tmp_path: Path):
    p = tmp_path / "urls.txt"
    p.write_text(
        "\ufeff# my images\n"
        "https://example.com/img/red_car.jpg\n"
        "\n"
        "   http://example.org/a%20b/photo-of-cat.png?x=1  \n"
        "ftp://example.com/x.png\n"
        "https://example.com/img/red_car.jpg\n"
        "not a url\n"
        "https://\n"
        "   # indented comment\n"
        "example.com/no-scheme.jpg\n",
        encoding="utf-8",
    )
    recs, bad = read_url_list(p)
    assert [r.source for r in recs] == [
        "https://example.com/img/red_car.jpg",
        "http://example.org/a%20b/photo-of-cat.png?x=1",
    ]
    assert recs[0] == SourceRecord(
        source="https://example.com/img/red_car.jpg",
        location="https://example.com/img/red_car.jpg",
        is_url=True,
        title="red car",
    )
    assert recs[1].title == "photo of cat"
    assert [n for n, _ in bad] == [5, 7, 8, 10]
    reasons = dict(bad)
    assert reasons[5] == "not an http or https URL"
    assert "spaces" in reasons[7]
    assert reasons[8] == "URL has no host name"


def test_read_url_list_bad_files(tmp_path: Path):
    with pytest.raises(SourceError) as e:
        read_url_list(tmp_path / "missing.txt")
    assert _one_line_error(e).endswith("missing.txt: no such file")
    b = tmp_path / "binary.txt"
    b.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    with pytest.raises(SourceError, match="not a text file"):
        read_url_list(b)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("https://example.com/caf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8"):
        read_url_list(latin)


# ---------------------------------------------------------------------------- Unsplash

UNSPLASH_HEADER = [
    "photo_id", "photo_url", "photo_image_url", "photo_submitted_at", "photo_featured",
    "photo_width", "photo_height", "photo_aspect_ratio", "photo_description",
    "photographer_username", "photographer_first_name", "photographer_last_name",
    "exif_camera_make", "exif_camera_model", "exif_iso", "exif_aperture_value",
    "exif_focal_length", "exif_exposure_time", "photo_location_name",
    "photo_location_latitude", "photo_location_longitude", "photo_location_country",
    "photo_location_city", "stats_views", "stats_downloads", "ai_description",
    "ai_primary_landmark_name", "ai_primary_landmark_latitude",
    "ai_primary_landmark_longitude", "ai_primary_landmark_confidence",
    "blur_hash",
]  # fmt: skip


def _tsv_row(**values: str) -> str:
    return "\t".join(values.get(c, "") for c in UNSPLASH_HEADER)


def _write_tsv(path: Path, rows: list[dict[str, str]], header=UNSPLASH_HEADER) -> Path:
    lines = ["\t".join(header)] + [_tsv_row(**r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_unsplash_tsv(tmp_path: Path, caplog):
    rows = [
        dict(
            photo_id="XMyPniM9LF0",
            photo_url="https://unsplash.com/photos/XMyPniM9LF0",
            photo_image_url="https://images.unsplash.com/uploads/14119011/abc",
            photo_description='A "quoted" red   fox',
            photographer_username="ann",
            photographer_first_name="Ann",
            photographer_last_name="Lee",
            ai_description="an animal",
            exif_camera_make="Canon",
        ),
        dict(
            photo_id="rDLBArZUl1c",
            photo_url="https://unsplash.com/photos/rDLBArZUl1c",
            photo_image_url="https://images.unsplash.com/photo-1?ixid=abc",
            photographer_username="bo",
            photographer_first_name="Bo",
            ai_description="a mountain at dusk",
        ),
        dict(photo_id="noimage", photo_url="https://unsplash.com/photos/noimage"),
        dict(  # duplicate of the first row
            photo_id="XMyPniM9LF0",
            photo_url="https://unsplash.com/photos/XMyPniM9LF0",
            photo_image_url="https://images.unsplash.com/uploads/14119011/abc",
        ),
    ]
    p = _write_tsv(tmp_path / "photos.tsv000", rows)
    with caplog.at_level(logging.WARNING, logger="index.sources"):
        recs = read_unsplash_tsv(p)
    assert len(recs) == 2
    a, b = recs
    assert a == SourceRecord(
        source="https://images.unsplash.com/uploads/14119011/abc?w=640",
        location="https://images.unsplash.com/uploads/14119011/abc?w=640",
        is_url=True,
        title='A "quoted" red fox',
        credit="Photo by Ann Lee (@ann) on Unsplash",
        page_url="https://unsplash.com/photos/XMyPniM9LF0",
        stamp="",
    )
    assert b.location == "https://images.unsplash.com/photo-1?ixid=abc&w=640"
    assert b.title == "a mountain at dusk"
    assert b.credit == "Photo by Bo (@bo) on Unsplash"
    assert "skipped 1 row" in caplog.text


def test_read_unsplash_tsv_missing_columns(tmp_path: Path):
    header = [c for c in UNSPLASH_HEADER if c not in ("photo_url", "photo_image_url")]
    p = _write_tsv(tmp_path / "photos.tsv000", [], header=header)
    with pytest.raises(SourceError) as e:
        read_unsplash_tsv(p)
    msg = _one_line_error(e)
    assert "missing columns photo_url, photo_image_url" in msg


def test_read_unsplash_tsv_bad_files(tmp_path: Path):
    with pytest.raises(SourceError, match="no such file"):
        read_unsplash_tsv(tmp_path / "none.tsv")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(SourceError, match="empty file"):
        read_unsplash_tsv(empty)


# ---------------------------------------------------------------------------- classify


def test_classify_source(tmp_path: Path, gallery: Path):
    assert classify_source(str(gallery)) == "folder"
    tsv = _write_tsv(tmp_path / "photos.tsv000", [])
    assert classify_source(str(tsv)) == "unsplash"
    urls = tmp_path / "urls.txt"
    urls.write_text("https://example.com/a.jpg\n")
    assert classify_source(str(urls)) == "urls"
    other_tsv = tmp_path / "other.tsv"
    other_tsv.write_text("id\turl\n1\thttps://example.com/a.jpg\n")
    assert classify_source(str(other_tsv)) == "urls"


def test_classify_source_bad(tmp_path: Path, gallery: Path):
    with pytest.raises(SourceError) as e:
        classify_source(str(tmp_path / "nope"))
    assert _one_line_error(e) == f"{tmp_path / 'nope'}: no such file or folder"
    with pytest.raises(SourceError, match="single image"):
        classify_source(str(gallery / "blue_sky-at-noon.png"))
    with pytest.raises(SourceError, match="single URL"):
        classify_source("https://example.com/a.jpg")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\0\1\2")
    with pytest.raises(SourceError, match="not a text file"):
        classify_source(str(blob))


# ---------------------------------------------------------------------------- features

TEMPLATE = "https://unsplash.com/photos/{id}"


def _features(tmp_path: Path, arr: np.ndarray, ids: list[str], header: str = "photo_id"):
    f = tmp_path / "features.npy"
    np.save(f, arr)
    i = tmp_path / "photo_ids.csv"
    i.write_text("\n".join([header, *ids]) + "\n")
    return f, i


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_read_features(tmp_path: Path, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((5, 512)) * 3).astype(dtype)
    f, i = _features(tmp_path, arr, ["a1", "b2", "c3", "d4", "e5"])
    recs, vecs = read_features(f, i, TEMPLATE)
    assert vecs.dtype == np.float32 and vecs.shape == (5, 512)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    expected = arr.astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vecs, expected, rtol=1e-5, atol=1e-6)
    assert [r.source for r in recs] == [TEMPLATE.format(id=x) for x in "a1 b2 c3 d4 e5".split()]
    assert all(r.location == r.source == r.page_url and r.is_url for r in recs)


def test_read_features_count_mismatch(tmp_path: Path):
    f, i = _features(tmp_path, np.ones((4, 8), np.float32), ["a", "b", "c"])
    with pytest.raises(SourceError) as e:
        read_features(f, i, TEMPLATE)
    msg = _one_line_error(e)
    assert "has 4 rows" in msg and "has 3 ids" in msg


def test_read_features_wrong_header(tmp_path: Path):
    f, i = _features(tmp_path, np.ones((2, 8), np.float32), ["b"], header="a")
    with pytest.raises(SourceError, match="header 'photo_id', found 'a'"):
        read_features(f, i, TEMPLATE)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.ones((3,), np.float32), "2-D array"),
        (np.ones((2, 3, 4), np.float32), "2-D array"),
        (np.zeros((0, 512), np.float32), "no rows"),
        (np.ones((3, 4), np.int64), "int64"),
        (np.array([[1, 0], [np.nan, 1], [0, np.inf]], np.float32), "rows 1, 2 .*NaN or infinity"),
        (np.array([[1, 0], [0, 0], [0, 1]], np.float16), "rows 1 .*all zeros"),
    ],
)
def test_read_features_bad_arrays(tmp_path: Path, arr, match):
    ids = [f"p{k}" for k in range(arr.shape[0])] if arr.ndim else []
    f, i = _features(tmp_path, arr, ids)
    with pytest.raises(SourceError, match=match) as e:
        read_features(f, i, TEMPLATE)
    _one_line_error(e)


def test_read_features_bad_files(tmp_path: Path):
    f, i = _features(tmp_path, np.ones((2, 4), np.float32), ["a", "b"])
    with pytest.raises(SourceError, match="no \\{id\\}"):
        read_features(f, i, "https://unsplash.com/photos/")
    with pytest.raises(SourceError, match="no such file"):
        read_features(tmp_path / "none.npy", i, TEMPLATE)
    with pytest.raises(SourceError, match="no such file"):
        read_features(f, tmp_path / "none.csv", TEMPLATE)
    text = tmp_path / "text.npy"
    text.write_text("hello, not numpy")
    with pytest.raises(SourceError, match="not a .npy array file"):
        read_features(text, i, TEMPLATE)
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.ones((2, 4)))
    with pytest.raises(SourceError, match="not a .npy array file"):
        read_features(npz, i, TEMPLATE)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match="not a .npy array file"):
        read_features(obj, i, TEMPLATE)
    dup = tmp_path / "dup.csv"
    dup.write_text("photo_id\na\na\n")
    with pytest.raises(SourceError, match="appears twice"):
        read_features(f, dup, TEMPLATE)


def test_captions_csv_beside_images_gives_titles(tmp_path):
    import csv

    from index.synthetic import write_gallery

    write_gallery(tmp_path, 3, seed=1)
    with open(tmp_path / "captions.csv", newline="") as f:
        expected = {row["file"]: row["caption"] for row in csv.DictReader(f)}
    records = scan_folder(tmp_path)
    assert {Path(r.source).name: r.title for r in records} == expected
    (tmp_path / "captions.csv").write_text("garbage\x00,,\n")
    assert [r.title for r in scan_folder(tmp_path)] == ["shape 0", "shape 1", "shape 2"]
