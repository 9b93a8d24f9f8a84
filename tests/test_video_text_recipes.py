"""`percli pretrain videoclip` and `percli pretrain support-set`: MMPT's caption layout, the VideoCLIP loss,
retrieval-augmented groups, runs on the embedded videos and on a HowTo100M-layout folder with bad files."""

import json
import signal

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.rundir import read_metrics
from percli.models.mmpt import mm_contrastive_loss
from percli.recipes.clip import contrastive_loss
from percli.recipes.video_text_common import MMPTCaptions
from percli.recipes.videoclip import knn_groups
from tests.conftest import sigterm_after_step

runner = CliRunner()
DATA = ["data.embedded_size=20", "data.clips_per_video=2", "train.num_workers=0"]
VIDEOCLIP = ["model.kwargs={num_hidden_video_layers: 1, bert_config: {hidden_size: 16, num_hidden_layers: 1, "
             "num_attention_heads: 2, intermediate_size: 32}}", *DATA, "retrieval.videos_per_batch=4",
             "retrieval.num_candidates=6", "train.batch_size=4", "optim.ref_batch_size=4"]
SUPPORT = ["model.kwargs={embed_dim: 16, width: 16, heads: 2, layers: 1, decoder_layers: 1}", *DATA,
           "train.batch_size=4", "optim.ref_batch_size=4"]


def test_mmpt_captions_put_the_video_sep_second_and_pad_after_the_caption():
    tok = MMPTCaptions(max_len=8)
    caps, masks = tok(["a red circle jumps", "ein sehr sehr sehr langer satz mit vielen woertern"])
    cls, sep = tok.cls, tok.sep
    assert caps[0, :2].tolist() == [cls, sep] and caps[0, 6] == sep and caps[0, 7] == tok.pad
    assert masks[0].tolist() == [True] * 7 + [False]
    assert caps[1, -1] == sep and masks[1].all()  # cut to 8 tokens, the closing [SEP] kept
    assert tok.length("a red circle jumps") == 4


def test_the_loss_is_the_releases_symmetric_infonce_without_temperature():
    torch.manual_seed(0)
    video, text = torch.randn(6, 8), torch.randn(6, 8)
    ours = 2 * contrastive_loss(video, text, torch.tensor(1.0))  # what the recipe computes
    assert torch.allclose(ours, mm_contrastive_loss(video, text))


def test_knn_groups_draw_from_each_seeds_nearest_neighbours():
    torch.manual_seed(0)
    centres = torch.randn(4, 3) * 10
    embeddings = torch.cat([c + 0.1 * torch.randn(5, 3) for c in centres])  # 4 clusters of 5
    embeddings[7] = 0.0  # an unreadable video
    groups = knn_groups(embeddings, size=4, candidates=4, generator=torch.Generator().manual_seed(1))
    assert len(groups) == 5 and all(len(g) == 4 for g in groups)
    for group in groups:
        assert len({v // 5 for v in group}) == 1  # one cluster: its 4 nearest are its own
        assert 7 not in group[1:]
    again = knn_groups(embeddings, size=4, candidates=4, generator=torch.Generator().manual_seed(1))
    assert again == groups


def _run(tmp_path, method, name, *args):
    result = runner.invoke(app, ["pretrain", method, "--run-dir", str(tmp_path / name), "--json", *args])
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


@pytest.mark.parametrize("every", ["1", "0"])
def test_videoclip_trains_with_and_without_retrieved_groups(tmp_path, every):
    result, out = _run(tmp_path, "videoclip", "run", *VIDEOCLIP, f"retrieval.every={every}", "train.max_steps=3",
                       "train.log_every=1")
    assert result.exit_code == 0, result.output[-3000:]
    metrics = out["metrics"]
    assert metrics["eval/clips"] > 20 and 0 <= metrics["eval/t2v_R@1"] <= 1 and "eval/v2t_median_rank" in metrics
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["clips"] == 8 for r in rows if "clips" in r)  # 4 videos x 2 clips per step either way
    assert any("curation/groups" in r for r in rows) == (every == "1")


def test_videoclip_resume_reproduces_the_retrieved_batches(tmp_path, monkeypatch):
    args = [*VIDEOCLIP, "train.max_steps=6", "train.log_every=1", "train.ckpt_every=3"]
    full = runner.invoke(app, ["pretrain", "videoclip", "--run-dir", str(tmp_path / "full"), *args])
    assert full.exit_code == 0, full.output[-3000:]
    undo = sigterm_after_step(monkeypatch, 4)
    stopped = runner.invoke(app, ["pretrain", "videoclip", "--run-dir", str(tmp_path / "part"), *args])
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output[-3000:]
    undo()
    resumed = runner.invoke(app, ["pretrain", "videoclip", "--run-dir", str(tmp_path / "part"), "--resume"])
    assert resumed.exit_code == 0, resumed.output[-3000:]
    expected = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if "loss" in r] == expected


