import json

import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import save_weights
from percli.core.config import TrainConfig
from percli.core.knn import knn_classify
from percli.models import create_model
from percli.recipes.audio_common import AudioDataSection, audio_dataset
from percli.recipes.common import DataSection, ModelSection
from percli.recipes.knn_eval import FeatureSection, frozen_features
from percli.recipes.linear_probe import sweep_linear_probe

runner = CliRunner()
TINY_DINOV2 = ["model.kwargs={img_size: 28, embed_dim: 32, depth: 2, num_heads: 2}", "data.embedded_size=64",
               "train.batch_size=32", "train.num_workers=0"]
# 128 fbank frames x 64 mel bins = 8 x 4 patches of 16; 32 train / 8 val embedded clips.
AUDIO_ENCODER = {"img_size": [128, 64], "embed_dim": 16, "depth": 2, "num_heads": 2}
AUDIO_MAE = {**AUDIO_ENCODER, "decoder_embed_dim": 16, "local_decoder_depth": 2, "local_decoder_heads": 2}
AUDIO_DATA = ["data.embedded_size=32", "train.batch_size=16", "train.num_workers=0"]


def kwargs_arg(kwargs: dict) -> str:
    return "model.kwargs=" + json.dumps(kwargs)

# Bank: e0 (class 0), e1 (class 1), (e0 + e1)/sqrt(2) (class 1). For the test point e0 with k=3 the
# cosine similarities are 1, 0 and 0.7071, so the votes are class 0: exp(1/T), class 1: exp(0) + exp(0.7071/T).
# T=1: 2.718 vs 3.028 -> class 1 (wrong); T=0.1: 22026 vs 1177 -> class 0. The test point e1 goes to class 1.
BANK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
BANK_LABELS = torch.tensor([0, 1, 1])
TEST = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # scale must not matter: features are L2-normalised
TEST_LABELS = torch.tensor([0, 1])


@pytest.mark.parametrize(("temperature", "top1"), [(1.0, 0.5), (0.1, 1.0)])
@pytest.mark.parametrize("chunk_size", [1, 256])
def test_knn_votes_are_temperature_weighted(temperature, top1, chunk_size):
    acc = knn_classify(BANK, BANK_LABELS, TEST, TEST_LABELS, num_classes=2, k=3, temperature=temperature,
                       chunk_size=chunk_size)
    assert acc == {"top1": top1, "top5": 1.0}


def test_knn_with_one_neighbour_is_nearest_neighbour():
    # k=1 (and k larger than the bank, clipped) on 4 classes: top-5 covers all classes, top-1 the nearest.
    acc = knn_classify(BANK, BANK_LABELS, TEST, torch.tensor([1, 1]), num_classes=4, k=1)
    assert acc == {"top1": 0.5, "top5": 1.0}
    assert knn_classify(BANK, BANK_LABELS, TEST, TEST_LABELS, num_classes=2, k=50, temperature=0.1)["top1"] == 1.0


def test_linear_probe_sweep_picks_the_best_lr_on_separable_features():
    # 10 Gaussian clusters (chance = 0.1); the data seed differs from the probe's, whose init would
    # otherwise replay the cluster centres as weights.
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(10, 32, generator=gen)
    labels = torch.arange(10).repeat(30)
    feats = centres[labels] + 0.3 * torch.randn(300, 32, generator=gen)
    result = sweep_linear_probe(feats[:200], labels[:200], feats[200:], labels[200:], 10, lrs=[1e-7, 1e-4, 0.1],
                                epochs=20, batch_size=32, seed=0)
    assert result["best_lr"] == 0.1 and result["top1"] >= 0.95
    assert result["per_lr"]["1e-07"] < 0.3 < result["per_lr"]["0.0001"] < result["top1"]


