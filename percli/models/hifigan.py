"""HiFi-GAN generator (Kong, Kim & Bae, NeurIPS 2020): percli's trainable log-mel vocoder.

Module names follow the official release (jik876/hifi-gan, ``models.py``: ``conv_pre``, ``ups.i``,
``resblocks.j.convs1.k`` / ``convs2.k`` for ResBlock1 or ``resblocks.j.convs.k`` for ResBlock2, ``conv_post``),
so an official ``g_XXXXXXXX`` file (``{"generator": state}``) loads through `load_official_state`.

Weight norm is kept as torch's parametrization (``torch.nn.utils.parametrizations.weight_norm``), so training
behaves as the official one; the loader converts names both ways: official ``.weight_g`` / ``.weight_v`` <->
``.parametrizations.weight.original0`` / ``original1``, and a folded ``.weight`` (an export made with
`remove_weight_norm`) loads into either layout. `official_state_dict` writes the official names back.

Only the generator is built: percli's engine runs one optimizer, not the adversarial game, so the multi-period /
multi-scale discriminators (and adversarial / feature-matching losses) are left out. Train with `vocoder_loss`
(45 x mel L1 as HiFi-GAN weights it, plus Parallel WaveGAN's multi-resolution STFT loss); expect less crisp
phase detail than GAN training gives.

Deviations from the official code, none changing a pretrained model's output: the input width is ``num_mels``
(officially fixed at 80); an upsampler whose ``kernel - rate`` is odd (the 16 kHz ``rate 5, kernel 10``) gets
``output_padding=1`` so every model gives exactly ``frames * hop_length`` samples; the intended init N(0, 0.01)
is applied before weight norm (the official ``init_weights`` edits the recomputed ``weight`` and is undone on the
first forward).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from percli.core.mel import MelConfig, log_mel
from percli.models import register_loader, register_model
from percli.models.common import LoadReport, check_fit, plain

LRELU_SLOPE = 0.1
_G, _V = ".parametrizations.weight.original0", ".parametrizations.weight.original1"
_OFFICIAL = {".weight_g": 0, ".weight_v": 1, _G: 0, _V: 1}


def _wn(conv: nn.Module, init: bool = True) -> nn.Module:
    if init:
        nn.init.normal_(conv.weight, 0.0, 0.01)
    return weight_norm(conv)


def _conv(ch: int, k: int, d: int) -> nn.Module:
    return _wn(nn.Conv1d(ch, ch, k, 1, dilation=d, padding=(k * d - d) // 2))


class ResBlock1(nn.Module):
    """Pairs of (dilated conv, conv) with leaky ReLUs before each and a skip around each pair."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList(_conv(channels, kernel_size, d) for d in dilation)
        self.convs2 = nn.ModuleList(_conv(channels, kernel_size, 1) for _ in dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """Dilated convs, each after a leaky ReLU with a skip around it (HiFi-GAN V3)."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3)):
        super().__init__()
        self.convs = nn.ModuleList(_conv(channels, kernel_size, d) for d in dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HiFiGANGenerator(nn.Module):
    """Log-mel ``[B, num_mels, frames]`` -> waveform ``[B, frames * hop_length]`` in [-1, 1]."""

    def __init__(self, num_mels: int = 80, upsample_rates: Sequence[int] = (8, 8, 2, 2),
                 upsample_kernel_sizes: Sequence[int] = (16, 16, 4, 4), upsample_initial_channel: int = 512,
                 resblock: str = "1", resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
                 resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
                 sampling_rate: int = 22050):
        args = dict(locals())
        super().__init__()
        if resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {resblock!r}")
        lengths = len(upsample_rates), len(resblock_kernel_sizes)
        if lengths != (len(upsample_kernel_sizes), len(resblock_dilation_sizes)):
            raise ValueError("upsample_rates/upsample_kernel_sizes, resblock_*_sizes: lengths differ")
        self.hop_length = math.prod(upsample_rates)
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.config["hop_length"] = self.hop_length
        self.arch, self.sampling_rate, self.num_kernels = "hifigan", sampling_rate, len(resblock_kernel_sizes)
        block = ResBlock1 if resblock == "1" else ResBlock2
        ch = upsample_initial_channel
        self.conv_pre = _wn(nn.Conv1d(num_mels, ch, 7, 1, padding=3), init=False)  # officially not re-initialised
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            ch = upsample_initial_channel // 2 ** (i + 1)
            self.ups.append(_wn(nn.ConvTranspose1d(2 * ch, ch, k, u, padding=(k - u + 1) // 2,
                                                   output_padding=(k - u) % 2)))
            self.resblocks.extend(block(ch, rk, rd) for rk, rd in zip(resblock_kernel_sizes, resblock_dilation_sizes))
        self.conv_post = _wn(nn.Conv1d(ch, 1, 7, 1, padding=3))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = sum(b(x) for b in blocks) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))  # the official slope here is torch's default 0.01
        return torch.tanh(x).squeeze(1)


# --------------------------------------------------------------------------- weight norm and checkpoints


def _norm(w: torch.Tensor) -> torch.Tensor:
    """Weight norm's g for dim 0: the L2 norm over every other axis, shaped [out, 1, ...]."""
    return w.flatten(1).norm(dim=1).view(-1, *[1] * (w.dim() - 1))


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The weight that ``(g, v)`` stand for: ``g * v / ||v||``."""
    return v * (g / _norm(v))


def remove_weight_norm(model: nn.Module) -> nn.Module:
    """Fold every weight-norm parametrization into a plain ``weight`` (inference export), in place."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def fit_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (official g/v names, percli parametrization names, or folded weights) in ``model``'s layout."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, list[torch.Tensor | None]] = {}
    for key, t in state.items():
        suffix = next((s for s in _OFFICIAL if key.endswith(s)), None)
        if suffix is None:
            out[key] = t
        else:
            pairs.setdefault(key[: -len(suffix)], [None, None])[_OFFICIAL[suffix]] = t
    for prefix, (g, v) in pairs.items():
        if g is None or v is None:
            raise RuntimeError(f"checkpoint holds only one of the weight-norm pair of {prefix!r}")
        if prefix + ".weight" in own:
            out[prefix + ".weight"] = fold_weight_norm(g, v)
        else:
            out[prefix + _G], out[prefix + _V] = g, v
    for key in [k for k in out if k.endswith(".weight") and k not in own and k[:-7] + _V in own]:
        w = out.pop(key)
        out[key[:-7] + _G], out[key[:-7] + _V] = _norm(w), w
    return out


