"""PerceptionLM's processor: conversations and media -> token ids, image-token positions and training batches.

The pieces, in the order a sample goes through them:

* :func:`dialog_turns` lays a ``{"from": "human"|"assistant", "value": ...}`` conversation out in a chat
  template (``plm_sft`` for stages 2-3 and inference, ``warmup`` for stage 1): the ``<image>``/``<video>``
  placeholders become ``chunks x tokens_per_chunk`` ``<|image|>`` tokens, ahead of the first question
  (in place, one image each, for multi-image samples);
* :meth:`PLMProcessor.tokenize` encodes the turns, truncating at the first turn that does not fit the
  context (as the release), and records which positions hold answer tokens (the loss is on those only:
  the assistant header, the answer, ``<|eot_id|>`` and the final ``<|end_of_text|>``);
* :meth:`PLMProcessor.collate` pads a batch exactly as the release's ``MllmPaddingCollator``;
* :meth:`PLMProcessor.prompt` builds a generation prompt, which ends where the assistant's answer starts.

A sample that cannot be used raises :class:`BadConversation`, both a ``ValueError`` (for callers) and a
:class:`~percli.core.data.images.BadSample` whose reason starts with a code the data loader counts:
``empty_conversation``, ``bad_turns``, ``no_assistant_turn``, ``placeholder_mismatch``, ``prompt_too_long``,
``unsupported_field``; unreadable media raise ``BadSample`` with ``unreadable_image`` / ``unreadable_video``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from percli.core.data.images import BadSample
from percli.models.plm_tokenizer import Llama3Tokenizer
from percli.models.plm_transforms import image_transform, load_image, load_images, load_video

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
MEDIA_TYPES = ("image", "multi_image", "video", "text")


class BadConversation(BadSample, ValueError):
    """A sample whose conversation cannot be trained on; ``reason`` starts with a countable code."""

    def __init__(self, where: str, code: str, detail: str) -> None:
        super().__init__(where, f"{code}: {detail}")
        self.code = code


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation is written out (the release's ``Conversation`` fields).

    ``question_after_media`` False drops the first question entirely (stage-1 captioning: media tokens, then the
    answer).
    """

    name: str
    system: str
    bos: str
    eos: str
    pre_system: str
    sep_system: str
    pre_question: str
    sep_question: str
    pre_answer: str
    sep_answer: str
    question_after_media: bool = True

    @property
    def system_text(self) -> str:
        return self.pre_system + self.system + self.sep_system


PLM_SFT = ChatTemplate(
    name="plm_sft",
    system="You are a helpful language and vision assistant. You are able to understand the visual content that "
           "the user provides, and assist the user with a variety of tasks using natural language.",
    bos="<|begin_of_text|>", eos="<|end_of_text|>",
    pre_system="<|start_header_id|>system<|end_header_id|>\n\n", sep_system="<|eot_id|>",
    pre_question="<|start_header_id|>user<|end_header_id|>\n\n", sep_question="<|eot_id|>",
    pre_answer="<|start_header_id|>assistant<|end_header_id|>\n\n", sep_answer="<|eot_id|>",
)
WARMUP = ChatTemplate(
    name="warmup", system="", bos="", eos="", pre_system="", sep_system="", pre_question="", sep_question="",
    pre_answer="", sep_answer="\n", question_after_media=False,
)
TEMPLATES = {t.name: t for t in (PLM_SFT, WARMUP)}


def strip_placeholders(text: str) -> str:
    """The text without ``<image>``/``<video>`` tags (and the newline beside each)."""
    for tag in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
        text = text.replace(tag + "\n", "").replace("\n" + tag, "").replace(tag, "")
    return text


