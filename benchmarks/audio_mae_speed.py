"""Throughput of percli's Audio-MAE pretraining step against a plain timm-built reference (same weights).

Workload (clips per second, median over timed steps, percli and reference interleaved so frequency
drift and caches hit both alike): ``train_mae``, the full pretraining step of the AudioSet-2M
release recipe -- ViT encoder on the kept 20% of a 1024x128 fbank's 16x16 patches (mask ratio 0.8),
the local shifted-window decoder (``decoder_mode=1``: 16 Swin-V2-style blocks, 4x4 windows on the
64x8 token grid, shift (2, 0) on odd blocks), normalised-pixel loss, backward, AdamW step.

The reference ("plain") is percli's model with its network blocks swapped for timm 1.0.31 modules
holding the same weights: ``timm.layers.PatchEmbed``, ``timm.models.vision_transformer.Block``
for the encoder and ``timm.models.swin_transformer_v2.SwinTransformerV2Block`` for the decoder.
The glue around them (masking, mask tokens, position tables, ``decoder_embed``/``decoder_pred``,
the loss) stays percli's, since only the blocks are being compared.

Mapping percli's decoder block onto timm's Swin-V2 block:

* ``attn.qkv.bias`` -> ``q_bias`` / ``k_bias`` (a non-trainable buffer in timm) / ``v_bias``;
* ``attn.tau`` -> ``logit_scale = -log(max(tau, 0.01))`` (timm multiplies by ``exp(min(s, log 100))``);
* ``attn.meta_mlp`` (2 -> 384 -> heads, biased) -> ``cpb_mlp`` (2 -> 512 -> heads, unbiased):
  zero-padded hidden units, one spare unit with bias 1 carrying percli's output bias;
* timm's ``relative_coords_table`` buffer is refilled with percli's ``sign(d) * log(1 + |d|)``.

What cannot be mapped: timm squashes the position bias as ``16 * sigmoid(bias)``, percli adds the
raw MLP output (as the official Audio-MAE decoder). So the reference is not numerically identical;
``--check`` measures the raw difference, and the difference after giving percli's block (in the
check only) timm's ``16 * sigmoid``, which must be at float round-off. Minor training-step
differences: timm's ``k_bias`` is a buffer, so it gets no gradient or AdamW update.

Example:
    python benchmarks/audio_mae_speed.py --batch-size 2 --steps 4 --warmup 1 --device cpu
    python benchmarks/audio_mae_speed.py --check
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from percli.models import create_model
from percli.models.audio_mae_decoder import SwinDecoderBlock, log_relative_coordinates

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hiera_speed import DTYPES, _time_pair, _train_step, parse_timing_args  # noqa: E402  (shared timing helpers)

REFERENCE_NOTE = ("timm ViT Block + SwinV2 block (not numerically identical: timm's SwinV2 attention adds "
                  "16*sigmoid(cpb_mlp(.)) as position bias, percli/official Audio-MAE adds the raw meta-MLP output)")


class _GridBlock(nn.Module):
    """Runs a timm Swin-V2 block ([B, H, W, C]) on percli's flattened [B, H*W, C] decoder tokens."""

    def __init__(self, block: nn.Module, grid: tuple[int, int]):
        super().__init__()
        self.block, self.grid = block, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        return self.block(x.view(B, *self.grid, C)).view(B, L, C)


