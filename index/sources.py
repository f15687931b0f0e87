"""Where a build's images come from: folders, URL lists, Unsplash TSVs, feature files.

Each reader turns its input into `SourceRecord`s; a record's `source` is its unique key in
the collection (an absolute path, or a URL). Nothing here decodes or fetches an image.
Every problem a user can fix is a `SourceError` whose message starts with the file's name.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from index.errors import SourceError
from index.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048

UNSPLASH_REQUIRED = ("photo_id", "photo_url", "photo_image_url")
UNSPLASH_OPTIONAL = (
    "photographer_first_name",
    "photographer_last_name",
    "photographer_username",
    "photo_description",
    "ai_description",
)
UNSPLASH_IMAGE_WIDTH = 640


@dataclass
class SourceRecord:
    source: str  # unique key in the collection: absolute path for files, URL for URL sources
    location: str  # a file path or a URL to fetch the image bytes from
    is_url: bool
    title: str = ""
    credit: str = ""
    page_url: str = ""
    stamp: str = ""  # files: f"{mtime_ns}:{size}"; URLs: "" (fetched once)


def title_from_name(name: str) -> str:
    """'red_sports-car.JPG' stem -> 'red sports car'."""
    return " ".join(re.sub(r"[_\-]+", " ", name).split())


# ---------------------------------------------------------------------------- folders


def _folder_captions(folder: Path) -> dict[str, str]:
    """file name -> caption from a `captions.csv` (columns file, caption) beside the images,
    as `python -m index demo` writes; titles for the results. Empty when absent or unreadable."""
    try:
        with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
            return {row["file"]: row["caption"].strip() for row in csv.DictReader(f)
                    if row.get("file") and row.get("caption")}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return {}


def scan_folder(path: Path) -> list[SourceRecord]:
    """Every image file under `path`, recursively, sorted by path.

    Extensions are matched case-insensitively against IMAGE_EXTENSIONS. Hidden entries
    (name starting with '.', which includes macOS '._x.jpg' resource forks) are skipped.
    Symlinks are followed, but each real directory is walked once, so loops are harmless.
    Unreadable subfolders and broken links are skipped with a warning.
    """
    root = Path(os.path.abspath(os.path.expanduser(path)))
    if not root.exists():
        raise SourceError(f"{path}: no such folder")
    if not root.is_dir():
        raise SourceError(f"{path}: not a folder; give the folder that holds the images")
    try:
        os.scandir(root).close()
    except OSError as e:
        raise SourceError(f"{path}: cannot read the folder ({e.strerror})") from e

    records: list[SourceRecord] = []
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue
        seen_dirs.add(key)
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            log.warning("skipping unreadable folder %s (%s)", folder, e.strerror)
            continue
        captions = _folder_captions(folder)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                est = entry.stat()  # follows symlinks
            except OSError:
                log.warning("skipping broken link or unreadable entry %s", entry.path)
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append(Path(entry.path))
            elif stat.S_ISREG(est.st_mode):
                p = Path(entry.path)
                if p.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                records.append(
                    SourceRecord(
                        source=str(p),
                        location=str(p),
                        is_url=False,
                        title=captions.get(p.name) or title_from_name(p.stem),
                        stamp=f"{est.st_mtime_ns}:{est.st_size}",
                    )
                )
            else:  # a FIFO, socket or device: reading it could block or never end
                log.warning("skipping %s: not a regular file (a pipe, socket or device)", entry.path)
    records.sort(key=lambda r: r.source)
    return records


# ---------------------------------------------------------------------------- URL lists


def _read_text(path: Path, what: str) -> str:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a folder, not {what}") from None
    except OSError as e:
        raise SourceError(f"{path}: cannot read the file ({e.strerror})") from e
    if b"\0" in raw[:65536]:
        raise SourceError(f"{path}: not a text file; expected {what}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(
            f"{path}: not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8"
        ) from None


def _url_problem(url: str) -> str | None:
    if len(url) > MAX_URL_LENGTH:
        return f"URL longer than {MAX_URL_LENGTH} characters"
    if any(c.isspace() for c in url):
        return "contains spaces; put one URL per line"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "not an http or https URL"
    try:
        host = parts.hostname
    except ValueError:
        return "not a valid URL"
    if not host:
        return "URL has no host name"
    return None


def _title_from_url(url: str) -> str:
    last = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    stem = last.rsplit(".", 1)[0] if "." in last else last
    return title_from_name(stem)


def read_url_list(path: Path) -> tuple[list[SourceRecord], list[tuple[int, str]]]:
    """URLs from a text file, one per line; blank lines and '#' comments are skipped.

    Returns (records in file order, each URL once; bad lines as (line number, reason)).
    A record's title is the file name at the end of the URL, '_' and '-' read as spaces.
    """
    text = _read_text(path, "a list of URLs")
    records: list[SourceRecord] = []
    bad: list[tuple[int, str]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        problem = _url_problem(url)
        if problem is not None:
            bad.append((number, problem))
            continue
        if url in seen:
            continue
        seen.add(url)
        records.append(
            SourceRecord(source=url, location=url, is_url=True, title=_title_from_url(url))
        )
    return records, bad


# ---------------------------------------------------------------------------- Unsplash


def _raise_csv_field_limit() -> None:
    # Unsplash descriptions can be long; csv's default field limit is 128 KiB. Raise it
    # (process-wide, as csv only offers) to 64 MiB, never lower it.
    if csv.field_size_limit() < 64 * 2**20:
        csv.field_size_limit(64 * 2**20)


def unsplash_image_url(photo_image_url: str, width: int = UNSPLASH_IMAGE_WIDTH) -> str:
    """The imgix URL of a `width`-pixel-wide rendition."""
    sep = "&" if "?" in photo_image_url else "?"
    return f"{photo_image_url}{sep}w={width}"


def unsplash_credit(first: str, last: str, username: str) -> str:
    """'Photo by First Last (@username) on Unsplash', degrading gracefully."""
    name = " ".join(p for p in (first.strip(), last.strip()) if p)
    username = username.strip()
    if name and username:
        return f"Photo by {name} (@{username}) on Unsplash"
    if name or username:
        return f"Photo by {name or '@' + username} on Unsplash"
    return "Photo on Unsplash"


def read_unsplash_tsv(path: Path) -> list[SourceRecord]:
    """Photos from an Unsplash Lite/Full `photos.tsv000` (tab-separated, header row).

    Needs the columns photo_id, photo_url, photo_image_url (SourceError names those that are
    missing); photographer_first_name/last_name/username, photo_description and
    ai_description are used when present. Rows with no image URL are skipped and their
    count logged; a photo listed twice is kept once.
    """
    _raise_csv_field_limit()
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # closed by the with below
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a folder, not an Unsplash photos.tsv file") from None
    except OSError as e:
        raise SourceError(f"{path}: cannot read the file ({e.strerror})") from e

    records: list[SourceRecord] = []
    seen: set[str] = set()
    skipped = 0
    with f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader, None)
            if not header:
                raise SourceError(
                    f"{path}: empty file; expected an Unsplash photos.tsv with a header row"
                )
            columns = {name.strip(): i for i, name in enumerate(header)}
            missing = [c for c in UNSPLASH_REQUIRED if c not in columns]
            if missing:
                raise SourceError(
                    f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(missing)}; expected an Unsplash photos.tsv header"
                )
            idx = {c: columns.get(c) for c in UNSPLASH_REQUIRED + UNSPLASH_OPTIONAL}

            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue

                def col(name: str, row: list[str] = row) -> str:
                    i = idx[name]
                    return row[i].strip() if i is not None and i < len(row) else ""

                image_url = col("photo_image_url")
                photo_id = col("photo_id")
                page = col("photo_url") or (
                    f"https://unsplash.com/photos/{photo_id}" if photo_id else ""
                )
                if not image_url or not page:
                    skipped += 1
                    continue
                if page in seen:
                    continue
                seen.add(page)
                title = col("photo_description") or col("ai_description")
                image = unsplash_image_url(image_url)
                records.append(
                    SourceRecord(  # source is the image itself: what a result shows
                        source=image,
                        location=image,
                        is_url=True,
                        title=" ".join(title.split()),
                        credit=unsplash_credit(
                            col("photographer_first_name"),
                            col("photographer_last_name"),
                            col("photographer_username"),
                        ),
                        page_url=page,
                    )
                )
        except UnicodeDecodeError as e:
            raise SourceError(
                f"{path}: not UTF-8 text (bad byte at offset {e.start}); "
                "expected an Unsplash photos.tsv"
            ) from None
        except csv.Error as e:
            raise SourceError(f"{path}: line {reader.line_num}: unreadable TSV ({e})") from None
    if skipped:
        log.warning("%s: skipped %d row(s) without an image URL", path, skipped)
    return records


# ---------------------------------------------------------------------------- classify


def classify_source(arg: str) -> str:
    """'folder', 'unsplash' (a file whose first line is a TSV header with photo_id and
    photo_image_url) or 'urls' (any other text file). SourceError when it is none."""
    if re.match(r"(?i)^https?://", arg.strip()):
        raise SourceError(
            f"{arg}: a single URL is not a source; put URLs in a text file, one per line"
        )
    p = Path(arg).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise SourceError(f"{arg}: no such file or folder") from None
    except OSError as e:
        raise SourceError(f"{arg}: cannot read it ({e.strerror})") from e
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{arg}: not a regular file or folder")
    suffix = p.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        raise SourceError(
            f"{arg}: is a single image; give the folder that holds it, "
            "a URL list or an Unsplash photos.tsv"
        )
    if suffix in (".npy", ".npz"):
        raise SourceError(f"{arg}: is a feature file; pass it as precomputed features")
    try:
        with open(p, "rb") as f:
            head = f.read(65536)
    except OSError as e:
        raise SourceError(f"{arg}: cannot read the file ({e.strerror})") from e
    if b"\0" in head:
        raise SourceError(
            f"{arg}: not a text file; give a folder, a URL list or an Unsplash photos.tsv"
        )
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        first_line = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        # A long first line may have been cut inside a character; that cannot be a header.
        first_line = first.decode("utf-8-sig", errors="replace")
    fields = {c.strip() for c in first_line.split("\t")}
    if "photo_id" in fields and "photo_image_url" in fields:
        return "unsplash"
    return "urls"


# ---------------------------------------------------------------------------- features


def _read_photo_ids(ids: Path) -> list[str]:
    text = _read_text(ids, "a photo_ids.csv")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SourceError(f"{ids}: empty file; expected a header 'photo_id' and one id a line")
    rows = list(csv.reader(lines))
    header = [c.strip() for c in rows[0]]
    if "photo_id" not in header:
        shown = lines[0][:40]
        raise SourceError(f"{ids}: first line must be the header 'photo_id', found '{shown}'")
    col = header.index("photo_id")
    out: list[str] = []
    first_line: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        value = row[col].strip() if col < len(row) else ""
        if not value:
            raise SourceError(f"{ids}: line {number}: empty photo id")
        if value in first_line:
            raise SourceError(
                f"{ids}: photo id {value} appears twice (lines {first_line[value]} and {number})"
            )
        first_line[value] = number
        out.append(value)
    return out


def _rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:5])
    more = f" … ({len(rows)} in all)" if len(rows) > 5 else ""
    return f"{shown}{more} (counting from 0)"


def read_features(
    features: Path, ids: Path, url_template: str
) -> tuple[list[SourceRecord], np.ndarray]:
    """Precomputed CLIP features as the public Unsplash CLIP demos distribute them.

    `features`: a .npy of shape (N, D), float16 or float32 (D is 512 for ViT-B/32; the
    engine checks D against its model). `ids`: photo_ids.csv, header 'photo_id', N rows,
    row i belonging to vector i. `url_template` makes each photo's URL from '{id}'.
    Returns (records, float32 (N, D) L2-normalised vectors).
    """
    if "{id}" not in url_template:
        raise SourceError(
            f"url template '{url_template}' has no {{id}}; "
            "use e.g. https://unsplash.com/photos/{id}"
        )
    try:
        url_template.format(id="x")
    except (KeyError, IndexError, ValueError):
        raise SourceError(
            f"url template '{url_template}' has other placeholders; use only {{id}}"
        ) from None

    features = Path(features)
    if not features.exists():
        raise SourceError(f"{features}: no such file")
    if features.is_dir():
        raise SourceError(f"{features}: is a folder, not a .npy feature file")
    try:
        arr = np.load(features, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise SourceError(f"{features}: not a .npy array file ({_one_line(e)})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise SourceError(f"{features}: not a .npy array file (an .npz archive)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise SourceError(
            f"{features}: holds {arr.dtype} numbers; expected float16 or float32 features"
        )
    if arr.ndim != 2:
        raise SourceError(f"{features}: expected a 2-D array (N, D), got shape {tuple(arr.shape)}")
    n, dim = arr.shape
    if n == 0 or dim == 0:
        raise SourceError(f"{features}: has no rows (shape {tuple(arr.shape)})")

    photo_ids = _read_photo_ids(Path(ids))
    if len(photo_ids) != n:
        raise SourceError(
            f"{features} has {n} rows but {ids} has {len(photo_ids)} ids; "
            "they must match one to one"
        )

    vecs = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(vecs).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise SourceError(f"{features}: rows {_rows_text(bad)} contain NaN or infinity")
    norms = np.linalg.norm(vecs, axis=1)
    zero = norms == 0
    if zero.any():
        bad = np.flatnonzero(zero)
        raise SourceError(f"{features}: rows {_rows_text(bad)} are all zeros")
    vecs = vecs / norms[:, None]

    records = []
    for pid in photo_ids:
        url = url_template.format(id=pid)
        records.append(SourceRecord(source=url, location=url, is_url=True, page_url=url))
    return records, np.ascontiguousarray(vecs, dtype=np.float32)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:100] if lines else type(e).__name__
