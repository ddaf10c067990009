"""Text that tokenizers and UTF-8 accept: finding and replacing unpaired surrogates.

JSON can carry an escaped code point between U+D800 and U+DFFF on its own; Python keeps it in
a `str`, but it is not valid Unicode, so UTF-8 encoding and the embedder's tokenizer refuse it.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def first_lone_surrogate(text: str) -> int | None:
    """The position of the first unpaired surrogate in `text` (not valid Unicode), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def encodable(text: str) -> str:
    """`text` with any unpaired surrogate replaced (U+FFFD), so that tokenizers accept it."""
    if first_lone_surrogate(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)
