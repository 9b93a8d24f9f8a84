"""Golden runners for the speech family: VoiceCraft's training forward (``voicecraft_tiny_cfg``) and decoding
(``voicecraft_infer_tiny_cfg``, models/voicecraft.py), and audiocraft's Encodec (``encodec_tiny_cfg``).

Registered into tests/test_golden.py's `RUNNERS` (see `SPEECH_RUNNERS`). Recorded calls are replayed by a
`CallBook`; the prose-only entries are implemented here, pinned to their verbatim text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_file

from tests.golden_replay import CallBook


@torch.no_grad()
def run_voicecraft(case: Any) -> dict[str, torch.Tensor]:
    import random

    from percli.models.voicecraft import VoiceCraft, kwargs_from_official_args
    from percli.models.voicecraft_codebooks import unmasked_intervals

    model = VoiceCraft(**kwargs_from_official_args(case.config["model_args_after_init"]))
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs, seed = case.inputs(), case.config["rng_seed"]
    book = CallBook(case.name, case.config, inputs, model)

    def forward(_: dict) -> dict[str, torch.Tensor]:
        # the official forward takes the batch dict {x, x_lens, y, y_lens}; percli takes them as arguments.
        # replay the official draws: random.seed(seed) / torch.manual_seed(seed) == these two generators
        res = model(inputs["x"], inputs["x_lens"], inputs["y"], inputs["y_lens"], rng=random.Random(seed),
                    generator=torch.Generator().manual_seed(seed), return_intermediates=True)
        audio = res["audio"]
        out = {k: res[k] for k in ("loss", "top10acc", "effective_ntoken", "x_input", "x_padding_mask",
                                   "embedded_y", "y_input", "y_padding_mask", "decoder_xy_input", "decoder_out_y",
                                   "logits_BKSC")}
        out.update({"cated_y_KTB": audio.tokens, "new_y_lens": audio.lengths, "logits_final_KTC": res["logits"],
                    "targets_KT": res["targets"]})
        # the unpadded text / audio blocks of the full mask: read them in the longest sample
        L, blocked = res["x_input"].shape[1], res["decoder_blocked"]
        out["x_attention_mask"] = blocked[int(inputs["x_lens"].argmax()), :L, :L]
        out["y_attention_mask"] = blocked[int(audio.lengths.argmax()), L:, L:]
        out["decoder_attn_mask_float"] = blocked.repeat_interleave(model.nhead, dim=0)  # [B*heads, ..]
        for k in range(model.n_codebooks):
            out[f"top10acc_by_codebook_{k}"] = res["top10acc_by_codebook"][k]
            out[f"ce_loss_codebook_{k}"] = res["ce_by_codebook"][k]
        for i, spans in enumerate(audio.mask_intervals):
            out[f"mask_intervals_b{i}"] = torch.tensor(spans)
            out[f"non_mask_intervals_b{i}"] = torch.tensor(unmasked_intervals(spans, int(inputs["y_lens"][i])))
            out[f"mask_position_b{i}"] = torch.tensor(audio.mask_positions[i])
            out[f"mask_value_b{i}"] = torch.tensor(audio.mask_values[i])
            for j, (piece, delayed) in enumerate(zip(audio.targets[i], audio.shifted[i])):
                out[f"rearranged_b{i}_seg{j}"], out[f"shifted_b{i}_seg{j}"] = piece, delayed
        return out

    # one training forward; every other entry records an intermediate of it, pinned to what percli returns
    return book.replay_all(
        custom={"forward": (("model.eval()", "random.seed(rng_seed); torch.manual_seed(rng_seed)",
                             "res = model({'x','x_lens','y','y_lens'})"), forward)},
        pins={"rearranged_b{i}_seg{j}": ("model.rearrange(...)[i][j]",),
              "shifted_b{i}_seg{j}": ("model.shift(...)[0][i][j]",),
              "mask_position_b{i}, mask_value_b{i}": ("model.insert_mask(...)[1][i], [2][i]",),
              "cated_y_KTB, new_y_lens": ("model.cat_y(...)  [K, T, B] padded with audio_pad_token",),
              "embedded_y": ("model.embed_y(...) [B, T, D]",),
              "y_input / y_padding_mask / y_attention_mask": ("prepare_input_target outputs",),
              "x_input / x_attention_mask / x_padding_mask": ("dec_forward args",),
              "decoder_xy_input / decoder_attn_mask_float": ("cat([x_input, y_input],1)", "[B*nhead, S, S] (0 / -inf)"),
              "decoder_out_y": ("dec_forward(...)[0]",),
              "logits_BKSC": ("stack of predict_layer[k](decoder_out_y) -> [B, K, T, card]",),
              "logits_final_KTC / targets_KT": ("after remove_mask + revert_pattern",),
              "ce_loss_codebook_k": ("F.cross_entropy(logits_final_KTC[k], targets_KT[k]) (mean)",)})


@torch.no_grad()
def run_voicecraft_inference(case: Any) -> dict[str, torch.Tensor]:
    from percli.models.voicecraft import VoiceCraft, kwargs_from_official_args

    args = case.config["model_args_after_init"]
    model = VoiceCraft(**kwargs_from_official_args(args))
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    # every entry is a structured call (function, positional inputs, kwargs, seed), replayed as recorded after the
    # official seeding; percli's official entry points return, asked for it, the per-step trace the case saves as
    # <call>_<name> (logits before/after the edits, raw draws, fed-back tokens, context length) beside res / gen.
    # The TTS variants stop and ban EOS by the codec rate (args.encodec_sr); editing's limit is the official literal.
    extra = {}
    for key, entry in case.config["calls"].items():
        if isinstance(entry, dict) and not key.startswith("_"):  # "_outputs_per_call" documents the others
            function = str(entry.get("function"))
            tts = function.rsplit(".", 1)[-1].startswith("inference_tts")
            extra[key] = {function: {"return_trace": True, **({"codec_rate": int(args["encodec_sr"])} if tts else {})}}
    return CallBook(case.name, case.config, case.inputs(), model).replay_all(extra=extra)


@torch.no_grad()
def run_encodec(case: Any) -> dict[str, torch.Tensor]:
    from percli.models.encodec import EncodecModel, kwargs_from_audiocraft_config

    model = EncodecModel(**kwargs_from_audiocraft_config(case.config["config"]))
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    assert model.frame_rate == case.config["frame_rate"] and model.hop_length == case.config["hop_length"]
    inputs = case.inputs()
    # codes flip under ~1e-6 residual errors (the case's codebook_distance_margins): encode is checked against the
    # saved codes exactly, and decoding starts from the SAVED codes, as the case asks, so it tests the decoder alone
    saved = load_file(str(case.path / "outputs.safetensors"))
    book = CallBook(case.name, case.config, inputs, model, names={"codes": saved["codes"]})
    wav, odd = inputs["wav"], inputs["wav_odd"]

    def layers(stack: torch.nn.Sequential, h: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(stack):
            h = out[f"{name}_{i}"] = layer(h)
        return out

    def rvq(_: dict) -> dict[str, torch.Tensor]:
        _, residuals, quantized = model.quantizer.vq.encode_with_residuals(model.encoder(wav))
        return {**{f"rvq_residual_{q}": r for q, r in enumerate(residuals)},
                **{f"rvq_quantized_{q}": v for q, v in enumerate(quantized)}}

    def forward(_: dict) -> dict[str, torch.Tensor]:
        # audiocraft's QuantizedResult; percli's forward is its `x`, the eval penalty is the zero commitment loss
        return {"forward_x": model(wav), "forward_codes": model.encode(wav),
                "forward_bandwidth": torch.tensor(model.bandwidth), "forward_penalty": torch.zeros(())}

    return book.replay_all(
        custom={"codes": (("codes, scale = model.encode(wav)", "(scale is None)"),
                          lambda _: {"codes": model.encode(wav)}),  # percli's encode returns the codes alone
                # "model.decode(codes) ... (NOT trimmed; ... = model.decode(frames[0][0]) ...)": one call, told twice
                "decoded": (("model.decode(codes) [B,1,T*hop] (NOT trimmed",
                             "AudioTokenizer.decode(frames) = model.decode(frames[0][0])"),
                            lambda _: {"decoded": model.decode(saved["codes"])}),
                "encoder_layer_i": (("output of model.encoder.model[i]", "during encode(wav)"),
                                    lambda _: layers(model.encoder.model, wav, "encoder_layer")),
                "rvq_residual_q / rvq_quantized_q": (("residual_0 = encoder_out", "quantized_q = layers[q].decode(",
                                                      "residual_{q+1} = residual_q - quantized_q"), rvq),
                "decoder_layer_i": (("output of model.decoder.model[i] during decode(codes)",),
                                    lambda _: layers(model.decoder.model, model.decode_latent(saved["codes"]),
                                                     "decoder_layer")),
                "forward_x / forward_codes / forward_bandwidth / forward_penalty": (
                    ("q = model(wav) in eval mode", "q.x = decoder(quantized) trimmed to the input length",
                     "q.bandwidth = n_q*log2(bins)*frame_rate/1000", "q.penalty = mean of the per-stage zero losses"),
                    forward),
                "odd_*": (("same for wav_odd", "odd_decoded has T*hop samples, odd_forward_x is trimmed to len"),
                          lambda _: {"odd_codes": model.encode(odd), "odd_decoded": model.decode(saved["odd_codes"]),
                                     "odd_forward_x": model(odd)})})


SPEECH_RUNNERS: dict[tuple[str, str], Callable[[Any], dict[str, torch.Tensor]]] = {
    ("models/voicecraft.py", "VoiceCraft"): run_voicecraft,
    ("models/voicecraft.py", "VoiceCraft.inference"): run_voicecraft_inference,
    ("audiocraft/models/encodec.py (SEANetEncoder/SEANetDecoder: audiocraft/modules/seanet.py, conv.py, lstm.py; "
     "ResidualVectorQuantizer: audiocraft/quantization/vq.py, core_vq.py)", "EncodecModel"): run_encodec,
}
