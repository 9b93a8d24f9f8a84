"""EnCodec as audiocraft builds it (SEANet encoder/decoder + residual vector quantizer).

This is the audio tokenizer of VoiceCraft: the released ``encodec_4cb2048_giga.th`` is an
audiocraft ``CompressionSolver`` checkpoint of the ``compression/encodec_audiogen_16khz`` recipe
(model ``encodec/encodec_large_nq4_s320``): 16 kHz mono, ``n_filters=64``, ratios ``8·5·4·2 = 320``
(50 frames/s), latent dimension 128, 4 codebooks of 2048 entries, non-causal, weight-norm convs,
ELU, one residual block per stage, 2 LSTM layers, constant padding. Module nesting follows
audiocraft@c5157b5 (the commit VoiceCraft pins), so the checkpoint's state dict loads by name:
``encoder.model.0.conv.conv.weight_g``, ``decoder.model.3.convtr.convtr.weight_v``,
``encoder.model.13.lstm.weight_ih_l0``, ``quantizer.vq.layers.3._codebook.embed``, ...

Codes are ``[B, K, T']`` int64 in ``[0, bins)``; ``decode`` returns ``T' * 320`` samples, without
trimming (as audiocraft's ``EncodecModel.decode``, which VoiceCraft calls).

Loading the release (see `read_audiocraft_checkpoint`): the ``.th`` pickles the Hydra/OmegaConf
config under ``xp.cfg``, which plain ``torch.load(weights_only=True)`` refuses. percli still loads
it with torch's restricted unpickler, allowing exactly the globals such a config pickles (OmegaConf's
containers, nodes and metadata as inert stand-ins that store their state and run nothing, plus the
plain types their metadata names), and takes ``best_state.model`` (the weights audiocraft's
``model_from_checkpoint`` uses). A file naming any other global is refused before anything of it is
unpickled.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import check_fit, plain

# --------------------------------------------------------------------------- convolutions


class WeightNormConv1d(nn.Module):
    """A (transposed) 1-d convolution with weight ``g * v / ||v||``, norm over all dims but 0.

    The parameters are stored as ``torch.nn.utils.weight_norm`` (which audiocraft uses) names
    them: ``weight_g`` of shape ``[w.shape[0], 1, 1]`` and ``weight_v``. For a transposed conv
    dim 0 is the input channels, so there ``weight_g`` is ``[in, 1, 1]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, transposed: bool = False):
        super().__init__()
        conv_cls = nn.ConvTranspose1d if transposed else nn.Conv1d
        init = conv_cls(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)
        self.transposed = transposed
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.bias = nn.Parameter(init.bias.detach().clone())  # first: the official key order
        self.weight_g = nn.Parameter(init.weight.detach().norm(dim=(1, 2), keepdim=True))
        self.weight_v = nn.Parameter(init.weight.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(1, 2), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose1d(x, self.weight, self.bias, stride=self.stride)
        return F.conv1d(x, self.weight, self.bias, stride=self.stride, dilation=self.dilation)


class NormConv(nn.Module):
    """audiocraft's NormConv1d / NormConvTranspose1d: one more wrapper level in every key name
    (``.conv.conv.`` / ``.convtr.convtr.``); its weight-norm variant has no normalisation module."""

    def __init__(self, attr: str, conv: WeightNormConv1d):
        super().__init__()
        self.attr = attr
        setattr(self, attr, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.attr)(x)


class StreamableConv1d(nn.Module):
    """Conv1d padded so that ``ceil(T / stride)`` frames come out and the last window is full.

    Non-causal: ``kernel_eff - stride`` padding split with the extra sample on the left (odd
    strides), plus right padding to complete the last window. Causal: all of it on the left.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, causal: bool = False):
        super().__init__()
        self.conv = NormConv("conv", WeightNormConv1d(in_channels, out_channels, kernel_size, stride, dilation))
        self.causal = causal
        self.kernel_eff = (kernel_size - 1) * dilation + 1
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding_total = self.kernel_eff - self.stride
        length = x.shape[-1]
        n_frames = math.ceil((length - self.kernel_eff + padding_total) / self.stride + 1)
        extra = (n_frames - 1) * self.stride + self.kernel_eff - padding_total - length
        if self.causal:
            left, right = padding_total, extra
        else:
            left, right = padding_total - padding_total // 2, padding_total // 2 + extra
        return self.conv(F.pad(x, (left, right)))  # constant padding: the config's pad_mode


class StreamableConvTranspose1d(nn.Module):
    """Transposed conv with its ``kernel - stride`` overhang trimmed: ``T`` frames -> ``T * stride``.

    Non-causal trims the extra sample on the left; causal trims everything on the right
    (audiocraft's ``trim_right_ratio=1``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, causal: bool = False):
        super().__init__()
        self.convtr = NormConv("convtr", WeightNormConv1d(in_channels, out_channels, kernel_size, stride,
                                                          transposed=True))
        self.causal = causal
        self.padding_total = kernel_size - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convtr(x)
        right = self.padding_total if self.causal else self.padding_total // 2
        left = self.padding_total - right
        return y[..., left: y.shape[-1] - right]


# --------------------------------------------------------------------------- SEANet


class SEANetResnetBlock(nn.Module):
    """``x + conv1(ELU(conv_k(ELU(x))))`` with a ``dim // compress`` bottleneck (identity skip)."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int, causal: bool):
        super().__init__()
        hidden = dim // compress
        self.block = nn.Sequential(
            nn.ELU(), StreamableConv1d(dim, hidden, kernel_size, dilation=dilation, causal=causal),
            nn.ELU(), StreamableConv1d(hidden, dim, 1, causal=causal),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class StreamableLSTM(nn.Module):
    """Unidirectional LSTM over time with a skip connection, on conv layout ``[B, C, T]``."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)  # [B, C, T] -> [T, B, C]
        y, _ = self.lstm(x)
        return (y + x).permute(1, 2, 0)  # [T, B, C] -> [B, C, T]


def _residual_blocks(dim: int, n_residual_layers: int, kernel_size: int, dilation_base: int, compress: int,
                     causal: bool) -> list[nn.Module]:
    return [SEANetResnetBlock(dim, kernel_size, dilation_base ** j, compress, causal)
            for j in range(n_residual_layers)]


class SEANetEncoder(nn.Module):
    """Waveform ``[B, channels, T]`` -> latent ``[B, dimension, ceil(T / hop)]``.

    ``ratios`` are given in decoder order (as audiocraft does) and applied reversed: 2·4·5·8.
    Width doubles at each downsampling (kernel ``2r``, stride ``r``): 64 -> 1024 for 4 stages.
    """

    def __init__(self, channels: int, dimension: int, n_filters: int, n_residual_layers: int, ratios: Sequence[int],
                 kernel_size: int, last_kernel_size: int, residual_kernel_size: int, dilation_base: int,
                 causal: bool, compress: int, lstm: int):
        super().__init__()
        layers: list[nn.Module] = [StreamableConv1d(channels, n_filters, kernel_size, causal=causal)]
        width = n_filters
        for ratio in reversed(ratios):
            layers += _residual_blocks(width, n_residual_layers, residual_kernel_size, dilation_base, compress, causal)
            layers += [nn.ELU(), StreamableConv1d(width, width * 2, ratio * 2, stride=ratio, causal=causal)]
            width *= 2
        if lstm:
            layers.append(StreamableLSTM(width, lstm))
        layers += [nn.ELU(), StreamableConv1d(width, dimension, last_kernel_size, causal=causal)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SEANetDecoder(nn.Module):
    """Latent ``[B, dimension, T']`` -> waveform ``[B, channels, T' * hop]``; the encoder mirrored."""

    def __init__(self, channels: int, dimension: int, n_filters: int, n_residual_layers: int, ratios: Sequence[int],
                 kernel_size: int, last_kernel_size: int, residual_kernel_size: int, dilation_base: int,
                 causal: bool, compress: int, lstm: int):
        super().__init__()
        width = n_filters * 2 ** len(ratios)
        layers: list[nn.Module] = [StreamableConv1d(dimension, width, kernel_size, causal=causal)]
        if lstm:
            layers.append(StreamableLSTM(width, lstm))
        for ratio in ratios:
            layers += [nn.ELU(), StreamableConvTranspose1d(width, width // 2, ratio * 2, ratio, causal=causal)]
            width //= 2
            layers += _residual_blocks(width, n_residual_layers, residual_kernel_size, dilation_base, compress, causal)
        layers += [nn.ELU(), StreamableConv1d(n_filters, channels, last_kernel_size, causal=causal)]
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)


# --------------------------------------------------------------------------- quantizer


class EuclideanCodebook(nn.Module):
    """One codebook: each vector maps to its nearest entry in squared Euclidean distance.

    The buffers are audiocraft's (the EMA training state comes with the checkpoint): ``inited``
    [1], ``cluster_size`` [bins], ``embed`` [bins, dim], ``embed_avg`` [bins, dim]. audiocraft
    starts ``embed`` at zero and fills it by k-means on the first training batch; a random-init
    codec here draws the entries instead, so its codes are spread out before any training.
    """

    def __init__(self, dim: int, bins: int):
        super().__init__()
        embed = torch.empty(bins, dim)
        nn.init.kaiming_uniform_(embed)
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(bins))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` -> nearest indices ``[...]`` (ties go to the lowest index)."""
        flat = x.reshape(-1, x.shape[-1])  # [..., D] -> [N, D]
        # -||x - e||^2 summed in audiocraft's order, ||x||^2 included: dropping it (the same for every entry)
        # rounds differently and picks another entry at near-ties (1 frame in 200,000 of random 128-d data)
        embed = self.embed.t()  # [D, bins]
        dist = -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed + embed.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices.view(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)  # [...] -> [..., dim]


class VectorQuantization(nn.Module):
    """One quantizer stage; holds ``_codebook`` as audiocraft names it (no projection: codebook dim = dim)."""

    def __init__(self, dim: int, bins: int):
        super().__init__()
        self._codebook = EuclideanCodebook(dim, bins)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._codebook.encode(x.transpose(1, 2))  # [B, D, T] -> [B, T, D] -> codes [B, T]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self._codebook.decode(codes).transpose(1, 2)  # [B, T] -> [B, T, D] -> [B, D, T]


class ResidualVectorQuantization(nn.Module):
    """Stage ``k`` quantizes what stages ``0..k-1`` left: ``r_0 = x``, ``r_{k+1} = r_k - q_k(r_k)``."""

    def __init__(self, dim: int, bins: int, n_q: int):
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(dim, bins) for _ in range(n_q))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_with_residuals(x)[0]

    def encode_with_residuals(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Codes ``[B, K, T]``, and per stage the residual it quantized and its quantized value (``[B, D, T]``)."""
        residual, codes, residuals, quantized = x, [], [], []
        for layer in self.layers:
            idx = layer.encode(residual)
            q = layer.decode(idx)
            codes.append(idx)
            residuals.append(residual)
            quantized.append(q)
            residual = residual - q
        return torch.stack(codes, dim=1), residuals, quantized  # K x [B, T] -> [B, K, T]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return sum(layer.decode(codes[:, k]) for k, layer in enumerate(self.layers[: codes.shape[1]]))


class ResidualVectorQuantizer(nn.Module):
    """audiocraft's quantizer wrapper: latent ``[B, D, T]`` <-> codes ``[B, K, T]`` via ``vq``."""

    def __init__(self, dimension: int, n_q: int, bins: int):
        super().__init__()
        self.n_q, self.bins = n_q, bins
        self.vq = ResidualVectorQuantization(dimension, bins, n_q)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(x)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vq.decode(codes)


# --------------------------------------------------------------------------- model


class EncodecModel(nn.Module):
    """SEANet encoder -> residual VQ -> SEANet decoder; defaults are VoiceCraft's 16 kHz codec."""

    def __init__(
        self,
        sample_rate: int = 16000,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 64,
        n_residual_layers: int = 1,
        ratios: Sequence[int] = (8, 5, 4, 2),
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        causal: bool = False,
        compress: int = 2,
        lstm: int = 2,
        n_q: int = 4,
        bins: int = 2048,
    ):
        args = dict(locals())  # before anything else is bound: exactly the constructor arguments
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        seanet = dict(channels=channels, dimension=dimension, n_filters=n_filters,
                      n_residual_layers=n_residual_layers, ratios=list(ratios), kernel_size=kernel_size,
                      last_kernel_size=last_kernel_size, residual_kernel_size=residual_kernel_size,
                      dilation_base=dilation_base, causal=causal, compress=compress, lstm=lstm)
        self.encoder = SEANetEncoder(**seanet)
        self.decoder = SEANetDecoder(**seanet)
        self.quantizer = ResidualVectorQuantizer(dimension, n_q, bins)
        self.sample_rate, self.channels = sample_rate, channels
        self.hop_length = math.prod(ratios)
        self.frame_rate = sample_rate // self.hop_length  # audiocraft's integer frame rate

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and audio format, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": {"sample_rate": self.sample_rate, "channels": self.channels,
                               "frame_rate": self.frame_rate}}

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``[B, channels, T]`` at ``sample_rate`` -> codes ``[B, n_q, ceil(T / hop)]`` (int64)."""
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise ValueError(f"expected a waveform [batch, {self.channels}, samples], got shape {tuple(wav.shape)}; "
                             f"resample to {self.sample_rate} Hz and add the channel axis with wav[:, None]")
        return self.quantizer.encode(self.encoder(wav))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T']`` (``K <= n_q``) -> waveform ``[B, channels, T' * hop]``, not trimmed."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.quantizer.n_q:
            raise ValueError(f"expected codes [batch, 1..{self.quantizer.n_q}, frames], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.quantizer.bins):
            raise ValueError(f"codes must lie in [0, {self.quantizer.bins}); got "
                             f"[{int(codes.min())}, {int(codes.max())}] (strip special tokens first)")
        return self.decoder(self.decode_latent(codes))

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T']`` -> the quantized latent ``[B, dimension, T']`` (the sum of the K entries)."""
        return self.quantizer.decode(codes)

    @property
    def bandwidth(self) -> float:
        """Kilobits per second of the codes (audiocraft's ``QuantizedResult.bandwidth``)."""
        return self.quantizer.n_q * math.log2(self.quantizer.bins) * self.frame_rate / 1000

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Codec reconstruction, trimmed to the input length."""
        return self.decode(self.encode(wav))[..., : wav.shape[-1]]


# --------------------------------------------------------------------------- checkpoints


# audiocraft settings percli implements one way only: (section, key) -> the value it must have
_FIXED_SETTINGS = {
    ("seanet", "activation"): "ELU", ("seanet", "activation_params"): {"alpha": 1.0},
    ("seanet", "norm"): "weight_norm", ("seanet", "norm_params"): {}, ("seanet", "pad_mode"): "constant",
    ("seanet", "true_skip"): True, ("seanet", "disable_norm_outer_blocks"): 0,
    ("decoder", "final_activation"): None, ("decoder", "final_activation_params"): None,
    ("encodec", "renormalize"): False, ("encodec", "autoencoder"): "seanet", ("encodec", "quantizer"): "rvq",
}


def kwargs_from_audiocraft_config(cfg: Mapping) -> dict:
    """`EncodecModel` arguments from an audiocraft compression config (its ``encodec``, ``seanet``, ``rvq``
    sections, as ``xp.cfg`` holds them and ``builders.get_compression_model`` reads them).

    ``seanet.encoder`` / ``seanet.decoder`` override the shared SEANet settings for their side; the RVQ's
    training settings (EMA decay, k-means init, dead-code threshold, dropout) do not change inference and
    are ignored. A setting percli implements only one way (ELU, weight norm, zero padding, identity skip,
    no renormalisation...) must have that value, else a ValueError names it.
    """
    sections = {name: dict(cfg.get(name) or {}) for name in ("encodec", "seanet", "rvq")}
    seanet = sections["seanet"]
    sides = {"encoder": seanet.pop("encoder", None) or {}, "decoder": seanet.pop("decoder", None) or {}}
    sections["encoder"], sections["decoder"] = {**seanet, **sides["encoder"]}, {**seanet, **sides["decoder"]}
    wrong = [f"{name}.{key}={sections[name][key]!r} (percli: {want!r})" for (name, key), want in _FIXED_SETTINGS.items()
             if key in sections[name] and plain(sections[name][key]) != want]
    names = set(inspect.signature(EncodecModel).parameters)
    wrong += [f"seanet.{side}.{key}={value!r} (percli builds both sides from seanet.{key})"
              for side in ("encoder", "decoder") for key, value in sides[side].items()
              if key in names and plain(value) != plain(seanet.get(key))]
    causal = bool(sections["encodec"].get("causal", seanet.get("causal", False)))
    if causal and sections["decoder"].get("trim_right_ratio", 1.0) != 1.0:
        wrong.append(f"decoder.trim_right_ratio={sections['decoder']['trim_right_ratio']!r} (percli: 1.0)")
    channels = sections["encodec"].get("channels", seanet.get("channels", 1))
    if seanet.get("channels", channels) != channels:
        wrong.append(f"seanet.channels={seanet['channels']} differs from encodec.channels={channels}")
    if wrong:
        raise ValueError(f"audiocraft codec settings percli does not implement: {', '.join(wrong)}")
    kwargs = {k: plain(v) for k, v in seanet.items() if k in names}
    kwargs.update(channels=channels, causal=causal)
    if "sample_rate" in sections["encodec"]:
        kwargs["sample_rate"] = sections["encodec"]["sample_rate"]
    kwargs.update({k: sections["rvq"][k] for k in ("n_q", "bins") if k in sections["rvq"]})
    return kwargs


def read_audiocraft_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The codec tensors of an audiocraft checkpoint (``.th``), read without running pickled code.

    torch's ``weights_only`` unpickler does the reading, allowing besides its default safe types
    only the globals of a pickled experiment config (`percli.core.pickled_config`: the release's
    ``xp.cfg`` needs OmegaConf's ``DictConfig``, ``ListConfig``, ``AnyNode``, ``ContainerMetadata``,
    ``Metadata`` and ``typing.Any`` as inert stand-ins; ``dict``, ``list``, ``int`` and
    ``collections.defaultdict`` as themselves). A file naming any other global raises
    `percli.core.checkpoint.RefusedPickleError` (a ValueError and an ``UnpicklingError``) before
    anything is unpickled. Solver checkpoints give
    ``best_state["model"]`` (what ``CompressionSolver.model_from_checkpoint`` loads, not the
    last-epoch ``model``); exported ones (``{"xp.cfg": yaml, "model": ...}``) give ``model``.
    """
    from percli.core.checkpoint import torch_load_weights
    from percli.core.pickled_config import config_globals

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no codec checkpoint at {path}; download encodec_4cb2048_giga.th from "
                                "https://huggingface.co/pyp1/VoiceCraft and pass its path")
    ckpt = torch_load_weights(path, config_globals())
    if not isinstance(ckpt, Mapping):
        raise RuntimeError(f"{path} is not an audiocraft codec checkpoint: no best_state.model / model state dict")
    if "best_state" in ckpt:
        ckpt = ckpt["best_state"].get("model") if isinstance(ckpt["best_state"], Mapping) else None
    elif "model" in ckpt:
        ckpt = ckpt["model"]
    if not isinstance(ckpt, Mapping):
        raise RuntimeError(f"{path} is not an audiocraft codec checkpoint: no best_state.model / model state dict")
    return {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}


def load_official_state(model: EncodecModel, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> None:
    """Load an audiocraft codec state strictly: a ``.th``/``.pt`` checkpoint, a ``.safetensors`` file
    (percli's or a converted one) or a mapping. Raises naming missing, unexpected and misshapen keys."""
    if isinstance(state_or_path, str | Path):
        path = Path(state_or_path)
        if path.suffix == ".safetensors":
            from percli.core.checkpoint import load_tensors

            state = load_tensors(path)
        else:
            state = read_audiocraft_checkpoint(path)
    else:
        state = dict(state_or_path)
    check_fit(model, state, f"{model.arch} ({model.config})")
    model.load_state_dict(state)


# --------------------------------------------------------------------------- registered variants


@register_model
def encodec_16khz_4cb2048(**kwargs) -> EncodecModel:
    """VoiceCraft's codec (``encodec_4cb2048_giga.th``): 16 kHz, 50 Hz, 4 x 2048 codes."""
    model = EncodecModel(**kwargs)
    model.arch = "encodec_16khz_4cb2048"
    return model


register_loader(__name__)(load_official_state)