def test_eval_knn_end_to_end_on_embedded_images(tmp_path):
    out = runner.invoke(app, ["eval", "knn", "--run-dir", str(tmp_path / "knn"), "--json", *TINY_DINOV2,
                              "ks=[1,10]", "features.n_last_blocks=2", "features.avgpool=true"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.stdout)["metrics"]
    assert (metrics["train_count"], metrics["count"], metrics["feature_dim"]) == (64, 16, 3 * 32)
    for k in (1, 10):
        assert 0.0 <= metrics[f"k{k}/top1"] <= metrics[f"k{k}/top5"] <= 1.0
    assert json.loads((tmp_path / "knn" / "summary.json").read_text())["metrics"] == metrics


def test_eval_linear_probe_end_to_end(tmp_path):
    out = runner.invoke(app, ["eval", "linear-probe", "--run-dir", str(tmp_path / "lp"), "--json", *TINY_DINOV2,
                              "lrs=[0.01,0.1]", "epochs=3"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["best_lr"] in (0.01, 0.1) and metrics["feature_dim"] == 32
    assert metrics["top1"] == max(metrics["lr0.01/top1"], metrics["lr0.1/top1"])


def test_eval_knn_rejects_bad_ks(tmp_path):
    out = runner.invoke(app, ["eval", "knn", "--run-dir", str(tmp_path / "bad"), *TINY_DINOV2, "ks=[0]"])
    assert out.exit_code == 2 and "ks=" in out.output


def test_eval_knn_on_embedded_sounds_with_a_random_audio_mae(tmp_path):
    out = runner.invoke(app, ["eval", "knn", "--run-dir", str(tmp_path / "knn"), "--json", *AUDIO_DATA,
                              "model.name=audiomae_mae_vit_small_patch16", kwargs_arg(AUDIO_MAE), "ks=[1,5]"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    metrics = summary["metrics"]
    assert summary["model"] == "audiomae_mae_vit_small_patch16"
    assert (metrics["train_count"], metrics["count"], metrics["feature_dim"]) == (32, 8, 16)
    assert set(metrics) == {"train_count", "count", "feature_dim", "k1/top1", "k1/top5", "k5/top1", "k5/top5"}
    for k in (1, 5):
        assert 0.0 <= metrics[f"k{k}/top1"] <= metrics[f"k{k}/top5"] <= 1.0


def test_eval_linear_probe_on_an_audio_mae_classifier(tmp_path):
    out = runner.invoke(app, ["eval", "linear-probe", "--run-dir", str(tmp_path / "lp"), "--json", *AUDIO_DATA,
                              "model.name=audiomae_vit_small_patch16", kwargs_arg(AUDIO_ENCODER),
                              "lrs=[0.01,0.1]", "epochs=3"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["feature_dim"] == 16 and (metrics["train_count"], metrics["count"]) == (32, 8)
    assert metrics["top1"] == max(metrics["lr0.01/top1"], metrics["lr0.1/top1"])


def test_a_percli_audio_mae_checkpoint_gives_its_encoders_pooled_tokens(tmp_path):
    # A pretraining checkpoint as `percli pretrain audio-mae` writes it, with fbank statistics that are
    # not AudioSet's: features must be the saved encoder's norm(blocks(...)) patch tokens, averaged,
    # on fbanks normalised with the checkpoint's mean/std.
    torch.manual_seed(3)
    mae = create_model("audiomae_mae_vit_small_patch16", **AUDIO_MAE).eval()
    with torch.no_grad():
        mae.norm.weight.uniform_(0.5, 2.0)
        mae.norm.bias.normal_()
    meta = {"name": "audiomae_mae_vit_small_patch16", "kwargs": AUDIO_MAE, "task": "audio-mae",
            "sample_rate": 16000, "num_mel_bins": 64, "target_length": 128, "mean": -3.0, "std": 2.0}
    path = save_weights(tmp_path / "model.safetensors", mae.state_dict(), meta)

    f = frozen_features(ModelSection(name="", checkpoint=str(path)), DataSection(embedded_size=8), FeatureSection(),
                        TrainConfig(batch_size=4, num_workers=0), Accelerator(cpu=True))
    assert f["model"] == "audiomae_mae_vit_small_patch16" and f["train_x"].shape == (8, 16)
    data = AudioDataSection(num_mel_bins=64, target_length=128, mean=-3.0, std=2.0, embedded_size=8)
    fbank = torch.stack([audio_dataset(data, "embedded", "train", train=False)[i]["fbank"] for i in range(8)])
    with torch.no_grad():
        x = mae.patch_embed(fbank) + mae.pos_embed[:, 1:]
        x = torch.cat([(mae.cls_token + mae.pos_embed[:, :1]).expand(8, -1, -1), x], dim=1)
        for blk in mae.blocks:
            x = blk(x)
        expected = mae.norm(x)[:, 1:].mean(dim=1)
    torch.testing.assert_close(f["train_x"], expected, rtol=1e-4, atol=1e-5)
    assert f["train_y"].tolist() == [i % 8 for i in range(8)] and f["num_classes"] == 8


def test_audio_features_refuse_image_normalisation(tmp_path):
    out = runner.invoke(app, ["eval", "knn", "--run-dir", str(tmp_path / "bad"), *AUDIO_DATA,
                              "model.name=audiomae_vit_small_patch16", kwargs_arg(AUDIO_ENCODER),
                              "data.mean=[0.5,0.5,0.5]"])
    assert out.exit_code == 2 and "data.mean" in out.output


def test_multilabel_audio_is_refused(tmp_path):
    for i in range(2):
        sf.write(tmp_path / f"{i}.wav", 0.1 * torch.randn(8000).numpy(), 16000)
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text('{"path": "0.wav", "labels": ["dog", "bark"]}\n{"path": "1.wav", "labels": ["dog"]}\n')
    out = runner.invoke(app, ["eval", "knn", "--run-dir", str(tmp_path / "ml"), *AUDIO_DATA, f"data.source={manifest}",
                              "model.name=audiomae_vit_small_patch16", kwargs_arg(AUDIO_ENCODER)])
    assert out.exit_code == 2 and "multi-label" in out.output
