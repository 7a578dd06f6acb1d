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
