r"""Vote aggregation: answer extraction, score-weighted voting and votability detection.

This module is pure (standard library only, no I/O). It implements section 5 of the method,
"Vote aggregation":

- :func:`extract_answer` reads the final answer out of a model's reply (a JSON ``"answer"``
  field, a ``\boxed{}`` answer, a choice letter, or the last number) and normalises it so that
  equal answers compare equal.
- :func:`vote` groups candidates by extracted answer, sums their routing scores per group and
  returns the index of the best candidate of the winning group.
- :func:`dataset_votability` decides, when a bank is built, which datasets have answers that can
  be compared at all; :func:`query_is_votable` applies that decision to a new query through its
  support set.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

__all__ = [
    "CORRECT_SCORE",
    "MIN_CONSISTENCY",
    "MIN_CONSISTENCY_GAIN",
    "MIN_CORRECT_AGREEMENT",
    "MIN_CORRECT_PAIRS",
    "MIN_EXTRACTION_RATE",
    "BankRowLike",
    "VotabilityReport",
    "dataset_votability",
    "extract_answer",
    "normalize_answer",
    "query_is_votable",
    "vote",
]

# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

# The key of a JSON (or JSON-like, single-quoted) "answer" field, followed by its separator.
_ANSWER_KEY_RE = re.compile(r"""["']answer["']\s*:\s*""", re.IGNORECASE)

# A reply that is only a choice letter: "B", "B\n", "A)", "(C)", "D.", "A:", "D (...", "A) text".
# A letter followed by ":" and more text is not one ("A: 18" answers a "Q:").
_BARE_LETTER_RE = re.compile(r"\(?([A-E])\s*(?:[).:]|[).](?:\s.*)|\s+\(.*)?", re.DOTALL)
_BARE_LOWER_LETTER_RE = re.compile(r"\(?([a-e])[).:]?\)?")

# A choice letter announced in prose: "The answer is (C)", "Answer: B", "correct option is D."
# The letter (uppercase) must be parenthesised, or followed by punctuation or the end of a line,
# so that the article in "Answer: A bird" is not read as a choice.
_PHRASED_LETTER_RE = re.compile(
    r"\b(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*(?i:option\s+|choice\s+)?\**"
    r"(?:\(([A-E])\)|([A-E])(?=\**(?:[).:,;!]|[ \t]*$)))",
    re.MULTILINE,
)

# A number in free text: optional sign and dollar, thousands separated by commas, decimals, a
# simple fraction, and a percent sign. The look-behind keeps "x2" or "16-3" from giving "2"/"-3".
_NUMBER_RE = re.compile(
    r"(?<![\w.])(?P<sign>-)?\$?(?P<sign2>-)?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)"
    r"(?P<dec>\.\d+)?"
    r"(?:/(?P<den>\d+)(?![\d.]))?"
)
_DECIMAL_ONLY_RE = re.compile(r"(?<![\w.])(?P<sign>-)?\$?\.(?P<dec>\d+)")

# A whole answer that is one number (after clean-up): "1,000", "18.0", "-3.50", "3/4", ".5".
_FULL_NUMBER_RE = re.compile(
    r"(?P<sign>[-+])?(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<dec>\.\d+)?(?:/(?P<den>\d+))?"
)

# A number followed by words ("45 miles", "7 dozens", "6 miles per hour", "156 kgs",
# "25,000/year", "36 cm^2") is the number: the words name a unit or the counted thing, and models
# differ in whether they write them. Not when the first word joins or operates on the number
# ("12 or 13", "5 and 7", "2 sin x"), and not a single letter ("4x", "5 m").
_NUMBER_WITH_WORDS_RE = re.compile(
    r"(?P<num>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?)\s*/?\s*"
    r"(?P<word>[A-Za-z]{2,})(?:[A-Za-z'/ .-]*?)(?:\^\{?[23]\}?)?"
)
_NOT_UNIT_WORDS = frozenset(
    {
        *("and", "or", "to", "plus", "minus", "times", "divided", "over", "by", "mod", "pmod"),
        *("sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "pi"),
        *("of", "is", "are", "if", "for", "with", "from", "but", "not", "nor", "than", "then"),
        *("else", "where", "when"),
    }
)
# "1112112_3", "-221_{3}", "100100_b": a numeral with its base as a subscript.
_BASE_SUBSCRIPT_RE = re.compile(r"(?P<num>-?[0-9A-Fa-f]+)_\{?(?:\d+|[a-z])\}?")
_SUBSCRIPT_DIGITS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_TEXT_MACRO_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|operatorname)\s*"
    r"\{([^{}]*)\}"
)
# "x = 5", "k_1 = 3", "\theta = \pi/4": the value of a single variable.
_SINGLE_VAR_ASSIGN_RE = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*=\s*")
_PAREN_LETTER_RE = re.compile(r"\(([A-E])\)|([A-E])\)")


