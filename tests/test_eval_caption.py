"""`percli eval caption`: scores joined on the key, malformed and unmatched records counted,
CLIP-score on the images of a scene folder, and clear errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from percli.captioning.metrics import clip_score
from percli.captioning.scenes import write_scene_folder
from percli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Eight held-out scenes and predictions: the true caption as `altogether`, plus the alt-text."""
    folder = write_scene_folder(tmp_path_factory.mktemp("scenes") / "val", "val", 8)
    refs = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    preds = folder.parent / "captions.jsonl"
    preds.write_text("".join(json.dumps({"key": r["key"], "alt_text": r["alt_text"], "altogether": r["caption"]})
                             + "\n" for r in refs))
    return folder, preds, refs


def _summary(args, out_dir):
    result = runner.invoke(app, ["eval", "caption", *args, "--output", str(out_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((out_dir / "summary.json").read_text())
    return json.loads((out_dir / "summary.json").read_text())


def test_scores_each_field_on_the_same_records(scenes, tmp_path):
    folder, preds, _ = scenes
    summary = _summary(["--captions", str(preds), "--references", str(folder / "records.jsonl"),
                        "--field", "altogether", "--field", "alt_text"], tmp_path / "ev")
    m = summary["metrics"]
    assert summary["scored"] == 8 and summary["bad_records"] == 0
    assert m["altogether/bleu4"] == 1.0 and m["altogether/cider"] == pytest.approx(10.0)  # flat, BLEU a fraction
    assert m["alt_text/bleu4"] < 0.5 and m["alt_text/cider"] < 2.0
    table = runner.invoke(app, ["eval", "caption", "--captions", str(preds), "--references",
                                str(folder / "records.jsonl"), "--output", str(tmp_path / "table")])
    # without --json: the generic summary table of every job (one row per field and metric; BLEU in percent)
    assert table.exit_code == 0 and "altogether/cider" in table.stdout and "altogether/bleu4 (%)" in table.stdout
    assert "100.00" in table.stdout
    assert (tmp_path / "table" / "config.yaml").is_file() and (tmp_path / "table" / "env.json").is_file()


def test_join_counts_unmatched_repeated_and_malformed_records(scenes, tmp_path):
    folder, _, refs = scenes
    refs_file = tmp_path / "refs.jsonl"
    lines = [json.dumps({"key": r["key"], "caption": [r["caption"], "a picture"]}) for r in refs[:5]]
    lines += ["{not json", json.dumps({"key": refs[5]["key"], "caption": 7}), json.dumps({"caption": "no key"})]
    refs_file.write_text("\n".join(lines) + "\n")
    preds = tmp_path / "preds.jsonl"
    rows = [{"key": r["key"], "altogether": r["caption"]} for r in refs[:4]]
    rows += [{"key": refs[0]["key"], "altogether": "a repeat"}, {"key": refs[4]["key"], "altogether": None},
             {"key": refs[5]["key"], "altogether": "bad reference"}, {"key": "elsewhere", "altogether": "x"}]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = _summary(["--captions", str(preds), "--references", str(refs_file)], tmp_path / "ev")
    assert summary["scored"] == 4 and summary["metrics"]["altogether/bleu4"] == 1.0
    assert summary["repeated_keys"] == 1 and summary["predictions_without_reference"] == 1
    # Bad JSON and the keyless record (references), the None field, the number as a reference.
    assert summary["bad_records"] == 4
    reasons = " ".join(e["reason"] for e in summary["bad_record_examples"])
    assert "bad JSON" in reasons and "'altogether'" in reasons and "not a string or a list" in reasons


def _tiny_clip(path):
    from percli.core.checkpoint import save_weights
    from percli.models import create_model

    kwargs = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                              "head_width": 16},
              "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model = create_model("clip_vit_b32_quickgelu", **kwargs)
    save_weights(path, model.state_dict(), {"task": "clip", "name": "clip_vit_b32_quickgelu", "kwargs": kwargs})
    return model.eval()


def test_clip_score_on_the_scene_images(scenes, tmp_path):
    from percli.core.data.images import load_rgb
    from percli.core.data.transforms import ImagePreprocess
    from percli.models.clip_tokenizer import CLIPTokenizer

    folder, preds, refs = scenes
    model = _tiny_clip(tmp_path / "clip.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    for r in refs[1:]:  # by key, without the records' paths; the first image is missing, the second corrupt
        (images / f"{r['key']}.png").write_bytes((folder / r["image"]).read_bytes())
    (images / f"{refs[1]['key']}.png").write_bytes(b"not a png")
    bare_refs = tmp_path / "refs.jsonl"
    bare_refs.write_text("".join(json.dumps({"key": r["key"], "caption": r["caption"]}) + "\n" for r in refs))
    summary = _summary(["--captions", str(preds), "--references", str(bare_refs), "--field", "altogether",
                        "--field", "alt_text", "--clip-checkpoint", str(tmp_path / "clip.safetensors"),
                        "--images", str(images), "--batch-size", "4"], tmp_path / "ev")
    assert summary["clip"]["images_scored"] == 6 and summary["clip"]["bad_images"] == 2
    transform = ImagePreprocess.of(model.preprocess).eval_transform()
    batch = torch.stack([transform(load_rgb(str(folder / r["image"]))) for r in refs[2:]])
    tokenizer = CLIPTokenizer(context_length=24)
    for field, source in (("altogether", "caption"), ("alt_text", "alt_text")):
        expected = clip_score(model, tokenizer, batch, [r[source] for r in refs[2:]])
        assert summary["metrics"][f"{field}/clip_score"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--clip-checkpoint", "x.safetensors"], "go together"),
    (["--key", "id"], "no prediction"),
    (["--references", "missing.jsonl"], "no such file"),
])
def test_bad_arguments_are_clear_errors(scenes, tmp_path, extra, message):
    folder, preds, _ = scenes
    args = ["eval", "caption", "--captions", str(preds), "--references", str(folder / "records.jsonl"),
            "--output", str(tmp_path / "ev"), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "ev").exists()  # nothing is written before the inputs are known to be usable
