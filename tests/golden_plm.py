"""Golden runner for PerceptionLM (``plm_tiny_cfg``): apps/plm/transformer.py::LMTransformer.

Registered into tests/test_golden.py's `RUNNERS` (see `PLM_RUNNERS`). The recorded calls that are Python on the
model (the vision tower's ``forward_features``, the text-only forward) are replayed by a `CallBook`; the others
say in prose what was captured with forward hooks during the batch forward, or describe the loss, the RoPE table
and the generation trace, and are implemented here, pinned to their verbatim text.

The generation prompt is tokenized here with the case's synthetic tokenizer (byte ids, Llama-3 specials at
256 + k) and the release's plm_sft generation template, since the case stores the ids only as an output.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from tests.golden_replay import CallBook

# core/data/conversation.py conv_plm_sft (the generation template of apps/plm/generate.py)
PLM_SFT_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                  "that the user provides, and assist the user with a variety of tasks using natural language.")
# Llama3Tokenizer's special tokens as PLMTokenizer orders them (reserved_special_token_0 is <|image|>)
_SPECIAL_OFFSETS = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|image|>": 2, "<|start_header_id|>": 6,
                    "<|end_header_id|>": 7, "<|eot_id|>": 9}


def synthetic_encode(text: str, tokenizer: dict) -> list[int]:
    """The case's tokenizer: a special-token string is its id (256 + k), any other text its UTF-8 bytes."""
    base = tokenizer["bos_id"]
    specials = {s: base + k for s, k in _SPECIAL_OFFSETS.items()}
    for name, key in (("<|begin_of_text|>", "bos_id"), ("<|end_of_text|>", "eos_id"), ("<|eot_id|>", "eot_id"),
                      ("<|image|>", "image_token_id")):
        assert specials[name] == tokenizer[key], f"the case's {key} is not {name} at 256 + k"
    ids = []
    for piece in re.split(f"({'|'.join(re.escape(s) for s in specials)})", text):
        ids.extend([specials[piece]] if piece in specials else list(piece.encode("utf-8")))
    return ids


def generation_prompt(question: str, image_tokens: int, tokenizer: dict) -> list[int]:
    """conv_plm_sft.get_generation_prompt(question) (no <image> tag: the image tokens go before the question)."""
    text = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + PLM_SFT_SYSTEM + "<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n" + "<|image|>" * image_tokens + question + "<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")
    return synthetic_encode(text, tokenizer)


