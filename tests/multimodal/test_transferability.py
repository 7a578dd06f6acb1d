"""Transferability estimators against their definitions, computed another way."""

from __future__ import annotations

import math

import numpy as np
import pytest

from multimodal.analysis.transferability import ESTIMATORS, Evidence, score

PROBS = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.5, 0.5]])
LABELS = np.array([0, 1, 1, 2, 0])


def test_leep_is_the_mean_log_expected_empirical_prediction() -> None:
    """Nguyen et al. eq. (1)-(2), with loops over rows and classes."""
    n, cs = PROBS.shape
    ct = LABELS.max() + 1
    joint = [
        [sum(PROBS[i][z] for i in range(n) if LABELS[i] == y) / n for z in range(cs)]
        for y in range(ct)
    ]
    p_z = [sum(joint[y][z] for y in range(ct)) for z in range(cs)]
    total = 0.0
    for i in range(n):
        eep = sum(joint[LABELS[i]][z] / p_z[z] * PROBS[i][z] for z in range(cs))
        total += math.log(eep)
    assert score("leep", Evidence(np.zeros((n, 1)), PROBS, LABELS)) == pytest.approx(
        total / n, abs=1e-12
    )


def test_nce_is_minus_the_conditional_entropy_of_labels_given_the_predicted_class() -> None:
    z = PROBS.argmax(1)  # [0, 1, 0, 1, 0]
    n = len(z)
    entropy = 0.0
    for zz in set(z):
        rows = [LABELS[i] for i in range(n) if z[i] == zz]
        for y in set(rows):
            p_yz, p_y_given_z = rows.count(y) / n, rows.count(y) / len(rows)
            entropy -= p_yz * math.log(p_y_given_z)
    assert score("nce", Evidence(np.zeros((n, 1)), PROBS, LABELS)) == pytest.approx(
        -entropy, abs=1e-12
    )


def _direct_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """The evidence maximised numerically: log N(y; 0, I / beta + F F^T / alpha) over
    (log alpha, log beta), per one-hot class, divided by N and averaged."""
    from scipy.optimize import minimize
    from scipy.stats import multivariate_normal

    n = len(labels)
    out = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)

        def negative(logs: np.ndarray, y: np.ndarray = y) -> float:
            alpha, beta = np.exp(logs)
            cov = np.eye(n) / beta + f @ f.T / alpha
            return -multivariate_normal(np.zeros(n), cov).logpdf(y)

        best = minimize(
            negative,
            np.zeros(2),
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000},
        )
        out.append(-best.fun / n)
    return float(np.mean(out))


@pytest.mark.parametrize("shape", [(12, 3), (6, 9)], ids=["n>d", "n<d"])
def test_logme_is_the_maximum_evidence(shape) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(shape[0]) % 3
    f = rng.normal(size=shape) + labels[:, None] * 0.7
    assert score("logme", Evidence(f, PROBS, labels)) == pytest.approx(
        _direct_logme(f, labels), abs=1e-5
    )


def test_hscore_and_transrate_by_hand_and_hscore_is_affine_invariant() -> None:
    rng = np.random.default_rng(1)
    labels = np.arange(20) % 2
    f = rng.normal(size=(20, 3)) + labels[:, None]
    mixed = f @ rng.normal(size=(3, 3)) + 5.0  # an invertible linear map and a shift
    assert score("hscore", Evidence(mixed, PROBS, labels)) == pytest.approx(
        score("hscore", Evidence(f, PROBS, labels))
    )
    # one feature: H = var(E[f|y]) / var(f); R(f) = log(1 + sum f^2 / (n eps)) / 2, centred
    x = f[:, :1]
    means = np.where(labels == 0, x[labels == 0].mean(), x[labels == 1].mean())
    assert score("hscore", Evidence(x, PROBS, labels)) == pytest.approx(
        np.var(means, ddof=1) / np.var(x, ddof=1)
    )

    def rate(v: np.ndarray) -> float:  # v centred on the mean of all rows, as TransRate does
        return 0.5 * math.log(1 + (v**2).sum() / (len(v) * 1e-4))

    by_hand = (
        rate(x[:, 0] - x.mean())
        - (rate(x[labels == 0, 0] - x.mean()) + rate(x[labels == 1, 0] - x.mean())) / 2
    )
    assert score("transrate", Evidence(x, PROBS, labels)) == pytest.approx(by_hand)


