"""Offline recommendation metrics: rating error, top-k ranking quality and beyond-accuracy measures.

Definitions follow Microsoft Recommenders' `recommenders/evaluation/python_evaluation.py` (binary relevance:
every held-out item of a user is relevant), with two deliberate, documented choices:

* Users are the users in `relevant`. A user with relevant items and no recommendations scores 0 on every
  ranking metric; users who only appear in `recs` are ignored. (Recommenders averages precision over users
  present in both frames but nDCG over all users in the truth; we use one population for every metric.)
* MAP@k is Recommenders' `map_at_k` (Spark MLlib's `meanAveragePrecisionAt`): the sum of precision at each hit
  position within the top k, divided by min(#relevant, k), so a perfect list scores 1 even when a user has
  more than k relevant items.

Ranking order: rows are ordered per user by the `rank` column (smaller is better); ties in `rank` are broken by
`item_id` ascending, so equal-score items get a deterministic position 1..n. Only the first k positions count.
Precision@k always divides by k, also when the list is shorter than k (as Recommenders and Spark do).
MRR is the reciprocal position of the first hit within the top k (0 without a hit).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from recsys_core.schema import ITEM_ID, USER_ID

RANK = "rank"
POSITION = "position"


def ranking_metric_names(k: int) -> list[str]:
    return [f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}", f"hr@{k}", "mrr"]


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    missing = [col for col in columns if col not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(frame.columns)}")


def _require_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def top_k_positions(recs: pd.DataFrame, k: int) -> pd.DataFrame:
    """The first k recommendations per user as [user_id, item_id, position] (position 1..k), ties by item_id."""
    _require_k(k)
    _require_columns(recs, (USER_ID, ITEM_ID, RANK), "recs")
    ordered = recs[[USER_ID, ITEM_ID, RANK]].sort_values([USER_ID, RANK, ITEM_ID], kind="stable")
    duplicated = ordered.duplicated([USER_ID, ITEM_ID])
    if duplicated.any():
        example = ordered.loc[duplicated, [USER_ID, ITEM_ID]].iloc[0].tolist()
        raise ValueError(f"recs repeat {int(duplicated.sum())} (user_id, item_id) pairs, e.g. {example}")
    position = ordered.groupby(USER_ID, sort=False).cumcount().to_numpy() + 1
    keep = position <= k
    return pd.DataFrame(
        {
            USER_ID: ordered[USER_ID].to_numpy(np.int64)[keep],
            ITEM_ID: ordered[ITEM_ID].to_numpy(np.int64)[keep],
            POSITION: position[keep].astype(np.int64),
        }
    )


def per_user_ranking_metrics(recs: pd.DataFrame, relevant: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per user in `relevant` (index user_id) with precision@k, recall@k, ndcg@k, map@k, hr@k, mrr."""
    _require_columns(relevant, (USER_ID, ITEM_ID), "relevant")
    top = top_k_positions(recs, k)
    truth = relevant[[USER_ID, ITEM_ID]].astype(np.int64).drop_duplicates()
    n_relevant = truth.groupby(USER_ID).size()

    hits = top.merge(truth, on=[USER_ID, ITEM_ID], how="inner").sort_values([USER_ID, POSITION], kind="stable")
    position = hits[POSITION].to_numpy(np.float64)
    hit_order = hits.groupby(USER_ID, sort=False).cumcount().to_numpy() + 1
    per_hit = pd.DataFrame(
        {
            USER_ID: hits[USER_ID].to_numpy(),
            "hits": 1.0,
            "dcg": 1.0 / np.log2(position + 1.0),
            "ap": hit_order / position,
            "rr": np.where(hit_order == 1, 1.0 / position, 0.0),
        }
    )
    per_user = per_hit.groupby(USER_ID).sum().reindex(n_relevant.index, fill_value=0.0)

    n_rel = n_relevant.to_numpy(np.float64)
    ideal_len = np.minimum(n_relevant.to_numpy(np.int64), k)
    ideal_dcg = np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64)))[ideal_len - 1]
    hit_count = per_user["hits"].to_numpy()
    table = pd.DataFrame(
        {
            f"precision@{k}": hit_count / k,
            f"recall@{k}": hit_count / n_rel,
            f"ndcg@{k}": per_user["dcg"].to_numpy() / ideal_dcg,
            f"map@{k}": per_user["ap"].to_numpy() / ideal_len,
            f"hr@{k}": (hit_count > 0).astype(np.float64),
            "mrr": per_user["rr"].to_numpy(),
        },
        index=n_relevant.index.rename(USER_ID),
    )
    return table


def ranking_metrics(recs: pd.DataFrame, relevant: pd.DataFrame, k: int) -> dict[str, float]:
    """Means of `per_user_ranking_metrics` over the users in `relevant`; all 0.0 when `relevant` is empty."""
    table = per_user_ranking_metrics(recs, relevant, k)
    if table.empty:
        return {name: 0.0 for name in ranking_metric_names(k)}
    return {name: float(value) for name, value in table.mean().items()}


def _paired_arrays(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(y_true, dtype=np.float64).ravel()
    pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} values but y_pred has {pred.size}")
    if true.size == 0:
        raise ValueError("y_true and y_pred are empty")
    return true, pred


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    true, pred = _paired_arrays(y_true, y_pred)
    return float(np.sqrt(np.mean((true - pred) ** 2)))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    true, pred = _paired_arrays(y_true, y_pred)
    return float(np.mean(np.abs(true - pred)))


