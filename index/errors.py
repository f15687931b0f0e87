"""The engine's user-facing errors.

Every error a user can cause is a `ClipfindError` whose `str()` is one line that says what
is wrong and what to do. The CLI and the bot print that line; anything else is a bug and
gets a traceback in the log.
"""


class ClipfindError(Exception):
    """A problem the user can fix; str(e) is the one line to show them."""


class QueryError(ClipfindError):
    """A malformed query."""


class ModelError(ClipfindError):
    """A model spec that cannot be resolved or loaded."""


class StoreError(ClipfindError):
    """A collection that cannot be opened or written."""


class BadItem(StoreError):
    """One item of a batch the store refuses (its vector, a field); the batch is not stored,
    the other items may be stored without it."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


class ModelMismatch(StoreError):
    """A collection opened with another model than the one that built it."""


class ImageError(ClipfindError):
    """Bytes that are not a usable image (not an image, truncated, too large)."""


class FetchError(ClipfindError):
    """A URL that could not or must not be fetched."""


class SourceError(ClipfindError):
    """A build source (folder, URL list, TSV, feature file) that cannot be read."""


class Busy(ClipfindError):
    """The encoder queue is full; try again in a moment."""

    def __init__(self, message: str = "busy, try again in a moment"):
        super().__init__(message)


class StoreUnavailable(StoreError):
    """The vector store (a Milvus server) cannot be reached; the process keeps serving and
    the store's next call tries again. At start the message names the URI instead."""

    def __init__(self, message: str = "the image store is unreachable right now, try again shortly"):
        super().__init__(message)


class EncoderUnavailable(ClipfindError):
    """The encoder service (encoder_url) cannot be reached; the process keeps serving and
    the next search tries again. At start the message names the URL instead."""

    def __init__(self, message: str = "the search service is unreachable, try again shortly"):
        super().__init__(message)


class EncoderTokenError(ClipfindError):
    """The encoder service refused this process's token (encoder_token)."""


class HeatmapUnavailable(ClipfindError):
    """A heatmap asked of a model whose image tower cannot give one (not an open_clip ViT)."""


class ItemGone(ClipfindError):
    """A result that no longer exists, or whose picture can no longer be read."""
