"""Simulated users with known preferences, for experiments whose right answer is known in advance.

A persona is a user of the synthetic generator; its ground-truth affinity to every item (`synthetic.ground_truth`)
drives its clicks: P(click on item i at rank r) = max_ctr * sigmoid((affinity - threshold) / temperature) / log2(r + 1),
a position-biased click model. Two ways to use it: `user_table_stream` draws whole per-user click totals in-process
(the benchmark's thousands of experiments), `recsys simulate` (`simulate_command`) sends real HTTP requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_core.experiments.attribution import ARM
from recsys_core.schema import USER_ID
from recsys_core.synthetic import SyntheticConfig, ground_truth


@dataclass(frozen=True)
class ClickModel:
    max_ctr: float = 0.5
    threshold: float = 0.5
    temperature: float = 0.1

    def probability(self, affinity: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        appeal = 1.0 / (1.0 + np.exp(-(affinity - self.threshold) / self.temperature))
        return self.max_ctr * appeal / np.log2(ranks + 1.0)


class SimulatedUsers:
    """Personas = the synthetic data set's users (user_id 1..n_users), items = its items (item_id 1..n_items)."""

    def __init__(self, config: SyntheticConfig = SyntheticConfig(), click_model: ClickModel = ClickModel()) -> None:
        self.config = config
        self.click_model = click_model
        self.affinity, self.log_popularity = ground_truth(config)

    @property
    def n_users(self) -> int:
        return self.affinity.shape[0]

    def click_probability(self, user_ids: np.ndarray, item_lists: np.ndarray) -> np.ndarray:
        """[n, k] probabilities for lists of item ids shown in rank order to the given personas; unknown items 0."""
        items = np.asarray(item_lists, dtype=np.int64)
        known = (items >= 1) & (items <= self.affinity.shape[1])
        affinity = self.affinity[np.asarray(user_ids, dtype=np.int64)[:, None] - 1, np.where(known, items - 1, 0)]
        ranks = np.arange(1, items.shape[1] + 1)[None, :]
        return np.where(known, self.click_model.probability(affinity, ranks), 0.0)

    def ranked_lists(self, k: int, *, noise: float = 0.0, seed: int = 0) -> np.ndarray:
        """[n_users, k] each persona's top k by true affinity plus N(0, noise) per item: noise 0 is the best any model
        could do; more noise is a worse model, so the quality of a simulated arm is one number."""
        scores = self.affinity + np.random.default_rng(seed).normal(0.0, noise, self.affinity.shape) if noise else self.affinity
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        return np.take_along_axis(top, order, axis=1) + 1

    def expected_ctr(self, item_lists: np.ndarray) -> np.ndarray:
        """[n_users] each persona's expected CTR on its list."""
        return self.click_probability(np.arange(1, self.n_users + 1), item_lists).mean(axis=1)


def user_table_stream(
    expected_ctr: dict[str, np.ndarray],
    arms: np.ndarray,
    personas: np.ndarray,
    rng: np.random.Generator,
    *,
    k: int = 10,
    mean_requests: float = 3.0,
) -> pd.DataFrame:
    """Per-user totals for visitors 1..n in arrival order: visitor j is persona `personas[j]` in arm `arms[j]`, makes
    1 + Poisson(mean_requests - 1) requests of k items and clicks Binomial(impressions, that arm's expected CTR for the
    persona). `expected_ctr[arm]` is indexed by persona - 1."""
    requests = 1 + rng.poisson(mean_requests - 1, len(arms))
    ctr = np.zeros(len(arms))
    for arm, values in expected_ctr.items():
        ctr[arms == arm] = values[personas[arms == arm] - 1]
    impressions = requests * k
    return pd.DataFrame({
        USER_ID: np.arange(1, len(arms) + 1), ARM: arms, "exposures": requests, "impressions": impressions,
        "clicks": rng.binomial(impressions, ctr),
    })  # fmt: skip
