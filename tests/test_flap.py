"""`percli pretrain flap`: token dropping, masked views, both towers learning, Audio-MAE initialisation, a
manifest run that skips a silent clip and trains on another caption field, exact resume, `eval retrieval`
reproducing a run's held-out retrieval, and the text tower from a local Hugging Face folder (trained and
saved with the rest, padding masked, rebuilt without the folder's weights, bad folders refused)."""

import json
import shutil
import signal

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import read_weights
from percli.core.rundir import read_metrics
from percli.models import create_model, load_initial_weights
from percli.models.audio_mae import AudioMaskedAutoencoderViT
from percli.recipes.flap import Config, FlapTask
from tests.conftest import sigterm_after_step

runner = CliRunner()
AUDIO = {"img_size": [64, 128], "embed_dim": 16, "depth": 1, "num_heads": 2, "decoder_embed_dim": 16,
         "decoder_depth": 1, "decoder_num_heads": 2}  # 4 time columns x 8 frequency rows of 16x16 patches
TEXT = {"context_length": 16, "width": 16, "heads": 2, "layers": 1}
TINY = ["model.kwargs={embed_dim: 16, audio_cfg: {embed_dim: 16, depth: 1, num_heads: 2, decoder_embed_dim: 16, "
        "decoder_depth: 1, decoder_num_heads: 2}, text_cfg: {context_length: 16, width: 16, heads: 2, layers: 1}}",
        "data.target_length=64", "data.embedded_size=32", "train.batch_size=8", "train.num_workers=0",
        "optim.ref_batch_size=8"]


def _model():
    torch.manual_seed(0)
    return create_model("flap_vit_base_patch16", embed_dim=16, audio_cfg=AUDIO, text_cfg=TEXT)


def _batch(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 64, 128, generator=g), torch.randint(1, 49000, (n, 16), generator=g)


@pytest.mark.parametrize("mask_1d,kept", [(True, 2 * 8), (False, int(32 * 0.5))])
def test_dropped_tokens_never_reach_the_encoder(mask_1d, kept):
    model, (fbank, _) = _model(), _batch()
    seen = []
    model.audio.blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    latent, mask, _ = model.forward_audio(fbank, 0.5, mask_1d=mask_1d)
    assert seen == [1 + kept] and latent.shape == (4, 1 + kept, 16)
    assert (mask.sum(dim=1) == 32 - kept).all()
    per_column = mask.view(4, 4, 8)  # [B, time, freq]: 1-D masking drops every frequency patch of a column
    assert ((per_column == per_column[..., :1]).all()) == mask_1d


def test_views_are_masked_independently_and_each_is_contrasted():
    model, (fbank, text) = _model(), _batch()
    out = model(fbank, text, mask_ratio=0.5, num_views=3)
    assert out["audio_features"].shape == (3, 4, 16) and out["text_features"].shape == (4, 16)
    assert not torch.allclose(out["audio_features"][0], out["audio_features"][1])  # different masks
    assert model(fbank, text, mask_ratio=0.0, num_views=1)["recon_loss"] == 0  # nothing dropped: nothing to predict
    task = FlapTask(Config(num_views=3))
    torch.manual_seed(2)
    step = task.loss_step(model, {"fbank": fbank, "text": text})
    assert torch.isclose(step["loss"], step["contrastive_loss"] + step["recon_loss"])