class _Seen:
    """Forward hooks: ``outputs`` name -> module (its output), ``inputs`` name -> module (its first input)."""

    def __init__(self, outputs: dict[str, torch.nn.Module], inputs: dict[str, torch.nn.Module]):
        self.outputs, self.inputs, self.seen, self.handles = outputs, inputs, {}, []

    def __enter__(self) -> dict[str, torch.Tensor]:
        for name, module in self.outputs.items():
            self.handles.append(module.register_forward_hook(
                lambda _m, _a, out, name=name: self.seen.__setitem__(name, out)))
        for name, module in self.inputs.items():
            self.handles.append(module.register_forward_pre_hook(
                lambda _m, args, name=name: self.seen.__setitem__(name, args[0])))
        return self.seen

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _greedy_trace(model: Any, case: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official PackedCausalTransformerGenerator's greedy trace, from percli's KV-cache step function."""
    from percli.models.text_decoding import sample_or_greedy

    gen, tokenizer = case.config["generation"], case.config["tokenizer"]
    image = inputs["gen_image"]
    per_chunk = model.encode_images(image).shape[1]
    prompt = generation_prompt(gen["question"], image.shape[0] * per_chunk, tokenizer)
    image_pos = [i for i, t in enumerate(prompt) if t == tokenizer["image_token_id"]]
    step = model.decode_step([prompt], [image], image_pos=[image_pos])
    logits, positions = [], []

    def recorded(new_ids: torch.Tensor | None, state: dict) -> torch.Tensor:
        positions.append(len(prompt) - 1 if new_ids is None else int(state["positions"][0]))
        out = step(new_ids, state)
        logits.append(out[0])
        return out

    n = gen["n_steps"]
    # no stop id occurs in this trace (generation_text); the shared decoder stops only at its one eos
    (tokens,) = sample_or_greedy(recorded, 1, tokenizer["eot_id"], n, greedy=True)
    assert len(tokens) == n, f"the trace stopped after {len(tokens)} of {n} tokens"
    step_logits = torch.stack(logits[:n])
    ids = torch.tensor([prompt])
    ipi = torch.full_like(ids, -1)
    ipi[0, image_pos] = torch.arange(len(image_pos))
    full_ids = torch.cat([ids, torch.tensor([tokens[:-1]])], dim=1)
    full_ipi = torch.cat([ipi, torch.full((1, n - 1), -1)], dim=1)
    recompute = model(full_ids, images=image, image_pos_index=full_ipi)[0, len(prompt) - 1:]
    prompt_logits = model(ids, images=image, image_pos_index=ipi)[0, :-1]
    top2 = step_logits.topk(2, dim=-1).values
    return {"gen_prompt_ids": ids, "gen_image_pos": torch.tensor(image_pos), "gen_tokens": torch.tensor([tokens]),
            "gen_step_logits": step_logits, "gen_prefill_logits_last": step_logits[:1],
            "gen_step_tok_idx": torch.tensor(positions[:n]), "gen_top2_margin": top2[:, 0] - top2[:, 1],
            "gen_full_recompute_step_logits": recompute,
            "gen_prompt_loglikelihood": -F.cross_entropy(prompt_logits, ids[0, 1:], reduction="none")[None],
            "gen_prompt_greedy": (prompt_logits.argmax(dim=-1) == ids[0, 1:])[None]}


@torch.no_grad()
def run_plm(case: Any) -> dict[str, torch.Tensor]:
    from percli.models.plm import PerceptionLM

    model = PerceptionLM(**case.config["constructor_kwargs"])
    # strict: both tok_embeddings.weight and output.tied_module.weight are in the state (one tensor)
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs = case.inputs()
    book = CallBook(case.name, case.config, inputs, model)
    # "media_type_is_video (input)": video when True, else image
    media_type = ["video" if v else "image" for v in inputs["media_type_is_video"].tolist()]
    media = dict(images=inputs["images"], image_pos_index=inputs["image_pos_index"],
                 num_chunks=inputs["num_chunks"].tolist(), media_type=media_type)
    layers = {f"layer_{i}": layer for i, layer in enumerate(model.layers)}

    def forward(_: dict) -> dict[str, torch.Tensor]:
        hooks = _Seen(outputs={"projected_image_tokens": model.vision_projector, "final_norm_out": model.norm,
                               **layers},
                      inputs={"vision_tokens": model.vision_projector, "stitched_embeddings": model.layers[0]})
        with hooks as seen:
            logits = model(inputs["token_values"], **media)
        return {"logits": logits, **seen}

    def loss(_: dict) -> dict[str, torch.Tensor]:
        return {"loss": model(inputs["token_values"], target=inputs["target"], loss_mask=inputs["loss_mask"], **media)}

    def rope(_: dict) -> dict[str, torch.Tensor]:
        return {"rope_freqs_cis": model.rope_embeddings.freqs_cis[:inputs["token_values"].shape[1]]}

    return book.replay_all(
        custom={
            "logits": (("model(token_values, images=images, image_pos_index=image_pos_index, "
                        "num_chunks=num_chunks.tolist(), media_type=[...])", "mask 'causal'"), forward),
            "loss": (("model(token_values, target=target, images=..., image_pos_index=..., loss_mask=loss_mask, "
                      "num_chunks, media_type)", "mean NLL of log_softmax(logits[loss_mask].float()) at "
                      "target[loss_mask]"), loss),
            "rope_freqs_cis": (("model.rope_embeddings.freqs_cis[:seq_len]", "old_context_len 8192, low_freq_factor "
                                "1", "Applied to interleaved pairs (x[2i], x[2i+1])"), rope),
            "gen_*": (("see 'generation'",), lambda _: _greedy_trace(model, case, inputs)),
        },
        pins={
            "vision_tokens": ("forward hook on model.vision_model",
                              "with the cls token removed, pool 'none', no proj"),
            "projected_image_tokens": ("forward hook on model.vision_projector (MLPProjector)",),
            "stitched_embeddings": ("forward pre-hook on layers[0]", "the VALUES of image_pos_index are not used"),
            "layer_i": ("forward hook on layers[i] (TransformerBlock)",),
            "final_norm_out": ("forward hook on model.norm (RMSNorm)",),
        })


_PLM_FILE = ("apps/plm/transformer.py, core/transformer.py, core/vision_encoder/pe.py, core/vision_projector/mlp.py, "
             "apps/plm/tokenizer.py, core/data/conversation.py, core/data/data_collators.py, apps/plm/generate.py")

# (official_file, official_class) -> runner, merged into test_golden.RUNNERS
PLM_RUNNERS: dict[tuple[str, str], Callable[[Any], dict[str, torch.Tensor]]] = {
    (_PLM_FILE, "LMTransformer"): run_plm,
}
