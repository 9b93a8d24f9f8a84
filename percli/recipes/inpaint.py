"""Inpaint images or videos with a DiffMAE model, and score the completions (`percli inpaint`, `percli eval inpaint`).

Each image is resized to the model's input size (bicubic, no crop) and normalised as the run was; its masked
patches are sampled from noise with DDIM (``steps``; ``eta`` 0: deterministic given ``seed``), the visible
ones kept. Masks: a folder of PNGs named as the images (or one PNG for all), white = inpaint, resized to the
input and taken per patch (a patch is sampled when more than half of its pixels are white); without masks, a
seeded random ``mask_ratio`` of the patches. Every image is scored on the inpainted pixels against itself
(PSNR, SSIM in [0, 1] pixels) next to the mean-colour fill baseline: ``scores.jsonl`` per image, means in
``summary.json``. `percli inpaint` also writes ``inpainted/<name>.png`` and ``grid.png`` (input / masked /
sampled / mean fill of the first 8). Unreadable images or masks are reported and skipped (``bad_inputs``).

A video DiffMAE run inpaints videos: one clip per file, ``num_frames`` frames at the run's ``sampling_rate``
from the middle of the video, resized on the short side and centre-cropped; a mask PNG applies to every
frame. It writes ``inpainted/<name>.mp4`` (the sampled clip, 8 fps) and ``inpainted/<name>.png`` (input /
masked / sampled / mean-fill rows, one column per frame); PSNR is over the clip's inpainted pixels, SSIM the
mean over its frames.

Examples:
  percli inpaint photo.jpg --checkpoint runs/pretrain-diffmae-X --mask-ratio 0.75 -o runs/inpainted
  percli inpaint /data/val --masks /data/val_masks --checkpoint runs/pretrain-diffmae-X --steps 100 -o runs/inp
  percli eval inpaint /data/val --masks /data/val_masks --checkpoint runs/pretrain-diffmae-X --json
  percli inpaint clips/ --checkpoint runs/pretrain-diffmae-video-X --mask-ratio 0.9 -o runs/inpainted-video
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, BadSample, list_folder, read_clip, video_transform
from percli.core.data.embedded_plm import write_mp4
from percli.core.data.images import load_rgb, to_float_image
from percli.models import load_run_model
from percli.recipes.diffmae_inpaint import inpaint_and_score, keep_from_pixel_mask, random_keep, save_grid


@dataclasses.dataclass
class Config:
    images: list[str] = dataclasses.field(default_factory=list)
    """Image (video, for a video model) files and/or folders (flat, or with sub-folders)."""
    checkpoint: str | None = None
    """A `percli pretrain diffmae` run dir, checkpoint dir or .safetensors file."""
    masks: str | None = None
    """A folder of mask PNGs named as the images (white = inpaint), or one PNG for every image; none: random."""
    mask_ratio: float = 0.75
    """Share of patches inpainted when no masks are given."""
    steps: int = 50
    """DDIM steps."""
    seed: int = 0
    """Seed of the random masks and of the sampler's noise."""
    write_images: bool = True
    """Write the completions (inpainted/<name>.png) and grid.png; `percli eval inpaint` only scores."""


def media_files(inputs: list[str], extensions: tuple[str, ...]) -> list[Path]:
    """The files given and the media files of the folders given (flat, or in sub-folders as a dataset's)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        files += [Path(f) for f, _ in list_folder(path, extensions)[0]] if path.is_dir() else [path]
    return files


def _read(path: Path, size: tuple[int, int], mode: str = "RGB") -> torch.Tensor:
    """[C, H, W] floats in [0, 1], resized to `size` (H, W); BadSample when the file cannot be decoded."""
    return to_float_image(load_rgb(str(path)).convert(mode).resize((size[1], size[0]), Image.BICUBIC))


def _read_clip(path: Path, meta: dict) -> torch.Tensor:
    """The run's clip of a video file, normalised: [C, T, H, W]; BadSample when it cannot be decoded."""
    frames = read_clip(str(path), meta["num_frames"], meta["sampling_rate"], train=False)  # uint8 [T, C, H, W]
    clip = video_transform(meta["input_size"][-1], meta["mean"], meta["std"], train=False)(frames)
    return clip.permute(1, 0, 2, 3)


