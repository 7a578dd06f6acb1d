from __future__ import annotations

import subprocess
import sys

import pytest

import encoders
import fusion
from multimodal.cli import main


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(ValueError, match="Did you mean 'cross_attention'"):
        fusion.create_fusion("cross_atention", {"a": 4}, 8)
    with pytest.raises(ValueError, match="Did you mean 'audio_cnn'"):
        encoders.create_encoder("audio_ccn")


def test_none_kwargs_fall_back_to_defaults() -> None:
    f = fusion.create_fusion("moe", {"a": 4}, 8, num_experts=None)
    assert f.moe.num_experts == 8


def test_list_filters_with_fnmatch() -> None:
    assert encoders.list_encoders("audio_*") == ["audio_cnn", "audio_timm"]
    assert {"concat", "cross_attention", "moe"} <= set(fusion.list_fusions())


def test_double_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        fusion.register_fusion("concat")(object)


def test_cli_list(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [
        "hf_text",
        "timm_image",
        "audio_cnn",
        "audio_timm",
        "tabular_mlp",
        "concat",
        "cross_attention",
        "moe",
    ]:
        assert f"  {name}\n" in out


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "multimodal.cli", "list"], capture_output=True, text=True, check=True
    )
    assert "cross_attention" in out.stdout


@pytest.mark.parametrize("package", ["encoders", "fusion"])
def test_the_lazy_index_names_each_registration_and_its_module(package: str) -> None:
    """Every built-in name is listed before its module is imported, and importing every
    module of the package registers exactly the indexed names, each from its indexed module."""
    import importlib
    import pkgutil

    module = importlib.import_module(package)
    registries = [r for r in vars(importlib.import_module(f"{package}._registry")).values()
                  if type(r).__name__ == "Registry"]  # fmt: skip
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")
    for registry in registries:
        assert set(registry._builders) == set(registry._lazy), registry.kind
        for name, builder in registry._builders.items():
            assert builder.__module__ == registry._lazy[name], (registry.kind, name)


@pytest.mark.slow
def test_list_shows_every_registry_and_imports_no_model_code() -> None:
    """Every registry is listed; the training methods' registries live in torch modules, but
    no encoder's model code (timm, transformers, torchaudio) is imported to name them."""
    code = ("import sys; from multimodal.cli import main; main(['list']); "
            "heavy = sorted(m for m in ('timm', 'transformers', 'torchaudio') if m in sys.modules); "
            "print('heavy:', heavy)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "heavy: []" in out.stdout and "cross_attention" in out.stdout
    from multimodal.cli.listing import KINDS

    for kind, example in zip(KINDS, ("hf_text", "moe", "fixmatch", "regression", "dann", "lwf",
                                     "groupdro", "ogm_ge", "lora", "fedbn"), strict=True):  # fmt: skip
        section = out.stdout.split(f"{kind} (", 1)[1].split("):", 1)[1]
        assert f"  {example}\n" in section.split("\n\n")[0], (kind, out.stdout)
