"""Shared fixtures: offline Hugging Face, tiny checkpoints, generated speech."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
INTENTD = REPO / ".venv" / "bin" / "intentd"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint whose feature extractor returns an attention mask."""
    from tinymodel import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mask"), with_attention_mask=True)


@pytest.fixture(scope="session")
def tiny_model_nomask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint like wav2vec2-base: group norm, no attention mask."""
    from tinymodel import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-nomask"), with_attention_mask=False)
