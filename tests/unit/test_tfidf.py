"""TF-IDF reproduces the original prototype's baseline (tokens, smoothed idf, L2 norm)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.text_encoder.tfidf import TfidfModel, tokenize

SEED_DOCS = [
    "wireless noise cancelling bluetooth headphones",
    "bluetooth earbuds with good mic",
    "running shoes fitness training",
    "espresso coffee beans grinder",
    "mirrorless camera lens tripod",
    "kitchen knife cookware pan recipe",
]


def recall_at_k(queries: np.ndarray, items: np.ndarray, k: int) -> float:
    scores = queries @ items.T
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([i in top[i] for i in range(len(queries))]))


def test_seed_notebook_example() -> None:
    model = TfidfModel.fit(SEED_DOCS)
    vectors = model.transform(SEED_DOCS)
    assert vectors.shape == (6, 26)  # the notebook's "TF-IDF shape: (6, 26)"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert recall_at_k(vectors, vectors, 1) == 1.0
    assert recall_at_k(vectors, vectors, 3) == 1.0


def test_idf_is_smoothed_like_the_notebook() -> None:
    model = TfidfModel.fit(SEED_DOCS)
    bluetooth = model.idf[model.index["bluetooth"]]
    assert bluetooth == pytest.approx(math.log(7 / 3) + 1.0)
    assert model.idf[model.index["espresso"]] == pytest.approx(math.log(7 / 2) + 1.0)


def test_tokens_are_lowercase_alphanumeric_runs() -> None:
    assert tokenize("Noise-Cancelling USB-C, 20000mAh!") == ["noise", "cancelling", "usb", "c", "20000mah"]


def test_save_load_keeps_vectors_and_space(tmp_path) -> None:
    model = TfidfModel.fit(SEED_DOCS)
    model.save(tmp_path / "tfidf.json")
    loaded = TfidfModel.load(tmp_path / "tfidf.json")
    assert loaded.space == model.space and loaded.space.space_id.startswith("tfidf@")
    np.testing.assert_array_equal(loaded.transform(SEED_DOCS), model.transform(SEED_DOCS))
    assert TfidfModel.fit(SEED_DOCS[:5]).space.space_id != model.space.space_id


def test_text_without_known_words_is_refused() -> None:
    model = TfidfModel.fit(SEED_DOCS)
    with pytest.raises(InvalidArgument, match=r"inputs\[1\]"):
        model.check_known_tokens(["coffee grinder", "zzz qqq"])
