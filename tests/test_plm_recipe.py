"""`percli finetune plm`: a run with held-out exact-answer accuracy, the accuracy's equivalence with greedy decoding,
the stages' frozen towers, the text-only baseline, hostile conversation files, resume, FSDP against DDP, and named
config errors."""

import json
import signal
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from percli.core.checkpoint import read_weights
from percli.core.rundir import read_metrics
from percli.recipes.plm_finetune import exact_answer_hits
from tests.conftest import PYTHON, free_port, sigterm_after_step, subprocess_env

runner = CliRunner()
# a 1-layer, 32-wide decoder and a 1-layer PE (patch 8: 9 tokens per 48 px chunk) on the byte vocabulary
TINY = ["model.kwargs={dim: 32, n_layers: 1, n_heads: 2, n_kv_heads: 1, vocab_size: 512, ffn_dim_multiplier: 1.0, "
        "multiple_of: 16, max_seqlen: 512, pooling_ratio: 2, vision_model: {image_size: 48, patch_size: 8, "
        "width: 16, layers: 1, heads: 2, use_cls_token: true, use_abs_posemb: true, mlp_ratio: 2.0, "
        "ls_init_value: 0.1, drop_path: 0.0, use_ln_post: false, pool_type: none}}",
        "data.embedded_size=24", "data.val_size=8", "train.batch_size=4", "optim.ref_batch_size=4",
        "train.eval_every=0"]


@pytest.fixture(scope="module")
def app():
    from percli.cli import app as cli

    return cli


def _run(app, run_dir, *args):
    return runner.invoke(app, ["finetune", "plm", "--run-dir", str(run_dir), "--json", *TINY, *args])


