"""The encoder service's wire format, shared by the server and the client.

- Every route but `/health` needs `Authorization: Bearer TOKEN`.
- `POST /v1/texts` JSON `{"texts": [...], "priority": "search" | "bulk"}` ->
  `{"dim": D, "vectors": BASE64, "words": [[[word, weight], ...] | null, ...]}`;
  `vectors` is the n x D float32 little-endian matrix (exact, and a fraction of the size
  of decimal floats).
- `POST /v1/images` multipart/form-data, one `image` part per picture (its bytes), and an
  optional `priority` field -> `{"dim": D, "vectors": BASE64}`.
- `GET /v1/info` -> `{"model", "dim", "limits"}` (the client checks token and model with it).
- `GET /health` -> `{"model", "dim", "ready"}`; `GET /metrics` -> JSON, or Prometheus text
  with `?format=prometheus`.
- Errors: `{"error": ONE LINE, "kind": ...}` with a 4xx/5xx status; 503 (queue full) comes
  with `Retry-After`.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass

import numpy as np

TOKEN_ENV = "CLIPFIND_ENCODER_TOKEN"  # where the token is read from, unless told otherwise
DEFAULT_PORT = 8765
PRIORITIES = {"search": 0, "bulk": 10}  # = codes.SEARCH, codes.BULK


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the service (a request past them gets a 4xx)."""

    max_texts: int = 256  # texts per call
    max_text_chars: int = 2000  # per text (the tokenizer keeps 77 tokens anyway)
    max_images: int = 64  # pictures per call
    max_image_bytes: int = 16 << 20  # per picture
    max_body: int = 64 << 20  # per request, whatever its kind

    def as_json(self) -> dict:
        return asdict(self)


def pack_vectors(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode("ascii")


def unpack_vectors(data: str, dim: int) -> np.ndarray:
    flat = np.frombuffer(base64.b64decode(data), dtype="<f4")
    if dim <= 0 or flat.size % dim:
        raise ValueError(f"{flat.size} floats do not make rows of {dim}")
    return flat.reshape(-1, dim).astype(np.float32)
