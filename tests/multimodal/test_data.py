from __future__ import annotations

import io
import math

import datasets
import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from PIL import Image

import multimodal as mm
from multimodal.cli import main
from tests.conftest import TINY_AUDIO, TINY_BERT

SMALL = {"samples_per_domain": 40, "domains": 2, "image_size": 16, "audio_seconds": 0.25}


def model_for(
    spec: mm.DatasetSpec, dsd: datasets.DatasetDict, tabular: list[str], categorical=None
):
    config = {
        "encoders": {
            "text": {"name": "hf_text", "config": TINY_BERT},
            "image": {"name": "timm_image", "model_name": "resnet10t", "img_size": 32},
            "audio": {"name": "audio_cnn", "channels": [4, 8], **TINY_AUDIO},
            "tabular": {
                "name": "tabular_mlp",
                "numerical": tabular,
                "categorical": categorical or {},
                "dim": 8,
            },
        },
        "fusion": {"name": "concat", "dim": 16},
        "head": {"task": "classification", "num_classes": 4},
    }
    view = mm.data.RowView(dsd["train"], spec, "train")
    return mm.build_model(config, [view[i] for i in range(len(view))])


def test_synthetic_is_deterministic_and_complete() -> None:
    a, b = mm.make_synthetic(seed=0, **SMALL), mm.make_synthetic(seed=0, **SMALL)
    c = mm.make_synthetic(seed=1, **SMALL)
    assert list(a) == ["train", "validation", "test"]
    for split in a:
        assert a[split].to_pandas().equals(b[split].to_pandas())
    assert not a["train"].to_pandas().equals(c["train"].to_pandas())
    assert set(a["train"]["domain"]) == {"d0", "d1"}
    row = a["train"][0]
    assert isinstance(row["image"], Image.Image) and isinstance(row["text"], str)
    assert {"label", "domain", "tab_0", "tab_channel", "audio"} <= set(row)


def test_synthetic_knobs() -> None:
    ds = mm.make_synthetic(
        seed=0, modalities=["text", "tabular"], missing_rate=0.5, num_classes=3, **SMALL
    )
    assert "image" not in ds["train"].column_names
    texts = ds["train"]["text"]
    assert 0.3 < sum(t is None for t in texts) / len(texts) < 0.7
    assert set(ds["train"]["label"]) <= {0, 1, 2}
    with pytest.raises(ValueError, match="interaction must be one of"):
        mm.make_synthetic(interaction="xor")


def test_spec_column_errors_list_the_columns() -> None:
    spec = mm.DatasetSpec(options=SMALL, columns={"text": "caption"})
    with pytest.raises(ValueError, match="names column 'caption'.*Columns: \\["):
        mm.load_dataset(spec)
    with pytest.raises(ValueError, match="unknown key 'colums'; close matches: \\['columns'\\]"):
        mm.DatasetSpec.from_dict({"colums": {}})


def test_k_shot_is_stratified_and_seeded() -> None:
    labels = [0, 1, 2] * 20
    a, b = mm.k_shot_indices(labels, 4, seed=3), mm.k_shot_indices(labels, 4, seed=3)
    assert a == b and len(a) == 12
    assert sorted(np.bincount(np.asarray(labels)[a]).tolist()) == [4, 4, 4]
    assert mm.k_shot_indices(labels, 4, seed=4) != a


def test_splits_domains_and_unlabelled(tmp_path) -> None:
    df = pd.DataFrame(
        {"x": np.arange(100.0), "y": [i % 2 for i in range(100)], "site": ["a", "b"] * 50}
    )
    df.to_csv(tmp_path / "t.csv", index=False)
    spec = mm.DatasetSpec(
        path=str(tmp_path / "t.csv"), columns={"tabular": ["x"]}, label="y", domain="site", seed=1
    )
    dsd = mm.load_dataset(spec)
    assert [len(dsd[s]) for s in ("train", "validation", "test")] == [
        68,
        16,
        16,
    ]  # round(0.15 * 50) = 8 per domain
    assert sorted(set(dsd["test"]["domain"])) == ["a", "b"]
    again = mm.load_dataset(spec)
    assert dsd["test"]["x"] == again["test"]["x"]
    assert set(mm.select_domains(dsd["train"], "a")["domain"]) == {"a"}
    with pytest.raises(ValueError, match="unknown domains \\['c'\\]"):
        mm.select_domains(dsd["train"], ["c"])
    assert "y" not in mm.unlabelled(dsd["train"], "y").column_names


