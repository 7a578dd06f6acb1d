"""Streaming end to end on a local hub-layout folder: hash splits, lazy domains, reservoir
k-shot, sharded loader workers, and the transfer protocol with nothing materialised."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import pytest

import multimodal as mm
from multimodal.data.collate import make_loader
from multimodal.data.loading import export_dataset
from multimodal.data.streaming import hash_splits, reservoir_k_shot, scan
from multimodal.data.synthetic import make_synthetic, synthetic_columns
from multimodal.experiments.transfer import transfer
from tests.multimodal.tiny_run import tiny_run

SHARDS = 3


def write_folder(
    folder: Path, samples_per_domain: int = 60, domains: int = 2, seed: int = 0
) -> Path:
    """One train split (no validation or test) of synthetic rows in ``SHARDS`` parquet files."""
    dsd = make_synthetic(samples_per_domain=samples_per_domain, domains=domains, num_classes=4,
                         image_size=16, audio_seconds=0.25, seed=seed)  # fmt: skip
    rows = datasets.concatenate_datasets([dsd[s] for s in ("train", "validation", "test")])
    rows = rows.remove_columns(["audio"]).add_column(
        "id", [f"row-{i:06d}" for i in range(len(rows))]
    )
    return export_dataset(datasets.DatasetDict({"train": rows}), folder, num_shards=SHARDS)


def _spec(folder: Path, **extra) -> dict:
    columns = synthetic_columns(("image", "tabular", "text"))
    return {"path": str(folder), "streaming": True, "columns": columns, "row_key": "id", **extra}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("stream"))


def test_a_stream_is_split_by_row_hash_and_filtered_lazily(folder) -> None:
    dsd = mm.load_dataset(_spec(folder, keep_domains=["d1"]))
    assert isinstance(dsd["train"], datasets.IterableDataset)
    ids = {s: [r["id"] for r in dsd[s]] for s in ("train", "validation", "test")}
    assert sum(map(len, ids.values())) == 60 and {r["domain"] for r in dsd["test"]} == {"d1"}
    assert not set(ids["train"]) & set(ids["test"]) and not set(ids["validation"]) & set(
        ids["test"]
    )
    again = mm.load_dataset(_spec(folder, keep_domains=["d1"]))
    assert [r["id"] for r in again["test"]] == ids["test"], "the same rows land in the same split"
    assert 0.05 < len(ids["test"]) / 60 < 0.3  # test_fraction 0.15, in expectation
    other_seed = mm.load_dataset(_spec(folder, keep_domains=["d1"], seed=1))
    assert [r["id"] for r in other_seed["test"]] != ids["test"]


def test_hash_splits_cover_every_row_once() -> None:
    ds = datasets.Dataset.from_dict({"id": list(range(500)), "x": [0] * 500}).to_iterable_dataset(
        num_shards=4
    )
    parts = hash_splits(ds, seed=3, validation_fraction=0.2, test_fraction=0.3, key="id")
    ids = {s: [r["id"] for r in p] for s, p in parts.items()}
    assert sorted(sum(ids.values(), [])) == list(range(500))
    assert 75 < len(ids["validation"]) < 125 and 120 < len(ids["test"]) < 180


def test_reservoir_k_shot_holds_k_per_class_and_is_seeded() -> None:
    ds = datasets.Dataset.from_dict({"id": list(range(300)), "label": [i % 3 for i in range(300)]})
    stream = ds.to_iterable_dataset(num_shards=3)
    sample = reservoir_k_shot(stream, k=4, seed=7, label="label")
    assert isinstance(sample, datasets.Dataset) and Counter(sample["label"]) == {0: 4, 1: 4, 2: 4}
    assert sample["id"] == reservoir_k_shot(stream, k=4, seed=7, label="label")["id"]
    assert sample["id"] != reservoir_k_shot(stream, k=4, seed=8, label="label")["id"]
    # uniform over the stream, not its first rows: across seeds every part of it is drawn
    drawn = {i for s in range(20) for i in reservoir_k_shot(stream, 4, s, "label")["id"]}
    assert min(drawn) < 100 and max(drawn) >= 200


@pytest.mark.slow
def test_loader_workers_share_the_shards_and_shuffle_with_a_buffer(folder) -> None:
    config = tiny_run(data=_spec(folder))
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    head = datasets.Dataset.from_list(list(dsd["train"].take(64)), features=dsd["train"].features)
    view = mm.data.RowView(head, spec, "train")
    model_config = {"encoders": _encoders(), "fusion": config["fusion"], "head": config["head"]}
    model = mm.build_model(model_config, [view[i] for i in range(len(view))], seed=0)
    expected = sorted(r["id"] for r in dsd["train"])
    for workers in (0, 2):
        loader = make_loader(
            dsd["train"], model, spec, "train", batch_size=8, shuffle=True, num_workers=workers
        )
        seen = [int(i) for batch in loader for i in batch["row"]]
        assert len(seen) == len(expected), f"{workers} workers: every row once"
    first, second = (
        [r["id"] for r in dsd["train"].shuffle(seed=0, buffer_size=16)] for _ in range(2)
    )
    assert first == second and first != sorted(first)


def _encoders() -> dict:
    encoders = tiny_run()["encoders"]
    return {**encoders, "image": {"name": "timm_image", "model_name": "resnet10t", "img_size": 16}}


@pytest.mark.slow
def test_streaming_transfer_runs_every_stage_and_counts_its_rows(folder) -> None:
    config = tiny_run(data=_spec(folder), encoders=_encoders(), transfer={"k_shot": 3, "source": ["d0"], "target": ["d1"],
                                                                             "adapt": {"epochs": 2}, "scratch": {"epochs": 2}})  # fmt: skip
    config["train"]["epochs"] = 2
    report = transfer(config)
    tests = scan(mm.load_dataset(_spec(folder, keep_domains=["d1"]))["test"])[0]
    result = report.targets["d1"]
    assert result.test_samples == tests and result.adapt_samples == 3 * 4
    assert 0.0 <= result.adapted <= 1.0 and report.source_test_samples > 0
    with pytest.raises(ValueError, match="with streaming use k_shot"):
        transfer({**config, "transfer": {**config["transfer"], "target_fraction": 0.5}})


def test_a_split_answers_the_same_held_or_streamed() -> None:
    from multimodal.data import Split

    rows = [{"x": i, "domain": f"d{i % 3}"} for i in range(10)]
    held = Split(datasets.Dataset.from_list(rows))
    streamed = Split(datasets.Dataset.from_list(rows).to_iterable_dataset(num_shards=2))
    assert (held.streamed, streamed.streamed) == (False, True)
    assert (held.known_size, streamed.known_size) == (10, None)
    assert held.size() == streamed.size() == 10
    assert held.domains() == streamed.domains() == ["d0", "d1", "d2"]
    assert held.size_and_domains() == streamed.size_and_domains() == (10, ["d0", "d1", "d2"])
    assert streamed.first(4)["x"] == [0, 1, 2, 3] and len(held.first(4)) == 10
    assert [r["x"] for r in streamed] == list(range(10))
    assert held.row_domains() == [f"d{i % 3}" for i in range(10)] and streamed.row_domains() == []
    assert held.require_held("rehearsal") is held.rows
    with pytest.raises(ValueError, match="rehearsal needs the whole split in memory"):
        streamed.require_held("rehearsal")