def _decode_json_string(body: str) -> str:
    r"""Decode the body of a JSON string, keeping LaTeX commands that models leave unescaped.

    Models often write ``"\\frac{1}{2}"`` as ``"\frac{1}{2}"`` inside JSON; a strict decoder
    turns ``\f``, ``\b``, ``\t``, ``\n``, ``\r`` followed by letters into control characters
    (form feed + ``rac``). Here a backslash followed by two or more letters is a LaTeX command
    and is kept as written; the usual JSON escapes are decoded otherwise.
    """
    out: list[str] = []
    i = 0
    n = len(body)
    simple = {'"': '"', "\\": "\\", "/": "/", "'": "'"}
    whitespace = {"n": "\n", "t": "\t", "r": "\r", "b": "", "f": ""}
    while i < n:
        ch = body[i]
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in simple:
            out.append(simple[nxt])
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6]):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        elif nxt in whitespace and not (i + 2 < n and body[i + 2].isalpha()):
            out.append(whitespace[nxt])
            i += 2
        else:  # a LaTeX command (\frac, \text, \neq, \boxed, \right, ...) or a stray backslash
            out.append("\\")
            i += 1
    return "".join(out)


def _scan_json_string(text: str, start: int) -> str | None:
    """Return the raw body of the JSON string whose opening quote is at ``text[start]``."""
    quote = text[start]
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == quote:
            return text[start + 1 : i]
        i += 1
    return None


def _json_answer(text: str) -> tuple[bool, str | None]:
    """Find a JSON ``"answer"`` field in ``text``.

    Returns ``(found, value)``: ``found`` is True when the reply has an answer field at all (in a
    well-formed JSON object or not; inside code fences or surrounded by text), and ``value`` is
    its raw text (``None`` for ``null`` or an unreadable value). The first field wins: models
    that ramble on after their JSON (inventing new questions and answering them) add more.
    """
    for match in _ANSWER_KEY_RE.finditer(text):
        pos = match.end()
        if pos >= len(text):
            continue
        first = text[pos]
        if first in "\"'":
            body = _scan_json_string(text, pos)
            if body is None:  # unterminated string: take the rest of the line
                body = text[pos + 1 :].split("\n", 1)[0]
            return True, _decode_json_string(body) if first == '"' else body
        if first in "{[":
            try:
                value, _ = json.JSONDecoder(strict=False).raw_decode(text, pos)
            except ValueError:
                return True, None
            return True, json.dumps(value, sort_keys=True, separators=(",", ":"))
        line = text[pos:].split("\n", 1)[0].strip().rstrip(",").rstrip("}").strip()
        if not line or line.lower() == "null":
            return True, None
        return True, line
    return False, None


def _brace_matches(text: str) -> dict[int, int]:
    """Map the position of each balanced ``{`` in ``text`` to that of its ``}``."""
    matches: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            matches[stack.pop()] = i
    return matches


def _strip_braced_macro(text: str, macro: str) -> str:
    r"""Replace every ``\macro{content}`` (nested braces allowed) by ``content``."""
    matches = _brace_matches(text)
    drop: set[int] = set()
    for found in re.finditer(re.escape("\\" + macro) + r"(?![a-zA-Z]) *", text):
        brace = found.end()
        if brace < len(text) and text[brace] == "{":
            drop.update(range(found.start(), brace + 1))
            if brace in matches:
                drop.add(matches[brace])
        else:  # "\boxed 5": drop the macro name only
            drop.update(range(found.start(), found.start() + len(macro) + 1))
    return "".join(ch for i, ch in enumerate(text) if i not in drop)


def _normalize_number(
    sign: str | None, int_part: str | None, dec: str | None, den: str | None
) -> str:
    """Canonical text of a number: no commas, no trailing zeros, ``-0`` -> ``0``."""
    digits = (int_part or "0").replace(",", "")
    try:
        value = Decimal(digits + (dec or ""))
    except InvalidOperation:  # pragma: no cover - the regexes only pass digits
        return f"{sign or ''}{digits}{dec or ''}"
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if den is not None:
        text = f"{text}/{int(den)}"
    if sign == "-" and text.strip("0./") != "":
        text = "-" + text
    return text


