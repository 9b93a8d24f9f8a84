"""`percli caption plm`: batched captions (prompts of different lengths together) equal one-prompt-at-a-time
decoding, from folders, manifests, Parquet and tar shards alike; a run resumed after a crash writes what an
uninterrupted one writes (sampling seeded per chunk); media that do not decode and prompts longer than the context
are counted and listed while the batch goes on; --write-shards and Parquet output."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.recipes import plm_caption
from percli.recipes.plm_generate import Decoding, generate_answers
from tests.test_plm_chat import loaded, plm_checkpoint, plm_media  # noqa: F401 - shared session fixtures

runner = CliRunner()
FILES = [f"test_{kind}_{i:06d}.{ext}" for kind, ext in (("image", "png"), ("video", "mp4")) for i in range(3)]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def caption(*args: str, out: Path, extra: tuple[str, ...] = ()) -> dict:
    result = runner.invoke(app, ["caption", "plm", *args, "-o", str(out), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_at_a_time(loaded, path: str, max_new_tokens: int = 8) -> str:  # noqa: F811 - the fixture's value
    model, processor, _ = loaded
    kind = "image" if path.endswith(".png") else "video"
    media = processor.load_media({kind: path})[0]
    prompt = processor.prompt(f"Describe the {kind}.", media)
    return generate_answers(model, processor, [prompt], [media], Decoding(max_new_tokens=max_new_tokens))[0].text


def common(checkpoint: Path, *more: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--max-new-tokens", "8", *more]


@pytest.mark.parametrize("source", ["folder", "manifest", "files"])
def test_batched_captions_equal_one_prompt_at_a_time(source, plm_checkpoint, plm_media, loaded,  # noqa: F811
                                                     tmp_path):
    inputs = {"folder": [str(plm_media / "test")], "manifest": [str(plm_media / "test.jsonl")],
              "files": [str(plm_media / "test" / name) for name in FILES]}[source]
    summary = caption(*inputs, *common(plm_checkpoint, "--batch-size", "3", "--chunk-size", "4"), out=tmp_path / "o")
    assert summary["captioned"] == 6 and summary["bad_media"]["count"] == 0
    got = rows(tmp_path / "o" / "captions.jsonl")
    by_path = {Path(r["path"]).name: r for r in got}
    assert sorted(by_path) == sorted(FILES)
    for name, row in by_path.items():
        assert row["caption"] == one_at_a_time(loaded, str(plm_media / "test" / name)), name
        assert row["media"] == ("image" if name.endswith(".png") else "video") and 1 <= row["tokens"] <= 8
    ids = [record["id"] for record in rows(plm_media / "test.jsonl")]
    assert [r["key"] for r in got] == {"folder": sorted(FILES), "manifest": ids, "files": FILES}[source]
    # in input order, keyed by the path relative to the folder / the record's id / the file name


def test_resume_after_a_crash_writes_what_an_uninterrupted_run_writes(plm_checkpoint, plm_media, tmp_path,  # noqa: F811
                                                                      monkeypatch):
    sampled = [str(plm_media / "test.jsonl"), *common(plm_checkpoint, "--temperature", "1.0", "--chunk-size", "2",
                                                      "--batch-size", "2")]
    args = [*sampled, "--seed", "5"]
    caption(*args, out=tmp_path / "whole")
    whole = (tmp_path / "whole" / "captions.jsonl").read_text()
    real, calls = plm_caption.caption_chunk, []

    def crash_on_the_second_chunk(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*a, **kw)

    monkeypatch.setattr(plm_caption, "caption_chunk", crash_on_the_second_chunk)
    crashed = runner.invoke(app, ["caption", "plm", *args, "-o", str(tmp_path / "crashed")])
    assert isinstance(crashed.exception, RuntimeError) and not (tmp_path / "crashed" / "captions.jsonl").exists()
    assert len(list((tmp_path / "crashed" / "parts").iterdir())) == 1
    monkeypatch.setattr(plm_caption, "caption_chunk", real)
    resumed = caption(out=tmp_path / "crashed", extra=("--resume",))  # the settings come from the run dir
    assert (resumed["chunks"], resumed["chunks_resumed"], resumed["chunks_written"]) == (3, 1, 2)
    assert (tmp_path / "crashed" / "captions.jsonl").read_text() == whole
    caption(*sampled, "--seed", "6", out=tmp_path / "seed6")
    assert (tmp_path / "seed6" / "captions.jsonl").read_text() != whole  # the captions are sampled


def test_resume_with_other_settings_is_refused(plm_checkpoint, plm_media, tmp_path):  # noqa: F811
    args = [str(plm_media / "test.jsonl"), *common(plm_checkpoint, "--chunk-size", "4")]
    caption(*args, out=tmp_path / "o")
    (tmp_path / "o" / "parts" / "00000-000001.jsonl").unlink()
    result = runner.invoke(app, ["caption", "plm", *args, "--prompt", "What is shown?", "-o", str(tmp_path / "o"),
                                 "--resume"])
    assert result.exit_code == 2 and "prompt" in result.output and "differ" in result.output


def test_unreadable_media_are_counted_and_listed_and_the_batch_goes_on(plm_checkpoint, plm_media, loaded,  # noqa: F811
                                                                       tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    for name in FILES[:2] + FILES[3:5]:
        shutil.copy(plm_media / "test" / name, folder / name)
    (folder / "a_broken.png").write_bytes(b"not a png")
    (folder / "b_broken.mp4").write_bytes(b"\x00" * 100)
    (folder / "notes.txt").write_text("not media: not listed")
    summary = caption(str(folder), *common(plm_checkpoint, "--batch-size", "6"), out=tmp_path / "o")
    assert summary["captioned"] == 4 and summary["bad_media"]["count"] == 2
    listed = rows(tmp_path / "o" / "bad_media.jsonl")
    assert [r["key"] for r in listed] == ["a_broken.png", "b_broken.mp4"]
    assert "unreadable_image" in listed[0]["error"] and "unreadable_video" in listed[1]["error"]
    for row in rows(tmp_path / "o" / "captions.jsonl"):  # the broken files shared a batch with these
        assert row["caption"] == one_at_a_time(loaded, str(plm_media / "test" / row["key"]))


def test_bad_records_and_prompts_longer_than_the_context_are_counted(plm_checkpoint, plm_media, tmp_path):  # noqa: F811
    from percli.core.data.embedded_plm import write_mp4

    manifest = tmp_path / "m.jsonl"
    long_video = tmp_path / "long.mp4"  # 80 frames: 64 of them x 9 tokens exceed the 512-token context
    write_mp4(long_video, np.random.default_rng(0).integers(0, 255, (80, 48, 48, 3), np.uint8), 2)
    lines = [{"key": "img", "image": str(plm_media / "test" / FILES[0])},
             {"key": "pair", "image": [str(plm_media / "test" / FILES[1]), str(plm_media / "test" / FILES[2])]},
             {"key": "vid", "video": str(long_video)},
             {"key": "nothing", "text": "no media"},
             {"key": "segment", "video": str(plm_media / "test" / FILES[4]), "start_time": 1.0, "end_time": 2.0}]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")
    summary = caption(str(manifest), *common(plm_checkpoint, "--max-frames", "64"), out=tmp_path / "o")
    assert summary["captioned"] == 2 and summary["bad_records"]["count"] == 2  # no media; bad JSON
    errors = {r["key"]: r["error"] for r in rows(tmp_path / "o" / "bad_media.jsonl")}
    assert "prompt_too_long" in errors["vid"] and "unsupported_field" in errors["segment"]
    captioned = rows(tmp_path / "o" / "captions.jsonl")
    assert [(r["key"], r["media"]) for r in captioned] == [("img", "image"), ("pair", "multi_image")]


def _shards(folder: Path, media: Path) -> tuple[Path, Path, Path]:
    """The same 2 images + 2 videos as a JSONL manifest, a Parquet file (image bytes, video paths) and a tar
    (keys j-*, p-*, t-*: unique over the inputs)."""
    folder.mkdir()
    names = FILES[:2] + FILES[3:5]
    stems = [name.split(".")[0] for name in names]
    jsonl = folder / "m.jsonl"
    jsonl.write_text("".join(json.dumps({"key": f"j-{k}", ("image" if n.endswith("png") else "video"): str(media / n)})
                             + "\n" for k, n in zip(stems, names)))
    table = pa.table({"key": [f"p-{k}" for k in stems],
                      "image": [(media / n).read_bytes() if n.endswith("png") else None for n in names],
                      "video": [None if n.endswith("png") else str(media / n) for n in names]})
    parquet = folder / "p.parquet"
    pq.write_table(table, parquet)
    tar = folder / "t.tar"
    with tarfile.open(tar, "w") as out:
        for key, name in zip(stems, names):
            data = (media / name).read_bytes()
            info = tarfile.TarInfo(f"t-{key}.{name.split('.')[-1]}")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return jsonl, parquet, tar


def test_shards_of_every_format_caption_alike_and_get_their_captions_written(plm_checkpoint, plm_media,  # noqa: F811
                                                                             tmp_path):
    jsonl, parquet, tar = _shards(tmp_path / "in", plm_media / "test")
    summary = caption(str(jsonl), str(parquet), str(tar), *common(plm_checkpoint, "--batch-size", "3",
                                                                  "--write-shards"), out=tmp_path / "o")
    assert summary["captioned"] == 12 and summary["bad_media"]["count"] == 0
    got = rows(tmp_path / "o" / "captions.jsonl")
    assert [r["key"][0] for r in got] == ["j"] * 4 + ["p"] * 4 + ["t"] * 4  # input order
    per_input = [[r["caption"] for r in got[i:i + 4]] for i in (0, 4, 8)]
    assert per_input[0] == per_input[1] == per_input[2]  # bytes in Parquet, tar members, files: the same captions
    shards = tmp_path / "o" / "shards"
    written = rows(shards / "m.jsonl")
    assert [r["plm_caption"] for r in written] == per_input[0]
    assert all(Path(r.get("image") or r["video"]).is_absolute() for r in written)
    assert pq.read_table(shards / "p.parquet").column("plm_caption").to_pylist() == per_input[0]
    with tarfile.open(shards / "t.tar") as t:
        members = t.getnames()
        texts = [t.extractfile(m).read().decode() for m in members if m.endswith(".plm_caption.txt")]
    assert texts == per_input[0] and len(members) == 8


def test_parquet_output_holds_the_jsonl_rows(plm_checkpoint, plm_media, tmp_path):  # noqa: F811
    args = [str(plm_media / "test.jsonl"), *common(plm_checkpoint)]
    caption(*args, out=tmp_path / "j")
    summary = caption(*args, "--output-format", "parquet", out=tmp_path / "p")
    assert summary["captions"] == str(tmp_path / "p" / "captions.parquet")
    assert pq.read_table(tmp_path / "p" / "captions.parquet").to_pylist() == rows(tmp_path / "j" / "captions.jsonl")


def test_write_shards_of_a_folder_is_refused(plm_checkpoint, plm_media, tmp_path):  # noqa: F811
    result = runner.invoke(app, ["caption", "plm", str(plm_media / "test"), "--checkpoint", str(plm_checkpoint),
                                 "--write-shards", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "write_shards" in result.output and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_example_script_runs_end_to_end(tmp_path):
    """examples/plm/chat_and_caption.sh as shipped (its smoke run: a tiny model, the embedded media): every command
    still works, and its resumed captions equal the uninterrupted ones (the script checks with cmp)."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "plm" / "chat_and_caption.sh"
    env = {**os.environ, "PERCLI": f"{sys.executable} -m percli.cli", "PYTHON": sys.executable}
    env.pop("PLM", None), env.pop("MEDIA", None)
    done = subprocess.run(["bash", str(script), str(tmp_path / "work")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "work" / "chat_video.json").read_text())["tokens"] <= 32
    resumed = json.loads((tmp_path / "work" / "resumed_summary.json").read_text())
    assert (resumed["chunks_resumed"], resumed["chunks_written"]) == (2, 1)
    assert len(rows(tmp_path / "work" / "manifest_captions" / "shards" / "manifest.jsonl")) == 6
