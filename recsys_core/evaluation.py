"""Offline evaluation of a trained model on a split: top-k lists for the test users, metrics, slices, baselines.

A `Recommender` turns user ids into top-k lists with training items excluded: `model_recommender` on the
PyTorch model directory or a baseline, `OnnxRecommender` on the exported ONNX graphs (what serving runs; the
same lists up to float rounding). Users the model has never seen are scored as its unknown user (empty history).

Slices: users by training activity (cold <= 5 ratings, medium, heavy), cold-start items (test items with no
training rating, ranked among the cold items only, so the text path is what is measured) and genres (each
genre's held-out items as the relevant set; the lists are unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from recsys_core import metrics as m
from recsys_core.schema import GENRE_SEPARATOR, ITEM_ID, RATING, USER_ID

SCORE = "score"


class Recommender(Protocol):
    """`(user_ids, k, candidates=None) -> [user_id, item_id, rank, score]`, training items excluded."""

    def __call__(self, user_ids: np.ndarray, k: int, candidates: np.ndarray | None = None) -> pd.DataFrame: ...


class FittedModel(Protocol):
    """The interface `ModelBundle` and every `recsys_core.baselines` model share."""

    def recommend(
        self, user_ids: np.ndarray, k: int = 10, exclude_seen: bool = True, candidates: np.ndarray | None = None
    ) -> pd.DataFrame: ...

    def predict_ratings(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray: ...


def sample_users(users: np.ndarray, max_users: int, seed: int) -> np.ndarray:
    """`users` (unique, sorted) when there are at most `max_users` (0: no limit), else a seeded uniform sample of
    `max_users` of them, sorted: evaluation cost then stays flat as the data grows, and the metrics become estimates
    whose uncertainty `mean_ci` states."""
    users = np.unique(np.asarray(users, dtype=np.int64))
    if max_users <= 0 or len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))


def mean_ci(per_user: pd.DataFrame, z: float = 1.96) -> dict[str, tuple[float, float]]:
    """Per metric column, the normal 95% confidence interval of the mean over users."""
    n = max(len(per_user), 1)
    half = z * per_user.std(ddof=1).fillna(0.0) / np.sqrt(n)
    mean = per_user.mean()
    return {name: (float(mean[name] - half[name]), float(mean[name] + half[name])) for name in per_user.columns}


def too_large_baselines(train: pd.DataFrame, items: pd.DataFrame | None) -> list[str]:
    """The item-item baselines this catalogue is too large for (dense n_items^2 weights, see `MAX_DENSE_ITEMS`)."""
    from recsys_core.baselines import EASE, RP3beta
    from recsys_core.baselines.item_item import MAX_DENSE_ITEMS

    ids = [train[ITEM_ID].to_numpy(np.int64)] + ([items[ITEM_ID].to_numpy(np.int64)] if items is not None else [])
    return [EASE.name, RP3beta.name] if len(np.unique(np.concatenate(ids))) > MAX_DENSE_ITEMS else []


# Training ratings the baselines are fitted on at most, beyond the evaluated users' own (`baseline_fit_sample`):
# ml-1m's 0.8M training ratings fit whole; at 25M ratings the five fits on all 20M (then a full-catalogue ranking
# each) were still running after 13.8 minutes. Bounds time, not chosen for quality.
MAX_BASELINE_FIT_RATINGS = 2_000_000


def baseline_fit_sample(
    train: pd.DataFrame, keep_users: np.ndarray, max_ratings: int = MAX_BASELINE_FIT_RATINGS, seed: int = 42
) -> pd.DataFrame:
    """`train` when it has at most `max_ratings` rows (0: no limit), else every training rating of a seeded sample
    of users: all of `keep_users` (the evaluation users, so no baseline meets them as strangers), then other users
    in seeded random order while the total stays within `max_ratings`. A user's ratings are kept or dropped whole, so
    each sampled user's history is the one the model saw."""
    if max_ratings <= 0 or len(train) <= max_ratings:
        return train
    counts = train[USER_ID].value_counts()
    users = counts.index.to_numpy(np.int64)
    kept = np.isin(users, np.asarray(keep_users, dtype=np.int64))
    rng = np.random.default_rng(seed)
    others = rng.permutation(users[~kept])
    room = max_ratings - int(counts.to_numpy()[kept].sum())
    fits = int(np.searchsorted(np.cumsum(counts.reindex(others).to_numpy()), room, side="right")) if room > 0 else 0
    taken = others[:fits]
    return train[train[USER_ID].isin(np.concatenate([users[kept], taken]))]