def test_loss_falls_and_gradients_reach_both_towers():
    model, (fbank, text) = _model(), _batch(8)
    task = FlapTask(Config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for i in range(15):
        torch.manual_seed(i)
        loss = task.loss_step(model, {"fbank": fbank, "text": text})["loss"]
        loss.backward()
        if i == 0:
            grads = {name: p.grad.abs().sum() for name, p in model.named_parameters() if p.grad is not None}
            for part in ("audio.blocks.0.attn.qkv.weight", "audio.decoder_pred.weight", "audio_projection.weight",
                         "text.transformer.resblocks.0.attn.in_proj_weight", "text.text_projection", "logit_scale"):
                assert grads[part] > 0, part
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < losses[0] - 0.3


@pytest.mark.parametrize("decoder_depth,dropped", [(1, 0), (2, 1)])
def test_audio_mae_weights_initialise_the_audio_tower(tmp_path, decoder_depth, dropped):
    mae = AudioMaskedAutoencoderViT(**{**AUDIO, "decoder_depth": decoder_depth})
    torch.save({"model": mae.state_dict()}, tmp_path / "pretrained.pth")  # the official layout
    model = _model()
    report = load_initial_weights(model, tmp_path / "pretrained.pth")
    assert torch.equal(model.audio.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)
    assert torch.equal(model.audio.decoder_embed.weight, mae.decoder_embed.weight) == (dropped == 0)
    assert bool(report.dropped) == bool(dropped) and "text.token_embedding.weight" in report.missing


def _tone(path, freq, seconds=0.5, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)


def test_manifest_run_skips_a_silent_clip_and_trains_on_the_caption_field(tmp_path):
    lines = []
    for i in range(8):
        _tone(tmp_path / f"{i}.wav", 300 + 200 * i)
        pitch = "low" if i < 4 else "high"
        lines.append({"id": f"c{i}", "audio": f"{i}.wav", "captions": [f"a {pitch} tone"],
                      "llm_captions": [f"a steady {pitch} pitched beep", f"one {pitch} note"]})
    sf.write(tmp_path / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    lines.append({"id": "silent", "audio": "silent.wav", "captions": ["nothing"], "llm_captions": ["nothing"]})
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = runner.invoke(app, ["pretrain", "flap", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
                                 f"data.source={manifest}", f"data.val_source={manifest}",
                                 "data.caption_key=llm_captions", "train.batch_size=4", "train.max_steps=3"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    bad = out["bad_inputs"]
    assert bad["count"] == 1 and bad["files"][0]["reason"].startswith("silent_audio")
    metrics = out["metrics"]
    assert metrics["eval/clips"] == 8 and metrics["eval/t2a_queries"] == 8  # the original captions, one each
    assert 0 <= metrics["eval/t2a_R@1"] <= 1 and 0 <= metrics["eval/a2t_R@10"] <= 1


def test_sigterm_then_resume_reproduces_the_uninterrupted_losses(tmp_path, monkeypatch):
    args = [*TINY, "train.max_steps=6", "train.log_every=1", "train.ckpt_every=3"]
    full = runner.invoke(app, ["pretrain", "flap", "--run-dir", str(tmp_path / "full"), *args])
    assert full.exit_code == 0, full.output
    undo = sigterm_after_step(monkeypatch, 4)
    stopped = runner.invoke(app, ["pretrain", "flap", "--run-dir", str(tmp_path / "part"), *args])
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output
    undo()
    resumed = runner.invoke(app, ["pretrain", "flap", "--run-dir", str(tmp_path / "part"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    expected = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if "loss" in r] == expected


# --------------------------------------------------------------------------- Hugging Face text tower

SHORT_RUN = [TINY[0], "data.target_length=64", "data.embedded_size=80", "train.batch_size=8", "train.num_workers=0",
             "optim.ref_batch_size=8", "train.max_steps=3"]  # 80 clips: 20 held out, what eval retrieval takes


def _hf_model(folder, pooling="first", context_length=16):
    torch.manual_seed(0)
    return create_model("flap_vit_base_patch16", embed_dim=16, audio_cfg=AUDIO,
                        text_cfg={"hf_folder": str(folder), "context_length": context_length, "pooling": pooling})


def _train_then_eval(tmp_path, *overrides: str):
    """`pretrain flap` for 3 steps, then `eval retrieval` on its checkpoint: (run summary, eval summary)."""
    trained = runner.invoke(app, ["pretrain", "flap", "--run-dir", str(tmp_path / "run"), "--json", *SHORT_RUN,
                                  *overrides])
    assert trained.exit_code == 0, trained.output
    trained = json.loads(trained.stdout)
    evaluated = runner.invoke(app, ["eval", "retrieval", f"model.checkpoint={trained['checkpoint']}",
                                    "data.embedded_size=80", "train.num_workers=0", "--run-dir",
                                    str(tmp_path / "eval"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output[-3000:]
    return trained, json.loads(evaluated.stdout)


def _assert_eval_reproduces_the_run(trained, evaluated):
    run, again = trained["metrics"], evaluated["metrics"]
    assert evaluated["family"] == "flap" and again["clips"] == run["eval/clips"] == 20
    # same checkpoint, same held-out clips and captions
    for key in ("t2a_R@1", "a2t_R@1", "t2a_mAP@10", "t2a_mean_rank", "a2t_mean_rank"):
        assert again[key] == pytest.approx(run[f"eval/{key}"]), key


def test_eval_retrieval_reproduces_a_clip_text_runs_held_out_retrieval(tmp_path):
    _assert_eval_reproduces_the_run(*_train_then_eval(tmp_path))


def test_hf_text_tower_trains_and_eval_retrieval_rebuilds_it_without_the_folder_weights(tmp_path, hf_folder):
    folder = tmp_path / "bert"  # a copy: its weights are removed after training
    shutil.copytree(hf_folder, folder)
    # on TINY's CLIP text sizes: hf_folder drops them, keeping context_length 16
    trained, _ = _train_then_eval(tmp_path / "first", f"model.kwargs.text_cfg.hf_folder={folder}")
    tensors, meta = read_weights(trained["checkpoint"])
    assert meta["kwargs"]["text_cfg"] == {"hf_folder": str(folder.resolve()), "context_length": 16,
                                          "pooling": "first", "pretrained": False}
    assert meta["tokenizer"] == "hf" and meta["tokenizer_folder"] == str(folder.resolve())
    initial = load_file(folder / "model.safetensors")
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(tensors[f"text.transformer.{query}"], initial[query])  # trained, and saved with the rest
    assert "text.text_projection.weight" in tensors and not any(".pooler." in k for k in tensors)

    (folder / "model.safetensors").unlink()  # the checkpoint needs the folder's config.json and tokenizer only
    evaluated = runner.invoke(app, ["eval", "retrieval", f"model.checkpoint={trained['checkpoint']}",
                                    "data.embedded_size=80", "train.num_workers=0", "--run-dir",
                                    str(tmp_path / "eval"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output[-3000:]
    _assert_eval_reproduces_the_run(trained, json.loads(evaluated.stdout))

    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink()
    broken = runner.invoke(app, ["eval", "retrieval", f"model.checkpoint={trained['checkpoint']}",
                                 "--run-dir", str(tmp_path / "broken")])
    assert broken.exit_code == 2 and "model.kwargs.text_cfg.hf_folder" in broken.output, broken.output


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_hf_text_padding_is_masked(hf_folder, pooling):
    model = _hf_model(hf_folder, pooling).eval()
    short, long = "a dog barks", "a siren wails while a dog barks and then a door slams shut"
    tokenize = model.make_tokenizer()
    alone = tokenize([short])
    n = int(alone["text_mask"].sum())  # [CLS] a dog bark ##s [SEP]
    assert alone["text_mask"][0].tolist() == [1] * n + [0] * (16 - n) and n < 16
    with torch.no_grad():
        reference = model.encode_text(alone["text"], alone["text_mask"])[0]
        paired = tokenize([short, long])
        assert torch.allclose(model.encode_text(paired["text"], paired["text_mask"])[0], reference, atol=1e-6)
        more = _hf_model(hf_folder, pooling, context_length=48).eval().make_tokenizer()([short, long])  # 48 - n pads
        assert torch.allclose(model.encode_text(more["text"], more["text_mask"])[0], reference, atol=1e-6)
        assert torch.allclose(model.encode_text(alone["text"])[0], reference, atol=1e-6)  # mask from the pad id
        unmasked = model.encode_text(alone["text"], torch.ones_like(alone["text_mask"]))[0]
    assert not torch.allclose(unmasked, reference, atol=1e-3)  # the padding would count without the mask


def test_hf_text_tower_gets_gradients_and_no_unused_parameters(hf_folder):
    model, (fbank, _) = _hf_model(hf_folder), _batch()
    tokens = model.make_tokenizer()(["a dog barks", "a siren", "rain on a roof", "a door slams"])
    step = FlapTask(Config()).loss_step(model.train(), {"fbank": fbank, **tokens})
    step["loss"].backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # the pooler is gone: DDP sees every parameter used
    assert model.text.transformer.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("case,message", [("missing", "is not a folder"), ("no_config", "has no config.json"),
                                          ("no_tokenizer", "has no tokenizer files")])
def test_a_bad_hf_folder_exits_2_naming_the_key(tmp_path, hf_folder, case, message):
    folder = tmp_path / "bert"
    if case != "missing":
        shutil.copytree(hf_folder, folder)
        for name in (["config.json"] if case == "no_config" else ["tokenizer.json", "vocab.txt"]):
            (folder / name).unlink()
    result = runner.invoke(app, ["pretrain", "flap", "--run-dir", str(tmp_path / "run"), *SHORT_RUN,
                                 f"model.kwargs.text_cfg.hf_folder={folder}"])
    assert result.exit_code == 2, result.output
    assert "model.kwargs.text_cfg.hf_folder" in result.output and message in result.output
    assert not (tmp_path / "run").exists()