def _last_braced(text: str, macro: str) -> str | None:
    r"""Return the content of the last ``\macro{...}`` in ``text`` (nested braces allowed)."""
    if "\\" + macro not in text:
        return None
    matches = _brace_matches(text)
    for found in reversed(list(re.finditer(re.escape("\\" + macro) + r"(?![a-zA-Z]) *", text))):
        brace = found.end()
        if brace in matches:
            return text[brace + 1 : matches[brace]]
    return None


# The body of one brace group, allowing one level of nested braces ("\sqrt{5}", "x^{2}").
_BRACED = r"\{((?:[^{}]|\{[^{}]*\})*)\}"
_FRAC_RE = re.compile(r"\\frac" + _BRACED + _BRACED)
# Numerators and denominators that need no parentheses once "\frac{a}{b}" is written "a/b".
_ATOMIC_RE = re.compile(r"-?\d+(?:\.\d+)?|-?[a-zA-Z]|-?\d*\\sqrt\{[^{}]*\}|-?\d*\\pi")
# "4 * 125 = 500", "1200 + 800 = 2000": arithmetic then its value.
_ARITHMETIC_RE = re.compile(r"[\d\s.,+\-*/×()^]+=\s*(?P<value>-?[\d,]*\.?\d+)")


def _frac_to_slash(match: re.Match[str]) -> str:
    parts = []
    for part in (match.group(1), match.group(2)):
        parts.append(part if _ATOMIC_RE.fullmatch(part) else f"({part})")
    return f"{parts[0]}/{parts[1]}"


def normalize_answer(answer: str) -> str | None:
    r"""Normalise an extracted answer so that equivalent renderings compare equal.

    Strips math delimiters (``$``, ``\(``, ``\[``), ``\boxed{}``, ``\text{}``-like macros,
    ``\left``/``\right``, spacing commands, degree signs, percent signs, unit words after a
    number (``45 miles``), a base subscript (``1011_2``), a leading single-variable assignment
    (``x = 5``), an arithmetic lead-in (``4 * 125 = 500``), placeholder underscores, all
    whitespace and a trailing full stop. ``\dfrac``/``\tfrac``/``\frac{a}{b}`` become ``a/b``
    (parenthesised unless simple), ``√``/``sqrt(x)`` become ``\sqrt{x}``. A whole answer that is
    a number is canonicalised (``1,000`` -> ``1000``, ``18.0`` -> ``18``, ``$18`` -> ``18``,
    ``-3.50`` -> ``-3.5``, ``-\frac{3}{4}`` -> ``-3/4``); ``(C)`` becomes ``C``. Case is kept.
    Returns ``None`` when nothing is left.
    """
    text = answer.strip().strip("_").strip()
    if not text:
        return None
    choice = _BARE_LETTER_RE.fullmatch(text)
    if choice:  # "C", "(C)", "C) 12", "C. 12"
        return choice.group(1)
    if "\\boxed" in text or "\\fbox" in text:  # keep what is inside the boxes
        text = _strip_braced_macro(_strip_braced_macro(text, "boxed"), "fbox")
    for _ in range(3):
        text = _TEXT_MACRO_RE.sub(r"\1", text)
    # Roots, fractions, symbols.
    text = re.sub(r"√\s*(\d+)", r"\\sqrt{\1}", text).replace("√", "\\sqrt")
    text = re.sub(r"(?<!\\)\bsqrt\s*\(([^()]*)\)", r"\\sqrt{\1}", text)
    text = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", text)
    text = text.replace("∞", "\\infty").replace("π", "\\pi")
    text = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", text)
    text = text.replace("\\displaystyle", "").replace("{,}", ",")
    # Math delimiters; a dollar is either a delimiter or a currency sign, dropped either way.
    text = re.sub(r"\\[()\[\]]", "", text).replace("\\$", "").replace("$", "")
    # Degrees and percent.
    text = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree|\\circ", "", text)
    text = re.sub(r"\\?%", "", text)
    # Spacing commands.
    text = re.sub(r"\\[,;:! ]|~", " ", text)
    text = re.sub(r"\s+", " ", text).strip().rstrip(".").strip()
    arithmetic = _ARITHMETIC_RE.fullmatch(text)
    if arithmetic and "=" in text:
        text = arithmetic.group("value")
    if text.count("=") == 1:
        text = _SINGLE_VAR_ASSIGN_RE.sub("", text, count=1)
    words = _NUMBER_WITH_WORDS_RE.fullmatch(text)
    if words and words.group("word").lower() not in _NOT_UNIT_WORDS:
        text = words.group("num")
    text = text.replace(" ", "").rstrip(".")
    # Fractions last: the parts are now free of spaces.
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    for _ in range(4):
        text, count = _FRAC_RE.subn(_frac_to_slash, text)
        if not count:
            break
    text = re.sub(r"(\d)(?:\*|\\cdot|\\times)(\\sqrt|\\pi)", r"\1\2", text)
    if not text:
        return None
    text = re.sub(r"[₀-₉]+", lambda m: "_" + m.group(0).translate(_SUBSCRIPT_DIGITS), text)
    base = _BASE_SUBSCRIPT_RE.fullmatch(text)
    if base:
        text = base.group("num")
    number = _FULL_NUMBER_RE.fullmatch(text)
    if number and (number.group("int") or number.group("dec")):
        return _normalize_number(
            number.group("sign"), number.group("int"), number.group("dec"), number.group("den")
        )
    letter = _PAREN_LETTER_RE.fullmatch(text)
    if letter:
        return letter.group(1) or letter.group(2)
    return text


