"""Audio-MAE's overlapping patches (`use_custom_patch`): the official PatchEmbed_new grid, its position table and
patch layout, the local decoder's padded grid, and the fine-tuning ViT on the same grid."""

import numpy as np
import torch

from percli.models import create_model
from percli.models.audio_mae import AudioMaskedAutoencoderViT, AudioViT

SMALL = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def official_flexible_table(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """get_2d_sincos_pos_embed_flexible as the official util/pos_embed.py defines it (written out from its
    equations: meshgrid with w first, the first half of the channels from grid[0] = the column coordinate)."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh, gw = np.arange(grid[0], dtype=np.float32), np.arange(grid[1], dtype=np.float32)
    mesh = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid[0], grid[1])
    table = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    return np.concatenate([np.zeros((1, dim)), table], axis=0)


def test_the_official_overlapping_grid_and_its_position_table():
    model = AudioMaskedAutoencoderViT(use_custom_patch=True, **SMALL)
    assert model.grid == (101, 12) and model.patch_embed.num_patches == 1212  # (1024-16)/10+1, (128-16)/10+1
    assert model.pos_embed.shape == (1, 1213, 32)
    assert np.allclose(model.pos_embed[0].numpy(), official_flexible_table(32, (101, 12)), atol=1e-6)
    plain = AudioMaskedAutoencoderViT(**SMALL)  # the non-overlapping table keeps its (F/p, T/p) quirk
    assert np.allclose(plain.pos_embed[0].numpy(), official_flexible_table(32, (8, 64)), atol=1e-6)


def test_patches_are_the_overlapping_windows_in_time_major_order_and_fold_back():
    model = AudioMaskedAutoencoderViT(use_custom_patch=True, **SMALL)
    imgs = torch.randn(2, 1, 1024, 128)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 1212, 256)
    for t, f in [(0, 0), (3, 7), (100, 11)]:
        window = imgs[:, 0, 10 * t:10 * t + 16, 10 * f:10 * f + 16].reshape(2, -1)
        assert torch.equal(patches[:, t * 12 + f], window)
    with torch.no_grad():  # the conv's tokens follow the same order
        tokens = model.patch_embed(imgs)
        conv = model.patch_embed.proj
        direct = patches[:, 3 * 12 + 7] @ conv.weight.reshape(32, -1).T + conv.bias
    assert torch.allclose(tokens[:, 3 * 12 + 7], direct, atol=1e-4)
    back = model.unpatchify(patches)
    # the last windows start at frame 1000 and bin 110: frames 1016+ and bins 126+ are in no patch
    assert torch.allclose(back[..., :1016, :126], imgs[..., :1016, :126], atol=1e-5)
    assert back[..., 1016:, :].abs().sum() == 0 and back[..., 126:].abs().sum() == 0


def test_pretraining_runs_with_both_decoders_on_the_overlapping_grid():
    torch.manual_seed(0)
    for mode in (0, 1):
        model = AudioMaskedAutoencoderViT(use_custom_patch=True, decoder_mode=mode, local_decoder_depth=2,
                                          local_decoder_heads=2, **SMALL)
        assert model.decoder_grid == (102, 12)  # the official feat_size: 101 rows padded to 6-row windows
        loss, pred, mask = model(torch.randn(2, 1, 1024, 128), mask_ratio=0.8)
        assert pred.shape == (2, 1212, 256) and mask.shape == (2, 1212) and torch.isfinite(loss)
        loss.backward()


def test_the_finetuning_vit_reads_the_same_grid_and_loads_the_pretraining_table():
    vit = AudioViT(use_custom_patch=True, num_classes=5, embed_dim=32, depth=1, num_heads=2)
    assert vit.grid == (101, 12) and vit.pos_embed.shape == (1, 1213, 32)
    assert vit(torch.randn(2, 1, 1024, 128)).shape == (2, 5)
    assert vit(torch.randn(2, 1, 1024, 128), mask_t_prob=0.2, mask_f_prob=0.2).shape == (2, 5)
    base = create_model("audiomae_vit_base_patch16", use_custom_patch=True, num_classes=527)
    assert base.state_dict()["pos_embed"].shape == (1, 1213, 768)  # the official `1212 + 1` rows
