"""What `percli chat` and `percli caption plm` share: the model section, the decoding settings and prompts -> answers.

* `PLMModelSection`: where the model comes from (a PLM release folder in either layout, or a `percli finetune plm`
  run; default ``$PERCLI_PLM_CHECKPOINT``), its tokenizer, device and dtype, and the media budget (video frames,
  image tiles) that sets how long a prompt is.
* `Decoding`: greedy by default (the release's temperature 0), nucleus sampling with ``temperature > 0``, extra stop
  strings, and a bounded ``max_new_tokens`` (256, the release's ``max_gen_len``; the release's 11264 is its KV-cache
  size and, used as a length, exhausted GPU memory: perception_models issue #44). The model also cuts it to what
  the context leaves after the longest prompt of a batch.
* `generate_answers`: a batch of prompts of any lengths (left-padded by the model) -> `Answer`s: the text (cut
  before the first stop string), how many tokens were generated and why decoding stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from percli.core.config import ConfigError
from percli.recipes.plm_common import BYTE_TOKENIZER

CHECKPOINT_ENV = "PERCLI_PLM_CHECKPOINT"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STOP_REASONS = ("stop_token", "stop_string", "max_new_tokens", "context")
"""Why an answer ended: the model's end of turn / end of text, an extra stop string, the --max-new-tokens bound,
or the end of the model's context."""


@dataclass
class PLMModelSection:
    checkpoint: str | None = field(default_factory=lambda: os.environ.get(CHECKPOINT_ENV) or None)
    """A PLM release folder (Hugging Face config.json + model*.safetensors, or perception_models params.json +
    consolidated.pth), a `percli finetune plm` run / checkpoint dir / .safetensors (default: $PERCLI_PLM_CHECKPOINT)."""
    tokenizer: str | None = None
    """Tokenizer folder or file (default: the release folder's, or the one the percli run recorded)."""
    device: str | None = None
    """torch device (default: cuda if available, else cpu)."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on a GPU, fp32 on the CPU; fp16 needs a GPU."""
    max_frames: int | None = None
    """Frames per video (default: the checkpoint's, 32 for the released models): each is one chunk of tokens."""
    max_tiles: int | None = None
    """Tiles per image besides the thumbnail (default: the checkpoint's, 36 for the released models)."""


@dataclass
class Decoding:
    max_new_tokens: int = 256
    """New tokens per answer at most (the release's max_gen_len), further cut to what the context leaves."""
    temperature: float = 0.0
    """0: greedy, the release's default; > 0: sample from softmax(logits / temperature) within top_p."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    greedy: bool = False
    """Decode greedily whatever temperature says."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings: an answer is cut before the first one (<|eot_id|> and <|end_of_text|> always stop)."""
    seed: int = 0
    """Seed of the sampling."""

    @property
    def sampling(self) -> bool:
        return not self.greedy and self.temperature > 0


@dataclass
class Answer:
    text: str
    tokens: int
    """Tokens generated (up to the stop string, when one cut the answer)."""
    stopped: str
    """One of `STOP_REASONS`."""
    prompt_tokens: int


def check_model_section(section: PLMModelSection, key: str = "model") -> None:
    """Config errors naming the key: no checkpoint, a checkpoint or tokenizer that is not there, bad media budgets."""
    if not section.checkpoint:
        raise ConfigError(f"{key}.checkpoint: not set; pass --checkpoint with a PerceptionLM release folder "
                          f"(e.g. facebook/Perception-LM-1B) or a `percli finetune plm` run, or set ${CHECKPOINT_ENV}")
    for name in ("checkpoint", "tokenizer"):
        value = getattr(section, name)
        if value and value != BYTE_TOKENIZER and not Path(value).expanduser().exists():
            raise ConfigError(f"{key}.{name}: {value} not found")
    for name in ("max_frames", "max_tiles"):
        value = getattr(section, name)
        if value is not None and value < 1:
            raise ConfigError(f"{key}.{name}: got {value}; expected an integer >= 1")