def _letter_answer(text: str) -> str | None:
    """Find a choice letter A-E: a bare reply (``B``, ``A)``, ``(C)``) or one announced in prose."""
    stripped = text.strip().strip("*").strip()
    bare = _BARE_LETTER_RE.fullmatch(stripped)
    if bare:
        return bare.group(1)
    lower = _BARE_LOWER_LETTER_RE.fullmatch(stripped)
    if lower:
        return lower.group(1).upper()
    phrased = list(_PHRASED_LETTER_RE.finditer(text))
    if phrased:
        last = phrased[-1]
        return (last.group(1) or last.group(2)).upper()
    return None


def _number_answer(text: str) -> str | None:
    """Return the last number in ``text``, normalised; ``None`` when there is none."""
    last: tuple[int, str] | None = None
    for match in _NUMBER_RE.finditer(text):
        sign = "-" if (match.group("sign") or match.group("sign2")) else None
        value = _normalize_number(sign, match.group("int"), match.group("dec"), match.group("den"))
        last = (match.end(), value)
    for match in _DECIMAL_ONLY_RE.finditer(text):
        if last is None or match.end() > last[0]:
            value = _normalize_number(match.group("sign"), "0", "." + match.group("dec"), None)
            last = (match.end(), value)
    return None if last is None else last[1]


def extract_answer(text: str) -> str | None:
    r"""Extract the final answer of a model's reply, normalised; ``None`` if there is none.

    In priority order:

    1. a JSON ``"answer"`` field (a JSON object, possibly in code fences, surrounded by text or
       malformed, e.g. with unescaped LaTeX backslashes): its value, normalised by
       :func:`normalize_answer` (``null`` gives ``None``); the first such field when a reply
       has several;
    2. the content of the last ``\boxed{...}``, normalised (the usual final-answer mark of
       math replies that are not JSON);
    3. a choice letter A-E: a reply that is just the letter (``"B"``, ``"A)"``, ``"(C)"``), or one
       phrased like ``"The answer is (C)"`` / ``"Answer: B"``: the uppercase letter;
    4. the last number in the text, normalised (``1,000`` -> ``1000``, ``$18`` -> ``18``,
       ``-3.50`` -> ``-3.5``, ``3/4`` kept, percent sign dropped).
    """
    if not text or not text.strip():
        return None
    found, value = _json_answer(text)
    if found:
        return None if value is None else normalize_answer(value)
    boxed = _last_braced(text, "boxed")
    if boxed is not None:
        return normalize_answer(boxed)
    letter = _letter_answer(text)
    if letter is not None:
        return letter
    return _number_answer(text)


# --------------------------------------------------------------------------------------------
# Voting
# --------------------------------------------------------------------------------------------


