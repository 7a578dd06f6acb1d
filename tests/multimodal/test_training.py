from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import multimodal as mm
from multimodal import engine
from multimodal.engine.optim import param_groups
from multimodal.experiments.config import model_config, train_config
from multimodal.modeling.freezing import apply_strategy, merge_lora
from tests.multimodal.tiny_run import tiny_data

SCRIPT = Path(__file__).with_name("tiny_run.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup():
    return tiny_data()


def _fit(setup, tmp_path=None, **train):
    config, spec, dsd, rows = setup
    model = mm.build_model(model_config(config), rows, seed=0)
    cfg = train_config(config, output_dir=str(tmp_path) if tmp_path else None, **train)
    return model, engine.fit(model, engine.FitData(spec, dsd["train"], dsd["validation"]), cfg)


def test_fit_writes_the_run_folder_and_best_model_reproduces_metrics(setup, tmp_path) -> None:
    _, spec, dsd, _ = setup
    model, result = _fit(setup, tmp_path)
    assert result.steps == 3 * math.ceil(len(dsd["train"]) / 8) and result.best_metric is not None
    for name in (
        "config.json",
        "environment.json",
        "metrics.jsonl",
        "best_state.safetensors",
        "best_model/config.json",
    ):
        assert (tmp_path / name).is_file(), name
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_accuracy" in r]
    assert len(evals) == 3 and max(r["eval_accuracy"] for r in evals) == result.best_metric
    assert {"train_loss", "lr"} <= set(next(r for r in records if "train_loss" in r))
    env = json.loads((tmp_path / "environment.json").read_text())
    assert "torch" in env["packages"] and len(env["train_config_hash"]) == 12
    assert env["code"] is None or len(env["code"]["commit"]) == 40
    # The best model, reloaded, gives exactly the metrics of the model fit returned.
    expected = engine.evaluate(model, dsd["test"], spec)
    reloaded = mm.MultimodalModel.from_pretrained(tmp_path / "best_model")
    assert engine.evaluate(reloaded, dsd["test"], spec) == expected
    assert engine.evaluate(reloaded, dsd["validation"], spec)["accuracy"] == result.best_metric


def test_early_stopping_restores_best(setup) -> None:
    model, result = _fit(setup, epochs=30, patience=2, lr=0.05)
    assert result.steps < 30 * math.ceil(len(setup[2]["train"]) / 8)
    evals = [h["eval_accuracy"] for h in result.history]
    assert result.best_metric == max(evals)
    assert len(evals) - 1 - evals.index(max(evals)) == 2  # stopped after `patience` bad evaluations


@pytest.mark.parametrize("strategy", ["head", "top_k", "lora", "full"])
def test_strategies_train_what_they_say(setup, strategy: str) -> None:
    config, spec, dsd, rows = setup
    model = mm.build_model(model_config(config), rows)
    text_before = {k: v.clone() for k, v in model.encoders["text"].state_dict().items()}
    counts = apply_strategy(model, strategy, top_k=1, lora={"r": 2})
    text = model.encoders["text"]
    trainable = {n for n, p in text.named_parameters() if p.requires_grad}
    if strategy == "head":
        assert not trainable and counts["trainable"] < counts["total"]
    elif strategy == "top_k":
        assert trainable and all(n.startswith("model.encoder.layer.1.") for n in trainable)
    elif strategy == "lora":
        assert trainable and all("lora_" in n for n in trainable)
    else:
        assert trainable == {n for n, _ in text.named_parameters()}
    result = engine.fit(
        model,
        engine.FitData(spec, dsd["train"]),
        train_config(config, strategy=strategy, epochs=1, lora={"r": 2}),
    )
    assert result.trainable_parameters == counts["trainable"]
    after = model.encoders["text"].state_dict()
    assert set(after) == set(text_before), "LoRA is merged back into the plain architecture"
    changed = any(not torch.equal(text_before[k], after[k]) for k in after)
    assert changed == (strategy != "head")


def test_merge_lora_keeps_outputs() -> None:
    from peft import LoraConfig, inject_adapter_in_model

    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"], init_lora_weights=False), net)
    x = torch.randn(3, 4)
    before = net(x)
    merge_lora(net)
    assert isinstance(net[0], torch.nn.Linear) and torch.allclose(net(x), before, atol=1e-6)


def test_feature_cache_matches_the_uncached_run(setup) -> None:
    _, cached = _fit(setup, strategy="head", epochs=2)
    _, uncached = _fit(setup, strategy="head", epochs=2, feature_cache="off")
    assert cached.used_feature_cache and not uncached.used_feature_cache
    assert cached.history[-1]["eval_loss"] == pytest.approx(
        uncached.history[-1]["eval_loss"], abs=1e-4
    )


def test_disk_feature_cache(setup, tmp_path) -> None:
    _, memory = _fit(setup, strategy="head", epochs=1)
    _, disk = _fit(setup, tmp_path, strategy="head", epochs=1, feature_cache="disk")
    assert disk.used_feature_cache and (tmp_path / "feature_cache").is_dir()
    assert disk.history[-1]["eval_loss"] == pytest.approx(memory.history[-1]["eval_loss"], abs=1e-5)


def test_grad_accumulation_and_sgd_run(setup) -> None:
    _, result = _fit(
        setup, epochs=1, grad_accum=2, optimizer="sgd", layer_decay=0.8, encoder_lr=1e-3
    )
    assert result.steps == math.ceil(math.ceil(len(setup[2]["train"]) / 8) / 2)


def test_param_groups_separate_encoder_lr_and_skip_decay_on_norms(setup) -> None:
    config, _, _, rows = setup
    model = mm.build_model(model_config(config), rows)
    groups = param_groups(
        model, engine.TrainConfig(lr=1e-2, encoder_lr=1e-4, layer_decay=0.5, weight_decay=0.1)
    )
    ln = model.encoders["text"].model.encoder.layer[1].output.LayerNorm.weight
    top = model.encoders["text"].model.encoder.layer[1].output.dense.weight
    low = model.encoders["text"].model.encoder.layer[0].output.dense.weight
    emb = model.encoders["text"].model.embeddings.word_embeddings.weight
    head = model.head.net[-1].weight

    def group_of(p):
        return next(g for g in groups if any(q is p for q in g["params"]))

    assert group_of(ln)["weight_decay"] == 0.0 and group_of(top)["weight_decay"] == 0.1
    assert group_of(top)["lr"] == pytest.approx(1e-4 * 0.5)
    assert group_of(low)["lr"] == pytest.approx(1e-4 * 0.25)
    assert group_of(emb)["lr"] == pytest.approx(1e-4 * 0.125)
    assert group_of(head)["lr"] == 1e-2


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


QUICK = ["--config", str(ROOT / "benchmarks" / "configs" / "synthetic_quick.yaml")]


def _metrics_log(folder: Path) -> list[dict]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "rss_mb"} for r in lines]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    done = _run([sys.executable, str(SCRIPT), str(out), *QUICK])
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.slow
def test_a_run_killed_twice_resumes_to_the_same_metrics(tmp_path, whole_run) -> None:
    """synthetic_quick.yaml (text, image, audio and tabular encoders), 10 batches an epoch,
    a checkpoint every 3 steps and an evaluation every 2. Killed right after the checkpoint
    of step 6, resumed, and killed again at step 11, after the log line of step 11 and an
    evaluation at step 10 that came after the last checkpoint (9). Resumed again, it ends
    with the same steps, history, test metrics and metrics.jsonl, to the bit, as a run never
    stopped in another process: nothing logged after step 9 by the killed run is doubled,
    and the best weights are those of the checkpoint, not of the lost evaluation."""
    broken = tmp_path / "broken"
    for kill, resume, kept in (
        (["--kill-after-checkpoint", "6"], [], ["step_3", "step_6"]),
        (["--kill-after-log", "11"], ["--resume"], ["step_6", "step_9"]),
    ):
        killed = _run([sys.executable, str(SCRIPT), str(broken), *QUICK, *resume, *kill])
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert not (broken / "final.json").exists()
        assert [p.name for p in engine.checkpoints(broken)] == kept
    assert [r["step"] for r in _metrics_log(broken) if "train_loss" in r][-1] == 11
    resumed = _run([sys.executable, str(SCRIPT), str(broken), *QUICK, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a = json.loads((whole_run / "final.json").read_text())
    b = json.loads((broken / "final.json").read_text())
    assert a["steps"] == b["steps"] == 15
    assert a["history"] == b["history"]
    assert a["test"] == b["test"]
    assert a["best"] == b["best"]
    assert _metrics_log(broken) == _metrics_log(whole_run)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """8 SGD steps of 8 samples in one process: the reference for the distributed runs."""
    out = tmp_path_factory.mktemp("one")
    one = _run(
        [
            sys.executable,
            str(SCRIPT),
            str(out),
            "--per-process-batch",
            "8",
            "--max-steps",
            "8",
            "--sgd",
        ]
    )
    assert one.returncode == 0, one.stderr[-2000:]
    return json.loads((out / "final.json").read_text())


def _matches_one_process(one: dict, folder: Path) -> None:
    two = json.loads((folder / "final.json").read_text())
    assert one["steps"] == two["steps"]
    assert json.loads((folder / "environment.json").read_text())["processes"] == 2
    assert two["test"]["accuracy"] == pytest.approx(one["test"]["accuracy"], abs=1e-4)
    assert two["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-4)


@pytest.mark.slow
def test_two_process_ddp_with_ogm_ge_balancing_matches_one_process(tmp_path, one_process) -> None:
    """torchrun, gloo DDP with 2 x 4 samples a step against 1 x 8 for 8 steps (whole batches
    only: the last, uneven batch of an epoch is padded with repeated samples under DDP),
    both with OGM-GE balancing: the per-modality scores behind its coefficients are summed
    over processes and its GE noise is seeded alike on both. The same samples form each
    step and gradients are averaged, so only the order of float sums differs (no dropout,
    no BatchNorm in this model). SGD keeps that noise at about 1e-8; Adam divides near-zero
    gradients by their own magnitude and turns it into a 0.3% loss difference after 8
    steps, so the comparison uses SGD: accuracy equal to 1e-4, loss to 1e-4 relative.
    Plain DDP is compared with ``one_process`` by the accelerate launch test below."""
    args = ["--max-steps", "8", "--sgd", "--balance", "ogm_ge"]
    one = _run(
        [sys.executable, str(SCRIPT), str(tmp_path / "one"), "--per-process-batch", "8", *args]
    )
    assert one.returncode == 0, one.stderr[-3000:]
    balanced = json.loads((tmp_path / "one" / "final.json").read_text())
    assert balanced["test"]["loss"] != one_process["test"]["loss"]  # the balancing acts
    two = _run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", str(SCRIPT),
         str(tmp_path / "two"), "--per-process-batch", "4", *args],
        env={"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    _matches_one_process(balanced, tmp_path / "two")


@pytest.mark.slow
def test_two_machine_accelerate_launch_rehearsed_on_one_matches_one_process(
    tmp_path, one_process
) -> None:
    """The two-machine recipe of docs/long-runs.md, both "machines" here: two ``accelerate launch``
    commands with --machine_rank 0 and 1 and --main_process_ip 127.0.0.1, one CPU (gloo)
    process each, the same global batch of 8 as the one-process run. On CPU the recipe
    takes accelerate's torchrun launcher (--multi_gpu) with ACCELERATE_USE_CPU=true: its
    --cpu launcher starts more than one process only through MPI."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
              "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", "29544",
              "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
    }
    machines = [
        subprocess.Popen([*launch, "--machine_rank", str(rank), str(SCRIPT), str(tmp_path / f"machine{rank}"),
                          "--per-process-batch", "4", "--max-steps", "8", "--sgd"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    _matches_one_process(one_process, tmp_path / "machine0")


@pytest.mark.slow
def test_a_streamed_split_under_ddp_takes_the_same_steps_on_every_process(tmp_path) -> None:
    """Accelerate gives each process its own shards of a stream, which hold different
    numbers of rows; every process still takes ceil(batches / processes) steps an epoch
    (a process that runs out starts its shards over), so none hangs in an all-reduce."""
    two = _run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537", str(SCRIPT),
         str(tmp_path / "two"), "--per-process-batch", "4", "--streaming"],
        env={"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads((tmp_path / "two" / "final.json").read_text())
    per_process = math.ceil(math.ceil(result["train_rows"] / 4) / 2)
    assert result["steps"] == 3 * per_process and len(result["history"]) == 3
    assert math.isfinite(result["test"]["loss"])


def test_bf16_mixed_precision_on_cpu_stays_finite(setup) -> None:
    _, result = _fit(setup, epochs=1, mixed_precision="bf16")
    assert all(math.isfinite(h["eval_loss"]) for h in result.history)


def test_a_one_row_last_batch_is_left_out_only_where_batchnorm_would_fail(caplog) -> None:
    from tests.multimodal.test_adversarial import IMAGE

    config, spec, dsd, rows = tiny_data(encoders={**tiny_data()[0]["encoders"], "image": IMAGE})
    train = dsd["train"].select(range(17))  # batches of 8: 8, 8 and one row
    data = engine.FitData(spec, train, None)

    def fit(encoders: dict, **cfg) -> engine.FitResult:
        config_ = {**config, "encoders": encoders}
        model = mm.build_model(model_config(config_), rows, seed=0)
        return engine.fit(model, data, train_config(config_, epochs=1, **cfg))

    # the image encoder's last feature map is 1 x 1: BatchNorm cannot train on one row
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fit(config["encoders"], drop_last=False)
    with caplog.at_level("INFO", logger="multimodal.engine.loaders"):
        assert fit(config["encoders"]).steps == 2
    assert "17 rows in batches of 8 leave one row" in caplog.text
    assert fit(config["encoders"], strategy="head").steps == 3  # frozen encoders: BatchNorm in eval
    no_batchnorm = {m: e for m, e in config["encoders"].items() if m != "image"}
    assert fit(no_batchnorm).steps == 3
    assert fit(no_batchnorm, drop_last=True).steps == 2


@pytest.mark.parametrize("fusion", ["gated", "late"])
def test_zeros_that_stand_in_for_absent_modalities_stay_zeros_through_a_fit(setup, fusion) -> None:
    """gated and late give an absent modality no weight, so its stand-in is zeros, not a
    learned vector: every freezing strategy leaves them out of training, and a fit with
    modalities dropped leaves them zero (the strategies set a fusion's parameters trainable,
    which once made them train)."""
    config, spec, dsd, rows = setup
    built = {**model_config(config), "fusion": {"name": fusion, "dim": 16}}
    model = mm.build_model(built, rows, seed=0)
    apply_strategy(model, "full")
    assert not [n for n, p in model.named_parameters() if ".missing." in n]
    zeros = {n: b for n, b in model.named_buffers() if ".missing." in n}
    assert zeros, "the stand-ins are buffers"
    engine.fit(model, engine.FitData(spec, dsd["train"]),
               train_config(config, epochs=2, lr=0.05, modality_dropout=0.5))  # fmt: skip
    assert all(not b.any() for b in zeros.values())
    reloaded = {n: b for n, b in model.state_dict().items() if ".missing." in n}
    assert set(reloaded) == set(zeros)  # the keys a checkpoint keeps, as before
