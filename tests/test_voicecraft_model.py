"""VoiceCraft: token rearrangement on hand-made grids, full-size layouts, loss, checkpoints, decoding."""

from __future__ import annotations

import argparse
import random
import re

import pytest
import torch

from percli.models import create_model
from percli.models.voicecraft import (
    VoiceCraft,
    kwargs_from_official_args,
    load_official_state,
)
from percli.models.voicecraft_codebooks import (
    delay_pattern,
    interleave_masks,
    rearrange,
    sample_mask_intervals,
    split_at_masks,
    undelay_logits,
    unmasked_intervals,
)
from percli.models.voicecraft_layers import sample_top_k_top_p
from tests.conftest import GOLDEN_DIR

FULL_CONFIGS = GOLDEN_DIR / "full_configs" / "voicecraft"
FULL_CONFIG_MODELS = {"voicecraft_830M_e830M_sh": "voicecraft_830m", "voicecraft_330M_assumed": "voicecraft_330m"}
# the golden case's layout: vocab 32 + 4 specials (empty 32, eog 33, pad 34, eos 35), 20 phonemes
TINY = dict(d_model=32, nhead=2, num_decoder_layers=2, audio_vocab_size=32, empty_token=32, eog=33,
            audio_pad_token=34, eos=35, text_vocab_size=20, text_pad_token=20)
EMPTY, EOG, EOS = 32, 33, 35


def grid(K: int = 4, T: int = 10) -> torch.Tensor:
    """Codes whose value tells the position: codebook k, frame t -> 10 * k + t (t < 10)."""
    return torch.arange(T)[None] + 10 * torch.arange(K)[:, None]


def test_rearrange_moves_spans_to_the_end_with_eos_and_eog() -> None:
    y = grid()
    pieces = rearrange(y, [(2, 4), (6, 7)], eog=EOG, eos=EOS, reduced_eog=True)
    assert [p.shape[1] for p in pieces] == [2, 2, 3 + 1, 2 + 1, 1 + 1]
    assert torch.equal(pieces[0], y[:, 0:2]) and torch.equal(pieces[1], y[:, 4:6])  # no terminator
    assert torch.equal(pieces[2][:, :3], y[:, 7:10]) and (pieces[2][:, 3] == EOS).all()
    assert torch.equal(pieces[3][:, :2], y[:, 2:4]) and (pieces[3][:, 2] == EOG).all()
    assert torch.equal(pieces[4][:, :1], y[:, 6:7]) and (pieces[4][:, 1] == EOG).all()
    # without EOS the utterance end takes EOG; without reduced_eog every piece ends with EOG
    assert (rearrange(y, [(2, 4)], eog=EOG, reduced_eog=True)[1][:, -1] == EOG).all()
    assert all((p[:, -1] == EOG).all() for p in rearrange(y, [(2, 4)], eog=EOG, reduced_eog=False))
    assert unmasked_intervals([(2, 4), (6, 7)], 10) == [(0, 2), (4, 6), (7, 10)]


def test_delay_pattern_shifts_codebook_k_by_k_after_one_empty_step() -> None:
    codes = torch.tensor([[1, 2, 3], [4, 5, 6]])
    e = EMPTY
    assert delay_pattern(codes, e).tolist() == [[e, 1, 2, 3, e], [e, e, 4, 5, 6]]
    # step s predicts step s + 1: frame t of codebook k is read at step t + k
    delayed = delay_pattern(grid(), EMPTY)  # [4, 14]
    next_step = torch.nn.functional.one_hot(delayed[:, 1:], 40).float()  # "logits" predicting the next step
    next_step = torch.cat([next_step, torch.zeros(4, 1, 40)], dim=1)  # [4, 14, 40]
    assert torch.equal(undelay_logits(next_step).argmax(-1), grid())


def test_interleave_masks_places_mask_steps_between_pieces() -> None:
    pieces = [torch.full((4, n), v) for n, v in [(3, 1), (2, 2), (4, 3), (5, 4), (2, 5)]]  # U0 U1 U2 S1 S2
    seq, positions, values = interleave_masks(pieces, EOG)
    assert positions == [3, 6, 11, 17] and values == [0, 1, 0, 1]
    assert seq.shape == (4, 16 + 4) and (seq[:, positions] == EOG).all()
    assert [p.tolist() for p in split_at_masks(seq, positions, seq.shape[1])] == [p.tolist() for p in pieces]
    assert interleave_masks(pieces, EOG, mask_ids=[2, 0, 1])[2] == [2, 0, 2, 0]
    with pytest.raises(ValueError, match="2n\\+1"):
        interleave_masks(pieces[:4], EOG)


