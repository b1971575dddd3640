"""The one canonical in-memory schema every data source is converted to, and the id <-> index mapping."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

# A trained model directory's id maps and serving tables: one spelling for training (torch), serving and privacy checks.
USER_IDS_FILE = "user_ids.npy"
ITEM_IDS_FILE = "item_ids.npy"
HISTORIES_FILE = "histories.npz"
SEEN_FILE = "seen.npz"
POPULARITY_FILE = "item_popularity.npy"

USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"

RATING_COLUMNS: tuple[str, ...] = (USER_ID, ITEM_ID, RATING, TIMESTAMP)
ID_COLUMNS: tuple[str, ...] = (USER_ID, ITEM_ID)
ITEM_COLUMNS: tuple[str, ...] = (ITEM_ID, "title", "genres", "year", "text")

RATING_DTYPES: dict[str, str] = {USER_ID: "int64", ITEM_ID: "int64", RATING: "float32", TIMESTAMP: "int64"}
ITEM_DTYPES: dict[str, str] = {ITEM_ID: "int64", "title": "string", "genres": "string", "year": "Int64", "text": "string"}

# Ids are exact integers in [0, 2^63): what int64 holds and the API accepts. Anything else is rejected, never rounded.
MAX_ID = 2**63 - 1
ID_RULE = "not an integer in [0, 2^63)"

# Genres are one string per item, '|'-separated, as in MovieLens.
GENRE_SEPARATOR = "|"


@dataclass(frozen=True)
class IdIndex:
    """Maps arbitrary source ids to contiguous indices 0..n-1 (and back): the only place this happens.

    Models, feature matrices and ONNX graphs work on indices; everything a person sees uses source ids.
    """

    ids: np.ndarray  # sorted, unique source ids; position == index

    @classmethod
    def from_ids(cls, ids: pd.Series | np.ndarray) -> "IdIndex":
        return cls(np.unique(np.asarray(ids, dtype=np.int64)))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def encode(self, ids: pd.Series | np.ndarray, *, missing: int | None = None) -> np.ndarray:
        """Source ids -> indices. Unknown ids raise KeyError unless `missing` gives their index (e.g. -1)."""
        values = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, values)
        pos_clipped = np.minimum(pos, max(len(self) - 1, 0))
        known = (pos < len(self)) & (self.ids[pos_clipped] == values) if len(self) else np.zeros(values.shape, bool)
        if not known.all():
            if missing is None:
                unknown = values[~known][:5].tolist()
                raise KeyError(f"{int((~known).sum())} ids not in the index, e.g. {unknown}")
            return np.where(known, pos_clipped, missing).astype(np.int64)
        return pos_clipped.astype(np.int64)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(indices, dtype=np.int64)]

    def contains(self, ids: pd.Series | np.ndarray) -> np.ndarray:
        return self.encode(ids, missing=-1) >= 0


def ratings_fingerprint(*frames: pd.DataFrame) -> str:
    """sha256 over the canonical rating columns of each frame, in order: identical data gives the identical hash."""
    digest = hashlib.sha256()
    for frame in frames:
        hashed = pd.util.hash_pandas_object(frame[list(RATING_COLUMNS)], index=False).to_numpy()
        digest.update(len(frame).to_bytes(8, "little"))
        digest.update(hashed.tobytes())
    return digest.hexdigest()[:16]