def check_decoding(decoding: Decoding, key: str = "generation") -> None:
    if decoding.max_new_tokens < 1:
        raise ConfigError(f"{key}.max_new_tokens: got {decoding.max_new_tokens}; expected an integer >= 1")
    if decoding.temperature < 0 or not 0 < decoding.top_p <= 1:
        raise ConfigError(f"{key}.temperature / {key}.top_p: got {decoding.temperature} / {decoding.top_p}; "
                          "expected temperature >= 0 (0 = greedy) and 0 < top_p <= 1")
    if any(not s for s in decoding.stop):
        raise ConfigError(f"{key}.stop: an empty stop string would cut every answer to nothing")


def device_and_dtype(section: PLMModelSection) -> tuple[torch.device, torch.dtype]:
    device = torch.device(section.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if section.dtype == "fp16" and device.type == "cpu":
        raise ValueError("--dtype fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if section.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, DTYPES[section.dtype]


def load_model(section: PLMModelSection,
               log: Callable[[str], None] = lambda _msg: None) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode on its device, processor with the section's media budget, metadata)."""
    from percli.recipes.plm_common import load_plm

    device, dtype = device_and_dtype(section)
    overrides = {name: value for name, value in (("max_video_frames", section.max_frames),
                                                 ("max_num_tiles", section.max_tiles)) if value is not None}
    log(f"loading PerceptionLM from {section.checkpoint} on {device} ({str(dtype).removeprefix('torch.')})")
    model, processor, meta = load_plm(section.checkpoint, section.tokenizer, device, dtype, overrides)
    return model, processor, meta


def prompt_too_long(num_tokens: int, context: int, media: torch.Tensor | None) -> str | None:
    """Why a prompt of `num_tokens` cannot be answered within `context` tokens, or None when it can."""
    if num_tokens < context:
        return None
    chunks = "" if media is None else f" ({media.shape[0]} media chunks)"
    return (f"prompt_too_long: the prompt is {num_tokens} tokens{chunks}, the model's context {context} leaves no "
            "room for an answer; lower --max-frames / --max-tiles or shorten the question or history")


def _cut(tokenizer: Any, row: list[int], stops: Sequence[str]) -> tuple[str, int] | None:
    """(text before the first stop string, tokens up to the one completing it), or None without a stop string."""
    if not stops or not any(s in tokenizer.decode(row) for s in stops):
        return None
    for k in range(1, len(row) + 1):  # the shortest prefix holding a stop string: the answer ended there
        text = tokenizer.decode(row[:k])
        found = [text.index(s) for s in stops if s in text]
        if found:
            return text[:min(found)], k
    return None


def generate_answers(model: Any, processor: Any, prompts: Sequence[tuple[list[int], list[int]]],
                     media: Sequence[torch.Tensor | None], decoding: Decoding,
                     generator: torch.Generator | None = None) -> list[Answer]:
    """Answers to a batch of `processor.prompt` outputs ((ids, image positions) per prompt) with their media.

    Prompts may differ in length (the model left-pads them). Each must be shorter than the model's context
    (`prompt_too_long`); a batch's answers are bounded by what the context leaves after its longest prompt.
    """
    tokenizer = processor.tokenizer
    ids = [list(p) for p, _ in prompts]
    budget = min(decoding.max_new_tokens, model.max_seqlen - max(len(p) for p in ids))
    rows = model.generate(ids, list(media), image_pos=[list(pos) for _, pos in prompts],
                          image_token_id=tokenizer.image_id, max_new_tokens=decoding.max_new_tokens,
                          stop_ids=tokenizer.stop_ids, greedy=not decoding.sampling,
                          temperature=decoding.temperature if decoding.sampling else 1.0, top_p=decoding.top_p,
                          generator=generator)
    answers = []
    for prompt, row in zip(ids, rows):
        cut = _cut(tokenizer, row, decoding.stop)
        if cut is not None:
            answers.append(Answer(cut[0], cut[1], "stop_string", len(prompt)))
            continue
        stopped = ("stop_token" if len(row) < budget else
                   "max_new_tokens" if budget == decoding.max_new_tokens else "context")
        answers.append(Answer(tokenizer.decode(row), len(row), stopped, len(prompt)))
    return answers
