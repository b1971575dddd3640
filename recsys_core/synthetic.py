"""The embedded default dataset: a seeded synthetic catalogue that needs no network.

Users have latent genre tastes; items have genres, a release time and a popularity from a long-tailed
(Zipf) curve; item text is written from per-genre vocabularies so that text features carry the same signal
as the ratings. A user rates items drawn by popularity x taste, only after their release (temporal drift:
new items take over over time), and the rating follows taste + biases + noise. Users are generated in
chunks so 10M+ ratings stream to Parquet without holding intermediate matrices for everyone.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_core.schema import GENRE_SEPARATOR, ITEM_ID, RATING, TIMESTAMP, USER_ID

# Per genre: (adjectives, nouns, subjects) used to write titles and one-line descriptions.
GENRE_VOCABULARY: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "Action": (("explosive", "relentless", "high-octane"), ("Strike", "Fury", "Showdown"), ("a rogue agent", "a heist crew", "a bodyguard")),
    "Adventure": (("epic", "daring", "uncharted"), ("Quest", "Expedition", "Voyage"), ("lost explorers", "a treasure map", "a jungle river")),
    "Animation": (("animated", "hand-drawn", "colourful"), ("Toys", "Critters", "Kingdom"), ("talking animals", "living toys", "a little robot")),
    "Children's": (("family", "gentle", "heartwarming"), ("Friends", "Puppy", "Summer"), ("a lost puppy", "best friends", "a school trip")),
    "Comedy": (("hilarious", "witty", "absurd"), ("Mix-Up", "Wedding", "Roommates"), ("a disastrous wedding", "mismatched roommates", "a bad boss")),
    "Crime": (("gritty", "hard-boiled", "tense"), ("Heist", "Syndicate", "Verdict"), ("a mob family", "a detective", "a bank robbery")),
    "Documentary": (("revealing", "true", "observational"), ("Story", "Portrait", "Chronicle"), ("real musicians", "climate scientists", "a chess champion")),
    "Drama": (("moving", "intimate", "poignant"), ("Letters", "Homecoming", "Silence"), ("a grieving family", "an estranged father", "a small town")),
    "Fantasy": (("magical", "enchanted", "mythic"), ("Sword", "Dragon", "Realm"), ("a young wizard", "an ancient prophecy", "dragons")),
    "Film-Noir": (("shadowy", "fatalistic", "smoky"), ("Alibi", "Double", "Night"), ("a femme fatale", "a private eye", "a double cross")),
    "Horror": (("terrifying", "gory", "haunted"), ("Curse", "Possession", "Cellar"), ("a haunted house", "a masked killer", "a demon")),
    "Musical": (("tuneful", "dazzling", "song-filled"), ("Rhapsody", "Stage", "Melody"), ("a Broadway troupe", "singing sailors", "a dance contest")),
    "Mystery": (("puzzling", "twisty", "cryptic"), ("Riddle", "Clue", "Secret"), ("a locked-room murder", "a missing heir", "an amateur sleuth")),
    "Romance": (("romantic", "tender", "bittersweet"), ("Kiss", "Promise", "Love"), ("star-crossed lovers", "a summer romance", "a second chance at love")),
    "Sci-Fi": (("futuristic", "cerebral", "cosmic"), ("Orbit", "Android", "Signal"), ("a starship crew", "time travellers", "an alien signal")),
    "Thriller": (("gripping", "paranoid", "suspenseful"), ("Trap", "Pursuit", "Conspiracy"), ("a stalker", "a government conspiracy", "a hostage")),
    "War": (("harrowing", "heroic", "brutal"), ("Front", "Battalion", "Beachhead"), ("soldiers behind enemy lines", "a bomber crew", "a resistance cell")),
    "Western": (("dusty", "lawless", "frontier"), ("Gunslinger", "Outlaw", "Canyon"), ("a lone gunslinger", "cattle rustlers", "a frontier sheriff")),
}
GENRES: tuple[str, ...] = tuple(GENRE_VOCABULARY)
SECONDS_PER_DAY = 86_400
START_TIME = 946_684_800  # 2000-01-01 UTC
SPAN_DAYS = 6 * 365
# (ratings, users, items) of the MovieLens releases the synthetic source imitates at any number of ratings.
SHAPES: dict[str, tuple[int, int, int]] = {"ml-100k": (100_000, 943, 1_682), "ml-25m": (25_000_095, 162_541, 62_423)}


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and seed. Defaults are MovieLens-100k-like; `scaled(n, shape=...)` keeps a release's users/items
    proportions (users grow nearly with the ratings, items with about their square root, as across MovieLens)."""

    n_users: int = 943
    n_items: int = 1682
    n_ratings: int = 100_000
    seed: int = 42
    taste_strength: float = 2.5  # how strongly taste (vs popularity) drives what a user rates
    popularity_exponent: float = 1.0  # Zipf exponent of the item popularity curve

    @classmethod
    def scaled(cls, n_ratings: int, seed: int = 42, shape: str = "ml-100k") -> "SyntheticConfig":
        if shape not in SHAPES:
            raise ValueError(f"synthetic shape {shape!r}: expected one of {sorted(SHAPES)}")
        base_ratings, base_users, base_items = SHAPES[shape]
        factor = n_ratings / base_ratings
        return cls(
            n_users=max(20, round(base_users * factor**0.9)),
            n_items=max(50, round(base_items * factor**0.45)),
            n_ratings=n_ratings,
            seed=seed,
        )