def test_exact_answer_hits_need_every_token_of_the_first_answer():
    target = torch.tensor([[5, 6, 7, 8, 9, 1], [5, 6, 7, 8, 9, 1], [5, 6, 7, 8, 9, 1]])
    loss_mask = torch.tensor([[0, 1, 1, 0, 1, 1], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    logits = torch.full((3, 6, 12), -1.0).scatter(2, target[..., None], 1.0)  # argmax = target everywhere
    logits[0, 4, 3] = 5.0  # a wrong token in row 0's SECOND answer: the first answer alone decides
    logits[1, 2, 0] = 5.0  # row 1's only answer has a wrong last token
    hits = exact_answer_hits(logits, {"target": target, "loss_mask": loss_mask})
    assert hits.tolist() == [True, False, False]  # row 2 has no answer: never a hit


def test_a_short_run_scores_the_held_out_answers_and_records_what_rebuilds_it(tmp_path, app):
    result = _run(app, tmp_path / "run", "train.max_steps=2")
    assert result.exit_code == 0, result.output[-3000:]
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["eval/count"] == 8 and 0.0 <= metrics["eval/exact_answer_acc"] <= 1.0
    assert {k for k in metrics if k.startswith("eval/acc_")} >= {"eval/acc_count", "eval/acc_moving"}
    _, meta = read_weights(tmp_path / "run" / "checkpoints" / "step_0000002")
    assert meta["task"] == "plm" and meta["tokenizer"] == "bytes" and meta["stage"] == "stage3"
    assert meta["processor"]["image_size"] == 48 and meta["processor"]["max_video_frames"] == 8


def _overfit_file(tmp_path):
    from percli.core.data.embedded_plm import PLMDataSpec, write_plm_jsonl

    return write_plm_jsonl(tmp_path / "data", 4, split="train", media="image", spec=PLMDataSpec(image_size=48))


def test_exact_answer_accuracy_is_greedy_decoding_reproducing_the_answer(tmp_path, app):
    """Overfit 4 conversations, then decode each with the KV cache: a held-out item counts as right exactly when
    the generated answer equals the reference (and ends its turn)."""
    from percli.recipes.plm_common import load_plm

    source = _overfit_file(tmp_path)
    result = _run(app, tmp_path / "run", f"data.source={source}", f"data.val_source={source}", "train.max_steps=80",
                  "optim.lr=3e-3", "optim.warmup_fraction=0")
    assert result.exit_code == 0, result.output[-3000:]
    accuracy = json.loads(result.stdout)["metrics"]["eval/exact_answer_acc"]
    model, processor, _ = load_plm(tmp_path / "run")
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    generated = []
    for row in rows:
        media, _ = processor.load_media(row, str(source.parent))
        question = row["conversations"][0]["value"]
        ids, image_pos = processor.prompt(question, media)
        out = model.generate([ids], [media], image_pos=[image_pos], image_token_id=processor.tokenizer.image_id,
                             max_new_tokens=24, stop_ids=processor.tokenizer.stop_ids)
        generated.append(processor.tokenizer.decode([t for t in out[0] if t not in processor.tokenizer.stop_ids]))
    from_decoding = sum(g == row["answer"] for g, row in zip(generated, rows)) / len(rows)
    assert accuracy == pytest.approx(from_decoding) and 0 < accuracy < 1  # right and wrong answers both occur


def test_stage1_trains_the_projector_only(tmp_path, app):
    result = _run(app, tmp_path / "run", "stage=stage1", "train.max_steps=2", "train.ckpt_every=1",
                  "optim.warmup_fraction=0")
    assert result.exit_code == 0, result.output[-3000:]
    first, _ = read_weights(tmp_path / "run" / "checkpoints" / "step_0000001")
    second, meta = read_weights(tmp_path / "run" / "checkpoints" / "step_0000002")
    changed = {k.split(".")[0] for k in first if not torch.equal(first[k], second[k])}
    assert changed == {"vision_projector"} and meta["processor"]["conversation_format"] == "warmup"


def test_text_only_batches_carry_no_media(tmp_path):
    from percli.jobs import get_job
    from percli.recipes.plm_finetune import PLMTask

    cfg = get_job("finetune", "plm").resolve_config(None, None, [*TINY, "data.text_only=true"])
    task = PLMTask(cfg)
    task.build_model()
    data = task.train_dataset()
    batch = task.collate([data[i] for i in range(4)])
    assert batch["media_type"] == ["text"] * 4 and not (batch["image_pos_index"] >= 0).any()


def test_hostile_conversation_files_are_counted_not_fatal(tmp_path, app):
    source = _overfit_file(tmp_path)
    lines = source.read_text().splitlines()
    good = json.loads(lines[0])
    (tmp_path / "data" / "empty.png").write_bytes(b"")
    (tmp_path / "data" / "cut.png").write_bytes((tmp_path / "data" / good["image"]).read_bytes()[:60])
    hostile = [
        *lines,
        lines[1][: len(lines[1]) // 2],  # truncated line
        json.dumps({**good, "id": "noanswer", "conversations": good["conversations"][:1]}),
        json.dumps({**good, "id": "missing", "image": "train/none.png"}),
        json.dumps({**good, "id": "zero", "image": "empty.png"}),  # zero-length file: unreadable at load
        json.dumps({**good, "id": "truncated", "image": "cut.png"}),
        json.dumps({**good, "id": "long", "conversations": [good["conversations"][0],
                                                           {"from": "assistant", "value": "x" * 2000}]}),
        lines[2],  # a duplicated id
    ]
    source.write_text("\n".join(hostile) + "\n")
    result = _run(app, tmp_path / "run", f"data.source={source}", f"data.val_source={source}", "train.max_steps=2")
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    reasons = " ".join(f["reason"] for f in summary["bad_inputs"]["files"])
    assert "unreadable_image" in reasons and "prompt_too_long" in reasons
    # malformed, answerless, media-less and repeated lines never reach the model: counted when the file is read
    assert summary["bad_records"]["count"] == summary["eval_bad_records"]["count"] == 4
    skipped = " ".join(e["reason"] for e in summary["bad_records"]["examples"])
    assert all(r in skipped for r in ("malformed_line", "no_assistant_turn", "missing_media", "duplicate_id"))
    assert summary["metrics"]["eval/count"] == 4  # the four good conversations


def test_sigterm_then_resume_reproduces_the_uninterrupted_losses(tmp_path, monkeypatch, app):
    args = ["train.max_steps=4", "train.log_every=1", "train.ckpt_every=2"]
    full = _run(app, tmp_path / "full", *args)
    assert full.exit_code == 0, full.output[-3000:]
    undo = sigterm_after_step(monkeypatch, 3)
    stopped = _run(app, tmp_path / "part", *args)
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output[-3000:]
    undo()
    resumed = runner.invoke(app, ["finetune", "plm", "--run-dir", str(tmp_path / "part"), "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output[-3000:]

    def losses(run):
        return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]

    assert losses(tmp_path / "part") == losses(tmp_path / "full") and len(losses(tmp_path / "full")) == 4


def _launch(run, *args):
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "finetune", "plm", "--run-dir", str(run), "--json", *TINY, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_fsdp_over_two_processes_trains_as_ddp(tmp_path):
    """The sharded run's losses equal the unsharded one's on the same global batches (stage 1: frozen towers too)."""
    args = ["train.max_steps=3", "train.log_every=1", "data.val_size=6"]
    for stage in ("stage3", "stage1"):
        sharded = _launch(tmp_path / f"fsdp-{stage}", *args, f"stage={stage}", "train.fsdp=true")
        plain = _launch(tmp_path / f"ddp-{stage}", *args, f"stage={stage}")
        assert sharded["world_size"] == 2 and sharded["metrics"]["eval/count"] == plain["metrics"]["eval/count"] == 6

        def losses(run):
            return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]

        fsdp_losses, ddp_losses = losses(tmp_path / f"fsdp-{stage}"), losses(tmp_path / f"ddp-{stage}")
        assert len(fsdp_losses) == 3 and fsdp_losses == pytest.approx(ddp_losses, rel=1e-5), stage


@pytest.mark.parametrize(("override", "message"), [
    ("stage=stage4", "stage"),
    ("data.question_types=[nope]", "data.question_types"),
    ("tokenizer=/no/such/folder", "tokenizer"),
    ("data.source=/no/such.jsonl", "data.source"),
])
def test_a_bad_config_exits_2_naming_its_key(tmp_path, app, override, message):
    result = _run(app, tmp_path / "run", override)
    assert result.exit_code == 2 and message in result.output, result.output[-2000:]


def test_stage1_starts_from_a_llama_checkpoint_and_a_pe_checkpoint(tmp_path, app):
    """The release's stage-1 init: the decoder from a Llama consolidated folder, PE from its own file (``visual.``
    names, with the blocks and heads PLM's truncated tower does not have): both land exactly, the rest is reported."""
    from percli.jobs import get_job
    from percli.models import create_model
    from percli.models.plm_loading import load_towers

    cfg = get_job("finetune", "plm").resolve_config(None, None, TINY)
    torch.manual_seed(1)
    source = create_model("plm_1b", **cfg.model.kwargs)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "params.json").write_text("{}")  # as a Llama release's original/ folder
    lm = {k: v for k, v in source.state_dict().items() if not k.startswith(("vision_", "output.tied"))}
    torch.save(lm, llama / "consolidated.00.pth")
    pe = {f"visual.{k}": v for k, v in source.vision_model.state_dict().items()}
    pe["visual.proj"] = torch.zeros(16, 8)  # PE-Core's projection and a 2nd block: not in PLM's tower
    pe["visual.transformer.resblocks.1.ln_1.weight"] = torch.ones(16)
    torch.save(pe, tmp_path / "pe.pt")
    torch.manual_seed(2)
    model = create_model("plm_1b", **cfg.model.kwargs)
    report = load_towers(model, llama, tmp_path / "pe.pt")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items()
               if not k.startswith("vision_projector."))
    assert set(report.dropped) == {"vision_model.proj", "vision_model.transformer.resblocks.1.ln_1.weight"}
    result = _run(app, tmp_path / "run", "stage=stage1", f"init.language_model={llama}",
                  f"init.vision_model={tmp_path / 'pe.pt'}", "train.max_steps=1")
    assert result.exit_code == 0, result.output[-3000:]
    # over a run's towers: its decoder kept, the vision tower replaced (stage 1 keeps it frozen, so it stays equal)
    other = {k: v + 0.5 for k, v in pe.items()}
    torch.save(other, tmp_path / "pe2.pt")
    result = _run(app, tmp_path / "run2", "stage=stage1", f"model.checkpoint={tmp_path / 'run'}",
                  f"init.vision_model={tmp_path / 'pe2.pt'}", "train.max_steps=1")
    assert result.exit_code == 0, result.output[-3000:]
    weights, _ = read_weights(tmp_path / "run2" / "checkpoints" / "step_0000001")
    tower = {k.removeprefix("vision_model."): v for k, v in weights.items() if k.startswith("vision_model.")}
    assert tower and all(torch.equal(v, other[f"visual.{k}"]) for k, v in tower.items())
    assert torch.equal(weights["norm.weight"], source.state_dict()["norm.weight"])
    del lm["norm.weight"]
    torch.save(lm, llama / "consolidated.00.pth")
    with pytest.raises(RuntimeError, match="norm.weight"):
        load_towers(model, llama)