def _timm_swin_block(ours: SwinDecoderBlock, norm_layer) -> nn.Module:
    """A timm ``SwinTransformerV2Block`` carrying ``ours``' weights (see the module doc for the mapping)."""
    from timm.models.swin_transformer_v2 import SwinTransformerV2Block

    attn = ours.attn
    dim, heads = attn.proj.in_features, attn.num_heads
    mlp_ratio = ours.mlp.fc1.out_features / dim
    ref = SwinTransformerV2Block(dim, ours.grid, heads, window_size=attn.window, shift_size=ours.shift,
                                 mlp_ratio=mlp_ratio, norm_layer=norm_layer)
    assert tuple(ref.window_size) == ours.window and tuple(ref.shift_size) == ours.shift, "window/shift differ"
    ra = ref.attn
    hidden_ours, hidden_ref = attn.meta_mlp.fc1.out_features, ra.cpb_mlp[0].out_features
    if hidden_ours >= hidden_ref:
        raise ValueError(f"percli's meta MLP ({hidden_ours} hidden) does not fit timm's cpb_mlp ({hidden_ref})")
    with torch.no_grad():
        for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2", "attn.proj"):
            ref.get_submodule(name).load_state_dict(ours.get_submodule(name).state_dict())
        ra.qkv.weight.copy_(attn.qkv.weight)
        q_b, k_b, v_b = attn.qkv.bias.chunk(3)
        ra.q_bias.copy_(q_b)
        ra.k_bias.copy_(k_b)
        ra.v_bias.copy_(v_b)
        ra.logit_scale.copy_(-attn.tau.clamp(min=0.01).log().view(-1, 1, 1))
        fc1, fc2 = attn.meta_mlp.fc1, attn.meta_mlp.fc2
        w1, b1, w2 = ra.cpb_mlp[0].weight, ra.cpb_mlp[0].bias, ra.cpb_mlp[2].weight
        w1.zero_(), b1.zero_(), w2.zero_()
        w1[:hidden_ours] = fc1.weight
        b1[:hidden_ours] = fc1.bias
        w2[:, :hidden_ours] = fc2.weight
        b1[hidden_ours] = 1.0  # a constant ReLU unit carries percli's output bias
        w2[:, hidden_ours] = fc2.bias
        # percli's cpb input sign(d)*log(1+|d|) over timm's (2wh-1) x (2ww-1) table of offsets (dy, dx)
        wh, ww = attn.window
        dy, dx = torch.meshgrid(torch.arange(-(wh - 1), wh), torch.arange(-(ww - 1), ww), indexing="ij")
        rel = torch.stack([dy, dx], dim=-1).float()
        ra.relative_coords_table.copy_((torch.sign(rel) * torch.log1p(rel.abs())).unsqueeze(0))
    # same table, two layouts: timm's gather must reproduce percli's per-pair coordinates
    gathered = ra.relative_coords_table.view(-1, 2)[ra.relative_position_index.view(-1)]
    assert torch.allclose(gathered, log_relative_coordinates(attn.window)), "relative coordinate layouts differ"
    return _GridBlock(ref, ours.grid)


def build_reference(mae: nn.Module) -> nn.Module:
    """percli's MAE with patch embed, encoder blocks and local decoder blocks replaced by timm's."""
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import Block

    if mae.decoder_mode != 1:
        raise ValueError("the reference maps the local decoder (decoder_mode=1) only")
    ref = copy.deepcopy(mae)
    eps = mae.norm.eps
    norm_layer = partial(nn.LayerNorm, eps=eps)
    pe = PatchEmbed(mae.img_size, mae.patch_size, mae.in_chans, mae.pos_embed.shape[-1])
    pe.proj.load_state_dict(mae.patch_embed.proj.state_dict())
    ref.patch_embed = pe
    blocks = []
    for ours in mae.blocks:
        dim = ours.attn.proj.in_features
        blk = Block(dim, ours.attn.num_heads, mlp_ratio=ours.mlp.fc1.out_features / dim, qkv_bias=True,
                    norm_layer=norm_layer)
        blk.load_state_dict(ours.state_dict(), strict=True)  # norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2
        blocks.append(blk)
    ref.blocks = nn.ModuleList(blocks)
    ref.decoder_blocks = nn.ModuleList([_timm_swin_block(b, norm_layer) for b in mae.decoder_blocks])
    return ref.to(next(mae.parameters()).device)


def _sigmoid_bias(attn) -> torch.Tensor:
    return 16 * torch.sigmoid(type(attn).position_bias(attn))


