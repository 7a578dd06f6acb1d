"""The inference server as a real process on loopback, called with a real HTTP client."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from multimodal.deploy.serve import start_server
from multimodal.experiments.runs import train_run
from tests.multimodal.test_adversarial import AUDIO, IMAGE
from tests.multimodal.tiny_run import tiny_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server process and its URL."""
    run = tmp_path_factory.mktemp("served")
    config = tiny_run(encoders={**tiny_run()["encoders"], "image": IMAGE, "audio": AUDIO})
    config["train"]["epochs"] = 1
    train_run(config, run)
    process, url = start_server(
        run, "--max-batch", "16", "--max-wait-ms", "50", "--max-payload-mb", "1",
        "--max-text-chars", "500000", "--max-audio-seconds", "30", "--max-samples", "64",
    )  # fmt: skip
    yield process, url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(served):
    return served[1]


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(np.arange(4000) / 5)).astype(np.float32), 8000, format="WAV")
    return buf.getvalue()


SAMPLE = {"text": "a bright red circle", "tabular": {"tab_0": 0.1, "tab_1": -0.3, "tab_2": 1.2, "tab_3": 0.0,
                                                    "tab_channel": "web"}}  # fmt: skip


def test_health_and_metadata(server) -> None:
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    meta = httpx.get(f"{server}/metadata").json()
    assert meta["modalities"] == {
        "audio": "audio",
        "image": "image",
        "tabular": "tabular",
        "text": "text",
    }
    assert meta["labels"] == ["0", "1", "2", "3"] and meta["model"]["version"] == 1


def test_good_requests_json_base64_multipart_and_missing_modalities(server) -> None:
    full = {**SAMPLE, "image": _png(), "audio": base64.b64encode(_wav()).decode()}
    answer = httpx.post(f"{server}/predict", json={"inputs": full}).json()["predictions"]
    assert len(answer["probs"]) == 4 and abs(sum(answer["probs"]) - 1) < 1e-5
    assert answer["label"] == int(np.argmax(answer["probs"])) and answer["label_name"] == str(
        answer["label"]
    )
    many = httpx.post(
        f"{server}/predict", json={"inputs": [SAMPLE, {"text": "only text"}, {}]}
    ).json()
    assert len(many["predictions"]) == 3  # a sample with no modality at all is still answered
    form = httpx.post(f"{server}/predict", data={"text": "a red circle", "tabular": json.dumps(SAMPLE["tabular"])},
                      files={"image": ("x.png", base64.b64decode(_png()), "image/png"), "audio": ("x.wav", _wav(), "audio/wav")})  # fmt: skip
    assert form.status_code == 200, form.text
    # Equal up to padding: a batch pads clips to its longest, and convolutions see the pad.
    assert form.json()["predictions"]["probs"] == pytest.approx(answer["probs"], abs=1e-3)


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"inputs": {"image": base64.b64encode(b"not an image").decode()}}, 422, "inputs.image"),
        ({"inputs": {"image": "***"}}, 422, "inputs.image"),
        ({"inputs": {"text": 5}}, 422, "inputs.text"),
        ({"inputs": {"tabular": {"tab_0": "abc"}}}, 422, "inputs.tabular"),
        ({"inputs": [SAMPLE, {"colour": "red"}]}, 422, "inputs[1].colour"),
        ({"samples": []}, 422, "inputs"),
        ({"inputs": {"text": "x" * (2 * 2**20)}}, 413, "body"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field_and_the_server_keeps_serving(
    server, payload, status, field
) -> None:
    response = httpx.post(f"{server}/predict", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert httpx.post(f"{server}/predict", json={"inputs": SAMPLE}).status_code == 200


def test_not_json_is_a_400(server) -> None:
    response = httpx.post(
        f"{server}/predict", content=b"{broken", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["field"] == "body"


def test_a_burst_of_concurrent_requests_is_batched(server) -> None:
    before = httpx.get(f"{server}/health").json()

    def call(i: int) -> httpx.Response:
        return httpx.post(
            f"{server}/predict", json={"inputs": {**SAMPLE, "text": f"request {i}"}}, timeout=60
        )

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(call, range(64)))
    assert all(r.status_code == 200 for r in responses)
    after = httpx.get(f"{server}/health").json()
    samples, batches = after["samples"] - before["samples"], after["batches"] - before["batches"]
    assert samples == 64 and batches < 64  # grouped into fewer, larger batches


def test_checked_samples_collate_to_what_predict_preprocesses() -> None:
    import torch

    import multimodal as mm
    from multimodal.deploy.serve import Batcher, check_sample
    from multimodal.experiments.config import model_config
    from tests.multimodal.tiny_run import tiny_data

    config, _, _, rows = tiny_data(
        encoders={**tiny_run()["encoders"], "image": IMAGE, "audio": AUDIO}
    )
    model = mm.build_model(model_config(config), rows, seed=0).eval()
    raw = [
        {**SAMPLE, "image": _png(), "audio": base64.b64encode(_wav()).decode()},
        {"text": "only a much longer text than the others, to pad"},
        {},
        {"audio": base64.b64encode(_wav()[:2000]).decode(), "tabular": SAMPLE["tabular"]},
    ]
    checked = [check_sample(model.processor, s, "inputs") for s in raw]
    assert set(checked[1]) == {"text"} and checked[2] == {}
    decoded = [
        {m: base64.b64decode(v) if m in ("image", "audio") else v for m, v in s.items()}
        for s in raw
    ]
    expected = model.preprocess(decoded)
    batcher = Batcher(model, max_batch=8, max_wait_ms=0)
    got = batcher.collate(checked)
    for m in model.modalities:
        assert got["present"][m].tolist() == expected["present"][m].tolist()
        for key, value in expected[m].items():
            assert torch.allclose(got[m][key], value, rtol=0, atol=0, equal_nan=True), (m, key)
    assert batcher._predict(checked)["probs"] == model.predict(decoded)["probs"].tolist()


def test_tabular_columns_left_out_are_missing_values_and_unknown_ones_fail() -> None:
    import math

    import multimodal as mm
    from multimodal.deploy.serve import RequestError, check_sample
    from multimodal.experiments.config import model_config
    from tests.multimodal.tiny_run import tiny_data

    config, _, _, rows = tiny_data()
    processor = mm.build_model(model_config(config), rows, seed=0).processor
    partial = check_sample(processor, {"tabular": {"tab_0": 0.5, "tab_channel": "web"}}, "inputs")
    numbers = partial["tabular"]["numerical"][0].tolist()
    assert not math.isnan(numbers[0]) and all(math.isnan(v) for v in numbers[1:])
    nulls = {"tab_0": 0.5, "tab_1": None, "tab_2": None, "tab_3": None, "tab_channel": "web"}
    same = check_sample(processor, {"tabular": nulls}, "inputs")
    assert torch_equal(same["tabular"], partial["tabular"])
    with pytest.raises(RequestError) as err:
        check_sample(processor, {"tabular": {"tab_0": 0.5, "colour": "red", "age": 3}}, "inputs")
    assert err.value.field == "inputs.tabular.age" and "['age', 'colour']" in str(err.value)


def torch_equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) or torch.allclose(a[k], b[k], equal_nan=True) for k in a
    )