def fit_baselines(train: pd.DataFrame, items: pd.DataFrame | None, seed: int = 42) -> dict[str, FittedModel]:
    """Every `recsys_core.baselines` model with its defaults, fitted on the same training ratings (at scale, a
    `baseline_fit_sample` of them), except those in `too_large_baselines`."""
    from recsys_core.baselines import EASE, BiasedMF, ImplicitALS, LibALS, LibBPR, MostPopular, RP3beta

    skipped = too_large_baselines(train, items)
    models = (MostPopular, BiasedMF, ImplicitALS, EASE, RP3beta, LibALS, LibBPR)
    return {model.name: model(seed=seed).fit(train, items) for model in models if model.name not in skipped}


def baseline_fit_costs(models: dict[str, FittedModel]) -> dict[str, str]:
    """What each capped baseline's fit ran, beside its setting (the caps bite above about 1M training ratings):
    iterations for ALS and BPR, steps per epoch for biased MF."""
    costs = {}
    for name, model in models.items():
        if hasattr(model, "iterations_run"):
            costs[name] = f"{model.iterations_run} of {model.iterations} iterations"
        elif hasattr(model, "steps_per_epoch"):
            costs[name] = f"{model.epochs_run} of {model.epochs} epochs x {model.steps_per_epoch} steps"
    return costs


def model_recommender(model: FittedModel) -> Recommender:
    """A `FittedModel` (the PyTorch `ModelBundle` or a baseline) as a `Recommender`."""

    def recommend(user_ids: np.ndarray, k: int, candidates: np.ndarray | None = None) -> pd.DataFrame:
        return model.recommend(np.asarray(user_ids, dtype=np.int64), k, candidates=candidates)

    return recommend


class OnnxRecommender:
    """The exported serving directory through `OnnxScorer`'s two graphs (user encoder, then top-k).

    Unknown users go through the user encoder as the model's unknown user (index n_users, empty history), exactly
    as `ModelBundle.recommend` does, so both paths rank the same lists."""

    def __init__(self, scorer, batch_size: int = 512) -> None:  # an OnnxScorer; untyped keeps ORT out of imports
        self.scorer = scorer
        self.batch_size = batch_size

    def _seen_mask(self, rows: np.ndarray) -> np.ndarray:
        """bool [len(rows), n_items]: the training items of each row (CSR gather; -1 rows have none)."""
        s = self.scorer
        known = rows >= 0
        safe = np.where(known, rows, 0)
        lengths = np.where(known, s.seen_indptr[safe + 1] - s.seen_indptr[safe], 0)
        mask = np.zeros((len(rows), len(s.items)), dtype=bool)
        if lengths.sum():
            owner = np.repeat(np.arange(len(rows)), lengths)
            offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            mask[owner, s.seen_indices[np.repeat(s.seen_indptr[safe], lengths) + offsets]] = True
        return mask

    def __call__(self, user_ids: np.ndarray, k: int, candidates: np.ndarray | None = None) -> pd.DataFrame:
        from recsys_core.serving.scorer import History

        s = self.scorer
        user_ids = np.asarray(user_ids, dtype=np.int64)
        allowed = np.ones(len(s.items), dtype=bool)
        if candidates is not None:
            allowed[:] = False
            allowed[s.items.encode(np.asarray(candidates, dtype=np.int64))] = True
        k = min(k, int(allowed.sum()))
        rows = s.users.encode(user_ids, missing=-1)
        frames = []
        for start in range(0, len(user_ids), self.batch_size):
            batch = rows[start : start + self.batch_size]
            known = batch >= 0
            safe = np.where(known, batch, 0)
            mask = s.histories.mask[safe] & known[:, None]
            history = History(
                np.where(mask, s.histories.items[safe], 0),
                np.where(mask, s.histories.ratings[safe], 0.0).astype(np.float32),
                mask,
            )
            vectors = s.user_vectors(np.where(known, batch, len(s.users)), history)
            exclude = self._seen_mask(batch) | ~allowed[None, :]
            scores, top = s.top_k(vectors, exclude, k)
            frames.append(_frame(user_ids[start : start + self.batch_size], s.items.decode(top), scores))
        return pd.concat(frames, ignore_index=True) if frames else _frame(np.zeros(0, np.int64), np.zeros((0, 1)), np.zeros((0, 1)))