def vote(answers: Sequence[str | None], scores: Sequence[float]) -> int | None:
    """Score-weighted vote over extracted answers; return the index of the winning candidate.

    ``answers[i]`` is candidate i's extracted answer (``None`` when none could be extracted; such
    candidates take no part) and ``scores[i]`` its routing score R; candidates come in order of
    decreasing R. Candidates are grouped by answer and the scores summed per group. The winning
    group has the highest sum; ties go to the group holding the highest-scored candidate, then to
    the group whose first member comes earliest. The result is the index of the highest-scored
    candidate in the winning group (the earliest on ties), or ``None`` when no candidate has an
    answer (the caller then routes).
    """
    if len(answers) != len(scores):
        raise ValueError(f"{len(answers)} answers but {len(scores)} scores")
    groups: dict[str, list[int]] = {}
    for index, answer in enumerate(answers):
        if answer is not None:
            groups.setdefault(answer, []).append(index)
    if not groups:
        return None

    def best_member(members: list[int]) -> int:
        # Highest score, then earliest index.
        return min(members, key=lambda i: (-float(scores[i]), i))

    def group_key(members: list[int]) -> tuple[float, float, int]:
        top = best_member(members)
        return (-sum(float(scores[i]) for i in members), -float(scores[top]), min(members))

    winner = min(groups.values(), key=group_key)
    return best_member(winner)


# --------------------------------------------------------------------------------------------
# Votability
# --------------------------------------------------------------------------------------------

# A recorded score at or above this counts as a correct answer (scores are in [0, 1]; the real
# data is 0/1 correctness).
CORRECT_SCORE = 0.5

# Evidence thresholds, measured on the train splits of the shared data (votable: gsm, math-l5,
# arc-challenge, winogrande; not votable: mbpp, whose answers are Python code):
#
#   dataset        extraction  correct_agreement  consistency  baseline  consistency_gain
#   arc-challenge     0.965          1.000            1.000       0.766        1.000
#   winogrande        0.961          1.000            1.000       0.544        1.000
#   gsm               1.000          0.998            0.997       0.848        0.983
#   math-l5           0.992          0.981            0.979       0.685        0.934
#   mbpp              0.926          0.175            0.702       0.687        0.047
#
# Each threshold sits about midway between the two groups, so that a decision does not hinge on
# small changes of the extraction rules or of the pool.
#
# Fraction of pairs of correct answers to the same row whose extracted answers are equal. When
# correct answers do not agree once extracted, a vote splits the right answer over groups.
MIN_CORRECT_AGREEMENT = 0.6
# Fraction of pairs of equal extracted answers to the same row that are both right or both
# wrong. When equal extractions do not share correctness, the "answer" is noise (a number in code).
MIN_CONSISTENCY = 0.85
# consistency, corrected for chance: (consistency - baseline) / (1 - baseline). Where most answers
# are right, noise alone gives a high consistency (any two answers tend to be both right); this
# asks that equal answers share correctness clearly more often than any two answers do.
MIN_CONSISTENCY_GAIN = 0.5
# Fraction of answers from which something can be extracted: a vote needs answers to compare.
# Free text nearly always yields something, so this is only a floor against empty/odd replies.
MIN_EXTRACTION_RATE = 0.5
# Fewer pairs of correct answers than this is too little evidence to call a dataset votable.
MIN_CORRECT_PAIRS = 20


class BankRowLike(Protocol):
    """What votability detection reads from a bank row."""

    @property
    def dataset(self) -> str:
        """Name of the dataset the row comes from."""
        ...

    @property
    def records(self) -> Mapping[str, float]:
        """Score in [0, 1] of each model's answer."""
        ...

    @property
    def raw_output(self) -> Mapping[str, str]:
        """Answer text of each model."""
        ...