def test_hscore_saturates_with_as_many_dimensions_as_rows_and_the_regularised_one_does_not() -> (
    None
):
    """H-score's singular covariance: C - 1 for class-separating features and for noise
    alike; Ledoit-Wolf shrinkage (by the 2004 paper's formula here) tells them apart."""
    rng = np.random.default_rng(4)
    labels = np.arange(30) % 3
    noise = rng.normal(size=(30, 60))
    separating = noise + 3.0 * np.eye(60)[labels]  # one direction per class
    probs = np.full((30, 2), 0.5)
    plain = [score("hscore", Evidence(f, probs, labels)) for f in (separating, noise)]
    assert plain == pytest.approx([2.0, 2.0], abs=1e-6)
    reg = [score("hscore_reg", Evidence(f, probs, labels)) for f in (separating, noise)]
    assert reg[0] > reg[1] + 0.1

    def by_hand(f: np.ndarray) -> float:
        x = f - f.mean(0)
        n, d = x.shape
        s = x.T @ x / n
        mu = np.trace(s) / d
        delta = ((s - mu * np.eye(d)) ** 2).sum() / d
        beta = sum(((np.outer(r, r) - s) ** 2).sum() for r in x) / n**2 / d
        alpha = min(beta, delta) / delta
        g = np.stack([x[labels == c].mean(0) for c in labels])
        shrunk = (1 - alpha) * s + alpha * mu * np.eye(d)
        return float(np.trace(np.linalg.pinv(shrunk) @ ((1 - alpha) * np.cov(g, rowvar=False))))

    assert reg == pytest.approx([by_hand(separating), by_hand(noise)], rel=1e-6)


def test_gbc_is_minus_the_overlap_of_the_class_gaussians() -> None:
    rng = np.random.default_rng(2)
    same = rng.normal(size=(400, 2))
    labels = np.arange(400) % 2
    # one Gaussian for both classes: each ordered pair's coefficient is about 1
    assert score("gbc", Evidence(same, PROBS, labels)) == pytest.approx(-2.0, abs=0.05)
    apart = same + labels[:, None] * 20.0
    assert -1e-6 < score("gbc", Evidence(apart, PROBS, labels)) <= 0.0


def test_gbc_by_hand_on_a_small_matrix() -> None:
    """Pándy et al.'s diagonal form, pair by pair: minus the sum over ordered pairs of
    exp(-Bhattacharyya distance) between the classes' diagonal Gaussians."""
    rng = np.random.default_rng(4)
    f, labels = rng.normal(size=(9, 3)), np.array([0, 1, 2] * 3)
    stats = [(f[labels == c].mean(0), f[labels == c].var(0) + 1e-6) for c in range(3)]
    total = 0.0
    for i, (mu_i, var_i) in enumerate(stats):
        for j, (mu_j, var_j) in enumerate(stats):
            if i != j:
                var = (var_i + var_j) / 2
                distance = np.sum((mu_i - mu_j) ** 2 / var) / 8 + 0.5 * np.log(
                    np.prod(var) / np.sqrt(np.prod(var_i) * np.prod(var_j))
                )
                total += math.exp(-distance)
    assert score("gbc", Evidence(f, PROBS, labels)) == pytest.approx(-total, rel=1e-10)


