"""Training of `HybridRecommender`: per-user multi-task batches, AdamW, early stopping on validation nDCG.

One training example is one user. Each step, a random share of the user's training items (at most the most
recent `history_len` of that share) is the input history; the user's other training items are the targets. So a
target is never in its own history (no leakage) and the attention tower learns to predict unseen items from a
history, which is what serving does with the most recent items. With `next_items > 0` the split is causal instead
(SASRec-style): the history is every item before a random cut in time order, the targets the next `next_items`
items, so the attention (with its learned recency offsets) learns what comes next. With `encoder_layers > 0` the
history encoder is a causal transformer and every position is a target (SASRec's training): the input is each
user's latest `history_len + 1` items but the last, and the state after each item is scored with a full softmax
against the item that follows it, so an epoch trains on every rating instead of one cut per user
(`next_items` and `history_keep` are then unused). Losses on the targets:
- ranking: softmax over the catalogue with the input history masked out (`n_negatives=0`, exact and cheap for
  catalogues of a few thousand items), or a sampled softmax with popularity-proportional negatives and the logQ
  correction (`n_negatives>0`, for large catalogues);
- rating: MSE of the predicted rating.
With `prior_dim > 0`, a collaborative prior is fitted on the same training ratings first and loaded as the model's
fixed prior factors (items never rated in training get factors mapped from their text): implicit ALS
(`prior="als"`, `recsys_core.baselines.ImplicitALS`), the rank-`prior_dim` SVD of EASE's scores (`prior="ease"`,
`EASE.low_rank`), or both side by side (`prior="als+ease"`: a blend with EASE's share `prior_ease_share`, still one
dot product, over 2 * `prior_dim` columns). The losses leave it out, so the towers learn alone and the served score
is the ensemble `towers + prior_weight * prior`.
Likewise `rating_prior_dim > 0` fits `BiasedMF`, and the predicted rating is
`(1 - rating_prior_weight) * towers + rating_prior_weight * MF`.
Validation (when given) ranks every item for each validation user from the stored training histories with the
training items excluded, exactly as serving does, and keeps the weights of the best epoch.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from recsys_core.baselines import EASE, BiasedMF, ImplicitALS
from recsys_core.device import resolve_device
from recsys_core.distributed import all_reduce_mean, shard_epoch, wrap_ddp
from recsys_core.evaluation import sample_users
from recsys_core.metrics import ranking_metrics, rmse
from recsys_core.model import (
    HybridConfig,
    HybridRecommender,
    ModelBundle,
    build_histories,
    build_seen,
    item_popularity,
)
from recsys_core.schema import ITEM_ID, RATING, RATING_COLUMNS, TIMESTAMP, USER_ID, IdIndex


class TextVectors(Protocol):
    """What training needs from `recsys_core.text_features.ItemTextFeatures`."""

    item_ids: np.ndarray
    vectors: np.ndarray


# Ridge penalty of the text -> ALS-factor map for unrated items (chosen on a seed-7 cold split; 0.1 and 10 were worse).
PRIOR_TEXT_RIDGE = 1.0
PRIORS = ("als", "ease", "als+ease")
# Multiples of `prior_weight` tried on validation after training (`_fit_prior_weight`); 1 keeps the configured one.
PRIOR_WEIGHT_STEPS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class TrainConfig:
    """The hybrid's knobs. The defaults were picked on validation splits only (the seed-7 random split of ml-100k,
    never a test part); `prior="ease"` / `"als+ease"`, `prior_reg`, `prior_ease_share`, `next_items > 0` and
    `encoder_layers > 0` are not defaults: the Optuna search (`recsys_core.tuning.hybrid_space`, run by the
    `tuned_config` asset and `recsys bench quality`) chooses the prior, the history encoder and the causal,
    every-position or random training split, and re-picks lr, weight decay, dropout, history_keep and prior_weight,
    on the validation split of the user's own data (`SEQUENTIAL_TRIAL` is the every-position preset it tries second).

    Cost caps, which only bite above about 1M training ratings (ml-100k and the 1M synthetic run stay unchanged;
    they bound time, they were not chosen for quality): an epoch trains a seeded sample of at most `epoch_users`
    users (an example is a user), early stopping ranks a seeded sample of at most `validation_users` validation
    users, and the whole fit stops before an epoch that would end past `time_budget_minutes` (0: no budget), with
    the cosine schedule re-sized after every epoch to the epochs that still fit at that epoch's pace.
    """

    dim: int = 64
    history_len: int = 256
    n_heads: int = 1
    encoder_layers: int = 0
    dropout: float = 0.3
    item_dropout: float = 0.2
    user_dropout: float = 0.0
    epochs: int = 100
    cosine_decay: bool = True
    schedule_epochs: int = 0
    batch_size: int = 128
    lr: float = 5e-3
    weight_decay: float = 0.6
    rating_weight: float = 0.3
    ranking_weight: float = 1.0
    n_negatives: int = 0
    popularity_alpha: float = 0.75
    history_keep: float = 0.5
    next_items: int = 0
    prior: str = "als"
    prior_dim: int = 64
    prior_weight: float = 15.0
    prior_reg: float = 250.0
    prior_ease_share: float = 0.5
    rating_prior_dim: int = 64
    rating_prior_weight: float = 0.4
    patience: int = 8
    epoch_users: int = 10_000
    validation_users: int = 10_000
    time_budget_minutes: float = 15.0
    k: int = 10
    seed: int = 42
    device: str = "auto"
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"TrainConfig needs epochs >= 1 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        if self.schedule_epochs < 0:
            raise ValueError(f"TrainConfig.schedule_epochs must be >= 0, got {self.schedule_epochs}")
        if self.prior not in PRIORS:
            raise ValueError(f"TrainConfig.prior must be one of {PRIORS}, got {self.prior!r}")
        if not 0.0 <= self.prior_ease_share <= 1.0:
            raise ValueError(f"TrainConfig.prior_ease_share must be in [0, 1], got {self.prior_ease_share}")
        if self.epoch_users < 1 or self.validation_users < 1 or self.time_budget_minutes < 0:
            raise ValueError("TrainConfig needs epoch_users >= 1, validation_users >= 1 and time_budget_minutes >= 0")
        if self.encoder_layers < 0:
            raise ValueError(f"TrainConfig.encoder_layers must be >= 0, got {self.encoder_layers}")
        if self.next_items < 0:
            raise ValueError(f"TrainConfig.next_items must be >= 0, got {self.next_items}")
        if not 0.0 < self.history_keep < 1.0:
            raise ValueError(f"TrainConfig.history_keep must be in (0, 1), got {self.history_keep}")
        if self.rating_weight < 0 or self.ranking_weight < 0 or self.rating_weight + self.ranking_weight == 0:
            raise ValueError("TrainConfig loss weights must be >= 0 and not both 0")

    @property
    def prior_columns(self) -> int:
        """Width of the prior's factors in the model: `prior_dim` per prior model."""
        return self.prior_dim * len(self.prior.split("+"))

    @property
    def horizon(self) -> int:
        """Epochs the cosine schedule spans: `schedule_epochs`, or `epochs` when 0. A refit that stops at the search's
        best epoch sets it to the search's epoch cap, so it sees the same learning rates as the epochs it repeats."""
        return self.schedule_epochs or self.epochs

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    bundle: ModelBundle
    history: list[dict[str, float]]  # one row per epoch: losses, validation metrics
    best_epoch: int
    train_seconds: float
    final_metrics: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float | int | bool] = field(default_factory=dict)  # `TrainCost.as_dict()`: what the caps did


