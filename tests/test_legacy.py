"""Model folders saved by an earlier textdiff load and generate the ids they generated then."""

import json
from pathlib import Path

import pytest

from textdiff import TextDiffusionPipeline

LEGACY = Path(__file__).parent / "legacy"
RECORDED = json.loads((LEGACY / "generations.json").read_text())
CASES = [(name, i) for name, calls in RECORDED.items() for i in range(len(calls))]


@pytest.mark.parametrize(("name", "call"), CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_saved_model_generates_the_recorded_ids(name, call):
    pipe = TextDiffusionPipeline.from_pretrained(LEGACY / name, precision="fp32")
    recorded = RECORDED[name][call]
    out = pipe.generate(4, seed=3, batch_size=3, return_ids=True, **recorded["kwargs"])
    assert out.ids.tolist() == recorded["ids"]
    assert out.texts == recorded["texts"]
