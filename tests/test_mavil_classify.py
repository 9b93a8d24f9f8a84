"""`percli finetune mavil` on labelled manifests (JSONL/CSV, AudioSet segments, VGGSound), per modality, with
unreadable clips and bad lines skipped and reported."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from percli.avsuperb.minibench import write_video
from percli.cli import app
from percli.core.data.av_events import make_av_events
from percli.core.data.labelled_av import LabelledAVClips
from percli.models import create_model
from percli.recipes.mavil_classify import TOWERS, Config, MAViLClassifyTask

runner = CliRunner()
# a MAViL smaller than the tiny preset's (same inputs: 4 s fbank, 4 frames of 64 px), two steps of 4 clips
TINY_KW = {"img_size": [400, 128], "embed_dim": 32, "depth": 1, "num_heads": 2, "n_frm": 4, "video_size": 64}
FAST = [f"model.kwargs={json.dumps(TINY_KW)}", "train.max_steps=2", "train.batch_size=4", "train.num_workers=0",
        "train.eval_every=2"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, object]:
    """Six real clips (mp4 with an AAC track) and their event labels, a video without audio, a truncated mp4."""
    root = tmp_path_factory.mktemp("mavil")
    make_av_events(root / "av", 6, seed=3)
    labels: dict[str, list[str]] = {}
    for line in (root / "av" / "events.tsv").read_text().splitlines()[1:]:
        name, _, _, label = line.split("\t")
        events = labels.setdefault(Path(name).stem, [])
        if label not in events:
            events.append(label)
    videos = {stem: root / "av" / "clips" / f"{stem}.mp4" for stem in labels}
    write_video(root / "no_audio.mp4", np.full((8, 64, 64, 3), 90, dtype=np.uint8), 8)  # no audio stream
    good = videos["train_00000"].read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    return {"root": root, "labels": labels, "videos": videos}


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


def test_manifest_lines_parse_into_classes_and_bad_lines_are_counted_by_reason(clips, tmp_path):
    videos, labels = clips["videos"], clips["labels"]
    lines = [{"id": stem, "video": str(path), "labels": labels[stem]} for stem, path in videos.items()]
    lines += [{"id": "blank", "video": str(videos["train_00000"]), "labels": []},
              {"id": "no_path", "labels": ["drum"]},
              {"id": "wrong_type", "video": "x.mp4", "labels": {"drum": 1}},
              "this is no json"]
    train = LabelledAVClips(_jsonl(tmp_path / "train.jsonl", lines))
    assert train.format == "manifest" and train.multilabel == any(len(v) > 1 for v in labels.values())
    assert train.classes == sorted({label for v in labels.values() for label in v})
    assert train.clip_labels == [sorted(train.classes.index(x) for x in labels[s]) for s in videos]
    assert dict(train.skipped) == {"no_label": 1, "malformed_record": 3} and train.bad_records.count == 4
    # held-out lines take the training classes: a label outside them is skipped, named in the reason
    val = LabelledAVClips(_jsonl(tmp_path / "val.jsonl", [
        {"video": str(videos["train_00001"]), "labels": [train.classes[0]]},
        {"video": str(videos["train_00002"]), "labels": ["unicorn"]}]), labels=train.labels, multilabel=True)
    assert val.clip_labels == [[0]] and dict(val.skipped) == {"unknown_label": 1}
    assert "'unicorn'" in val.bad_records.examples[0]["reason"]
    # a CSV manifest: `;` separates labels (names may hold commas); the audio column is optional
    with (tmp_path / "m.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["video", "labels"], [videos["train_00000"].name, "Dog, bark;siren"],
                                 [videos["train_00001"].name, "drum"]])
    shutil.copy(videos["train_00000"], tmp_path / videos["train_00000"].name)
    shutil.copy(videos["train_00001"], tmp_path / videos["train_00001"].name)
    table = LabelledAVClips(tmp_path / "m.csv", modalities=("video",))
    assert table.classes == ["Dog, bark", "drum", "siren"] and table.clip_labels == [[0, 2], [1]]
    assert table.multilabel and table[0]["target"].tolist() == [1.0, 0.0, 1.0] and table[0]["frames"].ndim == 4


def test_audioset_segments_csv_finds_clips_by_id_and_maps_mids_to_the_class_csv(clips, tmp_path):
    video = clips["videos"]["train_00000"]
    _copy(video, tmp_path / "media" / "balanced_train" / "AAAAAAAAAAA_30.mp4")
    _copy(video, tmp_path / "media" / "eval" / "BBBBBBBBBBB.mp4")
    _copy(video, tmp_path / "media" / "eval" / "CCCCCCCCCCC_10.mp4")
    (tmp_path / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/dog,"Dog, bark"\n1,/m/siren,Siren\n2,/m/drum,Drum\n')
    (tmp_path / "segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=4, num_segs=4, num_unique_labels=4, num_positive_labels=5\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'AAAAAAAAAAA, 30.000, 40.000, "/m/dog,/m/siren"\n'
        'BBBBBBBBBBB, 0.000, 10.000, "/m/drum"\n'
        'CCCCCCCCCCC, 10.000, 20.000, "/m/unicorn"\n'
        'DDDDDDDDDDD, 5.000, 15.000, "/m/dog"\n')
    data = LabelledAVClips(tmp_path / "segments.csv", media_dir=tmp_path / "media")
    assert data.format == "audioset" and data.multilabel
    assert data.classes == ["Dog, bark", "Siren", "Drum"] and data.clip_labels == [[0, 1], [2]]
    assert [r.id for r in data.clips.records] == ["AAAAAAAAAAA_30", "BBBBBBBBBBB"]
    assert dict(data.skipped) == {"unknown_label": 1, "missing_file": 1}
    assert {e["line"] for e in data.bad_records.examples} == {6, 7}


def test_vggsound_csv_reads_its_split_rows_as_single_labels(clips, tmp_path):
    videos = list(clips["videos"].values())
    for i, name in enumerate(["EEEEEEEEEEE_000030", "FFFFFFFFFFF_000000", "GGGGGGGGGGG_000010"]):
        _copy(videos[i], tmp_path / "video" / f"{name}.mp4")
    (tmp_path / "vggsound.csv").write_text('EEEEEEEEEEE,30,dog barking,train\nFFFFFFFFFFF,0,"pigeon, dove cooing",'
                                           'train\nGGGGGGGGGGG,10,dog barking,test\nHHHHHHHHHHH,20,,train\n')
    train = LabelledAVClips(tmp_path / "vggsound.csv")
    assert train.format == "vggsound" and not train.multilabel
    assert train.classes == ["dog barking", "pigeon, dove cooing"] and train.clip_labels == [[0], [1]]
    assert dict(train.skipped) == {"no_label": 1}
    assert train.splits == {"train", "test"}
    test = LabelledAVClips(tmp_path / "vggsound.csv", split="test", labels=train.labels)
    assert test.clip_labels == [[0]] and test[0]["label"] == 0
    # a per-split CSV (AV-SUPERB's, no split column): every row, whichever split is asked for
    (tmp_path / "test.csv").write_text("GGGGGGGGGGG,10,dog barking\nEEEEEEEEEEE,30,dog barking\n")
    rows = LabelledAVClips(tmp_path / "test.csv", format="vggsound", split="test", labels=train.labels)
    assert rows.clip_labels == [[0], [0]] and rows.splits == set()


def test_a_manifest_run_skips_unreadable_clips_and_bad_lines_and_reports_them(clips, tmp_path):
    videos, labels, root = clips["videos"], clips["labels"], clips["root"]
    lines = [{"id": s, "video": str(p), "labels": labels[s]} for s, p in videos.items()]
    lines += [{"id": "corrupt", "video": str(root / "truncated.mp4"), "labels": labels["train_00000"]},
              {"id": "silent", "video": str(root / "no_audio.mp4"), "labels": labels["train_00000"]},
              {"id": "unlabelled", "video": str(videos["train_00000"])}]
    train = _jsonl(tmp_path / "train.jsonl", lines)
    val = _jsonl(tmp_path / "val.jsonl", lines[:4])
    run = tmp_path / "run"
    result = runner.invoke(app, ["finetune", "mavil", "--run-dir", str(run), f"data.source={train}",
                                 f"data.val_source={val}", "data.multilabel=true", *FAST])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 2
    assert 0.0 <= summary["metrics"]["eval/mAP"] <= 1.0 and summary["metrics"]["eval/count"] == 4
    bad = {Path(f["path"]).name: f["reason"].split(":")[0] for f in summary["bad_inputs"]["files"]}
    assert bad == {"truncated.mp4": "corrupt_video", "no_audio.mp4": "no_audio_track"}
    assert summary["bad_records"]["count"] == 1 and summary["skipped_records"]["train"] == {"no_label": 1}
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/mAP" in x for x in logged) and any("loss" in x for x in logged)


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_one_tower_trains_alone_and_its_checkpoint_holds_only_that_tower(clips, tmp_path, modality):
    videos = list(clips["videos"].values())
    rows = []
    for i, video in enumerate(videos):
        _copy(video, tmp_path / "video" / f"YT{i:09d}_000000.mp4")
        rows.append(f"YT{i:09d},0,{'drum' if i % 2 else 'siren'},{'test' if i >= 4 else 'train'}")
    _copy(clips["root"] / "no_audio.mp4", tmp_path / "video" / "SILENT00000_000000.mp4")
    (tmp_path / "vggsound.csv").write_text("\n".join([*rows, "SILENT00000,0,drum,train"]) + "\n")
    run = tmp_path / "run"
    result = runner.invoke(app, ["finetune", "mavil", "--run-dir", str(run), f"modality={modality}",
                                 f"data.source={tmp_path / 'vggsound.csv'}", *FAST])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["modality"] == modality and summary["multilabel"] is False
    assert {"eval/top1", "eval/top5"} <= set(summary["metrics"]) and summary["metrics"]["eval/count"] == 2
    # a clip without audio serves the video tower; the audio tower skips it
    assert summary["bad_inputs"]["count"] == (1 if modality == "audio" else 0)
    weights = load_file(str(Path(summary["checkpoint"]) / "model.safetensors"))
    assert {k.split(".")[0] for k in weights} == set(TOWERS[modality])


def _pretrained_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A MAViL in the pretrained layout (both towers, 2 fusion blocks, no classifier), as mavil_base.pth."""
    state = create_model("mavil_vit_small_patch16", **TINY_KW, depth_av=2).state_dict()
    save_file(state, str(tmp_path / "pretrained.safetensors"))
    return tmp_path / "pretrained.safetensors", state


