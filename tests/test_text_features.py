"""Text features on a tiny BERT written by the test (no network): encoding, batching, cache, ONNX, similar items."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.similar_items import find_title, similar_by_title, similar_items
from recsys_core.text_features import (
    MAX_CACHE_SHARDS,
    ItemTextFeatures,
    TextEncoder,
    VectorCache,
    encode_items,
    item_text,
    load_item_text_features,
    project_2d,
    text_keys,
)

WORDS = ["toy", "story", "scream", "horror", "comedy", "animation", "children", "genres", "film", "the", "of", "a"]


def write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a vocabulary of letters, digits and a few words: real loading code, no download."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *chars, *[f"##{c}" for c in chars], *WORDS]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def make_items(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    genres = ["Animation|Children's|Comedy", "Horror|Thriller", "Drama", "Comedy|Romance", ""]
    return pd.DataFrame({
        "item_id": rng.permutation(np.arange(10, 10 + n)).astype(np.int64),
        "title": [f"film {i} of the {WORDS[i % len(WORDS)]}" for i in range(n)],
        "genres": pd.array([genres[i % len(genres)] for i in range(n)], dtype="string"),
        "year": pd.array([1990 + i % 10 if i % 7 else None for i in range(n)], dtype="Int64"),
        "text": pd.array(["a story" if i % 3 == 0 else "" for i in range(n)], dtype="string"),
    })  # fmt: skip


def test_item_text_combines_title_year_genres_and_text() -> None:
    items = pd.DataFrame({
        "item_id": [1, 2, 3, 4],
        "title": ["Toy Story", "Amélie", "  Untitled  ", None],
        "genres": pd.array(["Animation|Children's|Comedy", "", None, "Drama"], dtype="string"),
        "year": pd.array([1995, 2001, None, None], dtype="Int64"),
        "text": pd.array(["", "Paris café", None, "x"], dtype="string"),
    })  # fmt: skip
    assert item_text(items).tolist() == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy",
        "Amélie (2001). Paris café",
        "Untitled",
        "Genres: Drama. x",
    ]
    assert item_text(pd.DataFrame({"title": ["Only"]})).tolist() == ["Only"]
    assert item_text(pd.DataFrame({"title": pd.Series([], dtype="string")})).tolist() == []
    with pytest.raises(ValueError, match="title"):
        item_text(pd.DataFrame({"item_id": [1]}))


def test_encoder_gives_unit_vectors_independent_of_batching(tiny_bert: Path, tmp_path: Path) -> None:
    texts = ["toy story", "", "scream " * 500, "Amélie à Paris, 日本", "a", "the horror of the toy story film"]
    encoder = TextEncoder.load(str(tiny_bert), "cpu", batch_size=4, cache_dir=tmp_path)
    assert encoder.dim == 32 and encoder.model_id.startswith(f"{tiny_bert.name}@")
    vectors = encoder.encode(texts)
    assert vectors.shape == (6, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.vstack([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert encoder.encode([]).shape == (0, 32)
    assert max(len(ids) for ids in encoder.token_ids(texts)) == 128  # the very long text is truncated to the model limit


def test_mean_pooling_matches_transformers_reference(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    texts = ["toy story", "the scream of a horror film"]
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    np.testing.assert_allclose(TextEncoder.load(str(tiny_bert), "cpu", cache_dir=tmp_path).encode(texts), expected, atol=1e-5)


def test_bad_encoder_settings_are_named(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backend"):
        TextEncoder.load(str(tiny_bert), "cpu", backend="tensorrt", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        TextEncoder.load(str(tiny_bert), "cpu", batch_size=0, cache_dir=tmp_path)


def test_model_id_follows_the_weights(tiny_bert: Path, tmp_path: Path) -> None:
    other = write_tiny_bert(tmp_path / tiny_bert.name, seed=1)
    first = TextEncoder.load(str(tiny_bert), "cpu", cache_dir=tmp_path)
    second = TextEncoder.load(str(other), "cpu", cache_dir=tmp_path)
    assert first.model_id != second.model_id
    assert TextEncoder.load(str(tiny_bert), "cpu", backend="onnx-int8", cache_dir=tmp_path).model_id == f"{first.model_id}+int8"


def test_encode_items_reuses_cached_vectors_and_encodes_only_changes(tiny_bert: Path, tmp_path: Path) -> None:
    items = make_items(200)
    encoder = TextEncoder.load(str(tiny_bert), "cpu", cache_dir=tmp_path)
    first = encode_items(items, encoder)
    assert (first.n_encoded, first.n_reused) == (200, 0)
    assert np.array_equal(first.item_ids, np.sort(items["item_id"].to_numpy()))
    np.testing.assert_allclose(first.vectors, encoder.encode(item_text(items.sort_values("item_id")).tolist()), atol=1e-5)

    again = encode_items(items.sample(frac=1.0, random_state=1), encoder)
    assert (again.n_encoded, again.n_reused) == (0, 200)
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.vectors, first.vectors)

    changed = items.copy()
    changed.loc[changed.index[:2], "title"] = ["a new film", "another new film"]  # 1% of the catalogue
    third = encode_items(changed, encoder)
    assert (third.n_encoded, third.n_reused) == (2, 198)
    assert third.fingerprint != first.fingerprint
    moved = np.isin(third.item_ids, changed["item_id"].iloc[:2])
    np.testing.assert_array_equal(third.vectors[~moved], first.vectors[~moved])
    assert not np.allclose(third.vectors[moved], first.vectors[moved])


def test_identical_texts_are_encoded_once_and_duplicate_ids_rejected(tiny_bert: Path, tmp_path: Path) -> None:
    encoder = TextEncoder.load(str(tiny_bert), "cpu", cache_dir=tmp_path)
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["same", "same", "other"]})
    features = encode_items(items, encoder)
    assert features.n_encoded == 3 and len(VectorCache(tmp_path, encoder.model_id, 32)._read_all()[0]) == 2
    np.testing.assert_array_equal(features.vectors[0], features.vectors[1])
    with pytest.raises(ValueError, match="duplicate item ids"):
        encode_items(pd.DataFrame({"item_id": [1, 1], "title": ["a", "b"]}), encoder)


def test_vector_cache_compacts_shards(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path, "model", dim=4)
    rng = np.random.default_rng(0)
    keys = text_keys("model", [f"text {i}" for i in range(MAX_CACHE_SHARDS + 1)])
    vectors = rng.normal(size=(len(keys), 4)).astype(np.float32)
    for row in range(len(keys)):
        cache.add(keys[row : row + 1], vectors[row : row + 1])
    cache.add(keys[:1], vectors[:1] * 2)  # a rewrite of a key: the last write wins after compaction
    assert len(cache.shards()) <= 2
    found, got = cache.lookup(np.vstack([keys, text_keys("model", ["never seen"])]))
    assert found.tolist() == [True] * len(keys) + [False]
    np.testing.assert_array_equal(got[1 : len(keys)], vectors[1:])
    assert np.allclose(got[0], vectors[0]) or np.allclose(got[0], vectors[0] * 2)
    assert not got[-1].any()


def test_features_round_trip_through_npz(tmp_path: Path) -> None:
    features = ItemTextFeatures(np.array([3, 7]), np.eye(2, 4, dtype=np.float32), 1, 1, "m@1", "abc")
    loaded = load_item_text_features(features.save(tmp_path / "f.npz"))
    np.testing.assert_array_equal(loaded.vectors, features.vectors)
    assert (loaded.model_id, loaded.fingerprint, loaded.n_encoded, loaded.n_reused, loaded.dim) == ("m@1", "abc", 1, 1, 4)


def test_onnx_backend_matches_torch(tiny_bert: Path, tmp_path: Path) -> None:
    texts = ["toy story", "", "scream " * 300, "Amélie", "the horror film of the toy"]
    reference = TextEncoder.load(str(tiny_bert), "cpu", cache_dir=tmp_path).encode(texts)
    onnx = TextEncoder.load(str(tiny_bert), "cpu", backend="onnx", cache_dir=tmp_path)
    np.testing.assert_allclose(onnx.encode(texts), reference, atol=1e-4)
    assert len(list((tmp_path / "onnx").glob("*/encoder.fused.onnx"))) == 1
    int8 = TextEncoder.load(str(tiny_bert), "cpu", backend="onnx-int8", cache_dir=tmp_path).encode(texts)
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, rtol=1e-4)
    assert (int8 * reference).sum(axis=1).mean() > 0.9


def test_projection_and_similar_items() -> None:
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    features = ItemTextFeatures(np.array([10, 11, 12, 13]), vectors, 4, 0, "m", "f")
    points = project_2d(vectors)
    assert points.shape == (4, 2) and np.array_equal(points, project_2d(vectors))
    assert similar_items(features, 10, k=2)["item_id"].tolist() == [11, 12]  # 12 and 13 tie at 0: lower id first
    assert similar_items(features, 12, k=10)["item_id"].tolist()[0] == 13
    with pytest.raises(KeyError):
        similar_items(features, 99)
    items = pd.DataFrame({
        "item_id": [10, 11, 12, 13], "title": ["Toy Story", "Toy Story 2", "Scream", "Scream 2"],
        "year": pd.array([1995, 1999, 1996, 1997], dtype="Int64"), "genres": ["A", "A", "H", "H"],
    })  # fmt: skip
    assert find_title(items, "toy story") == 10 and find_title(items, "scream 2") == 13 and find_title(items, "Scr") == 12
    assert similar_by_title(items, features, "Scream", k=1)["title"].tolist() == ["Scream 2"]
    with pytest.raises(KeyError, match="no item title"):
        find_title(items, "Alien")


@pytest.mark.slow
def test_default_minilm_places_toy_story_near_animation(tmp_path: Path) -> None:
    encoder = TextEncoder.load("default", "cpu", cache_dir=tmp_path)
    assert encoder.dim == 384 and encoder.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    items = pd.DataFrame({
        "item_id": [1, 2, 3],
        "title": ["Toy Story", "Aladdin", "Night of the Living Dead"],
        "genres": ["Animation|Children's|Comedy", "Animation|Children's|Musical", "Horror|Thriller"],
        "year": pd.array([1995, 1992, 1968], dtype="Int64"),
    })  # fmt: skip
    vectors = encode_items(items, encoder).vectors
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1