def _frame(user_ids: np.ndarray, item_ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """[user_id, item_id, rank, score] from [U, k] arrays, dropping -inf (fewer candidates than k)."""
    keep = np.isfinite(scores)
    ranks = np.broadcast_to(np.arange(1, scores.shape[1] + 1), scores.shape)
    return pd.DataFrame(
        {
            USER_ID: np.broadcast_to(np.asarray(user_ids)[:, None], scores.shape)[keep].astype(np.int64),
            ITEM_ID: np.asarray(item_ids)[keep].astype(np.int64),
            m.RANK: ranks[keep].astype(np.int64),
            SCORE: np.asarray(scores)[keep].astype(np.float64),
        }
    )


@dataclass(frozen=True)
class SliceConfig:
    cold_user_max: int = 5
    heavy_user_min: int = 51


def beyond_accuracy(
    recs: pd.DataFrame,
    train: pd.DataFrame,
    catalog_item_ids: np.ndarray,
    text_item_ids: np.ndarray | None = None,
    text_vectors: np.ndarray | None = None,
) -> dict[str, float]:
    values = {
        "catalog_coverage": m.catalog_coverage(recs, len(np.unique(catalog_item_ids))),
        "novelty": m.novelty(recs, train),
        **m.popularity_bias(recs, train, catalog_item_ids),
    }
    if text_vectors is not None and text_item_ids is not None:
        values["intra_list_diversity"] = m.intra_list_diversity(recs, text_item_ids, text_vectors)
    return values


def activity_slices(train: pd.DataFrame, users: pd.Index, config: SliceConfig) -> pd.Series:
    """'cold' / 'medium' / 'heavy' per user by training rating count."""
    counts = train[USER_ID].value_counts().reindex(users, fill_value=0)
    labels = np.where(
        counts.to_numpy() <= config.cold_user_max, "cold", np.where(counts.to_numpy() >= config.heavy_user_min, "heavy", "medium")
    )
    return pd.Series(labels, index=users, name="activity")


def _slice_row(kind: str, name: str, table: pd.DataFrame) -> dict:
    return {"slice": kind, "name": name, "n_users": int(len(table)), **{c: float(table[c].mean()) for c in table.columns}}


def slice_table(
    recs: pd.DataFrame,
    test: pd.DataFrame,
    train: pd.DataFrame,
    items: pd.DataFrame,
    k: int,
    config: SliceConfig,
    cold_items: np.ndarray,
    cold_item_recs: pd.DataFrame | None,
) -> pd.DataFrame:
    """One row per slice: slice kind, name, n_users and the mean per-user ranking metrics (NaN when empty).

    `cold_item_recs` are the lists ranked among `cold_items` only (test items without training ratings)."""
    per_user = m.per_user_ranking_metrics(recs, test, k)
    rows = [_slice_row("all", "all users", per_user)]
    activity = activity_slices(train, per_user.index, config)
    for label in ("cold", "medium", "heavy"):
        rows.append(_slice_row("user activity", label, per_user[activity.to_numpy() == label]))
    cold_test = test[test[ITEM_ID].isin(cold_items)]
    if cold_item_recs is not None and len(cold_test):
        rows.append(
            _slice_row("cold-start items", "ranked among cold items", m.per_user_ranking_metrics(cold_item_recs, cold_test, k))
        )
    genres = items[[ITEM_ID, "genres"]].dropna()
    exploded = genres.assign(genre=genres["genres"].str.split(GENRE_SEPARATOR, regex=False)).explode("genre")
    exploded = exploded[exploded["genre"].str.len() > 0]
    test_genres = test[[USER_ID, ITEM_ID]].merge(exploded[[ITEM_ID, "genre"]], on=ITEM_ID)
    for genre, relevant in sorted(test_genres.groupby("genre"), key=lambda kv: -len(kv[1])):
        rows.append(_slice_row("genre", str(genre), m.per_user_ranking_metrics(recs, relevant, k)))
    return pd.DataFrame(rows)


@dataclass
class EvaluationResult:
    """Every number of one evaluation; `metrics` is flat {name: value} (the model's), `models` compares recommenders."""

    k: int
    metrics: dict[str, float]
    models: pd.DataFrame  # index: model name; columns: ranking, beyond-accuracy and rating-error metrics
    slices: pd.DataFrame
    per_user: pd.DataFrame
    recs: pd.DataFrame
    n_test_users: int
    source: str
    extra: dict[str, float] = field(default_factory=dict)


def rating_error(model: FittedModel, test: pd.DataFrame) -> dict[str, float]:
    """RMSE and MAE of the model's rating predictions on the test rows (empty without a rating column)."""
    if RATING not in test.columns:
        return {}
    predicted = model.predict_ratings(test[USER_ID].to_numpy(), test[ITEM_ID].to_numpy())
    truth = test[RATING].to_numpy()
    return {"rmse": m.rmse(truth, predicted), "mae": m.mae(truth, predicted)}


def evaluate(
    recommender: Recommender,
    train: pd.DataFrame,
    test: pd.DataFrame,
    items: pd.DataFrame,
    *,
    k: int = 10,
    rating_model: FittedModel | None = None,
    baselines: dict[str, FittedModel] | None = None,
    text_item_ids: np.ndarray | None = None,
    text_vectors: np.ndarray | None = None,
    slices: SliceConfig = SliceConfig(),
    source: str = "model",
) -> EvaluationResult:
    """Recs for every test user, their metrics, slices, rating error (of `rating_model`) and baselines.

    `baselines` maps a name to a model fitted on the same training split (see `fit_baselines`)."""
    for name, frame, cols in (("train", train, (USER_ID, ITEM_ID)), ("test", test, (USER_ID, ITEM_ID))):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} ratings lack column(s) {missing}")
    if test.empty:
        raise ValueError("test ratings are empty: nothing to evaluate")
    users = np.unique(test[USER_ID].to_numpy(np.int64))
    catalog = np.unique(np.concatenate([items[ITEM_ID].to_numpy(np.int64), train[ITEM_ID].to_numpy(np.int64)]))
    recs = recommender(users, k)
    per_user = m.per_user_ranking_metrics(recs, test, k)
    model_row = {**m.ranking_metrics(recs, test, k), **beyond_accuracy(recs, train, catalog, text_item_ids, text_vectors)}
    extra = rating_error(rating_model, test) if rating_model is not None else {}
    rows = {source: {**model_row, **extra}}
    for name, baseline in (baselines or {}).items():
        baseline_recs = baseline.recommend(users, k)
        rows[name] = {
            **m.ranking_metrics(baseline_recs, test, k),
            **beyond_accuracy(baseline_recs, train, catalog, text_item_ids, text_vectors),
            **(rating_error(baseline, test) if getattr(baseline, "predicts_ratings", True) else {}),
        }
    cold_items = np.intersect1d(np.setdiff1d(test[ITEM_ID].unique(), train[ITEM_ID].unique()), items[ITEM_ID].to_numpy())
    cold_users = test.loc[test[ITEM_ID].isin(cold_items), USER_ID].unique()
    cold_recs = recommender(cold_users, k, candidates=cold_items) if len(cold_items) else None
    table = slice_table(recs, test, train, items, k, slices, cold_items, cold_recs)
    flat = {**model_row, **extra}
    for row in table.to_dict("records"):
        if row["n_users"]:
            flat.update({f"slice/{row['slice']}/{row['name']}/{metric}": row[metric] for metric in m.ranking_metric_names(k)})
    return EvaluationResult(
        k=k,
        metrics=flat,
        models=pd.DataFrame.from_dict(rows, orient="index"),
        slices=table,
        per_user=per_user,
        recs=recs,
        n_test_users=len(users),
        source=source,
        extra=extra,
    )


