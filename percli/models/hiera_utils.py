"""Token geometry for Hiera (unroll / reroll, mask units, random masking, MAE patchify) and
checkpoint plumbing (official / timm key names, loading official files).

Hiera never convolves or shifts windows. Instead the token sequence is permuted once, right after
the patch embedding ("unroll"), so that

* every 2x2 (or 1x2x2, ...) query pooling is a reshape followed by a max, and
* every mask unit (the window used both for local attention and for MAE masking) is a contiguous
  run of the sequence, so dropping masked units and windowed attention are reshapes too.

Layout (2-D shown; any number of dims works). With a token grid [H, W] and an unroll schedule of
strides s_1, ..., s_k (one per stage transition, product P), write the row index in mixed radix,
``h = u_y * P_y + d_ky * (S_{k-1,y}...S_1y) + ... + d_1y`` with ``d_jy`` in ``[0, S_jy)``, and the
same for ``w``. The unrolled order is

    (u_y, u_x, d_ky, d_kx, ..., d_2y, d_2x, d_1y, d_1x)        slowest -> fastest

so pooling with s_1 is a max over the ``S_1y*S_1x`` fastest-varying neighbours, after which the
sequence is in unrolled order for the schedule s_2..s_k; and a mask unit of size s_1*...*s_j is the
run of tokens sharing all digits above d_j. The official code orders the same tokens as
``(d_1, ..., d_k, u)``: units strided over the sequence. Putting units first makes windowed
attention and dropping masked units free of copies. Every public output (rerolled maps, masked
token outputs) is identical to the official one; `to_official_order` converts token sequences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models.common import LoadReport, check_fit, read_state

Schedule = Sequence[Sequence[int]]


def _grid_after(size: Sequence[int], schedule: Schedule) -> list[int]:
    """Grid left after dividing `size` by every stride of `schedule`."""
    base = list(size)
    for strides in schedule:
        for d, s in enumerate(strides):
            if base[d] % s:
                raise ValueError(f"token grid {list(size)} is not divisible by the strides {list(schedule)}")
            base[d] //= s
    return base


def _split_digits(x: torch.Tensor, lead: Sequence[int], schedule: Schedule, ndim: int) -> torch.Tensor:
    """View unrolled tokens [B, N, C] as [B, *lead, d_k digits..., d_1 digits, C] (d_1 fastest)."""
    digits = [s[d] for s in reversed(schedule) for d in range(ndim)]
    return x.view(x.shape[0], *lead, *digits, x.shape[-1])


def _digit_axes(first: int, dim: int, k: int, ndim: int) -> list[int]:
    """Axes of spatial dim `dim`'s digits d_k..d_1 (most significant first) in a `_split_digits` view."""
    return [first + j * ndim + dim for j in range(k)]


def unroll(x: torch.Tensor, size: Sequence[int], schedule: Schedule) -> torch.Tensor:
    """Reorder raster-order tokens into Hiera's unrolled order (see module docstring).

    Args:
        x: tokens in raster order, [B, N, C] with N = prod(size) (any dtype).
        size: token grid, e.g. [H, W] or [T, H, W].
        schedule: strides in the order they are pooled, e.g. [(2, 2)] * 3.

    Returns:
        The same tokens, [B, N, C], in unrolled order.
    """
    B, N, C = x.shape
    D, k = len(size), len(schedule)
    base = _grid_after(size, schedule)
    # Split every spatial dim into its digits, most significant first:
    # [B, N, C] -> [B, (u_y, d_ky, ..., d_1y), (u_x, d_kx, ..., d_1x), C]
    per_dim = [[base[d]] + [schedule[j][d] for j in reversed(range(k))] for d in range(D)]
    x = x.view(B, *[n for dims in per_dim for n in dims], C)
    axis = [[1 + d * (k + 1) + i for i in range(k + 1)] for d in range(D)]  # axis[d][0] = u_d
    order = [0] + [axis[d][0] for d in range(D)] + [axis[d][i] for i in range(1, k + 1) for d in range(D)]
    # -> [B, u_y, u_x, d_ky, d_kx, ..., d_1y, d_1x, C] -> [B, N, C]
    return x.permute(*order, x.dim() - 1).reshape(B, N, C)


