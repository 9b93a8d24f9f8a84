"""MoDE end to end at tiny sizes: cluster an image-text pool, write each data expert's shard (with the
out-of-cluster share), train a seed CLIP, branch two experts from it and ensemble them with metadata weights."""

import json

from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.captioned import CLASS_NAMES, CaptionedShapesDataset

runner = CliRunner()
TINY_CLIP = ["model.kwargs={embed_dim: 16, vision_cfg: {image_size: 32, patch_size: 8, width: 32, layers: 1, "
             "head_width: 16}, text_cfg: {context_length: 16, vocab_size: 49408, width: 16, heads: 2, layers: 1}}",
             "train.batch_size=8", "train.num_workers=0", "optim.ref_batch_size=8"]


def _pool(folder, n=96):
    """An image-text JSONL pool of the embedded captioned shapes (PNG files, relative paths)."""
    (folder / "img").mkdir(parents=True)
    shapes = CaptionedShapesDataset("train", n, image_size=32)
    with open(folder / "pool.jsonl", "w") as f:
        for i in range(n):
            item = shapes[i]
            from PIL import Image

            Image.fromarray((item["image"].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(
                folder / "img" / f"{i}.png")
            f.write(json.dumps({"key": f"s{i}", "image": f"img/{i}.png", "text": item["caption"]}) + "\n")
    (folder / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return folder / "pool.jsonl"


def _run(*args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_two_experts_branch_from_a_seed_and_ensemble(tmp_path):
    pool = _pool(tmp_path)
    mode = _run("curate", "mode", str(pool), "--fine", "8", "--coarse", "2", "--encoder", "hashing",
                "--expert-shards", "--ooc-ratio", "0.1", "--classes", str(tmp_path / "classes.txt"),
                "--run-dir", str(tmp_path / "mode"))
    shards = mode["expert_shards"]
    assert [s["expert"] for s in shards] == [0, 1] and sum(s["in_cluster"] for s in shards) == 96
    assert all(s["in_cluster"] == c for s, c in zip(shards, mode["coarse_sizes"]))
    for shard in shards:
        rows = [json.loads(line) for line in open(shard["path"])]
        assert len(rows) == shard["in_cluster"] + shard["out_of_cluster"] and shard["out_of_cluster"] > 0
        assert all(row["image"].startswith("/") for row in rows)  # absolute: readable from the run dir
    assignment = {json.loads(line)["index"]: json.loads(line)["coarse"] for line in open(mode["outputs"][0])}
    first = [json.loads(line) for line in open(shards[0]["path"])]  # pool line i has key s<i>
    assert sum(assignment[int(row["key"][1:])] != 0 for row in first) == shards[0]["out_of_cluster"]

    seed = _run("pretrain", "clip", "--run-dir", str(tmp_path / "seed"), *TINY_CLIP, f"data.source={pool}",
                "train.max_steps=3")
    experts = [_run("pretrain", "clip", "--run-dir", str(tmp_path / f"e{k}"), *TINY_CLIP,
                    f"data.source={shards[k]['path']}", f"model.checkpoint={seed['checkpoint']}",
                    "train.max_steps=2")["checkpoint"] for k in (0, 1)]
    ensemble = _run("eval", "zero-shot", f"ensemble=[{experts[0]},{experts[1]}]",
                    f"ensemble_centers={tmp_path / 'mode' / 'mode_centers.safetensors'}",
                    "data.source=embedded", "data.embedded_size=40", "train.num_workers=0")
    metrics = ensemble["metrics"]
    weights = [metrics["weight_expert0"], metrics["weight_expert1"]]
    assert min(weights) > 0 and abs(sum(weights) - 1) < 1e-6  # MoDE's softmax over the experts
    assert metrics["zero_shot_top1"] == metrics["ensemble_top1"] and metrics["chance_top1"] == 0.1
    assert metrics["best_expert_top1"] == max(metrics["expert0_top1"], metrics["expert1_top1"])