def test_logme_of_many_evidences_is_each_ones_logme() -> None:
    """Scored together (every class of every episode iterating as one array), each
    evidence gets the value it gets alone, to the last bit; features of another rank too."""
    from multimodal.analysis.transferability import score_many

    rng = np.random.default_rng(5)
    labels = np.arange(12) % 3
    evidences = [Evidence(rng.normal(size=(12, d)) + labels[:, None] * s, PROBS, labels)
                 for d, s in ((4, 0.0), (4, 2.0), (4, 0.5), (20, 1.0))]  # fmt: skip
    alone = [score("logme", e) for e in evidences]
    assert score_many("logme", evidences) == alone
    assert score_many("logme", evidences[:3]) == alone[:3]
    assert len(set(alone)) == 4


def test_every_estimator_ranks_features_that_separate_the_classes_above_noise() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 10)
    centres = rng.normal(size=(4, 16)) * 3
    separating = centres[labels] + rng.normal(size=(40, 16))
    noise = rng.normal(size=(40, 16))
    sharp = np.eye(4)[labels] * 0.85 + 0.05  # a source head that tells the classes apart
    flat = rng.dirichlet(np.ones(4), size=40)
    good, bad = Evidence(separating, sharp, labels), Evidence(noise, flat, labels)
    assert set(ESTIMATORS.list()) == {
        "logme",
        "leep",
        "nce",
        "hscore",
        "hscore_reg",
        "gbc",
        "transrate",
    }
    for name in ESTIMATORS.list():
        assert score(name, good) > score(name, bad), name


def test_validation_by_hand_a_perfect_estimator_has_tau_one_and_no_regret(tmp_path) -> None:
    import csv

    from multimodal.experiments.rank import validate

    adapted = {"concat": 0.6, "moe": 0.8, "text-only": 0.5, "image-only": 0.7}
    rows, results = [], []
    for seed in range(3):
        for fusion, value in adapted.items():
            accuracy = value + 0.01 * seed
            cell = {"source_domains": "s", "k_shot": 5, "seed": seed, "target": "t", "episode": 0}
            rows.append({"candidate": fusion, "fusion": fusion, **cell, "zero_shot": 0.1,
                         "perfect": accuracy, "reversed": -accuracy})  # fmt: skip
            results.append({"suite": "x", "fusion": fusion, **cell, "adaptation": "head",
                            "adapted": accuracy, "zero_shot": 0.1})  # fmt: skip
    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    out = validate(rows, tmp_path / "results.csv", ["perfect", "reversed"])
    s = out["summary"]
    assert s["perfect tau"]["mean"] == pytest.approx(1.0) and s["reversed tau"][
        "mean"
    ] == pytest.approx(-1.0)
    assert s["perfect regret"]["mean"] == pytest.approx(0.0) and s["reversed regret"][
        "mean"
    ] == pytest.approx(0.3)
    assert s["random regret"]["mean"] == pytest.approx(0.8 - 0.65) and s["concat regret"][
        "mean"
    ] == pytest.approx(0.2)
    assert out["episodes"] == 3 and out["zero_shot_max_difference"] == 0.0
    assert out["tests"]["perfect - random"]["difference"]["mean"] == pytest.approx(-0.15)