def reroll(x: torch.Tensor, size: Sequence[int], schedule: Schedule) -> torch.Tensor:
    """Bring unrolled tokens back to a raster grid.

    Args:
        x: unrolled tokens [B, N, C].
        size: current token grid (after the poolings done so far).
        schedule: strides not pooled yet.

    Returns:
        [B, *size, C].
    """
    D, k = len(size), len(schedule)
    base = _grid_after(size, schedule)
    # [B, N, C] -> [B, u_y, u_x, d_ky, d_kx, ..., d_1y, d_1x, C]
    x = _split_digits(x, base, schedule, D)
    order = [0]
    for d in range(D):
        order += [1 + d] + _digit_axes(1 + D, d, k, D)
    # -> [B, (u_y, d_ky..d_1y), (u_x, d_kx..d_1x), C] -> [B, H, W, C]
    return x.permute(*order, x.dim() - 1).reshape(x.shape[0], *size, x.shape[-1])


def reroll_units(x: torch.Tensor, unit_schedule: Schedule, ndim: int) -> torch.Tensor:
    """Group unrolled tokens by mask unit, raster order inside each unit.

    Args:
        x: unrolled tokens [B, N, C] (all units, or only the kept ones).
        unit_schedule: strides not pooled yet *inside* a unit (empty: one token per unit).
        ndim: number of spatial dims.

    Returns:
        [B, #units, *unit_shape, C], unit_shape[d] = prod of `unit_schedule` strides along d.
    """
    B, N, C = x.shape
    k = len(unit_schedule)
    unit = [math.prod(s[d] for s in unit_schedule) for d in range(ndim)]
    units = N // math.prod(unit)
    # [B, N, C] -> [B, units, d_jy, d_jx, ..., d_1y, d_1x, C]
    x = _split_digits(x, [units], unit_schedule, ndim)
    order = [0, 1] + [a for d in range(ndim) for a in _digit_axes(2, d, k, ndim)]
    # -> [B, units, (d_jy..d_1y), (d_jx..d_1x), C] -> [B, units, *unit, C]
    return x.permute(*order, x.dim() - 1).reshape(B, units, *unit, C)


