"""VideoCLIP / VLM models (percli.models.mmpt, percli.models.vlm) and their BERT (percli.models.bert)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from percli.core.checkpoint import save_weights
from percli.models import create_model
from percli.models.bert import BertConfig, BertModel
from percli.models.mmpt import (
    MMFusionSeparate,
    MMFusionShare,
    load_official_state,
    mm_contrastive_loss,
    t2v_contrastive_loss,
)
from percli.models.vlm import MMFusionJoint, MMFusionMTM, mtm_loss
from tests.conftest import GOLDEN_DIR

TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=40)
V, C = 6, 10  # max_video_len, caption slots ([CLS] [SEP] caption [SEP] pad)


def _batch(seed: int = 0, frames: tuple[int, ...] = (6, 4, 2), words: tuple[int, ...] = (5, 3, 1)):
    """An MMPT batch: caps [CLS]=1 [SEP]=2 w.. [SEP]=2 [PAD]=0, zero-padded 512-d frames."""
    g = torch.Generator().manual_seed(seed)
    B = len(frames)
    caps = torch.zeros(B, C, dtype=torch.long)
    cmasks = torch.zeros(B, C, dtype=torch.bool)
    for b, n in enumerate(words):
        caps[b, :n + 3] = torch.cat([torch.tensor([1, 2]), torch.randint(4, 64, (n,), generator=g), torch.tensor([2])])
        cmasks[b, :n + 3] = True
    vmasks = torch.arange(V)[None] < torch.tensor(frames)[:, None]
    vfeats = torch.randn(B, V, 512, generator=g) * vmasks[..., None]
    return caps, cmasks, vfeats, vmasks


def _videoclip(seed: int = 0) -> MMFusionSeparate:
    torch.manual_seed(seed)
    return MMFusionSeparate(TINY, num_hidden_video_layers=2, max_video_len=V).eval()


# --------------------------------------------------------------------------- losses


def test_symmetric_infonce_has_no_temperature_and_sums_both_directions():
    video = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    text = torch.eye(2)  # scores = video itself: [[1, 2], [0, 3]]
    # video->text rows: log(1 + e) (target 0 of [1, 2]), log(1 + e^-3) (target 1 of [0, 3]);
    # text->video rows ([[1, 0], [2, 3]]): log(1 + e^-1) both
    v2t = (math.log(1 + math.e) + math.log(1 + math.exp(-3))) / 2
    t2v = math.log(1 + math.exp(-1))
    assert mm_contrastive_loss(video, text).item() == pytest.approx(v2t + t2v, abs=1e-6)
    assert t2v_contrastive_loss(video, text).item() == pytest.approx(t2v, abs=1e-6)


def test_mtm_loss_scores_frames_against_column_0_and_words_against_their_ids():
    video_logits = torch.tensor([[5.0, 0.0, 0.0]])  # [1 masked frame, 1 + N(=1) + vocab(=1)]
    text_logits = torch.tensor([[0.0, 0.0]])  # [1 masked word, vocab + N]; padded with a zero column
    text_label = torch.tensor([[-100, 0, -100]])
    frame = -torch.log_softmax(torch.tensor([5.0, 0.0, 0.0]), 0)[0].item()
    assert mtm_loss(video_logits, text_logits, text_label).item() == pytest.approx((frame + math.log(3)) / 2)


# --------------------------------------------------------------------------- pooling and positions


@torch.no_grad()
def test_pooling_ignores_cls_padded_frames_and_padded_words():
    model = _videoclip()
    caps, cmasks, vfeats, vmasks = _batch()
    base = model(caps, cmasks, vfeats, vmasks)
    vfeats2, caps2 = vfeats.clone(), caps.clone()
    vfeats2[1, 5] = 7.0  # sample 1 has 4 frames: frame 5 is padding
    caps2[2, 6:] = 9  # sample 2 has 1 word: positions 4.. are padding
    changed = model(caps2, cmasks, vfeats2, vmasks)
    torch.testing.assert_close(changed["pooled_video"], base["pooled_video"], rtol=0, atol=1e-6)
    torch.testing.assert_close(changed["pooled_text"], base["pooled_text"], rtol=0, atol=1e-6)
    # the pooled video is the mean over the real frames and the video [SEP], never [CLS]
    seq = model.forward_video(vfeats, vmasks, caps, cmasks, output_hidden_states=True)  # [B, V+2, C]
    torch.testing.assert_close(base["pooled_video"][1], seq[1, [1, 2, 3, 4, V + 1]].mean(0))
    text = model.forward_text(caps, cmasks, output_hidden_states=True)  # [B, C-1, C]: [CLS] w.. [SEP] pad
    torch.testing.assert_close(base["pooled_text"][2], text[2, 1:3].mean(0))


def test_a_short_clip_keeps_the_video_sep_position_of_a_full_one():
    embeddings = _videoclip().video_encoder.bert.embeddings
    assert embeddings.mm_position_ids(2, 3).tolist() == [[0, 1, 2, 3, V + 1]]  # [CLS] 3 frames [SEP]
    assert embeddings.mm_position_ids(4, None).tolist() == [[0, V + 2, V + 3, V + 4]]  # text-only pass


@torch.no_grad()
def test_joint_isolated_layers_keep_video_apart_from_text_and_split_equals_one_pass():
    torch.manual_seed(0)
    joint = MMFusionJoint(TINY, max_video_len=V).eval()
    caps, cmasks, vfeats, vmasks = _batch()
    split = joint(caps, cmasks, vfeats, vmasks)
    joint.is_train = True  # one pass with the [B, L, N, N] isolation mask
    single = joint(caps, cmasks, vfeats, vmasks)
    for key in split:
        torch.testing.assert_close(single[key], split[key], rtol=0, atol=1e-5)
    other_caption = caps.clone()
    other_caption[0, 2:6] = 5
    torch.testing.assert_close(joint(other_caption, cmasks, vfeats, vmasks)["pooled_video"], split["pooled_video"])


@torch.no_grad()
@pytest.mark.parametrize("num_iso_layer", [None, 1])
def test_joint_encodes_video_and_text_alone_as_in_the_pair(num_iso_layer):
    """Retrieval scores every caption against every segment: the one-modality passes equal the paired one."""
    torch.manual_seed(0)
    joint = MMFusionJoint(TINY, max_video_len=V, num_iso_layer=num_iso_layer).eval()
    caps, cmasks, vfeats, vmasks = _batch()
    pair = joint(caps, cmasks, vfeats, vmasks)
    torch.testing.assert_close(joint.forward_video(vfeats, vmasks, caps, cmasks), pair["pooled_video"],
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(joint.forward_text(caps, cmasks), pair["pooled_text"], rtol=0, atol=1e-5)


@torch.no_grad()
def test_mtm_scores_masked_frames_against_real_non_masked_frames_only_and_leaves_inputs_alone():
    torch.manual_seed(0)
    model = MMFusionMTM(TINY, max_video_len=V).eval()
    caps, cmasks, vfeats, vmasks = _batch()
    video_label = torch.zeros_like(vmasks)
    video_label[0, 1] = video_label[2, 0] = True
    text_label = torch.full_like(caps, -100)
    text_label[1, 3] = caps[1, 3]
    caps_masked = caps.clone()
    caps_masked[1, 3] = 3
    before = vfeats.clone()
    out = model(caps_masked, cmasks, vfeats, vmasks, video_label=video_label, text_label=text_label)
    negatives = int((vmasks & ~video_label).sum())  # 12 real frames - 2 masked
    assert out["video_logits"].shape == (2, 1 + negatives + TINY["vocab_size"])
    assert out["text_logits"].shape == (1, TINY["vocab_size"] + negatives)
    assert torch.equal(vfeats, before)
    assert model.mm_encoder.cls.predictions.decoder.weight is model.mm_encoder.bert.embeddings.word_embeddings.weight
    mtm_loss(out["video_logits"], out["text_logits"], text_label)  # widths line up


# --------------------------------------------------------------------------- checkpoints


def test_mmpt_fairseq_layout_loads_strictly(tmp_path):
    source = _videoclip(seed=1)
    wrapped = {"model": {f"mmmodel.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "checkpoint_best.pt")
    target = _videoclip(seed=2)
    report = load_official_state(target, tmp_path / "checkpoint_best.pt")
    assert report.dropped == [] and report.missing == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match="does not fit MMFusionMTM.*vlm_\\* for mm_encoder keys"):
        load_official_state(MMFusionMTM(TINY, max_video_len=V), source.state_dict())


def test_vlm_pretraining_file_into_retrieval_models_drops_only_the_mtm_head(tmp_path):
    torch.manual_seed(0)
    pretrained = MMFusionMTM(TINY, max_video_len=V)
    save_weights(tmp_path / "vlm.safetensors", pretrained.state_dict())  # the tied decoder saved as a copy
    for retrieval in (MMFusionJoint(TINY, max_video_len=V), MMFusionShare(TINY, max_video_len=V)):
        report = load_official_state(retrieval, tmp_path / "vlm.safetensors")
        assert report.dropped and all(k.startswith("mm_encoder.cls.") for k in report.dropped)
        assert report.missing == []
        assert torch.equal(retrieval.mm_encoder.bert.encoder.layer[2].output.dense.weight,
                           pretrained.mm_encoder.bert.encoder.layer[2].output.dense.weight)


def _hf_bert_folder(tmp_path, legacy_bin: bool):
    """A tiny Hugging Face BERT folder: model.safetensors as save_pretrained writes it, or a pytorch_model.bin
    with bert-base-uncased's TF-era ``LayerNorm.gamma`` / ``.beta`` names."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    config = transformers.BertConfig(**TINY, type_vocab_size=2)
    hf = transformers.BertForPreTraining(config).eval()
    folder = tmp_path / "bert"
    hf.save_pretrained(folder)
    if legacy_bin:
        (folder / "model.safetensors").unlink()
        state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                 for k, v in hf.state_dict().items()}
        torch.save(state, folder / "pytorch_model.bin")
    return hf, folder


