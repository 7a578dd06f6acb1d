"""Transferability estimates: how well a model's features (or its class probabilities)
will serve a target task, from the target's few labelled rows, without fine-tuning.

Each estimator is registered by name in ``ESTIMATORS`` and takes an ``Evidence``: the fused
features [N, D] and the source model's class probabilities [N, C_s] on N labelled target
rows, and their labels [N]. Higher is better for every one of them.

- ``logme``: the log marginal evidence of a Bayesian linear model on the features, per
  one-hot class, maximised over its prior and noise precisions by You et al.'s fixed-point
  iteration (LogME, ICML 2021, Algorithm 2 and its fast form; as TLlib's
  ``tllib.ranking.logme``), divided by N and averaged over the classes.
- ``leep``: the mean log of the expected empirical prediction: P(y | z) from the joint of
  target labels and the source probabilities (Nguyen et al., LEEP, ICML 2020).
- ``nce``: the negative conditional entropy H(Y | Z) of the target labels given the source
  model's predicted class (Tran et al., ICCV 2019).
- ``hscore``: tr(cov(f)^+ cov(E[f | y])) (Bao et al., ICIP 2019). With as many feature
  dimensions as rows, cov(f) is singular and the score saturates at (classes - 1) for any
  features that span the class means: it then ranks nothing.
- ``hscore_reg``: the same with cov(f) shrunk toward a scaled identity by Ledoit and Wolf's
  coefficient alpha, and cov(E[f | y]) scaled by (1 - alpha) (Ibrahim et al., "Newer is not
  always better", 2022; TLlib's ``regularized_h_score``): defined however few the rows.
- ``gbc``: minus the sum over class pairs of the Bhattacharyya coefficient between
  per-class diagonal Gaussians of the features (Pándy et al., CVPR 2022; their diagonal form).
- ``transrate``: the coding rate of the (centred) features minus the mean coding rate of
  each class's (Huang et al., ICML 2022), at distortion ``eps`` = 1e-4 as there.

TLlib's ``tllib.ranking`` was the reference for LogME, LEEP, NCE, H-score and TransRate; GBC
follows the paper's equations. The code here is written against numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core.registry import Registry


@dataclass(frozen=True)
class Evidence:
    """What an estimator reads: ``features`` [N, D] (fused), ``probabilities`` [N, C_s]
    (the source head's), ``labels`` [N] (target classes 0..C_t-1)."""

    features: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray


ESTIMATORS: Registry[Callable[[Evidence], float]] = Registry("transferability estimator")


def score(name: str, evidence: Evidence) -> float:
    """``name``'s estimate on ``evidence`` (higher: expected to transfer better)."""
    return float(ESTIMATORS.get(name)(evidence))


def _classes(labels: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(labels).astype(int))


@ESTIMATORS.register("logme")
def logme(evidence: Evidence) -> float:
    f = np.asarray(evidence.features, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2  # the nonzero eigenvalues of f^T f (at most min(n, d))
    values = []
    for c in _classes(evidence.labels):
        y = (np.asarray(evidence.labels) == c).astype(np.float64)
        values.append(_evidence(y, u, sigma, n, d))
    return float(np.mean(values))


def _evidence(y: np.ndarray, u: np.ndarray, sigma: np.ndarray, n: int, d: int) -> float:
    """Max over (alpha, beta) of log p(y | F, alpha, beta) / n, the fixed point of LogME's
    updates, in the eigenbasis of F^T F (the rest of y lies outside F's column space)."""
    z2 = (u.T @ y) ** 2
    outside = max(float(y @ y - z2.sum()), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(100):
        t = alpha + beta * sigma
        gamma = float((beta * sigma / t).sum())
        m2 = float((beta**2 * sigma * z2 / t**2).sum())  # |m|^2
        res2 = float(((alpha / t) ** 2 * z2).sum()) + outside  # |y - F m|^2
        # bounded: a class the features fit exactly (or not at all) sends one to 0 or inf
        new_alpha = min(max(gamma / max(m2, 1e-300), 1e-12), 1e12)
        new_beta = min(max((n - gamma) / max(res2, 1e-300), 1e-12), 1e12)
        done = abs(new_alpha / new_beta - alpha / beta) <= 1e-6 * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    t = alpha + beta * sigma
    m2 = float((beta**2 * sigma * z2 / t**2).sum())
    res2 = float(((alpha / t) ** 2 * z2).sum()) + outside
    log_det = float(np.log(t).sum()) + (d - len(sigma)) * math.log(
        alpha
    )  # log|alpha I + beta F^T F|
    value = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - log_det / 2 - beta / 2 * res2
             - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))  # fmt: skip
    return value / n


def _joint(evidence: Evidence) -> tuple[np.ndarray, np.ndarray]:
    """P(y, z) [C_t, C_s] from the labels and the source probabilities, and P(y | z)."""
    probs = np.asarray(evidence.probabilities, dtype=np.float64)
    labels = np.asarray(evidence.labels).astype(int)
    joint = np.zeros((labels.max() + 1, probs.shape[1]))
    np.add.at(joint, labels, probs / len(labels))
    p_z = joint.sum(0, keepdims=True)
    return joint, np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)


