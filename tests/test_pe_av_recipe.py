"""`percli pretrain pe-av` losses (one process and two gloo processes) and `percli eval retrieval` on bad input."""

from __future__ import annotations

import json
from collections import Counter

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import save_weights
from percli.core.data.av_clips import AVClipDataset
from percli.core.data.images import BadSample
from percli.models.pe_av import PEAudioVisual, load_official_state
from percli.models.pe_av_tokenizer import PETextTokenizer
from percli.recipes.pe_av import PairLogits, pair_loss
from tests.conftest import free_port
from tests.test_av_events import _hostile_manifest
from tests.test_pe_av import AV_KW

runner = CliRunner()


def test_sigmoid_loss_is_siglip_and_softmax_loss_is_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    scale, bias = torch.tensor(1.5), torch.tensor(-2.0)
    z = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T * scale.exp() + bias
    labels = 2 * torch.eye(5) - 1
    siglip = -sum(F.logsigmoid(labels[i, j] * z[i, j]) for i in range(5) for j in range(5)) / 5
    torch.testing.assert_close(pair_loss(a, b, scale, bias, "sigmoid"), siglip)
    logits = z - bias
    infonce = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    torch.testing.assert_close(pair_loss(a, b, scale, bias, "softmax"), infonce)
    logits = PairLogits(3, "sigmoid")
    assert logits.logit_scale.shape == (3,) and float(logits.logit_bias.detach()[0]) == -10.0
    assert not PairLogits(2, "softmax").logit_bias.requires_grad


def _features(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)


