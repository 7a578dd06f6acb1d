"""Speech from eSpeak NG through its shared library, which the ``espeakng-loader`` package
ships with its voice data: no system package and no subprocess.

eSpeak NG has two synthesisers: its own formant synthesiser (the default voices and most
variants: ``en+m3``, ``de+f2``) and a Klatt cascade-parallel formant synthesiser (the
variants that set ``klatt``: ``en+klatt``, ``en+klatt2`` ... ``klatt6``, ``adam``, ...).
``voice_synthesiser`` tells which one a variant uses, from the variant's own file.

The library keeps state between utterances (a formant voice's flutter goes on from where
the last utterance left it), so an utterance's samples depend on the calls before it in
the process. ``synthesize`` runs a list of utterances in order in a fresh process: the
same list gives the same bytes every time.
"""

from __future__ import annotations

import ctypes
import functools
import io
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

# espeak_AUDIO_OUTPUT: samples handed to the callback, Synth returns when all are
_SYNCHRONOUS = 2
_DONT_EXIT = 0x8000  # espeakINITIALIZE_DONT_EXIT: an error is returned, never exit()
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class ESpeakError(RuntimeError):
    """The library refused a call (an unknown voice, say)."""


class ESpeak:
    """The process's eSpeak NG (``espeak()`` returns the one instance).

    ``speak(text, voice, rate, pitch)`` -> int16 samples at ``sample_rate`` (22,050 Hz):
    ``voice`` is a language with an optional variant (``"de+m3"``), ``rate`` words per
    minute (80-450) and ``pitch`` 0-99, as the ``espeak-ng`` command's ``-v``, ``-s`` and
    ``-p`` take them.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise ImportError(
                "speech synthesis needs the espeakng-loader package: pip install espeakng-loader"
            ) from err
        self.data_path = Path(espeakng_loader.get_data_path())
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                                ctypes.c_int]  # fmt: skip
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        rate = self._lib.espeak_Initialize(
            _SYNCHRONOUS, 0, str(self.data_path).encode(), _DONT_EXIT
        )
        if rate <= 0:
            raise ESpeakError(f"espeak_Initialize failed with {rate} (data at {self.data_path})")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept: the library holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _collect(self, wav: ctypes.Array, count: int, events: int) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # go on

    def speak(self, text: str, voice: str, rate: int = 175, pitch: int = 50) -> np.ndarray:
        with self._lock:
            self._chunks = []
            self._check(self._lib.espeak_SetVoiceByName(voice.encode()), f"voice {voice!r}")
            self._check(self._lib.espeak_SetParameter(_RATE, int(rate), 0), f"rate {rate}")
            self._check(self._lib.espeak_SetParameter(_PITCH, int(pitch), 0), f"pitch {pitch}")
            data = text.encode()
            self._check(
                self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                       None, None),
                f"text {text!r}",
            )  # fmt: skip
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def seed(self, value: int) -> None:
        """Seed the library's own generator (the noise of breathy voices draws from it)."""
        with self._lock:
            self._lib.espeak_ng_SetRandSeed(ctypes.c_long(int(value)))

    def wav(self, text: str, voice: str, rate: int = 175, pitch: int = 50) -> bytes:
        """``speak``'s samples as a 16-bit mono WAV file."""
        import soundfile

        buf = io.BytesIO()
        soundfile.write(buf, self.speak(text, voice, rate, pitch), self.sample_rate,
                        format="WAV", subtype="PCM_16")  # fmt: skip
        return buf.getvalue()

    def variants(self) -> list[str]:
        """The voice variants the data holds (``m3``, ``klatt2``, ...)."""
        return sorted(p.name for p in (self.data_path / "voices" / "!v").iterdir())

    def voice_synthesiser(self, variant: str) -> str:
        """``klatt`` for a variant that selects the Klatt synthesiser, else ``formant``."""
        text = (self.data_path / "voices" / "!v" / variant).read_text(errors="replace")
        return (
            "klatt"
            if any(line.split()[:1] == ["klatt"] for line in text.splitlines())
            else "formant"
        )

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise ESpeakError(f"eSpeak NG refused {what} (espeak_ERROR {code})")


@functools.cache
def espeak() -> ESpeak:
    """The process's one ``ESpeak`` (the library is a single global state)."""
    return ESpeak()


class Utterance(NamedTuple):
    """What to say and how: ``ESpeak.speak``'s arguments."""

    text: str
    voice: str
    rate: int = 175
    pitch: int = 50


def _wavs(utterances: Sequence[Utterance]) -> list[bytes]:
    engine = espeak()
    engine.seed(0)  # unseeded, a breathy voice's noise differs from process to process
    return [engine.wav(*u) for u in utterances]


def synthesize(utterances: Sequence[Utterance]) -> list[bytes]:
    """Each utterance as a WAV file, said in order by eSpeak NG in a fresh process (spawned,
    so the library starts from its initial state): the same list, the same bytes."""
    if not utterances:
        return []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_wavs, list(utterances)).result()
