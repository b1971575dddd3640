"""Top-k retrieval over the item matrix: exact scans and the approximate index built at export (FAISS IVF)."""

from recsys_core.retrieval.index import (
    INDEX_FILE,
    IndexConfig,
    ItemIndex,
    build_item_index,
    exact_top_k,
    norm_tiers,
    recall_at_k,
)

__all__ = ["INDEX_FILE", "IndexConfig", "ItemIndex", "build_item_index", "exact_top_k", "norm_tiers", "recall_at_k"]
