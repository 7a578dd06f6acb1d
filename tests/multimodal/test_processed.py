"""Decode once: the processed-row cache gives the raw path's batches, raises as it does,
and is reused (and rebuilt) by content."""

from __future__ import annotations

import dataclasses

import datasets
import pytest
import torch

import multimodal as mm
from multimodal.data import processed
from multimodal.experiments.config import model_config
from tests.multimodal.test_adversarial import AUDIO, IMAGE
from tests.multimodal.tiny_run import tiny_data


@pytest.fixture(scope="module")
def setup():
    config, spec, dsd, rows = tiny_data(
        encoders={**tiny_data()[0]["encoders"], "image": IMAGE, "audio": AUDIO}
    )
    return spec, dsd, mm.build_model(model_config(config), rows, seed=0)


def _same(x, y, path: str = "batch") -> None:
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x:
            _same(x[k], y[k], f"{path}.{k}")
        return
    assert (x.dtype, x.shape) == (y.dtype, y.shape), path
    assert torch.equal(x, y) or torch.allclose(x, y, rtol=0, atol=0, equal_nan=True), path


def _batches(dsd, model, spec, split: str, epochs: int, **kwargs) -> list[dict]:
    loader = mm.make_loader(dsd[split], model, spec, split, batch_size=8, seed=3, **kwargs)
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out += list(loader)
    return out


@pytest.mark.parametrize(
    ("split", "kwargs"),
    [("train", {"shuffle": True, "modality_dropout": 0.3, "domains": ["d0", "d1"]}),
     ("test", {"modality_dropout": {"image": 1.0}})],  # missing-modality evaluation
)  # fmt: skip
def test_processed_batches_are_the_raw_batches_bit_for_bit(setup, split: str, kwargs: dict) -> None:
    spec, dsd, model = setup
    raw = _batches(dsd, model, dataclasses.replace(spec, cache_processed=False), split, 2, **kwargs)
    loader = mm.make_loader(dsd[split], model, spec, split, batch_size=8)
    assert isinstance(loader.dataset, processed.ProcessedRows)  # the default path
    cached = _batches(dsd, model, spec, split, 2, **kwargs)
    assert len(raw) == len(cached) > 2
    for a, b in zip(raw, cached, strict=True):
        _same(a, b)


def test_built_once_per_processor_and_data_and_again_when_either_changes(setup, tmp_path) -> None:
    spec, dsd, model = setup
    view = mm.data.RowView(dsd["validation"], spec, "validation")
    collator = mm.MultimodalCollator(model, spec, "validation")
    first = processed.build_processed(view, collator)
    assert (
        processed.build_processed(view, mm.MultimodalCollator(model, spec, "validation")) is first
    )
    model.processor.processors["text"].max_length = 5  # another processor config: another key
    try:
        shorter = processed.build_processed(view, mm.MultimodalCollator(model, spec, "validation"))
    finally:
        model.processor.processors["text"].max_length = 24
    assert shorter is not first and len(shorter[0]["text.input_ids"]) <= 5
    # A dataset on disk keeps its processed copy beside its own Arrow files.
    dsd["validation"].save_to_disk(tmp_path / "validation")
    on_disk = datasets.load_from_disk(str(tmp_path / "validation"))
    view = mm.data.RowView(on_disk, spec, "validation")
    processed.build_processed(view, collator)
    written = sorted(tmp_path.rglob("transferfuse-processed-*.arrow"))
    assert len(written) == 1
    stamp = written[0].stat().st_mtime_ns
    again = processed.build_processed(view, mm.MultimodalCollator(model, spec, "validation"))
    assert written[0].stat().st_mtime_ns == stamp and len(again) == len(on_disk)


def test_a_bad_value_raises_at_the_build_or_goes_missing_as_configured(setup) -> None:
    spec, dsd, model = setup
    rows = (
        dsd["train"].cast_column("image", datasets.Image(decode=False)).select(range(12)).to_list()
    )
    rows[5]["image"] = {"bytes": b"\x89PNG broken", "path": None}
    bad = datasets.Dataset.from_list(rows, features=dsd["train"].features)
    with pytest.raises(ValueError, match="split 'train', row 5, column 'image': "):
        mm.make_loader(bad, model, spec, "train", batch_size=4)
    lenient = mm.make_loader(bad, model, spec, "train", batch_size=4, on_error="missing")
    batches = list(lenient)
    present = torch.cat([b["present"]["image"] for b in batches])
    assert present.tolist() == [i != 5 for i in range(12)]
    assert lenient.collate_fn.collator.events["image"] == 1  # counted once, at the build


def test_a_processor_hashes_the_same_before_and_after_it_tokenizes(setup) -> None:
    import copy

    from multimodal.engine.cache import processor_fingerprint

    _, _, built = setup
    model = copy.deepcopy(built)  # a tokenizer no call has touched yet
    model.encoders["text"].processor.tokenizer = copy.deepcopy(
        model.encoders["text"].processor.tokenizer
    )
    before = processed.processor_hash(model.processor)
    model.encoders["text"].processor(
        ["a bright red circle"] * 3
    )  # sets the fast tokenizer's truncation
    assert processed.processor_hash(model.processor) == before
    assert processor_fingerprint(model.encoders["text"].processor) == processor_fingerprint(
        built.encoders["text"].processor
    )
    # a refitted processor holds a new tokenizer: a new hash
    processor = model.encoders["text"].processor
    processor.tokenizer = None
    processor.fit(["other words entirely", "and more of them"] * 4)
    assert processed.processor_hash(model.processor) != before
    assert processor_fingerprint(processor) != processor_fingerprint(
        built.encoders["text"].processor
    )