def catalog_coverage(recs: pd.DataFrame, n_catalog_items: int) -> float:
    """Share of the catalogue that appears in at least one list (Shani & Gunawardana 2010)."""
    _require_columns(recs, (ITEM_ID,), "recs")
    if n_catalog_items < 1:
        raise ValueError(f"n_catalog_items must be positive, got {n_catalog_items}")
    return float(recs[ITEM_ID].nunique() / n_catalog_items)


def item_self_information(train: pd.DataFrame) -> pd.Series:
    """-log2(share of training interactions) per item_id (Castells et al., ECIR 2011, choice model)."""
    _require_columns(train, (ITEM_ID,), "train")
    if train.empty:
        raise ValueError("train is empty: item popularity is undefined")
    counts = train[ITEM_ID].value_counts()
    return -np.log2(counts / len(train))


def novelty(recs: pd.DataFrame, train: pd.DataFrame) -> float:
    """Mean self-information of recommended items; items absent from training count as seen once (max novelty)."""
    _require_columns(recs, (ITEM_ID,), "recs")
    if recs.empty:
        return 0.0
    information = item_self_information(train)
    unseen = float(np.log2(len(train)))
    return float(information.reindex(recs[ITEM_ID].to_numpy()).fillna(unseen).mean())


def per_user_intra_list_diversity(
    recs: pd.DataFrame, item_ids: np.ndarray, vectors: np.ndarray, users_per_chunk: int = 4096
) -> pd.Series:
    """1 - mean pairwise cosine similarity of each user's recommended item vectors (users with >= 2 items).

    Uses ||sum v||^2 = sum_i ||v_i||^2 + 2 sum_{i<j} v_i.v_j on unit vectors, so no pairwise matrix is built; rows
    are summed per user with `np.add.reduceat`, a chunk of users at a time to bound memory.
    """
    _require_columns(recs, (USER_ID, ITEM_ID), "recs")
    item_ids = np.asarray(item_ids, dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != item_ids.shape[0]:
        raise ValueError(f"vectors {vectors.shape} do not align with {item_ids.shape[0]} item_ids")
    order = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order]
    rec_items = recs[ITEM_ID].to_numpy(np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, rec_items), max(len(sorted_ids) - 1, 0))
    known = sorted_ids[pos] == rec_items if len(sorted_ids) else np.zeros(rec_items.shape, bool)
    if not known.all():
        raise KeyError(f"{int((~known).sum())} recommended items have no vector, e.g. {rec_items[~known][:5].tolist()}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    rows = order[pos]
    by_user = np.argsort(recs[USER_ID].to_numpy(np.int64), kind="stable")
    users_sorted = recs[USER_ID].to_numpy(np.int64)[by_user]
    rows = rows[by_user]
    users, starts = np.unique(users_sorted, return_index=True)
    counts = np.diff(np.append(starts, len(rows))).astype(np.float64)
    pair_sum = np.empty(len(users), dtype=np.float64)
    for first in range(0, len(users), users_per_chunk):
        chunk_starts = starts[first : first + users_per_chunk]
        stop = starts[first + users_per_chunk] if first + users_per_chunk < len(users) else len(rows)
        block = unit[rows[chunk_starts[0] : stop]]
        offsets = chunk_starts - chunk_starts[0]
        summed = np.add.reduceat(block, offsets, axis=0)
        self_dot = np.add.reduceat((block**2).sum(axis=1), offsets)
        pair_sum[first : first + len(chunk_starts)] = ((summed**2).sum(axis=1) - self_dot) / 2.0
    enough = counts >= 2
    similarity = pair_sum[enough] / (counts[enough] * (counts[enough] - 1) / 2.0)
    return pd.Series(1.0 - similarity, index=pd.Index(users[enough], name=USER_ID), name="intra_list_diversity")


def intra_list_diversity(recs: pd.DataFrame, item_ids: np.ndarray, vectors: np.ndarray) -> float:
    per_user = per_user_intra_list_diversity(recs, item_ids, vectors)
    return float(per_user.mean()) if len(per_user) else 0.0


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 = perfectly even, -> 1 = all mass on one entry."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0 or x.sum() == 0:
        return 0.0
    if (x < 0).any():
        raise ValueError("gini needs non-negative values")
    n = x.size
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * x).sum()) / (n * x.sum()) - (n + 1.0) / n)


def popularity_bias(recs: pd.DataFrame, train: pd.DataFrame, catalog_item_ids: np.ndarray) -> dict[str, float]:
    """How much the lists lean on popular items.

    `mean_popularity_percentile`: mean over recommendations of the item's training-popularity percentile in the
    catalogue (from 1/n for the least to 1 for the most popular; ties share their average percentile). `gini_exposure`: Gini of how
    often each catalogue item is recommended (0 = every item equally often).
    """
    _require_columns(recs, (ITEM_ID,), "recs")
    _require_columns(train, (ITEM_ID,), "train")
    catalog = np.unique(np.asarray(catalog_item_ids, dtype=np.int64))
    if catalog.size == 0:
        raise ValueError("catalog_item_ids is empty")
    popularity = train[ITEM_ID].value_counts().reindex(catalog, fill_value=0)
    percentile = popularity.rank(method="average", pct=True)
    exposure = recs[ITEM_ID].value_counts().reindex(catalog, fill_value=0)
    rec_percentile = percentile.reindex(recs[ITEM_ID].to_numpy())
    return {
        "mean_popularity_percentile": float(rec_percentile.mean()) if len(recs) else 0.0,
        "gini_exposure": gini(exposure.to_numpy()),
    }
