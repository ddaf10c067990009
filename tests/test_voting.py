"""Tests of jisi_graph.voting: extraction, vote, votability (synthetic and on the shared data)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass, field

import pytest
from conftest import SHARED_DATA

from jisi_graph.voting import (
    MIN_CONSISTENCY,
    MIN_CONSISTENCY_GAIN,
    MIN_CORRECT_AGREEMENT,
    VotabilityReport,
    dataset_votability,
    extract_answer,
    normalize_answer,
    query_is_votable,
    vote,
)

DATA_DIR = SHARED_DATA

# --------------------------------------------------------------------------------------------
# extract_answer
# --------------------------------------------------------------------------------------------

EXTRACTION_CASES: list[tuple[str, str | None]] = [
    # JSON answer field (ZeroEval style).
    ('{"reasoning": "16 - 3 - 4 = 9 eggs, 9 * $2 = $18", "answer": "18"}', "18"),
    ('```json\n{\n    "reasoning": "9 eggs at $2",\n    "answer": "18"\n}\n```', "18"),
    ('``` json\n{"reasoning": "r", "answer": "28.00"}\n```', "28"),
    ('Here is my answer:\n\n```json\n{"reasoning": "r", "answer": "$1,250"}\n```\nDone.', "1250"),
    ('{"reasoning": "r", "answer": 18}', "18"),
    ('{"reasoning": "r", "answer": -2.50}', "-2.5"),
    ('{"reasoning": "r", "answer": null}', None),
    ('{"reasoning": "r", "answer": "___"}', None),
    # Raw newlines inside the reasoning string (not valid strict JSON).
    ('{\n  "reasoning": "Step 1:\n 3 + 4 = 7\n Step 2: 16 - 7 = 9",\n  "answer": "9"\n}', "9"),
    # LaTeX with unescaped backslashes: \f, \t, \b, \r, \n start LaTeX commands, not escapes.
    (r'{"reasoning": "so x = \frac{1}{2}", "answer": "\frac{1}{2}"}', "1/2"),
    (r'{"reasoning": "r", "answer": "\dfrac{3}{4}"}', "3/4"),
    (r'{"reasoning": "r", "answer": "$-\tfrac{3}{4}$"}', "-3/4"),
    (r'{"reasoning": "r", "answer": "\boxed{\text{(C)}}"}', "C"),
    (r'{"reasoning": "r", "answer": "\left( 1, 2 \right)"}', "(1,2)"),
    (r'{"reasoning": "r", "answer": "\theta = \frac{\pi}{4}"}', r"\pi/4"),
    (r'{"reasoning": "r", "answer": "90^\circ"}', "90"),
    (r'{"reasoning": "r", "answer": "\text{Evelyn}"}', "Evelyn"),
    (r'{"reasoning": "r", "answer": "50\%"}', "50"),
    (r'{"reasoning": "r", "answer": "\$10,407.50"}', "10407.5"),
    (r'{"reasoning": "r", "answer": "2\sqrt{2}"}', r"2\sqrt{2}"),
    # Properly escaped LaTeX gives the same.
    ('{"reasoning": "r", "answer": "\\\\frac{1}{2}"}', "1/2"),
    ('{"reasoning": "r", "answer": "x = 5"}', "5"),
    ('{"reasoning": "r", "answer": "45 miles"}', "45"),
    ('{"reasoning": "r", "answer": "12 or 13"}', "12or13"),
    ('{"reasoning": "r", "answer": "4 * 125 = 500"}', "500"),
    ('{"reasoning": "r", "answer": "1112112_3"}', "1112112"),
    ('{"reasoning": "r", "answer": "C"}', "C"),
    ("{'reasoning': 'r', 'answer': '42'}", "42"),
    # The first answer field wins (some models invent and answer new questions afterwards).
    ('{"reasoning": "a", "answer": "7"}\n\nQuestion: ...\n{"reasoning": "b", "answer": "9"}', "7"),
    # A JSON answer is not read as a letter, nor a later letter phrase as the answer.
    ('{"reasoning": "option (B) is wrong", "answer": "18"}\nThe answer is (C).', "18"),
    # Boxed answers outside JSON.
    (r"The final answer is: $\boxed{\frac{1}{2}}$", "1/2"),
    (r"so the area is $\boxed{12}$ square units.", "12"),
    # Choice letters (RouterBench arc-challenge / winogrande style).
    ("A", "A"),
    ("B\n", "B"),
    ("A)", "A"),
    ("(C)", "C"),
    ("D.", "D"),
    ("E:", "E"),
    ("D (", "D"),
    ("b)", "B"),
    ("A) 3 apples", "A"),
    ("The answer is (C).", "C"),
    ("Answer: B", "B"),
    ("I think the correct option is D.", "D"),
    ("The answer is **B**", "B"),
    # Not choice letters.
    ("A questioning attitude", None),
    ("Answer: A bird", None),
    ("I do", None),
    ("Unfortunately I", None),
    ("Randy", None),
    ("G\n", None),
    ("A: 18", "18"),
    # Numbers: the last one, normalised.
    ("She makes 9 * 2 = 18 dollars.", "18"),
    ("The total is 1,000 apples.", "1000"),
    ("It costs $18.", "18"),
    ("It is 18.0", "18"),
    ("x is -3.50 now", "-3.5"),
    ("about 3/4 of it", "3/4"),
    ("Tax is 50%.", "50"),
    ("The change is -$3.", "-3"),
    ("16-3", "3"),
    ("a value of .5", "0.5"),
    ("the list 1,2,3", "3"),
    ("It costs 1,000, not less", "1000"),
    # Nothing to extract.
    ("", None),
    ("   \n", None),
    ("I do not know.", None),
    ("No idea, sorry", None),
]


@pytest.mark.parametrize(("reply", "expected"), EXTRACTION_CASES)
def test_extract_answer(reply: str, expected: str | None) -> None:
    assert extract_answer(reply) == expected


@pytest.mark.parametrize(
    "renderings",
    [
        [r"\frac{1}{2}", r"\dfrac{1}{2}", r"\frac12", "1/2", r"$\frac{1}{2}$", r"\boxed{\tfrac12}"],
        ["18", "18.0", "18.00", "$18", r"\$18", r"\boxed{18}", "18.", "+18", "18 dollars"],
        ["1000", "1,000", r"1{,}000", "1000.0", r"1,\!000", "1000 units"],
        ["90", r"90^\circ", r"90^{\circ}", "90°", "90 degrees"],
        [r"\frac{\sqrt{3}}{2}", r"\dfrac{\sqrt3}{2}", r"\sqrt{3}/2", "√3/2"],
        [r"\frac{1+\sqrt{5}}{2}", r"(1+\sqrt{5})/2", r"\left(1 + \sqrt{5}\right)/2"],
        [r"6\sqrt{2}", "6√2", r"6 \sqrt 2", r"6\cdot\sqrt{2}", "6*sqrt(2)"],
        ["C", "(C)", r"\text{(C)}", r"\textbf{(C)}", "C)"],
        ["-0.5", "-.5", "-0.50"],
    ],
)
def test_equivalent_renderings_compare_equal(renderings: list[str]) -> None:
    normalised = {normalize_answer(r) for r in renderings}
    assert len(normalised) == 1, normalised


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (r"\frac{1}{2x}", r"\frac{1}{2}x"),
        ("1/2", "2/4"),
        ("0.5", "1/2"),
        ("12", "12 or 13"),
        ("5", "5 and 7"),
        ("2", "2x"),
        ("x+1", "x-1"),
        ("(1,2)", "[1,2]"),
    ],
)
def test_different_answers_stay_different(left: str, right: str) -> None:
    assert normalize_answer(left) != normalize_answer(right)


# --------------------------------------------------------------------------------------------
# vote
# --------------------------------------------------------------------------------------------


def test_vote_majority_beats_higher_single_score() -> None:
    # "5" alone: 0.9; "7": 0.5 + 0.5 = 1.0 -> the "7" group wins, its best member is index 1.
    assert vote(["5", "7", "7"], [0.9, 0.5, 0.5]) == 1


def test_vote_single_high_score_beats_weak_majority() -> None:
    # "5": 0.9; "7": 0.3 + 0.3 = 0.6.
    assert vote(["5", "7", "7"], [0.9, 0.3, 0.3]) == 0


def test_vote_returns_highest_scored_member_of_winning_group() -> None:
    # Order of decreasing score is the caller's contract, but the member is chosen by score.
    assert vote(["7", "5", "7"], [0.4, 0.5, 0.6]) == 2


def test_vote_tie_goes_to_group_with_highest_scored_candidate() -> None:
    # "5": 0.6 + 0.2 = 0.8; "7": 0.4 + 0.4 = 0.8: tie on the sum, "5" holds the top candidate.
    assert vote(["5", "7", "7", "5"], [0.6, 0.4, 0.4, 0.2]) == 0


def test_vote_full_tie_goes_to_earliest() -> None:
    assert vote(["5", "7"], [0.5, 0.5]) == 0
    assert vote(["5", "7", "9"], [1.0, 1.0, 1.0]) == 0
    # Two groups of two with equal scores: the group whose first member comes first.
    assert vote(["5", "7", "7", "5"], [1.0, 1.0, 1.0, 1.0]) == 0


def test_vote_ignores_none_answers() -> None:
    assert vote([None, "3", "4"], [0.9, 0.2, 0.1]) == 1
    assert vote([None, None, "4"], [0.9, 0.8, 0.1]) == 2
    # None answers do not form a group, even when they are the majority.
    assert vote([None, None, "4", "5"], [0.5, 0.5, 0.1, 0.3]) == 3


def test_vote_all_none_or_empty() -> None:
    assert vote([None, None], [1.0, 0.5]) is None
    assert vote([], []) is None


def test_vote_single_candidate() -> None:
    assert vote(["18"], [0.7]) == 0
    assert vote(["18"], [0.0]) == 0


def test_vote_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        vote(["1", "2"], [1.0])


# --------------------------------------------------------------------------------------------
# query_is_votable
# --------------------------------------------------------------------------------------------


def test_query_is_votable() -> None:
    votable = {"gsm": True, "mbpp": False}
    assert query_is_votable(["gsm", "gsm", "mbpp"], votable)
    assert not query_is_votable(["gsm", "mbpp"], votable)  # exactly half is not a majority
    assert not query_is_votable(["gsm", "gsm", "mbpp", "mbpp"], votable)
    assert not query_is_votable([], votable)
    assert not query_is_votable(["unknown", "unknown", "gsm"], votable)  # unknown: not votable
    assert query_is_votable(["gsm"], votable)
    assert query_is_votable(["gsm", "mbpp", "mbpp"], votable, majority=0.3)
    assert not query_is_votable(["gsm", "gsm", "mbpp"], votable, majority=0.7)


# --------------------------------------------------------------------------------------------
# dataset_votability
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    dataset: str
    records: dict[str, float] = field(default_factory=dict)
    raw_output: dict[str, str] = field(default_factory=dict)
    split: str = "train"


def _choice_rows(n: int) -> list[Row]:
    """Multiple choice: correct answers agree; wrong ones pick other letters."""
    rows = []
    letters = "ABCD"
    for i in range(n):
        gold = letters[i % 4]
        wrong = letters[(i + 1) % 4]
        replies = {"m1": gold, "m2": f"{gold})", "m3": f"{gold}\n", "m4": wrong}
        if i % 3 == 0:
            replies["m3"] = wrong
        records = {m: float(extract_answer(t) == gold) for m, t in replies.items()}
        rows.append(Row("choice", records, replies))
    return rows


def _code_rows(n: int) -> list[Row]:
    """Free-text code: extracted "answers" are incidental numbers, unrelated to correctness."""
    rows = []
    for i in range(n):
        replies = {
            "m1": f"def f(x):\n    return x + {i % 3}\n",
            "m2": f"def f(xs):\n    return [x * 2 for x in xs if x > {(i + 1) % 3}]\n",
            "m3": f"Here is the code:\n```python\ndef g(n):\n    return n % {(i + 2) % 3 + 1}\n```",
            "m4": "def h(s):\n    return s[::-1]\n",
        }
        # Correctness independent of the numbers above.
        records = {"m1": 1.0, "m2": 1.0 if i % 2 else 0.0, "m3": 1.0 if i % 3 else 0.0}
        records["m4"] = 0.0 if i % 5 else 1.0
        rows.append(Row("code", records, replies))
    return rows


def test_dataset_votability_synthetic() -> None:
    reports = dataset_votability(_choice_rows(30) + _code_rows(30))
    choice, code = reports["choice"], reports["code"]
    assert choice.votable
    assert choice.rows == 30
    assert choice.answers == 120
    assert choice.extraction_rate == 1.0
    assert choice.correct_agreement == 1.0
    assert choice.consistency == 1.0
    assert not code.votable
    assert code.correct_agreement < MIN_CORRECT_AGREEMENT


def test_dataset_votability_hand_computed() -> None:
    # One row, 4 models: m1, m2 right with "5"; m3 wrong with "5"; m4 wrong with "7".
    row = Row(
        "d",
        {"m1": 1.0, "m2": 1.0, "m3": 0.0, "m4": 0.0, "m5": 1.0},
        {"m1": '{"answer": "5"}', "m2": "5", "m3": "5.0", "m4": "7", "m6": "orphan"},
    )
    report = dataset_votability([row])["d"]
    # m5 has a score but no text, m6 a text but no score: both skipped.
    assert report.answers == 4
    assert report.extraction_rate == 1.0
    assert report.correct_pairs == 1  # (m1, m2)
    assert report.correct_agreement == 1.0
    assert report.equal_pairs == 3  # m1, m2, m3 share "5"
    assert report.consistency == pytest.approx(1 / 3)  # only (m1, m2) share correctness
    # All pairs: (m1,m2), (m3,m4) consistent out of 6.
    assert report.baseline_consistency == pytest.approx(2 / 6)
    assert report.consistency_gain == pytest.approx(0.0)
    assert not report.votable  # and too few correct pairs anyway


def test_dataset_votability_unextractable_answers_do_not_agree() -> None:
    rows = [Row("d", {"a": 1.0, "b": 1.0}, {"a": "I do", "b": "I do"}) for _ in range(30)]
    report = dataset_votability(rows)["d"]
    assert report.extraction_rate == 0.0
    assert report.correct_pairs == 30
    assert report.correct_agreement == 0.0
    assert not report.votable


def test_votability_report_is_frozen_and_serialisable() -> None:
    report = dataset_votability(_choice_rows(10))["choice"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.votable = False  # type: ignore[misc]
    as_dict = report.to_dict()
    assert as_dict["votable"] is True
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert VotabilityReport(**as_dict) == report


# --------------------------------------------------------------------------------------------
# The shared real data
# --------------------------------------------------------------------------------------------

EXPECTED_VOTABLE = {
    "gsm": True,
    "math-l5": True,
    "arc-challenge": True,
    "winogrande": True,
    "mbpp": False,
}


def _train_rows(name: str) -> list[Row]:
    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["split"] == "train":
                rows.append(Row(row["dataset"], row["records"], row["raw_output"], row["split"]))
    return rows


def test_votability_on_shared_data() -> None:
    rows = _train_rows("zeroeval_gsm8k_math.jsonl.gz") + _train_rows("routerbench_subset.jsonl.gz")
    reports = dataset_votability(rows)
    for name, report in sorted(reports.items()):
        print(name, report.to_dict())
    assert {name: r.votable for name, r in reports.items()} == EXPECTED_VOTABLE
    # Margins: the votable datasets clear each threshold widely, mbpp misses it widely.
    for name in ("gsm", "math-l5", "arc-challenge", "winogrande"):
        assert reports[name].correct_agreement >= MIN_CORRECT_AGREEMENT + 0.3
        assert reports[name].consistency >= MIN_CONSISTENCY + 0.1
        assert reports[name].consistency_gain >= MIN_CONSISTENCY_GAIN + 0.3
    assert reports["mbpp"].correct_agreement <= MIN_CORRECT_AGREEMENT - 0.3
    assert reports["mbpp"].consistency_gain <= MIN_CONSISTENCY_GAIN - 0.3
    # Extraction accuracy on ZeroEval: two correct models' answers extract equal (bounds vote
    # quality).
    assert reports["gsm"].correct_agreement > 0.99
    assert reports["math-l5"].correct_agreement > 0.96