def _check_ratings(frame: pd.DataFrame, name: str) -> None:
    missing = [c for c in RATING_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the canonical columns {missing}")


def _item_index(train: pd.DataFrame, items: pd.DataFrame | None) -> IdIndex:
    """The catalogue: every item in `items` (so text-only items get vectors), plus any item rated in training."""
    ids = train[ITEM_ID].to_numpy(np.int64)
    if items is not None and len(items):
        ids = np.concatenate([items[ITEM_ID].to_numpy(np.int64), ids])
    return IdIndex.from_ids(ids)


def _text_matrix(text: TextVectors | None, item_index: IdIndex) -> np.ndarray | None:
    """Text vectors aligned with the item index; items without text get zeros."""
    if text is None:
        return None
    vectors = np.asarray(text.vectors, dtype=np.float32)
    item_ids = np.asarray(text.item_ids, dtype=np.int64)
    if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
        raise ValueError(f"text features: {len(item_ids)} item ids but vectors of shape {vectors.shape}")
    matrix = np.zeros((len(item_index), vectors.shape[1]), dtype=np.float32)
    pos = item_index.encode(item_ids, missing=-1)
    matrix[pos[pos >= 0]] = vectors[pos >= 0]
    return matrix


def _factors_from_text(text: np.ndarray, factors: np.ndarray, rated: np.ndarray, reg: float = PRIOR_TEXT_RIDGE) -> np.ndarray:
    """`factors` with the rows of unrated items replaced by a ridge regression (with intercept) from their text.

    Fitted on the rated items (Gantner et al. 2010, attribute-to-factor mapping), so a cold item gets ALS factors
    that users' ALS vectors can score. On a seed-7 cold split this took cold nDCG@10 from 0.330 to 0.366.
    """
    if rated.all() or not rated.any():
        return factors
    design = np.hstack([text, np.ones((len(text), 1), dtype=text.dtype)]).astype(np.float64)
    known = design[rated]
    weights = np.linalg.solve(known.T @ known + reg * np.eye(design.shape[1]), known.T @ factors[rated])
    return np.where(rated[:, None], factors, design @ weights)


def prior_factors(
    train: pd.DataFrame, items: pd.DataFrame | None, text: TextVectors | None, config: TrainConfig,
    user_index: IdIndex, item_index: IdIndex,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(user, item) factors of `config.prior` fitted on `train`, rows aligned with `user_index` / `item_index`;
    with `text`, items unrated in `train` get factors mapped from their text (`_factors_from_text`).

    `als+ease` concatenates both, scores (1 - share) ALS + share EASE with EASE rescaled to the ALS scores' Frobenius
    norm, so `prior_weight` (chosen for the ALS scale) keeps its meaning for any share.
    """
    parts = []
    for name in config.prior.split("+"):
        if name == "ease":
            model = EASE(reg=config.prior_reg, seed=config.seed).fit(train, items)
            users, item_factors = model.low_rank(config.prior_dim)
        else:
            model = ImplicitALS(dim=config.prior_dim, seed=config.seed).fit(train, items)
            users, item_factors = model.factors.users, model.factors.items
        rows = model.user_index.encode(user_index.ids), model.item_index.encode(item_index.ids)
        parts.append((users[rows[0]], item_factors[rows[1]]))
    if len(parts) == 1:
        users, item_factors = parts[0]
    else:
        (als_users, als_items), (ease_users, ease_items) = parts
        share = config.prior_ease_share
        scale = _score_norm(als_users, als_items) / max(_score_norm(ease_users, ease_items), 1e-12)
        users = np.hstack([(1.0 - share) * als_users, share * scale * ease_users])
        item_factors = np.hstack([als_items, ease_items])
    text_matrix = _text_matrix(text, item_index)
    if text_matrix is not None:
        rated = np.isin(item_index.ids, train[ITEM_ID].to_numpy())
        item_factors = _factors_from_text(text_matrix, item_factors, rated)
    return users, item_factors


def _score_norm(users: np.ndarray, items: np.ndarray) -> float:
    """||users @ items.T||_F without the score matrix: sqrt(sum((U'U) * (V'V)))."""
    return float(np.sqrt(max(np.sum((users.T @ users) * (items.T @ items)), 0.0)))


class _PaddedRatings:
    """Each user's training items and ratings in time order, stored flat (CSR: `indptr` by user) and padded to
    [len(users), width] one batch at a time: a dense [n_users, longest history] matrix would not fit at ml-25m scale
    (162k users, the most active with thousands of ratings). `width` is the longest user's count, as the dense
    matrix had, so a batch draws the same random numbers whichever way it is stored."""

    def __init__(self, indptr: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> None:
        self.indptr, self.items, self.ratings = indptr, items, ratings
        self.width = max(int(np.diff(indptr).max()) if len(indptr) > 1 else 1, 1)

    @classmethod
    def build(cls, u: np.ndarray, i: np.ndarray, r: np.ndarray, t: np.ndarray, n_users: int) -> "_PaddedRatings":
        order = np.lexsort((i, t, u))
        indptr = np.r_[0, np.cumsum(np.bincount(u, minlength=n_users))].astype(np.int64)
        return cls(indptr, i[order].astype(np.int64), r[order].astype(np.float32))

    def rows(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(items, ratings, mask) [len(users), width] of these user rows, left-aligned, zero-padded."""
        u = users.cpu().numpy()
        starts, counts = self.indptr[u], self.indptr[u + 1] - self.indptr[u]
        owner = np.repeat(np.arange(len(u)), counts)
        col = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        flat = np.repeat(starts, counts) + col
        items = np.zeros((len(u), self.width), np.int64)
        ratings = np.zeros((len(u), self.width), np.float32)
        mask = np.zeros((len(u), self.width), bool)
        items[owner, col], ratings[owner, col], mask[owner, col] = self.items[flat], self.ratings[flat], True
        return torch.from_numpy(items), torch.from_numpy(ratings), torch.from_numpy(mask)


class _NextItemStep(torch.nn.Module):
    """`HybridRecommender.sequence_scores` as a module's forward, so DDP (which hooks `forward`) can wrap it."""

    def __init__(self, model: HybridRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.sequence_scores(*inputs)


class HybridTrainer:
    """Owns the data tensors, the model and the optimiser for one training run."""

    def __init__(
        self,
        train: pd.DataFrame,
        items: pd.DataFrame | None,
        text: TextVectors | None,
        config: TrainConfig,
    ) -> None:
        _check_ratings(train, "train ratings")
        if train.empty:
            raise ValueError("train ratings are empty: nothing to learn from")
        self.config = config
        self.device = resolve_device(config.device)
        self.user_index = IdIndex.from_ids(train[USER_ID])
        self.item_index = _item_index(train, items)
        self.train = train
        text_matrix = _text_matrix(text, self.item_index)
        self.popularity = item_popularity(train, self.item_index)
        values = train[RATING].to_numpy(np.float32)
        self.model_config = HybridConfig(
            n_users=len(self.user_index),
            n_items=len(self.item_index),
            text_dim=0 if text_matrix is None else text_matrix.shape[1],
            dim=config.dim,
            history_len=config.history_len,
            n_heads=config.n_heads,
            encoder_layers=config.encoder_layers,
            dropout=config.dropout,
            item_dropout=config.item_dropout,
            user_dropout=config.user_dropout,
            prior_dim=config.prior_columns,
            prior_weight=config.prior_weight if config.prior_dim else 0.0,
            rating_prior_dim=config.rating_prior_dim,
            rating_prior_weight=config.rating_prior_weight if config.rating_prior_dim else 0.0,
            global_mean=float(values.mean()),
            rating_min=float(values.min()),
            rating_max=float(values.max()),
        )
        torch.manual_seed(config.seed)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.model = HybridRecommender(self.model_config)
        self.model.set_item_features(text_matrix, self.popularity)
        if config.prior_dim:
            self.model.set_prior(*prior_factors(train, items, text, config, self.user_index, self.item_index))
        if config.rating_prior_dim:
            mf = BiasedMF(dim=config.rating_prior_dim, seed=config.seed).fit(train, items)
            users, item_rows = mf.user_index.encode(self.user_index.ids), mf.item_index.encode(self.item_index.ids)
            factors = mf.factors
            self.model.set_rating_prior(
                factors.users[users], factors.user_bias[users], factors.items[item_rows], factors.item_bias[item_rows]
            )
        self.model.to(self.device)
        # the full-softmax step calls this: DDP under torchrun, else the model (or its every-position objective)
        self.step_model = wrap_ddp(_NextItemStep(self.model) if config.encoder_layers else self.model)
        self.padded = _PaddedRatings.build(
            self.user_index.encode(train[USER_ID].to_numpy()),
            self.item_index.encode(train[ITEM_ID].to_numpy()),
            values,
            train[TIMESTAMP].to_numpy(np.int64),
            len(self.user_index),
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
        )
        self.epoch_users = min(config.epoch_users, len(self.user_index))
        self.steps_per_epoch = -(-self.epoch_users // config.batch_size)
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.horizon * self.steps_per_epoch, eta_min=config.lr * 0.05)
            if config.cosine_decay
            else None
        )
        q = self.popularity.astype(np.float64) ** config.popularity_alpha + 1e-6
        self.sampling_probs = torch.as_tensor(q / q.sum(), dtype=torch.float32)
        histories = build_histories(train, self.user_index, self.item_index, config.history_len)
        indptr, indices = build_seen(train, self.user_index, self.item_index)
        self.bundle = ModelBundle(self.model, self.user_index, self.item_index, histories, indptr, indices, self.popularity)

    def _batch(self, users: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Random history / target split of each user's training items (the history never holds a target)."""
        if self.config.encoder_layers:
            return self._sequence_batch(users)
        L = self.config.history_len
        items, ratings, mask = self.padded.rows(users)
        position = torch.arange(mask.shape[1]).expand_as(mask)
        if self.config.next_items:
            # causal: the history is everything before a random cut, the targets the next `next_items` items
            count = mask.sum(1, keepdim=True)
            cut = 1 + (torch.rand(count.shape, generator=self.generator) * (count - 1).clamp(min=0)).long()
            chosen = mask & (position < cut)
            targets = mask & (position >= cut) & (position < cut + self.config.next_items)
        else:
            chosen = mask & (torch.rand(mask.shape, generator=self.generator) < self.config.history_keep)
            targets = mask
        key = torch.where(chosen, position, torch.full_like(position, -1))
        width = min(L, mask.shape[1])
        # the latest `width` history items, oldest first and right-aligned as `build_histories` lays them out for serving
        top_key, top_pos = (t.flip(1) for t in torch.topk(key, width, dim=1))
        hist_mask = top_key >= 0
        in_history = torch.zeros_like(mask)
        in_history.scatter_(1, top_pos, hist_mask)
        hist_items = torch.where(hist_mask, items.gather(1, top_pos), torch.zeros_like(top_pos))
        hist_ratings = torch.where(hist_mask, ratings.gather(1, top_pos), torch.zeros(()))
        if width < L:
            pad = L - width
            hist_items = F.pad(hist_items, (pad, 0))
            hist_ratings = F.pad(hist_ratings, (pad, 0))
            hist_mask = F.pad(hist_mask, (pad, 0))
        target_mask = targets & ~in_history
        tensors = (users, hist_items, hist_ratings, hist_mask, items, ratings, target_mask)
        return tuple(t.to(self.device) for t in tensors)

    def _sequence_batch(self, users: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(users, history, next items, their ratings): each user's latest `history_len + 1` items, all but the last
        as the history (oldest first, right-aligned like `build_histories`), each slot's target the item after it."""
        items, ratings, mask = self.padded.rows(users)
        count = mask.sum(1, keepdim=True)
        slot = torch.arange(self.config.history_len).expand(len(users), -1)
        source = slot + count - 1 - self.config.history_len  # row position of the item in each slot
        hist_mask = source >= 0
        source = source.clamp(min=0)
        hist_items = torch.where(hist_mask, items.gather(1, source), 0)
        hist_ratings = torch.where(hist_mask, ratings.gather(1, source), 0.0)
        nxt = torch.where(hist_mask, source + 1, 0)
        next_items = torch.where(hist_mask, items.gather(1, nxt), 0)
        next_ratings = torch.where(hist_mask, ratings.gather(1, nxt), 0.0)
        tensors = (users, hist_items, hist_ratings, hist_mask, next_items, next_ratings)
        return tuple(t.to(self.device) for t in tensors)

    def _losses(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.encoder_layers:
            users, hist_items, hist_ratings, hist_mask, next_items, next_ratings = batch
            scores, predicted = self.step_model(users, hist_items, hist_ratings, hist_mask, next_items)
            targets, target_ratings = next_items[hist_mask], next_ratings[hist_mask]
            if not len(targets):  # every user of the batch has a single rating
                zero = scores.sum() * 0.0
                return zero, zero
            return F.cross_entropy(scores, targets), F.mse_loss(predicted, target_ratings)
        users, hist_items, hist_ratings, hist_mask, items, ratings, target_mask = batch
        n_targets = target_mask.sum(1).clamp(min=1)
        targetf = target_mask.float()
        if self.config.n_negatives > 0:
            pos_scores, pos_ratings = self.model(users, hist_items, hist_ratings, hist_mask, items, with_prior=False)
            negatives = torch.multinomial(
                self.sampling_probs, self.config.n_negatives, replacement=True, generator=self.generator
            ).to(self.device)
            neg_scores, _ = self.model(
                users, hist_items, hist_ratings, hist_mask, negatives.expand(len(users), -1), with_prior=False
            )
            log_q = torch.log(self.sampling_probs.to(self.device) * self.config.n_negatives)
            neg_logits = neg_scores - log_q[negatives]
            own = (negatives.view(1, 1, -1) == items.unsqueeze(-1)) & self.padded.rows(users)[2].to(self.device).unsqueeze(-1)
            neg_logits = neg_logits.masked_fill(own.any(1), float("-inf"))
            pos_logits = pos_scores - log_q[items]
            lse = torch.logaddexp(pos_logits, torch.logsumexp(neg_logits, dim=1, keepdim=True))
            ranking = ((lse - pos_logits) * targetf).sum(1) / n_targets
        else:
            scores, all_ratings = self.step_model(users, hist_items, hist_ratings, hist_mask, with_prior=False)
            history_dense = torch.zeros_like(scores).scatter_add_(1, hist_items, hist_mask.float()) > 0
            log_probs = torch.log_softmax(scores.masked_fill(history_dense, float("-inf")), dim=1)
            ranking = -torch.where(target_mask, log_probs.gather(1, items), 0.0).sum(1) / n_targets
            pos_ratings = all_ratings.gather(1, items)
        has_targets = (target_mask.sum(1) > 0).float()
        ranking = (ranking * has_targets).sum() / has_targets.sum().clamp(min=1)
        rating = (((pos_ratings - ratings) ** 2) * targetf).sum() / targetf.sum().clamp(min=1)
        return ranking, rating

    def epoch_order(self) -> torch.Tensor:
        """This epoch's users in random order: all of them, or the first `epoch_users` of a seeded permutation."""
        return torch.randperm(len(self.user_index), generator=self.generator)[: self.epoch_users]

    def fit_schedule(self, epochs: int) -> None:
        """Ends the cosine decay after `epochs` epochs instead of `config.epochs` (the recursive form continues from
        the current rate, so the rate stays continuous, never rises, and reaches its floor when the budget ends)."""
        if self.scheduler is not None:
            self.scheduler.T_max = epochs * self.steps_per_epoch

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        order, batch_size = shard_epoch(self.epoch_order(), self.config.batch_size)
        totals = np.zeros(3)
        n_batches = 0
        for start in range(0, len(order), batch_size):
            batch = self._batch(order[start : start + batch_size])
            ranking, rating = self._losses(batch)
            loss = self.config.ranking_weight * ranking + self.config.rating_weight * rating
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            totals += [loss.item(), ranking.item(), rating.item()]
            n_batches += 1
        loss, ranking, rating = all_reduce_mean(totals / max(n_batches, 1))
        return {"train_loss": loss, "train_ranking_loss": ranking, "train_rating_mse": rating}

    def evaluate(self, validation: pd.DataFrame) -> dict[str, float]:
        """Ranking metrics @k (training items excluded) and rating RMSE on `validation`."""
        users = np.unique(validation[USER_ID].to_numpy(np.int64))
        rateable = validation[self.item_index.contains(validation[ITEM_ID].to_numpy())]
        recs = self.bundle.recommend(users, k=self.config.k, exclude_seen=True)
        metrics = {f"val_{name}": value for name, value in ranking_metrics(recs, validation, self.config.k).items()}
        if len(rateable):
            predicted = self.bundle.predict_ratings(rateable[USER_ID].to_numpy(), rateable[ITEM_ID].to_numpy())
            metrics["val_rmse"] = rmse(rateable[RATING].to_numpy(), predicted)
        return metrics


def sample_validation(validation: pd.DataFrame, max_users: int, seed: int) -> pd.DataFrame:
    """Every rating of a seeded uniform sample of at most `max_users` validation users (`evaluation.sample_users`)."""
    users = sample_users(validation[USER_ID].to_numpy(), max_users, seed)
    return validation if len(users) == validation[USER_ID].nunique() else validation[validation[USER_ID].isin(users)]


@dataclass
class TrainCost:
    """What the cost caps did in one fit: users per epoch, epochs run, examples/s, and whether each cap bit."""

    users: int
    epoch_users: int
    validation_users: int
    validation_users_total: int
    budget_seconds: float
    epochs_run: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    budget_bit: bool = False
    planned_epochs: int = 0

    @property
    def epoch_cap_bit(self) -> bool:
        return self.epoch_users < self.users

    def as_dict(self) -> dict[str, float | int | bool]:
        seconds = sum(self.epoch_seconds)
        return {"users": self.users, "epoch_users": self.epoch_users, "epoch_cap_bit": self.epoch_cap_bit,
                "validation_users": self.validation_users, "validation_users_total": self.validation_users_total,
                "epochs_run": self.epochs_run, "planned_epochs": self.planned_epochs, "budget_seconds": self.budget_seconds,
                "budget_bit": self.budget_bit, "epoch_seconds_mean": round(seconds / max(self.epochs_run, 1), 3),
                "examples_per_s": round(self.epoch_users * self.epochs_run / seconds, 1) if seconds else 0.0}  # fmt: skip


def _fit_prior_weight(trainer: HybridTrainer, validation: pd.DataFrame) -> None:
    """Sets the prior's weight beside the trained towers to the best of `PRIOR_WEIGHT_STEPS` x the configured one on
    validation nDCG@k: a stacked blend fitted on validation, cheap because the towers are trained without the prior."""
    config, monitor = trainer.model.config, f"val_ndcg@{trainer.config.k}"
    start = config.prior_weight
    scores = {}
    for step in PRIOR_WEIGHT_STEPS:
        config.prior_weight = start * step
        scores[config.prior_weight] = trainer.evaluate(validation)[monitor]
    config.prior_weight = max(scores, key=lambda weight: (scores[weight], weight == start))


def train_hybrid(
    train: pd.DataFrame,
    validation: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    text: TextVectors | None = None,
    config: TrainConfig | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Trains a hybrid model; with a non-empty `validation`, stops early on val nDCG@k and keeps the best epoch.

    `on_epoch(epoch, row)` is called after every epoch (e.g. to log metrics to MLflow).
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    trainer = HybridTrainer(train, items, text, config)
    use_validation = validation is not None and not validation.empty
    total_validation = 0
    if use_validation:
        _check_ratings(validation, "validation ratings")
        total_validation = validation[USER_ID].nunique()
        validation = sample_validation(validation, config.validation_users, config.seed)
    budget = config.time_budget_minutes * 60.0
    cost = TrainCost(users=len(trainer.user_index), epoch_users=trainer.epoch_users, budget_seconds=budget,
                     validation_users=validation[USER_ID].nunique() if use_validation else 0,
                     validation_users_total=total_validation, planned_epochs=config.epochs)  # fmt: skip
    monitor = f"val_ndcg@{config.k}"
    best_score, best_epoch, best_state = -np.inf, config.epochs, None
    history: list[dict[str, float]] = []
    progress = tqdm(range(1, config.epochs + 1), desc="training", unit="epoch", disable=not config.show_progress)
    for epoch in progress:
        epoch_started = time.perf_counter()
        row = {"epoch": float(epoch), **trainer.train_epoch()}
        if use_validation:
            row.update(trainer.evaluate(validation))
            if row[monitor] > best_score:
                best_score, best_epoch = row[monitor], epoch
                best_state = copy.deepcopy(trainer.model.state_dict())
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
        progress.set_postfix({key: f"{value:.4f}" for key, value in row.items() if key in ("train_loss", monitor)})
        cost.epoch_seconds.append(time.perf_counter() - epoch_started)
        cost.epochs_run = epoch
        if use_validation and epoch - best_epoch >= config.patience:
            break
        if budget and epoch < config.epochs and _over_budget(trainer, cost, budget - (time.perf_counter() - started)):
            break
    if best_state is not None:
        trainer.model.load_state_dict(best_state)
    trainer.model.eval()
    if use_validation and config.prior_dim:
        _fit_prior_weight(trainer, validation)
    final = trainer.evaluate(validation) if use_validation else {}
    return TrainResult(trainer.bundle, history, best_epoch, time.perf_counter() - started, final, cost.as_dict())


def _over_budget(trainer: HybridTrainer, cost: TrainCost, remaining: float) -> bool:
    """After each epoch, re-sizes the cosine schedule to the epochs the remaining budget holds at the last epoch's
    pace (never beyond `config.epochs`); True when not one more fits. Under DDP the ranks decide on their mean clock,
    so all stop after the same epoch."""
    remaining, pace = all_reduce_mean(np.array([remaining, cost.epoch_seconds[-1]]))
    fits = min(trainer.config.epochs, cost.epochs_run + max(int(remaining // pace), 0))
    if fits != cost.planned_epochs:
        cost.planned_epochs = fits
        trainer.fit_schedule(max(fits, 1))
    if fits <= cost.epochs_run:
        cost.budget_bit = True
        return True
    return False