def mlflow_key(name: str) -> str:
    """MLflow metric keys allow [/\\w.\\- :]; '@' becomes '_at_' and anything else '_'."""
    return "".join(ch if ch.isalnum() or ch in "/_.- :" else "_" for ch in name.replace("@", "_at_"))


def comparison_figure(models: pd.DataFrame, metrics: list[str]):
    """Grouped bars: one group per metric, one bar per recommender (model first, then baselines)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = [name for name in metrics if name in models.columns]
    x = np.arange(len(shown))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for position, (name, row) in enumerate(models.iterrows()):
        ax.bar(x + (position - (len(models) - 1) / 2) * width, row[shown].to_numpy(float), width, label=str(name))
    ax.set_xticks(x, shown)
    ax.set_ylabel("mean over test users")
    ax.set_title("Model vs baselines (same split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def slice_figure(slices: pd.DataFrame, metric: str):
    """Horizontal bars of one metric per slice, labelled with the slice's user count."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = slices[slices["n_users"] > 0]
    labels = [f"{row.slice}: {row.name} (n={row.n_users})" for row in shown.itertuples()]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(shown) + 1))
    ax.barh(labels[::-1], shown[metric].to_numpy(float)[::-1], color="#2f6fb0")
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} by slice")
    fig.tight_layout()
    return fig
