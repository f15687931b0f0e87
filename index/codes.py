"""What an encoder answers, and the priorities of its requests, without torch.

Shared by the in-process encoder (`encoder.py`) and the encoder service's client
(`service/client.py`), so a process that encodes through the service never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attention import WordWeights

SEARCH = 0  # priority of interactive requests
BULK = 10  # priority of indexing


@dataclass(frozen=True)
class TextCode:
    """What the encoder knows of a text: its vector and which words it attended to."""

    vector: np.ndarray  # L2-normalised float32
    words: WordWeights | None  # None: this tower cannot say (see attention.py)
