"""Ranking baselines against tiny cases worked out by hand: two user groups, each rating its own pair of items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_core.baselines import EASE, LibALS, LibBPR, RP3beta

# users 1, 2 rate items 10, 11; users 3, 4 rate items 12, 13; user 5 rated only item 10
BLOCKS = pd.DataFrame(
    {"user_id": [1, 1, 2, 2, 3, 3, 4, 4], "item_id": [10, 11, 10, 11, 12, 13, 12, 13], "rating": [5.0] * 8}
)
WITH_PARTIAL_USER = pd.concat([BLOCKS, pd.DataFrame({"user_id": [5], "item_id": [10], "rating": [4.0]})])


def _pairs(value: float) -> np.ndarray:
    """Block-diagonal weights: `value` between 10 and 11, and between 12 and 13, 0 elsewhere."""
    return np.kron(np.eye(2), [[0.0, value], [value, 0.0]])


def test_ease_is_the_closed_form_on_a_4x4_matrix() -> None:
    # X'X + I has blocks [[3, 2], [2, 3]], inverse 1/5 [[3, -2], [-2, 3]], so B_01 = -(-2/5) / (3/5) = 2/3
    model = EASE(reg=1.0).fit(BLOCKS)
    np.testing.assert_allclose(model.weights, _pairs(2 / 3), atol=1e-6)
    scores = model.recommend(np.array([1]), k=4, exclude_seen=False)
    np.testing.assert_allclose(scores["score"], [2 / 3, 2 / 3, 0, 0], atol=1e-6)
    assert model.recommend(np.array([1]), k=4)["item_id"].tolist() == [12, 13]  # seen items are excluded


def test_rp3beta_is_the_three_step_walk() -> None:
    # every user rates 2 items and every item has 2 users: P(10 -> u -> 11) = 2 * (1/2 * 1/2) = 1/2
    np.testing.assert_allclose(RP3beta(alpha=1.0, beta=0.0).fit(BLOCKS).weights, _pairs(0.5), atol=1e-6)
    # beta = 1 divides by the landing item's degree (2); alpha = 2 squares each transition probability
    np.testing.assert_allclose(RP3beta(alpha=1.0, beta=1.0).fit(BLOCKS).weights, _pairs(0.25), atol=1e-6)
    np.testing.assert_allclose(RP3beta(alpha=2.0, beta=0.0).fit(BLOCKS).weights, _pairs(0.125), atol=1e-6)
    np.testing.assert_allclose(RP3beta(alpha=1.0, beta=0.0, neighbours=0).fit(BLOCKS).weights, 0.0)


@pytest.mark.parametrize(
    "make", [lambda: LibALS(dim=2, reg=0.01, alpha=10.0), lambda: LibBPR(dim=2, lr=0.1, iterations=300)], ids=["als", "bpr"]
)
def test_implicit_library_models_complete_the_partial_user_and_are_seeded(make) -> None:
    """User 5 rated item 10 only: item 11 (co-rated with 10 by users 1 and 2) must come first."""
    fitted = make().fit(WITH_PARTIAL_USER)
    assert fitted.recommend(np.array([5]), k=1)["item_id"].tolist() == [11]
    np.testing.assert_array_equal(make().fit(WITH_PARTIAL_USER).factors.items, fitted.factors.items)


def test_an_unknown_user_gets_the_most_popular_items() -> None:
    model = EASE(reg=1.0).fit(WITH_PARTIAL_USER)
    assert model.recommend(np.array([99]), k=2)["item_id"].tolist() == [10, 11]  # 10 rated 3 times, 11 twice
