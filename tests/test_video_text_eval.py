"""`percli eval retrieval` on video-text checkpoints (videoclip, support-set, mmp): the embedded held-out split
re-scores a run's own evaluation, an MSR-VTT manifest with per-second feature files (bad ones counted), and
the caption <-> segment bookkeeping of the evaluator."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import read_meta, save_weights
from percli.models import create_model
from percli.recipes.video_text_eval import VideoTextEvaluator, manifest_layout
from tests.test_video_text_recipes import SUPPORT, VIDEOCLIP

runner = CliRunner()
EVAL = ["train.num_workers=0", "train.batch_size=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{method: (checkpoint, the run's final metrics)} of 2-step tiny runs on the embedded videos."""
    root, runs = tmp_path_factory.mktemp("runs"), {}
    for method, args in (("videoclip", VIDEOCLIP), ("support-set", SUPPORT)):
        result = runner.invoke(app, ["pretrain", method, "--run-dir", str(root / method), "--json", *args,
                                     "train.max_steps=2"])
        assert result.exit_code == 0, result.output[-3000:]
        checkpoint = sorted((root / method / "checkpoints").glob("step_*"))[-1]
        runs[method] = (checkpoint, json.loads(result.stdout)["metrics"])
    return runs


def _eval(tmp_path, *args, name="eval"):
    result = runner.invoke(app, ["eval", "retrieval", "--run-dir", str(tmp_path / name), "--json", *EVAL, *args])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("method", ["videoclip", "support-set"])
def test_embedded_split_reproduces_the_runs_own_held_out_retrieval(tmp_path, trained, method):
    checkpoint, run_metrics = trained[method]
    out = _eval(tmp_path, f"model.checkpoint={checkpoint}", "data.embedded_size=20")
    assert out["family"] == "video-text"
    metrics = out["metrics"]
    for key in ("t2v_R@1", "v2t_R@1", "t2v_R@5", "v2t_median_rank"):
        assert metrics[key] == run_metrics[f"eval/{key}"], key
    assert metrics["captions"] == metrics["segments"] == run_metrics["eval/clips"]


def _msrvtt(tmp_path, dim: int):
    """An MSR-VTT-style CSV of 6 videos, 3 captions each (two videos share a caption), and their features:
    video5's file is missing and video4's truncated."""
    rng = np.random.default_rng(0)
    rows = ["key,vid_key,video_id,sentence"]
    for v in range(6):
        for c, text in enumerate([f"clip number {v} shows a shape", f"a video about thing {v}", "the same words"]):
            rows.append(f"ret{v}_{c},msr{v},video{v},{text}")
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text("\n".join(rows) + "\n")
    features = tmp_path / "features"
    features.mkdir()
    for v in range(5):
        np.save(features / f"video{v}.npy", rng.standard_normal((5 + v, dim)).astype(np.float32))
    truncated = features / "video4.npy"
    truncated.write_bytes(truncated.read_bytes()[:100])
    return tmp_path / "MSRVTT_JSFUSION_test.csv", features


@pytest.mark.parametrize("method", ["videoclip", "support-set"])
def test_msrvtt_manifest_scores_every_caption_and_counts_bad_feature_files(tmp_path, trained, method):
    checkpoint, _ = trained[method]
    kwargs = read_meta(checkpoint)["kwargs"]
    csv, features = _msrvtt(tmp_path, kwargs.get("input_dim") or kwargs["feature_dim"])
    assert manifest_layout(csv, "auto") == "msrvtt"
    out = _eval(tmp_path, f"model.checkpoint={checkpoint}", f"data.source={csv}", f"data.features={features}")
    metrics = out["metrics"]
    assert metrics["segments"] == 4 and metrics["captions"] == 12  # 3 captions of each of the 4 readable videos
    assert metrics["t2v_queries"] == 12 and metrics["v2t_queries"] == 4
    assert all(0 <= metrics[f"{d}_{k}"] <= 1 for d in ("t2v", "v2t") for k in ("R@1", "R@5", "R@10", "mAP@10"))
    assert out["skipped"] == {"missing_features": 1, "unreadable_features": 1}
    assert out["bad_inputs"]["count"] == 1


def test_mmp_scores_each_language_on_its_own(tmp_path):
    from percli.core.data.embedded_video_text import EmbeddedVideoText

    dim = int(EmbeddedVideoText(1, split="test")[0]["features"].shape[1])
    kwargs = {"feature_dim": dim, "embed_dim": 16, "width": 16, "heads": 2, "layers": 1}
    model = create_model("mmp_tiny", **kwargs)
    checkpoint = save_weights(tmp_path / "mmp.safetensors", model.state_dict(),
                              {"name": "mmp_tiny", "kwargs": kwargs, "task": "mmp", "languages": ["en", "de"]})
    out = _eval(tmp_path, f"model.checkpoint={checkpoint}", "data.embedded_size=20")
    metrics = out["metrics"]
    assert metrics["en_captions"] == metrics["de_captions"] > 20  # the embedded captions align en and de
    assert 0 <= metrics["de_t2v_R@1"] <= 1 and "t2v_R@1" not in metrics
    one = _eval(tmp_path, f"model.checkpoint={checkpoint}", "data.embedded_size=20", "data.languages=[de]", name="de")
    assert one["metrics"]["t2v_R@1"] == metrics["de_t2v_R@1"]


