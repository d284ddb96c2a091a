"""Shared fixtures: paths to the optional real data next to the project."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DIR = Path(os.environ.get("TREE_SEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the shared data folder next to the project, "
                    "or its path in TREE_SEG_SHARED")
    return path


@pytest.fixture
def shared_data() -> Path:
    """Folder of real labelled imagery (``../shared/data``); skips where absent."""
    return _require(SHARED_DIR / "data")


@pytest.fixture
def dinov2_weights() -> Path:
    """Folder of the real DINOv2 ViT-S/14 checkpoint; skips where absent."""
    return _require(SHARED_DIR / "models" / "dinov2_vits14_imgfocus")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that uses the shared folder gets the marker, so that
    # "-m shared_data" selects all of them.
    for item in items:
        if {"shared_data", "dinov2_weights"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared_data)
