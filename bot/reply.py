"""What a command answers, independent of the transport (Discord or the console).

`core` produces these; `render.to_discord` turns one into a message, the console prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MORE = " · ▶️ for more"  # in the head of a page with more results, under paging controls
WEAK_MORE = " · ▶️ shows them"  # ... where the results that follow are under the relevance floor


@dataclass(frozen=True)
class FileOut:
    """A file the reply uploads (a thumbnail, the attention picture)."""

    name: str  # unique within one reply; what `attachment://name` refers to
    data: bytes
    description: str = ""


@dataclass(frozen=True)
class Card:
    """One search result."""

    rank: int  # 1-based over the whole result list
    score: float  # cosine
    title: str
    credit: str = ""
    link: str | None = None  # where a click goes (the photo's page, the image URL, a message)
    image_url: str | None = None  # results whose image lives at a URL
    file: FileOut | None = None  # results whose image is a local file: an uploaded thumbnail
    source: str = ""  # a short description of where it came from (file name, host)
    copies: tuple[str, ...] = ()  # links to its near-copies, shown as this one result


@dataclass
class Reply:
    """One answer: a line of text, or a page of results.

    `error` replies are one line that says what to do. `state` is set on a page of
    results that can be turned (the transport keeps it per result message).
    """

    text: str
    cards: list[Card] = field(default_factory=list)
    attention_text: str = ""
    attention_png: FileOut | None = None
    error: bool = False
    state: Any = None  # core.PagingState for a page of results
    picture: FileOut | None = None  # a picture that is the answer itself (a result's heatmap)

    @property
    def files(self) -> list[FileOut]:
        out = [c.file for c in self.cards if c.file is not None]
        if self.attention_png is not None:
            out.append(self.attention_png)
        if self.picture is not None:
            out.append(self.picture)
        return out

    @property
    def is_page(self) -> bool:
        return self.state is not None
