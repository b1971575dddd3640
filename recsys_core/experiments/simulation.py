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

from recsys_core.experiments.assignment import OUTSIDE, assign_shares
from recsys_core.experiments.attribution import ARM, REQUEST_ID, TIMESTAMP
from recsys_core.schema import ITEM_ID, USER_ID
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

    def draw_clicks(self, user_ids: np.ndarray, item_lists: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[n, k] booleans: which shown items each persona clicks."""
        return rng.random(np.shape(item_lists)) < self.click_probability(user_ids, item_lists)

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


def exposure_and_click_rows(
    request_id: str, user_id: int, arm: str, items: np.ndarray, clicked: np.ndarray, timestamp: float, **extra: object
) -> tuple[list[dict], list[dict]]:
    """One response as exposure rows (one per shown item) and its clicks (a few seconds later, with the request_id)."""
    exposures = [{REQUEST_ID: request_id, USER_ID: user_id, ARM: arm, ITEM_ID: int(item), "rank": rank,
                  TIMESTAMP: timestamp, **extra} for rank, item in enumerate(items, start=1)]  # fmt: skip
    clicks = [{USER_ID: user_id, ITEM_ID: int(item), TIMESTAMP: timestamp + 2.0 + rank, REQUEST_ID: request_id}
              for rank, (item, hit) in enumerate(zip(items, clicked), start=1) if hit]  # fmt: skip
    return exposures, clicks


def simulate_records(
    simulated: SimulatedUsers, lists: dict[str, np.ndarray], shares: dict[str, float], salt: str, *, visitors: int,
    requests: int, seed: int = 0, start_time: float = 0.0, duration_s: float = 3600.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """In-process traffic as exposure and click records: `requests` requests from `visitors` visitors (visitor v is
    persona (v - 1) % n_users + 1), evenly spread over `duration_s`; each visitor's arm by the salted hash, each arm
    serving `lists[arm]` (indexed by persona - 1). Users outside the experiment's shares are not recorded."""
    rng = np.random.default_rng(seed)
    visitor_ids = np.arange(1, visitors + 1)
    arm_of = dict(zip(visitor_ids, assign_shares(visitor_ids, salt, shares)))
    exposures: list[dict] = []
    clicks: list[dict] = []
    for n, (visitor, when) in enumerate(zip(rng.integers(1, visitors + 1, requests), np.linspace(0, duration_s, requests))):
        arm = arm_of[visitor]
        if arm == OUTSIDE:
            continue
        persona = (visitor - 1) % simulated.n_users + 1
        items = lists[arm][persona - 1]
        clicked = simulated.draw_clicks(np.array([persona]), items[None, :], rng)[0]
        e, c = exposure_and_click_rows(f"r{seed}-{n}", int(visitor), arm, items, clicked, start_time + when)
        exposures += e
        clicks += c
    return pd.DataFrame(exposures), pd.DataFrame(clicks, columns=[USER_ID, ITEM_ID, TIMESTAMP, REQUEST_ID])