@pytest.mark.parametrize("modality, dropped, at_init", [
    ("av", "-", "blocks_av, fc_norm_av, head_av"),
    ("audio", "blocks_av, blocks_v, cls_token_v, patch_embed_v, pos_embed_v", "fc_norm_a, head_a"),
    ("video", "blocks, blocks_av, cls_token, patch_embed, pos_embed", "fc_norm_v, head_v"),
])
def test_a_pretrained_checkpoint_loads_into_each_modality_and_reports_what_it_drops(
        tmp_path, capsys, modality, dropped, at_init):
    path, state = _pretrained_file(tmp_path)
    cfg = Config(modality=modality)
    cfg.model.name, cfg.model.kwargs, cfg.model.checkpoint = "mavil_vit_small_patch16", TINY_KW, str(path)
    cfg.data.embedded_size = 20
    model = MAViLClassifyTask(cfg).build_model()
    err = capsys.readouterr().err
    assert f"not used ({dropped})" in err and f"left at init ({at_init})" in err
    own = model.state_dict()
    kept = [k for k in own if k in state]
    assert kept and all(torch.equal(own[k], state[k]) for k in kept)
    if modality == "av":  # the fine-tuned layout's third fusion block is new
        assert "blocks_av.2.attn.qkv.weight" in own and "blocks_av.1.attn.qkv.weight" in kept
    else:
        assert {k.split(".")[0] for k in own} == set(TOWERS[modality])


