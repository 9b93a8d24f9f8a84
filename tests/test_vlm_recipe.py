"""`percli pretrain vlm`: VLM's masked modality masking, the masked token loss through the recipe, runs, resume,
two processes and config errors."""

import json
import math
import signal
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from percli.core.rundir import read_metrics
from percli.models import create_model
from percli.recipes.video_text_common import MMPTCaptions, VideoTextDataSection, held_out
from percli.recipes.vlm import UNUSED_PARAMETERS, Config, VLMTask, mask_modalities
from tests.conftest import PYTHON, free_port, sigterm_after_step, subprocess_env

runner = CliRunner()
CLS, SEP, PAD, MASK, VOCAB = 101, 102, 0, 103, 30522
# the tiny preset with fewer videos: 40 train, 20 held out (about 75 captions)
SMALL = ["data.embedded_size=40", "train.batch_size=4", "optim.ref_batch_size=4"]
TINY_BERT = {"vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 32}


@pytest.fixture(scope="module")
def app():
    from percli.cli import app as cli

    return cli


# --------------------------------------------------------------------------- masking


def _layout(rows: int, generator: torch.Generator):
    """MMPT batches: [CLS] [SEP] w.. [SEP] [PAD].. with 1..12 words (ids 1000..1999), 1..8 real frames."""
    caps = torch.full((rows, 16), PAD)
    words = torch.randint(1, 13, (rows,), generator=generator)
    frames = torch.randint(1, 9, (rows,), generator=generator)
    for r in range(rows):
        n = int(words[r])
        caps[r, : n + 3] = torch.cat([torch.tensor([CLS, SEP]), torch.randint(1000, 2000, (n,), generator=generator),
                                      torch.tensor([SEP])])
    vmasks = torch.arange(8)[None, :] < frames[:, None]
    return caps, caps != PAD, vmasks


def _mask(caps, cmasks, vmasks, generator=None, **kwargs):
    return mask_modalities(caps, cmasks, vmasks, special_ids=(CLS, SEP, PAD), mask_id=MASK, vocab_size=VOCAB,
                           generator=generator, **kwargs)


def test_masked_modality_masking_rates_and_labels():
    caps, cmasks, vmasks = _layout(20000, torch.Generator().manual_seed(0))
    m = _mask(caps, cmasks, vmasks, torch.Generator().manual_seed(1))
    words = cmasks & (caps != CLS) & (caps != SEP)
    masked = m.text_label != -100
    # labels: the original id exactly where a word is masked; specials, pads and padded frames never masked
    assert torch.equal(m.text_label[masked], caps[masked]) and not (masked & ~words).any()
    assert torch.equal(m.caps[~masked], caps[~masked]) and not (m.video_label & ~vmasks).any()
    # one whole modality for half of the pairs, each side half of those
    shares = [(m.whole == k).float().mean().item() for k in range(3)]
    assert shares == pytest.approx([0.5, 0.25, 0.25], abs=0.015)
    text, video, normal = m.whole == 1, m.whole == 2, m.whole == 0
    assert torch.equal(masked[text], words[text]) and not m.video_label[text].any()
    assert torch.equal(m.video_label[video], vmasks[video]) and not masked[video].any()
    assert masked[normal].sum() / words[normal].sum() == pytest.approx(0.15, abs=0.01)
    assert m.video_label[normal].sum() / vmasks[normal].sum() == pytest.approx(0.15, abs=0.01)
    # BERT's 80/10/10 among the masked words, whole-text pairs included
    to_mask = (m.caps[masked] == MASK).float().mean().item()
    kept = (m.caps[masked] == caps[masked]).float().mean().item()
    assert (to_mask, kept, 1 - to_mask - kept) == pytest.approx((0.8, 0.1, 0.1), abs=0.01)


def test_masking_draws_from_the_global_rng_when_given_no_generator():
    caps, cmasks, vmasks = _layout(64, torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    first = _mask(caps, cmasks, vmasks)
    torch.manual_seed(5)
    again = _mask(caps, cmasks, vmasks)
    other = _mask(caps, cmasks, vmasks)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first.text_label, other.text_label)
    seeded = _mask(caps, cmasks, vmasks, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first, seeded))  # the same draws, in the same order


# --------------------------------------------------------------------------- the loss through the recipe


class _TargetScores(torch.nn.Module):
    """Records its inputs; logits 0 except `a` at each row's target (a frame: column 0, a word: its label)."""

    a = 2.0

    def forward(self, caps, cmasks, vfeats, vmasks, video_label, text_label):
        self.seen = {"caps": caps, "video_label": video_label, "text_label": text_label}
        unmasked = int((vmasks & ~video_label).sum())
        labels = text_label[text_label != -100]
        video = torch.zeros(int(video_label.sum()), 1 + unmasked + VOCAB)
        video[:, 0] = self.a
        text = torch.zeros(len(labels), VOCAB + unmasked)
        text[torch.arange(len(labels)), labels] = self.a
        self.width = 1 + unmasked + VOCAB
        return {"video_logits": video, "text_logits": text}