def _wav(rate: int, channels: int, seconds: float = 0.2, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    data = (
        np.random.default_rng(rate)
        .uniform(-0.5, 0.5, (int(rate * seconds), channels))
        .astype(np.float32)
    )
    soundfile.write(buf, data, rate, format=fmt)
    return buf.getvalue()


def test_local_hub_folder_with_real_files_trains_one_step(tmp_path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    rows = []
    specs = [("RGB", "png", 8000, 1, "WAV"), ("L", "jpg", 16000, 2, "FLAC"), ("RGBA", "png", 44100, 1, "WAV"),
             ("RGB", "jpg", 44100, 2, "FLAC")]  # fmt: skip
    for i, (mode, ext, rate, channels, fmt) in enumerate(specs * 2):
        img = Image.fromarray(
            np.random.default_rng(i).integers(0, 255, (24, 20, 3), dtype=np.uint8)
        ).convert(mode)
        img.save(media / f"{i}.{ext}")
        (media / f"{i}.{fmt.lower()}").write_bytes(_wav(rate, channels, fmt=fmt))
        rows.append({"image": str(media / f"{i}.{ext}"), "audio": str(media / f"{i}.{fmt.lower()}"),
                     "caption": f"sample number {i} with words", "price": float(i), "kind": "ab"[i % 2],
                     "label": i % 4, "domain": "ab"[i // 4]})  # fmt: skip
    # The hub layout: parquet shards with Image/Audio features holding the bytes, and a README.
    features = datasets.Features({
        "image": datasets.Image(), "audio": datasets.Audio(), "caption": datasets.Value("string"),
        "price": datasets.Value("float64"), "kind": datasets.Value("string"),
        "label": datasets.Value("int64"), "domain": datasets.Value("string"),
    })  # fmt: skip
    folder = mm.export_dataset(
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows, features=features)}),
        tmp_path / "hub",
    )
    assert (folder / "README.md").read_text().startswith("---\nconfigs:")
    spec = mm.DatasetSpec(
        path=str(folder), columns={"image": "image", "audio": "audio", "text": "caption", "tabular": ["price", "kind"]},
        validation_fraction=0.25, test_fraction=0.25,
    )  # fmt: skip
    dsd = mm.load_dataset(spec)
    assert sum(len(d) for d in dsd.values()) == 8
    model = model_for(spec, dsd, ["price"], {"kind": ["a", "b"]})
    loader = mm.make_loader(dsd["train"], model, spec, "train", batch_size=4)
    batch = next(iter(loader))
    assert batch["present"]["audio"].all() and batch["present"]["image"].all()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(batch).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_plain_paths_bytes_and_arrays_load_through_csv(tmp_path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.wav").write_bytes(_wav(8000, 1))
    pd.DataFrame(
        {"img": [str(tmp_path / "a.png")], "snd": [str(tmp_path / "a.wav")], "label": [1]}
    ).to_csv(tmp_path / "d.csv", index=False)
    spec = mm.DatasetSpec(path=str(tmp_path / "d.csv"), columns={"image": "img", "audio": "snd"}, domain=None,
                          validation_fraction=0, test_fraction=0)  # fmt: skip
    dsd = mm.load_dataset(spec)
    row = mm.data.RowView(dsd["train"], spec, "train")[0]
    assert row["image"].endswith("a.png") and row["domain"] == "default"


@pytest.fixture(scope="module")
def synthetic_setup():
    spec = mm.DatasetSpec(options={**SMALL, "samples_per_domain": 12})
    dsd = mm.load_dataset(spec)
    return (
        spec,
        dsd,
        model_for(
            spec, dsd, [f"tab_{j}" for j in range(4)], {"tab_channel": ["web", "store", "phone"]}
        ),
    )


def _bad_rows():
    good = {"text": "fine words", "image": Image.new("RGB", (8, 8)), "tabular": {f"tab_{j}": 1.0 for j in range(4)} | {"tab_channel": "web"},
            "audio": {"array": np.zeros(800, np.float32), "sampling_rate": 8000}, "label": 1, "domain": "d0"}  # fmt: skip
    truncated = _wav(8000, 1)[:30]
    return good, {
        "corrupt image bytes": ("image", {"bytes": b"\x89PNG broken", "path": None}),
        "truncated WAV": ("audio", {"bytes": truncated, "path": None}),
        "tabular text in a number column": ("tabular", {**good["tabular"], "tab_0": "abc"}),
    }


@pytest.mark.parametrize("case", list(_bad_rows()[1]))
def test_error_policy(synthetic_setup, case: str) -> None:
    spec, _, model = synthetic_setup
    good, cases = _bad_rows()
    modality, value = cases[case]
    rows = [{**good, "__row__": 0}, {**good, modality: value, "__row__": 7}]
    column = {"tabular": "tab_0, tab_1, tab_2, tab_3, tab_channel"}.get(modality, modality)
    with pytest.raises(ValueError, match=f"split 'train', row 7, column '{column}': "):
        mm.MultimodalCollator(model, spec, "train", on_error="raise")(rows)
    collate = mm.MultimodalCollator(model, spec, "train", on_error="missing")
    batch = collate(rows)
    assert batch["present"][modality].tolist() == [True, False]
    assert collate.events[modality] == 1
    assert torch.isfinite(model(batch).loss)


def test_empty_text_nan_inf_and_all_none_row(synthetic_setup) -> None:
    spec, _, model = synthetic_setup
    good, _ = _bad_rows()
    rows = [
        {**good, "text": "", "__row__": 0},
        {
            **good,
            "tabular": {**good["tabular"], "tab_0": math.nan, "tab_1": math.inf},
            "__row__": 1,
        },
        {
            "text": None,
            "image": None,
            "audio": None,
            "tabular": None,
            "label": 0,
            "domain": "d1",
            "__row__": 2,
        },
    ]
    batch = mm.MultimodalCollator(model, spec, "train", on_error="raise")(rows)
    assert batch["present"]["text"].tolist() == [False, True, False]
    assert batch["present"]["tabular"].tolist() == [True, True, False]
    assert torch.isnan(batch["tabular"]["numerical"][1, :2]).all()  # -> learned missing tokens
    assert torch.isfinite(model(batch).loss)


def test_labels_out_of_range_always_raise(synthetic_setup) -> None:
    spec, _, model = synthetic_setup
    good, _ = _bad_rows()
    with pytest.raises(
        ValueError,
        match="split 'train', column 'label': sample 0: label 9 is out of range.*rows \\[5\\]",
    ):
        mm.MultimodalCollator(model, spec, "train", on_error="missing")(
            [{**good, "label": 9, "__row__": 5}]
        )


def test_modality_dropout_and_workers(synthetic_setup) -> None:
    spec, dsd, model = synthetic_setup
    loader = mm.make_loader(
        dsd["train"], model, spec, "train", batch_size=8, modality_dropout={"image": 1.0}
    )
    batch = next(iter(loader))
    assert not batch["present"]["image"].any() and batch["present"]["text"].any()
    loader = mm.make_loader(
        dsd["validation"],
        model,
        spec,
        "validation",
        batch_size=4,
        num_workers=2,
        domains=["d0", "d1"],
    )
    batches = list(loader)
    assert sum(len(b["row"]) for b in batches) == len(dsd["validation"])
    assert set(torch.cat([b["domain"] for b in batches]).tolist()) == {0, 1}


def test_export_cli_round_trip(tmp_path) -> None:
    assert (
        main(
            [
                "export-dataset",
                "--out",
                str(tmp_path / "syn"),
                "samples_per_domain=10",
                "domains=2",
                "image_size=16",
            ]
        )
        == 0
    )
    back = mm.load_dataset(mm.DatasetSpec(path=str(tmp_path / "syn")))
    original = mm.make_synthetic(samples_per_domain=10, domains=2, image_size=16)
    for split in original:
        assert back[split]["text"] == original[split]["text"]
        assert back[split]["label"] == original[split]["label"]
        assert np.array_equal(
            np.asarray(back[split][0]["image"]), np.asarray(original[split][0]["image"])
        )


def test_domains_as_separate_datasets(tmp_path) -> None:
    for i, name in enumerate(["books", "music"]):
        pd.DataFrame({"x": np.arange(20.0) + 100 * i, "label": [j % 2 for j in range(20)]}).to_csv(
            tmp_path / f"{name}.csv", index=False
        )
    spec = mm.DatasetSpec(
        path="csv", columns={"tabular": ["x"]},
        domains={"books": {"path": str(tmp_path / "books.csv")}, "music": {"path": str(tmp_path / "music.csv")}},
    )  # fmt: skip
    dsd = mm.load_dataset(spec)
    assert sorted(set(dsd["train"]["domain"])) == ["books", "music"]
    music = mm.select_domains(dsd["test"], "music")
    assert all(x >= 100 for x in music["x"])


def test_local_folders_of_one_name_never_share_cached_rows(tmp_path) -> None:
    """datasets keys a carded folder's cache by its name; ours adds its path and files."""
    import datasets as hf

    from multimodal.data.loading import export_dataset

    def write(folder, n: int, replace: bool = False) -> None:
        rows = {"text": [f"row {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
        export_dataset(
            hf.DatasetDict({"train": hf.Dataset.from_dict(rows)}), folder, replace=replace
        )

    write(tmp_path / "a" / "same-name", 6)
    write(tmp_path / "b" / "same-name", 10)
    spec = {
        "columns": {"text": "text"},
        "domain": None,
        "validation_fraction": 0.0,
        "test_fraction": 0.0,
    }
    assert len(mm.load_dataset({**spec, "path": str(tmp_path / "a" / "same-name")})["train"]) == 6
    assert len(mm.load_dataset({**spec, "path": str(tmp_path / "b" / "same-name")})["train"]) == 10
    write(tmp_path / "a" / "same-name", 8, replace=True)  # rewritten in place
    assert len(mm.load_dataset({**spec, "path": str(tmp_path / "a" / "same-name")})["train"]) == 8


def test_an_export_over_an_earlier_one_is_refused_or_replaces_it_whole(tmp_path) -> None:
    """An earlier export's shards would mix with the new rows: refused, or with replace
    removed first."""
    import datasets as hf

    from multimodal.data.loading import export_dataset

    def rows(n: int) -> hf.DatasetDict:
        return hf.DatasetDict({"train": hf.Dataset.from_dict({"text": [f"r{i}" for i in range(n)],
                                                              "label": [i % 2 for i in range(n)]})})  # fmt: skip

    folder = tmp_path / "ds"
    export_dataset(rows(10), folder, num_shards=2)
    with pytest.raises(FileExistsError, match="holds a dataset already"):
        export_dataset(rows(4), folder)
    export_dataset(rows(4), folder, replace=True)
    spec = {"path": str(folder), "columns": {"text": "text"}, "domain": None,
            "validation_fraction": 0.0, "test_fraction": 0.0}  # fmt: skip
    assert sorted(mm.load_dataset(spec)["train"]["text"]) == ["r0", "r1", "r2", "r3"]


def test_k_shot_finds_the_label_column_without_being_told() -> None:
    import datasets

    from multimodal.data.loading import k_shot, unlabelled

    features = datasets.Features(
        {"category": datasets.ClassLabel(names=["a", "b"]), "x": datasets.Value("int64")}
    )
    ds = datasets.Dataset.from_dict(
        {"category": [0, 1] * 10, "x": list(range(20))}, features=features
    )
    picked = k_shot(ds, 3, seed=0)  # the only ClassLabel column
    assert sorted(picked["category"]) == [0, 0, 0, 1, 1, 1]
    spec = mm.DatasetSpec.from_dict(
        {"path": "synthetic", "label": "category", "columns": {"text": "x"}}
    )
    assert k_shot(ds, 2, seed=0, label=spec)["x"] == k_shot(ds, 2, seed=0, label="category")["x"]
    assert unlabelled(ds, spec).column_names == ["x"]
    plain = datasets.Dataset.from_dict({"tag": ["a", "b"] * 5, "x": list(range(10))})
    with pytest.raises(ValueError, match="which column is the label.*'tag'.*label=spec"):
        k_shot(plain, 2, seed=0)
