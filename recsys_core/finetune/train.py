"""Trains the top BERT layers so that an item's text predicts its implicit-ALS item factors (training ratings only).

The frozen lower layers run once per item (their hidden states are kept), so an epoch costs only the trainable top
layers. Beside that target, co-consumed item pairs from the same training ratings pull the text of items liked
together close (`pair_weight`). The default `layers` and `loss` won `recsys bench coldstart`'s grid on its validation items with seed 42
(seed 7's validation items preferred 1 layer); the ridge-initialised head, its learning rate and the pair loss were
chosen on the validation items of seeds 42 and 7 (see `FineTuneConfig`), never judged on test items; epochs and learning
rates were set beforehand.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from recsys_core.baselines import ImplicitALS
from recsys_core.finetune.encoder import save_adapter
from recsys_core.finetune.pairs import Neighbours, cooccurrence_neighbours
from recsys_core.schema import ITEM_ID, RATING, USER_ID
from recsys_core.text_features import TextEncoder, item_text, load_mean_pooled_encoder
from recsys_core.tracking import MlflowSettings

LOSSES = ("mse", "contrastive")
HEAD_INITS = ("ridge", "random")


@dataclass(frozen=True)
class FineTuneConfig:
    """`layers`: how many top BERT layers train; `loss`: "mse" on the scaled factors or "contrastive" (in-batch InfoNCE
    between predicted and true factor directions). ALS settings are `ImplicitALS`'s defaults.

    `head_init="ridge"` starts the head at the ridge regression (`probe_lambda`) of the factors on the frozen vectors,
    then trains layers and head together at one small learning rate (linear probe, then fine-tune): the layers learn
    what the frozen vectors miss instead of following a random head that was still far from fitted after 6 epochs.
    Validation items (never test), nDCG@10 after 6 epochs: seed 42 0.476 (random head with `head_lr` 1e-3: 0.465,
    frozen 0.430), seed 7 0.466 (frozen 0.441).

    `pair_weight`: weight of an in-batch InfoNCE (`pair_temperature`) that pulls each warm item's text vector towards a
    co-consumed neighbour's (one of its `pair_neighbours` by shrunk co-occurrence cosine, see `finetune.pairs`), beside
    the factor loss: ~20 signals per item instead of one target. Chosen on the validation items of seeds 42 and 7
    (2026-12-08, best ridge lambda, 6 epochs): weight 1.0 gave 0.480 and 0.490 against 0.480 and 0.466 without it;
    neighbours, temperature and shrinkage were set beforehand, not searched.
    """

    layers: int = 2
    epochs: int = 6
    lr: float = 1e-4
    head_lr: float = 1e-4
    head_init: str = "ridge"
    probe_lambda: float = 1.0
    weight_decay: float = 0.01
    batch_size: int = 64
    loss: str = "mse"
    temperature: float = 0.1
    max_length: int = 128
    als_dim: int = 64
    pair_weight: float = 1.0
    pair_neighbours: int = 20
    pair_temperature: float = 0.05
    pair_shrink: float = 10.0
    pair_min_common: int = 2
    seed: int = 42

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: expected one of {LOSSES}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init={self.head_init!r}: expected one of {HEAD_INITS}")
        if self.pair_weight < 0 or self.pair_temperature <= 0:
            raise ValueError(f"need pair_weight >= 0 and pair_temperature > 0; got {self.pair_weight}, {self.pair_temperature}")
        if self.layers < 1 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError(
                f"need layers >= 1, epochs >= 1, batch_size >= 2; got {self.layers}, {self.epochs}, {self.batch_size}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CollaborativeVectors:
    """Implicit-ALS factors fitted on training ratings: what the text should predict, and the users that score it."""

    user_ids: np.ndarray
    users: np.ndarray  # [n_users, dim]
    item_ids: np.ndarray  # items with at least one training rating, sorted
    items: np.ndarray  # [n_items, dim]


def collaborative_targets(train: pd.DataFrame, dim: int = 64, seed: int = 42) -> CollaborativeVectors:
    als = ImplicitALS(dim=dim, seed=seed).fit(train)
    return CollaborativeVectors(als.user_index.ids, als.factors.users, als.item_index.ids, als.factors.items)


@dataclass
class FineTuneResult:
    adapter_path: Path
    fingerprint: str  # sha256 of the adapter file: part of the fine-tuned encoder's model id, so of its cache keys
    key: str  # hash of (base model, config, item texts, training ratings): the fine-tune's cache key
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    n_items: int = 0
    train_seconds: float = 0.0  # wall time
    cpu_seconds: float = 0.0  # CPU time of all this process's threads: what a busy shared machine inflates far less
    trained: bool = True  # False when an earlier identical fine-tune was loaded from the cache
    mlflow_run_id: str = ""

    def to_json(self) -> dict:
        return {**asdict(self), "adapter_path": str(self.adapter_path)}


def _warm_texts(items: pd.DataFrame, targets: CollaborativeVectors) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(item ids, texts, ALS factors) of the items with both text and training ratings, sorted by id."""
    warm = items[items[ITEM_ID].isin(targets.item_ids)].sort_values(ITEM_ID, kind="stable")
    if len(warm) < 2:
        raise ValueError(f"fine-tuning needs at least 2 items with both text and training ratings, found {len(warm)}")
    ids = warm[ITEM_ID].to_numpy(np.int64)
    return ids, item_text(warm).tolist(), targets.items[np.searchsorted(targets.item_ids, ids)]


