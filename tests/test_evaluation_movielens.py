"""On real MovieLens 100k (Recommenders' stratified 75/25 split, seed 42): evaluation and the A/B report reproduce
the numbers `recsys bench quality` prints for the same baselines, and the report renders."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.experiments import offline, reports
from recsys_core import evaluation as ev
from recsys_core.baselines import BiasedMF, MostPopular
from recsys_core.ingestion import load_movielens
from recsys_core.split import stratified_random_split

pytestmark = pytest.mark.movielens


def test_baselines_and_ab_report_on_movielens(movielens_100k):
    ratings, items = load_movielens(movielens_100k)
    split = stratified_random_split(ratings, 0.0, 0.25, seed=42)
    popular = MostPopular().fit(split.train, items)
    mf = BiasedMF(epochs=5).fit(split.train, items)
    result = ev.evaluate(ev.model_recommender(popular), split.train, split.test, items, rating_model=popular, source="most_popular")
    # `recsys bench quality` on the same split: most_popular nDCG@10 0.2432, P@10 0.2225, R@10 0.1113, MAP 0.1305
    assert result.metrics["ndcg@10"] == pytest.approx(0.2432, abs=1e-4)
    assert result.metrics["precision@10"] == pytest.approx(0.2225, abs=1e-4)
    assert result.metrics["recall@10"] == pytest.approx(0.1113, abs=1e-4)
    assert result.metrics["map@10"] == pytest.approx(0.1305, abs=1e-4)
    assert result.n_test_users == 943

    users = np.unique(split.test["user_id"])
    report = offline.build_ab_report(mf.recommend(users, 10), split.test, champion_recs=popular.recommend(users, 10),
                                challenger_label="biased_mf", champion_label="most_popular", n_boot=500)  # fmt: skip
    assert report.decision.action == offline.HOLD and report.decision.worse_beyond_tolerance
    assert report.champion_metrics["ndcg@10"] == pytest.approx(result.metrics["ndcg@10"])
    page = reports.render_html(report)
    assert "HOLD" in page and page.count("data:image/png;base64,") == 4
