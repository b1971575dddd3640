"""Recommendations from an exported model directory on ONNX Runtime: user graph, then the top-k graph.

The directory layout (written by `recsys_core.export`) is the serving contract: `user_encoder.onnx`, `topk.onnx`,
`item_matrix.npy` (held once: the user graph gets history rows from it, the index re-ranks with it), `item_index.faiss`
when the manifest names an approximate index (then top-k comes from the index, else from the exact scan graph), the
training bundle (`user_ids.npy`, `item_ids.npy`, `histories.npz`, `seen.npz`,
`item_popularity.npy`), optional `item_titles.json`, and `manifest.json`. Ids are mapped to indices only through
`IdIndex`. Unknown users fall back to popularity; an ad-hoc history personalises without a user id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from recsys_core.retrieval import INDEX_FILE, ItemIndex
from recsys_core.schema import HISTORIES_FILE, ITEM_IDS_FILE, POPULARITY_FILE, SEEN_FILE, USER_IDS_FILE, IdIndex
from recsys_core.serving.providers import CUDA, choose_providers, session_options

USER_ENCODER = "user_encoder.onnx"
TOPK = "topk.onnx"
ITEM_MATRIX = "item_matrix.npy"
MANIFEST = "manifest.json"
ITEM_TITLES = "item_titles.json"
LARGE_MATRIX_BYTES = 8 << 20
BUNDLE_FILES = (USER_IDS_FILE, ITEM_IDS_FILE, HISTORIES_FILE, SEEN_FILE, POPULARITY_FILE)
REQUIRED_FILES = (USER_ENCODER, TOPK, ITEM_MATRIX, MANIFEST, *BUNDLE_FILES)

USER_INPUTS = ("user_idx", "hist_vecs", "hist_ratings", "hist_mask")
TOPK_INPUTS = ("user_vec", "exclude_mask", "k")  # + "item_matrix" unless the graph holds its own (int8)


class ModelLoadError(RuntimeError):
    """The directory is not a usable serving model (missing files, bad graphs, inconsistent shapes)."""


@dataclass(frozen=True)
class Recommendations:
    """Top-k for one request. `reasons[i]` is the history item id that best explains item i (or None)."""

    user_id: int | None
    item_ids: list[int]
    scores: list[float]
    source: str  # "model", "history" (ad-hoc history, no known user) or "popularity"
    reasons: list[int | None] = field(default_factory=list)


@dataclass(frozen=True)
class History:
    """Padded history rows in the model's layout (most recent last)."""

    items: np.ndarray  # int64 [B, L]
    ratings: np.ndarray  # float32 [B, L]
    mask: np.ndarray  # bool [B, L]


def _pack(items: np.ndarray, ratings: np.ndarray, length: int, left_pad: bool) -> tuple[np.ndarray, ...]:
    """Keeps the `length` most recent events; pads where the training bundle pads."""
    items, ratings = items[-length:], ratings[-length:]
    row_items = np.zeros(length, np.int64)
    row_ratings = np.zeros(length, np.float32)
    row_mask = np.zeros(length, bool)
    span = slice(length - len(items), length) if left_pad else slice(0, len(items))
    row_items[span], row_ratings[span], row_mask[span] = items, ratings, True
    return row_items, row_ratings, row_mask