@pytest.mark.slow
def test_rank_scores_every_candidate_episode_with_the_benchmarks_source_model(tmp_path) -> None:
    """The ranked source model is the one the benchmark trains: the same zero-shot score; the
    benchmark's rank stage (transfer.rank) writes the same scores and changes no result."""
    from multimodal.cli import main
    from multimodal.experiments.bench import Suite, run_benchmark, summarize, write_results
    from multimodal.experiments.rank import rank_suite, stage_rows
    from tests.multimodal.tiny_run import tiny_run

    base = tiny_run(transfer={"k_shot": 3, "episodes": 2, "adapt": {"epochs": 1}, "scratch": {"epochs": 1}},
                    train={"epochs": 2, "progress": False, "strategy": "head"})  # fmt: skip
    suite = Suite(name="tiny", base=base, fusions=["concat"], adaptations=["head"], seeds=2,
                  pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[3], unimodal=True)  # fmt: skip
    rows = rank_suite(suite, estimators=["leep", "logme"])
    keys = {
        (f, s, e) for f in ("concat", "tabular-only", "text-only") for s in (0, 1) for e in (0, 1)
    }
    assert {(r["fusion"], r["seed"], r["episode"]) for r in rows} == keys
    assert all(np.isfinite(r["leep"]) and np.isfinite(r["logme"]) for r in rows)
    bench = run_benchmark(suite, tmp_path / "bench", progress=False)
    measured = {(r["fusion"], r["seed"]): r["zero_shot"] for r in bench}
    assert all(
        r["zero_shot"] == pytest.approx(measured[(r["fusion"], r["seed"])], abs=1e-9) for r in rows
    )

    ranked = run_benchmark(suite.with_overrides(rank=["leep", "logme"]), tmp_path / "ranked",
                           progress=False)  # fmt: skip
    cell = lambda r: (r["fusion"], r["seed"], r["episode"])  # noqa: E731
    assert {cell(r): r["adapted"] for r in ranked} == {cell(r): r["adapted"] for r in bench}
    summary = summarize(ranked)  # the scores are per-row values, not grid axes
    assert len(summary) == len(summarize(bench)) and not any("rank_leep" in e for e in summary)
    write_results(ranked, summary, tmp_path / "ranked")
    staged, names = stage_rows(tmp_path / "ranked" / "results.csv")
    assert names == ["leep", "logme"] and {cell(r) for r in staged} == keys
    standalone = {cell(r): r for r in rows}
    for r in staged:
        assert r["leep"] == pytest.approx(standalone[cell(r)]["leep"], abs=1e-6)
        assert r["logme"] == pytest.approx(standalone[cell(r)]["logme"], abs=1e-6)
    assert main(["rank", "--from", str(tmp_path / "ranked")]) == 0
    assert "| leep |" in (tmp_path / "ranked" / "rank" / "validation.md").read_text()


@pytest.mark.slow
def test_an_arm_that_changes_features_without_labels_is_a_candidate_of_its_own(tmp_path) -> None:
    """bn_adapt is ranked on the features it leaves; its model is the benchmark's."""
    from multimodal.experiments.bench import Suite, run_benchmark, summarize, write_results
    from multimodal.experiments.rank import rank_suite, validate
    from tests.multimodal.tiny_run import tiny_run

    base = tiny_run(transfer={"k_shot": 3, "episodes": 2, "adapt": {"epochs": 1}, "scratch": {"epochs": 1}},
                    train={"epochs": 2, "progress": False, "strategy": "head"})  # fmt: skip
    suite = Suite(name="tiny", base=base, fusions=["concat"], adaptations=["head", "bn_adapt"], seeds=2,
                  pairs=[{"source": ["d0"], "target": ["d1"]}], k_shot=[3], unimodal=False)  # fmt: skip
    rows = rank_suite(suite, estimators=["leep", "hscore"])
    assert sorted({r["candidate"] for r in rows}) == ["concat", "concat+bn_adapt"]
    bench = run_benchmark(suite, tmp_path, progress=False)
    write_results(bench, summarize(bench), tmp_path)
    out = validate(rows, tmp_path / "results.csv", ["leep", "hscore"])
    assert out["episodes"] == 4 and out["zero_shot_max_difference"] < 1e-6
    assert out["summary"]["random regret"]["seeds"] == 2


def test_the_rank_stage_refuses_unknown_estimators_and_leave_one_out() -> None:
    from multimodal.experiments.config import RunConfig
    from multimodal.experiments.transfer.protocol import _check_protocol
    from tests.multimodal.tiny_run import tiny_run

    with pytest.raises(ValueError, match="logmee"):
        _check_protocol(RunConfig.from_dict(tiny_run(transfer={"rank": ["logmee"]})), ["head"])
    loo = tiny_run(transfer={"rank": ["all"], "protocol": "leave_one_out"})
    with pytest.raises(ValueError, match="has none"):
        _check_protocol(RunConfig.from_dict(loo), ["zero_shot"])


