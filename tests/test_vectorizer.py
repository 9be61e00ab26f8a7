"""`ReformerVectorizer` as a scikit-learn transformer."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from reformer_retrieval import Encoder, ReformerVectorizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _two_kinds(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Prose-like texts (label 0) vs digit/punctuation runs (label 1), random lengths."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        alphabet = list("abcdefghij klmnop qrstu") if label == 0 else list("0123456789 .,;:-+=")
        texts.append("".join(rng.choice(alphabet, size=int(rng.integers(20, 120)))))
        labels.append(label)
    return texts, labels


def test_params_set_params_and_clone(tiny_dir):
    vec = ReformerVectorizer(model=str(tiny_dir), device="cpu", max_tokens=128)
    params = vec.get_params()
    assert params["model"] == str(tiny_dir) and params["max_tokens"] == 128 and params["long_docs"] == "truncate"
    vec.set_params(max_tokens=64, long_docs="window")
    assert vec.max_tokens == 64 and vec.long_docs == "window"
    twin = clone(vec)
    assert twin is not vec and twin.get_params() == vec.get_params()
    assert not hasattr(twin, "encoder_")


def test_transform_matches_encoder_and_reloads_after_set_params(tiny_dir):
    texts = ["first text", "a second, longer text " * 10, "third"]
    vec = ReformerVectorizer(model=str(tiny_dir), device="cpu", max_tokens=32)
    out = vec.fit_transform(texts)
    expected = Encoder.load(tiny_dir, device="cpu", max_tokens=32).encode(texts)
    assert out.dtype == np.float32 and out.shape == (3, 16) and np.array_equal(out, expected)
    assert vec.encoder_.max_tokens == 32
    vec.set_params(max_tokens=64)
    vec.transform(texts)
    assert vec.encoder_.max_tokens == 64
    assert len(vec.get_feature_names_out()) == 16 and vec.get_feature_names_out()[0] == "reformer0"


def test_pipeline_fits_and_predicts(tiny_dir):
    train_x, train_y = _two_kinds(40, seed=0)
    test_x, test_y = _two_kinds(20, seed=1)
    pipe = Pipeline(
        [("emb", ReformerVectorizer(model=str(tiny_dir), device="cpu")), ("clf", LogisticRegression(C=100.0))]
    )
    pipe.fit(train_x, train_y)
    accuracy = float(np.mean(pipe.predict(test_x) == np.asarray(test_y)))
    assert accuracy >= 0.9
    assert pipe.predict_proba(test_x).shape == (20, 2)


def test_pickle_drops_the_loaded_model(tiny_dir):
    vec = ReformerVectorizer(model=str(tiny_dir), device="cpu").fit(["x"])
    blob = pickle.dumps(vec)
    assert len(blob) < 2_000  # parameters only, not the weights
    again = pickle.loads(blob)
    assert np.array_equal(again.transform(["hello"]), vec.transform(["hello"]))


def test_bad_input(tiny_dir):
    vec = ReformerVectorizer(model=str(tiny_dir), device="cpu")
    with pytest.raises(TypeError, match="single string"):
        vec.transform("not a list")
    with pytest.raises(TypeError, match="sample 1 is int"):
        vec.fit(["ok", 3])
    with pytest.raises(TypeError, match="1-d list"):
        vec.transform(np.array([["a", "b"]]))