@pytest.mark.parametrize("legacy_bin", [False, True], ids=["safetensors", "pytorch_model_bin_gamma_beta"])
def test_bert_folder_initialises_both_towers_video_from_its_first_layers(tmp_path, legacy_bin):
    hf, folder = _hf_bert_folder(tmp_path, legacy_bin)
    model = _videoclip(seed=5)
    report = load_official_state(model, folder)
    hf_state = hf.state_dict()
    for i in range(3):
        key = f"encoder.layer.{i}.attention.self.query.weight"
        assert torch.equal(model.text_encoder.state_dict()[key], hf_state[f"bert.{key}"])
        if i < 2:  # the 2-layer video tower takes layers 0 and 1
            assert torch.equal(model.video_encoder.bert.state_dict()[key], hf_state[f"bert.{key}"])
    assert torch.equal(model.video_encoder.bert.embeddings.word_embeddings.weight,
                       hf_state["bert.embeddings.word_embeddings.weight"])
    assert sorted(report.missing) == sorted(f"video_encoder.videomlp.{k}" for k in model.video_encoder.videomlp
                                            .state_dict())
    assert "cls.seq_relationship.weight" in report.dropped
    # same names, same numbers: percli's BERT reproduces transformers' on a padded batch
    caps, cmasks, _, _ = _batch()
    with torch.no_grad():
        ours = model.text_encoder(caps, cmasks).last_hidden_state
        theirs = hf.bert(input_ids=caps, attention_mask=cmasks.long()).last_hidden_state
    torch.testing.assert_close(ours[cmasks], theirs[cmasks], rtol=1e-4, atol=1e-5)


