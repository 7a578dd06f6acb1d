"""Audio encoders: a torchaudio log-mel front end, then a small CNN or any timm backbone."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from ._augment import augment_audio
from ._base import AttackSurface, Encoder, EncoderOutput, Processor
from ._registry import register_encoder, register_processor
from .image import TimmBackbone, create_timm_backbone

_MAX_CHANNELS = 16


def decode_audio(
    source: str | Path | bytes, max_seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """Decode a file or encoded bytes to ([C, T] float32, rate): soundfile, else torchcodec.

    With ``max_seconds`` only the start of the clip is decoded, so the cost is bounded by
    it, not by what the file's header claims (silence compresses to almost nothing).
    """
    import soundfile

    data = (
        io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    )
    try:
        with soundfile.SoundFile(data) as f:
            frames = -1 if max_seconds is None else math.ceil(max_seconds * f.samplerate) + 1
            array = f.read(frames=frames, dtype="float32", always_2d=True)  # T x C
            return array.T, int(f.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        if isinstance(data, io.BytesIO):
            data.seek(0)
    return _decode_with_ffmpeg(
        data.getvalue() if isinstance(data, io.BytesIO) else data, max_seconds
    )


def _decode_with_ffmpeg(data: Any, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """mp3, ogg, m4a... through torchcodec; its errors, which name its build paths, become
    one line saying the bytes are not audio it can read."""
    from torchcodec.decoders import AudioDecoder

    try:
        decoder = AudioDecoder(data)
        samples = (
            decoder.get_all_samples()
            if max_seconds is None
            else decoder.get_samples_played_in_range(0.0, max_seconds)
        )
    except (RuntimeError, ValueError) as err:
        reason = str(err).rsplit(": ", 1)[-1].strip() or type(err).__name__
        raise ValueError(
            f"cannot decode the audio: not a format soundfile or FFmpeg reads ({reason})"
        ) from None
    return samples.data.numpy(), int(samples.sample_rate)


def to_waveform(
    value: Any, default_rate: int, max_seconds: float | None = None
) -> tuple[torch.Tensor, int]:
    """A waveform [C, T] float32 and its rate from any supported raw audio value.

    Takes ``{"array", "sampling_rate"}`` dicts (the ``datasets`` Audio feature), undecoded
    ``{"bytes", "path"}`` dicts, torchcodec decoders, ``(array, rate)`` tuples, paths,
    encoded bytes and bare arrays (taken to be at ``default_rate``). 2-D arrays may be
    [C, T] or [T, C]; integer PCM is scaled to [-1, 1]. Encoded audio is decoded only up to
    ``max_seconds``.
    """
    rate = default_rate
    if hasattr(value, "get_all_samples"):  # torchcodec AudioDecoder, as datasets>=4 yields
        samples = value.get_all_samples()
        value, rate = samples.data, int(samples.sample_rate)
    elif isinstance(value, dict):
        if value.get("array") is not None:
            value, rate = value["array"], int(value.get("sampling_rate") or default_rate)
        elif value.get("bytes") or value.get("path"):
            value, rate = decode_audio(value.get("bytes") or value["path"], max_seconds)
        else:
            raise ValueError(
                f"expected an audio dict with 'array' or 'bytes'/'path', got keys {sorted(value)}"
            )
    elif isinstance(value, tuple) and len(value) == 2:
        value, rate = value[0], int(value[1])
    elif isinstance(value, (str, Path, bytes, bytearray, memoryview)):
        value, rate = decode_audio(value, max_seconds)
    wave = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    if wave.dtype == torch.int16:
        wave = wave.float() / 32768.0
    elif wave.dtype == torch.int32:
        wave = wave.float() / 2147483648.0
    elif wave.dtype == torch.uint8:
        wave = (wave.float() - 128.0) / 128.0
    elif not wave.is_floating_point():
        raise ValueError(f"expected float or integer PCM audio, got dtype {wave.dtype}")
    wave = wave.float()
    if wave.ndim == 1:
        wave = wave[None]
    elif wave.ndim == 2:
        if wave.shape[0] > _MAX_CHANNELS and wave.shape[1] <= _MAX_CHANNELS:
            wave = wave.T  # T x C -> C x T
    else:
        raise ValueError(f"expected audio of shape [T], [C, T] or [T, C], got {tuple(wave.shape)}")
    if rate <= 0:
        raise ValueError(f"expected a positive sampling rate, got {rate}")
    return wave, rate


# torchaudio's resampling kernel has (target / g) x (rate / g) taps for g = gcd(rate, target):
# between coprime rates (22,051 Hz to 16,000 Hz) that is gigabytes for a 113-byte file. A
# ratio whose reduced terms exceed this is taken at the nearest ratio whose terms do not.
MAX_RESAMPLE_TERMS = 1000


def resample(wave: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """``wave`` at ``rate`` Hz resampled to ``target`` Hz with a kernel of at most
    ``MAX_RESAMPLE_TERMS`` x ``MAX_RESAMPLE_TERMS`` taps: an odd rate is resampled as if it
    were the nearest rate that reduces to small terms (22,051 Hz as 22,050: a pitch and
    tempo change of at most 1e-5 relative at that limit, and a bounded cost)."""
    ratio = Fraction(int(target), int(rate))
    if max(ratio.numerator, ratio.denominator) > MAX_RESAMPLE_TERMS:
        ratio = ratio.limit_denominator(MAX_RESAMPLE_TERMS)
        while ratio.numerator > MAX_RESAMPLE_TERMS:  # upsampling by a large factor
            ratio = Fraction(ratio.numerator // 2, max(ratio.denominator // 2, 1))
    return torchaudio.functional.resample(wave, ratio.denominator, ratio.numerator)


@register_processor("audio")
class AudioProcessor(Processor):
    """Raw audio -> mono waveform at ``sample_rate``, cropped to ``max_seconds``, padded, + lengths.

    The padded width is at least ``min_length`` (the STFT's reflect padding needs n_fft // 2 + 1).
    A clip of zero samples counts as absent.
    """

    modality = "audio"

    def __init__(self, sample_rate: int, max_seconds: float, min_length: int = 1) -> None:
        self.sample_rate, self.max_seconds = sample_rate, max_seconds
        self.max_length = int(round(max_seconds * sample_rate))
        self.min_length = min_length

    def is_missing(self, value: Any) -> bool:
        if value is None:
            return True
        array = value.get("array") if isinstance(value, dict) else value
        if isinstance(value, tuple) and len(value) == 2:
            array = value[0]
        if isinstance(array, (np.ndarray, torch.Tensor, list)):
            return np.asarray(array).size == 0
        return False

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "max_seconds": self.max_seconds,
                "min_length": self.min_length}  # fmt: skip

    def mono(self, value: Any) -> torch.Tensor:
        # Decoding stops a frame past max_seconds at the file's rate; the rest is cropped.
        wave, rate = to_waveform(value, self.sample_rate, self.max_seconds)
        wave = wave.mean(dim=0)  # mix to mono
        if not torch.isfinite(wave).all():
            raise ValueError("audio contains NaN or inf samples")
        if rate != self.sample_rate and wave.numel() > 0:
            # Crop before resampling so a very long clip is not resampled whole.
            wave = wave[: math.ceil(self.max_length * rate / self.sample_rate) + 1]
            wave = resample(wave, rate, self.sample_rate)
        return wave[: self.max_length]

    def __call__(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        waves = []
        for i, value in enumerate(values):
            try:
                waves.append(self.mono(value) if value is not None else torch.zeros(0))
            except (ValueError, TypeError, RuntimeError, OSError) as err:
                raise ValueError(f"audio sample {i}: {err}") from err
        lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
        width = max([w.numel() for w in waves] + [self.min_length])
        waveform = torch.zeros(len(waves), width)
        for i, wave in enumerate(waves):
            waveform[i, : wave.numel()] = wave
        return {"waveform": waveform, "lengths": lengths}


TOP_DB = 80.0  # the dynamic range kept below each clip's peak


class LogMelFrontEnd(nn.Module):
    """MelSpectrogram -> AmplitudeToDB -> SpecAugment (training only).

    waveform [B, L], lengths [B] -> spec [B, 1, n_mels, F], frames [B] (valid frames).
    """

    def __init__(
        self,
        sample_rate: int,
        n_mels: int,
        n_fft: int,
        hop_length: int,
        freq_mask: int,
        time_mask: int,
    ) -> None:
        super().__init__()
        self.hop_length = hop_length
        # Zeros past both ends, not a reflection: a clip's frames are then those it has
        # alone, however far its batch pads it (a reflection reads the batch's padding).
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
            pad_mode="constant",
        )  # fmt: skip
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)
        self.spec_augment = nn.Sequential(
            torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True),
            torchaudio.transforms.TimeMasking(time_mask, iid_masks=True),
        )

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor, augment: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``augment`` [B] bool: rows that get SpecAugment even in eval mode (a frozen
        encoder under ``train.augment: strong``); in training mode every row gets it."""
        # The mel filterbank runs in float32: its dB conversion underflows in half precision.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            spec = self.to_db(self.mel(waveform.float()).unsqueeze(1))  # B x 1 x n_mels x F
        # center=True framing: a clip of L samples spans L // hop + 1 frames.
        frames = torch.where(lengths > 0, lengths // self.hop_length + 1, torch.zeros_like(lengths))
        frames = frames.clamp(max=spec.shape[-1])
        # top_db below each clip's own peak (its frames only: not the batch's, nor its padding's)
        own = within(spec, frames)
        peak = spec.masked_fill(~own, float("-inf")).amax(dim=(-3, -2, -1), keepdim=True)
        spec = torch.maximum(spec, peak - TOP_DB)
        if self.training:
            spec = self.spec_augment(spec)
        elif augment is not None and bool(augment.any()):
            spec = torch.where(augment[:, None, None, None], self.spec_augment(spec), spec)
        return spec, frames


def within(x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """[B, 1, 1, T] bool: the time steps (last dim of ``x`` [B, C, H, T]) before ``steps`` [B]."""
    positions = torch.arange(x.shape[-1], device=x.device)
    return (positions[None, :] < steps.to(x.device)[:, None])[:, None, None, :]


def standardise(spec: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``spec`` [B, 1, n_mels, F] with zero mean and unit variance per clip, over the clip's
    own ``frames`` [B] (its padding counts for nothing)."""
    own = within(spec, frames)
    count = (own.sum(dim=-1, keepdim=True) * spec.shape[-2]).clamp_min(2)
    mean = (spec * own).sum(dim=(-2, -1), keepdim=True) / count
    var = ((spec - mean).square() * own).sum(dim=(-2, -1), keepdim=True) / (count - 1)
    return (spec - mean) / var.sqrt().clamp_min(1e-5)


def frame_mask(frames: torch.Tensor, num_tokens: int, total_frames: int) -> torch.Tensor:
    """[B, num_tokens] bool: token t covers frames from t * total_frames / num_tokens, and is
    valid if it starts inside the clip. Integer arithmetic keeps it exportable with symbolic sizes."""
    starts = torch.arange(num_tokens, device=frames.device) * total_frames  # x num_tokens
    return starts[None, :] < frames[:, None] * num_tokens


class _AudioEncoder(Encoder):
    """Shared processor and front end of the audio encoders."""

    modality = "audio"

    def __init__(
        self,
        sample_rate: int = 16000,
        max_seconds: float = 10.0,
        n_mels: int = 64,
        n_fft: int = 1024,
        hop_length: int = 320,
        freq_mask: int = 8,
        time_mask: int = 16,
    ) -> None:
        super().__init__()
        self.audio_kwargs = {
            "sample_rate": sample_rate, "max_seconds": max_seconds, "n_mels": n_mels,
            "n_fft": n_fft, "hop_length": hop_length, "freq_mask": freq_mask, "time_mask": time_mask,
        }  # fmt: skip
        self.processor = AudioProcessor(sample_rate, max_seconds, min_length=n_fft // 2 + 1)
        self.front_end = LogMelFrontEnd(
            sample_rate, n_mels, n_fft, hop_length, freq_mask, time_mask
        )

    @property
    def audio_processor(self) -> AudioProcessor:
        return self.processor

    def attack_surface(self, inputs: dict[str, torch.Tensor]) -> AttackSurface:
        """The waveform, in amplitude units (full scale is 1), within each clip's length."""
        wave = inputs["waveform"]
        positions = torch.arange(wave.shape[-1], device=wave.device)
        mask = positions[None] < inputs["lengths"].to(wave.device)[:, None]
        one = torch.ones((), device=wave.device)
        return AttackSurface("waveform", wave, one, mask, -one, one)

    def augment(self, inputs: dict[str, torch.Tensor], strength: str) -> dict[str, torch.Tensor]:
        """Gain and time shift (weak); also noise and SpecAugment (strong): ``encoders._augment``."""
        return augment_audio(inputs, strength)


class ConvBlock(nn.Module):
    """PANNs CNN10 block: (conv3x3 -> BN -> ReLU) x 2 -> 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
        )

    def forward(self, x: torch.Tensor, steps: torch.Tensor | None = None) -> torch.Tensor:
        """``steps`` [B]: each row's own time steps; later ones are zeroed before each
        convolution, as its zero padding would give the row alone."""
        for layer in self.layers:
            if steps is not None and isinstance(layer, nn.Conv2d):
                x = x.masked_fill(~within(x, steps), 0.0)
            x = layer(x)
        return x


@register_encoder("audio_cnn")
class AudioCNNEncoder(_AudioEncoder):
    """Log-mel spectrogram -> a PANNs-style CNN (CNN10 with the default channels).

    Frequency is averaged out after the conv blocks; each remaining time step is a token.
    tokens: [B, F / 2**len(channels), channels[-1]]; mask marks steps of padding False.
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 512),
        dropout: float = 0.2,
        **audio_kwargs: Any,
    ) -> None:
        super().__init__(**audio_kwargs)
        self.channels = [int(c) for c in channels]
        self.bn0 = nn.BatchNorm2d(self.audio_kwargs["n_mels"])  # per mel bin, as in PANNs
        widths = [1, *self.channels]
        self.blocks = nn.ModuleList(
            ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.out_dim = self.channels[-1]

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        spec, frames = self.front_end(
            inputs["waveform"], inputs["lengths"], inputs.get("spec_augment")
        )
        spec = self.bn0(spec.transpose(1, 2)).transpose(1, 2)  # normalise each mel bin
        stride = 2 ** len(self.blocks)
        total = -(-spec.shape[-1] // stride) * stride  # ceil, in integers
        x = F.pad(spec, (0, total - spec.shape[-1]))  # B x 1 x n_mels x total
        # A clip reads its own frames only, however far its batch pads it.
        x = x.masked_fill(~within(x, frames), 0.0)
        steps = -(-frames // stride) * stride
        for i, block in enumerate(self.blocks):
            x = block(x, steps // 2**i)
        tokens = self.dropout(x.mean(dim=2).transpose(1, 2))  # B x T x C
        return EncoderOutput(tokens, frame_mask(frames, tokens.shape[1], total))

    def layer_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        return {"channels": self.channels, "dropout": self.dropout.p, **self.audio_kwargs}


@register_encoder("audio_timm")
class AudioTimmEncoder(TimmBackbone, _AudioEncoder):
    """Any timm backbone on the log-mel spectrogram as a 1-channel image.

    CNN feature maps [B, C, H, W] are averaged over frequency: tokens [B, W, C] with a
    time mask. Backbones that return tokens [B, N, C] (ViTs) see the spectrogram padded
    to ``max_seconds`` and their tokens are all valid for a present clip. ``checkpoint_path``
    loads image-pretrained weights as for ``timm_image``, the stem summed to one channel.
    ``normalize="clip"`` standardises each clip's log-mel spectrogram (zero mean, unit
    variance) before the backbone: image-pretrained weights expect inputs near N(0, 1),
    where decibels lie in the tens.
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        pretrained: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | None = None,
        normalize: str | None = None,
        **audio_kwargs: Any,
    ) -> None:
        super().__init__(**audio_kwargs)
        if normalize not in (None, "clip"):
            raise ValueError(f"audio_timm normalize must be None or 'clip', got {normalize!r}")
        self.normalize = normalize
        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs or {})
        max_frames = self.audio_processor.max_length // self.audio_kwargs["hop_length"] + 1
        self.max_frames = max_frames
        kwargs = {"in_chans": 1, **self.model_kwargs}
        self.model = create_timm_backbone(
            model_name,
            pretrained,
            (self.audio_kwargs["n_mels"], max_frames),
            kwargs,
            checkpoint_path,
        )
        self.out_dim = int(self.model.num_features)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        # Every clip padded to max_seconds: a backbone's padding and what it pools over the
        # whole map (squeeze-excitation, attention) never see how far the batch pads a clip.
        wave = inputs["waveform"]
        wave = F.pad(wave, (0, max(0, self.audio_processor.max_length - wave.shape[-1])))
        spec, frames = self.front_end(wave, inputs["lengths"], inputs.get("spec_augment"))
        if self.normalize == "clip":
            spec = standardise(spec, frames)
        if hasattr(self.model, "patch_embed"):  # fixed-size input
            spec = spec[..., : self.max_frames]
        features = self.model.forward_features(spec)
        if features.ndim == 4:
            tokens = features.mean(dim=2).transpose(1, 2)  # B x C x H x W -> B x W x C
            mask = frame_mask(frames, tokens.shape[1], spec.shape[-1])
        else:
            tokens = features
            mask = (frames > 0)[:, None].expand(tokens.shape[:2])
        return EncoderOutput(tokens, mask)

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        return {**self.timm_config(), **self.audio_kwargs, "normalize": self.normalize}