def _checked_turns(conversations: Any, where: str) -> list[tuple[str, str]]:
    """``[(role, value)]`` alternating human/assistant from a human turn, or :class:`BadConversation`."""
    if not isinstance(conversations, Sequence) or isinstance(conversations, str) or not conversations:
        raise BadConversation(where, "empty_conversation", "no turns in 'conversations'")
    turns = []
    for i, turn in enumerate(conversations):
        role = turn.get("from") if isinstance(turn, Mapping) else None
        if role not in ("human", "assistant") or "value" not in turn:
            raise BadConversation(where, "bad_turns", f"turn {i} is not {{'from': 'human'|'assistant', 'value': ...}}")
        if role == "human" and not isinstance(turn["value"], str):
            raise BadConversation(where, "bad_turns", f"turn {i}: a question must be text")
        turns.append((role, turn["value"] if role == "human" else str(turn["value"])))
    # The release skips answers before the first question and a question left unanswered at the end.
    while turns and turns[0][0] == "assistant":
        turns.pop(0)
    if turns and turns[-1][0] == "human":
        turns.pop()
    if not turns:
        raise BadConversation(where, "no_assistant_turn", "no answer follows a question")
    for i, (role, _) in enumerate(turns):
        if role != ("human" if i % 2 == 0 else "assistant"):
            # The release would silently drop (two questions) or repeat (two answers) a turn here.
            raise BadConversation(where, "bad_turns", "questions and answers must alternate")
    return turns


def dialog_turns(conversations: Any, template: ChatTemplate, media_type: str, num_chunks: int,
                 tokens_per_chunk: int, where: str = "<conversation>") -> list[tuple[str, str]]:
    """The conversation as ``[(question text, answer text)]`` in the template, media tokens placed.

    Args:
        conversations: ``[{"from": "human"|"assistant", "value": ...}, ...]``.
        template: The chat template.
        media_type: ``image``, ``video`` (tokens before the first question), ``multi_image`` (each ``<image>``
            tag replaced in place; one chunk per image) or ``text``.
        num_chunks: Chunks of the media (tiles, frames or images).
        tokens_per_chunk: ``<|image|>`` tokens per chunk.
        where: The sample's name in errors.

    Raises:
        BadConversation: For an unusable conversation, or more placeholders than media.
    """
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"media_type {media_type!r}: use one of {', '.join(MEDIA_TYPES)}")
    turns = _checked_turns(conversations, where)
    questions = [value for role, value in turns if role == "human"]
    images = sum(q.count(IMAGE_PLACEHOLDER) for q in questions)
    videos = sum(q.count(VIDEO_PLACEHOLDER) for q in questions)
    image_token = "<|image|>"
    if media_type == "multi_image":
        if images != num_chunks or videos:
            raise BadConversation(where, "placeholder_mismatch", f"{images} {IMAGE_PLACEHOLDER} and {videos} "
                                  f"{VIDEO_PLACEHOLDER} tags for {num_chunks} images (one {IMAGE_PLACEHOLDER} each)")
        questions = [q.replace(IMAGE_PLACEHOLDER, image_token * tokens_per_chunk) for q in questions]
    else:
        allowed = 0 if media_type == "text" else 1
        later = sum(q.count(IMAGE_PLACEHOLDER) + q.count(VIDEO_PLACEHOLDER) for q in questions[1:])
        if images + videos > allowed or later:
            raise BadConversation(where, "placeholder_mismatch", f"{images + videos} media tag(s) for a {media_type} "
                                  f"sample (allowed: {allowed}, in the first question)")
        media_tokens = image_token * (0 if media_type == "text" else num_chunks * tokens_per_chunk)
        first = strip_placeholders(questions[0]) if template.question_after_media else ""
        questions[0] = media_tokens + first
    answers = [value for role, value in turns if role == "assistant"]
    dialog = [(template.pre_question + q + template.sep_question, template.pre_answer + a + template.sep_answer)
              for q, a in zip(questions, answers)]
    dialog[0] = (template.bos + template.system_text + dialog[0][0], dialog[0][1])
    dialog[-1] = (dialog[-1][0], dialog[-1][1] + template.eos)
    return dialog


