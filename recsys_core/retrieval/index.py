"""The approximate item index: norm tiers, each a FAISS IVF over item directions, with 4-bit PQ fast-scan codes,
re-ranked exactly with the item matrix itself.

Why this shape:
- Norm tiers (norm-ranging MIPS): inner-product top-k is dominated by large-norm items, so the catalogue is split by
  norm (by default the largest 1%, the next 4%, the rest) and the tiers are searched from the largest norms down. A
  tier whose largest norm times |q| is below the k-th best exact score found so far cannot hold a top-k item
  (Cauchy-Schwarz) and is skipped, which is exact; each tier has its own cells and its own nprobe, so the small
  high-norm tier is searched finely and the bulk coarsely or not at all. One IVF holds all tiers' cells.
- The ranking score is an inner product, and item norms vary like popularity (log-normal). The cells partition
  item DIRECTIONS: spherical k-means on the unit-normalised sample, unit centroids, and an item goes to the centroid
  of largest inner product, which for unit centroids is the one of largest cosine whatever the item's norm; a query
  probes the cells of largest cosine too. The former inner-product k-means on raw vectors gave large-norm centroids
  that swallowed every item in their direction (the bench's synthetic catalogue at 1M items: largest list 96k items,
  imbalance factor 121 against 1.6 here) and 366k codes scanned per query for recall@10 0.96 against 63k here.
  (The MIPS-to-L2 reduction, one extra column sqrt(max_norm^2 - |x|^2), measured worse still: with such norms that
  column dominates both the cells and the code's quantisation error.)
- Many cells (about 4 sqrt(n_items)): a finer partition lowers the share of the catalogue that must be scanned.
  From `hnsw_quantizer_from` cells an HNSW graph over the centroids assigns the items at build (10M assignments),
  but queries pick their cells with a flat scan of the centroids: an HNSW search with efSearch >= nprobe costs more
  than the scan at the nprobe recall needs (CPU per query, 16384 unit centroids of 129 dims: HNSW 1.08 / 2.15 /
  3.81 ms against flat 0.27 / 0.36 / 0.46 ms at nprobe 256 / 512 / 1024).
- The cells hold 4-bit PQ codes (one code per `subvector_dims` dimensions, half a byte, zero-padded: zeros change no
  inner product) scanned by FAISS's fast-scan kernels (SIMD lookup tables in registers): about 10x faster per item
  than 8-bit scalar codes and a quarter of their size. Codes rank coarsely, so the index returns `refine * k`
  candidates and their exact scores come from the caller's matrix rows: the process holds the item matrix once.
- nprobe per tier is the knob the recall target drives: `tune` raises it in steps of 25%, in the tier that misses
  most exact top-k items, until recall@k on sampled users against the exact scan reaches the target.
- Below `exact_max_items` an exact scan is cheap enough and the index is not built.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
from faiss.contrib.clustering import two_level_clustering

INDEX_FILE = "item_index.faiss"
ADD_CHUNK = 1 << 18
SCORE_BLOCK = 1 << 24  # users x items scored at once by `exact_top_k`: 64 MB of scores, plus argpartition's int64 ids


@dataclass(frozen=True)
class IndexConfig:
    exact_max_items: int = 200_000  # up to this many items serving scans them exactly
    # norm tiers end at these shares of the items, largest norms first; a boundary closing fewer items than
    # `min_tier_items` is dropped. Set before any measurement (the top-10 lay in the largest 0.3% of norms at 10M) and
    # not searched: no other split was compared, on the bench's tuning users or elsewhere
    tier_shares: tuple[float, ...] = (0.01, 0.05)
    min_tier_items: int = 50_000
    nlist: int = 0  # IVF cells per tier; 0 = the power of two nearest 4 sqrt(tier items), within [64, 65536]
    nprobe: int = 16  # first cells probed in each tier; `tune` raises them by 25% steps until the recall target is met
    max_nprobe: int = 4096
    refine: int = 50  # candidates re-ranked exactly = refine * k, per tier searched
    subvector_dims: int = 1  # one 4-bit PQ code per this many dimensions
    train_per_list: int = 40  # k-means training points per cell (a seeded sample)
    hnsw_quantizer_from: int = 1024  # from this many cells in a tier an HNSW graph assigns its items at build
    target_recall: float = 0.95
    seed: int = 42


def norm_tiers(norms: np.ndarray, config: IndexConfig) -> list[np.ndarray]:
    """Item rows split by norm, largest first, at `tier_shares` of the catalogue, each tier sorted by decreasing norm.

    Why: inner-product top-k is dominated by large-norm items (the bench's 10M catalogue: every exact top-10 item lies
    in the largest 0.3% of norms), so a fine search of a small high-norm tier finds most of them, and the bound
    |q| * max norm lets the search skip the large low-norm tiers whenever they cannot compete.
    """
    order = np.argsort(-norms, kind="stable")
    bounds = [0]
    for share in (*config.tier_shares, 1.0):
        end = min(len(order), round(share * len(order)))
        if end - bounds[-1] >= config.min_tier_items or (share == 1.0 and end > bounds[-1]):
            bounds.append(end)
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < config.min_tier_items:
        del bounds[-2]  # a short last tier joins the one before
    return [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def _direction_cells(
    directions: np.ndarray, nlist: int, width: int, config: IndexConfig
) -> tuple[np.ndarray, faiss.Index]:
    """(unit centroids [nlist, width], an empty index to hold them and assign items): spherical k-means on unit rows."""
    ip = faiss.METRIC_INNER_PRODUCT
    if nlist >= config.hnsw_quantizer_from:
        # two levels (sqrt(nlist) coarse cells, then each split): flat k-means would cost sample x nlist per
        # iteration, about an hour on 2 cores at 10M items; the HNSW graph assigns the tier's items at build
        centroids, _ = two_level_clustering(
            directions, int(math.sqrt(nlist)), nlist, clustering_niter=10, seed=config.seed, spherical=True
        )
        assigner: faiss.Index = faiss.IndexHNSWFlat(width, 32, ip)
    else:
        kmeans = faiss.Kmeans(
            width, nlist, niter=10, seed=config.seed, max_points_per_centroid=config.train_per_list, spherical=True
        )
        kmeans.train(directions)
        centroids, assigner = kmeans.centroids, faiss.IndexFlatIP(width)
    return _unit_rows(centroids), assigner


def _nlist(n_items: int, config: IndexConfig) -> int:
    """Cells for a tier of `n_items`: at least 8 items a cell, so that k-means has points to place every centroid."""
    cells = config.nlist or int(min(65536, max(64, 2 ** round(math.log2(4 * math.sqrt(n_items))))))
    return max(1, min(cells, n_items // 8))


def _padded(rows: np.ndarray, width: int) -> np.ndarray:
    """`rows` as C-contiguous float32 with zero columns up to `width` (PQ needs whole sub-vectors)."""
    if rows.shape[1] == width:
        return np.ascontiguousarray(rows, dtype=np.float32)
    out = np.zeros((rows.shape[0], width), dtype=np.float32)
    out[:, : rows.shape[1]] = rows
    return out


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _inner_products(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """rows @ query on the calling thread (FAISS's SIMD kernel). Why not numpy: OpenBLAS splits a product this size
    over its threads, and when the other core is busy the caller spins until the descheduled helper runs (10M items,
    another process at high priority: single-user p50 8 ms of CPU time for a 0.5 ms search)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    query = np.ascontiguousarray(query, dtype=np.float32)
    out = np.empty(len(rows), dtype=np.float32)
    ptr = faiss.swig_ptr
    faiss.fvec_inner_products_ny(ptr(out), ptr(query), ptr(rows), len(query), len(rows))
    return out


def exact_top_k(
    matrix: np.ndarray, user_vecs: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None, chunk: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (scores, indices) [B, k] by BLAS matrix product + argpartition, in item chunks (bounded memory).

    Excluded items score -inf; slots beyond the candidates hold -inf and index -1. Chunks shrink as the batch grows
    (`SCORE_BLOCK`): 100 users x 1M items would hold 1.6 GB of scores and argpartition ids at once.
    """
    batch, k = user_vecs.shape[0], min(k, matrix.shape[0])
    chunk = max(1, min(chunk, SCORE_BLOCK // max(1, batch)))
    best_scores = np.full((batch, 0), -np.inf, dtype=np.float32)
    best_idx = np.zeros((batch, 0), dtype=np.int64)
    for start in range(0, matrix.shape[0], chunk):
        scores = user_vecs @ matrix[start : start + chunk].T
        if exclude is not None:
            for row, items in enumerate(exclude):
                local = items[(items >= start) & (items < start + scores.shape[1])] - start
                scores[row, local] = -np.inf
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        best_idx = np.concatenate([best_idx, part + start], axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
    scores, idx = np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best_idx, order, axis=1)
    return scores, np.where(np.isfinite(scores), idx, -1)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k (valid slots) that the candidate lists contain."""
    shares = []
    for got, want in zip(found, exact):
        want = want[want >= 0]
        if len(want):
            shares.append(len(np.intersect1d(got[got >= 0], want)) / len(want))
    return float(np.mean(shares)) if shares else 1.0


class ItemIndex:
    """Norm tiers of IVF candidates + exact re-ranking over `matrix`, which the index reads but never copies.

    One FAISS IVF holds every tier's cells (tier t owns cells `cell_starts[t]` to `cell_starts[t + 1]`); a query picks
    each tier's `nprobes[t]` cells of largest score and searches the tiers from the largest norms down with
    `search_preassigned`, so the tiers share one file, one codec and one id space (rows of the matrix).
    """

    def __init__(self, ivf: faiss.IndexIVF, matrix: np.ndarray, params: dict[str, Any]) -> None:
        if "tier_max_norms" not in params:
            raise ValueError("index exported before norm tiers: export the model again")
        self.ivf, self.matrix, self.params = ivf, matrix, params
        self.centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        self.cell_starts = np.asarray(params["cell_starts"], dtype=np.int64)
        self.tier_max_norms = np.asarray(params["tier_max_norms"], dtype=np.float32)
        self.tiers_searched = 0  # tiers searched by all calls so far: what pruning saved, for benchmarks

    @classmethod
    def build(cls, matrix: np.ndarray, config: IndexConfig = IndexConfig()) -> "ItemIndex":
        started = time.perf_counter()
        n_items, dim = matrix.shape
        width = math.ceil(dim / config.subvector_dims) * config.subvector_dims
        rng = np.random.default_rng(config.seed)
        norms = np.concatenate([np.linalg.norm(matrix[s : s + ADD_CHUNK], axis=1) for s in range(0, n_items, ADD_CHUNK)])
        tiers = norm_tiers(norms, config)
        del norms
        ip = faiss.METRIC_INNER_PRODUCT
        tier_centroids, assigners = [], []
        for rows in tiers:
            nlist = _nlist(len(rows), config)
            picked = rng.choice(rows, size=min(len(rows), config.train_per_list * nlist), replace=False)
            sample = _padded(matrix[np.sort(picked)], width)
            centroids, assigner = _direction_cells(_unit_rows(sample), nlist, width, config)
            # unit directions scaled to the tier's median norm: the same cells and probe order, but residuals (what
            # the 4-bit codes quantise) stay as small as the tier's items rather than as large as their norms
            tier_centroids.append(centroids * np.float32(np.median(np.linalg.norm(sample, axis=1))))
            assigners.append(assigner)
        sizes = [len(c) for c in tier_centroids]
        cell_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        quantizer = faiss.IndexFlatIP(width)
        quantizer.add(np.concatenate(tier_centroids))
        ivf = faiss.IndexIVFPQFastScan(quantizer, width, int(cell_starts[-1]), width // config.subvector_dims, 4, ip)
        ivf.cp.seed = config.seed
        # the same number of codec training rows from each tier, so that the small high-norm tiers (where the top-k
        # lies) shape the code books as much as the bulk
        per_tier = 256 * 39 * 4 // len(tiers)
        sample_rows = np.sort(
            np.concatenate([rng.choice(rows, size=min(len(rows), per_tier), replace=False) for rows in tiers])
        )
        ivf.train(_padded(matrix[sample_rows], width))  # the quantiser already holds every cell: the codec only
        for tier, (rows, assigner) in enumerate(zip(tiers, assigners)):
            # the tier's own cells only: an id map turns the assigner's local cell numbers into the IVF's
            local = faiss.IndexIDMap2(assigner)
            cells = np.arange(cell_starts[tier], cell_starts[tier + 1], dtype=np.int64)
            local.add_with_ids(tier_centroids[tier], cells)
            ivf.quantizer = local
            for start in range(0, len(rows), ADD_CHUNK):
                chunk = rows[start : start + ADD_CHUNK]
                ivf.add_with_ids(_padded(matrix[chunk], width), chunk.astype(np.int64))
        ivf.quantizer, ivf.referenced_objects = quantizer, [quantizer]  # every cell, flat: what queries scan
        params = {
            "kind": "tiered-ivf-pq4fs", "partition": "norm tiers x directions", "nlist": int(cell_starts[-1]),
            "cell_starts": cell_starts.tolist(), "tier_items": [len(rows) for rows in tiers],
            "tier_max_norms": [float(np.linalg.norm(matrix[rows[0]])) for rows in tiers],
            "nprobes": [min(config.nprobe, size) for size in sizes], "refine": config.refine, "width": width,
            "code_bytes_per_item": int(ivf.code_size), "build_seconds": round(time.perf_counter() - started, 3),
            "config": {**asdict(config), "tier_shares": list(config.tier_shares)},  # as the JSON manifest holds it
        }  # fmt: skip
        return cls(ivf, matrix, params)

    @property
    def nbytes(self) -> int:
        """Memory the index adds beside the matrix: codes and ids per item, the cells' centroids."""
        return int(self.ivf.ntotal * (self.ivf.code_size + 8) + self.centroids.nbytes)

    def _tier_candidates(self, query: np.ndarray, cell_scores: np.ndarray, tier: int, wanted: int) -> np.ndarray:
        lo, hi = self.cell_starts[tier], self.cell_starts[tier + 1]
        nprobe = int(self.params["nprobes"][tier])
        local = cell_scores[lo:hi]
        cells = np.argpartition(-local, nprobe - 1)[:nprobe] if nprobe < len(local) else np.arange(len(local))
        assign = np.ascontiguousarray((cells + lo)[None], dtype=np.int64)
        dis = np.ascontiguousarray(local[cells][None], dtype=np.float32)
        params = faiss.SearchParametersIVF()
        params.nprobe = len(cells)
        distances, labels = np.empty((1, wanted), np.float32), np.empty((1, wanted), np.int64)
        self.ivf.search_preassigned_c(
            1, faiss.swig_ptr(query), wanted, faiss.swig_ptr(assign), faiss.swig_ptr(dis),
            faiss.swig_ptr(distances), faiss.swig_ptr(labels), False, params,
        )  # fmt: skip
        return labels[0][labels[0] >= 0]

    def search(self, user_vecs: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices) [B, k] like `exact_top_k`. Tiers are searched from the largest norms down; a tier whose
        largest norm times |q| is below the k-th best exact score so far is skipped: by Cauchy-Schwarz none of its
        items can score above that, so the skip never changes the result."""
        user_vecs = np.ascontiguousarray(user_vecs, dtype=np.float32)
        batch, k = user_vecs.shape[0], min(k, self.ivf.ntotal)
        scores = np.full((batch, k), -np.inf, dtype=np.float32)
        idx = np.full((batch, k), -1, dtype=np.int64)
        padded = _padded(user_vecs, self.params["width"])
        # one query is too little work to split: a second OpenMP thread only adds a barrier that waits for a
        # descheduled thread on a busy machine (10M items, load 10 on 2 cores: wall p99 4.6 ms with 2 threads, 1.1
        # with 1); the setting is the calling thread's own and is restored
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            for row in range(batch):
                excluded = exclude[row] if exclude is not None else np.zeros(0, np.int64)
                cell_scores = _inner_products(self.centroids, padded[row])
                best_scores, best_idx = self._search_one(user_vecs[row], padded[row], cell_scores, k, excluded)
                scores[row, : len(best_idx)], idx[row, : len(best_idx)] = best_scores, best_idx
        finally:
            faiss.omp_set_num_threads(threads)
        return scores, idx

    def _search_one(
        self, query: np.ndarray, padded: np.ndarray, cell_scores: np.ndarray, k: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        wanted = min(self.ivf.ntotal, self.params["refine"] * k + len(excluded))
        bound = float(np.linalg.norm(query)) * (1 + 1e-5)  # float32 rounding of norms and scores
        best_scores, best_idx = np.zeros(0, np.float32), np.zeros(0, np.int64)
        for tier in range(len(self.tier_max_norms)):
            if len(best_scores) == k and bound * self.tier_max_norms[tier] < best_scores[-1]:
                break  # the tiers are in decreasing norm order: every later tier is bounded lower still
            self.tiers_searched += 1
            found = self._tier_candidates(padded, cell_scores, tier, wanted)
            if len(excluded):
                found = found[~np.isin(found, excluded)]
            candidates = np.concatenate([best_idx, found])
            exact = np.concatenate([best_scores, _inner_products(self.matrix[found], query)])
            order = np.argsort(-exact, kind="stable")[:k]
            best_scores, best_idx = exact[order], candidates[order]
        return best_scores, best_idx

    def tune(self, user_vecs: np.ndarray, exclude: Sequence[np.ndarray] | None, k: int = 10) -> float:
        """Raises nprobe by 25% steps, each time in the tier that misses the most exact top-k items on `user_vecs`,
        until recall@k meets the target or every tier is at its cap (doubling overshot at 10M items)."""
        _, truth = exact_top_k(self.matrix, user_vecs, k, exclude)
        config, nprobes = self.params["config"], self.params["nprobes"]
        caps = [min(config["max_nprobe"], int(hi - lo)) for lo, hi in zip(self.cell_starts[:-1], self.cell_starts[1:])]
        truth_norms = np.linalg.norm(self.matrix[truth[truth >= 0]], axis=1)
        tier_of = np.searchsorted(-self.tier_max_norms, -truth_norms, side="right") - 1  # tiers with max norm >= it, - 1
        while True:
            found = self.search(user_vecs, k, exclude)[1]
            recall = recall_at_k(found, truth)
            open_tiers = [t for t in range(len(nprobes)) if nprobes[t] < caps[t]]
            if recall >= config["target_recall"] or not open_tiers:
                return recall
            missed = np.concatenate([np.isin(want[want >= 0], got, invert=True) for got, want in zip(found, truth)])
            misses = np.bincount(np.clip(tier_of[missed], 0, len(nprobes) - 1), minlength=len(nprobes))
            tier = max(open_tiers, key=lambda t: (misses[t], -t))
            nprobes[tier] = min(caps[tier], max(nprobes[tier] + 1, math.ceil(1.25 * nprobes[tier])))

    def save(self, path: str | Path) -> None:
        faiss.write_index(self.ivf, str(path))

    @classmethod
    def load(cls, path: str | Path, matrix: np.ndarray, params: dict[str, Any]) -> "ItemIndex":
        ivf = faiss.read_index(str(path))
        if ivf.ntotal != matrix.shape[0]:
            raise ValueError(f"{path}: index holds {ivf.ntotal} items, the item matrix {matrix.shape[0]}")
        return cls(ivf, matrix, dict(params))


def build_item_index(
    matrix: np.ndarray, user_vecs: np.ndarray, exclude: Sequence[np.ndarray], config: IndexConfig = IndexConfig(), k: int = 10
) -> tuple[ItemIndex | None, dict[str, Any]]:
    """The index for an export (None below `exact_max_items`) and its manifest entry with recall@k on `user_vecs`."""
    if matrix.shape[0] <= config.exact_max_items:
        return None, {"kind": "exact", f"recall_at_{k}": 1.0, "recall_users": 0, "exact_max_items": config.exact_max_items}
    index = ItemIndex.build(matrix, config)
    recall = index.tune(user_vecs, exclude, k)
    return index, {**index.params, f"recall_at_{k}": round(recall, 4), "recall_users": len(user_vecs), "index_bytes": index.nbytes}
