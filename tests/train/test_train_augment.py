"""Augmentations: seeded (same seed, same output), strength 0 is the identity, each does what it says."""

from __future__ import annotations

import numpy as np
import pytest

from reformer_retrieval.train.augment import (
    OPS,
    PRESETS,
    AugmentPolicy,
    augment,
    boilerplate,
    broken_words,
    crop,
    format_noise,
    ocr_confusions,
    shuffle_units,
    span_edits,
    typos,
    word_edits,
)

TEXT = (
    "The modern library in Boston was closed on Monday morning. It will reopen soon, said the director. "
    "Nobody knows why the old building needs so much work; the council will decide in May.\n\n"
    "A second paragraph follows here. It has several sentences too. Some are short. Others are a little "
    "longer than the rest and carry the meaning of the whole thing.\n\n"
    "The third paragraph ends the text with a final remark about clean windows and tidy shelves."
) * 3


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", sorted(OPS))
def test_same_seed_same_output_and_strength_zero_identity(name: str) -> None:
    op = OPS[name]
    assert op(TEXT, rng(1), 0.9) == op(TEXT, rng(1), 0.9)
    assert op(TEXT, rng(1), 0.0) == TEXT
    assert op(TEXT, rng(1), 1.0) != TEXT  # at full strength every operation changes this text
    assert op("", rng(1), 1.0) in ("", op("", rng(1), 1.0))  # empty input never crashes


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_seeded_and_identity(preset: str) -> None:
    a = augment(TEXT, 0.7, seed=42, preset=preset)
    assert a == augment(TEXT, 0.7, seed=42, preset=preset)
    assert a != augment(TEXT, 0.7, seed=43, preset=preset)
    assert augment(TEXT, 0.0, seed=42, preset=preset) == TEXT


def test_no_global_random_state_is_touched() -> None:
    import random

    np.random.seed(5)
    random.seed(5)
    expected = (np.random.random(), random.random())
    np.random.seed(5)
    random.seed(5)
    augment(TEXT, 1.0, seed=0)
    assert (np.random.random(), random.random()) == expected


def test_strength_scales_the_amount_of_change() -> None:
    def jaccard(s: float) -> float:
        ref = set(TEXT.lower().split())
        values = []
        for k in range(4):
            out = set(augment(TEXT, s, seed=k, preset="ocr").lower().split())
            values.append(len(ref & out) / len(ref | out))
        return sum(values) / len(values)

    assert jaccard(0.1) > jaccard(0.5) > jaccard(1.0)


def test_ocr_confusions_use_the_confusion_table() -> None:
    out = ocr_confusions("rn" * 200, rng(), 1.0)
    assert "m" in out and set(out) <= {"r", "n", "m", "u", "i"}
    assert set(ocr_confusions("O0" * 100, rng(), 1.0)) <= {"O", "0", "Q", "o"}


def test_typos_change_few_characters() -> None:
    out = typos(TEXT, rng(), 0.5)
    ops = sum(1 for tag in _opcodes(TEXT, out) if tag != "equal")
    assert 0 < ops < 0.1 * len(TEXT)
    assert abs(len(out) - len(TEXT)) < 0.05 * len(TEXT)


def _opcodes(a: str, b: str) -> list[str]:
    import difflib

    return [op[0] for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()]


def test_broken_words_only_moves_whitespace_and_hyphens() -> None:
    out = broken_words(TEXT, rng(), 1.0)
    strip = lambda s: "".join(s.replace("-", "").split())  # noqa: E731
    assert strip(out) == strip(TEXT)
    assert out != TEXT


def test_word_edits_keep_most_words() -> None:
    words = TEXT.split()
    out = word_edits(TEXT, rng(), 0.5).split()
    common = len(set(words) & set(out))
    assert common > 0.8 * len(set(words)) and out != words


def test_span_edits_insert_foreign_text() -> None:
    foreign = ["ZZZZ QQQQ " * 100]
    outs = [span_edits(TEXT * 12, rng(seed), 1.0, foreign) for seed in range(3)]
    assert all("ZZZZ" in out or "QQQQ" in out for out in outs)
    assert all("ZZZZ" not in span_edits(TEXT * 4, rng(seed), 1.0) for seed in range(3))


def test_shuffle_keeps_the_multiset_of_words() -> None:
    out = shuffle_units(TEXT, rng(2), 1.0)
    assert sorted(out.split()) == sorted(TEXT.split()) and out != TEXT


def test_boilerplate_adds_lines_around_and_inside() -> None:
    long_text = TEXT * 4
    out = boilerplate(long_text, rng(1), 1.0)
    assert len(out) > len(long_text)
    assert "".join(out.split()).count("".join(long_text[:50].split())) >= 1


def test_format_noise_keeps_letters_case_insensitively() -> None:
    out = format_noise(TEXT, rng(4), 1.0)
    letters = lambda s: "".join(c for c in s.lower() if c.isalnum())  # noqa: E731
    assert letters(out) == letters(TEXT) and out != TEXT


def test_crop_returns_a_contiguous_part() -> None:
    for seed in range(5):
        out = crop(TEXT, rng(seed), 1.0)
        assert out in TEXT and len(out) >= 0.39 * len(TEXT)


def test_policy_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        AugmentPolicy(ops={"nope": (1.0, 1.0)})
    with pytest.raises(ValueError, match="strength"):
        augment(TEXT, 1.5, seed=0)
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        augment(TEXT, 0.5, seed=0, preset="nope")
    policy = PRESETS["near_duplicate"]
    assert AugmentPolicy.from_dict(policy.to_dict()) == policy
