"""Image and video transforms for Hiera MAE pretraining and classification finetuning.

Recipes follow the Hiera training code (``dbolya/hiera@v0.2.0``) and MAE: pretraining uses only a
RandomResizedCrop(0.2-1, bicubic) and a flip; finetuning adds RandAugment ``rand-m9-mstd0.5-inc1``,
random erasing 0.25 and batch-level mixup 0.8 / cutmix 1.0 with label smoothing 0.1; evaluation
resizes to ``input_size / crop_pct`` and centre-crops.

All randomness comes from torch's global RNG (torchvision.transforms.v2 and the code below), which
the engine seeds per sample, so augmentation is reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Hiera video models: ImageNet mean and 0.225 for every channel, as in SlowFast/MAE-ST. The official
# example notebook's (0.225, 0.225, 0.255) is a typo (facebookresearch/hiera PR #47).
HIERA_VIDEO_MEAN: tuple[float, float, float] = IMAGENET_MEAN
HIERA_VIDEO_STD: tuple[float, float, float] = (0.225, 0.225, 0.225)

_BICUBIC = v2.InterpolationMode.BICUBIC


def _to_normalized_float(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def mae_transform(
    input_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """MAE pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic), flip, normalise.

    Args:
        input_size: Side of the square output.
        mean: Per-channel mean for normalisation.
        std: Per-channel std for normalisation.

    Returns:
        A callable PIL image (or uint8 tensor) -> FloatTensor[3, input_size, input_size].
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(input_size, scale=(0.2, 1.0), interpolation=_BICUBIC),
            v2.RandomHorizontalFlip(),
            *_to_normalized_float(mean, std),
        ]
    )


class NoisyMagnitudeRandAugment:
    """torchvision RandAugment with timm's per-op Gaussian magnitude noise (``mstd``).

    torchvision draws one fixed magnitude index; timm draws ``N(m, mstd)`` clipped to
    ``[0, mmax]`` for every op. We emulate that by running a one-op torchvision RandAugment
    ``num_ops`` times on a 0-10 scale with 0.1 resolution (101 bins), setting its magnitude
    before each op. The noise comes from torch's global RNG.

    Args:
        num_ops: Ops applied per image (timm ``n``).
        magnitude: Mean magnitude on timm's 0-10 scale (timm ``m``).
        magnitude_std: Std of the magnitude noise (timm ``mstd``); 0 disables it.
        magnitude_max: Upper clip of the noisy magnitude (timm ``mmax``).
        fill: Fill colour for pixels uncovered by geometric ops.
    """

    _STEPS_PER_UNIT = 10  # 0.1 magnitude resolution

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.5,
        magnitude_max: float = 10.0,
        fill: Sequence[int] | None = None,
    ) -> None:
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.magnitude_max = magnitude_max
        # Torchvision's tensor kernels for rotate/affine support only nearest and bilinear, so tensors
        # get bilinear; PIL images (what our datasets pass) get timm's bicubic.
        self._one_op_pil, self._one_op_tensor = (
            v2.RandAugment(
                num_ops=1,
                magnitude=0,
                num_magnitude_bins=10 * self._STEPS_PER_UNIT + 1,
                interpolation=interpolation,
                fill=list(fill) if fill is not None else None,
            )
            for interpolation in (_BICUBIC, v2.InterpolationMode.BILINEAR)
        )

    def _draw_magnitude(self) -> float:
        if self.magnitude_std > 0:
            m = self.magnitude + self.magnitude_std * float(torch.randn(()))
        else:
            m = self.magnitude
        return min(max(m, 0.0), self.magnitude_max, 10.0)

    def __call__(self, img: Any) -> Any:
        one_op = self._one_op_pil if isinstance(img, Image.Image) else self._one_op_tensor
        for _ in range(self.num_ops):
            one_op.magnitude = round(self._draw_magnitude() * self._STEPS_PER_UNIT)
            img = one_op(img)
        return img

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"magnitude_std={self.magnitude_std}, magnitude_max={self.magnitude_max})"
        )


