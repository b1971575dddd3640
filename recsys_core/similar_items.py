"""Nearest items by text vector: `recsys similar-items --title "Toy Story"` shows whether the text space is meaningful."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_core.schema import ITEM_ID
from recsys_core.text_features import ItemTextFeatures, TextEncoder, encode_items

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def similar_items(features: ItemTextFeatures, item_id: int, k: int = 10) -> pd.DataFrame:
    """The k items with the highest cosine to `item_id` (itself excluded), best first: columns item_id, cosine."""
    rows = np.flatnonzero(features.item_ids == item_id)
    if len(rows) == 0:
        raise KeyError(f"item {item_id} has no text vector")
    scores = features.vectors @ features.vectors[rows[0]]
    scores[rows[0]] = -np.inf
    k = min(k, len(scores) - 1)
    top = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.empty(0, dtype=np.int64)
    top = top[np.lexsort((features.item_ids[top], -scores[top]))]
    return pd.DataFrame({ITEM_ID: features.item_ids[top], "cosine": scores[top].astype(np.float32)})


def find_title(items_df: pd.DataFrame, title: str) -> int:
    """Item id of the best title match: exact (case-insensitive) first, else the shortest title containing `title`."""
    titles = items_df["title"].astype("string").fillna("")
    wanted = title.strip().casefold()
    exact = items_df[titles.str.casefold() == wanted]
    if len(exact):
        return int(exact[ITEM_ID].min())
    containing = items_df[titles.str.casefold().str.contains(wanted, regex=False)]
    if containing.empty:
        raise KeyError(f"no item title contains {title!r}")
    return int(containing.assign(_len=titles[containing.index].str.len()).sort_values(["_len", ITEM_ID])[ITEM_ID].iloc[0])


def similar_by_title(items_df: pd.DataFrame, features: ItemTextFeatures, title: str, k: int = 10) -> pd.DataFrame:
    """Neighbours of the item titled `title`, joined with title, year and genres for reading."""
    neighbours = similar_items(features, find_title(items_df, title), k)
    return neighbours.merge(items_df[[ITEM_ID, "title", "year", "genres"]], on=ITEM_ID, how="left")[
        [ITEM_ID, "title", "year", "genres", "cosine"]
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--title", action="append", required=True, help="a title (or part of one); repeat for several")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="MovieLens 100k folder (u.item)")
    parser.add_argument("-k", type=int, default=10, help="neighbours to show")
    parser.add_argument("--model", default="default", help='"default", a local model folder or a Hugging Face id')
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from recsys_core.ingestion import load_movielens

    _, items = load_movielens(args.data_dir)
    encoder = TextEncoder.load(args.model, args.device, backend=args.backend)
    features = encode_items(items, encoder)
    print(f"{len(items)} items, model {encoder.model_id} ({features.n_encoded} encoded, {features.n_reused} from cache)")
    for title in args.title:
        query = items[items[ITEM_ID] == find_title(items, title)].iloc[0]
        print(f"\nnearest to {query['title']} ({query['year']}) [{query['genres']}]:")
        print(similar_by_title(items, features, title, args.k).to_string(index=False))
    return 0
