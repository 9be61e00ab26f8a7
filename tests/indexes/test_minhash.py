"""MinHash: shingles, signatures against a naive reference, banding objective, LSH index round trip."""

from __future__ import annotations

import re

import numpy as np
import pytest
from reformer_retrieval.indexes import IndexInputError, MinHasher, MinHashIndex, Shingler, jaccard, open_index
from reformer_retrieval.indexes import minhash as minhash_module
from reformer_retrieval.indexes.minhash import EMPTY, candidate_pairs_from_keys, optimal_params, word_codes

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega"]


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def test_word_and_char_shingles():
    sh = Shingler("word", 3)
    assert len(sh.shingles("A b c d")) == 2  # "a b c", "b c d"; lower-cased
    np.testing.assert_array_equal(sh.shingles("A B C D"), sh.shingles("a b, c d!"))  # \w+ tokens
    assert len(sh.shingles("one two")) == 1  # shorter than n: the whole text is one shingle
    assert len(sh.shingles("  ... !!")) == 0  # no token at all
    assert not np.array_equal(sh.shingles("a b c"), sh.shingles("c b a"))  # order matters
    ch = Shingler("char", 4)
    assert len(ch.shingles("abcdef")) == 3
    np.testing.assert_array_equal(ch.shingles("ab  cd\n ef"), ch.shingles("ab cd ef"))  # whitespace collapsed
    with pytest.raises(ValueError):
        Shingler("line", 3)


def _mix64_py(x: int) -> int:
    mask = (1 << 64) - 1
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & mask
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def _word_code_py(word: str) -> int:
    """Reference: polynomial hash of the code points mod 2**64, xor length * golden ratio, mixed."""
    mask = (1 << 64) - 1
    h = 0
    for ch in word:
        h = (h * 0x100000001B3 + ord(ch)) & mask
    return _mix64_py(h ^ ((len(word) * 0x9E3779B97F4A7C15) & mask))


def test_word_codes_match_regex_words_and_a_pure_python_reference():
    text = "Über-naïve café_au_lait, 'quoted' — dash–en 42nd  x_y ſtraße ΑΒΓ δ;末尾の語 ok"
    words = re.findall(r"\w+", text)
    assert word_codes(text).tolist() == [_word_code_py(w) for w in words]
    assert word_codes("").tolist() == [] and word_codes(" ,;— ").tolist() == []
    # hashes are arithmetic on code points (no Python hash, no cache): the same in every process
    minhash_module._UNICODE_WORD.clear()
    assert word_codes(text).tolist() == [_word_code_py(w) for w in words]
    long_text = " ".join(["word"] * 40000)  # grows the cached power tables
    codes = word_codes(long_text)
    assert len(codes) == 40000 and len(set(codes.tolist())) == 1