def parse_rand_augment(config: str, fill: Sequence[int] | None = None) -> NoisyMagnitudeRandAugment:
    """Build RandAugment from a timm-style string such as ``rand-m9-mstd0.5-inc1``.

    Keys: ``m`` magnitude (0-10), ``n`` number of ops, ``mstd`` magnitude noise std, ``mmax``
    magnitude clip, ``inc`` increasing-severity ops. Differences from timm that torchvision imposes:

    - op set: torchvision has Identity and lacks Invert and SolarizeAdd;
    - timm applies each chosen op with probability 0.5, torchvision always (Identity plays that role);
    - Posterize at high magnitude keeps 4 bits in torchvision, down to 0-1 bits in timm ``inc1``;
    - ``inc0`` (timm's older decreasing-severity ops) is not available: torchvision's ops already
      grow in severity with magnitude, i.e. always behave as ``inc1``.
    Magnitude ranges otherwise match timm at the same ``m`` (rotate 30 deg, shear 0.3, translate
    0.45, enhance 0.9, solarize threshold 256 -> 0).

    Args:
        config: The timm-style policy string.
        fill: Fill colour for geometric ops (timm uses the dataset mean).

    Raises:
        ValueError: For another policy family or an unknown/unsupported key.
    """
    parts = config.split("-")
    if parts[0] != "rand":
        raise ValueError(f"unsupported augmentation policy {config!r}: expected a 'rand-...' RandAugment string")
    kwargs: dict[str, float] = {"num_ops": 2, "magnitude": 9.0, "magnitude_std": 0.5, "magnitude_max": 10.0}
    keys = {"mstd": "magnitude_std", "mmax": "magnitude_max", "m": "magnitude", "n": "num_ops"}
    for part in parts[1:]:
        if part.startswith("inc"):
            continue  # torchvision's ops are the increasing-severity kind; see the docstring
        # Longest prefix first so "mstd0.5" is not read as "m" + "std0.5".
        key = next((k for k in keys if part.startswith(k)), None)
        try:
            if key is None:
                raise ValueError
            kwargs[keys[key]] = float(part[len(key) :])
        except ValueError:
            raise ValueError(f"unknown or malformed RandAugment option {part!r} in {config!r}") from None
    return NoisyMagnitudeRandAugment(
        num_ops=int(kwargs["num_ops"]),
        magnitude=kwargs["magnitude"],
        magnitude_std=kwargs["magnitude_std"],
        magnitude_max=kwargs["magnitude_max"],
        fill=fill,
    )


def finetune_transform(
    input_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    train: bool,
    rand_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    crop_pct: float = 0.875,
) -> v2.Compose:
    """Classification finetuning transform (train) or evaluation transform (``train=False``).

    Train: RandomResizedCrop(scale 0.08-1, bicubic), flip, RandAugment, normalise, RandomErasing
    with per-pixel Gaussian values (timm's ``mode="pixel"``). Eval: bicubic resize of the short side
    to ``floor(input_size / crop_pct)``, centre crop, normalise.

    Args:
        input_size: Side of the square output.
        mean: Per-channel mean for normalisation.
        std: Per-channel std for normalisation.
        train: Training augmentation if True, deterministic evaluation otherwise.
        rand_augment: timm-style RandAugment string, or None/"" to disable.
        re_prob: Random erasing probability; 0 disables it.
        crop_pct: Eval centre-crop fraction.

    Returns:
        A callable PIL image (or uint8 tensor) -> FloatTensor[3, input_size, input_size].
    """
    if not train:
        return ImagePreprocess((input_size, input_size), tuple(mean), tuple(std), crop_pct=crop_pct).eval_transform()
    steps: list[Any] = [
        v2.RandomResizedCrop(input_size, scale=(0.08, 1.0), interpolation=_BICUBIC),
        v2.RandomHorizontalFlip(),
    ]
    if rand_augment:
        steps.append(parse_rand_augment(rand_augment, fill=[round(255 * m) for m in mean]))
    steps += _to_normalized_float(mean, std)
    if re_prob > 0:
        steps.append(v2.RandomErasing(p=re_prob, value="random"))
    return v2.Compose(steps)


RESIZE_MODES = ("shortest", "squash")
TRAINED_PREPROCESS = ("mean", "std", "crop_pct", "sample_rate", "num_mel_bins", "target_length")
"""What a percli checkpoint's metadata may set about its inputs, over its model's defaults."""


def with_trained_preprocess(preprocess: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """A model's `preprocess` description with what its checkpoint's run trained with (normalisation, crop,
    fbank settings)."""
    return {**preprocess, **{k: meta[k] for k in TRAINED_PREPROCESS if k in meta}}


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int | float):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


