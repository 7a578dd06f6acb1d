"""Every hub suite, end to end, on a local folder in the hub layout with the same schema.

The hub cannot be reached here, so each test writes a few rows with the real dataset's
columns, features, splits and configs, points the suite at that folder, swaps the
pretrained encoders for tiny ones of the same modality and runs the benchmark runner.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import yaml
from PIL import Image

from multimodal.experiments.bench import load_suite, run_benchmark, summarize, write_results
from tests.conftest import TINY_BERT

SUITES = Path(__file__).resolve().parents[2] / "benchmarks" / "suites"
HUB_SUITES = sorted(
    p.stem for p in SUITES.glob("*.yaml") if yaml.safe_load(p.read_text()).get("requires_hub")
)


def _png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _wav(rng: np.random.Generator, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(
        buf,
        rng.uniform(-0.3, 0.3, int(rate * rng.uniform(0.3, 0.8))).astype(np.float32),
        rate,
        format="WAV",
    )
    return buf.getvalue()


def _write_configs(folder: Path, configs: dict[str, dict[str, datasets.Dataset]]) -> None:
    """The hub layout: parquet shards per config and split, and a README with the configs YAML."""
    card = {"configs": []}
    for name, splits in configs.items():
        files = []
        for split, ds in splits.items():
            path = folder / name / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(path))
            files.append({"split": split, "path": f"{name}/{split}-*"})
        card["configs"].append({"config_name": name, "data_files": files})
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n")


def fashion_products(folder: Path) -> None:
    rng = np.random.default_rng(0)
    genders = ["Men", "Women", "Boys", "Girls"]
    categories = ["Apparel", "Accessories", "Footwear", "Personal Care", "Free Items"]
    rows = [{
        "id": i, "gender": genders[i % 4], "masterCategory": categories[(i // 4) % 5], "subCategory": "Topwear",
        "articleType": "Tshirts", "baseColour": "Blue", "season": ["Summer", "Winter", None][i % 3],
        "year": float(2010 + i % 8) if i % 7 else None, "usage": "Casual", "productDisplayName": f"Blue cotton item {i}",
        "image": {"bytes": _png(rng), "path": None},
    } for i in range(80)]  # fmt: skip
    features = datasets.Features({
        "id": datasets.Value("int64"), **{c: datasets.Value("string") for c in ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season"]},
        "year": datasets.Value("float64"), "usage": datasets.Value("string"), "productDisplayName": datasets.Value("string"), "image": datasets.Image(),
    })  # fmt: skip
    _write_configs(
        folder, {"default": {"train": datasets.Dataset.from_list(rows, features=features)}}
    )


def clothing_reviews(folder: Path) -> None:
    departments = ["Tops", "Dresses", "Bottoms", "Jackets", "Intimate"]
    features = datasets.Features({
        "age": datasets.Value("int64"), "review_text": datasets.Value("string"), "rating": datasets.Value("int64"),
        "positive_feedback_count": datasets.Value("int64"), "division_name": datasets.Value("string"),
        "department_name": datasets.Value("string"), "class_name": datasets.Value("string"),
        "recommended_ind": datasets.ClassLabel(names=["0", "1"]),
    })  # fmt: skip

    def split(n: int, offset: int) -> datasets.Dataset:
        return datasets.Dataset.from_list([{
            "age": 20 + (i * 7) % 50, "review_text": ["love it, fits well", "poor fabric, returned it"][i % 2] + f" ({i})",
            "rating": 5 - 3 * (i % 2), "positive_feedback_count": i % 5, "division_name": "General",
            "department_name": departments[i % 5], "class_name": "Knits", "recommended_ind": 1 - i % 2,
        } for i in range(offset, offset + n)], features=features)  # fmt: skip

    _write_configs(
        folder, {"default": {"train": split(100, 0), "val": split(30, 100), "test": split(30, 130)}}
    )


def minds14(folder: Path) -> None:
    rng = np.random.default_rng(0)
    intents = ["abroad", "address", "app_error", "atm_limit", "balance", "business_loan", "card_issues", "cash_deposit",
               "direct_debit", "freeze", "high_value_payment", "joint_account", "latest_transactions", "pay_bill"]  # fmt: skip
    locales = ["en-US", "en-GB", "en-AU"]
    features = datasets.Features({
        "path": datasets.Value("string"), "audio": datasets.Audio(sampling_rate=8000), "transcription": datasets.Value("string"),
        "english_transcription": datasets.Value("string"), "intent_class": datasets.ClassLabel(names=intents),
        "lang_id": datasets.ClassLabel(names=locales),
    })  # fmt: skip
    configs = {}
    for lang_id, locale in enumerate(locales):
        rows = [{"path": f"{locale}/{i}.wav", "audio": {"bytes": _wav(rng), "path": None}, "transcription": f"i want to {intents[i % 14]}",
                 "english_transcription": f"i want to {intents[i % 14]}", "intent_class": i % 14, "lang_id": lang_id}
                for i in range(42)]  # fmt: skip
        configs[locale] = {"train": datasets.Dataset.from_list(rows, features=features)}
    _write_configs(folder, configs)


FIXTURES = {
    "fashion-products": fashion_products,
    "clothing-reviews": clothing_reviews,
    "minds14": minds14,
}
TINY = {
    "text": {"name": "hf_text", "config": TINY_BERT, "max_length": 16},
    "image": {"name": "timm_image", "model_name": "resnet10t", "img_size": 32},
}


def test_there_are_at_least_three_hub_suites_each_with_a_fixture() -> None:
    assert len(HUB_SUITES) >= 3
    assert set(HUB_SUITES) <= set(FIXTURES)


@pytest.mark.slow
@pytest.mark.parametrize("name", HUB_SUITES)
def test_hub_suite_runs_end_to_end_on_its_local_fixture(name: str, tmp_path: Path) -> None:
    suite = load_suite(SUITES / f"{name}.yaml")
    FIXTURES[name](tmp_path / "data")
    base = suite.base
    base["data"]["path"] = str(tmp_path / "data")
    for modality, enc in list(base["encoders"].items()):
        kind = {"hf_text": "text", "timm_image": "image"}.get(enc["name"])
        if kind:
            base["encoders"][modality] = TINY[kind]
        elif enc["name"] == "audio_cnn":
            enc.update(channels=[4, 8], max_seconds=1.0, n_mels=16, n_fft=256, hop_length=128)
        elif enc["name"] == "tabular_mlp":
            enc.update(dim=8, hidden_dim=16)
    base["fusion"]["dim"] = 16
    base["train"].update(epochs=1, batch_size=8, progress=False, patience=None)
    base["transfer"]["adapt"].update(epochs=1)
    base["transfer"]["scratch"].update(epochs=1)
    suite.k_shot = suite.k_shot[:1]
    suite.unimodal = False  # the one-modality rows have a test of their own
    rows = run_benchmark(
        suite,
        tmp_path / "out",
        fusions=["concat"],
        adaptations=suite.adaptations[:1],
        seeds=1,
        progress=False,
    )
    targets = suite.pairs[0]["target"]
    assert sorted(r["target"] for r in rows) == sorted(targets)
    assert all(0.0 <= r["adapted"] <= 1.0 and 0.0 <= r["zero_shot"] <= 1.0 for r in rows)
    paths = write_results(rows, summarize(rows), tmp_path / "out")
    assert paths["bars"].is_file()