class _TopLayers(nn.Module):
    """The trainable part: the top `layers` BERT layers, mean pooling, L2 normalisation, and a linear head to factors."""

    def __init__(self, bert: nn.Module, layers: int, out_dim: int) -> None:
        super().__init__()
        self.first = len(bert.encoder.layer) - layers
        self.layers = nn.ModuleList(bert.encoder.layer[self.first :])
        self.head = nn.Linear(bert.config.hidden_size, out_dim)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        vectors = nn.functional.normalize(pooled, dim=1)
        return vectors, self.head(vectors)

    def init_head_by_ridge(self, hidden: list[torch.Tensor], target: torch.Tensor, lam: float) -> None:
        """Sets the head to the ridge regression (with intercept) of `target` on the vectors the layers give now."""
        with torch.no_grad():
            vectors = torch.cat([self(*_pad(hidden[start : start + 128], 0.0))[0] for start in range(0, len(hidden), 128)])
            design = torch.cat([vectors, torch.ones(len(vectors), 1)], dim=1).double()
            penalty = lam * torch.eye(design.shape[1], dtype=torch.float64)
            penalty[-1, -1] = 0.0
            weights = torch.linalg.solve(design.T @ design + penalty, design.T @ target.double())
            self.head.weight.copy_(weights[:-1].T)
            self.head.bias.copy_(weights[-1])

    def adapter(self) -> dict[str, torch.Tensor]:
        tensors = {
            f"bert.encoder.layer.{self.first + i}.{name}": p
            for i, layer in enumerate(self.layers)
            for name, p in layer.state_dict().items()
        }
        return tensors | {f"head.{name}": p for name, p in self.head.state_dict().items()}


