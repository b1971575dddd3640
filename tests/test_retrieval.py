"""The item index: recall against the exact scan, exclusions, save/load, one copy of the matrix; export and check."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import faiss

from recsys_core.bench.retrieval import synthetic_catalogue
from recsys_core.bench.serving import build_random_bundle, random_ratings
from recsys_core.export import export_onnx
from recsys_core.model import ModelBundle
from recsys_core.retrieval import index as index_module
from recsys_core.retrieval import INDEX_FILE, IndexConfig, ItemIndex, build_item_index, exact_top_k, norm_tiers, recall_at_k
from recsys_core.serving.scorer import History, OnnxScorer
from recsys_dagster.assets.export import recall_check


def clustered(n_items: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items around 50 centres with different norms, users mixing two items: structure an index can use."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    items = centres[rng.integers(0, 50, n_items)] + 0.3 * rng.standard_normal((n_items, dim), dtype=np.float32)
    items *= rng.uniform(0.5, 1.5, (n_items, 1)).astype(np.float32)
    users = items[rng.integers(0, n_items, (40, 2))].sum(1) + 0.1 * rng.standard_normal((40, dim), dtype=np.float32)
    return items, users


def test_exact_top_k_in_chunks_with_exclusions(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    matrix, users = rng.standard_normal((1000, 8)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    exclude = [np.array([5, 999]), np.zeros(0, np.int64), np.arange(0, 1000, 2)]
    scores, idx = exact_top_k(matrix, users, 10, exclude, chunk=128)
    full = users @ matrix.T
    for row, items in enumerate(exclude):
        full[row, items] = -np.inf
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(full, idx, axis=1), rtol=1e-5)
    monkeypatch.setattr(index_module, "SCORE_BLOCK", 3 * 100)  # 3 users: chunks of 100 items whatever `chunk` says
    np.testing.assert_array_equal(exact_top_k(matrix, users, 10, exclude)[1], idx)
    few, few_idx = exact_top_k(matrix[:4], users, 10, [np.array([0])] * 3)
    assert few.shape == (3, 4) and (few_idx[:, -1] == -1).all() and np.isneginf(few[:, -1]).all()


def test_index_recall_exclusions_and_one_matrix(tmp_path: Path) -> None:
    matrix, users = clustered(20_000, 32)
    index = ItemIndex.build(matrix, IndexConfig(nprobe=1, target_recall=0.95))
    assert index.params["kind"] == "tiered-ivf-pq4fs" and index.matrix is matrix
    assert index.nbytes < matrix.nbytes / 2  # codes and ids beside the one float32 matrix
    exclude = [np.asarray(exact_top_k(matrix, users[i : i + 1], 3)[1][0]) for i in range(len(users))]
    recall = index.tune(users, exclude)
    assert recall >= 0.95 and index.params["nprobes"][0] > 1  # one probe is not enough on this data
    scores, found = index.search(users, 10, exclude)
    assert not any(np.isin(found[row], exclude[row]).any() for row in range(len(users)))
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", users, matrix[found]), rtol=1e-5)  # exact re-rank
    assert recall_at_k(found, exact_top_k(matrix, users, 10, exclude)[1]) == pytest.approx(recall)
    index.save(tmp_path / INDEX_FILE)
    loaded = ItemIndex.load(tmp_path / INDEX_FILE, matrix, index.params)
    np.testing.assert_array_equal(loaded.search(users, 10, exclude)[1], found)
    with pytest.raises(ValueError, match="index holds 20000 items"):
        ItemIndex.load(tmp_path / INDEX_FILE, matrix[:100], index.params)


def test_codes_are_half_a_byte_per_subvector() -> None:
    matrix, users = clustered(4_000, 17)
    index = ItemIndex.build(matrix, IndexConfig(subvector_dims=2))
    assert index.params["kind"] == "tiered-ivf-pq4fs" and index.params["code_bytes_per_item"] == 5  # 17 -> 18 dims / 2 / 2
    assert index.params["nlist"] == 256  # about 4 sqrt(4000)
    assert index.tune(users, None) >= 0.9


def test_cells_partition_directions_whatever_the_norms() -> None:
    """Log-normal norms (the bench's catalogue): inner-product k-means on raw vectors piles items into the cells of
    the largest-norm centroids; cells over directions stay balanced and reach the recall target."""
    matrix, users = synthetic_catalogue(30_000, 24, 60, clusters=100)
    index = ItemIndex.build(matrix, IndexConfig(nprobe=1, hnsw_quantizer_from=512))  # two-level k-means, HNSW adds
    assert index.params["partition"] == "norm tiers x directions" and index.params["nlist"] == 512
    assert isinstance(faiss.downcast_index(index.ivf.quantizer), faiss.IndexFlatIP)  # queries scan the centroids
    centroids = index.ivf.quantizer.reconstruct_n(0, index.ivf.nlist)
    norms = np.linalg.norm(centroids, axis=1)  # directions, scaled to the (one) tier's median norm
    np.testing.assert_allclose(norms, np.median(np.linalg.norm(matrix, axis=1)), rtol=0.05)
    np.testing.assert_allclose(norms, norms[0], rtol=1e-4)
    sizes = np.array([index.ivf.invlists.list_size(i) for i in range(index.ivf.nlist)])
    assert index.ivf.invlists.imbalance_factor() < 2.0 and sizes.max() < 8 * sizes.mean()
    assert index.tune(users, None) >= 0.95
    assert index.params["nprobes"][0] < index.ivf.nlist / 4  # the recall target is met well before a full scan
    reloaded = ItemIndex(faiss.deserialize_index(faiss.serialize_index(index.ivf)), matrix, index.params)
    np.testing.assert_array_equal(reloaded.search(users, 10)[1], index.search(users, 10)[1])


def test_index_chosen_by_size_and_holds_no_copy_of_the_matrix() -> None:
    matrix, users = clustered(5_000, 16)
    exclude = [np.zeros(0, np.int64)] * len(users)
    index, entry = build_item_index(matrix, users, exclude, IndexConfig(exact_max_items=5_000))
    assert index is None and entry["kind"] == "exact" and entry["recall_at_10"] == 1.0
    index, entry = build_item_index(matrix, users, exclude, IndexConfig(exact_max_items=4_999))
    assert index is not None and entry["kind"] == "tiered-ivf-pq4fs" and entry["recall_at_10"] >= 0.95
    assert index.matrix is matrix
    # everything the FAISS index holds (codes, ids, centroids) is far smaller than one float32 copy of the items
    assert len(faiss.serialize_index(index.ivf)) < matrix.nbytes / 2


@pytest.mark.slow
def test_export_builds_the_index_and_serving_uses_it(tmp_path: Path) -> None:
    ratings = random_ratings(60, 400, per_user=15, seed=2)
    model_dir = build_random_bundle(tmp_path / "model", ratings, np.arange(1, 401), dim=16, history_len=8)
    manifest = export_onnx(model_dir, tmp_path / "fp32", index_config=IndexConfig(exact_max_items=100), recall_users=60)
    retrieval = manifest["retrieval"]
    assert retrieval["kind"] == "tiered-ivf-pq4fs" and retrieval["recall_users"] == 60 and retrieval["recall_at_10"] >= 0.95
    assert json.loads((tmp_path / "fp32" / "manifest.json").read_text())["retrieval"] == retrieval
    graph = onnx.load(str(tmp_path / "fp32" / "user_encoder.onnx")).graph
    assert all(400 not in init.dims for init in graph.initializer)  # the user graph holds no catalogue
    scorer = OnnxScorer.from_dir(tmp_path / "fp32", providers="cpu")
    bundle = ModelBundle.load(model_dir)
    assert scorer.index is not None and scorer.index.matrix is scorer.item_matrix
    user = int(bundle.user_index.ids[0])
    (served,) = scorer.recommend([user], k=10)
    assert len(served.item_ids) == 10 and not set(served.item_ids) & set(bundle.item_index.decode(bundle.seen_items(0)).tolist())
    history = History(*(a[:1] for a in (scorer.histories.items, scorer.histories.ratings, scorer.histories.mask)))
    _, exact = exact_top_k(scorer.item_matrix, scorer.user_vectors(np.array([0]), history), 10, [bundle.seen_items(0)])
    assert len(set(served.item_ids) & set(bundle.item_index.decode(exact[0]).tolist())) >= 8


def test_recall_check_blocks_below_target() -> None:
    assert recall_check({"kind": "exact", "recall_at_10": 1.0}, 0.95).passed
    assert not recall_check({"kind": "tiered-ivf-pq4fs", "recall_at_10": 0.9}, 0.95).passed


def test_norm_tiers_split_by_decreasing_norm_and_merge_small_tiers() -> None:
    norms = np.random.default_rng(3).lognormal(0.0, 0.4, 10_000)
    tiers = norm_tiers(norms, IndexConfig(tier_shares=(0.01, 0.05), min_tier_items=100))
    assert [len(t) for t in tiers] == [100, 400, 9_500]
    joined = np.concatenate(tiers)
    np.testing.assert_array_equal(np.sort(joined), np.arange(10_000))
    assert (np.diff(norms[joined]) <= 0).all()  # largest norms first, tier after tier
    # a first tier under min_tier_items is dropped (its items open the next one); a short last tier joins the one before
    assert [len(t) for t in norm_tiers(norms, IndexConfig(tier_shares=(0.01, 0.05), min_tier_items=200))] == [500, 9_500]
    assert [len(t) for t in norm_tiers(norms, IndexConfig(tier_shares=(0.5, 0.99), min_tier_items=200))] == [5_000, 5_000]
    assert [len(t) for t in norm_tiers(norms, IndexConfig(min_tier_items=20_000))] == [10_000]


def test_tier_pruning_never_changes_the_result(tmp_path: Path) -> None:
    """Skipping a tier whose largest norm times |q| is below the k-th best exact score found so far gives the same
    top-k as searching it (Cauchy-Schwarz), and on log-normal norms it skips most of the low-norm items."""
    matrix, users = synthetic_catalogue(40_000, 24, 60, clusters=100)
    config = IndexConfig(tier_shares=(0.02, 0.2), min_tier_items=500, nprobe=4)
    index = ItemIndex.build(matrix, config)
    assert index.params["tier_items"] == [800, 7_200, 32_000] and len(index.params["cell_starts"]) == 4
    norms = np.linalg.norm(matrix, axis=1)
    assert index.params["tier_max_norms"][0] == pytest.approx(norms.max())
    exclude = [np.asarray(exact_top_k(matrix, users[i : i + 1], 2)[1][0]) for i in range(len(users))]
    faiss.omp_set_num_threads(2)
    pruned_scores, pruned = index.search(users, 10, exclude)  # one FAISS thread per query inside, restored after
    assert faiss.omp_get_max_threads() == 2
    pruned_tiers = index.tiers_searched
    unpruned = ItemIndex(index.ivf, matrix, {**index.params, "tier_max_norms": [np.inf] * 3})
    full_scores, full = unpruned.search(users, 10, exclude)
    np.testing.assert_array_equal(pruned, full)
    np.testing.assert_array_equal(pruned_scores, full_scores)
    assert unpruned.tiers_searched == 3 * len(users) and pruned_tiers < 2 * len(users)
    assert not any(np.isin(pruned[row], exclude[row]).any() for row in range(len(users)))
    # every item of a pruned tier is bounded by |q| * its largest norm: with all cells probed the result is exact
    index.params["nprobes"] = np.diff(index.params["cell_starts"]).tolist()
    np.testing.assert_array_equal(index.search(users, 10, exclude)[1], exact_top_k(matrix, users, 10, exclude)[1])


def test_tune_raises_the_tier_that_misses_and_tiers_survive_save_and_load(tmp_path: Path) -> None:
    matrix, users = synthetic_catalogue(40_000, 24, 60, clusters=100)
    index = ItemIndex.build(matrix, IndexConfig(tier_shares=(0.05,), min_tier_items=500, nprobe=1))
    assert index.params["nprobes"] == [1, 1]
    assert index.tune(users, None) >= 0.95
    first, second = index.params["nprobes"]
    assert first > second  # the exact top-10 lie mostly among the largest norms
    index.save(tmp_path / INDEX_FILE)
    params = json.loads(json.dumps(index.params))  # as the manifest stores them
    loaded = ItemIndex.load(tmp_path / INDEX_FILE, matrix, params)
    assert loaded.matrix is matrix
    np.testing.assert_array_equal(loaded.search(users, 10)[1], index.search(users, 10)[1])
    legacy = {key: value for key, value in params.items() if key != "tier_max_norms"}
    with pytest.raises(ValueError, match="before norm tiers"):
        ItemIndex.load(tmp_path / INDEX_FILE, matrix, legacy)
