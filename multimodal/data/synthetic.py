"""The embedded default dataset: real modality values rendered from latent factors.

Each sample has a label y. Every modality m shows a class-carrying value v_m in [0, C):
stripe orientation in the image, pitch in the audio, keyword vocabulary in the text and
a class centroid in the tabular columns. ``interaction`` decides how v_m relates to y:

- ``redundant``: v_m = y in every modality;
- ``unique``: one modality, drawn per sample, shows y and the others show random classes;
- ``synergy``: two modalities show a and b with (a + b) mod C = y, the rest random, so
  no single modality tells anything about y;
- ``mixed``: each sample draws one of the three.

Each domain changes the style of every modality (palette, contrast and a rotation of
the stripes; pitch, timbre and noise of the audio; the share of domain-specific words;
scale and offset of the tabular columns) by an amount set by ``shift``, and optionally
the label prior (``label_shift``).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

MODALITIES = ("audio", "image", "tabular", "text")
INTERACTIONS = ("redundant", "unique", "synergy", "mixed")
TABULAR_COLUMNS = ("tab_0", "tab_1", "tab_2", "tab_3", "tab_channel")
_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ren",
    "tu",
    "sha",
    "vel",
    "no",
    "qi",
    "dar",
    "pe",
    "zu",
    "fin",
    "go",
    "bra",
    "ish",
]
_FILLERS = "the a this that with and of on in near some very quite here there it".split()


def _words(rng: np.random.Generator, n: int) -> list[str]:
    return ["".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4))) for _ in range(n)]


def _class_values(
    y: np.ndarray,
    modalities: list[str],
    interaction: str,
    num_classes: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    n = len(y)
    kinds = (
        rng.choice(["redundant", "unique", "synergy"], size=n)
        if interaction == "mixed"
        else np.full(n, interaction)
    )
    values = {m: y.copy() for m in modalities}
    unique_pick = rng.integers(0, len(modalities), size=n)
    a = rng.integers(0, num_classes, size=n)
    for i, m in enumerate(modalities):
        random_class = rng.integers(0, num_classes, size=n)
        values[m] = np.where((kinds == "unique") & (unique_pick != i), random_class, values[m])
        if len(modalities) >= 2:
            synergy_value = a if i == 0 else (y - a) % num_classes if i == 1 else random_class
            values[m] = np.where(kinds == "synergy", synergy_value, values[m])
    return values


def _render_images(
    v: np.ndarray, c: int, style: dict[str, Any], noise: float, size: int, rng
) -> list[dict]:
    n = len(v)
    coords = np.arange(size, dtype=np.float32) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    theta = (v + rng.uniform(-0.25, 0.25, n)) * np.pi / c + style["rotation"]
    freq = rng.uniform(3.0, 5.0, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    wave = np.sin(
        2
        * np.pi
        * freq[:, None, None]
        * (xx * np.cos(theta)[:, None, None] + yy * np.sin(theta)[:, None, None])
        + phase[:, None, None]
    )
    stripes = (wave * style["contrast"] + rng.normal(0, noise + style["texture"], (n, size, size)))[
        ..., None
    ]
    mix = 1 / (1 + np.exp(-3 * stripes))  # N x S x S x 1, soft stripes
    rgb = style["bg"] * (1 - mix) + style["fg"] * mix
    pixels = np.clip(rgb, 0, 255).astype(np.uint8)
    out = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, format="PNG", compress_level=1)
        out.append({"bytes": buf.getvalue(), "path": None})
    return out


def _render_audio(
    v: np.ndarray, c: int, style: dict[str, Any], noise: float, rate: int, seconds: float, rng
) -> list:
    import soundfile

    n, length = len(v), int(rate * seconds)
    t = (np.arange(length, dtype=np.float32) / rate)[None, :]
    pitch = (style["base_hz"] * 2.0 ** ((v + rng.uniform(-0.2, 0.2, n)) / c)).astype(np.float32)[
        :, None
    ]
    wave = np.zeros((n, length), dtype=np.float32)
    for k, amp in enumerate(style["harmonics"], start=1):
        if amp > 1e-3:
            start = rng.uniform(0, 2 * np.pi, (n, 1)).astype(np.float32)
            wave += np.float32(amp) * np.sin(np.float32(2 * np.pi * k) * pitch * t + start)
    envelope = np.minimum(1.0, np.minimum(t, t[0, -1] - t) * 20).astype(np.float32)
    wave *= envelope * rng.uniform(0.3, 0.8, (n, 1)).astype(np.float32)
    wave += rng.standard_normal(wave.shape, dtype=np.float32) * np.float32(
        noise * 0.3 + style["noise"]
    )
    out = []
    for w in wave:  # stored as 16-bit WAV, the way audio datasets usually hold it
        buf = io.BytesIO()
        soundfile.write(buf, np.clip(w, -1, 1), rate, format="WAV", subtype="PCM_16")
        out.append({"bytes": buf.getvalue(), "path": None})
    return out


def _render_text(v: np.ndarray, vocab: list[list[str]], noise: float, rng) -> list[str]:
    out = []
    for value in v:
        words = list(rng.choice(_FILLERS, size=rng.integers(4, 8)))
        for _ in range(rng.integers(2, 4)):
            pool = (
                vocab[int(value)] if rng.random() >= noise else vocab[int(rng.integers(len(vocab)))]
            )
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(pool)))
        out.append(" ".join(words))
    return out


def _summary(dsd: Any) -> str:
    train = dsd["train"]
    domains = sorted(set(train["domain"]))
    modalities = [m for m in MODALITIES if (m if m != "tabular" else "tab_0") in train.column_names]
    return f"domains: {domains}; modalities: {modalities} (tabular: {[c for c in TABULAR_COLUMNS if c in train.column_names]})"


def _dataset_dict_type() -> type:
    import datasets

    class SyntheticDatasetDict(datasets.DatasetDict):
        """A DatasetDict whose repr also lists the domains and modalities."""

        def __repr__(self) -> str:
            return f"{super().__repr__()}\n{_summary(self)}"

    return SyntheticDatasetDict


def make_synthetic(
    num_classes: int = 4,
    samples_per_domain: int = 600,
    domains: int | Sequence[str] = 3,
    shift: float = 1.0,
    interaction: str = "redundant",
    noise: float | Mapping[str, float] = 0.1,
    missing_rate: float = 0.0,
    modalities: Sequence[str] = MODALITIES,
    seed: int = 0,
    label_shift: float = 0.0,
    image_size: int = 32,
    sample_rate: int = 8000,
    audio_seconds: float = 0.5,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> Any:
    """Generate the synthetic cross-domain dataset as a ``datasets.DatasetDict``.

    Columns: ``text`` (str), ``image`` (datasets Image), ``audio`` (datasets Audio),
    ``tab_0..tab_3`` (float) and ``tab_channel`` (str) for the tabular modality, ``label``
    (ClassLabel) and ``domain`` (str); splits train/validation/test, each holding every
    domain. Deterministic for a seed.
    """
    modalities = sorted(modalities)
    _check_options(modalities, interaction, num_classes)
    names = [f"d{i}" for i in range(domains)] if isinstance(domains, int) else list(domains)
    if samples_per_domain < 1 or not names:
        what = "samples_per_domain" if samples_per_domain < 1 else "domains"
        raise ValueError(f"data.options.{what}: expected at least 1, got "
                         f"{samples_per_domain if what == 'samples_per_domain' else domains!r}")  # fmt: skip
    noise_of = {m: float(noise[m] if isinstance(noise, Mapping) else noise) for m in modalities}
    rng = np.random.default_rng(seed)
    c = num_classes
    # Class vocabularies: a shared pool per class and, per domain, a domain-specific pool.
    shared_vocab = [_words(rng, 6) for _ in range(c)]
    centroids = rng.normal(0, 1.5, (c, 4))

    columns: dict[str, list] = {"label": [], "domain": [], "split": []}
    for m in modalities:
        for col in TABULAR_COLUMNS if m == "tabular" else [m]:
            columns[col] = []
    for d, domain in enumerate(names):
        drng = np.random.default_rng([seed, d, 1])
        s = 0.0 if d == 0 else shift  # domain 0 is the reference style
        style = _domain_style(drng, d, s, c, shared_vocab)
        n = samples_per_domain
        prior = (
            np.ones(c)
            if label_shift == 0 or d == 0
            else drng.dirichlet(np.full(c, 1.0 / max(label_shift, 1e-3)))
        )
        y = drng.choice(c, size=n, p=prior / prior.sum())
        values = _class_values(y, modalities, interaction, c, drng)
        for m in modalities:
            flip = drng.random(n) < noise_of[m]
            values[m] = np.where(flip, drng.integers(0, c, n), values[m])
        rendered = _render_domain(values, modalities, style, noise_of, centroids, s, c,
                                  image_size, sample_rate, audio_seconds, drng)  # fmt: skip
        for m in modalities:
            missing = drng.random(n) < missing_rate
            for col in TABULAR_COLUMNS if m == "tabular" else [m]:
                rendered[col] = [
                    None if gone else value
                    for value, gone in zip(rendered[col], missing, strict=True)
                ]
        order = drng.permutation(n)
        cuts = np.cumsum(np.array(split_fractions[:2]) * n).round().astype(int)
        split = np.array(["train"] * n, dtype=object)
        split[order[cuts[0] : cuts[1]]] = "validation"
        split[order[cuts[1] :]] = "test"
        columns["label"] += y.tolist()
        columns["domain"] += [domain] * n
        columns["split"] += split.tolist()
        for col, vals in rendered.items():
            columns[col] += vals
    return _dataset_dict(columns, modalities, c, sample_rate)


def _check_options(modalities: Sequence[str], interaction: str, num_classes: int) -> None:
    if unknown := sorted(set(modalities) - set(MODALITIES)):
        raise ValueError(f"unknown modalities {unknown}; choose from {list(MODALITIES)}")
    if interaction not in INTERACTIONS:
        raise ValueError(f"interaction must be one of {INTERACTIONS}, got {interaction!r}")
    if interaction in ("synergy", "mixed") and len(modalities) < 2:
        raise ValueError(f"interaction {interaction!r} needs at least two modalities")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")


def _domain_style(
    drng: np.random.Generator, d: int, s: float, c: int, shared_vocab: list[list[str]]
) -> dict[str, Any]:
    """How domain ``d`` (shift ``s``; 0 for the reference domain) renders each modality."""
    image = {
        "bg": np.clip(np.array([40, 40, 40]) + s * drng.uniform(-1, 1, 3) * 110, 0, 255)
        + 40 * (d == 0),
        "fg": np.clip(np.array([210, 210, 210]) + s * drng.uniform(-1, 1, 3) * 90, 0, 255),
        "contrast": 1.0 - 0.4 * s * drng.random(),
        "rotation": s * drng.choice([-1, 1]) * 0.45 * np.pi / c,
        "texture": 0.3 * s * drng.random(),
    }
    audio = {
        "base_hz": 300.0 * 2.0 ** (s * drng.choice([-1, 1]) * 0.45 / c),
        "harmonics": drng.dirichlet(np.ones(3)) if s > 0 else np.array([1.0, 0.0, 0.0]),
        "noise": 0.05 * s * drng.random(),
    }
    own = s * 0.8  # share of domain-specific class words
    vocab = [
        [w for w in shared_vocab[k] if drng.random() >= own] + _words(drng, int(round(6 * own)))
        for k in range(c)
    ]
    vocab = [v or shared_vocab[k] for k, v in enumerate(vocab)]
    scale = np.exp(s * drng.normal(0, 0.4, 4))
    offset = s * drng.normal(0, 1.2, 4)
    return {"image": image, "audio": audio, "vocab": vocab, "scale": scale, "offset": offset}


def _render_domain(
    values: dict[str, np.ndarray], modalities: Sequence[str], style: dict[str, Any],
    noise_of: dict[str, float], centroids: np.ndarray, s: float, c: int, image_size: int,
    sample_rate: int, audio_seconds: float, drng: np.random.Generator,
) -> dict[str, list]:  # fmt: skip
    """Column -> values of one domain's rows, from each modality's class values."""
    rendered: dict[str, list] = {}
    if "image" in modalities:
        rendered["image"] = _render_images(
            values["image"], c, style["image"], noise_of["image"], image_size, drng
        )
    if "audio" in modalities:
        rendered["audio"] = _render_audio(values["audio"], c, style["audio"], noise_of["audio"],
                                          sample_rate, audio_seconds, drng)  # fmt: skip
    if "text" in modalities:
        rendered["text"] = _render_text(values["text"], style["vocab"], noise_of["text"], drng)
    if "tabular" in modalities:
        n = len(values["tabular"])
        x = centroids[values["tabular"]] + drng.normal(0, 0.6 + noise_of["tabular"], (n, 4))
        x = x * style["scale"] + style["offset"]
        channel = drng.choice(
            ["web", "store", "phone"], size=n, p=drng.dirichlet(np.ones(3) * (5 - 4 * min(s, 1)))
        )
        for j in range(4):
            rendered[f"tab_{j}"] = x[:, j].tolist()
        rendered["tab_channel"] = channel.tolist()
    return rendered


def _dataset_dict(columns: dict[str, list], modalities: Sequence[str], c: int,
                  sample_rate: int) -> Any:  # fmt: skip
    """The generated columns as train/validation/test ``datasets.Dataset``s."""
    import datasets

    features = {"label": datasets.ClassLabel(num_classes=c), "domain": datasets.Value("string")}
    if "image" in modalities:
        features["image"] = datasets.Image()
    if "audio" in modalities:
        features["audio"] = datasets.Audio(sampling_rate=sample_rate)
    if "text" in modalities:
        features["text"] = datasets.Value("string")
    if "tabular" in modalities:
        features.update({f"tab_{j}": datasets.Value("float64") for j in range(4)})
        features["tab_channel"] = datasets.Value("string")
    split_of = np.array(columns.pop("split"))
    order = list(features)
    out = {}
    for split_name in ("train", "validation", "test"):
        idx = np.flatnonzero(split_of == split_name)
        data = {k: [columns[k][i] for i in idx] for k in order}
        out[split_name] = datasets.Dataset.from_dict(
            data, features=datasets.Features({k: features[k] for k in order})
        )
    return _dataset_dict_type()(out)


def synthetic_columns(modalities: Sequence[str] = MODALITIES) -> dict[str, str | list[str]]:
    """The modality -> column mapping of ``make_synthetic``'s output."""
    return {m: list(TABULAR_COLUMNS) if m == "tabular" else m for m in sorted(modalities)}
