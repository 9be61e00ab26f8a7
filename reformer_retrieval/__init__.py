"""reformer-retrieval: near-duplicate detection and search over long documents with a Reformer encoder.

The public names below are imported on first use (PEP 562), so ``import reformer_retrieval`` and the CLI's
``--help`` do not pay for torch or scikit-learn until something needs them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _map_checkout_subpackages() -> None:
    """In a source checkout, find ``reformer_retrieval.indexes`` and ``reformer_retrieval.cli`` where pyproject's
    ``package-dir`` puts them (the top-level ``indexes/`` and ``cli/`` folders), as an installed package has them.

    Python imports this folder instead of the installed package whenever the checkout's root is first on
    ``sys.path`` (a script or a Ray worker started from the checkout); without this, its two mapped
    subpackages are missing there. An installed package has both inside it and is left alone.
    """
    here = Path(__file__).resolve().parent
    root = here.parent
    if (root / "pyproject.toml").is_file() and (root / "indexes" / "__init__.py").is_file() and not (
        here / "indexes"
    ).exists():
        __path__.append(str(root))


_map_checkout_subpackages()

_LAZY = {
    "ByteTokenizer": "reformer_retrieval.tokenizer",
    "Encoder": "reformer_retrieval.encode",
    "ReformerConfig": "reformer_retrieval.config",
    "ReformerEncoder": "reformer_retrieval.model.encoder",
    "ReformerVectorizer": "reformer_retrieval.vectorizer",
}

__all__ = ["ByteTokenizer", "Encoder", "ReformerConfig", "ReformerEncoder", "ReformerVectorizer", "__version__"]

if TYPE_CHECKING:
    from reformer_retrieval.config import ReformerConfig
    from reformer_retrieval.encode import Encoder
    from reformer_retrieval.model.encoder import ReformerEncoder
    from reformer_retrieval.tokenizer import ByteTokenizer
    from reformer_retrieval.vectorizer import ReformerVectorizer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reformer_retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
