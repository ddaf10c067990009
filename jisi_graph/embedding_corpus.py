"""A fixed, synthetic text corpus for calibrating the int8 embedder (`openvino-int8` runtime).

Static int8 quantization needs example inputs to measure the range of each layer's activations.
The corpus is generated here, from a seeded random generator and a few sentence templates in
the registers the bank holds (questions, step-by-step reasoning, JSON answers, lettered choices,
code, plain prose), so that every machine quantizes the same way without reading any data set.
Texts run from a few words to past the model's window, so that short and long inputs are both
seen.
"""

from __future__ import annotations

import random

CORPUS_SIZE = 240
CORPUS_SEED = 20260
_NAMES = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas"]
_THINGS = ["apples", "tickets", "marbles", "books", "stamps", "cookies", "bolts", "coins", "eggs"]
_PLACES = ["the market", "the library", "a farm", "the station", "school", "the harbour", "a lab"]
_TOPICS = ["photosynthesis", "the French Revolution", "prime numbers", "plate tectonics",
           "supply and demand", "the immune system", "binary search", "the water cycle",
           "Newton's second law", "the Silk Road"]  # fmt: skip
_VERBS = ["buys", "sells", "gives away", "finds", "loses", "collects", "packs", "shares"]

_TEMPLATES = [
    "{name} {verb} {a} {thing} at {place} and then {b} more. How many {thing} is that in all?",
    "If {name} has {a} {thing} and {verb} {b} of them, how many are left?",
    "Step 1: {name} starts with {a} {thing}. Step 2: {name} {verb} {b}. Step 3: {a} - {b} = {c}.",
    "Let x be the number of {thing}. Then {a}x + {b} = {c}, so x = ({c} - {b}) / {a}.",
    "We compute {a} * {b} = {d}, then add {c} to get {e}. Therefore the answer is {e}.",
    '{{"reasoning": "{name} had {a} {thing} and {verb} {b}, leaving {c}.", "answer": "{c}"}}',
    "The final answer is $\\boxed{{{e}}}$.",
    "Question: Which statement best describes {topic}?\nA) {opt1}\nB) {opt2}\nC) {opt3}\n"
    "D) {opt4}\nAnswer: {letter}",
    "The answer is ({letter}) because {opt1} is the only option consistent with {topic}.",
    "In short, {topic} can be explained as follows: {opt1}. Moreover, {opt2}.",
    "def count_{thing}(items):\n    total = 0\n    for item in items:\n        total += item\n"
    "    return total  # {a} items",
    "for i in range({a}):\n    if i % {b} == 0:\n        print(i, '{thing}')",
    "Explain {topic} to a ten-year-old in three sentences.",
    "Hi! Could you help me plan a trip to {place}? I have {a} days and a budget of {d} dollars.",
    "Sure. Here is a plan: on day one, visit {place}; on day two, rest; then travel for {b} hours.",
    "Let's think step by step. First, note that {a} + {b} = {f}. Next, {f} times {c} is {g}.",
    "Solve for n: n^2 - {a}n + {d} = 0. The discriminant is {a}^2 - 4*{d}.",
    "Sentence: {name} went to {place} because it was closed. Option 1: {place}. Option 2: home.",
    "I am not sure, but I think the answer is {c}. Let me double-check: {a} - {b} = {c}. Yes.",
    "Summary: {topic} matters because {opt2}; critics argue that {opt3}.",
]
_OPTIONS = [
    "it converts light into chemical energy",
    "it depends on the order of events",
    "it can be measured directly",
    "it repeats in a regular cycle",
    "it is a consequence of conservation laws",
    "it was first described in the nineteenth century",
    "it only applies to closed systems",
    "it has no effect at small scales",
]


def calibration_corpus(size: int = CORPUS_SIZE, seed: int = CORPUS_SEED) -> list[str]:
    """`size` texts of one to forty filled-in sentences each, the same on every call."""
    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(size):
        # lengths spread from one sentence to more than the model's 256-token window
        count = 1 + (i * 7) % 40 if i % 3 else rng.randint(1, 6)
        texts.append(" ".join(_sentence(rng) for _ in range(count)))
    return texts


def _sentence(rng: random.Random) -> str:
    a, b = rng.randint(2, 90), rng.randint(1, 40)
    options = rng.sample(_OPTIONS, 4)
    values = {
        "name": rng.choice(_NAMES),
        "thing": rng.choice(_THINGS),
        "place": rng.choice(_PLACES),
        "topic": rng.choice(_TOPICS),
        "verb": rng.choice(_VERBS),
        "a": a,
        "b": b,
        "c": a - b,
        "d": a * b,
        "e": a * b + (a - b),
        "f": a + b,
        "g": (a + b) * (a - b),
        "letter": rng.choice("ABCD"),
        **{f"opt{k + 1}": option for k, option in enumerate(options)},
    }
    return rng.choice(_TEMPLATES).format(**values)
