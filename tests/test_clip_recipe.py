"""`percli pretrain clip`: the loss (single process and all-gathered over two), a short run whose loss
falls, the image-text readers (JSONL / Parquet / tar, corrupt images counted) and the preset dry run."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import read_weights
from percli.core.data import BadSample
from percli.core.data.captioned import CLASS_NAMES, CaptionedShapesDataset
from percli.core.data.image_text import ImageTextDataset
from percli.core.rundir import read_metrics
from percli.recipes.clip import contrastive_loss
from tests.conftest import free_port

runner = CliRunner()
TINY = ["train.batch_size=16", "train.num_workers=0", "data.embedded_size=128", "train.log_every=5",
        "optim.ref_batch_size=16"]


def _reference_loss(img, txt, scale):
    logits = scale * img @ txt.T
    labels = torch.arange(len(img))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_loss_is_symmetric_infonce():
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    assert torch.allclose(contrastive_loss(img, txt, scale), _reference_loss(img, txt, scale))
    # Perfectly aligned orthogonal pairs at scale 100: every row is certain.
    eye = torch.eye(6, 8)
    assert contrastive_loss(eye, eye, torch.tensor(100.0)) < 1e-6


def _two_process_worker(rank, port, img, txt, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rows = slice(0, 3) if rank == 0 else slice(3, 5)  # unequal shards: padding must be cut
    for with_grad in (False, True):
        local_img, local_txt = img[rows].clone().requires_grad_(), txt[rows].clone().requires_grad_()
        loss = contrastive_loss(local_img, local_txt, torch.tensor(5.0), gather_with_grad=with_grad)
        loss.backward()
        torch.save((loss.detach(), local_img.grad, local_txt.grad), out_dir / f"rank{rank}-{with_grad}.pt")
    dist.destroy_process_group()


def test_two_processes_compute_the_global_loss_with_local_gradients(tmp_path):
    img, txt = F.normalize(torch.randn(5, 4), dim=-1), F.normalize(torch.randn(5, 4), dim=-1)
    ref_img, ref_txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    ref = _reference_loss(ref_img, ref_txt, torch.tensor(5.0))
    ref.backward()
    # fork: the children need no fresh interpreter and torch import.
    mp.start_processes(_two_process_worker, args=(free_port(), img, txt, tmp_path), nprocs=2, join=True,
                       start_method="fork")
    for rank, rows in ((0, slice(0, 3)), (1, slice(3, 5))):
        loss, grad_img, grad_txt = torch.load(tmp_path / f"rank{rank}-False.pt")
        assert torch.allclose(loss, ref)  # every rank computes the full global loss
        assert torch.allclose(grad_img, ref_img.grad[rows], atol=1e-6)  # and the exact gradient of its rows
        assert torch.allclose(grad_txt, ref_txt.grad[rows], atol=1e-6)
        # gather_with_grad: both ranks' (identical) losses send gradients to every row: 2x; DDP's mean of the
        # parameter gradients then gives the global loss's own gradient
        loss, grad_img, grad_txt = torch.load(tmp_path / f"rank{rank}-True.pt")
        assert torch.allclose(loss, ref)
        assert torch.allclose(grad_img, 2 * ref_img.grad[rows], atol=1e-6)
        assert torch.allclose(grad_txt, 2 * ref_txt.grad[rows], atol=1e-6)


def test_no_argument_preset_dry_run():
    out = runner.invoke(app, ["pretrain", "clip", "--dry-run", "--json"])
    assert out.exit_code == 0, out.output
    cfg = json.loads(out.stdout)
    assert cfg["data"]["source"] == "embedded" and cfg["model"]["kwargs"]["embed_dim"] == 64
    assert cfg["optim"]["betas"] == [0.9, 0.98] and cfg["optim"]["eps"] == 1e-6 and cfg["optim"]["weight_decay"] == 0.2


def test_short_run_loss_falls_and_checkpoint_carries_zero_shot_meta(tmp_path):
    out = runner.invoke(app, ["pretrain", "clip", "--run-dir", str(tmp_path / "run"), "train.max_steps=20", *TINY,
                              "--json"])
    assert out.exit_code == 0, out.output
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["eval/chance_top1"] == 0.1 and "eval/zero_shot_top1" in summary["metrics"]
    meta = read_weights(tmp_path / "run" / "checkpoints" / "step_0000020")[1]
    assert meta["task"] == "clip" and meta["classes"] == list(CLASS_NAMES) and meta["image_size"] == 32


def test_captioned_set_is_deterministic_and_names_the_class():
    train, val = CaptionedShapesDataset("train", 20, image_size=24), CaptionedShapesDataset("val", 20, image_size=24)
    a, b = train[13], CaptionedShapesDataset("train", 20, image_size=24)[13]
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert CLASS_NAMES[a["label"]] in a["caption"]
    assert not torch.equal(train[3]["image"], val[3]["image"])


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_readers_count_bad_records_and_corrupt_images(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ok.png").write_bytes(_png("red"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "pairs.jsonl").write_text("\n".join([
        json.dumps({"image": "ok.png", "text": "a red square"}),
        json.dumps({"image": "broken.jpg", "text": "a corrupt image"}),
        json.dumps({"image": "ok.png"}),  # no text: counted when indexing
        "{not json",
    ]) + "\n")
    pq.write_table(pa.table({"image": [_png("blue"), b"", _png("blue")],
                             "text": ["blue bytes", "empty image", None]}), tmp_path / "pairs.parquet")
    for shard, colour in (("00", "green"), ("01", "white")):
        with tarfile.open(tmp_path / f"s{shard}.tar", "w") as tar:
            _add(tar, "a/000.jpg", _png(colour))
            _add(tar, "a/000.txt", f"a {colour} thing".encode())
            _add(tar, "a/001.png", _png(colour))
            _add(tar, "a/001.json", json.dumps({"text": "from json"}).encode())
            _add(tar, "a/002.txt", b"text without image")
    ds = ImageTextDataset(f"{tmp_path}/pairs.jsonl {tmp_path}/pairs.parquet {tmp_path}/s{{00..01}}.tar")
    assert len(ds) == 2 + 1 + 4
    assert ds.bad_records.count == 2 + 2 + 2  # jsonl: no text, bad JSON; parquet: empty image, null text; tar x2
    captions = [ds[i]["caption"] for i in range(len(ds)) if i != 1]
    assert captions == ["a red square", "blue bytes", "a green thing", "from json", "a white thing", "from json"]
    assert ds[4]["image"].shape == (3, 12, 12) and np.isclose(float(ds[4]["image"][1].mean()), 128 / 255, atol=0.01)
    with pytest.raises(BadSample, match="broken.jpg"):
        ds[1]


def test_training_on_shards_skips_a_corrupt_image(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    lines = []
    for i in range(8):
        Image.new("RGB", (36, 36), (30 * i, 200 - 20 * i, 90)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "text": f"colour number {i}"}))
    lines.append(json.dumps({"image": "broken.jpg", "text": "broken"}))
    lines.append(json.dumps({"image": "0.png", "text": "   "}))  # an empty caption: dropped when indexing
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    out = runner.invoke(app, ["pretrain", "clip", "--run-dir", str(tmp_path / "run"),
                              f"data.source={tmp_path}/train.jsonl", f"data.val_source={tmp_path}/train.jsonl",
                              "train.max_steps=2", "train.batch_size=9", "train.num_workers=0", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    m = summary["metrics"]
    assert summary["bad_records"]["count"] == 1
    assert summary["bad_inputs"]["count"] == 1 and "broken.jpg" in summary["bad_inputs"]["files"][0]["path"]
    assert 0.0 <= m["eval/image_to_text_R@1"] <= m["eval/image_to_text_R@5"] <= m["eval/image_to_text_R@10"] == 1.0
