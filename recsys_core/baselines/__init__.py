"""Baselines the hybrid is compared against, all with `ModelBundle`'s `recommend` / `predict_ratings` interface.

`classic`: most popular, biased MF, our exact implicit ALS (the hybrid's prior); `item_item`: EASE and RP3beta;
`implicit_lib`: ALS and BPR from the `implicit` package. `RANKING_BASELINES` names the tuned ranking baselines of
`recsys bench quality` and `offline_metrics`.
"""

from recsys_core.baselines.classic import BiasedMF, ImplicitALS, MatrixRecommender, MostPopular
from recsys_core.baselines.implicit_lib import LibALS, LibBPR
from recsys_core.baselines.item_item import EASE, RP3beta

RANKING_BASELINES = {model.name: model for model in (MostPopular, EASE, RP3beta, LibALS, LibBPR, ImplicitALS)}

__all__ = ["BiasedMF", "EASE", "ImplicitALS", "LibALS", "LibBPR", "MatrixRecommender", "MostPopular", "RP3beta",
           "RANKING_BASELINES"]  # fmt: skip
