"""Word diffs: changed words marked, equal runs folded with context, a 200 KB pair fast."""

from __future__ import annotations

import random

from reformer_retrieval.report.diff import changed_words, tokens, truncate_ops, word_diff


def _text(rng: random.Random, sentences: int) -> str:
    vocab = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    common = ["the", "of", "and", "a", "to", "in"]
    return "".join(" ".join(rng.choice(common) if rng.random() < 0.3 else rng.choice(vocab)
                            for _ in range(rng.randint(8, 30))) + ". " for _ in range(sentences))


def test_planted_word_is_the_only_change():
    a = "The quick brown fox jumps over the lazy dog."
    ops = word_diff(a, a.replace("brown", "red"), context=50)
    assert ops == [["=", "The quick "], ["-", "brown "], ["+", "red "], ["=", "fox jumps over the lazy dog."]]
    assert changed_words(ops) == 2


def test_both_texts_rebuild_from_the_ops_without_folding():
    rng = random.Random(1)
    a = _text(rng, 40)
    words = a.split(" ")
    for i in rng.sample(range(len(words)), 15):
        words[i] = "CHANGED"
    b = " ".join([*words[:100], "inserted", "words", *words[100:300], *words[320:]])
    ops = word_diff(a, b, context=10**6)
    assert "".join(op[1] for op in ops if op[0] in "=+") == b
    assert [t.strip() for op in ops if op[0] in "=-" for t in tokens(op[1])] == [t.strip() for t in tokens(a)]


def test_long_equal_runs_fold_with_context():
    words = [f"w{i}" for i in range(1000)]
    b = list(words)
    b[500] = "CHANGED"
    ops = word_diff(" ".join(words), " ".join(b), context=5)
    assert ops[0] == ["~", 495]
    assert ops[1] == ["=", "w495 w496 w497 w498 w499 "]
    assert ops[2:4] == [["-", "w500 "], ["+", "CHANGED "]]
    assert ops[4] == ["=", "w501 w502 w503 w504 w505 "]
    assert ops[5] == ["~", 494]
    same = word_diff(" ".join(words), " ".join(words), context=5)
    assert same == [["=", "w0 w1 w2 w3 w4 "], ["~", 995]]


def test_truncate_ops_counts_what_it_cuts():
    ops = [["=", "a b "], ["+", "c d e f "], ["~", 7], ["-", "g h"]]
    cut = truncate_ops(ops, 6)
    assert cut == [["=", "a b "], ["+", "c "], ["...", 3 + 7 + 2]]
    assert truncate_ops(ops, 10**6) == ops


def test_200kb_pair_diff_marks_exactly_the_planted_words():
    """A 200 KB pair with 200 scattered word edits: every planted word and nothing else is marked, and b
    rebuilds from the ops (the speed of the same cases is measured by benchmarks/diff_speed.py)."""
    rng = random.Random(0)
    a = _text(rng, 2000)
    assert len(a.encode()) > 200_000
    words = a.split(" ")
    planted = sorted(rng.sample(range(len(words)), 200))
    for i in planted:
        words[i] = "CHANGED"
    b = " ".join(words)
    ops = word_diff(a, b, context=10**6)
    assert "".join(op[1] for op in ops if op[0] in "=+") == b
    inserted = [t.strip() for op in ops if op[0] == "+" for t in tokens(op[1])]
    assert inserted and set(inserted) <= {"CHANGED", "CHANGED."}
    assert len(inserted) == sum(1 for i in planted if a.split(" ")[i] != "CHANGED")