def _thin_png(width: int = 600_000) -> str:
    """A few hundred bytes of PNG whose header says 1 x ``width`` pixels."""
    buf = io.BytesIO()
    Image.new("L", (width, 1), 0).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def _long_wav(seconds: float) -> str:
    buf = io.BytesIO()
    sf.write(
        buf, np.zeros(int(8000 * seconds), dtype=np.int16), 8000, format="WAV", subtype="PCM_16"
    )
    return base64.b64encode(buf.getvalue()).decode()


def test_hostile_requests_are_refused_or_cut_before_the_work(server) -> None:
    """Each cost is bounded by a limit before it is paid: JSON 100,000 levels deep (a
    RecursionError in the parser once, a 500), the same inside a multipart tabular field,
    a 1 x 600,000 pixel PNG under the pixel limit (a 2.3 GB resize once) get 4xx naming
    the field; text and audio over --max-text-chars and --max-audio-seconds get 422, and
    under them a 400 KB text is cut to what the tokenizer keeps and a 20 s clip decoded only
    to the encoder's length, so both answer 200. The server keeps serving."""
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = httpx.post(f"{server}/predict", content=deep,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 422 and "nested more than" in response.json()["error"]
    nested_row = "[" * 50_000 + "]" * 50_000
    response = httpx.post(f"{server}/predict", files={"tabular": (None, nested_row)})
    assert response.status_code == 422 and response.json()["field"] == "tabular"
    response = httpx.post(f"{server}/predict", json={"inputs": {"image": _thin_png()}})
    assert response.status_code == 422 and "MAX_IMAGE_SIDE" in response.json()["error"]
    response = httpx.post(f"{server}/predict", json={"inputs": {"image": _thin_png(5_000)}})
    assert response.status_code == 422 and "MAX_ASPECT_RATIO" in response.json()["error"]
    words = " ".join(f"word{i % 97}" for i in range(100_000))
    response = httpx.post(
        f"{server}/predict", json={"inputs": {"text": words[:400_000]}}, timeout=30
    )
    assert response.status_code == 200  # under --max-text-chars: cut before tokenizing
    response = httpx.post(
        f"{server}/predict", json={"inputs": {"text": words[:600_000]}}, timeout=30
    )
    assert response.status_code == 422 and "--max-text-chars" in response.json()["error"]
    response = httpx.post(
        f"{server}/predict", json={"inputs": {"audio": _long_wav(20)}}, timeout=30
    )
    assert response.status_code == 200, response.text  # decoded only to the encoder's 0.25 s
    response = httpx.post(
        f"{server}/predict", json={"inputs": {"audio": _long_wav(40)}}, timeout=30
    )
    assert response.status_code == 422 and "--max-audio-seconds" in response.json()["error"]
    assert httpx.post(f"{server}/predict", json={"inputs": SAMPLE}).status_code == 200


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _peak_since(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS (Linux clear_refs); returns it, kB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS")


def _odd_wav(rate: int, frames: int) -> str:
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(np.arange(frames) / 7)).astype(np.float32), rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_odd_sample_rates_are_resampled_at_a_bounded_cost(served) -> None:
    """A 113-byte WAV at 7,919 Hz cost 1.9 GB and one at 22,051 Hz over 3 GB: torchaudio's
    kernel between coprime rates. Each is answered, and the server's RSS grows < 300 MB."""
    process, url = served
    base = _peak_since(process.pid)
    for rate, frames in ((7919, 10), (22051, 22051), (96001, 96001)):
        response = httpx.post(
            f"{url}/predict", json={"inputs": {"audio": _odd_wav(rate, frames)}}, timeout=60
        )
        assert response.status_code == 200, (rate, response.text)
    assert (_status_kb(process.pid, "VmHWM") - base) / 1024 < 300


def _big_png(side: int = 8000) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_concurrent_large_images_stay_under_the_documented_bound(served) -> None:
    """Eight concurrent 8000 x 8000 PNGs (each within MAX_IMAGE_PIXELS) pushed RSS to 2.8 GB;
    at most Limits.decoding requests now decode at once, so the growth stays under
    decoding x 2 x 3 bytes x MAX_IMAGE_PIXELS (a decoded image and one working copy each)."""
    from encoders.image import MAX_IMAGE_PIXELS
    from multimodal.deploy.serve import Limits

    process, url = served
    image = _big_png()
    base = _peak_since(process.pid)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: httpx.post(f"{url}/predict", json={"inputs": {"image": image}},
                                                   timeout=300).status_code, range(8)))  # fmt: skip
    assert codes == [200] * 8
    bound = Limits().decoding * 2 * 3 * MAX_IMAGE_PIXELS / 2**20
    grown = (_status_kb(process.pid, "VmHWM") - base) / 1024
    assert grown < bound, (grown, bound)


