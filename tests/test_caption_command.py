"""`percli caption altogether`: resume after a crash without loss or duplication, bad images counted."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from typer.testing import CliRunner

from percli.captioning.scenes import write_scene_folder
from percli.cli import app
from percli.core.checkpoint import save_weights
from percli.models.altogether import AltogetherCaptioner, CaptionTokenizer, OPTConfig, OPTForCausalLM, image_tower

runner = CliRunner()
TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 16, "layers": 1,
                                             "head_width": 8},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random captioner saved as `finetune altogether` saves one."""
    torch.manual_seed(0)
    encoder, dim, preprocess = image_tower("clip_vit_b32_quickgelu", TINY_CLIP)
    tokenizer = CaptionTokenizer(keep_ids=list(range(40, 80)))
    decoder = OPTForCausalLM(OPTConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                       ffn_dim=32, num_attention_heads=2, max_position_embeddings=64, dropout=0.0))
    model = AltogetherCaptioner(encoder, dim, decoder, tokenizer, prefix_len=2, mapper_layers=1, mapper_heads=2,
                                max_prompt_len=8, max_target_len=6)
    meta = {"task": "altogether", "image_encoder": {"name": "clip_vit_b32_quickgelu", "kwargs": TINY_CLIP},
            "preprocess": preprocess, **model.config_meta()}
    path = tmp_path_factory.mktemp("ckpt") / "step_0000001"
    save_weights(path / "model.safetensors", model.state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scene_folder(tmp_path_factory.mktemp("scenes"), "test", 11)


def _caption(scenes, checkpoint, out, *extra):
    return runner.invoke(app, ["caption", "altogether", "--images", str(scenes), "--checkpoint", str(checkpoint),
                               "-o", str(out), "--batch-size", "2", "--chunk-size", "3", "--json", *extra])


def _rows(out):
    return [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]


def test_resume_after_crash_writes_every_key_exactly_once(tmp_path, scenes, checkpoint, monkeypatch):
    clean = _caption(scenes, checkpoint, tmp_path / "clean")
    assert clean.exit_code == 0, clean.output
    expected = _rows(tmp_path / "clean")
    assert [r["key"] for r in expected] == [f"scene-test-s0-{i:06d}" for i in range(11)]

    real_generate, calls = AltogetherCaptioner.generate, []

    def crash_on_fourth_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the second batch of chunk 2: chunk 1 is on disk, chunk 2 only half captioned
            raise RuntimeError("injected crash")
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(AltogetherCaptioner, "generate", crash_on_fourth_batch)
    crashed = _caption(scenes, checkpoint, tmp_path / "run")
    assert crashed.exit_code != 0 and "injected crash" in str(crashed.exception)
    assert sorted(p.name for p in (tmp_path / "run" / "parts").glob("*.jsonl")) == ["00000-000000.jsonl"]
    assert not (tmp_path / "run" / "captions.jsonl").exists()
    monkeypatch.setattr(AltogetherCaptioner, "generate", real_generate)

    resumed = _caption(scenes, checkpoint, tmp_path / "run", "--resume")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["chunks"] == 4 and summary["chunks_resumed"] == 1 and summary["captioned"] == 11
    assert _rows(tmp_path / "run") == expected  # same keys once each, same (seeded) sampled captions


def test_resume_with_other_chunking_is_refused(tmp_path, scenes, checkpoint):
    assert _caption(scenes, checkpoint, tmp_path / "run").exit_code == 0
    again = runner.invoke(app, ["caption", "altogether", "--images", str(scenes), "--checkpoint", str(checkpoint),
                                "-o", str(tmp_path / "run"), "--chunk-size", "5", "--resume"])
    assert again.exit_code == 2 and "chunk_size" in again.output


def test_corrupt_images_are_counted_and_left_out(tmp_path, scenes, checkpoint):
    folder = write_scene_folder(tmp_path / "scenes", "test", 5)
    (folder / "images" / "scene-test-s0-000002.png").write_bytes(b"not a png")
    result = _caption(folder, checkpoint, tmp_path / "out", "--strategy", "beam", "--num-beams", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["captioned"] == 4 and summary["bad_images"]["count"] == 1
    assert summary["bad_images"]["examples"][0]["key"] == "scene-test-s0-000002"
    assert "scene-test-s0-000002" not in {r["key"] for r in _rows(tmp_path / "out")}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["captioned"] == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--precision", "fp8"], "--precision"),
    (["--strategy", "nucleus"], "--strategy"),
])
def test_bad_options_exit_2_naming_the_option(tmp_path, scenes, checkpoint, args, message):
    result = _caption(scenes, checkpoint, tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.output


def test_folder_without_records_is_refused(tmp_path, checkpoint):
    result = _caption(tmp_path, checkpoint, tmp_path / "out")
    assert result.exit_code == 2 and "records.jsonl" in result.output


def test_webdataset_tar_shards_are_captioned_by_sample_key(tmp_path, scenes, checkpoint):
    import io
    import tarfile

    records = [json.loads(line) for line in (scenes / "records.jsonl").read_text().splitlines()][:4]
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for r in records:
            for name, data in ((f"{r['key']}.png", (scenes / r["image"]).read_bytes()),
                               (f"{r['key']}.txt", (r["alt_text"] or "-").encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    result = runner.invoke(app, ["caption", "altogether", "--images", str(shard), "--alt-text", "txt",
                                 "--checkpoint", str(checkpoint), "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["key"] for r in _rows(tmp_path / "out")] == [r["key"] for r in records]


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_invalid_alt_texts_are_counted_and_captioned_from_the_image_alone(tmp_path, checkpoint):
    folder = write_scene_folder(tmp_path / "scenes", "test", 6)
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    alts = [5, {"a dict": "becomes its first key"}, [1, "x"], None, [" two ", "alts", None], "plain"]
    for record, alt in zip(records, alts):
        record["alt_text"] = alt
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    png = (folder / records[0]["image"]).read_bytes()
    shard = _tar(tmp_path / "shard.tar", [("t0.png", png), ("t0.txt", b"\xff\xfe not UTF-8"),  # the .txt fallback
                                          ("t1.png", png), ("t1.alt_text", b"\xc3"),
                                          ("t2.png", png), ("t2.txt", "café".encode())])
    result = _caption(folder, checkpoint, tmp_path / "out", "--images", str(shard))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["captioned"] == 9 and summary["bad_records"]["count"] == 0
    invalid = summary["invalid_alt_text"]
    assert invalid["count"] == 5 and summary["without_alt_text"] == 6  # the 5 invalid ones and the null one
    assert [(e.get("line"), e.get("sample")) for e in invalid["examples"]] == [(1, None), (2, None), (3, None),
                                                                              (None, 0), (None, 1)]
    assert "'alt_text' is not a string or a list of strings (it is a dict)" in invalid["examples"][1]["reason"]
    assert "not UTF-8" in invalid["examples"][3]["reason"]
    assert [r["alt_text"] for r in _rows(tmp_path / "out")] == ["", "", "", "", "two; alts", "plain", "", "", "café"]


def test_duplicate_tar_keys_keep_the_first_sample_and_are_counted(tmp_path, scenes, checkpoint):
    records = [json.loads(line) for line in (scenes / "records.jsonl").read_text().splitlines()][:3]
    png = [(scenes / r["image"]).read_bytes() for r in records]
    shard = _tar(tmp_path / "dup.tar", [("a.png", png[0]), ("a.txt", b"first a"), ("b.png", png[1]),
                                        ("b.txt", b"b"), ("a.png", png[2]), ("a.txt", b"second a")])
    result = _caption(shard, checkpoint, tmp_path / "out", "--alt-text", "txt", "--write-shards")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["duplicate_keys"] == 1 and summary["captioned"] == 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["duplicate_keys"] == 1
    assert [(r["key"], r["alt_text"]) for r in _rows(tmp_path / "out")] == [("a", "first a"), ("b", "b")]
    with tarfile.open(tmp_path / "out" / "shards" / "dup.tar") as tar:
        assert [m.name for m in tar] == ["a.png", "a.txt", "a.altogether.txt", "b.png", "b.txt", "b.altogether.txt"]
        assert tar.extractfile("a.png").read() == png[0]