def test_loss_step_scores_masked_frames_and_words_over_the_joint_vocabulary():
    task = VLMTask(Config())
    task.captions, task.vocab_size = MMPTCaptions(max_len=12), VOCAB
    texts = ["now a red circle jumps", "a blue square spins slowly", "green", "the triangle pulses and moves left"]
    vmasks = torch.arange(6)[None, :] < torch.tensor([[6], [3], [1], [4]])
    batch = {"text": texts, "video": torch.randn(4, 6, 8), "video_mask": vmasks}
    model = _TargetScores()
    torch.manual_seed(3)
    out = task.loss_step(model, batch)
    caps, cmasks = task.captions(texts)
    torch.manual_seed(3)
    expected = task.mask(caps, cmasks, vmasks)  # the model got the global RNG's masks of the original captions
    assert all(torch.equal(model.seen[k], getattr(expected, k)) for k in ("caps", "video_label", "text_label"))
    rows = int(expected.video_label.sum()) + int((expected.text_label != -100).sum())
    assert rows > 0 and out["masked_words"] + out["masked_frames"] == rows
    # every row: softmax over W = 1 + N + vocab columns (the text rows get one zero column), target scored a
    W, a = model.width, model.a
    assert out["loss"].item() == pytest.approx(math.log(W - 1 + math.exp(a)) - a, rel=1e-5)


@pytest.mark.parametrize("mm_prob", [0.0, 1.0])
def test_every_trained_parameter_gets_a_gradient(mm_prob):
    """DDP without find_unused_parameters: only the pooler and seg_embeddings are unused, and they are frozen."""
    task = VLMTask(Config(mm_prob=mm_prob))
    task.captions, task.vocab_size = MMPTCaptions(max_len=12), VOCAB
    task.kwargs = {"bert_config": TINY_BERT, "max_video_len": 6, "input_dim": 8}
    torch.manual_seed(0)
    model = create_model("vlm_how2", **task.kwargs)
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(UNUSED_PARAMETERS))
    vmasks = torch.arange(6)[None, :] < torch.tensor([[6], [3], [5], [4]])
    batch = {"text": ["a red circle jumps", "a blue square", "green stars spin", "it moves"] * 2,
             "video": torch.randn(8, 6, 8), "video_mask": vmasks.repeat(2, 1)}
    task.loss_step(model, batch)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert missing == [] and frozen and all(n.startswith(UNUSED_PARAMETERS) for n in frozen)