class _ResizeToCover:
    """Resize keeping the aspect ratio so the image covers (H, W) (open_clip's/timm's `ResizeKeepRatio` for a
    rectangular target); a centre crop follows."""

    def __init__(self, size: tuple[int, int], interpolation: v2.InterpolationMode):
        self.size, self.interpolation = size, interpolation

    def __call__(self, image: Any) -> Any:
        h, w = v2.functional.get_size(image)
        scale = max(self.size[0] / h, self.size[1] / w)
        return v2.functional.resize(image, [round(h * scale), round(w * scale)], interpolation=self.interpolation,
                                    antialias=True)


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """One image model's evaluation preprocessing, as every family describes it in ``model.preprocess``.

    The keys: ``image_size`` (an int, or [H, W] for rectangular inputs), ``resize_mode`` (``shortest``:
    resize the short side to size / crop_pct and centre-crop; ``squash``: resize the whole image to
    size / crop_pct, no aspect kept, then centre-crop), ``crop_pct``, ``interpolation``, ``mean``, ``std``.
    CLIP/MetaCLIP: shortest, bicubic, crop_pct 1 (open_clip); PE: squash, bilinear, 1 (its
    ``get_image_transform``); DINOv2: shortest, bicubic, 224 of 256 (its linear/k-NN eval); Hiera: shortest,
    bicubic, 0.875 (timm's). Older metadata is read too: ``input_size: [C, H, W]`` (crop_pct 0.875 unless
    given), DINOv2's ``eval_resize`` / ``eval_crop``, PE's ``resize``.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop_pct: float = 1.0

    @classmethod
    def of(cls, preprocess: Mapping[str, Any]) -> ImagePreprocess:
        crop_pct = preprocess.get("crop_pct")
        size = preprocess.get("image_size")
        if size is None and "eval_crop" in preprocess:  # DINOv2 metadata written before image_size
            size, crop_pct = preprocess["eval_crop"], preprocess["eval_crop"] / preprocess["eval_resize"]
        if size is None and preprocess.get("input_size"):
            size = preprocess["input_size"][-2:]
            legacy_pe = "resize" in preprocess or "resize_mode" in preprocess
            crop_pct = (1.0 if legacy_pe else 0.875) if crop_pct is None else crop_pct  # else timm's (Hiera)
        if not size or "mean" not in preprocess or "std" not in preprocess:
            raise ValueError(f"the model's preprocessing {dict(preprocess)} names no image size (image_size or "
                             "input_size), mean or std; is it an image model?")
        mode = preprocess.get("resize_mode") or preprocess.get("resize") or "shortest"
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {mode!r} is not supported; use one of {', '.join(RESIZE_MODES)}")
        return cls(_pair(size), tuple(map(float, preprocess["mean"])), tuple(map(float, preprocess["std"])),
                   str(preprocess.get("interpolation", "bicubic")), mode, float(crop_pct or 1.0))

    def squashed(self) -> ImagePreprocess:
        """The same size, interpolation and normalisation, resized whole without a crop (how Altogether
        feeds its image encoder)."""
        return dataclasses.replace(self, resize_mode="squash", crop_pct=1.0)

    def eval_transform(self) -> v2.Compose:
        """PIL image (or uint8 tensor) -> FloatTensor[3, H, W]: resize, centre crop, normalise."""
        interpolation = v2.InterpolationMode(self.interpolation)
        scaled = tuple(math.floor(n / self.crop_pct) for n in self.size)
        if self.resize_mode == "squash":
            resize = v2.Resize(scaled, interpolation=interpolation, antialias=True)
        elif scaled[0] == scaled[1]:
            resize = v2.Resize(scaled[0], interpolation=interpolation, antialias=True)
        else:
            resize = _ResizeToCover(scaled, interpolation)
        # shortest: the short side fits, the long one is cropped; squash: cropped only when crop_pct < 1
        crop = [v2.CenterCrop(self.size)] if self.resize_mode == "shortest" or scaled != self.size else []
        return v2.Compose([resize, *crop, *_to_normalized_float(self.mean, self.std)])


def video_transform(
    input_size: int,
    mean: Sequence[float] = HIERA_VIDEO_MEAN,
    std: Sequence[float] = HIERA_VIDEO_STD,
    *,
    train: bool,
    scale: tuple[float, float] = (0.5, 1.0),
    spatial_views: int = 1,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Clip transform: one crop and flip shared by all frames, then normalisation.

    Train: RandomResizedCrop(``scale``, bicubic) + flip (MAE-ST uses a relative scale jitter of
    0.5-1); eval: bicubic resize of the short side to ``input_size`` and centre crop, or with
    ``spatial_views`` > 1 that many crops spread evenly along the long side (3: left / centre / right or
    top / centre / bottom, SlowFast's multi-view testing), stacked first: [views, T, C, size, size].

    Args:
        input_size: Side of the square output.
        mean: Per-channel mean (Hiera video: ImageNet mean).
        std: Per-channel std (Hiera video: 0.225 for all channels).
        train: Random crop/flip if True, centre crop otherwise.
        scale: Area range of the training crop.

    Returns:
        A callable uint8 tensor [T, C, H, W] -> FloatTensor[T, C, input_size, input_size]
        (frames first, as torchvision expects; the dataset moves channels first afterwards).
    """
    if train:
        spatial: list[Any] = [
            v2.RandomResizedCrop(input_size, scale=scale, interpolation=_BICUBIC),
            v2.RandomHorizontalFlip(),
        ]
    elif spatial_views > 1:
        normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
        return _SpatialViews(input_size, spatial_views, _VideoTransform(normalise))
    else:
        spatial = [v2.Resize(input_size, interpolation=_BICUBIC), v2.CenterCrop(input_size)]
    compose = v2.Compose([*spatial, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    return _VideoTransform(compose)


class _SpatialViews:
    """Short side resized to ``size``, then ``views`` square crops spread evenly along the long side."""

    def __init__(self, size: int, views: int, normalise: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.size, self.views, self.normalise = size, views, normalise
        self.resize = _VideoTransform(v2.Resize(size, interpolation=_BICUBIC))

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        frames = self.resize(frames)
        h, w = frames.shape[-2:]
        crops = []
        for i in range(self.views):
            top = round((h - self.size) * i / (self.views - 1)) if h > w else (h - self.size) // 2
            left = round((w - self.size) * i / (self.views - 1)) if w >= h else (w - self.size) // 2
            crops.append(self.normalise(frames[..., top:top + self.size, left:left + self.size]))
        return torch.stack(crops)


class _VideoTransform:
    """Wraps frames as ``tv_tensors.Video`` so v2 draws one set of crop/flip params per clip."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.transform(tv_tensors.Video(frames)).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


class MixupCutmix:
    """Batch-level mixup / cutmix with label smoothing, following timm's ``Mixup`` in batch mode.

    With probability ``prob`` the batch is mixed with its reverse: cutmix (chance ``switch_prob``
    when both are enabled, box area from ``Beta(cutmix_alpha)``, lambda corrected to the exact
    box area) or mixup (``Beta(mixup_alpha)``). Targets are the lambda-mix of the smoothed one-hot
    targets, so they are always soft and sum to 1, even when nothing is mixed.
    Works for images [B, C, H, W] and videos [B, C, T, H, W] (the box spans all frames).

    Args:
        num_classes: Number of classes.
        mixup_alpha: Beta parameter for mixup; 0 disables mixup.
        cutmix_alpha: Beta parameter for cutmix; 0 disables cutmix.
        prob: Probability of mixing a batch at all.
        switch_prob: Probability of cutmix instead of mixup when both are enabled.
        label_smoothing: Smoothing folded into the targets.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"mixup/cutmix needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing

    def _draw_lambda(self) -> tuple[float, bool]:
        """Return (lambda, use_cutmix) from torch's global RNG."""
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (use_mixup or use_cutmix) or float(torch.rand(())) >= self.prob:
            return 1.0, False
        if use_mixup and use_cutmix:
            use_cutmix = float(torch.rand(())) < self.switch_prob
        alpha = torch.tensor(self.cutmix_alpha if use_cutmix else self.mixup_alpha)
        return float(torch.distributions.Beta(alpha, alpha).sample()), use_cutmix

    def _cut_box(self, lam: float, height: int, width: int) -> tuple[int, int, int, int]:
        cut_ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut_ratio), int(width * cut_ratio)
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        return y0, y1, x0, x1

    def smooth_one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """Integer labels [B] -> smoothed one-hot targets [B, num_classes]."""
        off = self.label_smoothing / self.num_classes
        on = 1.0 - self.label_smoothing + off
        targets = torch.full((labels.shape[0], self.num_classes), off, device=labels.device)
        return targets.scatter_(1, labels.long().unsqueeze(1), on)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch.

        Args:
            images: [B, C, H, W] or [B, C, T, H, W] floats; not modified in place.
            labels: [B] integer class indices in ``[0, num_classes)``.

        Returns:
            ``(mixed_images, soft_targets)`` with soft targets [B, num_classes] (float32).
        """
        labels = torch.as_tensor(labels)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"mixup/cutmix got labels outside [0, {self.num_classes}): unlabeled (-1) samples cannot be mixed"
            )
        lam, use_cutmix = self._draw_lambda()
        if lam < 1.0:
            flipped = images.flip(0)
            if use_cutmix:
                y0, y1, x0, x1 = self._cut_box(lam, images.shape[-2], images.shape[-1])
                images = images.clone()
                images[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
                # The clipped box can be smaller than asked; use its true area, as timm does.
                lam = 1.0 - (y1 - y0) * (x1 - x0) / (images.shape[-2] * images.shape[-1])
            else:
                images = images * lam + flipped * (1.0 - lam)
        targets = self.smooth_one_hot(labels)
        targets = targets * lam + targets.flip(0) * (1.0 - lam)
        return images, targets

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, switch_prob={self.switch_prob}, "
            f"label_smoothing={self.label_smoothing})"
        )