@ESTIMATORS.register("leep")
def leep(evidence: Evidence) -> float:
    _, p_y_given_z = _joint(evidence)
    probs = np.asarray(evidence.probabilities, dtype=np.float64)
    labels = np.asarray(evidence.labels).astype(int)
    expected = (probs @ p_y_given_z.T)[np.arange(len(labels)), labels]
    return float(np.mean(np.log(np.maximum(expected, 1e-300))))


@ESTIMATORS.register("nce")
def nce(evidence: Evidence) -> float:
    probs = np.asarray(evidence.probabilities)
    hard = np.zeros_like(probs, dtype=np.float64)
    hard[np.arange(len(probs)), probs.argmax(1)] = 1.0  # z: the predicted source class
    joint, p_y_given_z = _joint(Evidence(evidence.features, hard, evidence.labels))
    logs = np.log(p_y_given_z, out=np.zeros_like(p_y_given_z), where=p_y_given_z > 0)
    return float((joint * logs).sum())  # -H(Y | Z)


@ESTIMATORS.register("hscore")
def hscore(evidence: Evidence) -> float:
    f = np.asarray(evidence.features, dtype=np.float64)
    labels = np.asarray(evidence.labels).astype(int)
    g = np.zeros_like(f)
    for c in _classes(labels):
        g[labels == c] = f[labels == c].mean(0)
    cov_f, cov_g = np.cov(f, rowvar=False), np.cov(g, rowvar=False)
    return float(np.trace(np.linalg.pinv(np.atleast_2d(cov_f), rcond=1e-15) @ np.atleast_2d(cov_g)))


@ESTIMATORS.register("hscore_reg")
def hscore_reg(evidence: Evidence) -> float:
    from sklearn.covariance import ledoit_wolf

    f = np.asarray(evidence.features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    labels = np.asarray(evidence.labels).astype(int)
    g = np.zeros_like(f)
    for c in _classes(labels):
        g[labels == c] = f[labels == c].mean(0)
    cov_f, alpha = ledoit_wolf(f, assume_centered=True)
    cov_g = np.atleast_2d(np.cov(g, rowvar=False))
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-15) @ ((1 - alpha) * cov_g)))


@ESTIMATORS.register("gbc")
def gbc(evidence: Evidence) -> float:
    f = np.asarray(evidence.features, dtype=np.float64)
    labels = np.asarray(evidence.labels).astype(int)
    stats = []
    for c in _classes(labels):
        rows = f[labels == c]
        stats.append((rows.mean(0), rows.var(0) + 1e-6))  # diagonal covariance, regularised
    total = 0.0
    for i, (mu_i, var_i) in enumerate(stats):
        for j, (mu_j, var_j) in enumerate(stats):
            if i == j:
                continue
            var = (var_i + var_j) / 2
            distance = (((mu_i - mu_j) ** 2 / var).sum() / 8
                        + 0.5 * (np.log(var).sum() - 0.5 * (np.log(var_i).sum() + np.log(var_j).sum())))  # fmt: skip
            total += math.exp(-distance)
    return -total


def _coding_rate(f: np.ndarray, eps: float) -> float:
    n, d = f.shape
    return 0.5 * float(np.linalg.slogdet(np.eye(d) + f.T @ f / (n * eps))[1])


@ESTIMATORS.register("transrate")
def transrate(evidence: Evidence, eps: float = 1e-4) -> float:
    f = np.asarray(evidence.features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    labels = np.asarray(evidence.labels).astype(int)
    classes = _classes(labels)
    within = sum(_coding_rate(f[labels == c], eps) for c in classes) / len(classes)
    return _coding_rate(f, eps) - within