def test_signatures_match_naive_reference_across_chunks():
    rng = np.random.default_rng(0)
    sets = [np.unique(rng.integers(0, 2**63, size=rng.integers(0, 40), dtype=np.uint64)) for _ in range(30)]
    hasher = MinHasher(num_perm=16, seed=3)
    a, b = hasher.permutations
    expected = np.full((30, 16), EMPTY, dtype=np.uint32)
    for i, s in enumerate(sets):
        if len(s):
            x = (s ^ (s >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
            expected[i] = (((x[:, None] * a[None, :]) + b[None, :]) >> np.uint64(32)).min(axis=0)
    np.testing.assert_array_equal(hasher.signatures_from_shingles(sets), expected)
    np.testing.assert_array_equal(hasher.signatures_from_shingles(sets, chunk=7), expected)  # docs cut by chunks


def test_estimated_jaccard_tracks_exact_jaccard():
    rng = np.random.default_rng(1)
    sh = Shingler("word", 1)
    hasher = MinHasher(num_perm=256, seed=7, shingler=sh)
    errors = []
    for _ in range(40):
        a = set(rng.choice(1000, size=200, replace=False).tolist())
        b = set(list(a)[: rng.integers(20, 200)]) | set(rng.choice(1000, size=50).tolist())
        ta, tb = " ".join(f"w{i}" for i in a), " ".join(f"w{i}" for i in b)
        sig = hasher.signatures([ta, tb])
        exact = jaccard(sh.shingles(ta), sh.shingles(tb))
        assert exact == pytest.approx(len(a & b) / len(a | b))
        errors.append(float((sig[0] == sig[1]).mean()) - exact)
    errors = np.asarray(errors)
    assert np.abs(errors).max() < 0.12  # 256 perms: standard error <= 0.031
    assert abs(errors.mean()) < 0.02  # unbiased


def test_optimal_params_known_values():
    # datasketch's docstring (t=0.9, 128 perms) and values computed with its objective
    assert optimal_params(0.9, 128) == (5, 25)
    assert optimal_params(0.5, 128) == (25, 5)
    assert optimal_params(0.7, 128) == (14, 9)
    assert optimal_params(0.8, 128) == (9, 13)
    assert optimal_params(0.8, 256) == (17, 15)
    with pytest.raises(ValueError):
        optimal_params(1.0, 128)


def test_optimal_params_match_datasketch():
    lsh = pytest.importorskip("datasketch.lsh")
    for t in (0.2, 0.35, 0.45, 0.6, 0.75, 0.85, 0.95):
        for perms in (32, 128):
            assert optimal_params(t, perms) == lsh._optimal_param(t, perms, 0.5, 0.5), (t, perms)
    assert optimal_params(0.6, 128, (0.2, 0.8)) == lsh._optimal_param(0.6, 128, 0.2, 0.8)


def test_candidate_pairs_from_keys_hand_made():
    keys = np.array([[1, 7], [1, 8], [2, 8], [3, 9], [1, 10]], dtype=np.uint64)
    pairs = candidate_pairs_from_keys(keys)
    assert pairs.tolist() == [[0, 1], [0, 4], [1, 2], [1, 4]]
    valid = np.array([True, True, True, True, False])
    assert candidate_pairs_from_keys(keys, valid).tolist() == [[0, 1], [1, 2]]
    assert candidate_pairs_from_keys(np.zeros((0, 2), np.uint64)).shape == (0, 2)


def test_index_finds_near_duplicates_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    base = [_text(rng, 80) for _ in range(40)]
    near = []
    for t in base[:10]:
        words = t.split()
        words[rng.integers(len(words))] = "CHANGED"
        near.append(" ".join(words))
    texts = base + near + ["", "!!!"]
    ids = [f"d{i}" for i in range(len(texts))]
    index = MinHashIndex(threshold=0.5, num_perm=128)
    index.add(texts, ids)
    pairs = {tuple(p) for p in index.candidate_pairs().tolist()}
    for i in range(10):
        assert (i, 40 + i) in pairs
    assert not any(50 in p or 51 in p for p in pairs)  # texts without tokens are never candidates
    res = index.search([near[0]], 3)
    assert res.ids[0][0] == "d40" and "d0" in res.ids[0]
    rr = index.range_search([base[3]])
    assert rr.ids[0][:1] == ["d3"] and np.all(rr.scores >= 0.5)
    index.remove(["d0"])
    assert "d0" not in index.search([base[0]], 5).ids[0]
    index.save(tmp_path / "mh")
    back = open_index(tmp_path / "mh")
    assert isinstance(back, MinHashIndex) and back.count == len(texts) - 1
    assert (back.bands, back.rows) == (index.bands, index.rows)
    np.testing.assert_array_equal(back.hasher.permutations, index.hasher.permutations)
    assert back.search([near[1]], 2).ids == index.search([near[1]], 2).ids
    assert "d0" not in back.search([base[0]], 5).ids[0]
    back.add([base[0]], ["d0"])
    assert back.search([base[0]], 1).ids[0] == ["d0"]


def test_explicit_banding_and_bad_settings():
    index = MinHashIndex(threshold=0.5, num_perm=64, bands=16, rows=4)
    assert (index.bands, index.rows) == (16, 4)
    with pytest.raises(IndexInputError, match="fit num_perm"):
        MinHashIndex(num_perm=64, bands=16, rows=5)
    with pytest.raises(IndexInputError, match="both bands and rows"):
        MinHashIndex(bands=4)
    with pytest.raises(IndexInputError, match="threshold"):
        MinHashIndex(threshold=1.5)


def test_remove_with_a_repeated_id_is_refused_and_changes_nothing():
    index = MinHashIndex(threshold=0.5, num_perm=64)
    texts = ["the quick brown fox jumps over the lazy dog", "a completely different sentence about gluons"]
    index.add(texts, ["a", "b"])
    with pytest.raises(IndexInputError, match="listed twice"):
        index.remove(["a", "a"])
    assert index.count == 2 and sorted(index.ids) == ["a", "b"]
    assert index.search([texts[0]], k=1).ids[0] == ["a"]
    assert index.remove(["a"]) == 1 and index.ids == ["b"]