def test_a_fully_masked_caption_is_read_from_the_video():
    """Captions "a <colour> circle" whose colour only the frames show: trained through the recipe's loss_step
    with whole-modality masking only, the model fills a caption of [MASK]s with the video's colour."""
    colours = ["red", "blue", "green", "yellow"]
    task = VLMTask(Config(mm_prob=1.0))
    task.captions, task.vocab_size = MMPTCaptions(max_len=8), VOCAB
    torch.manual_seed(0)
    model = create_model("vlm_how2", bert_config={**TINY_BERT, "hidden_size": 32, "intermediate_size": 64},
                         max_video_len=4, input_dim=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch(n, seed):
        g = torch.Generator().manual_seed(seed)
        colour = torch.randint(4, (n,), generator=g)
        video = 0.1 * torch.randn(n, 4, 8, generator=g)
        video[torch.arange(n), :, colour] += 1.0
        texts = [f"a {colours[c]} circle" for c in colour]
        return {"text": texts, "video": video, "video_mask": torch.ones(n, 4, dtype=torch.bool)}

    for step in range(250):
        loss = task.loss_step(model, batch(32, step))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    held = batch(200, 10**6)
    caps, cmasks = task.captions(held["text"])
    words = cmasks & (caps != CLS) & (caps != SEP)  # 3 per caption
    with torch.no_grad():
        out = model(caps.masked_fill(words, MASK), cmasks, held["video"], held["video_mask"],
                    video_label=torch.zeros(200, 4, dtype=torch.bool), text_label=torch.where(words, caps, -100))
    colour_hits = out["text_logits"].argmax(1).view(200, 3)[:, 1] == caps[words].view(200, 3)[:, 1]
    assert colour_hits.float().mean() > 0.9  # the text alone gives 1 in 4


# --------------------------------------------------------------------------- runs


def _losses(run):
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def test_two_steps_write_retrieval_and_masked_token_metrics(tmp_path, app):
    result = runner.invoke(app, ["pretrain", "vlm", "--run-dir", str(tmp_path / "run"), *SMALL, "train.max_steps=2"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["status"] == "completed" and summary["step"] == 2 and math.isfinite(metrics["loss"])
    assert metrics["eval/clips"] == metrics["eval/t2v_queries"] > 20
    for key in ("eval/t2v_R@1", "eval/v2t_R@1", "eval/masked_word_acc", "eval/masked_frame_acc",
                "eval/caption_from_video_acc", "eval/video_from_caption_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert math.isfinite(metrics["eval/mtm_loss"]) and metrics["masked_words"] > 0


def test_sigterm_then_resume_reproduces_the_uninterrupted_losses(tmp_path, monkeypatch, app):
    args = [*SMALL, "train.max_steps=6", "train.log_every=1", "train.ckpt_every=3"]
    full = runner.invoke(app, ["pretrain", "vlm", "--run-dir", str(tmp_path / "full"), *args])
    assert full.exit_code == 0, full.output
    undo = sigterm_after_step(monkeypatch, 4)
    stopped = runner.invoke(app, ["pretrain", "vlm", "--run-dir", str(tmp_path / "part"), *args])
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output
    undo()
    resumed = runner.invoke(app, ["pretrain", "vlm", "--run-dir", str(tmp_path / "part"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full") and len(_losses(tmp_path / "full")) == 6


def test_two_processes_train_and_gather_the_held_out_clips(tmp_path):
    """gloo DDP with no find_unused_parameters: it fails if a trained parameter gets no gradient."""
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "pretrain", "vlm", "--run-dir", str(tmp_path / "run"), "--json", *SMALL,
           "train.max_steps=3", "train.log_every=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 8 and summary["step"] == 3
    held_out_clips = len(held_out(VideoTextDataSection(embedded_size=40)))
    assert summary["metrics"]["eval/clips"] == held_out_clips  # both ranks' halves gathered
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r] == [1, 2, 3]


@pytest.mark.parametrize("override,key", [
    ("mm_prob=1.5", "mm_prob"),
    ("model.kwargs.bert_config={hidden_sise: 64}", "model.kwargs.bert_config"),
    ("model.kwargs.max_video_len=4", "model.kwargs.max_video_len"),
    ("max_text_tokens=3", "max_text_tokens"),
    ("max_text_tokens=60", "max_text_tokens"),
])
def test_a_bad_config_exits_2_naming_its_key(tmp_path, app, override, key):
    result = runner.invoke(app, ["pretrain", "vlm", "--run-dir", str(tmp_path / "run"), override])
    assert result.exit_code == 2 and (f"{key}=" in result.output or f"{key}:" in result.output), result.output
    assert not (tmp_path / "run").exists()


def test_finetune_vlm_from_a_pretraining_run_and_eval_retrieval_rescores_it(tmp_path, app):
    """`finetune vlm` reads a `pretrain vlm` run's architecture and tokenizer (its masked-token head dropped),
    trains the modality-isolated encoder, and `eval retrieval` of the result scores the same held-out clips the
    run's own evaluation did; a VideoCLIP job refuses the VLM run by name."""
    pre = tmp_path / "pre"
    result = runner.invoke(app, ["pretrain", "vlm", "--run-dir", str(pre), *SMALL, "train.max_steps=1",
                                 f"model.kwargs.bert_config={json.dumps(TINY_BERT)}", "max_text_tokens=23"])
    assert result.exit_code == 0, result.output[-3000:]
    small = ["data.embedded_size=40", "train.batch_size=4", "optim.ref_batch_size=4"]
    result = runner.invoke(app, ["finetune", "vlm", "--run-dir", str(tmp_path / "ft"), "--json", *small,
                                 f"model.checkpoint={pre}", "train.max_steps=2"])
    assert result.exit_code == 0, result.output[-3000:]
    tuned = json.loads(result.stdout)["metrics"]
    from percli.core.checkpoint import read_weights

    _, meta = read_weights(tmp_path / "ft" / "checkpoints" / "step_0000002")
    assert (meta["task"], meta["name"], meta["kwargs"]["bert_config"]["hidden_size"]) == ("vlm", "vlm_retrieval_how2",
                                                                                          16)
    assert meta["max_text_tokens"] == 23  # the pretraining run's, not the finetune preset's 19
    result = runner.invoke(app, ["eval", "retrieval", "--run-dir", str(tmp_path / "ev"), "--json",
                                 f"model.checkpoint={tmp_path / 'ft' / 'checkpoints' / 'step_0000002'}",
                                 "data.embedded_size=40"])
    assert result.exit_code == 0, result.output[-3000:]
    scored = json.loads(result.stdout)["metrics"]
    assert scored["t2v_queries"] == tuned["eval/t2v_queries"] > 20
    for key in ("t2v_R@1", "t2v_mean_rank", "v2t_mean_rank"):
        assert scored[key] == pytest.approx(tuned[f"eval/{key}"], abs=1e-6)
    result = runner.invoke(app, ["eval", "retrieval", "--run-dir", str(tmp_path / "ev0"), "--json",
                                 f"model.checkpoint={pre / 'checkpoints' / 'step_0000001'}",
                                 "data.embedded_size=40"])  # the pretraining run
    assert result.exit_code == 0 and json.loads(result.stdout)["metrics"]["t2v_queries"] > 20, result.output[-3000:]
    result = runner.invoke(app, ["finetune", "videoclip", "--run-dir", str(tmp_path / "vc"), f"model.checkpoint={pre}"])
    assert result.exit_code == 2 and "model.checkpoint" in result.output and "'vlm' run" in result.output