def test_malformed_multipart_and_too_many_samples_are_4xx(server) -> None:
    boundary = "b0undary"
    garbage = f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\nhello'.encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = httpx.post(
        f"{server}/predict", content=garbage, headers=headers
    )  # no closing boundary
    assert response.status_code == 400 and "closing boundary" in response.json()["error"]
    broken = (
        b"--"
        + boundary.encode()
        + b"\r\nnot a header at all\r\n\r\n--"
        + boundary.encode()
        + b"--\r\n"
    )
    response = httpx.post(f"{server}/predict", content=broken, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    response = httpx.post(
        f"{server}/predict", content=b"--x--", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 400  # no boundary declared at all
    response = httpx.post(f"{server}/predict", json={"inputs": [{}] * 65})
    assert response.status_code == 413 and "--max-samples" in response.json()["error"]
    assert httpx.post(f"{server}/predict", json={"inputs": [SAMPLE] * 64}).status_code == 200


def test_serve_checks_its_port_and_says_it_serves_only_once_the_model_loaded(
    tmp_path, capsys
) -> None:
    from multimodal.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", str(tmp_path), "--port", "99999"])
    assert exit_.value.code == 2 and "a port is 0 to 65535" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--port", "8123"]) == 2  # no model there
    captured = capsys.readouterr()
    assert "serving" not in captured.out and captured.err