def test_bert_folder_initialises_vlm_prediction_transform_and_keeps_the_decoder_tied(tmp_path):
    hf, folder = _hf_bert_folder(tmp_path, legacy_bin=False)
    model = MMFusionMTM(TINY, max_video_len=V)
    report = load_official_state(model, folder)
    head = model.mm_encoder.cls.predictions
    assert torch.equal(head.transform.dense.weight, hf.state_dict()["cls.predictions.transform.dense.weight"])
    assert torch.equal(head.decoder.weight, hf.state_dict()["bert.embeddings.word_embeddings.weight"])
    assert "mm_encoder.bert.embeddings.seg_embeddings.weight" in report.missing


def test_bert_with_too_few_layers_for_a_tower_is_refused(tmp_path):
    _, folder = _hf_bert_folder(tmp_path, legacy_bin=False)
    with pytest.raises(RuntimeError, match="fewer layers"):
        load_official_state(MMFusionSeparate({**TINY, "num_hidden_layers": 4}, 2, V), folder)


def test_bert_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['hiden_size'\\]"):
        BertModel({"hiden_size": 8})
    assert BertConfig.make(None, num_hidden_layers=6).num_hidden_layers == 6


def test_videoclip_towers_have_the_official_sizes():
    path = GOLDEN_DIR / "full_configs" / "videoclip" / "param_counts_by_tower.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    official = json.loads(path.read_text())["videoclip_MMFusionSeparate_how2"]
    with torch.device("meta"):
        model = create_model("videoclip_how2")
    for tower in ("video_encoder", "text_encoder"):
        assert sum(p.numel() for p in getattr(model, tower).parameters()) == official[tower]


