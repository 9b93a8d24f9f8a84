"""The early / middle / late fusion audio-visual classifier and `percli finetune av-fusion` on the embedded
one-event clips and on a labelled manifest (clips that do not decode counted and skipped), then attacked."""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.av_events import make_av_events
from percli.models import create_model, load_run_model
from percli.models.av_fusion import FUSIONS
from percli.recipes.av_fusion import EMBEDDED_SPEC, EmbeddedSingleEvents

runner = CliRunner()
TINY = ["train.max_steps=2", "train.batch_size=8", "optim.ref_batch_size=8", "train.num_workers=0",
        "train.eval_every=2", "train.ckpt_every=2"]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_maps_audio_and_video_to_logits(fusion):
    torch.manual_seed(0)
    model = create_model("av_fusion_tiny", fusion=fusion, num_classes=5).eval()
    fbank, video = torch.randn(3, 192, 64), torch.randn(3, 3, 4, 32, 32)
    logits = model(fbank, video)
    assert logits.shape == (3, 5)
    blocks = {part: len(getattr(model, f"{part}_blocks", [])) for part in ("audio", "video", "fusion")}
    assert blocks == {"early": {"audio": 0, "video": 0, "fusion": 4}, "middle": {"audio": 2, "video": 2, "fusion": 2},
                      "late": {"audio": 4, "video": 4, "fusion": 0}}[fusion]
    if fusion == "late":  # the two classifiers' logits averaged
        a = model.audio_patch_embed(fbank[:, None]) + model.audio_pos_embed
        for block in model.audio_blocks:
            a = block(a)
        v = model.video_patch_embed(video) + model.video_pos_embed
        for block in model.video_blocks:
            v = block(v)
        expected = (model.audio_head(model.audio_norm(a.mean(1))) + model.video_head(model.video_norm(v.mean(1)))) / 2
        torch.testing.assert_close(logits, expected)
    else:  # the audio reaches the logits through the joint blocks, and so does the video
        assert not torch.allclose(logits, model(fbank, torch.zeros_like(video)))
        assert not torch.allclose(logits, model(torch.zeros_like(fbank), video))


def test_bad_fusion_arguments_are_refused():
    with pytest.raises(ValueError, match="fusion='mid'"):
        create_model("av_fusion_tiny", fusion="mid")
    with pytest.raises(ValueError, match="fusion_depth=4"):
        create_model("av_fusion_tiny", fusion="middle", fusion_depth=4)
    with pytest.raises(ValueError, match="multiples of audio_patch"):
        create_model("av_fusion_tiny", audio_size=(100, 64))


def test_embedded_clips_hold_one_event_heard_and_seen():
    clips = EmbeddedSingleEvents(16, "train")
    for i in range(16):
        item = clips[i]
        assert item["target"].sum() == 1 and item["target"][item["label"]] == 1
        assert item["waveform"].shape == (1, int(EMBEDDED_SPEC.duration_s * 16000))
        assert item["frames"].float().std() > 0  # the event's shape is drawn in some frames
    assert not clips.multilabel and len({clips[i]["label"] for i in range(16)}) > 3


@pytest.mark.parametrize("fusion", FUSIONS)
def test_finetune_av_fusion_on_the_embedded_one_event_clips(tmp_path, fusion):
    run = tmp_path / "run"
    result = runner.invoke(app, ["finetune", "av-fusion", "--run-dir", str(run), "--json", f"model.fusion={fusion}",
                                 "data.embedded_size=40", *TINY])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["step"] == 2 and summary["metrics"]["eval/count"] == 20 and summary["fusion"] == fusion
    model, meta = load_run_model(run, "av-fusion", "percli finetune av-fusion")
    assert model.fusion == fusion and meta["multilabel"] is False and len(meta["classes"]) == 8


def test_finetune_av_fusion_on_a_labelled_manifest_skips_a_broken_clip(tmp_path):
    manifest = make_av_events(tmp_path / "clips", 8, seed=1, spec=EMBEDDED_SPEC)
    with open(manifest.parent / "events.tsv", encoding="utf-8") as f:
        labels = {row["filename"].removesuffix(".wav"): row["event_label"] for row in csv.DictReader(f, delimiter="\t")}
    rows = [{"id": c["id"], "video": c["video"], "labels": [labels[c["id"]]]}
            for c in map(json.loads, manifest.read_text().splitlines())]
    (manifest.parent / rows[0]["video"]).write_bytes(b"not a video")
    labelled = manifest.parent / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["finetune", "av-fusion", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
                                 f"data.source={labelled}", f"data.val_source={labelled}", "train.batch_size=2",
                                 "optim.ref_batch_size=2", "model.fusion=late"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["classes"] == sorted(set(labels.values())) and summary["multilabel"] is False
    assert summary["bad_inputs"]["count"] >= 1 and "corrupt_video" in summary["bad_inputs"]["files"][0]["reason"]
    assert summary["metrics"]["eval/count"] == 7
    # the attack reads the run's held-out manifest from its config.yaml
    attacked = runner.invoke(app, ["eval", "adversarial", f"checkpoint={tmp_path / 'run'}", "attack.steps=1",
                                   "attack.eps=[0.05]", "train.num_workers=0", "--json"])
    assert attacked.exit_code == 0, attacked.output[-3000:]
    attack = json.loads(attacked.stdout)
    assert attack["data"] == str(labelled) and attack["counts"]["bad_inputs"] >= 1