def _frozen_hidden(bert: nn.Module, tokenizer, texts: list[str], first: int, max_length: int) -> list[torch.Tensor]:
    """Per text, the hidden states entering layer `first` (trimmed to the text's tokens), computed once without grad."""
    ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    order = np.argsort([len(seq) for seq in ids], kind="stable")
    out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            rows = order[start : start + 64]
            input_ids, mask = _pad([torch.tensor(ids[r]) for r in rows], tokenizer.pad_token_id or 0)
            hidden = bert(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[first]
            for row, h, m in zip(rows, hidden, mask):
                out[row] = h[: int(m.sum())].clone()
    return out


def _pad(sequences: list[torch.Tensor], value: float) -> tuple[torch.Tensor, torch.Tensor]:
    padded = nn.utils.rnn.pad_sequence(sequences, batch_first=True, padding_value=value)
    lengths = torch.tensor([len(s) for s in sequences])
    return padded, (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).long()


def _loss(predicted: torch.Tensor, target: torch.Tensor, config: FineTuneConfig) -> torch.Tensor:
    if config.loss == "mse":
        return nn.functional.mse_loss(predicted, target)
    return _info_nce(nn.functional.normalize(predicted, dim=1), nn.functional.normalize(target, dim=1), config.temperature)


def _info_nce(left: torch.Tensor, right: torch.Tensor, temperature: float, same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric in-batch InfoNCE: row i of `left` matches row i of `right`; `same[i, j]` masks an off-diagonal pair
    that is no negative (the same item drawn twice)."""
    logits = left @ right.T / temperature
    if same is not None:
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(logits))
    return 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels))


def _pair_loss(
    top: "_TopLayers", anchor_vectors: torch.Tensor, rows: np.ndarray, hidden: list[torch.Tensor],
    neighbours: Neighbours, rng: np.random.Generator, config: FineTuneConfig,
) -> torch.Tensor:
    """InfoNCE between each anchor's text vector and a sampled co-consumed neighbour's (the batch's other neighbours are
    the negatives), so the text of items liked together lands close."""
    keep = np.flatnonzero(neighbours.has_any()[rows])
    if len(keep) < 2:
        return anchor_vectors.sum() * 0.0
    positives = neighbours.sample(rows[keep], rng)
    positive_vectors, _ = top(*_pad([hidden[r] for r in positives.tolist()], 0.0))
    same = torch.from_numpy((positives[:, None] == positives[None, :]) & ~np.eye(len(positives), dtype=bool))
    return _info_nce(anchor_vectors[torch.from_numpy(keep)], positive_vectors, config.pair_temperature, same)


def fine_tune(
    items: pd.DataFrame,
    train: pd.DataFrame,
    base: TextEncoder,
    config: FineTuneConfig = FineTuneConfig(),
    targets: CollaborativeVectors | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """(adapter tensors, mean loss per epoch). Deterministic for `config.seed` on a given machine and thread count.

    `targets`: ALS factors already fitted on `train` with `config.als_dim` and `config.seed` (fitted here when absent).
    """
    targets = targets or collaborative_targets(train, config.als_dim, config.seed)
    warm_ids, texts, factors = _warm_texts(items, targets)
    bert = load_mean_pooled_encoder(base.source).bert.float()
    if config.layers > len(bert.encoder.layer):
        raise ValueError(f"layers={config.layers}, but the model has only {len(bert.encoder.layer)} layers")
    torch.manual_seed(config.seed)
    top = _TopLayers(bert, config.layers, factors.shape[1])
    hidden = _frozen_hidden(bert, base.tokenizer, texts, top.first, min(config.max_length, base.max_length))
    # Factors scaled to unit RMS, so one learning rate fits any ALS regularisation.
    target = torch.from_numpy(factors / max(float(np.sqrt((factors**2).mean())), 1e-12)).float()
    top.eval()  # no dropout: the few items of a catalogue are better served by weight decay and few epochs
    if config.head_init == "ridge":
        top.init_head_by_ridge(hidden, target, config.probe_lambda)
    optimiser = torch.optim.AdamW(
        [{"params": top.layers.parameters(), "lr": config.lr}, {"params": top.head.parameters(), "lr": config.head_lr}],
        weight_decay=config.weight_decay,
    )
    # Batches of similar token length pad almost nothing; their order is shuffled each epoch.
    by_length = np.argsort([len(h) for h in hidden], kind="stable")
    starts = range(0, len(texts), config.batch_size)
    batches = [torch.from_numpy(by_length[start : start + config.batch_size]) for start in starts]
    generator = torch.Generator().manual_seed(config.seed)
    neighbours = (
        cooccurrence_neighbours(train, warm_ids, config.pair_neighbours, config.pair_shrink, config.pair_min_common)
        if config.pair_weight > 0
        else None
    )
    pair_rng = np.random.default_rng(config.seed)
    losses = []
    for _ in range(config.epochs):
        total = 0.0
        for index in torch.randperm(len(batches), generator=generator).tolist():
            rows = batches[index]
            batch, mask = _pad([hidden[r] for r in rows.tolist()], 0.0)
            vectors, predicted = top(batch, mask)
            loss = _loss(predicted, target[rows], config)
            if neighbours is not None:
                loss = loss + config.pair_weight * _pair_loss(top, vectors, rows.numpy(), hidden, neighbours, pair_rng, config)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / len(texts))
    return {name: tensor.detach().clone() for name, tensor in top.adapter().items()}, losses


def fine_tune_key(items: pd.DataFrame, train: pd.DataFrame, base: TextEncoder, config: FineTuneConfig) -> str:
    """Everything the adapter depends on: base model, config, each item's text, every training rating."""
    digest = hashlib.sha256(json.dumps({"model": base.model_id, **config.to_dict()}, sort_keys=True).encode())
    ordered = items.sort_values(ITEM_ID, kind="stable")
    digest.update(ordered[ITEM_ID].to_numpy(np.int64).tobytes())
    digest.update("\x00".join(item_text(ordered).tolist()).encode("utf-8"))
    ratings = train.sort_values([USER_ID, ITEM_ID], kind="stable")
    for column, dtype in ((USER_ID, np.int64), (ITEM_ID, np.int64), (RATING, np.float32)):
        digest.update(ratings[column].to_numpy(dtype).tobytes())
    return digest.hexdigest()


def fine_tune_cached(
    items: pd.DataFrame,
    train: pd.DataFrame,
    base: TextEncoder,
    config: FineTuneConfig,
    cache_dir: str | Path,
    mlflow: MlflowSettings | None = None,
    targets: CollaborativeVectors | None = None,
) -> FineTuneResult:
    """The adapter for these inputs: loaded from `cache_dir/finetune/<key>/` when an identical fine-tune ran before, else
    trained, saved there and (with `mlflow`) logged as a run: params, loss per epoch, the adapter and its summary."""
    key = fine_tune_key(items, train, base, config)
    folder = Path(cache_dir) / "finetune" / key[:16]
    summary_path = folder / "fine_tune.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        return FineTuneResult(**{**summary, "adapter_path": folder / "adapter.safetensors", "trained": False})

    started, started_cpu = time.perf_counter(), time.process_time()
    tensors, losses = fine_tune(items, train, base, config, targets)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    metadata = {"base_model": base.model_id, "config": json.dumps(config.to_dict(), sort_keys=True), "key": key}
    adapter_path = folder / "adapter.safetensors"
    fingerprint = save_adapter(tensors, adapter_path, metadata)
    n_items = int(items[ITEM_ID].isin(train[ITEM_ID]).sum())
    result = FineTuneResult(adapter_path, fingerprint, key, losses, n_items, round(seconds, 2), round(cpu_seconds, 2))
    if mlflow is not None:
        result.mlflow_run_id = _log_run(result, base, config, mlflow)
    # Written last and atomically: a summary on disk means a complete adapter beside it.
    tmp = summary_path.with_name(f".{summary_path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({k: v for k, v in result.to_json().items() if k not in ("adapter_path", "trained")}))
    os.replace(tmp, summary_path)
    return result


def _log_run(result: FineTuneResult, base: TextEncoder, config: FineTuneConfig, settings: MlflowSettings) -> str:
    import mlflow

    settings.activate()
    with mlflow.start_run(run_name="text-encoder-finetune", tags={"recsys.stage": "text_finetune"}) as run:
        mlflow.log_params({**config.to_dict(), "base_model": base.model_id, "n_items": result.n_items})
        for epoch, loss in enumerate(result.losses):
            mlflow.log_metric("finetune_loss", loss, step=epoch)
        mlflow.log_metrics({"train_seconds": result.train_seconds, "train_cpu_seconds": result.cpu_seconds})
        mlflow.log_artifact(str(result.adapter_path), artifact_path="adapter")
        mlflow.log_dict({**result.to_json(), "fingerprint": result.fingerprint}, "adapter/fine_tune.json")
        return run.info.run_id