@pytest.mark.parametrize("overrides, key", [
    (["modality=both"], "modality"),
    (["data.format=kinetics"], "data.format"),
    (["data.source=/nowhere/train.jsonl"], "data.source"),
    (["data.media_dir=/nowhere"], "data.media_dir"),
    (["modality=audio", "model.kwargs={av_fusion: true}"], "model.kwargs.av_fusion"),
    (["data.source={neither}"], "data.source"),
    (["data.source={multi}", "data.multilabel=false"], "data.multilabel"),
])
def test_a_bad_config_value_is_refused_naming_its_key(clips, tmp_path, overrides, key):
    (tmp_path / "neither.csv").write_text("a,b\n1,2\n")
    video, labels = clips["videos"]["train_00000"], ["drum", "siren"]
    multi = _jsonl(tmp_path / "multi.jsonl", [{"video": str(video), "labels": labels}])
    args = [a.replace("{neither}", str(tmp_path / "neither.csv")).replace("{multi}", str(multi)) for a in overrides]
    result = runner.invoke(app, ["finetune", "mavil", "--run-dir", str(tmp_path / "run"), *FAST, *args])
    assert result.exit_code == 2, result.output[-2000:]
    assert f"{key}:" in result.output or f"{key} " in result.output, result.output[-2000:]
    assert "Traceback" not in result.output
