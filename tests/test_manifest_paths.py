"""Manifests hold paths relative to their own folder: every embedded-data writer, run with a relative
folder from one working directory, writes a manifest that reads back from another.

(The VoiceCraft embedded corpus once wrote cwd-relative paths that its reader joined onto the
manifest's folder again, so `percli pretrain voicecraft` failed with the default, relative run dir.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from percli.core.data.paths import manifest_path, resolve_manifest_path


@pytest.fixture
def two_cwds(tmp_path, monkeypatch):
    """Write from tmp/writer (relative folder), then read from tmp/reader."""
    writer, reader = tmp_path / "writer", tmp_path / "reader"
    writer.mkdir()
    reader.mkdir()
    monkeypatch.chdir(writer)

    def move_to_reader() -> None:
        monkeypatch.chdir(reader)

    return writer, move_to_reader


def test_manifest_path_is_relative_to_the_folder_and_resolves_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert manifest_path("data", Path("data") / "images" / "a.png") == "images/a.png"
    assert manifest_path(tmp_path / "data", "data/sub/b.wav") == "sub/b.wav"
    outside = tmp_path / "elsewhere" / "c.wav"
    assert manifest_path("data", outside) == str(outside)  # not under the folder: kept absolute
    assert resolve_manifest_path(tmp_path / "data", "images/a.png") == str(tmp_path / "data" / "images" / "a.png")
    assert resolve_manifest_path("data", str(outside)) == str(outside)
    assert resolve_manifest_path("data", "~/x.wav") == os.path.expanduser("~/x.wav")


def test_scene_folder_records_read_back_from_another_cwd(two_cwds):
    from percli.captioning.scenes import write_scene_folder

    writer, move_to_reader = two_cwds
    write_scene_folder("out/scenes", "train", 3, size=32)
    move_to_reader()
    folder = writer / "out" / "scenes"
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert not record["image"].startswith("out/")
        assert Path(resolve_manifest_path(folder, record["image"])).is_file()


def test_voicecraft_corpus_manifest_reads_back_from_another_cwd(two_cwds):
    from percli.recipes.voicecraft import read_speech_manifest
    from percli.tts.corpus import build_corpus

    writer, move_to_reader = two_cwds
    manifest = build_corpus("runs/corpus", size=2)
    assert not manifest.is_absolute()
    move_to_reader()
    records, bad = read_speech_manifest(writer / "runs" / "corpus" / "manifest.jsonl")
    assert len(records) == 2 and not bad
    assert all(Path(r["audio"]).is_file() for r in records)


@pytest.mark.parametrize("task", ["ucf101", "lrs3"])
def test_avsuperb_minibench_lists_read_back_from_another_cwd(two_cwds, task):
    from percli.avsuperb.minibench import make_minibench
    from percli.avsuperb.tasks import read_task

    writer, move_to_reader = two_cwds
    make_minibench("bench", tasks=[task])
    move_to_reader()
    found = read_task(task, writer / "bench" / task, modalities=("audio",))
    assert found["bad"] == 0
    clip = found["train"].clips[0]
    assert Path(clip.audio_path or clip.video_path).is_file()


def test_image_and_audio_manifests_resolve_against_their_folder_not_the_cwd(two_cwds):
    from percli.core.data.audio import read_audio_manifest
    from percli.core.data.images import read_manifest

    writer, move_to_reader = two_cwds
    folder = writer / "data"
    (folder / "img").mkdir(parents=True)
    (folder / "images.jsonl").write_text(json.dumps({"path": "img/a.png", "label": 0}) + "\n")
    (folder / "audio.jsonl").write_text(json.dumps({"path": "wav/a.wav", "labels": [0]}) + "\n")
    move_to_reader()
    samples, _ = read_manifest("../writer/data/images.jsonl")
    assert Path(samples[0][0]).resolve() == (folder / "img" / "a.png").resolve()
    items, _ = read_audio_manifest(Path("../writer/data/audio.jsonl"))
    assert Path(items[0][0]).resolve() == (folder / "wav" / "a.wav").resolve()