def test_one_hot_embeddings_retrieve_perfectly_across_skipped_segments_and_languages():
    evaluator = VideoTextEvaluator(torch.nn.Identity(), {"task": "mmp"}, ["en", "de"])
    eye = torch.eye(4)
    # en: segments 0, 2, 3 read (1 skipped), gathered out of order; de: segments 0, 1; captions per segment differ
    totals = {"video_embeds": torch.stack([eye[3], eye[0], eye[2], eye[1], eye[0]]),
              "item": torch.tensor([3.0, 0, 2, 1, 0]), "language": torch.tensor([0.0, 0, 0, 1, 1]),
              "text_embeds": torch.stack([eye[0], eye[2], eye[2], eye[3], eye[1], eye[0], eye[0]]),
              "caption_item": torch.tensor([0.0, 2, 2, 3, 1, 0, 0]),
              "caption_language": torch.tensor([0.0, 0, 0, 0, 1, 1, 1])}
    metrics = evaluator.eval_reduce(totals)
    assert metrics["en_segments"] == 3 and metrics["en_captions"] == 4 and metrics["de_captions"] == 3
    for lang in ("en", "de"):
        assert metrics[f"{lang}_t2v_R@1"] == metrics[f"{lang}_v2t_R@1"] == 1.0


def test_identical_captions_give_identical_text_rows(trained):
    from percli.core.checkpoint import read_weights
    from percli.models import load_initial_weights

    checkpoint, _ = trained["videoclip"]
    meta = read_weights(checkpoint)[1]
    model = create_model(meta["name"], **meta["kwargs"])
    load_initial_weights(model, checkpoint)
    evaluator = VideoTextEvaluator(model.eval(), meta, ["en"])
    dim, length = meta["kwargs"]["input_dim"], meta["kwargs"]["max_video_len"]
    batch = {"video": torch.randn(2, length, dim), "video_mask": torch.ones(2, length, dtype=torch.bool),
             "captions": [["a red circle", "the same words"], ["the same words"]],
             "index": torch.tensor([5, 7]), "language": torch.tensor([0, 0])}
    with torch.no_grad():
        out = evaluator.eval_step(model, batch)
    assert out["caption_item"].tolist() == [5, 5, 7]
    assert torch.equal(out["text_embeds"][1], out["text_embeds"][2])
    assert not torch.equal(out["text_embeds"][0], out["text_embeds"][1])


def _youcook2_and_vatex(tmp_path, dim: int):
    """YouCook2's official JSON (2 validation videos of 2 clips, 1 training video) and a VATEX JSON (en + zh) of
    the same 3 videos, with 10 s of features each."""
    rng = np.random.default_rng(1)
    features = tmp_path / "features"
    features.mkdir()
    database = {}
    for v in range(3):
        np.save(features / f"vid{v}.npy", rng.standard_normal((10, dim)).astype(np.float32))
        clips = [{"id": c, "segment": [4 * c, 4 * c + 3], "sentence": f"step {c} of recipe {v}"} for c in range(2)]
        database[f"vid{v}"] = {"subset": "training" if v == 2 else "validation", "annotations": clips}
    (tmp_path / "annotations.json").write_text(json.dumps({"database": database}))
    vatex = [{"videoID": f"vid{v}", "enCap": [f"a person does thing {v}", f"someone at work {v}"],
              "chCap": [f"一个人在做事 {v}", f"有人在工作 {v}"]} for v in range(3)]
    (tmp_path / "val.json").write_text(json.dumps(vatex, ensure_ascii=False))
    return tmp_path / "annotations.json", tmp_path / "val.json", features


def test_youcook2_clips_and_vatex_languages(tmp_path, trained):
    checkpoint, _ = trained["support-set"]
    youcook2, vatex, features = _youcook2_and_vatex(tmp_path, read_meta(checkpoint)["kwargs"]["feature_dim"])
    assert manifest_layout(youcook2, "auto") == "youcook2" and manifest_layout(vatex, "auto") == "vatex"
    clips = _eval(tmp_path, f"model.checkpoint={checkpoint}", f"data.source={youcook2}", f"data.features={features}",
                  "data.subset=validation", name="youcook2")["metrics"]
    assert clips["segments"] == clips["captions"] == 4  # 2 clips of each validation video
    both = _eval(tmp_path, f"model.checkpoint={checkpoint}", f"data.source={vatex}", f"data.features={features}",
                 "data.languages=[en,zh]", name="vatex")["metrics"]
    assert both["en_segments"] == both["zh_segments"] == 3 and both["en_captions"] == both["zh_captions"] == 6
    assert 0 <= both["zh_t2v_R@1"] <= 1