def official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state under the official names (``weight_g`` / ``weight_v``), as ``g_XXXXXXXX["generator"]``
    holds it; a folded model's weights are split again (g = per-output-channel norm, v = weight)."""
    out = {}
    for key, t in model.state_dict().items():
        if key.endswith(_G) or key.endswith(_V):
            out[key[: -len(_G)] + (".weight_g" if key.endswith(_G) else ".weight_v")] = t
        elif key.endswith(".weight"):
            out[key + "_g"], out[key + "_v"] = _norm(t), t
        else:
            out[key] = t
    return out


def read_generator_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a percli ``.safetensors`` file or an official ``g_*`` checkpoint (``torch.load`` with
    ``weights_only=True`` on the CPU: a pickle naming any non-tensor global is refused before unpickling)."""
    from percli.core.checkpoint import load_tensors, torch_load_weights

    path = Path(path)
    if path.suffix == ".safetensors":
        return load_tensors(path)
    ckpt = torch_load_weights(path)  # torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, not a HiFi-GAN generator state")
    if "generator" in ckpt:
        ckpt = ckpt["generator"]
    elif "mpd" in ckpt or "msd" in ckpt:
        raise ValueError(f"{path} is a HiFi-GAN discriminator/optimizer file (do_*); pass the generator g_*")
    return {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}


def load_official_state(model: HiFiGANGenerator, state_or_path: Mapping[str, torch.Tensor] | str | Path
                        ) -> LoadReport:
    """Load an official ``g_*`` file, a percli safetensors file or a mapping strictly (names converted by
    `fit_state`); raises naming missing, unexpected and misshapen keys."""
    if isinstance(state_or_path, str | Path):
        state = read_generator_state(state_or_path)
    else:
        state = dict(state_or_path.get("generator", state_or_path))
    official = any(k.endswith((".weight_g", ".weight_v")) for k in state)
    state = fit_state(model, state)
    check_fit(model, state, f"{model.arch} ({model.config})")
    model.load_state_dict(state)
    return LoadReport(source_format="official" if official else "percli")


register_loader(__name__)(load_official_state)

# --------------------------------------------------------------------------- GAN-free training losses

STFT_RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))  # (n_fft, hop, win)


def _pair(wave_hat: torch.Tensor, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(wave_hat.shape[-1], wave.shape[-1])  # the generator gives (frames) * hop >= the clip
    return wave_hat[..., :n].reshape(-1, n).float(), wave[..., :n].reshape(-1, n).float()


def mel_l1_loss(wave_hat: torch.Tensor, wave: torch.Tensor, mel_cfg: MelConfig = MelConfig()) -> torch.Tensor:
    """Mean L1 between the natural-log mels (`percli.core.mel.log_mel`) of the two waveforms."""
    wave_hat, wave = _pair(wave_hat, wave)
    return F.l1_loss(log_mel(wave_hat, mel_cfg), log_mel(wave, mel_cfg))


def _stft_mag(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    s = torch.stft(x, n_fft, hop, win, torch.hann_window(win, device=x.device), return_complex=True)
    return (s.real ** 2 + s.imag ** 2).clamp_min(1e-7).sqrt()


def multi_resolution_stft_loss(wave_hat: torch.Tensor, wave: torch.Tensor,
                               resolutions: Sequence[Sequence[int]] = STFT_RESOLUTIONS) -> torch.Tensor:
    """Parallel WaveGAN's loss: spectral convergence plus log-magnitude L1, averaged over resolutions."""
    wave_hat, wave = _pair(wave_hat, wave)
    total = wave.new_zeros(())
    for n_fft, hop, win in resolutions:
        m_hat, m = _stft_mag(wave_hat, n_fft, hop, win), _stft_mag(wave, n_fft, hop, win)
        sc = torch.linalg.norm(m - m_hat, dim=(-2, -1)) / torch.linalg.norm(m, dim=(-2, -1)).clamp_min(1e-7)
        total = total + sc.mean() + F.l1_loss(m_hat.log(), m.log())
    return total / len(resolutions)


