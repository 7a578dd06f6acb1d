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


def score_many(name: str, evidences: list[Evidence]) -> list[float]:
    """``score`` of each evidence (an estimator with a form for many computes them together)."""
    estimator = ESTIMATORS.get(name)
    if estimator is logme:
        return logme_many(evidences)
    return [float(estimator(e)) for e in evidences]


def _by_class(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's class as an index into the classes present, and the one-hot [N, C]: the
    per-class sums below are products with it, not a Python loop over the classes."""
    _, index = np.unique(np.asarray(labels).astype(int), return_inverse=True)
    onehot = np.zeros((len(index), int(index.max()) + 1))
    onehot[np.arange(len(index)), index] = 1.0
    return index, onehot


def _class_means(f: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Each class's mean feature vector, [C, D]."""
    return (onehot.T @ f) / onehot.sum(0)[:, None]


@ESTIMATORS.register("logme")
def logme(evidence: Evidence) -> float:
    return logme_many([evidence])[0]


def logme_many(evidences: list[Evidence]) -> list[float]:
    """``logme`` of each evidence: every class of every evidence iterates as one array (the
    same values as one at a time; an episode's 10 classes alone leave the loop mostly
    Python)."""
    parts = [_logme_terms(e) for e in evidences]
    if len({p[0].shape[1] for p in parts}) > 1:  # features of different ranks: one at a time
        return [logme_many([e])[0] for e in evidences]
    sizes = [len(p[0]) for p in parts]
    z2, sigma, outside, n, d = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    values = _evidence(z2, sigma, outside, n, d)
    return [float(v.mean()) for v in np.split(values, np.cumsum(sizes)[:-1])]


def _logme_terms(evidence: Evidence) -> tuple[np.ndarray, ...]:
    """Per class c of ``evidence`` (rows of each array): y_c in the eigenbasis of F^T F
    squared (z2 [C, r]), F^T F's nonzero eigenvalues (sigma [C, r], the same for every
    class), the part of y_c outside F's column space, N and D."""
    f = np.asarray(evidence.features, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    y = _by_class(evidence.labels)[1].T  # each class's one-hot targets, [C, N]
    z2 = (y @ u) ** 2
    outside = np.maximum((y * y).sum(1) - z2.sum(1), 0.0)
    c = len(y)
    return z2, np.broadcast_to(s**2, z2.shape), outside, np.full(c, float(n)), np.full(c, float(d))


def _evidence(z2: np.ndarray, sigma: np.ndarray, outside: np.ndarray, n: np.ndarray,
              d: np.ndarray) -> np.ndarray:  # fmt: skip
    """Per row (a class's one-hot targets, ``_logme_terms``): max over (alpha, beta) of
    log p(y | F, alpha, beta) / n, the fixed point of LogME's updates in the eigenbasis of
    F^T F. The rows iterate together, each stopping where it alone would."""
    alpha, beta = np.ones(len(z2)), np.ones(len(z2))
    active = np.ones(len(z2), dtype=bool)
    for _ in range(100):
        t = alpha[:, None] + beta[:, None] * sigma
        gamma = (beta[:, None] * sigma / t).sum(1)
        m2 = (beta[:, None] ** 2 * sigma * z2 / t**2).sum(1)  # |m|^2
        res2 = ((alpha[:, None] / t) ** 2 * z2).sum(1) + outside  # |y - F m|^2
        # bounded: a class the features fit exactly (or not at all) sends one to 0 or inf
        new_alpha = np.clip(gamma / np.maximum(m2, 1e-300), 1e-12, 1e12)
        new_beta = np.clip((n - gamma) / np.maximum(res2, 1e-300), 1e-12, 1e12)
        done = np.abs(new_alpha / new_beta - alpha / beta) <= 1e-6 * (alpha / beta)
        alpha, beta = np.where(active, new_alpha, alpha), np.where(active, new_beta, beta)
        active &= ~done
        if not active.any():
            break
    t = alpha[:, None] + beta[:, None] * sigma
    m2 = (beta[:, None] ** 2 * sigma * z2 / t**2).sum(1)
    res2 = ((alpha[:, None] / t) ** 2 * z2).sum(1) + outside
    log_det = np.log(t).sum(1) + (d - sigma.shape[1]) * np.log(alpha)  # log|alpha I + beta F^T F|
    value = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2 - beta / 2 * res2
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
    index, onehot = _by_class(evidence.labels)
    g = _class_means(f, onehot)[index]  # each row's class mean
    cov_f, cov_g = np.cov(f, rowvar=False), np.cov(g, rowvar=False)
    return float(np.trace(np.linalg.pinv(np.atleast_2d(cov_f), rcond=1e-15) @ np.atleast_2d(cov_g)))


@ESTIMATORS.register("hscore_reg")
def hscore_reg(evidence: Evidence) -> float:
    from sklearn.covariance import ledoit_wolf

    f = np.asarray(evidence.features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    index, onehot = _by_class(evidence.labels)
    g = _class_means(f, onehot)[index]
    cov_f, alpha = ledoit_wolf(f, assume_centered=True)
    cov_g = np.atleast_2d(np.cov(g, rowvar=False))
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-15) @ ((1 - alpha) * cov_g)))


@ESTIMATORS.register("gbc")
def gbc(evidence: Evidence) -> float:
    f = np.asarray(evidence.features, dtype=np.float64)
    index, onehot = _by_class(evidence.labels)
    mu = _class_means(f, onehot)  # [C, D]
    # diagonal covariance (two-pass, as numpy's var), regularised
    var_c = (onehot.T @ (f - mu[index]) ** 2) / onehot.sum(0)[:, None] + 1e-6
    var = (var_c[:, None] + var_c[None]) / 2  # every pair of classes, [C, C, D]
    log_c = np.log(var_c).sum(1)
    distance = (((mu[:, None] - mu[None]) ** 2 / var).sum(2) / 8
                + 0.5 * (np.log(var).sum(2) - 0.5 * (log_c[:, None] + log_c[None])))  # fmt: skip
    coefficient = np.exp(-distance)
    return -float(coefficient.sum() - np.trace(coefficient))  # the pairs i != j


def _coding_rate(f: np.ndarray, eps: float) -> float:
    n, d = f.shape
    return 0.5 * float(np.linalg.slogdet(np.eye(d) + f.T @ f / (n * eps))[1])


def _class_coding_rates(f: np.ndarray, onehot: np.ndarray, eps: float) -> np.ndarray:
    """``_coding_rate`` of each class's rows, [C]: their Gram matrices as one batched product
    (the other rows zeroed) and one batched log-determinant."""
    rows = onehot.T[:, :, None] * f[None]  # [C, N, D]
    grams = rows.transpose(0, 2, 1) @ rows / (onehot.sum(0)[:, None, None] * eps)
    return 0.5 * np.linalg.slogdet(np.eye(f.shape[1]) + grams)[1]


@ESTIMATORS.register("transrate")
def transrate(evidence: Evidence, eps: float = 1e-4) -> float:
    f = np.asarray(evidence.features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    _, onehot = _by_class(evidence.labels)
    return _coding_rate(f, eps) - float(_class_coding_rates(f, onehot, eps).mean())