def undo_windowing(x: torch.Tensor, size: Sequence[int], window: Sequence[int]) -> torch.Tensor:
    """Stitch raster-ordered windows back into a raster grid.

    Args:
        x: [B, #windows, *window, C], windows in raster order over the window grid.
        size: full grid, e.g. [H, W] (each a multiple of the window).
        window: window shape, e.g. [8, 8].

    Returns:
        [B, *size, C].
    """
    B, C = x.shape[0], x.shape[-1]
    D = len(size)
    counts = [s // w for s, w in zip(size, window, strict=True)]
    # [B, #Wy*#Wx, Wy, Wx, C] -> [B, #Wy, #Wx, Wy, Wx, C]
    x = x.reshape(B, *counts, *window, C)
    order = [0] + [a for d in range(D) for a in (1 + d, 1 + D + d)]
    # -> [B, #Wy, Wy, #Wx, Wx, C] -> [B, H, W, C]
    return x.permute(*order, 2 * D + 1).reshape(B, *size, C)


def pool_unrolled(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool unrolled tokens by a flattened stride (4 for 2x2): [B, N, C] -> [B, N / stride, C]."""
    if stride == 1:
        return x
    # the pooled neighbours are the `stride` fastest-varying tokens: [B, N/stride, stride, C]
    return x.view(x.shape[0], -1, stride, x.shape[-1]).amax(dim=2)


def unit_order(mask_shape: Sequence[int], outer_schedule: Schedule) -> torch.Tensor | None:
    """Raster index of the mask unit at each unit position of the unrolled sequence.

    When a mask unit is smaller than the unrolled unit (the strides in `outer_schedule` split
    the unit grid further), units are not in raster order in the sequence. Returns None when
    they are (every official configuration).
    """
    if not outer_schedule:
        return None
    ids = torch.arange(math.prod(mask_shape)).view(1, -1, 1)
    return unroll(ids, mask_shape, outer_schedule).flatten()


def drop_masked_units(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep only the tokens of kept mask units.

    Args:
        x: unrolled tokens [B, N, C], N = tokens_per_unit * #units.
        mask: bool [B, #units] in sequence order, True = keep; every row keeps as many units.

    Returns:
        [B, tokens_per_unit * #kept, C], still unrolled.
    """
    B, N, C = x.shape
    units = mask.shape[1]
    # [B, N, C] -> [B, units, per_unit, C] (a view: units are contiguous runs); boolean indexing
    # walks (b, unit) in order, so kept units keep their order -> [B * kept, per_unit, C]
    return x.view(B, units, N // units, C)[mask].view(B, -1, C)


def to_official_order(x: torch.Tensor, units: int) -> torch.Tensor:
    """Unit-major tokens [B, N, C] -> the official order (unit index fastest), [B, N, C]."""
    B, N, C = x.shape
    # [B, units, per_unit, C] -> [B, per_unit, units, C]
    return x.view(B, units, N // units, C).transpose(1, 2).reshape(B, N, C)


def mask_to_input_mask(mask: torch.Tensor, mask_shape: Sequence[int], input_shape: Sequence[int]) -> torch.Tensor:
    """Expand a mask-unit mask to the input's resolution, for zeroing masked pixels before the conv.

    The patch-embedding kernel overlaps neighbouring units (7x7 kernel, stride 4), so masked
    pixels must be zeroed, not just their tokens dropped, or they would leak into kept tokens.

    Args:
        mask: [B, #units] (True = keep), raster order over `mask_shape`.
        mask_shape: grid of mask units, e.g. [#MUy, #MUx].
        input_shape: spatial size of the input, e.g. [H, W].

    Returns:
        bool [B, 1, *input_shape].
    """
    mask = mask.view(mask.shape[0], 1, *mask_shape)
    # nearest resize as the official code does; it also covers sizes that are not exact multiples
    return F.interpolate(mask.float(), size=list(input_shape)).bool()


def random_unit_mask(
    batch: int,
    num_units: int,
    mask_ratio: float,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw an MAE mask over mask units: the `int(num_units * (1 - mask_ratio))` units with the
    smallest noise are kept, the rest masked (the official rule).

    Args:
        batch: batch size.
        num_units: number of mask units per sample.
        mask_ratio: fraction to drop.
        noise: optional [B, num_units] noise (replays a recorded draw exactly).
        generator: optional torch.Generator for the noise when `noise` is not given.
        device: device of the result.

    Returns:
        bool [B, num_units], True = keep (the opposite of the original MAE convention).
    """
    num_keep = int(num_units * (1 - mask_ratio))
    if noise is None:
        gen_device = generator.device if generator is not None else device
        noise = torch.rand(batch, num_units, generator=generator, device=gen_device)
    if tuple(noise.shape) != (batch, num_units):
        raise ValueError(f"noise must be [{batch}, {num_units}], got {list(noise.shape)}")
    noise = noise.to(device) if device is not None else noise
    order = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    mask = torch.zeros(batch, num_units, dtype=torch.bool, device=noise.device)
    return mask.scatter_(1, order[:, :num_keep], True)


def patchify_image(imgs: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), C*p*p], channel-major inside a patch (official 2-D label order)."""
    B, C, H, W = imgs.shape
    h, w = H // patch, W // patch
    # [B, C, h, p, w, p] -> [B, h, w, C, p, p]
    x = imgs.reshape(B, C, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, h * w, C * patch * patch)


def unpatchify_image(patches: torch.Tensor, patch: int, size: Sequence[int], channels: int = 3) -> torch.Tensor:
    """Inverse of `patchify_image`: [B, N, C*p*p] -> [B, C, H, W] for an image of `size` = [H, W]."""
    B = patches.shape[0]
    h, w = size[0] // patch, size[1] // patch
    # [B, h, w, C, p, p] -> [B, C, h, p, w, p]
    x = patches.reshape(B, h, w, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, channels, h * patch, w * patch)


def patchify_video(vid: torch.Tensor, patch: int, time_stride: int) -> torch.Tensor:
    """Time-strided video labels: keep the first frame of each temporal token, then patchify.

    [B, C, T, H, W] -> [B, (T/ts)*(H/p)*(W/p), p*p*C], channel-minor inside a patch (the official
    3-D label order, which differs from the 2-D one).
    """
    vid = vid[:, :, ::time_stride]
    B, C, T, H, W = vid.shape
    h, w = H // patch, W // patch
    # [B, C, T, h, p, w, p] -> [B, T, h, w, p, p, C]
    x = vid.reshape(B, C, T, h, patch, w, patch).permute(0, 2, 3, 5, 4, 6, 1)
    return x.reshape(B, T * h * w, patch * patch * C)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch pixel normalisation of MAE targets (unbiased variance, eps inside the sqrt)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


# --------------------------------------------------------------------------- checkpoints

# Tensors only the MAE has; a classifier built from an MAE checkpoint drops them.
MAE_ONLY_PREFIXES = ("encoder_norm.", "multi_scale_fusion_heads.", "decoder_", "mask_token")
_HEAD = ("head.projection.weight", "head.projection.bias")


def _renamed(key: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_timm_to_official(state: Mapping[str, torch.Tensor], mae: bool = False) -> dict[str, torch.Tensor]:
    """timm `hiera_*` names -> official names.

    Args:
        state: timm state dict (timm's ``head.norm`` is the encoder's final norm).
        mae: target an MAE model, where that norm is ``encoder_norm`` (timm ``.mae`` weights).
    """
    if any(k.startswith("pos_embed_win") for k in state):
        raise ValueError("abs-win Hiera (timm *_abswin_*) is not the official architecture")
    renames = {"head.fc.": "head.projection.", "head.norm.": "encoder_norm." if mae else "norm."}
    return {("pos_embed" if k == "pos_embed_abs" else _renamed(k, renames)): v for k, v in state.items()}


def convert_official_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> timm `hiera_*` names; MAE decoder/fusion tensors (absent in timm) are dropped."""
    renames = {"encoder_norm.": "head.norm.", "norm.": "head.norm.", "head.projection.": "head.fc."}
    return {_renamed(k, renames): v for k, v in state.items()
            if k.startswith("encoder_norm.") or not k.startswith(MAE_ONLY_PREFIXES)}


def load_official_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """Load official (or timm) Hiera weights into a percli Hiera / MAE, strictly except as documented.

    Handles ``{"model_state": ...}`` wrappers, .pth (loaded with ``weights_only=True``) and
    .safetensors files, timm key names, MAE checkpoints into a classifier (MAE-only tensors
    dropped, ``norm`` and ``head`` left at init) and another ``num_classes`` (head dropped).
    Anything else that does not fit raises, naming the keys.
    """
    state = read_state(state_or_path)
    is_mae_model = hasattr(model, "decoder_pred")
    report = LoadReport()
    if any(k.startswith(("head.fc.", "head.norm.")) for k in state):
        state, report.source_format = convert_timm_to_official(state, mae=is_mae_model), "timm"
    own = model.state_dict()
    from_mae = any(k.startswith(MAE_ONLY_PREFIXES) for k in state)
    if from_mae and not is_mae_model:
        report.dropped = sorted(k for k in state if k.startswith(MAE_ONLY_PREFIXES))
    if _HEAD[0] in state and _HEAD[0] in own and state[_HEAD[0]].shape != own[_HEAD[0]].shape:
        report.dropped += list(_HEAD)
        report.head_reset = True
    state = {k: v for k, v in state.items() if k not in report.dropped}
    tolerated: tuple[str, ...] = ()
    if _HEAD[0] not in state:
        tolerated += ("head.",)  # new num_classes, or an encoder-only checkpoint
    if from_mae and not is_mae_model:
        tolerated += ("norm.",)  # an MAE has no pretrained final norm for the classifier
    report.missing = check_fit(model, state, type(model).__name__, tolerated=tolerated)
    model.load_state_dict(state, strict=False)
    return report
