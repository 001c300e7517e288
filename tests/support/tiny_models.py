"""Tiny random models built from configs and saved like real checkpoints, so tests
exercise the same local-directory loading code that real weights go through."""

from __future__ import annotations

import json
from pathlib import Path

CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def save_tiny_clip(directory: Path, projection_dim: int = 16, seed: int = 0) -> Path:
    """A 2-layer CLIP (text and vision towers) with a character-level BPE tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in CHARACTERS:
        vocab[character] = len(vocab)
        vocab[character + "</w>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt")).save_pretrained(directory)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 32,
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
        },
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(directory)
    return directory