@pytest.mark.parametrize("seed", range(40))
def test_sampled_spans_are_sorted_disjoint_and_inside(seed: int) -> None:
    y_len = 30 + seed
    spans = sample_mask_intervals(y_len, max_n_spans=3, mask_len_min=1, mask_len_max=600, min_gap=5, dist="poisson1",
                                  rng=random.Random(seed), generator=torch.Generator().manual_seed(seed))
    assert 1 <= len(spans) <= 3
    for (s, e), nxt in zip(spans, [a for a, _ in spans[1:]] + [y_len]):
        assert 1 <= s < e < nxt  # at least one frame, never touching the next span or the end
    starts = [s for s, _ in spans]
    assert all(b - a >= 5 for a, b in zip(starts, starts[1:]))


def test_sampled_spans_replay_the_official_global_draws() -> None:
    # the official code draws from the global RNGs; a seeded Random/Generator pair gives the same spans
    random.seed(3)
    torch.manual_seed(3)
    args = dict(max_n_spans=3, mask_len_min=1, mask_len_max=600, min_gap=5, dist="poisson1")
    expected = sample_mask_intervals(50, rng=random, generator=None, **args)
    replayed = sample_mask_intervals(50, rng=random.Random(3), generator=torch.Generator().manual_seed(3), **args)
    assert replayed == expected


def _expected_keys(folder: str) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
    lines = (FULL_CONFIGS / folder / "keys.txt").read_text().splitlines()
    keys = [(m[1], tuple(int(d) for d in m[2].split(",") if d.strip()))
            for m in (re.match(r"(\S+) \((.*)\)", line) for line in lines if not line.startswith("#")) if m]
    total = next(int(line.split()[-1]) for line in lines if line.startswith("# total_parameters"))
    return keys, total


@pytest.mark.skipif(not FULL_CONFIGS.is_dir(), reason=f"no full_configs in {GOLDEN_DIR}")
@pytest.mark.parametrize("folder", sorted(FULL_CONFIG_MODELS))
def test_full_config_matches_official_names_shapes_and_count(folder: str) -> None:
    with torch.device("meta"):
        model = create_model(FULL_CONFIG_MODELS[folder])
    keys, total = _expected_keys(folder)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == keys
    assert sum(p.numel() for p in model.parameters()) == total


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 20, (2, 9), generator=g)
    x[1, 7:] = 20
    y = torch.randint(0, 32, (2, 4, 30), generator=g)
    return {"x": x, "x_lens": torch.tensor([9, 7]), "y": y, "y_lens": torch.tensor([30, 24])}


def test_training_forward_trains_every_weight_but_the_frozen_ids() -> None:
    torch.manual_seed(0)
    model = VoiceCraft(**TINY)
    b = _batch()
    out = model(b["x"], b["x_lens"], b["y"], b["y_lens"], mask_intervals=[[(5, 9), (15, 20)], [(3, 10)]])
    n = out["targets"].shape[1]
    # pieces: 30 frames + EOS + 2 x EOG, then 24 frames + EOS + EOG
    assert n == 33 + 26 and int(out["effective_ntoken"]) == 4 * n
    ce = torch.stack(out["ce_by_codebook"])
    torch.testing.assert_close(out["loss"], (ce * n * torch.tensor([5, 1, 0.5, 0.1])).sum())
    assert 0 <= float(out["top10acc"]) <= 4 * n
    out["loss"].backward()
    assert model.mask_embedding.grad[:2].abs().sum() > 0 and model.mask_embedding.grad[2].abs().sum() == 0
    assert not model.eog.requires_grad and not model.eos.requires_grad
    # the same seed draws the same spans
    a = model(**b, rng=random.Random(1), generator=torch.Generator().manual_seed(1), return_intermediates=True)
    c = model(**b, rng=random.Random(1), generator=torch.Generator().manual_seed(1), return_intermediates=True)
    assert a["audio"].mask_intervals == c["audio"].mask_intervals


def test_load_official_state_reads_release_pth_and_safetensors(tmp_path) -> None:
    torch.manual_seed(0)
    source, target = VoiceCraft(**TINY), VoiceCraft(**TINY)
    config = argparse.Namespace(**{**TINY, "audio_vocab_size": "32", "codebook_weight": "[5,1,0.5,0.1]",
                                   "n_special": 4, "reduced_eog": 1, "special_first": 0, "lr": 0.05})
    torch.save({"config": config, "phn2num": {"a": 0}, "model": source.state_dict()}, tmp_path / "giga.pth")
    kwargs = kwargs_from_official_args(config)
    assert kwargs["audio_vocab_size"] == 32 and kwargs["codebook_weight"] == [5, 1, 0.5, 0.1] and "lr" not in kwargs
    report = load_official_state(target, tmp_path / "giga.pth")
    assert report.source_format == "official" and not report.missing and not report.dropped
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    load_official_state(VoiceCraft(**TINY), tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="wrong shape"):
        load_official_state(VoiceCraft(**{**TINY, "text_vocab_size": 30, "text_pad_token": 30}), source.state_dict())


