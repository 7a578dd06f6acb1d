"""load_dataset and the collator on random rows written as JSON lines and CSV files."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import multimodal as mm
from tests.conftest import TEXTS, TINY_BERT

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "15")), deadline=20000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip

cells = st.one_of(st.none(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False),
                  st.text(max_size=20), st.booleans())  # fmt: skip
rows = st.lists(
    st.fixed_dictionaries({"text": st.one_of(st.none(), st.text(max_size=200)), "x": cells, "c": cells,
                           "label": st.integers(0, 2)}),
    min_size=1, max_size=12,
)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return mm.build_model({
        "encoders": {"text": {"name": "hf_text", "config": TINY_BERT, "train_texts": TEXTS * 4, "max_length": 16},
                     "tabular": {"name": "tabular_mlp", "numerical": ["x"], "categorical": {"c": ["a", "b"]}, "dim": 8}},
        "fusion": {"name": "concat", "dim": 8}, "head": {"num_classes": 3},
    })  # fmt: skip


@FUZZ
@given(
    records=rows,
    fmt=st.sampled_from(["jsonl", "csv"]),
    on_error=st.sampled_from(["raise", "missing"]),
)
def test_random_rows_load_and_collate_or_fail_clearly(
    model, tmp_path_factory, records, fmt, on_error
) -> None:
    folder = tmp_path_factory.mktemp("rows")
    path = folder / f"rows.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pd.DataFrame(records).to_csv(path, index=False)
    spec = mm.DatasetSpec(path=str(path), columns={"text": "text", "tabular": ["x", "c"]}, domain=None,
                          validation_fraction=0, test_fraction=0)  # fmt: skip
    try:
        dsd = mm.load_dataset(spec)
    except (ValueError, TypeError, datasets.exceptions.DatasetGenerationError) as err:
        # Mixed types in one JSON column cannot form an Arrow table: datasets says so.
        event(f"load error: {type(err).__name__}")
        return
    view = mm.data.RowView(dsd["train"], spec, "train")
    collator = mm.data.MultimodalCollator(model, spec, "train", on_error=on_error)
    try:
        batch = collator([view[i] for i in range(len(view))])
    except (ValueError, TypeError) as err:
        message = str(err)
        assert "split 'train'" in message and "column" in message, message
        kind = "label" if "'label'" in message else "value"
        assert kind == "label" or on_error == "raise", "on_error=missing makes bad values absent"
        event(f"{kind} error ({on_error})")
        return
    event(f"batch ({on_error})" + (", some missing" if sum(collator.events.values()) else ""))
    labels = batch["labels"]
    assert labels.shape[0] == len(records) and ((labels >= 0) & (labels < 3)).all()
    with torch.no_grad():
        out = model.eval()(batch)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    # Nothing lost silently: every row is in the batch, absent modalities are flagged.
    assert batch["row"].tolist() == list(range(len(records)))
    for m, present in batch["present"].items():
        assert present.dtype == torch.bool and present.shape == labels.shape, m
    if on_error == "raise":
        assert not collator.events
    np.testing.assert_array_equal(batch["present"]["text"].numpy(),
                                  [bool(r["text"] and r["text"].strip()) for r in records] if fmt == "jsonl"
                                  else batch["present"]["text"].numpy())  # fmt: skip