def _two_process_worker(rank, port, kind, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rows = slice(0, 3) if rank == 0 else slice(3, 5)  # unequal shards: the padding of the gather is cut
    a, b = _features()
    left, right = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
    scale, bias = torch.tensor(1.2, requires_grad=True), torch.tensor(-3.0, requires_grad=True)
    loss = pair_loss(left, right, scale, bias, kind)
    loss.backward()
    torch.save((loss.detach(), left.grad, right.grad, scale.grad, bias.grad), out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_contrast_the_global_batch_with_the_same_loss_and_gradients(tmp_path):
    for kind in ("sigmoid", "softmax"):
        a, b = (t.clone().requires_grad_() for t in _features())
        scale, bias = torch.tensor(1.2, requires_grad=True), torch.tensor(-3.0, requires_grad=True)
        ref = pair_loss(a, b, scale, bias, kind)
        ref.backward()
        mp.start_processes(_two_process_worker, args=(free_port(), kind, tmp_path), nprocs=2, join=True,
                           start_method="fork")
        for rank, rows in ((0, slice(0, 3)), (1, slice(3, 5))):
            loss, grad_left, grad_right, grad_scale, grad_bias = torch.load(tmp_path / f"rank{rank}.pt")
            torch.testing.assert_close(loss, ref.detach())  # every rank computes the global batch's loss
            torch.testing.assert_close(grad_left, a.grad[rows])  # and its rows' exact gradient
            torch.testing.assert_close(grad_right, b.grad[rows])
            torch.testing.assert_close(grad_scale, scale.grad)
            if kind == "sigmoid":
                torch.testing.assert_close(grad_bias, bias.grad)
        # a local-only loss would differ: the other rank's rows are real negatives
        local = pair_loss(a[:3].detach(), b[:3].detach(), scale.detach(), bias.detach(), kind)
        assert not torch.allclose(local, ref.detach())


def test_training_temperatures_are_dropped_when_loading_into_the_model():
    torch.manual_seed(0)
    trained = PEAudioVisual(**AV_KW)
    trained.pair_logits = PairLogits(6, "sigmoid")
    state = trained.state_dict()
    fresh = PEAudioVisual(**AV_KW)
    report = load_official_state(fresh, state)
    assert report.dropped == ["pair_logits.logit_bias", "pair_logits.logit_scale"]
    assert torch.equal(fresh.audio_head.proj.weight, trained.audio_head.proj.weight)
    # continuing training from a release: the temperatures start at their init
    fresh.pair_logits = PairLogits(6, "sigmoid")
    assert load_official_state(fresh, {k: v for k, v in state.items() if "pair_logits" not in k}).missing == [
        "pair_logits.logit_bias", "pair_logits.logit_scale"]


def _tiny_checkpoint(tmp_path):
    kwargs = json.loads(json.dumps(AV_KW))
    kwargs["text_model"]["vocab_size"] = PETextTokenizer().vocab_size
    avm = kwargs["audio_visual_model"]  # 4 s clips: 8 kHz, hop 320 -> 100 audio steps
    avm["audio_model"]["dac_vae_encoder"].update(downsampling_ratios=[2, 4, 5, 8], sampling_rate=8000)
    for tower in (avm["audio_model"]["audio_transformer"], avm["audio_visual_transformer"]):
        tower["max_position_embeddings"] = 128
    torch.manual_seed(0)
    model = PEAudioVisual(**kwargs)
    meta = {"name": "pe_av", "kwargs": model.config, "task": "pe-av",
            "tokenizer": PETextTokenizer(context_length=16).meta()}
    return save_weights(tmp_path / "tiny.safetensors", model.state_dict(), meta)


def test_eval_retrieval_skips_and_counts_every_kind_of_bad_clip(tmp_path):
    from percli.core.data.av_events import make_av_events

    good = make_av_events(tmp_path / "train", 3, seed=3)
    folder = tmp_path / "hostile"
    folder.mkdir()
    manifest, _, _ = _hostile_manifest(folder, good)
    reader = AVClipDataset(manifest)  # the reader's own verdict on each line and file
    indexing = dict(reader.skipped)
    reading = Counter()
    for index in range(len(reader)):
        try:
            reader[index]
        except BadSample as bad:
            reading[bad.reason.split(":")[0]] += 1
    run = tmp_path / "run"
    result = runner.invoke(app, ["eval", "retrieval", f"model.checkpoint={_tiny_checkpoint(tmp_path)}",
                                 f"data.source={manifest}", "data.num_frames=2", "train.num_workers=0",
                                 "train.batch_size=4", "--run-dir", str(run), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["skipped"] == dict(Counter(indexing) + reading)
    assert summary["bad_inputs"]["count"] == sum(reading.values())
    assert summary["metrics"]["clips"] == 2.0  # "good" and "one_blank" (with its one non-empty caption)
    assert indexing["duplicate_id"] == 1 and indexing["no_caption"] == 1
    assert {"no_audio_track", "silent_audio", "short_audio", "corrupt_video", "empty_file"} <= set(reading)
    for key in ("t2a_R@1", "a2t_R@1", "t2v_R@10", "v2t_mAP@10", "t2av_median_rank", "a2v_R@1", "v2a_R@5"):
        assert key in summary["metrics"], key
    assert summary["metrics"]["t2a_R@10"] == 1.0  # two clips: any caption finds its clip in the top 10
    assert json.loads((run / "summary.json").read_text()) == summary


def test_embed_writes_resumable_parts_and_counts_bad_clips(tmp_path):
    from percli.core.checkpoint import read_weights
    from percli.core.data.av_events import make_av_events

    good = make_av_events(tmp_path / "train", 3, seed=3)
    folder = tmp_path / "hostile"
    folder.mkdir()
    manifest, _, _ = _hostile_manifest(folder, good)
    checkpoint = str(_tiny_checkpoint(tmp_path))
    out = tmp_path / "emb"
    args = ["embed", str(manifest), "--checkpoint", checkpoint, "--part-size", "4", "--batch-size", "2",
            "num_frames=2", "-o", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["parts"] == 3 and summary["clips_embedded"] == 2  # "good" and "one_blank"
    assert {"no_audio_track", "silent_audio", "short_audio", "corrupt_video"} <= set(summary["skipped"])
    tensors, meta = read_weights(out / "parts" / "part-00000.safetensors")
    assert meta["ids"] == ["good"] and meta["captions"] == ["a dog barks"]
    assert tensors["audio"].shape == (1, 8) and tensors["audio_video_text"].shape == (1, 8)
    assert tensors["caption_item"].tolist() == [0]
    # --resume writes only the missing part, and the same bytes as before
    last = out / "parts" / "part-00002.safetensors"
    before = last.read_bytes()
    last.unlink()
    first = (out / "parts" / "part-00000.safetensors").stat().st_mtime_ns
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads(result.stdout)["parts_written"] == 1
    assert last.read_bytes() == before and (out / "parts" / "part-00000.safetensors").stat().st_mtime_ns == first


def _tiny_frame_checkpoint(tmp_path):
    from percli.models.pe_av import PEAudioFrame
    from tests.test_pe_av import FRAME_KW

    kwargs = json.loads(json.dumps(FRAME_KW))
    kwargs["text_model"]["vocab_size"] = PETextTokenizer().vocab_size
    kwargs["audio_model"]["dac_vae_encoder"].update(downsampling_ratios=[2, 4, 5, 8], sampling_rate=8000)
    kwargs["audio_model"]["audio_transformer"]["max_position_embeddings"] = 128
    torch.manual_seed(0)
    model = PEAudioFrame(**kwargs)
    meta = {"name": "pe_a_frame", "kwargs": model.config, "tokenizer": PETextTokenizer(context_length=16).meta(),
            "labels": ["drum"], "queries": ["a drum being hit"]}
    return save_weights(tmp_path / "frame.safetensors", model.state_dict(), meta)


def test_eval_sed_and_detect_events_skip_unreadable_files(tmp_path):
    from percli.core.data.av_events import make_av_events

    clips = make_av_events(tmp_path / "train", 2, seed=3).parent / "clips"
    (clips / "garbage.wav").write_bytes(b"RIFF not audio")
    labels = (tmp_path / "train" / "events.tsv").read_text()
    tsv = tmp_path / "strong.tsv"
    tsv.write_text(labels + "missing.wav\t0.5\t1.0\tdrum\ngarbage.wav\t0.1\t0.9\tsiren\n")
    checkpoint = str(_tiny_frame_checkpoint(tmp_path))
    result = runner.invoke(app, ["eval", "sed", f"model.checkpoint={checkpoint}", f"data.source={tsv}",
                                 f"data.audio_root={clips}", "--run-dir", str(tmp_path / "sed"), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["metrics"]["clips"] == 2.0 and summary["bad_inputs"]["count"] == 2
    assert {b["reason"].split(":")[0] for b in summary["bad_inputs"]["files"]} == {"missing_file", "unreadable_audio"}
    assert summary["queries"]["drum"] == "a drum being hit"  # the checkpoint's trained query for its label
    assert 0.0 <= summary["metrics"]["auroc"] <= 1.0 and "event_f1_micro" in summary["metrics"]
    # detect events: spans per query for the readable files, the others listed
    out = tmp_path / "found.json"
    result = runner.invoke(app, ["detect", "events", str(clips / "train_00000.wav"), str(clips / "garbage.wav"),
                                 str(tmp_path / "nowhere.wav"), "--checkpoint", checkpoint, "-t", "a drum",
                                 "--threshold", "0.01", "-o", str(out), "--run-dir", str(tmp_path / "det"), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert [f["file"] for f in summary["files"]] == [str(clips / "train_00000.wav")]
    assert summary["bad_inputs"]["count"] == 2 and json.loads(out.read_text())["queries"] == ["a drum"]
    spans = summary["files"][0]["events"]
    assert spans and all(0 <= e["start"] < e["end"] <= summary["files"][0]["duration_s"] for e in spans)


def test_eval_retrieval_runs_clip_on_frames_mavil_audio_video_and_flap(tmp_path):
    from percli.avsuperb.job import TINY_MAVIL
    from percli.models import create_model

    clip_kwargs = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                                   "head_width": 16},
                   "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    flap_kwargs = {"embed_dim": 16, "audio_cfg": {"img_size": [64, 128], "embed_dim": 16, "depth": 1, "num_heads": 2,
                                                  "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2},
                   "text_cfg": {"context_length": 32, "width": 16, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    clip = create_model("clip_vit_b32_quickgelu", **clip_kwargs)
    mavil = create_model("mavil_vit_small_patch16", **TINY_MAVIL)
    flap = create_model("flap_vit_base_patch16", **flap_kwargs)
    fbank = {"sample_rate": 16000, "num_mel_bins": 128, "target_length": 64, "mean": -4.27, "std": 4.57}
    files = {"clip": save_weights(tmp_path / "clip.safetensors", clip.state_dict(),
                                  {"name": "clip_vit_b32_quickgelu", "kwargs": clip_kwargs, "task": "clip"}),
             "mavil": save_weights(tmp_path / "mavil.safetensors", mavil.state_dict(),
                                   {"name": "mavil_vit_small_patch16", "kwargs": TINY_MAVIL}),
             "flap": save_weights(tmp_path / "flap.safetensors", flap.state_dict(),
                                  {"name": "flap_vit_base_patch16", "kwargs": flap_kwargs, "task": "flap", **fbank})}
    expected = {"clip": {"t2v_R@1", "v2t_R@10"}, "mavil": {"a2v_R@1", "v2a_mAP@10"}, "flap": {"t2a_R@1", "a2t_R@10"}}
    absent = {"clip": "t2a_R@1", "mavil": "t2v_R@1", "flap": "a2v_R@1"}
    for family, path in files.items():
        result = runner.invoke(app, ["eval", "retrieval", f"model.checkpoint={path}", "data.embedded_size=20",
                                     "data.num_frames=4", "train.num_workers=0", "--run-dir",
                                     str(tmp_path / family), "--json"])
        assert result.exit_code == 0, result.output[-3000:]
        summary = json.loads(result.stdout)
        assert summary["family"] == family and summary["metrics"]["clips"] == 20.0
        assert expected[family] <= set(summary["metrics"]) and absent[family] not in summary["metrics"]