@dataclass(frozen=True)
class _World:
    """Latent structure shared by every chunk of users."""

    item_genre: np.ndarray  # [n_items, n_genres] 0/1
    item_vectors: np.ndarray  # [n_items, n_genres] unit taste-space vectors
    log_popularity: np.ndarray  # [n_items]
    item_bias: np.ndarray  # [n_items]
    release_day: np.ndarray  # [n_items]


def _make_world(config: SyntheticConfig, rng: np.random.Generator) -> _World:
    n_items, n_genres = config.n_items, len(GENRES)
    genre_weights = rng.dirichlet(np.full(n_genres, 0.8))
    item_genre = np.zeros((n_items, n_genres), dtype=np.float32)
    counts = rng.choice([1, 2, 3], size=n_items, p=[0.45, 0.4, 0.15])
    for item in range(n_items):
        item_genre[item, rng.choice(n_genres, size=counts[item], replace=False, p=genre_weights)] = 1.0
    vectors = item_genre + rng.normal(0, 0.15, item_genre.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ranks = rng.permutation(n_items) + 1
    log_popularity = -config.popularity_exponent * np.log(ranks)
    item_bias = rng.normal(0, 0.35, n_items) + 0.15 * (log_popularity - log_popularity.mean()) / (log_popularity.std() + 1e-9)
    release_day = np.where(rng.random(n_items) < 0.6, 0, rng.integers(0, SPAN_DAYS * 3 // 4, n_items))
    return _World(item_genre, vectors, log_popularity, item_bias, release_day)


def generate_items(config: SyntheticConfig = SyntheticConfig()) -> pd.DataFrame:
    """The item catalogue (canonical item columns) with readable titles and descriptions."""
    rng = np.random.default_rng(config.seed)
    world = _make_world(config, rng)
    text_rng = np.random.default_rng(config.seed + 1)
    rows = []
    for item in range(config.n_items):
        genres = [GENRES[g] for g in np.flatnonzero(world.item_genre[item])]
        main = GENRE_VOCABULARY[genres[0]]
        second = GENRE_VOCABULARY[genres[-1]]
        adjective, noun, subject = (text_rng.choice(main[0]), text_rng.choice(second[1]), text_rng.choice(main[2]))
        title = f"The {adjective.title()} {noun}" if text_rng.random() < 0.5 else f"{noun} of the {text_rng.choice(main[1])}"
        released_in_span = world.release_day[item] > 0
        year = 2000 + int(world.release_day[item] // 365) if released_in_span else 1950 + int(text_rng.integers(0, 50))
        article = "An" if adjective[0] in "aeiou" else "A"
        text = f"{article} {adjective} {' and '.join(g.lower() for g in genres)} film about {subject}."
        rows.append((item + 1, title, GENRE_SEPARATOR.join(genres), year, text))
    items = pd.DataFrame(rows, columns=[ITEM_ID, "title", "genres", "year", "text"])
    return items.astype({ITEM_ID: "int64", "title": "string", "genres": "string", "year": "Int64", "text": "string"})


def _user_activity(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: at least 5, long-tailed, summing to about n_ratings, never more than the catalogue allows."""
    minimum = min(5, config.n_items)
    spare = max(config.n_ratings - minimum * config.n_users, 0)
    weights = rng.lognormal(0.0, 1.1, config.n_users)
    counts = minimum + rng.multinomial(spare, weights / weights.sum())
    return np.minimum(counts, int(config.n_items * 0.6)).astype(np.int64)


def _chunk_affinity(world: _World, chunk_rng: np.random.Generator, n_chunk: int) -> np.ndarray:
    """[n_chunk, n_items] taste . item vector in [-1, 1]: the ground truth of what each user likes."""
    favourite = chunk_rng.dirichlet(np.full(len(GENRES), 0.3), size=n_chunk).astype(np.float32)
    taste = favourite + chunk_rng.normal(0, 0.05, favourite.shape).astype(np.float32)
    taste /= np.linalg.norm(taste, axis=1, keepdims=True)
    return taste @ world.item_vectors.T


def ground_truth(config: SyntheticConfig = SyntheticConfig(), users_per_chunk: int = 2_000) -> tuple[np.ndarray, np.ndarray]:
    """(affinity [n_users, n_items], log popularity [n_items]) behind `iter_synthetic_ratings` with the same config
    and chunking: row u - 1 is user_id u, column i - 1 is item_id i. Simulated users click by it."""
    world = _make_world(config, np.random.default_rng(config.seed))
    chunks = [
        _chunk_affinity(world, np.random.default_rng([config.seed, start]), min(start + users_per_chunk, config.n_users) - start)
        for start in range(0, config.n_users, users_per_chunk)
    ]
    return np.concatenate(chunks), world.log_popularity


def _chunk_ratings(config: SyntheticConfig, world: _World, activity: np.ndarray, start: int, stop: int) -> pd.DataFrame:
    """The ratings of users start+1 .. stop, from their own seeded generator: chunks are independent of each other."""
    chunk_rng = np.random.default_rng([config.seed, start])
    n_chunk = stop - start
    affinity = _chunk_affinity(world, chunk_rng, n_chunk)
    user_bias = chunk_rng.normal(0, 0.3, n_chunk)
    first_day = chunk_rng.integers(0, SPAN_DAYS * 2 // 3, n_chunk)
    frames = []
    for row in range(n_chunk):
        n = int(activity[row])
        scores = world.log_popularity + config.taste_strength * 3 * affinity[row]
        keys = scores + chunk_rng.gumbel(size=scores.shape)  # Gumbel top-k = sampling without replacement
        items = np.argpartition(-keys, n - 1)[:n]
        base_day = np.maximum(first_day[row], world.release_day[items])
        day = np.minimum(base_day + chunk_rng.exponential(120, n), SPAN_DAYS - 1)
        timestamp = START_TIME + (day * SECONDS_PER_DAY).astype(np.int64) + chunk_rng.integers(0, SECONDS_PER_DAY, n)
        z = (affinity[row, items] - 0.35) / 0.25
        latent = 3.4 + 1.1 * np.tanh(z) + user_bias[row] + world.item_bias[items] + chunk_rng.normal(0, 0.6, n)
        frames.append(
            pd.DataFrame(
                {
                    USER_ID: np.full(n, start + row + 1, dtype=np.int64),
                    ITEM_ID: items.astype(np.int64) + 1,
                    RATING: np.clip(np.rint(latent), 1, 5).astype(np.float32),
                    TIMESTAMP: timestamp.astype(np.int64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def iter_synthetic_ratings(
    config: SyntheticConfig = SyntheticConfig(), users_per_chunk: int = 2_000, workers: int = 1
) -> Iterator[pd.DataFrame]:
    """Ratings in canonical columns, a chunk of users at a time (memory stays bounded at any scale).

    `workers` > 1 draws chunks in that many processes (every user scores the whole catalogue, so at ml-25m scale,
    162k users x 62k items, one process takes about 10 minutes); chunks arrive in order and are the same either way.
    """
    rng = np.random.default_rng(config.seed)
    world = _make_world(config, rng)
    activity = _user_activity(config, rng)
    bounds = [(start, min(start + users_per_chunk, config.n_users)) for start in range(0, config.n_users, users_per_chunk)]
    if workers <= 1 or len(bounds) <= 1:
        for start, stop in bounds:
            yield _chunk_ratings(config, world, activity[start:stop], start, stop)
        return
    with ProcessPoolExecutor(min(workers, len(bounds)), mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [(config, world, activity[start:stop], start, stop) for start, stop in bounds]
        yield from pool.map(_chunk_ratings, *zip(*jobs))


def generate_synthetic(
    n_users: int = 943, n_items: int = 1682, n_ratings: int = 100_000, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings, items) in the canonical schema; the same arguments always give the same frames."""
    config = SyntheticConfig(n_users=n_users, n_items=n_items, n_ratings=n_ratings, seed=seed)
    ratings = pd.concat(list(iter_synthetic_ratings(config)), ignore_index=True)
    return ratings, generate_items(config)


def write_synthetic(directory: str | Path, config: SyntheticConfig) -> tuple[Path, Path]:
    """Streams the dataset to `ratings.parquet` and `items.parquet`, one row group per chunk of users."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ratings_path, items_path = directory / "ratings.parquet", directory / "items.parquet"
    writer: pq.ParquetWriter | None = None
    try:
        for chunk in iter_synthetic_ratings(config):
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            writer = writer or pq.ParquetWriter(ratings_path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    generate_items(config).to_parquet(items_path, index=False)
    return ratings_path, items_path