def check(device: torch.device) -> dict:
    """Tiny-config numeric comparison of percli vs the timm reference (random weights, same mask)."""
    torch.manual_seed(0)
    mae = create_model("audiomae_mae_vit_base_patch16", img_size=(128, 64), embed_dim=32, depth=2, num_heads=2,
                       decoder_embed_dim=32, local_decoder_depth=2, local_decoder_heads=2, local_window=(4, 4),
                       decoder_mode=1, norm_pix_loss=True).to(device).eval()
    with torch.no_grad():  # random everything (non-zero biases, k bias included), tau > 0
        for name, p in mae.named_parameters():
            if name.endswith("attn.tau"):
                p.uniform_(0.05, 1.5)
            else:
                p.normal_(0, 0.3 if p.dim() > 1 else 0.2)
    ref = build_reference(mae).eval()
    imgs = torch.randn(2, 1, 128, 64, device=device)
    noise = torch.rand(2, math.prod(mae.grid), device=device)
    with torch.no_grad():
        loss_o, pred_o, mask_o = mae(imgs, mask_ratio=0.8, noise=noise)
        loss_r, pred_r, mask_r = ref(imgs, mask_ratio=0.8, noise=noise)
        lat_o = mae.forward_encoder(imgs, 0.8, noise=noise)[0]
        lat_r = ref.forward_encoder(imgs, 0.8, noise=noise)[0]
        # percli's block with timm's 16*sigmoid position bias (check only): everything else must match
        patched = copy.deepcopy(mae)
        for blk in patched.decoder_blocks:
            blk.attn.position_bias = partial(_sigmoid_bias, blk.attn)
        _, pred_p, _ = patched(imgs, mask_ratio=0.8, noise=noise)
    assert torch.equal(mask_o, mask_r)
    return {"encoder_latent_max_abs_diff": (lat_o - lat_r).abs().max().item(),
            "pred_max_abs_diff_raw": (pred_o - pred_r).abs().max().item(),
            "pred_max_abs_diff_with_16sigmoid_bias": (pred_p - pred_r).abs().max().item(),
            "loss_raw": [loss_o.item(), loss_r.item()],
            "pred_scale": pred_o.abs().max().item()}


def run(args: argparse.Namespace) -> dict:
    import timm

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    mae = create_model(args.model, decoder_mode=1, norm_pix_loss=True).to(device).train()
    ref = build_reference(mae).train()
    B = args.batch_size
    imgs = torch.randn(B, 1, *mae.img_size, device=device)
    noise = torch.rand(B, math.prod(mae.grid), device=device, generator=torch.Generator(device=device).manual_seed(0))

    def loss_fn(m):
        return m(imgs, mask_ratio=args.mask_ratio, noise=noise)[0].float()

    secs = _time_pair({"percli": _train_step(mae, loss_fn, device, dtype),
                       "ref": _train_step(ref, loss_fn, device, dtype)}, args.steps, args.warmup, device)
    row = {f"{k}_clips_s": B / v for k, v in secs.items()}
    row["ratio_percli_over_ref"] = secs["ref"] / secs["percli"]
    return {"model": args.model, "batch_size": B, "steps": args.steps, "warmup": args.warmup,
            "mask_ratio": args.mask_ratio, "device": str(device), "dtype": args.dtype,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
            "reference": REFERENCE_NOTE, "results": {"train_mae": row}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="audiomae_mae_vit_base_patch16", help="percli Audio-MAE pretraining model")
    parser.add_argument("--mask-ratio", type=float, default=0.8)
    parser.add_argument("--check", action="store_true", help="only run the tiny numeric comparison and exit")
    args = parse_timing_args(parser)
    if args.check:
        out = check(torch.device(args.device))
        if args.json:
            print(json.dumps(out, indent=1))
            return
        print("tiny config (img 128x64, embed 32, depth 2, decoder 32-d x 2 blocks, 2 heads, window 4x4), "
              "random weights, same noise:")
        for k, v in out.items():
            print(f"  {k}: {v}")
        print(f"reference: {REFERENCE_NOTE}")
        return
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['model']}  batch {out['batch_size']}  mask {out['mask_ratio']}  {out['device']} {out['dtype']}  "
          f"threads {out['threads']}  torch {out['torch']}  timm {out['timm']}")
    print(f"{'workload':<12}{'percli clips/s':>16}{'ref clips/s':>13}{'percli/ref':>12}")
    for name, row in out["results"].items():
        print(f"{name:<12}{row['percli_clips_s']:>16.2f}{row['ref_clips_s']:>13.2f}"
              f"{row['ratio_percli_over_ref']:>12.3f}")
    print(f"reference: {out['reference']}")


if __name__ == "__main__":
    main()