class OnnxScorer:
    """Two ONNX Runtime sessions plus the id maps, histories and popularity they need. Thread-safe for reads."""

    def __init__(self, directory: Path, providers: list[str], intra_op_threads: int = 0, version: str | None = None):
        self.directory = Path(directory)
        missing = [name for name in REQUIRED_FILES if not (self.directory / name).exists()]
        if missing:
            raise ModelLoadError(f"{self.directory}: missing {', '.join(missing)}")
        self.manifest: dict[str, Any] = json.loads((self.directory / MANIFEST).read_text())
        self.version = version or str(self.manifest.get("version") or self.manifest.get("fingerprint", "unknown"))
        self.providers = providers
        try:
            self._read_arrays()
        except (OSError, ValueError, KeyError) as error:  # truncated or foreign .npy/.npz files
            raise ModelLoadError(f"{self.directory}: unreadable model arrays: {error}") from error
        # The user graph is O(history x dim^2) whatever the catalogue: one thread, no pool wake-ups. The top-k scan
        # reads the whole item matrix: worth all cores once the matrix outgrows the caches.
        user_threads = intra_op_threads or 1
        topk_threads = intra_op_threads or (0 if self.item_matrix.nbytes >= LARGE_MATRIX_BYTES else 1)
        try:
            self.user_session = ort.InferenceSession(
                str(self.directory / USER_ENCODER), session_options(user_threads), providers=providers
            )
            self.topk_session = ort.InferenceSession(str(self.directory / TOPK), session_options(topk_threads), providers=providers)
        except Exception as error:  # ORT raises several unrelated types for unreadable graphs
            raise ModelLoadError(f"{self.directory}: cannot load ONNX graphs: {error}") from error
        titles_path = self.directory / ITEM_TITLES
        self.titles: dict[int, str] = (
            {int(k): v for k, v in json.loads(titles_path.read_text()).items()} if titles_path.exists() else {}
        )
        self._check_shapes()
        self.history_len = int(self.histories.items.shape[1])
        mask = self.histories.mask
        partial = ~mask.all(axis=1) & mask.any(axis=1)
        self.left_pad = not partial.any() or bool(mask[partial, -1].all())
        self._popular_order = np.argsort(-self.popularity, kind="stable")
        self._norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", self.item_matrix, self.item_matrix)), 1e-12)
        # On CUDA the matrix is copied to the device once and bound (IO binding); on CPU ORT reads the numpy
        # buffer in place, so a plain run is as fast and simpler.
        self._on_cuda = bool(providers) and providers[0] == CUDA
        self._bound: ort.OrtValue | None = None
        self._topk_takes_matrix = len(self.topk_session.get_inputs()) == len(TOPK_INPUTS) + 1
        retrieval = self.manifest.get("retrieval", {"kind": "exact"})
        try:
            self.index = (
                None if retrieval["kind"] == "exact" else ItemIndex.load(self.directory / INDEX_FILE, self.item_matrix, retrieval)
            )
        except (RuntimeError, ValueError) as error:  # FAISS raises RuntimeError for a missing or corrupt file
            raise ModelLoadError(f"{self.directory}: cannot load {INDEX_FILE}: {error}") from error

    def _read_arrays(self) -> None:
        self.item_matrix = np.ascontiguousarray(np.load(self.directory / ITEM_MATRIX), dtype=np.float32)
        self.users = IdIndex(np.load(self.directory / USER_IDS_FILE).astype(np.int64))
        self.items = IdIndex(np.load(self.directory / ITEM_IDS_FILE).astype(np.int64))
        with np.load(self.directory / HISTORIES_FILE) as histories:
            self.histories = History(
                histories["hist_items"].astype(np.int64),
                histories["hist_ratings"].astype(np.float32),
                histories["hist_mask"].astype(bool),
            )
        with np.load(self.directory / SEEN_FILE) as seen:
            self.seen_indptr, self.seen_indices = seen["indptr"].astype(np.int64), seen["indices"].astype(np.int64)
        self.popularity = np.load(self.directory / POPULARITY_FILE).astype(np.float64)

    @classmethod
    def from_dir(
        cls, path: str | Path, providers: str | list[str] = "auto", intra_op_threads: int = 0, version: str | None = None
    ) -> "OnnxScorer":
        return cls(Path(path), choose_providers(providers), intra_op_threads, version)

    def _check_shapes(self) -> None:
        n_items, n_users = len(self.items), len(self.users)
        names = [i.name for i in self.user_session.get_inputs()]
        if names != list(USER_INPUTS):
            raise ModelLoadError(f"{USER_ENCODER}: inputs {names}, expected {list(USER_INPUTS)}")
        tower_dim = self.user_session.get_inputs()[1].shape[-1]
        if not isinstance(tower_dim, int) or not 0 < tower_dim <= self.item_matrix.shape[-1]:
            raise ModelLoadError(f"{USER_ENCODER}: hist_vecs width {tower_dim} does not fit item matrix {self.item_matrix.shape}")
        self.tower_dim = tower_dim
        names = [i.name for i in self.topk_session.get_inputs()]
        if names not in (list(TOPK_INPUTS), [*TOPK_INPUTS, "item_matrix"]):
            raise ModelLoadError(f"{TOPK}: inputs {names}, expected {list(TOPK_INPUTS)} (+ item_matrix)")
        checks = {
            "item_matrix rows": (self.item_matrix.shape[0], n_items),
            "item_popularity length": (self.popularity.shape[0], n_items),
            "histories rows": (self.histories.items.shape[0], n_users),
            "seen.indptr length": (self.seen_indptr.shape[0], n_users + 1),
        }
        bad = [f"{name} = {got}, expected {want}" for name, (got, want) in checks.items() if got != want]
        if self.item_matrix.ndim != 2 or not np.isfinite(self.item_matrix).all():
            bad.append("item_matrix must be a finite 2-D float matrix")
        if bad:
            raise ModelLoadError(f"{self.directory}: inconsistent model files: {'; '.join(bad)}")

    @property
    def dim(self) -> int:
        return int(self.item_matrix.shape[1])

    def title(self, item_id: int) -> str | None:
        return self.titles.get(int(item_id))

    # ---- the two graphs -------------------------------------------------------------------------------
    def user_vectors(self, user_idx: np.ndarray, history: History) -> np.ndarray:
        """The history's item-tower vectors are the first `tower_dim` columns of its item matrix rows."""
        feeds = {
            "user_idx": np.ascontiguousarray(user_idx, dtype=np.int64),
            "hist_vecs": self.item_matrix[history.items, : self.tower_dim],
            "hist_ratings": np.ascontiguousarray(history.ratings, dtype=np.float32),
            "hist_mask": np.ascontiguousarray(history.mask, dtype=bool),
        }
        return self.user_session.run(None, feeds)[0]

    def top_k(self, user_vecs: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, item indices) of the k best non-excluded items by the exact scan graph (`exclude`: [B, n_items])."""
        k = np.array([max(1, min(int(k), len(self.items)))], dtype=np.int64)
        feeds = {
            "user_vec": np.ascontiguousarray(user_vecs, dtype=np.float32),
            "exclude_mask": np.ascontiguousarray(exclude, dtype=bool),
            "k": k,
        }
        session = self.topk_session
        if not self._on_cuda:
            if self._topk_takes_matrix:
                feeds["item_matrix"] = self.item_matrix
            scores, indices = session.run(None, feeds)
            return scores, indices
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        if self._topk_takes_matrix:
            if self._bound is None:
                self._bound = ort.OrtValue.ortvalue_from_numpy(self.item_matrix, "cuda", 0)
            binding.bind_ortvalue_input("item_matrix", self._bound)
        binding.bind_output("scores")
        binding.bind_output("item_idx")
        session.run_with_iobinding(binding)
        scores, indices = binding.copy_outputs_to_cpu()
        return scores, indices

    def retrieve(self, user_vecs: np.ndarray, exclude: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Serving top-k: the approximate index when the export built one, else the exact scan.

        `exclude[i]` holds item indices user i must not get; missing slots score -inf.
        """
        if self.index is not None:
            return self.index.search(user_vecs, max(1, int(k)), exclude)
        mask = np.zeros((len(exclude), len(self.items)), dtype=bool)
        for position, items in enumerate(exclude):
            mask[position, items] = True
        return self.top_k(user_vecs, mask, k)

    # ---- requests ------------------------------------------------------------------------------------
    def _seen(self, user_index: int) -> np.ndarray:
        return self.seen_indices[self.seen_indptr[user_index] : self.seen_indptr[user_index + 1]]

    def recommend(
        self, user_ids: list[int], k: int = 10, exclude_seen: bool = True, explain: bool = True
    ) -> list[Recommendations]:
        """Known users through the model in one batch; unknown users get the most popular items.

        `explain=False` skips the per-item reasons (throughput paths that do not show them).
        """
        indices = self.users.encode(np.asarray(user_ids, dtype=np.int64), missing=-1)
        known = np.flatnonzero(indices >= 0)
        results: list[Recommendations | None] = [None] * len(user_ids)
        if len(known):
            rows = indices[known]
            history = History(self.histories.items[rows], self.histories.ratings[rows], self.histories.mask[rows])
            exclude = [self._seen(row) if exclude_seen else np.zeros(0, np.int64) for row in rows]
            scores, top = self.retrieve(self.user_vectors(rows, history), exclude, k)
            for position, slot in enumerate(known):
                hist = history.items[position][history.mask[position]]
                ratings = history.ratings[position][history.mask[position]]
                reasons_from = (hist, ratings) if explain else None
                results[slot] = self._package(int(user_ids[slot]), scores[position], top[position], reasons_from, "model")
        for slot in np.flatnonzero(indices < 0):
            results[slot] = self.popular(k, user_id=int(user_ids[slot]))
        return [r for r in results if r is not None]

    def recommend_from_history(
        self,
        item_ids: list[int],
        ratings: list[float] | None = None,
        k: int = 10,
        user_id: int | None = None,
        exclude_seen: bool = True,
    ) -> Recommendations:
        """Real-time personalisation: the ad-hoc history (oldest first) is appended to the user's stored one.

        Unknown item ids raise KeyError (the caller turns it into a 4xx). No user and no history -> popularity.
        """
        new_items = self.items.encode(np.asarray(item_ids, dtype=np.int64)) if item_ids else np.zeros(0, np.int64)
        new_ratings = np.asarray(ratings if ratings is not None else [1.0] * len(new_items), dtype=np.float32)
        if new_ratings.shape != new_items.shape:
            raise ValueError(f"{len(new_ratings)} ratings for {len(new_items)} history items")
        user_index = int(self.users.encode(np.asarray([user_id]), missing=-1)[0]) if user_id is not None else -1
        if user_index >= 0:
            stored = self.histories.mask[user_index]
            hist = np.concatenate([self.histories.items[user_index][stored], new_items])
            hist_ratings = np.concatenate([self.histories.ratings[user_index][stored], new_ratings])
            model_user, source = user_index, "model"
        else:
            hist, hist_ratings, model_user, source = new_items, new_ratings, len(self.users), "history"
        if len(hist) == 0:
            return self.popular(k, user_id=user_id)
        row_items, row_ratings, row_mask = _pack(hist, hist_ratings, self.history_len, self.left_pad)
        history = History(row_items[None], row_ratings[None], row_mask[None])
        exclude = np.concatenate([new_items, self._seen(user_index)]) if exclude_seen and user_index >= 0 else new_items
        scores, top = self.retrieve(self.user_vectors(np.array([model_user]), history), [exclude], k)
        recent = (hist[-self.history_len :], hist_ratings[-self.history_len :])
        return self._package(user_id, scores[0], top[0], recent, source)

    def popular(self, k: int = 10, user_id: int | None = None) -> Recommendations:
        top = self._popular_order[: max(1, min(int(k), len(self.items)))]
        return Recommendations(
            user_id, self.items.decode(top).tolist(), self.popularity[top].astype(float).tolist(), "popularity", [None] * len(top)
        )

    def similar_items(self, item_id: int, k: int = 10) -> tuple[list[int], list[float]]:
        """Nearest items by cosine over the item matrix (the item itself excluded). Unknown id -> KeyError."""
        index = int(self.items.encode(np.asarray([item_id]))[0])
        cosine = self.item_matrix @ (self.item_matrix[index] / self._norms[index])
        cosine /= self._norms
        cosine[index] = -np.inf
        k = max(1, min(int(k), len(self.items) - 1))
        top = np.argpartition(-cosine, k - 1)[:k] if k < len(cosine) else np.arange(len(cosine))
        top = top[np.argsort(-cosine[top], kind="stable")]
        top = top[np.isfinite(cosine[top])]
        return self.items.decode(top).tolist(), cosine[top].astype(float).tolist()

    def _package(
        self, user_id: int | None, scores: np.ndarray, top: np.ndarray, history: tuple[np.ndarray, np.ndarray] | None, source: str
    ) -> Recommendations:
        """Drops excluded slots (-inf when k exceeds the candidates), maps indices to ids, attaches reasons."""
        keep = np.isfinite(scores)
        scores, top = scores[keep], top[keep]
        reasons = self.reasons(top, *history) if history is not None else [None] * len(top)
        return Recommendations(user_id, self.items.decode(top).tolist(), scores.tolist(), source, reasons)

    def reasons(self, recommended: np.ndarray, hist: np.ndarray, ratings: np.ndarray) -> list[int | None]:
        """Per recommended item, the liked history item (rating >= the history's mean) with the largest cosine to it."""
        if len(hist) == 0 or len(recommended) == 0:
            return [None] * len(recommended)
        liked = ratings >= ratings.sum() / len(ratings)
        candidates = hist[liked]
        unit_recommended = self.item_matrix[recommended] / self._norms[recommended, None]
        similarity = unit_recommended @ (self.item_matrix[candidates] / self._norms[candidates, None]).T
        return self.items.decode(candidates[similarity.argmax(axis=1)]).tolist()

    def validate(self) -> None:
        """Dummy requests through both graphs; raises ModelLoadError when the model cannot serve."""
        try:
            rows = np.arange(min(2, len(self.users)))
            history = History(self.histories.items[rows], self.histories.ratings[rows], self.histories.mask[rows])
            vectors = self.user_vectors(rows, history)
            if vectors.shape != (len(rows), self.dim) or not np.isfinite(vectors).all():
                raise ModelLoadError(f"{USER_ENCODER}: user_vec {vectors.shape} does not match item matrix dim {self.dim}")
            results = self.recommend(self.users.decode(rows).tolist(), k=5)
            results.append(self.recommend_from_history([int(self.items.ids[0])], k=5))
            if any(not r.item_ids or not np.isfinite(r.scores).all() for r in results):
                raise ModelLoadError(f"{self.directory}: dummy request returned no finite recommendations")
        except ModelLoadError:
            raise
        except Exception as error:  # any failure in a dummy request means this model must not serve
            raise ModelLoadError(f"{self.directory}: dummy request failed: {error}") from error
