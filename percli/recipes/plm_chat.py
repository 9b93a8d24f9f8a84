"""Ask a PerceptionLM about an image or a video: the answer goes to stdout (--json: the answer, its token count
and why it stopped).

The image is tiled as the checkpoint was trained (thumbnail + up to --max-tiles tiles), the video sampled to
--max-frames frames, and the question laid out in the release's chat template (media tokens first). Decoding is
greedy unless --temperature > 0 (then nucleus sampling within --top-p, seeded by --seed); an answer ends at the
model's end of turn, at an extra --stop string (cut from the answer) or after --max-new-tokens (256: the release's
length; the context bounds it too). Without --image or --video the question is asked as text only.

Without a question, on a terminal, the chat is interactive: each question sees the earlier turns (the media go
with the first); /reset forgets them, /exit or an empty input at end of file leaves. Anywhere else (a pipe, a
script) a missing question is an error: nothing ever waits for input that will not come.

Unreadable media, a prompt longer than the model's context, or a checkpoint / tokenizer that is not there exit
with code 2 and one line saying what to change. Nothing is kept without --run-dir.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.recipes.plm_generate import Decoding, PLMModelSection, check_decoding, check_model_section

INTERACTIVE_HELP = "PerceptionLM chat: ask about the media; /reset forgets the conversation, /exit (or Ctrl-D) leaves."


@dataclass
class Config:
    question: str | None = None
    """The question; none on a terminal: the interactive chat."""
    image: str | None = None
    """An image file to ask about."""
    video: str | None = None
    """A video file to ask about."""
    model: PLMModelSection = field(default_factory=PLMModelSection)
    generation: Decoding = field(default_factory=Decoding)


def stdin_is_terminal() -> bool:
    """Whether a person can type questions (the interactive chat starts only then)."""
    return sys.stdin is not None and sys.stdin.isatty()


def validate(cfg: Config) -> None:
    check_model_section(cfg.model)
    if cfg.image and cfg.video:
        raise ConfigError("image / video: both given; ask about one image or one video at a time")
    for key in ("image", "video"):
        path = getattr(cfg, key)
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(f"{key}: {path} not found")
    if cfg.question is not None and not cfg.question.strip():
        raise ConfigError("question: empty; give the question as the argument, e.g. \"What is happening?\"")
    if cfg.question is None and not stdin_is_terminal():
        raise ConfigError("question: not set; give the question as the argument (percli chat --image photo.jpg "
                          "\"What is in the picture?\"); the interactive chat starts only on a terminal")
    check_decoding(cfg.generation)


def _media(processor: Any, cfg: Config) -> Any:
    """[chunks, 3, S, S] of the image or video, None for a text-only question; ValueError for unreadable media."""
    from percli.core.data.images import BadSample

    row = {"image": str(Path(cfg.image).expanduser())} if cfg.image else (
        {"video": str(Path(cfg.video).expanduser())} if cfg.video else {})
    try:
        return processor.load_media(row)[0]
    except BadSample as e:
        raise ValueError(f"cannot read the {'image' if cfg.image else 'video'}: {e}") from None


def ask(model: Any, processor: Any, media: Any, question: str, history: list[tuple[str, str]],
        decoding: Decoding, generator: Any) -> Any:
    """The `Answer` to `question` after the earlier turns; ValueError when the prompt does not fit the context."""
    from percli.recipes.plm_generate import generate_answers, prompt_too_long

    ids, image_pos = processor.prompt(question, media, history)
    problem = prompt_too_long(len(ids), model.max_seqlen, media)
    if problem:
        raise ValueError(problem)
    return generate_answers(model, processor, [(ids, image_pos)], [media], decoding, generator)[0]


def run(cfg: Config, ctx: RunContext) -> dict:
    import torch

    from percli.recipes.plm_generate import load_model

    if ctx.world > 1:
        raise ValueError("chat runs as one process; start it without accelerate launch / torchrun")
    started = time.time()
    model, processor, _ = load_model(cfg.model, ctx.log)
    media = _media(processor, cfg)
    generator = torch.Generator().manual_seed(cfg.generation.seed)
    about = {"image": cfg.image, "video": cfg.video, "checkpoint": cfg.model.checkpoint,
             "media_chunks": 0 if media is None else int(media.shape[0])}
    if cfg.question is None:
        turns = _interactive(model, processor, media, cfg.generation, generator, ctx)
        return {"status": "completed", "interactive": True, "turns": turns, **about,
                "elapsed_s": round(time.time() - started, 2)}
    answer = ask(model, processor, media, cfg.question, [], cfg.generation, generator)
    return {"status": "completed", "question": cfg.question, "answer": answer.text, "tokens": answer.tokens,
            "stopped": answer.stopped, "prompt_tokens": answer.prompt_tokens, **about,
            "elapsed_s": round(time.time() - started, 2)}


def _interactive(model: Any, processor: Any, media: Any, decoding: Decoding, generator: Any,
                 ctx: RunContext) -> list[dict[str, Any]]:
    """Questions from the terminal, answers to stdout, each turn seeing the earlier ones; the turns."""
    ctx.log(INTERACTIVE_HELP)
    history: list[tuple[str, str]] = []
    turns: list[dict[str, Any]] = []
    while True:
        try:
            question = input(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if question in ("/exit", "/quit"):
            break
        if question == "/reset":
            history = []
            ctx.log("(conversation forgotten; the media stay)")
            continue
        if not question:
            continue
        try:
            answer = ask(model, processor, media, question, history, decoding, generator)
        except ValueError as e:
            ctx.log(f"{e}; /reset starts the conversation over")
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            ctx.log("(answer interrupted)")
            continue
        print(answer.text, flush=True)
        history.append((question, answer.text))
        turns.append({"question": question, "answer": answer.text, "tokens": answer.tokens,
                      "stopped": answer.stopped})
    return turns


def show_result(summary: dict[str, Any]) -> None:
    """The human output of a one-shot chat: the answer alone (the interactive chat printed its answers already)."""
    if not summary.get("interactive"):
        print(summary["answer"])