@dataclass(frozen=True)
class VotabilityReport:
    """Whether a dataset's answers can be compared by vote, with the evidence.

    Attributes:
        votable: The decision.
        rows: Number of rows of the dataset.
        answers: Number of (row, model) answers that have both a score and a text.
        extraction_rate: Fraction of those answers from which an answer was extracted.
        correct_pairs: Number of pairs of correct answers (score >= ``CORRECT_SCORE``) to the same
            row.
        correct_agreement: Fraction of those pairs whose extracted answers are equal (an answer
            that cannot be extracted equals nothing).
        equal_pairs: Number of pairs of answers to the same row with equal extracted answers.
        consistency: Fraction of those pairs that are both correct or both wrong.
        baseline_consistency: The same fraction over all pairs of answers to the same row,
            whatever their extracted answers: what ``consistency`` would be if equal extracted
            answers said nothing about correctness.
        consistency_gain: ``(consistency - baseline_consistency) / (1 - baseline_consistency)``
            (0 when the baseline is 1: no evidence).

    """

    votable: bool
    rows: int
    answers: int
    extraction_rate: float
    correct_pairs: int
    correct_agreement: float
    equal_pairs: int
    consistency: float
    baseline_consistency: float
    consistency_gain: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for a manifest."""
        return asdict(self)


def _pairs(count: int) -> int:
    return count * (count - 1) // 2


def dataset_votability(rows: Iterable[BankRowLike]) -> dict[str, VotabilityReport]:
    """Decide, per dataset, whether answers can be compared by vote.

    For each row, every model that has both a score in ``records`` and a text in ``raw_output``
    contributes one answer, extracted with :func:`extract_answer`. A dataset is votable when
    enough answers can be extracted, correct answers to the same row agree with each other once
    extracted (``correct_agreement``), and equal extracted answers share correctness
    (``consistency``); see the module constants for the thresholds.
    """
    n_rows: Counter[str] = Counter()
    n_answers: Counter[str] = Counter()
    n_extracted: Counter[str] = Counter()
    correct_pairs: Counter[str] = Counter()
    agreeing_pairs: Counter[str] = Counter()
    equal_pairs: Counter[str] = Counter()
    consistent_pairs: Counter[str] = Counter()
    all_pairs: Counter[str] = Counter()
    all_consistent_pairs: Counter[str] = Counter()
    for row in rows:
        name = row.dataset
        n_rows[name] += 1
        correct = 0
        unextracted = 0
        groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # answer -> [right, wrong]
        for model, score in row.records.items():
            text = row.raw_output.get(model)
            if score is None or not isinstance(text, str):
                continue
            n_answers[name] += 1
            is_correct = float(score) >= CORRECT_SCORE
            correct += is_correct
            answer = extract_answer(text)
            if answer is None:
                unextracted += 1
                continue
            n_extracted[name] += 1
            groups[answer][0 if is_correct else 1] += 1
        correct_pairs[name] += _pairs(correct)
        answered = sum(right + wrong for right, wrong in groups.values()) + unextracted
        all_pairs[name] += _pairs(answered)
        all_consistent_pairs[name] += _pairs(correct) + _pairs(answered - correct)
        for right, wrong in groups.values():
            agreeing_pairs[name] += _pairs(right)
            equal_pairs[name] += _pairs(right + wrong)
            consistent_pairs[name] += _pairs(right) + _pairs(wrong)

    reports: dict[str, VotabilityReport] = {}
    for name in n_rows:
        extraction_rate = n_extracted[name] / n_answers[name] if n_answers[name] else 0.0
        agreement = agreeing_pairs[name] / correct_pairs[name] if correct_pairs[name] else 0.0
        consistency = consistent_pairs[name] / equal_pairs[name] if equal_pairs[name] else 0.0
        baseline = all_consistent_pairs[name] / all_pairs[name] if all_pairs[name] else 0.0
        gain = (consistency - baseline) / (1.0 - baseline) if baseline < 1.0 else 0.0
        votable = (
            extraction_rate >= MIN_EXTRACTION_RATE
            and correct_pairs[name] >= MIN_CORRECT_PAIRS
            and agreement >= MIN_CORRECT_AGREEMENT
            and consistency >= MIN_CONSISTENCY
            and gain >= MIN_CONSISTENCY_GAIN
        )
        reports[name] = VotabilityReport(
            votable=votable,
            rows=n_rows[name],
            answers=n_answers[name],
            extraction_rate=extraction_rate,
            correct_pairs=correct_pairs[name],
            correct_agreement=agreement,
            equal_pairs=equal_pairs[name],
            consistency=consistency,
            baseline_consistency=baseline,
            consistency_gain=gain,
        )
    return reports


def query_is_votable(
    support_datasets: Sequence[str], votable: Mapping[str, bool], majority: float = 0.5
) -> bool:
    """Whether a query is votable: strictly more than ``majority`` of its support set is.

    ``support_datasets`` holds the dataset of each support-set row (repeats included);
    ``votable`` maps a dataset to its votability (unknown datasets count as not votable). An
    empty support set is not votable.
    """
    if not support_datasets:
        return False
    hits = sum(1 for name in support_datasets if votable.get(name, False))
    return hits / len(support_datasets) > majority
