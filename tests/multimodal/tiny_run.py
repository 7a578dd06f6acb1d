"""A tiny run config and a training script the engine tests run in subprocesses."""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
from typing import Any

TINY_RUN: dict[str, Any] = {
    "data": {"path": "synthetic", "options": {"samples_per_domain": 48, "domains": 2, "image_size": 16, "audio_seconds": 0.25}},
    "encoders": {
        "text": {"name": "hf_text", "config": {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 32, "vocab_size": 150, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
                 "attention_probs_dropout_prob": 0.0}, "max_length": 24},
        "tabular": {"name": "tabular_mlp", "numerical": ["tab_0", "tab_1", "tab_2", "tab_3"],
                    "categorical": {"tab_channel": ["web", "store", "phone"]}, "dim": 8, "hidden_dim": 16},
    },
    "fusion": {"name": "concat", "dim": 16, "dropout": 0.0},
    "head": {"task": "classification", "num_classes": 4, "dropout": 0.0},
    "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "progress": False, "warmup_ratio": 0.0},
    "transfer": {"k_shot": 3, "adapt": {"epochs": 3}, "scratch": {"epochs": 3}},
    "seed": 0,
}  # fmt: skip


def tiny_run(**sections: Any) -> dict[str, Any]:
    config = copy.deepcopy(TINY_RUN)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def tiny_data(
    split: str = "train", **sections: Any
) -> tuple[dict[str, Any], Any, Any, list[dict[str, Any]]]:
    """The tiny config, its spec, its DatasetDict and the raw rows of ``split``."""
    import multimodal as mm

    config = tiny_run(**sections)
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    view = mm.data.RowView(dsd[split], spec, split)
    return config, spec, dsd, [view[i] for i in range(len(view))]


# synthetic_quick.yaml cut down: 84 training rows, 10 batches an epoch, logs every step.
QUICK_OVERRIDES = ("data.options.samples_per_domain=40", "train.batch_size=9", "train.log_every=1",
                   "train.eval_every=2", "train.patience=null", "train.progress=false")  # fmt: skip


def _kill_after(module: Any, name: str, step: int) -> None:
    """Wrap ``module.name(..., state, ...)`` to SIGKILL the process once it ran at ``step``."""
    original = getattr(module, name)

    def then_die(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        state = next(a for a in args if hasattr(a, "batch_in_epoch"))
        if state.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(module, name, then_die)


def main() -> None:
    """python tiny_run.py OUT_DIR [--config YAML] [--kill-after-checkpoint N] [--kill-after-log N]
    [--resume] [--per-process-batch B] [--max-steps N] [--sgd] [--streaming] [--balance METHOD]
    [--dp EPSILON]"""
    import multimodal as mm
    from multimodal import engine
    from multimodal.engine import training
    from multimodal.experiments.config import load_run_config, model_config, train_config

    out = sys.argv[1]
    args = sys.argv[2:]
    if "--config" in args:
        config = load_run_config(args[args.index("--config") + 1], QUICK_OVERRIDES)
    else:
        config = tiny_run()
    overrides: dict[str, Any] = {"output_dir": out, "save_every": 3, "max_steps": 15}
    if "--per-process-batch" in args:
        overrides["batch_size"] = int(args[args.index("--per-process-batch") + 1])
        overrides.pop("save_every")
    if "--sgd" in args:
        overrides.update(optimizer="sgd", lr=0.1)
    if "--balance" in args:
        overrides["balance"] = args[args.index("--balance") + 1]
    if "--dp" in args:  # private training of fusion and head, no mid-run checkpoints
        overrides.update(dp={"epsilon": float(args[args.index("--dp") + 1])}, strategy="head")
        overrides.pop("save_every", None)
    if "--max-steps" in args:
        overrides["max_steps"] = int(args[args.index("--max-steps") + 1])
    if "--resume" in args:
        overrides["resume_from"] = "latest"
    if "--kill-after-checkpoint" in args:
        _kill_after(
            training, "save_checkpoint", int(args[args.index("--kill-after-checkpoint") + 1])
        )
    if "--kill-after-log" in args:
        _kill_after(training, "_log_step", int(args[args.index("--kill-after-log") + 1]))
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    view = mm.data.RowView(dsd["train"], spec, "train")
    model = mm.build_model(model_config(config), [view[i] for i in range(len(view))], seed=0)
    train = dsd["train"]
    if "--streaming" in args:  # 3 uneven shards: processes read different numbers of rows
        train = train.to_iterable_dataset(num_shards=3)
        overrides.pop("max_steps", None)
    result = engine.fit(
        model,
        engine.FitData(spec, train, dsd["validation"]),
        train_config(config, **overrides),
    )
    test = engine.evaluate(model, dsd["test"], spec)
    weights = {
        k: v.tolist() for k, v in model.state_dict().items() if not k.startswith("encoders.")
    }
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(out, f"weights-{rank}.json"), "w") as f:
        json.dump(weights, f)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(out, "final.json"), "w") as f:
            json.dump(
                {
                    "best": result.best_metric,
                    "steps": result.steps,
                    "history": result.history,
                    "test": test,
                    "train_rows": len(dsd["train"]),
                    "privacy": result.privacy,
                },
                f,
            )


if __name__ == "__main__":
    main()