def vocoder_loss(wave_hat: torch.Tensor, wave: torch.Tensor, mel_cfg: MelConfig = MelConfig(),
                 mel_weight: float = 45.0, stft_weight: float = 1.0,
                 resolutions: Sequence[Sequence[int]] = STFT_RESOLUTIONS) -> dict[str, torch.Tensor]:
    """``{"loss": mel_weight * mel_l1 + stft_weight * stft, "mel_l1", "stft"}`` (45: HiFi-GAN's mel weight)."""
    mel = mel_l1_loss(wave_hat, wave, mel_cfg)
    stft = multi_resolution_stft_loss(wave_hat, wave, resolutions)
    return {"loss": mel_weight * mel + stft_weight * stft, "mel_l1": mel, "stft": stft}


# --------------------------------------------------------------------------- registered variants

_V1 = dict(upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4], upsample_initial_channel=512,
           resblock="1", resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3)
_V3 = dict(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=256,
           resblock="2", resblock_kernel_sizes=[3, 5, 7], resblock_dilation_sizes=[[1, 2], [2, 6], [3, 12]])
_16K = dict(num_mels=64, sampling_rate=16000, upsample_rates=[5, 4, 4, 2], upsample_kernel_sizes=[10, 8, 8, 4])


def _build(arch: str, defaults: dict, kwargs: dict) -> HiFiGANGenerator:
    model = HiFiGANGenerator(**{**defaults, **kwargs})
    model.arch = arch
    return model


@register_model
def hifigan_v1(**kwargs) -> HiFiGANGenerator:
    """Official V1 (22.05 kHz, 80 mels, hop 256): 13.92M parameters."""
    return _build("hifigan_v1", _V1, kwargs)


@register_model
def hifigan_v2(**kwargs) -> HiFiGANGenerator:
    """Official V2: V1 with 128 initial channels, 0.92M parameters."""
    return _build("hifigan_v2", {**_V1, "upsample_initial_channel": 128}, kwargs)


@register_model
def hifigan_v3(**kwargs) -> HiFiGANGenerator:
    """Official V3: ResBlock2, upsampling 8 x 8 x 4, 1.46M parameters."""
    return _build("hifigan_v3", _V3, kwargs)


@register_model
def hifigan_16k_v1(**kwargs) -> HiFiGANGenerator:
    """V1 for percli's `MelConfig` (16 kHz, 64 mels, hop 160 = 5 x 4 x 4 x 2)."""
    return _build("hifigan_16k_v1", {**_V1, **_16K}, kwargs)


@register_model
def hifigan_16k_tiny(**kwargs) -> HiFiGANGenerator:
    """A CPU-trainable 16 kHz vocoder: 32 initial channels, ResBlock2 with kernels 3, 5."""
    return _build("hifigan_16k_tiny", {**_16K, "upsample_initial_channel": 32, "resblock": "2",
                                       "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 2], [2, 6]]},
                  kwargs)
