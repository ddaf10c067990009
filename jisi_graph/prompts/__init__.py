"""The aggregation prompts, as text files the user can read and override.

`aggregation_system_prompt` fills `aggregate.txt` with the candidates' answers, each inside its
own numbered tag. An answer is data: any text in it that looks like one of these tags is
neutralised, so that no answer can close its wrapper and speak as the instructions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

_SEP = r"(?:[^\w>]|_)*"  # anything between the words but a letter, a digit or '>'
_TAG_LIKE = re.compile(
    rf"(?:<|\uff1c|&lt;|&#0*60;|&#x0*3c;)(\s*/?{_SEP}model{_SEP}\d*{_SEP}response)",
    re.IGNORECASE,
)
"""An opening or closing response tag, however spaced, separated, cased or HTML-escaped."""


def read_prompt(name: str, override_dir: str | Path | None = None) -> str:
    """The text of prompt `name` (e.g. "aggregate.txt"), from `override_dir` if it has it."""
    if override_dir is not None:
        candidate = Path(override_dir) / name
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def neutralise(answer: str) -> str:
    """The answer with every response-tag look-alike defused (its '<' becomes '‹').

    Only tag look-alikes change: other '<' (code, maths) are left as they are.
    """
    return _TAG_LIKE.sub(lambda match: "‹" + match.group(1), answer)


def format_responses(answers: Sequence[str], confidences: Sequence[float] | None = None) -> str:
    """The answers, numbered, each inside its own <Model_i_Response> tag."""
    blocks = []
    for i, answer in enumerate(answers, start=1):
        header = f"<Model_{i}_Response>"
        if confidences is not None:
            header = f'<Model_{i}_Response confidence="{confidences[i - 1]:.2f}">'
        blocks.append(f"{header}\n{neutralise(answer)}\n</Model_{i}_Response>")
    return "\n\n".join(blocks)


def aggregation_system_prompt(
    answers: Sequence[str],
    confidences: Sequence[float] | None = None,
    override_dir: str | Path | None = None,
) -> str:
    """The aggregator's system message for these answers (with confidences if given)."""
    template = read_prompt("aggregate.txt", override_dir)
    note = read_prompt("confidence_note.txt", override_dir) if confidences is not None else ""
    return template.format(confidence_note=note, responses=format_responses(answers, confidences))