# --------------------------------------------------------------------------- fairseq checkpoints

RAN: list[str] = []


class _Hook:
    def __reduce__(self):
        return RAN.append, ("pickled code ran",)


def _fairseq_checkpoint(path, model, hostile: bool = False):
    """A fairseq trainer checkpoint as MMPT's ``checkpoint_best.pt`` is laid out: weights under
    ``model["mmmodel.*"]``, legacy ``args`` Namespace, the config as a plain dict, meter states and ``best`` with
    numpy scalars, the optimizer state."""
    import argparse
    from collections import OrderedDict

    import numpy as np

    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.Adam(params)
    params[0].grad = torch.ones(2)
    optimizer.step()
    meters = [(0, "loss", "AverageMeter", {"val": np.float64(1.25), "sum": np.float64(5.0), "count": 4, "round": 3}),
              (50, "wall", "StopwatchMeter", {"sum": 12.5, "n": 1, "round": 0})]
    ckpt = {"args": argparse.Namespace(arch="mmpt", task="mmtask", lr=[5e-5]),
            "cfg": {"common": {"fp16": True}, "optimization": {"lr": [5e-5]}, "task": {"_name": "mmtask"}},
            "model": {f"mmmodel.{k}": v for k, v in model.state_dict().items()}, "criterion": None,
            "optimizer_history": [{"criterion_name": "MMCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": np.float64(0.42)}, "num_updates": 10}],
            "task_state": {}, "last_optimizer_state": optimizer.state_dict(),
            "extra_state": {"metrics": OrderedDict(train=meters), "previous_training_time": 12.5,
                            "train_iterator": {"version": 2, "epoch": 3, "iterations_in_epoch": 0, "shuffle": True},
                            "val_loss": np.float64(0.42), "best": np.float64(0.42),
                            **({"hook": _Hook()} if hostile else {})}}
    torch.save(ckpt, path)
    return path


def test_a_fairseq_checkpoint_best_loads_and_converts_without_running_its_pickle(tmp_path):
    from typer.testing import CliRunner

    from percli.cli import app

    source = _videoclip(seed=11)
    path = _fairseq_checkpoint(tmp_path / "checkpoint_best.pt", source)
    model = _videoclip(seed=0)
    report = load_official_state(model, path)
    assert not report.dropped and all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    kwargs = json.dumps({"bert_config": TINY, "num_hidden_video_layers": 2, "max_video_len": V})
    out = CliRunner().invoke(app, ["convert", str(path), "-o", str(tmp_path / "vc.safetensors"), "-m",
                                   "videoclip_how2", "--kwargs", kwargs, "--run-dir", str(tmp_path / "conv")])
    assert out.exit_code == 0, out.output[-2000:]
    again = create_model("videoclip_how2", bert_config=TINY, num_hidden_video_layers=2, max_video_len=V)
    load_official_state(again, tmp_path / "vc.safetensors")
    caps, cmasks, vfeats, vmasks = _batch()
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(caps, cmasks, vfeats, vmasks)["pooled_text"],
                                   source(caps, cmasks, vfeats, vmasks)["pooled_text"])
    hostile = _fairseq_checkpoint(tmp_path / "hostile.pt", source, hostile=True)
    from percli.core.checkpoint import RefusedPickleError

    with pytest.raises(RefusedPickleError, match="builtins.getattr"):  # list.append, reached through getattr
        load_official_state(_videoclip(), hostile)
    assert RAN == []