@pytest.mark.parametrize("captioning", ["cross", "self", "none"])
def test_support_set_captioning_modes(tmp_path, captioning):
    result, out = _run(tmp_path, "support-set", "run", *SUPPORT, f"captioning={captioning}", "train.max_steps=2",
                       "train.log_every=1")
    assert result.exit_code == 0, result.output[-3000:]
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    self_weight = rows[-1]["support_self_weight"]
    assert (self_weight == 0) == (captioning != "self")  # cross-captioning never attends to the sample itself
    if captioning == "none":
        assert rows[-1]["loss"] == pytest.approx(rows[-1]["contrastive_loss"], rel=1e-5)
    assert "eval/t2v_R@1" in out["metrics"]


def test_a_howto_folder_with_bad_files_is_counted_not_fatal(tmp_path):
    from percli.core.data.embedded_video_text import make_video_text

    folder = make_video_text(tmp_path / "how2", 6, seed=2)
    features = sorted((folder / "features").glob("*.npy"))
    features[0].write_bytes(features[0].read_bytes()[:100])  # truncated
    np.save(features[1], np.array([{"x": 1}], dtype=object), allow_pickle=True)  # a pickle: refused
    features[2].unlink()  # missing
    result, out = _run(tmp_path, "videoclip", "run", *VIDEOCLIP, f"data.source={folder}", f"data.val_source={folder}",
                       "retrieval.every=0", "train.batch_size=2", "train.max_steps=2")
    assert result.exit_code == 0, result.output[-3000:]
    reasons = {f["reason"].split(":")[0] for f in out["bad_inputs"]["files"]}
    assert {"unreadable_features", "pickled_features"} <= reasons
    assert out["metrics"]["eval/clips"] > 0


def test_bad_settings_name_their_key(tmp_path):
    result, _ = _run(tmp_path, "videoclip", "a", *VIDEOCLIP, "retrieval.videos_per_batch=1")
    assert result.exit_code == 2 and "videos_per_batch=1" in result.output
    result, _ = _run(tmp_path, "videoclip", "b", *VIDEOCLIP, "data.min_video_len=9")
    assert result.exit_code == 2 and "data: video lengths 9..8" in result.output
    result, _ = _run(tmp_path, "support-set", "c", *SUPPORT, "model.kwargs.max_video_len=4")
    assert result.exit_code == 2 and "data.max_video_len=8" in result.output


def test_finetune_videoclip_on_a_manifest_from_a_pretraining_run(tmp_path):
    """A `pretrain videoclip` checkpoint finetuned on an MSR-VTT-style CSV over written features: the model and
    tokenizer come from the checkpoint, a missing feature file is counted, the held-out set is scored."""
    result, _ = _run(tmp_path, "videoclip", "pre", *VIDEOCLIP, "retrieval.every=0", "train.max_steps=1")
    assert result.exit_code == 0, result.output[-3000:]
    features = tmp_path / "features"
    features.mkdir()
    rows = ["key,vid_key,video_id,sentence"]
    for v in range(6):
        np.save(features / f"video{v}.npy", np.random.default_rng(v).normal(size=(5, 512)).astype(np.float32))
        rows += [f"ret{v}{c},msr{v},video{v},a caption {c} of video {v}" for c in range(2)]
    rows.append("ret9,msr9,video9,a video without features")
    manifest = tmp_path / "MSRVTT_JSFUSION_test.csv"
    manifest.write_text("\n".join(rows) + "\n")
    args = ["finetune", "videoclip", "--run-dir", str(tmp_path / "ft"), "--json",
            f"model.checkpoint={tmp_path / 'pre'}", f"data.source={manifest}", f"data.features={features}",
            f"data.val_source={manifest}", "train.batch_size=4", "train.max_steps=2", "train.num_workers=0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    out = json.loads(result.stdout)
    assert out["metrics"]["eval/segments"] == 6 and out["metrics"]["eval/captions"] == 12
    assert 0 <= out["metrics"]["eval/t2v_R@1"] <= 1
    from percli.core.checkpoint import read_weights

    _, meta = read_weights(tmp_path / "ft" / "checkpoints" / "step_0000002")
    assert meta["task"] == "videoclip" and meta["kwargs"]["bert_config"]["hidden_size"] == 16