def test_top_k_top_p_keep_only_the_allowed_tokens() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_top_k_top_p(logits, top_k=2, generator=g).tolist()) == {0, 1}
    # probs ~ [.64, .24, .09, ...]: the nucleus for 0.7 is the first two tokens
    assert set(sample_top_k_top_p(logits, top_k=0, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_top_k_top_p(logits, top_k=1, temperature=5.0, generator=g).tolist()) == {0}


@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_generate_with_kv_cache_gives_the_same_tokens_as_without(temperature: float) -> None:
    torch.manual_seed(0)
    model = VoiceCraft(**TINY).eval()
    x, prompt = torch.randint(0, 20, (8,)), torch.randint(0, 32, (4, 12))
    runs = [model.generate(x, prompt, kv_cache=cache, temperature=temperature, silence_tokens=(3,),
                           generator=torch.Generator().manual_seed(5)) for cache in (True, False)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape[0] == 4 and 0 < runs[0].shape[1] <= 8 * 10  # the cap: 10 steps per phoneme
    assert not (runs[0] == EOS).any()  # the end marker is not part of the frames


def test_edit_keeps_unmasked_frames_and_caching_changes_nothing() -> None:
    torch.manual_seed(0)
    model = VoiceCraft(**TINY).eval()
    x, y = torch.randint(0, 20, (8,)), torch.randint(0, 32, (4, 30))
    spans = [(3, 8), (15, 20)]
    runs = [model.edit(x, y, spans, kv_cache=cache, generator=torch.Generator().manual_seed(2))
            for cache in (True, False)]
    assert torch.equal(runs[0], runs[1])
    out = runs[0]
    assert torch.equal(out[:, :3], y[:, :3]) and torch.equal(out[:, -10:], y[:, 20:])  # head and tail untouched
    assert not ((out == EOG) | (out == EOS)).any()
    with pytest.raises(ValueError, match="1..3 spans"):
        model.edit(x, y, [(1, 2), (4, 5), (7, 8), (10, 11)])


def batch_case() -> tuple[VoiceCraft, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return VoiceCraft(**TINY).eval(), torch.randint(0, 20, (8,)), torch.randint(0, 32, (4, 12))


def continue_batch(model: VoiceCraft, x: torch.Tensor, prompt: torch.Tensor, seed: int, **kwargs):
    sampling = dict(top_k=40, top_p=1.0, temperature=1.5, stop_repetition=3, silence_tokens=(3,), kv_cache=True,
                    codec_rate=20, batch_size=4, generator=torch.Generator().manual_seed(seed))
    return model._continue(x, prompt, **{**sampling, **kwargs})


def test_greedy_batch_rows_all_equal_the_single_sequence() -> None:
    model, x, prompt = batch_case()
    single = model.generate(x, prompt, top_k=1, silence_tokens=(3,))
    assert torch.equal(model.generate(x, prompt, top_k=1, silence_tokens=(3,), batch_size=3), single)
    race = continue_batch(model, x, prompt, 0, top_k=1, codec_rate=50, batch_size=3).race
    assert race.shape == (3, 4, single.shape[1] + 1)  # every step of codebook 0 up to and with the end
    assert all(torch.equal(race[b], race[0]) for b in range(3))


def test_batch_keeps_the_last_of_the_rows_that_end_first() -> None:
    model, x, prompt = batch_case()
    out = continue_batch(model, x, prompt, 3)
    steps = out.race.shape[2]
    ended = out.race[:, 0, -1] == EOS
    assert ended.tolist() == [False, False, True, True] and out.keep == 3  # a tie at the first end: the last row
    assert not (out.race[:, 0, :-1] == EOS).any()  # no row ended earlier
    assert len({tuple(row.flatten().tolist()) for row in out.race}) == 4  # independent draws per row
    span = out.spans[0]
    assert span.shape == (4, steps + 3) and torch.equal(span[:, :steps], out.race[3])  # then 3 ending steps
    assert (span[torch.arange(4), torch.arange(4) + steps - 1] == EOS).all()  # codebook k ends k steps later
    frames = model.generate(x, prompt, top_k=40, temperature=1.5, silence_tokens=(3,), codec_rate=20, batch_size=4,
                            generator=torch.Generator().manual_seed(3))
    assert torch.equal(frames, model._undelay(span)) and frames.shape[1] == steps - 1


@pytest.mark.parametrize("seed", [2, 7])
def test_batched_kv_cache_gives_the_same_tokens_as_without(seed: int) -> None:
    model, x, prompt = batch_case()
    runs = [continue_batch(model, x, prompt, seed, kv_cache=cache) for cache in (True, False)]
    assert runs[0].keep == runs[1].keep and torch.equal(runs[0].race, runs[1].race)
    assert torch.equal(runs[0].spans[0], runs[1].spans[0])