def generation_text(question: str, template: ChatTemplate, num_chunks: int, tokens_per_chunk: int,
                    history: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt text for a question about media, ending with the assistant header.

    As the release: when the question holds one ``<image>`` tag per chunk, each becomes that chunk's tokens in
    place; otherwise tags are removed and all media tokens go before the question.

    Args:
        question: The (first) question.
        template: The chat template.
        num_chunks: Media chunks (0 for a text-only prompt).
        tokens_per_chunk: ``<|image|>`` tokens per chunk.
        history: Earlier ``(question, answer)`` turns of a chat; the media go with the first question.
    """
    questions = [q for q, _ in history] + [question]
    first = questions[0]
    if num_chunks and first.count(IMAGE_PLACEHOLDER) == num_chunks:
        first = first.replace(IMAGE_PLACEHOLDER, "<|image|>" * tokens_per_chunk)
    else:
        first = "<|image|>" * (num_chunks * tokens_per_chunk) + strip_placeholders(first)
    questions[0] = first if template.question_after_media else "<|image|>" * (num_chunks * tokens_per_chunk)
    text = template.bos + template.system_text
    for q, (_, a) in zip(questions, history):
        text += template.pre_question + q + template.sep_question + template.pre_answer + a + template.sep_answer
    return text + template.pre_question + questions[-1] + template.sep_question + template.pre_answer


@dataclass
class PLMProcessorConfig:
    """Processor settings; defaults are the released stage-3 models' (PE at 448 px, patch 14, 2x2 pooling).

    Attributes:
        image_size: Chunk side S (the vision tower's input size).
        patch_size: The vision tower's patch size.
        pooling_ratio: The projector's average-pooling ratio (1 in stage 1).
        seq_len: Context length of a training sample (the model's ``max_seqlen``).
        conversation_format: ``plm_sft`` (stages 2-3, inference) or ``warmup`` (stage 1).
        vision_input_type: ``thumb+tile`` (stages 2-3, inference) or ``vanilla`` (stage 1).
        max_num_tiles: Tiles per image besides the thumbnail (36 in stage 3, 16 in stage 2).
        max_video_frames: Frames per video (32 in stage 3, 16 in stage 2, 8 in stage 1).
        video_backend: percli's video reader backend (``auto``, ``decord``, ``pyav``).
    """

    image_size: int = 448
    patch_size: int = 14
    pooling_ratio: int = 2
    seq_len: int = 11520
    conversation_format: str = "plm_sft"
    vision_input_type: str = "thumb+tile"
    max_num_tiles: int = 36
    max_video_frames: int = 32
    video_backend: str = "auto"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PLMProcessorConfig:
        """From a perception_models ``params.json`` (its ``model`` and ``data`` sections)."""
        model, data = params.get("model", {}), params.get("data", {})
        vision = model.get("vision_model", {})
        found = {
            "image_size": vision.get("image_size"), "patch_size": vision.get("patch_size"),
            "pooling_ratio": model.get("pooling_ratio"), "seq_len": model.get("max_seqlen"),
            "conversation_format": data.get("conversation_format"), "vision_input_type": data.get("vision_input_type"),
            "max_num_tiles": data.get("max_num_tiles"), "max_video_frames": data.get("max_video_frames"),
        }
        return cls(**{k: v for k, v in found.items() if v is not None})


@dataclass
class PLMSample:
    """One tokenized sample (what the collator takes).

    Attributes:
        text_ids: Token ids, at most ``seq_len - 1`` of them.
        image_pos: Positions of the ``<|image|>`` tokens.
        response_pos: Positions of the answer tokens (the loss targets).
        media: [chunks, 3, S, S] (a ones placeholder for a text-only sample, as the release; the model skips it).
        media_type: ``image``, ``multi_image``, ``video`` or ``text``.
    """

    text_ids: list[int]
    image_pos: list[int]
    response_pos: list[int]
    media: torch.Tensor
    media_type: str

    @property
    def num_chunks(self) -> int:
        return int(self.media.shape[0])

    def as_item(self) -> dict[str, Any]:
        """The sample as a dataset item (a dict, which the engine's bad-sample filter and `collate` take)."""
        return {"text_ids": self.text_ids, "image_pos": self.image_pos, "response_pos": self.response_pos,
                "media": self.media, "media_type": self.media_type}


class PLMProcessor:
    """Tokenizer + chat template + media transforms + collator of a PerceptionLM model.

    Args:
        tokenizer: The model's :class:`~percli.models.plm_tokenizer.Llama3Tokenizer`.
        config: Settings (the released stage-3 models' by default).
    """

    def __init__(self, tokenizer: Llama3Tokenizer, config: PLMProcessorConfig | None = None):
        self.tokenizer = tokenizer
        self.config = config or PLMProcessorConfig()
        if self.config.conversation_format not in TEMPLATES:
            raise ValueError(f"conversation_format {self.config.conversation_format!r}: use one of "
                             f"{', '.join(TEMPLATES)}")
        self.template = TEMPLATES[self.config.conversation_format]

    def tokens_per_chunk(self, media: torch.Tensor) -> int:
        """``<|image|>`` tokens of one chunk: (S / patch / pooling)^2, from the media's own size."""
        step = self.config.patch_size * self.config.pooling_ratio
        return (media.shape[-2] // step) * (media.shape[-1] // step)

    def text_placeholder(self) -> torch.Tensor:
        """The media of a text-only sample: one chunk of ones, never shown to the model."""
        return torch.ones(1, 3, self.config.image_size, self.config.image_size)

    def tokenize(self, conversations: Any, media: torch.Tensor | None = None, media_type: str = "image",
                 where: str = "<conversation>") -> PLMSample:
        """Encode a conversation with its media ([chunks, 3, S, S]; None for text-only).

        Turns are added while the ids plus one fit ``seq_len``; the first that does not ends the sample, as in
        the release.

        Raises:
            BadConversation: As :func:`dialog_turns`; ``prompt_too_long`` when the first question does not fit,
                when no answer token fits (the release would keep a sample that trains nothing) or when truncation
                would cut media tokens.
        """
        if media is None or media_type == "text":
            media, media_type = self.text_placeholder() if media is None else media, "text"
        per_chunk = self.tokens_per_chunk(media)
        dialog = dialog_turns(conversations, self.template, media_type, media.shape[0], per_chunk, where)
        ids: list[int] = []
        response_pos: list[int] = []
        for question, answer in dialog:
            q_ids = self.tokenizer.encode(question)
            if len(ids) + len(q_ids) + 1 > self.config.seq_len:
                break
            ids += q_ids
            a_ids = self.tokenizer.encode(answer)
            if len(ids) + len(a_ids) + 1 > self.config.seq_len:
                break
            response_pos += range(len(ids), len(ids) + len(a_ids))
            ids += a_ids
        if not response_pos:
            raise BadConversation(where, "prompt_too_long", f"the first question and answer need more than "
                                  f"seq_len {self.config.seq_len} tokens")
        image_pos = [i for i, t in enumerate(ids) if t == self.tokenizer.image_id]
        expected = 0 if media_type == "text" else media.shape[0] * per_chunk
        if len(image_pos) != expected:
            detail = ("truncation to seq_len would cut media tokens" if len(image_pos) < expected else
                      "the text itself contains <|image|>")
            code = "prompt_too_long" if len(image_pos) < expected else "placeholder_mismatch"
            raise BadConversation(where, code, f"{len(image_pos)} <|image|> tokens for {expected} media tokens: "
                                  f"{detail}")
        return PLMSample(ids, image_pos, response_pos, media, media_type)

    def prompt(self, question: str, media: torch.Tensor | None = None,
               history: Sequence[tuple[str, str]] = ()) -> tuple[list[int], list[int]]:
        """Generation prompt ids and their ``<|image|>`` positions (see :func:`generation_text`)."""
        num_chunks = 0 if media is None else media.shape[0]
        per_chunk = 0 if media is None else self.tokens_per_chunk(media)
        ids = self.tokenizer.encode(generation_text(question, self.template, num_chunks, per_chunk, history))
        return ids, [i for i, t in enumerate(ids) if t == self.tokenizer.image_id]

    def transform_image(self, image: Any) -> torch.Tensor:
        """A PIL image -> [chunks, 3, S, S] with the configured tiling."""
        c = self.config
        return image_transform(image, c.image_size, c.max_num_tiles, c.vision_input_type)

    def load_media(self, row: Mapping[str, Any], root: str | None = None) -> tuple[torch.Tensor | None, str]:
        """``(media, media_type)`` of a data row with ``image`` (a path or a list), ``video`` or neither.

        Raises:
            BadSample: For an unreadable file; BadConversation ``unsupported_field`` for video segments
                (``start_time``/``end_time``), drawn boxes (``bbox_map``) or region rows (``bbox``).
        """
        c = self.config
        where = str(row.get("video") or row.get("image") or "<row>")
        unsupported = [k for k in ("bbox", "bbox_map", "start_time", "end_time") if row.get(k) is not None]
        if unsupported:
            raise BadConversation(where, "unsupported_field", f"{', '.join(unsupported)} not supported yet")

        def resolve(path: str) -> str:
            return os.path.join(root, path) if root else path

        if row.get("image") is not None:
            paths = [row["image"]] if isinstance(row["image"], str) else list(row["image"])
            if len(paths) == 1:
                return load_image(resolve(paths[0]), c.image_size, c.max_num_tiles, c.vision_input_type), "image"
            return load_images([resolve(p) for p in paths], c.image_size), "multi_image"
        if row.get("video") is not None:
            return load_video(resolve(row["video"]), c.image_size, c.max_video_frames, c.video_backend), "video"
        return None, "text"

    def __call__(self, row: Mapping[str, Any], root: str | None = None) -> dict[str, Any]:
        """A release data row (``conversations``, or a plain ``text`` caption; ``image``/``video``) -> a dataset
        item (:meth:`PLMSample.as_item`); paths are relative to `root` when given."""
        where = str(row.get("video") or row.get("image") or "<row>")
        if "conversations" in row:
            conversations = row["conversations"]
        elif isinstance(row.get("text"), str):
            conversations = [{"from": "human", "value": ""}, {"from": "assistant", "value": row["text"]}]
        else:
            raise BadConversation(where, "empty_conversation", "the row has neither 'conversations' nor 'text'")
        media, media_type = self.load_media(row, root)
        return self.tokenize(conversations, media, media_type, where).as_item()

    def collate(self, samples: Sequence[PLMSample | Mapping[str, Any]], pad_to_longest: bool = False) -> dict[str, Any]:
        """A batch as the release's ``MllmPaddingCollator`` makes it, from samples or their dataset items.

        Returns:
            ``token_values`` [B, L] (ids without the last, padded with eos), ``target`` [B, L] (``target[j - 1]``
            = the answer token at ``j``, eos elsewhere), ``loss_mask`` [B, L] (True at answer targets),
            ``image_pos_index`` [B, L] (k at the k-th ``<|image|>`` of a sample, else -1), ``images``
            [total chunks, 3, S, S], ``num_chunks`` [B] and ``media_type`` (list). L is ``seq_len``, or the
            longest sample's length with `pad_to_longest` (the same values where ``loss_mask`` is True).
        """
        if not samples:
            raise ValueError("PLM collate: empty batch")
        samples = [s if isinstance(s, PLMSample) else PLMSample(**s) for s in samples]
        too_long = [len(s.text_ids) for s in samples if len(s.text_ids) > self.config.seq_len]
        if too_long:
            raise ValueError(f"PLM collate: sample(s) of {too_long} tokens exceed seq_len {self.config.seq_len}; "
                             "tokenize with the same processor")
        width = max(len(s.text_ids) - 1 for s in samples) if pad_to_longest else self.config.seq_len
        pad, eos = self.tokenizer.pad_id, self.tokenizer.eos_id
        tokens = torch.full((len(samples), width), pad, dtype=torch.long)
        target = torch.full((len(samples), width), pad, dtype=torch.long)
        image_pos_index = torch.full((len(samples), width), -1, dtype=torch.long)
        for b, s in enumerate(samples):
            text = torch.tensor(s.text_ids, dtype=torch.long)
            tokens[b, : len(text) - 1] = text[:-1]
            positions = torch.tensor(s.response_pos, dtype=torch.long)
            target[b, positions - 1] = text[positions]  # predict the token at j from position j - 1
            image_pos_index[b, s.image_pos] = torch.arange(len(s.image_pos))
        loss_mask = target != pad
        tokens[tokens == pad] = eos
        target[target == pad] = eos
        return {
            "token_values": tokens, "target": target, "loss_mask": loss_mask, "image_pos_index": image_pos_index,
            "images": torch.cat([s.media for s in samples]),
            "num_chunks": torch.tensor([s.num_chunks for s in samples], dtype=torch.long),
            "media_type": [s.media_type for s in samples],
        }

    def settings(self) -> dict[str, Any]:
        """The configuration as a plain dict (for a checkpoint's metadata)."""
        return asdict(self.config)