@pytest.mark.slow
def test_auto_picks_the_arm_that_cross_validates_better_on_the_episode(tmp_path) -> None:
    """The target's classes are the source's shifted by one: head relearns the mapping,
    while L2-SP under a huge weight stays at the source model, whose answers are wrong there.
    l2sp is listed first, so picking head is the cross-validation's doing, not a tie."""
    import multimodal as mm

    rng = np.random.default_rng(0)
    lines = ["x0,x1,label,domain"]
    for i in range(240):
        c, d = i % 3, (i // 3) % 2
        x = np.eye(3)[c][:2] * 3 + rng.normal(scale=0.3, size=2)
        lines.append(f"{x[0]:.4f},{x[1]:.4f},{(c + d) % 3},d{d}")
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    config = {
        "data": {"path": str(tmp_path / "rows.csv"), "columns": {"tabular": ["x0", "x1"]}},
        "encoders": {"tabular": {"name": "tabular_mlp", "dim": 8, "hidden_dim": 16}},
        "fusion": {"name": "concat", "dim": 8, "dropout": 0.0},
        "head": {"task": "classification", "num_classes": 3, "dropout": 0.0},
        "train": {"epochs": 15, "batch_size": 16, "lr": 0.05, "progress": False, "strategy": "head", "warmup_ratio": 0.0},
        "transfer": {"source": ["d0"], "target": ["d1"], "k_shot": 6, "adaptation": "auto", "auto_arms": ["l2sp", "head"],
                     "auto_folds": 3, "adapt": {"epochs": 30, "lr": 0.05, "regularize_weight": 1e4}},
        "seed": 0,
    }  # fmt: skip
    report = mm.transfer(config)
    (choice,) = report.auto
    assert choice["chosen"] == "head", choice
    assert choice["cross_validated"]["head"] > choice["cross_validated"]["l2sp"] + 0.3, choice
    assert report.targets["d1"].adapted > report.targets["d1"].zero_shot + 0.3
    assert "auto chose" in report.table() and "head 1x" in report.table()


def test_auto_regret_by_hand(tmp_path) -> None:
    import csv

    from multimodal.experiments.rank import auto_regret

    rows = []
    for seed in range(3):
        for episode in range(2):
            values = {
                "head": 0.5,
                "l2sp": 0.6 + 0.01 * seed,
                "lwf": 0.4,
                "auto": 0.6 + 0.01 * seed if episode else 0.5,
            }
            rows += [{"fusion": "concat", "seed": seed, "target": "t", "episode": episode, "adaptation": a, "adapted": v}
                     for a, v in values.items()]  # fmt: skip
    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    r = auto_regret(tmp_path / "results.csv")
    # each seed: episode 0 auto = head (regret 0.1+0.01 seed), episode 1 auto = oracle (0)
    assert r["auto regret"]["mean"] == pytest.approx(
        np.mean([(0.1 + 0.01 * s) / 2 for s in range(3)])
    )
    assert r["head regret"]["mean"] == pytest.approx(np.mean([0.1 + 0.01 * s for s in range(3)]))
    assert r["auto - head"]["mean"] == pytest.approx(
        r["head regret"]["mean"] - r["auto regret"]["mean"]
    )
    assert r["oracle is l2sp"]["mean"] == 1.0 and r["cells"] == 6


def test_rankings_csv_has_a_column_for_every_rows_keys(tmp_path) -> None:
    """An arm candidate's rows carry arm_test, the first fusion's do not."""
    import csv

    from multimodal.cli.rank import _write_rankings

    _write_rankings(
        tmp_path, [{"candidate": "concat"}, {"candidate": "concat+tent", "arm_test": 0.5}]
    )
    with open(tmp_path / "rankings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["arm_test"] == "0.5" and rows[0]["arm_test"] == ""
