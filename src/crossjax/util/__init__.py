"""Data utilities around training: hard-negative mining and the BM25 retriever it (and BEIR evaluation) uses."""

from __future__ import annotations

from .bm25 import BM25, top_k_indices
from .hard_negatives import mine_hard_negatives

__all__ = ["BM25", "mine_hard_negatives", "top_k_indices"]
