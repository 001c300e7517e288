"""TF-IDF text vectors, exactly as the original prototype (the baseline this project
started from) computed them.

Lower-cased ``[a-z0-9]+`` tokens, term counts times smoothed idf
``log((N + 1) / (df + 1)) + 1``, L2-normalized; the dimension is the vocabulary size.

Fit and save:  python -m contentembed.services.text_encoder.tfidf CATALOG.jsonl OUT.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.spaces import Space
from contentembed.services.common.vectors import l2_normalize

FORMAT = "contentembed-tfidf/v1"
TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


class TfidfModel:
    def __init__(self, vocabulary: Sequence[str], idf: np.ndarray, revision: str = "") -> None:
        if len(vocabulary) != len(idf) or not vocabulary:
            raise ValueError("vocabulary and idf must be non-empty and of equal length")
        self.vocabulary = list(vocabulary)
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.idf = np.asarray(idf, dtype=np.float32)
        self.revision = revision or self._digest()
        self.space = Space(model_id="tfidf", model_revision=self.revision, dim=len(self.vocabulary))

    @classmethod
    def fit(cls, corpus: Iterable[str], max_features: int = 0) -> TfidfModel:
        document_frequency: Counter[str] = Counter()
        documents = 0
        for text in corpus:
            documents += 1
            document_frequency.update(set(tokenize(text)))
        if not document_frequency:
            raise ValueError("the corpus has no tokens")
        # First-seen order like the notebook; max_features keeps the most frequent words.
        words = list(document_frequency)
        if max_features:
            words = sorted(words, key=lambda w: -document_frequency[w])[:max_features]
        idf = np.array(
            [math.log((documents + 1) / (document_frequency[w] + 1)) + 1.0 for w in words],
            dtype=np.float32,
        )
        return cls(words, idf)

    def _digest(self) -> str:
        sha = hashlib.sha256()
        sha.update("\n".join(self.vocabulary).encode())
        sha.update(self.idf.astype("<f4").tobytes())
        return sha.hexdigest()

    def check_known_tokens(self, texts: Sequence[str]) -> None:
        """A text with no vocabulary word would be the zero vector, which has no cosine."""
        for position, text in enumerate(texts):
            if not any(token in self.index for token in tokenize(text)):
                raise InvalidArgument(
                    f"inputs[{position}]: no word of this text is in the TF-IDF vocabulary",
                    reason="NO_KNOWN_TOKENS",
                )

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        counts = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)
        for row, text in enumerate(texts):
            for token, count in Counter(tokenize(text)).items():
                column = self.index.get(token)
                if column is not None:
                    counts[row, column] = count
        return l2_normalize(counts * self.idf[None, :])

    def save(self, path: Path) -> None:
        payload = {"format": FORMAT, "vocabulary": self.vocabulary, "idf": self.idf.tolist()}
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TfidfModel:
        payload = json.loads(path.read_bytes())
        if payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file")
        return cls(payload["vocabulary"], np.asarray(payload["idf"], dtype=np.float32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fit a TF-IDF model on a JSONL catalog's texts.")
    parser.add_argument("catalog", type=Path, help='JSONL with a "text" field per line')
    parser.add_argument("output", type=Path)
    parser.add_argument("--max-features", type=int, default=0, help="0 keeps every word")
    args = parser.parse_args(argv)
    with args.catalog.open(encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    model = TfidfModel.fit(texts, args.max_features)
    model.save(args.output)
    print(f"{args.output}: {len(texts)} documents, dim {model.space.dim}, space {model.space.space_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
