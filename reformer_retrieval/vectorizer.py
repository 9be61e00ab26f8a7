"""`ReformerVectorizer`: the encoder as a scikit-learn transformer (texts -> dense float32 features).

Example:
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import Pipeline
    >>> pipe = Pipeline([("emb", ReformerVectorizer()), ("clf", LogisticRegression())])  # doctest: +SKIP
    >>> pipe.fit(train_texts, train_labels).predict(test_texts)                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["ReformerVectorizer"]


class ReformerVectorizer(TransformerMixin, BaseEstimator):
    """Embeds texts with a Reformer model; stateless, so ``fit`` only loads the model.

    Every constructor argument is a plain value (sklearn's ``get_params`` / ``set_params`` / ``clone``
    work, and a grid search can vary them); the loaded `Encoder` lives in ``encoder_`` and is rebuilt
    after ``set_params`` or unpickling (it is never pickled itself).

    Args:
        model: Model directory; ``None`` for the bundled default model.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        dtype: ``None`` (float32 on CPU, bfloat16 on GPU) or a dtype name.
        batch_tokens: Padded tokens per forward pass (``None``: the device default).
        max_tokens: Tokens read per text (or per window).
        long_docs: ``"truncate"`` or ``"window"``.
        show_progress: Show a progress bar while transforming.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: str = "auto",
        dtype: str | None = None,
        batch_tokens: int | None = None,
        max_tokens: int = 65_536,
        long_docs: str = "truncate",
        show_progress: bool = False,
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch_tokens = batch_tokens
        self.max_tokens = max_tokens
        self.long_docs = long_docs
        self.show_progress = show_progress

    def _load(self) -> Any:
        from reformer_retrieval.encode import Encoder

        params = self.get_params(deep=False)
        cached = getattr(self, "_loaded_with", None)
        if getattr(self, "encoder_", None) is None or cached != params:
            self.encoder_ = Encoder.load(
                self.model,
                device=self.device,
                dtype=self.dtype,
                batch_tokens=self.batch_tokens,
                max_tokens=self.max_tokens,
                long_docs=self.long_docs,  # type: ignore[arg-type]
            )
            self._loaded_with = params
            self.n_features_out_ = self.encoder_.dim
        return self.encoder_

    def fit(self, X: Iterable[str], y: Any = None) -> ReformerVectorizer:
        """Load the model (nothing is learned); returns ``self``."""
        _texts(X)
        self._load()
        return self

    def transform(self, X: Iterable[str]) -> np.ndarray:
        """Unit vectors of the texts: float32 array (n_samples, dim)."""
        return self._load().encode(_texts(X), show_progress=self.show_progress)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names ``reformer0 ... reformer{dim-1}`` of the output columns."""
        dim = self._load().dim
        return np.asarray([f"reformer{i}" for i in range(dim)], dtype=object)

    def __sklearn_tags__(self) -> Any:  # sklearn >= 1.6
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.requires_fit = False
        return tags

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("encoder_", None)
        state.pop("_loaded_with", None)
        return state


def _texts(X: Iterable[str]) -> list[str]:
    """Texts from a list, tuple, 1-d array or pandas Series; a clear error for anything else."""
    if isinstance(X, (str, bytes)):
        raise TypeError("ReformerVectorizer expects a list of texts, got a single string (wrap it in a list)")
    if hasattr(X, "ndim") and getattr(X, "ndim", 1) != 1:
        raise TypeError(f"ReformerVectorizer expects a 1-d list of texts, got an array of shape {X.shape}")  # type: ignore[attr-defined]
    items = list(X)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"ReformerVectorizer expects texts (str); sample {i} is {type(text).__name__}")
    return items