def _save_mp4(pixels: torch.Tensor, path: Path) -> None:
    """[C, T, H, W] in [0, 1] -> MP4 at 8 fps, written under a temporary name and renamed."""
    frames = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 3, 0).cpu().numpy()  # [T, H, W, C]
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    write_mp4(tmp, frames, fps=8)
    tmp.replace(path)


def _mask_path(masks: str | None, image: Path) -> Path | None:
    if not masks:
        return None
    folder = Path(masks).expanduser()
    return folder / f"{image.stem}.png" if folder.is_dir() else folder


def _save_png(pixels: torch.Tensor, path: Path) -> None:
    """[C, H, W] in [0, 1] -> PNG, written under a temporary name and renamed (never half-written)."""
    array = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)


def validate(cfg: Config) -> None:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: not set; give a `percli pretrain diffmae` run (--checkpoint "
                          "runs/pretrain-diffmae-X)")
    if not cfg.images:
        raise ConfigError("images: not set; give image files or folders to inpaint")
    if not 0 < cfg.mask_ratio < 1:
        raise ConfigError(f"mask_ratio={cfg.mask_ratio}: give a fraction in (0, 1), e.g. --mask-ratio 0.75")
    if cfg.steps < 1:
        raise ConfigError(f"steps={cfg.steps}: give at least 1 DDIM step")
    if cfg.masks and not Path(cfg.masks).expanduser().exists():
        raise ConfigError(f"masks: {cfg.masks} does not exist; give a folder of PNGs named as the images or one PNG")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_run_model(cfg.checkpoint, "diffmae", "percli pretrain diffmae")
    model.to(device)
    size = tuple(meta["input_size"])
    video = len(size) == 3
    mean, std = meta["mean"], meta["std"]
    files = media_files(cfg.images, VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(f"images: no {'video' if video else 'image'} file in {cfg.images}")
    out = ctx.run_dir / "inpainted"
    if cfg.write_images:
        out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    rows, bad, grid = [], [], []
    norm_mean, norm_std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    with ctx.progress("inpaint", len(files), "images") as bar:
        for path in files:
            try:
                image = _read_clip(path, meta) if video else (_read(path, size) - norm_mean) / norm_std
                mask_file = _mask_path(cfg.masks, path)
                if mask_file is not None:
                    keep = keep_from_pixel_mask(_read(mask_file, size[-2:], "L")[0][None] > 0.5, model)
                else:
                    keep = random_keep(model, 1, cfg.mask_ratio, generator)
                if bool(keep.all()) or not bool(keep.any()):
                    raise BadSample(mask_file or path, "the mask leaves no patch to inpaint or none visible")
            except BadSample as err:
                bad.append({"file": err.path, "reason": err.reason})
                bar.advance(1)
                continue
            result = inpaint_and_score(model, image[None].to(device), keep, mean, std, steps=cfg.steps,
                                       generator=generator)
            rows.append({"video" if video else "image": str(path), "masked_patches": int((~keep).sum()),
                         **{k: float(result[k][0]) for k in ("psnr", "ssim", "fill_psnr", "fill_ssim")}})
            if cfg.write_images and video:
                _save_mp4(result["sampled"][0], out / f"{path.stem}.mp4")
                save_grid(result, out / f"{path.stem}.png", f"{path.name}: DiffMAE inpainting ({cfg.steps} DDIM steps)")
            elif cfg.write_images:
                _save_png(result["sampled"][0], out / f"{path.stem}.png")
            if cfg.write_images:
                if len(grid) < 8:
                    grid.append(result)
            bar.advance(1)
    scores = ctx.run_dir / "scores.jsonl"
    tmp = scores.with_name(".scores.jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(scores)
    summary: dict[str, Any] = {"status": "completed" if rows else "failed", "checkpoint": cfg.checkpoint,
                               "videos" if video else "images": len(rows), "steps": cfg.steps, "scores": str(scores),
                               "bad_inputs": {"count": len(bad), "files": bad}}
    if rows:
        keys = ("psnr", "ssim", "fill_psnr", "fill_ssim")
        summary["metrics"] = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    if grid:
        stacked = {k: torch.cat([g[k] for g in grid]) for k in ("input", "masked", "sampled", "mean_fill")}
        title = f"DiffMAE inpainting ({cfg.steps} DDIM steps)"
        summary["grid"] = str(save_grid(stacked, ctx.run_dir / "grid.png", title))
    if cfg.write_images:
        summary["output"] = str(out)
    return summary
