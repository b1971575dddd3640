"""HybridRecommender contract: exact dot-product scores, text-only cold items, unknown users, no-pickle save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from recsys_core.model import (
    HybridConfig,
    HybridRecommender,
    ModelBundle,
    build_histories,
    build_seen,
    item_popularity,
    load_model,
    save_model,
)
from recsys_core.schema import IdIndex

N_USERS, N_ITEMS, TEXT_DIM, L = 4, 6, 5, 3


def make_model(seed: int = 0, encoder_layers: int = 0) -> HybridRecommender:
    torch.manual_seed(seed)
    config = HybridConfig(n_users=N_USERS, n_items=N_ITEMS, text_dim=TEXT_DIM, dim=8, history_len=L, n_heads=2,
                          encoder_layers=encoder_layers)  # fmt: skip
    model = HybridRecommender(config)
    text = np.random.default_rng(seed).normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    model.set_item_features(text, np.array([5, 3, 0, 2, 1, 0]))
    return model.eval()


def inputs() -> tuple[torch.Tensor, ...]:
    user_idx = torch.tensor([0, 3, N_USERS])  # last: unknown user
    hist_items = torch.tensor([[0, 1, 3], [0, 0, 4], [0, 1, 2]])
    hist_ratings = torch.tensor([[5.0, 3.0, 4.0], [0.0, 0.0, 2.0], [0.0, 4.0, 5.0]])
    hist_mask = torch.tensor([[True, True, True], [False, False, True], [False, True, True]])
    return user_idx, hist_items, hist_ratings, hist_mask


def test_ranking_score_is_exactly_user_dot_item() -> None:
    model = make_model()
    with torch.no_grad():
        users, items = model.user_vectors(*inputs()), model.item_vectors()
        scores, ratings = model(*inputs())
    assert users.shape == (3, 9) and items.shape == (N_ITEMS, 9) and users.dtype == torch.float32
    torch.testing.assert_close(users @ items.T, scores, atol=1e-5, rtol=1e-5)
    picked, picked_ratings = model(*inputs(), item_idx=torch.tensor([[2, 0]] * 3))
    torch.testing.assert_close(picked, scores[:, [2, 0]])
    torch.testing.assert_close(picked_ratings, ratings[:, [2, 0]])


def test_prior_factors_add_their_weighted_dot_product_and_training_can_leave_them_out() -> None:
    torch.manual_seed(0)
    config = HybridConfig(n_users=N_USERS, n_items=N_ITEMS, dim=8, history_len=L, n_heads=2, prior_dim=3, prior_weight=2.0)
    model = HybridRecommender(config).eval()
    model.set_item_features(None, np.array([5, 3, 0, 2, 1, 0]))
    rng = np.random.default_rng(0)
    user_factors, item_factors = rng.normal(size=(N_USERS, 3)), rng.normal(size=(N_ITEMS, 3))
    model.set_prior(user_factors, item_factors)
    with torch.no_grad():
        users, items = model.user_vectors(*inputs()), model.item_vectors()
        scores, ratings = model(*inputs())
        towers, tower_ratings = model(*inputs(), with_prior=False)
    assert users.shape == (3, config.output_dim) and config.output_dim == 8 + 3 + 1
    torch.testing.assert_close(users @ items.T, scores, atol=1e-5, rtol=1e-5)
    prior = np.vstack([user_factors[[0, 3]], np.zeros((1, 3))]) @ item_factors.T  # the unknown user has no prior
    torch.testing.assert_close(scores - towers, torch.as_tensor(2.0 * prior, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ratings, tower_ratings)  # ratings do not use the prior
    with pytest.raises(ValueError, match="prior factors"):
        model.set_prior(user_factors[:, :2], item_factors)


def test_rating_prior_is_blended_into_the_predicted_rating() -> None:
    torch.manual_seed(0)
    config = HybridConfig(n_users=N_USERS, n_items=N_ITEMS, dim=8, history_len=L, n_heads=2, rating_prior_dim=2,
                          rating_prior_weight=0.25, global_mean=3.0)  # fmt: skip
    model = HybridRecommender(config).eval()
    model.set_item_features(None, np.array([5, 3, 0, 2, 1, 0]))
    rng = np.random.default_rng(0)
    p, bu = rng.normal(size=(N_USERS, 2)), rng.normal(size=N_USERS)
    q, bi = rng.normal(size=(N_ITEMS, 2)), rng.normal(size=N_ITEMS)
    model.set_rating_prior(p, bu, q, bi)
    with torch.no_grad():
        scores, ratings = model(*inputs())
        towers, tower_ratings = model(*inputs(), with_prior=False)
        picked_scores, picked = model(*inputs(), item_idx=torch.tensor([[4, 1]] * 3))
    mf = 3.0 + np.r_[bu[[0, 3]], 0.0][:, None] + bi[None, :] + np.vstack([p[[0, 3]], np.zeros((1, 2))]) @ q.T
    expected = 0.75 * tower_ratings.numpy() + 0.25 * mf
    np.testing.assert_allclose(ratings.numpy(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked, ratings[:, [4, 1]])
    torch.testing.assert_close(scores, towers)  # ranking does not use the rating prior
    with pytest.raises(ValueError, match="rating prior"):
        model.set_rating_prior(p, bu[:2], q, bi)


def test_items_without_ratings_are_scored_from_text_alone() -> None:
    model = make_model()
    before = model.item_vectors().detach()
    with torch.no_grad():
        model.items.id_embedding.weight.add_(1.0)
        model.items.id_bias.weight.add_(1.0)
    after = model.item_vectors().detach()
    cold, warm = [2, 5], [0, 1, 3, 4]
    torch.testing.assert_close(after[cold], before[cold])
    assert not torch.allclose(after[warm], before[warm])


@pytest.mark.parametrize("encoder_layers", [0, 2])
def test_unknown_user_depends_only_on_history_and_empty_history_is_finite(encoder_layers: int) -> None:
    model = make_model(encoder_layers=encoder_layers)
    user_idx, hist_items, hist_ratings, hist_mask = inputs()
    with torch.no_grad():
        model.user_embedding.weight.normal_()
        unknown = model.user_vectors(user_idx[2:], hist_items[2:], hist_ratings[2:], hist_mask[2:])
        assert not torch.allclose(unknown, model.user_vectors(user_idx[2:], hist_items[:1], hist_ratings[:1], hist_mask[:1]))
        empty = model.user_vectors(user_idx[2:], hist_items[2:], hist_ratings[2:], torch.zeros_like(hist_mask[2:]))
    assert torch.isfinite(empty).all()


def test_save_and_load_round_trip_without_pickle(tmp_path: Path) -> None:
    model = make_model()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.item_vectors(), model.item_vectors())
    with pytest.raises(FileNotFoundError, match="has no"):
        load_model(tmp_path / "missing")


def test_config_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        HybridConfig(n_users=1, n_items=1, dim=10, n_heads=4)
    with pytest.raises(ValueError, match="n_users"):
        HybridConfig(n_users=0, n_items=1)


@pytest.mark.parametrize("encoder_layers", [0, 2])
def test_user_tower_exports_to_onnx(tmp_path: Path, encoder_layers: int) -> None:
    class UserEncoder(torch.nn.Module):
        def __init__(self, model: HybridRecommender) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.model.user_vectors(*args)

    model = make_model(encoder_layers=encoder_layers)
    expected = model.user_vectors(*inputs()).detach().numpy()
    names = ["user_idx", "hist_items", "hist_ratings", "hist_mask"]
    # the wrapper must be in eval mode too: export restores every submodule to the wrapper's mode afterwards
    torch.onnx.export(UserEncoder(model).eval(), inputs(), tmp_path / "user.onnx", input_names=names, output_names=["user_vec"],
                      dynamic_axes={name: {0: "batch"} for name in names}, dynamo=False)  # fmt: skip
    session = ort.InferenceSession(str(tmp_path / "user.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: t.numpy() for name, t in zip(names, inputs())})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_causal_encoder_scores_every_prefix_exactly_as_serving_scores_that_prefix() -> None:
    model = make_model(encoder_layers=2)
    with torch.no_grad():
        for parameter in model.history.parameters():  # away from the zero / identity start, so order matters
            parameter.add_(0.3 * torch.randn_like(parameter))
    user_idx, hist_items, hist_ratings, hist_mask = inputs()
    next_items = torch.tensor([[1, 3, 5], [0, 0, 1], [0, 2, 4]])
    with torch.no_grad():
        scores, ratings = model.sequence_scores(user_idx, hist_items, hist_ratings, hist_mask, next_items)
        assert scores.shape == (int(hist_mask.sum()), N_ITEMS) and ratings.shape == (int(hist_mask.sum()),)
        row = 0
        for user in range(3):
            for t in range(L):
                if not hist_mask[user, t]:
                    continue
                cut = L - 1 - t  # serving's layout of the history that ends with item t: right-aligned, left-padded
                shift = lambda x: torch.roll(x[user : user + 1], cut, dims=1)  # noqa: E731
                cut_mask = shift(hist_mask) & (torch.arange(L) >= cut)
                served, served_ratings = model(user_idx[user : user + 1], shift(hist_items), shift(hist_ratings),
                                               cut_mask, with_prior=False)  # fmt: skip
                torch.testing.assert_close(scores[row], served[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(ratings[row], served_ratings[0, next_items[user, t]], atol=1e-5, rtol=1e-5)
                row += 1
        # order matters: the same items in another order give another state
        swapped = hist_items[:1].flip(1), hist_ratings[:1].flip(1)
        assert not torch.allclose(model.user_vectors(user_idx[:1], swapped[0], swapped[1], hist_mask[:1]),
                                  model.user_vectors(*(t[:1] for t in inputs())))  # fmt: skip
    with pytest.raises(ValueError, match="encoder_layers"):
        make_model().sequence_scores(user_idx, hist_items, hist_ratings, hist_mask, next_items)


def make_train() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.array([10, 10, 10, 10, 20, 20], np.int64),
            "item_id": np.array([101, 102, 103, 104, 101, 105], np.int64),
            "rating": np.array([5, 4, 3, 2, 1, 5], np.float32),
            "timestamp": np.array([4, 3, 2, 1, 7, 7], np.int64),
        }
    )


def test_histories_keep_most_recent_last_and_left_pad() -> None:
    train = make_train()
    users, items = IdIndex.from_ids(train["user_id"]), IdIndex.from_ids(np.arange(101, 107))
    h = build_histories(train, users, items, history_len=3)
    # user 10 rated 104 (t=1), 103, 102, 101 (t=4): the three most recent, oldest first
    assert items.decode(h.hist_items[0]).tolist() == [103, 102, 101] and h.hist_mask[0].all()
    assert h.hist_mask[1].tolist() == [False, True, True] and h.hist_items[1, 0] == 0
    assert items.decode(h.hist_items[1, 1:]).tolist() == [101, 105]  # equal times: by item id
    indptr, indices = build_seen(train, users, items)
    assert indptr.tolist() == [0, 4, 6] and items.decode(indices).tolist() == [101, 102, 103, 104, 101, 105]
    assert item_popularity(train, items).tolist() == [2, 1, 1, 1, 1, 0]


def test_bundle_round_trip_recommends_unseen_items_and_predicts_in_range(tmp_path: Path) -> None:
    train = make_train()
    users, items = IdIndex.from_ids(train["user_id"]), IdIndex.from_ids(np.arange(101, 107))
    torch.manual_seed(0)
    model = HybridRecommender(HybridConfig(n_users=2, n_items=6, dim=4, history_len=3, n_heads=1)).eval()
    model.set_item_features(None, item_popularity(train, items))
    indptr, indices = build_seen(train, users, items)
    bundle = ModelBundle(model, users, items, build_histories(train, users, items, 3), indptr, indices, item_popularity(train, items))
    loaded = ModelBundle.load(bundle.save(tmp_path / "model"))
    recs = loaded.recommend(np.array([10, 20, 999]), k=3)
    assert set(recs.columns) == {"user_id", "item_id", "rank", "score"}
    assert set(recs.loc[recs.user_id == 10, "item_id"]) == {105, 106}  # only two unseen items left
    assert not set(recs.loc[recs.user_id == 20, "item_id"]) & {101, 105}
    assert len(recs[recs.user_id == 999]) == 3  # unknown user still gets recommendations
    cold = loaded.recommend(np.array([10]), k=5, exclude_seen=False, candidates=np.array([104, 106]))
    assert set(cold["item_id"]) == {104, 106}
    predicted = loaded.predict_ratings(np.array([10, 20, 999]), np.array([105, 102, 106]))
    assert predicted.shape == (3,) and ((predicted >= 1) & (predicted <= 5)).all()
