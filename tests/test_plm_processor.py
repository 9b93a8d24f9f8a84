"""PerceptionLM processor: Llama-3 tokenizer, chat templates, media transforms and the padding collator.

The golden case ``plm_tiny_cfg`` holds the official PLMTokenizer + MllmPaddingCollator output on a synthetic
byte-level tiktoken file (id = byte, specials from 256); the processor must reproduce it exactly.
"""

import base64
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from percli.core.config import ConfigError
from percli.core.data.images import BadSample
from percli.models.plm_processor import (
    PLM_SFT,
    BadConversation,
    PLMProcessor,
    PLMProcessorConfig,
    generation_text,
)
from percli.models.plm_tokenizer import LLAMA3_SPLIT_PATTERN, Llama3Tokenizer, llama3_special_tokens
from percli.models.plm_transforms import (
    choose_tile_grid,
    image_transform,
    load_video,
    plm_frame_indices,
    video_transform,
)
from tests.conftest import GOLDEN_DIR

CASE = GOLDEN_DIR / "plm_tiny_cfg"
TINY = PLMProcessorConfig(image_size=48, patch_size=8, pooling_ratio=2, seq_len=272)  # 9 tokens per chunk
IMG = "<|image|>"
SYSTEM = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + PLM_SFT.system + "<|eot_id|>")


def write_tiktoken(path: Path, merged: list[bytes] = ()) -> Path:
    """A tiktoken BPE file: the 256 bytes (id = byte), then `merged` tokens in rank order."""
    tokens = [bytes([i]) for i in range(256)] + list(merged)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return path


@pytest.fixture(scope="module")
def byte_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plm_bytes")
    write_tiktoken(folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def processor(byte_folder) -> PLMProcessor:
    return PLMProcessor(Llama3Tokenizer(byte_folder), TINY)


@pytest.fixture(scope="module")
def roomy(byte_folder) -> PLMProcessor:
    """The tiny geometry with room for several turns and small tiled images."""
    return PLMProcessor(Llama3Tokenizer(byte_folder), PLMProcessorConfig(**{**vars(TINY), "seq_len": 2048,
                                                                            "max_num_tiles": 4}))


def chat(*turns: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "assistant", "value": v} for i, v in enumerate(turns)]


def media(chunks: int, size: int = 48) -> torch.Tensor:
    return torch.rand(chunks, 3, size, size) * 2 - 1


# --------------------------------------------------------------------------------------------------
# Tokenizer


def test_special_token_ids_follow_the_bpe_ranks(byte_folder):
    tok = Llama3Tokenizer(byte_folder)
    assert (tok.n_words, tok.bos_id, tok.eos_id, tok.image_id) == (512, 256, 257, 258)
    assert (tok.start_header_id, tok.end_header_id, tok.eot_id) == (262, 263, 265)
    assert tok.special_tokens["<|reserved_special_token_1|>"] == 259
    assert tok.special_tokens["<|reserved_special_token_4|>"] == 264
    assert tok.special_tokens["<|reserved_special_token_5|>"] == 266
    assert tok.special_tokens["<|reserved_special_token_250|>"] == 511
    assert len(set(llama3_special_tokens())) == 256
    assert tok.encode("a<|eot_id|>é", add_bos=True, add_eos=True) == [256, 97, 265, 0xC3, 0xA9, 257]
    assert tok.decode([256, 104, 105, 265]) == "<|begin_of_text|>hi<|eot_id|>"


MERGED = [b"bc", b"ab", b" c", b"at", b" cat", b"he", b" t", b" the", b"12", b"123"]
TEXTS = ["abc", "ab abc", " cat cats", "the theme  the\n\n", "I'm 123456 cats!?", "<|image|><|image|>abc<|eot_id|>",
         "caf\u00e9 \u4e2d\u6587"]


def test_bpe_merges_lowest_rank_first(tmp_path):
    tok = Llama3Tokenizer(write_tiktoken(tmp_path / "tokenizer.model", MERGED))
    bc, ab, at, cat = 256, 257, 259, 260
    assert tok.encode("abc") == [ord("a"), bc]  # "bc" outranks "ab", so the leftmost pair does not win
    assert tok.encode("ab") == [ab]
    assert tok.encode(" cats") == [cat, ord("s")]  # one pre-token: " c" + "at" -> " cat"
    assert tok.encode("cat") == [ord("c"), at]  # no " c" without the space
    assert tok.encode("123456") == [265, 52, 53, 54]  # the split regex takes digits three at a time
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for bytes (the alphabet of byte-level tokenizer.json files)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def write_hf_tokenizer_json(path: Path, merged: list[bytes]) -> Path:
    """The same vocabulary as `write_tiktoken` as a Hugging Face tokenizer.json (Llama-3's layout)."""
    tokenizers = pytest.importorskip("tokenizers")
    byte_char = bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    tokens = [bytes([i]) for i in range(256)] + merged
    vocab = {spell(t): i for i, t in enumerate(tokens)}
    merges = []
    for t in merged:  # each test token has exactly one split into two known tokens
        (left, right), = [(t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in tokens and t[k:] in tokens]
        merges.append((spell(left), spell(right)))
    model = tokenizers.models.BPE(vocab=vocab, merges=merges, ignore_merges=True)
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.add_special_tokens([tokenizers.AddedToken(name, special=True, normalized=False)
                            for name in llama3_special_tokens()])
    tok.save(str(path))
    return path


def test_tokenizer_json_gives_the_tiktoken_ids(tmp_path):
    (tmp_path / "tk").mkdir()
    (tmp_path / "hf").mkdir()
    tiktoken = Llama3Tokenizer(write_tiktoken(tmp_path / "tk" / "tokenizer.model", MERGED))
    hf = Llama3Tokenizer(write_hf_tokenizer_json(tmp_path / "hf" / "tokenizer.json", MERGED).parent)
    assert hf.file.name == "tokenizer.json"
    assert (hf.n_words, hf.bos_id, hf.eos_id, hf.eot_id, hf.image_id) == (522, 266, 267, 275, 268)
    for text in TEXTS:
        assert hf.encode(text) == tiktoken.encode(text), text
        assert hf.decode(hf.encode(text)) == text


def test_tokenizer_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="nowhere"):
        Llama3Tokenizer(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=f"{tmp_path}.*tokenizer.model"):
        Llama3Tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x05\x00\xff binary sentencepiece \x00")
    with pytest.raises(ConfigError, match="not a tiktoken BPE file"):
        Llama3Tokenizer(tmp_path)


def test_tokenizer_found_in_the_original_subfolder(tmp_path):
    (tmp_path / "original").mkdir()
    write_tiktoken(tmp_path / "original" / "tokenizer.model")
    assert Llama3Tokenizer(tmp_path).file == tmp_path / "original" / "tokenizer.model"


# --------------------------------------------------------------------------------------------------
# Golden: the official PLMTokenizer + MllmPaddingCollator output


@pytest.mark.skipif(not (CASE / "inputs.safetensors").is_file(), reason=f"golden case missing: {CASE}")
def test_batch_equals_official_collator_on_plm_tiny_cfg(processor):
    from safetensors.torch import load_file

    inputs = load_file(str(CASE / "inputs.safetensors"))
    outputs = load_file(str(CASE / "outputs.safetensors"))
    image = processor.tokenize(chat("<image>\nWhat is in the image?", "A red square."), inputs["images"][:1], "image")
    video = processor.tokenize(chat("<video>\nDescribe the video.", "Two frames."), inputs["images"][1:], "video")
    batch = processor.collate([image, video])
    for key in ("token_values", "target", "loss_mask", "image_pos_index", "images", "num_chunks"):
        assert batch[key].dtype == inputs[key].dtype, key
        assert torch.equal(batch[key], inputs[key]), key
    assert batch["media_type"] == ["image", "video"]
    assert [m == "video" for m in batch["media_type"]] == inputs["media_type_is_video"].tolist()

    ids, image_pos = processor.prompt("What is this?", inputs["gen_image"])
    assert ids == outputs["gen_prompt_ids"][0].tolist()
    assert image_pos == outputs["gen_image_pos"].tolist()
    assert processor.tokenizer.encode("Hello, PLM!", add_bos=True) == inputs["text_only_tokens"][0].tolist()


# --------------------------------------------------------------------------------------------------
# Chat templates


def test_multi_turn_loss_covers_every_answer_and_only_answers(roomy):
    sample = roomy.tokenize(chat("<image>\nColour?", "Red.", "Shape?", "Square."), media(1), "image")
    tok = roomy.tokenizer
    question = "<|start_header_id|>user<|end_header_id|>\n\n"
    answer = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert tok.decode(sample.text_ids) == (
        SYSTEM + question + IMG * 9 + "Colour?<|eot_id|>" + answer + "Red.<|eot_id|>"
        + question + "Shape?<|eot_id|>" + answer + "Square.<|eot_id|><|end_of_text|>")
    answers = tok.decode([sample.text_ids[j] for j in sample.response_pos])
    assert answers == answer + "Red.<|eot_id|>" + answer + "Square.<|eot_id|><|end_of_text|>"
    assert sample.image_pos == list(range(sample.image_pos[0], sample.image_pos[0] + 9))


def test_warmup_template_keeps_media_tokens_and_answer_only(byte_folder):
    cfg = PLMProcessorConfig(**{**vars(TINY), "conversation_format": "warmup"})
    proc = PLMProcessor(Llama3Tokenizer(byte_folder), cfg)
    sample = proc.tokenize(chat("<image>\nDescribe it.", "A cat."), media(1), "image")
    assert proc.tokenizer.decode(sample.text_ids) == IMG * 9 + "A cat.\n"
    assert sample.response_pos == list(range(9, 9 + len("A cat.\n")))
    ids, _ = proc.prompt("Describe it.", media(1))
    assert proc.tokenizer.decode(ids) == IMG * 9


def test_generation_prompt_ends_at_the_assistant_header(processor):
    tok = processor.tokenizer
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    user = "<|start_header_id|>user<|end_header_id|>\n\n"
    ids, pos = processor.prompt("<video>\nWhat happens?", media(2))  # tag count != chunks: moved to the front
    assert tok.decode(ids) == SYSTEM + user + IMG * 18 + "What happens?<|eot_id|>" + header
    assert len(pos) == 18
    ids, _ = processor.prompt("Left <image> or right <image>?", media(2))  # one tag per chunk: in place
    assert tok.decode(ids) == SYSTEM + user + f"Left {IMG * 9} or right {IMG * 9}?<|eot_id|>" + header
    text = generation_text("And now?", PLM_SFT, 1, 9, history=[("<image>What?", "A dog.")])
    assert text == (SYSTEM + user + IMG * 9 + "What?<|eot_id|>" + header + "A dog.<|eot_id|>" + user
                    + "And now?<|eot_id|>" + header)


def test_multi_image_tags_are_replaced_in_place(processor):
    sample = processor.tokenize(chat("Is <image> brighter than <image>?", "Yes."), media(2), "multi_image")
    text = processor.tokenizer.decode(sample.text_ids)
    assert f"Is {IMG * 9} brighter than {IMG * 9}?" in text
    assert len(sample.image_pos) == 18


def test_text_only_sample_carries_a_placeholder_chunk(processor):
    item = processor({"text": "Just words."})  # a dataset item: a dict, as the engine's loader expects
    assert item["media_type"] == "text" and item["image_pos"] == []
    assert torch.equal(item["media"], torch.ones(1, 3, 48, 48))
    batch = processor.collate([item])
    assert batch["num_chunks"].tolist() == [1] and (batch["image_pos_index"] == -1).all()


# --------------------------------------------------------------------------------------------------
# Truncation and bad input


def test_turns_past_the_context_are_dropped_as_the_release(roomy):
    tok = roomy.tokenizer
    conv = chat("<image>\nColour?", "Red.", "Shape?", "Square.")
    full = roomy.tokenize(conv, media(1), "image")
    first = roomy.tokenize(conv[:2], media(1), "image")
    first_len = len(first.text_ids) - 1  # without the final <|end_of_text|>, which only the last answer gets
    assert len(full.text_ids) > first_len + 10
    # Room for the first exchange only.
    cut = PLMProcessor(tok, PLMProcessorConfig(**{**vars(TINY), "seq_len": first_len + 5})).tokenize(conv, media(1))
    assert cut.text_ids == first.text_ids[:-1]
    assert cut.response_pos == first.response_pos[:-1]
    # Room for the second question but not its answer: the question stays, untrained.
    question_len = len(tok.encode("<|start_header_id|>user<|end_header_id|>\n\nShape?<|eot_id|>"))
    seq_len = first_len + question_len + 1
    cut = PLMProcessor(tok, PLMProcessorConfig(**{**vars(TINY), "seq_len": seq_len})).tokenize(conv, media(1))
    assert len(cut.text_ids) == first_len + question_len
    assert cut.response_pos == first.response_pos[:-1]
    batch = PLMProcessor(tok, PLMProcessorConfig(**{**vars(TINY), "seq_len": seq_len})).collate([cut])
    assert batch["token_values"].shape == (1, seq_len) and int(batch["loss_mask"].sum()) == len(cut.response_pos)


def test_pad_to_longest_keeps_the_trained_positions(processor):
    samples = [processor.tokenize(chat("<image>Hi?", "Hello."), media(1)),
               processor.tokenize(chat("<video>Long question here?", "Ok."), media(2), "video")]
    full, short = processor.collate(samples), processor.collate(samples, pad_to_longest=True)
    width = short["token_values"].shape[1]
    assert width == max(len(s.text_ids) for s in samples) - 1
    for key in ("token_values", "target", "loss_mask", "image_pos_index"):
        assert torch.equal(full[key][:, :width], short[key]), key
    assert not full["loss_mask"][:, width:].any()


@pytest.mark.parametrize("conversations, media_type, chunks, code", [
    ([], "image", 1, "empty_conversation"),
    (chat("<image>\nWhat is it?"), "image", 1, "no_assistant_turn"),
    ([{"from": "assistant", "value": "Hi."}], "image", 1, "no_assistant_turn"),
    ([{"from": "gpt", "value": "Hi."}], "image", 1, "bad_turns"),
    ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "assistant", "value": "c"}],
     "image", 1, "bad_turns"),
    (chat("<image><image>Two?", "One."), "image", 1, "placeholder_mismatch"),
    (chat("<video>What?", "This.", "<video>And?", "That."), "video", 4, "placeholder_mismatch"),
    (chat("<image>What?", "Words only."), "text", 1, "placeholder_mismatch"),
    (chat("<image> or <image> or <image>?", "Second."), "multi_image", 2, "placeholder_mismatch"),
    (chat("Sneaky <|image|> token", "Hm."), "image", 1, "placeholder_mismatch"),
    (chat("x" * 300, "Too long."), "image", 1, "prompt_too_long"),
    (chat("x" * 50, "y" * 40), "image", 1, "prompt_too_long"),  # the question fits (266 ids), its answer not
])
def test_bad_conversations_are_countable_errors(processor, conversations, media_type, chunks, code):
    with pytest.raises(BadConversation) as info:
        processor.tokenize(conversations, media(chunks), media_type, where="row-7")
    assert isinstance(info.value, BadSample) and isinstance(info.value, ValueError)
    assert info.value.code == code and info.value.reason.startswith(code + ":")
    assert info.value.path == "row-7"


def test_unreadable_media_raise_bad_sample(processor, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    conv = chat("<image>What?", "Nothing.")
    for row, reason in [({"image": "broken.jpg"}, "unreadable_image"), ({"image": "missing.png"}, "unreadable_image"),
                        ({"image": ["broken.jpg", "broken.jpg"]}, "unreadable_image"),
                        ({"video": "broken.mp4"}, "unreadable_video"),
                        ({"video": "broken.mp4", "start_time": 1.0}, "unsupported_field")]:
        with pytest.raises(BadSample) as info:
            processor({**row, "conversations": conv}, root=str(tmp_path))
        assert info.value.reason.startswith(reason + ":"), info.value.reason


def test_rows_with_image_files_are_tiled(roomy, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    item = roomy({"image": "a.png", "conversations": chat("<image>\nWhat?", "Noise.")}, root=str(tmp_path))
    cols, rows = choose_tile_grid(100, 60, 48, 4)
    assert (cols, rows) == (2, 2)
    assert item["media"].shape == (1 + cols * rows, 3, 48, 48) and item["media_type"] == "image"
    assert len(item["image_pos"]) == 9 * (1 + cols * rows)
    pair = roomy({"image": ["a.png", "a.png"], "conversations": chat("<image> vs <image>", "Same.")},
                 root=str(tmp_path))
    assert pair["media"].shape == (2, 3, 48, 48) and pair["media_type"] == "multi_image"
    batch = roomy.collate([item, pair])
    assert batch["images"].shape == (7, 3, 48, 48) and batch["num_chunks"].tolist() == [5, 2]
    assert batch["image_pos_index"].max(1).values.tolist() == [44, 17]


def test_config_from_params_json():
    params = {"model": {"pooling_ratio": 1, "max_seqlen": 1280, "vision_model": {"image_size": 448, "patch_size": 14}},
              "data": {"max_num_tiles": 1, "max_video_frames": 8, "vision_input_type": "vanilla",
                       "conversation_format": "warmup"}}
    cfg = PLMProcessorConfig.from_params(params)
    assert (cfg.pooling_ratio, cfg.seq_len, cfg.max_video_frames, cfg.vision_input_type) == (1, 1280, 8, "vanilla")
    assert cfg.conversation_format == "warmup" and cfg.image_size == 448


# --------------------------------------------------------------------------------------------------
# Media transforms


GRID_SIZES = [(448, 448), (300, 800), (800, 300), (1000, 1000), (2000, 500), (500, 2000), (1344, 896), (447, 449),
              (4000, 3000), (90, 1200), (5000, 100), (640, 480), (1920, 1080), (1080, 1920), (900, 901)]


@pytest.mark.parametrize("max_num_tiles", [1, 4, 16, 36])
def test_tile_grid_matches_hugging_face_perception_lm(max_num_tiles):
    module = pytest.importorskip("transformers.models.perception_lm.image_processing_perception_lm")
    hf = module.PerceptionLMImageProcessor(max_num_tiles=max_num_tiles)
    for w, h in GRID_SIZES:
        expected = hf._fit_image_to_canvas(img_width=w, img_height=h, tile_size=448)
        if expected is None:
            expected = hf._find_closest_aspect_ratio(img_width=w, img_height=h, tile_size=448)
        assert choose_tile_grid(w, h, 448, max_num_tiles) == tuple(expected), (w, h)


def test_tile_grid_hand_cases():
    # Among canvases that hold the image, the one that shows it largest: small images are upsampled.
    assert choose_tile_grid(448, 448, 448, 36) == (6, 6)
    assert choose_tile_grid(448, 448, 448, 4) == (2, 2)
    assert choose_tile_grid(130, 40, 48, 4) == (4, 1)  # 4x1 shows it 48 px high, 3x1 only 44
    # No canvas holds it: the closest aspect ratio not wider than the image (1:1 for 130 x 70), most tiles.
    assert choose_tile_grid(130, 70, 48, 4) == (2, 2)
    assert choose_tile_grid(5000, 100, 448, 4) == (4, 1)


@pytest.mark.parametrize("width, height, grid", [(130, 40, (4, 1)), (130, 70, (2, 2)), (35, 120, (1, 4))])
def test_image_tiles_equal_the_release_torchvision_ops(width, height, grid):
    tvf = pytest.importorskip("torchvision.transforms.functional")
    bicubic = tvf.InterpolationMode.BICUBIC
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8))
    chunks = image_transform(image, 48, max_num_tiles=4)
    cols, rows = choose_tile_grid(width, height, 48, 4)
    assert (cols, rows) == grid and chunks.shape == (1 + cols * rows, 3, 48, 48)

    def release(img, h, w):
        return tvf.normalize(tvf.to_tensor(tvf.resize(img, [h, w], interpolation=bicubic)), [0.5] * 3, [0.5] * 3)

    assert torch.equal(chunks[0], release(image, 48, 48))  # the thumbnail first
    canvas = release(image, rows * 48, cols * 48)
    for k in range(cols * rows):
        r, c = divmod(k, cols)
        assert torch.equal(chunks[1 + k], canvas[:, r * 48:(r + 1) * 48, c * 48:(c + 1) * 48])
    assert torch.equal(image_transform(image, 48, vision_input_type="vanilla"), chunks[:1])
    assert chunks.min() >= -1 and chunks.max() <= 1


def test_video_frames_equal_the_release_torchvision_resize():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    frames = torch.randint(0, 256, (3, 3, 37, 53), dtype=torch.uint8)
    expected = tvf.resize(frames, [48, 48], interpolation=tvf.InterpolationMode.BICUBIC)
    expected = tvf.normalize(expected.float() / 255.0, [0.5] * 3, [0.5] * 3)
    assert torch.equal(video_transform(frames, 48), expected)


@pytest.mark.parametrize("frames, fps, max_frames, start, end, expected", [
    (300, 30, 8, None, None, [0, 30, 90, 120, 150, 180, 240, 270]),  # 10 one-per-second candidates -> 8
    (60, 30, 8, None, None, [0, 8, 17, 25, 34, 42, 51, 59]),  # 2 candidates: spread over all 60 frames
    (5, 30, 8, None, None, [0, 1, 2, 3, 4]),  # fewer frames than wanted: all of them
    (240, 30, 8, None, None, [0, 30, 60, 90, 120, 150, 180, 210]),  # exactly 8 candidates
    (300, 30, 8, 1.0, 2.0, [30, 34, 39, 43, 47, 51, 56, 60]),  # the [1 s, 2 s] segment
    (300, 30, 8, 5.0, 5.0, [150, 151]),  # an empty segment becomes two frames
])
def test_frame_sampling_as_the_release(frames, fps, max_frames, start, end, expected):
    assert plm_frame_indices(frames, fps, max_frames, start, end) == expected


def write_grey_video(path: Path, num_frames: int, fps: int = 25, size: int = 32) -> None:
    """Lossless MP4 whose frame i is uniformly grey at brightness 6 * i."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "0"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 6 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_video_frames_spread_over_a_short_clip_as_the_release(tmp_path):
    write_grey_video(tmp_path / "clip.mp4", num_frames=40)  # 1.6 s at 25 fps
    chunks = load_video(tmp_path / "clip.mp4", size=16, max_frames=8, backend="pyav")
    assert chunks.shape == (8, 3, 16, 16)
    brightness = ((chunks.mean((1, 2, 3)) + 1) / 2 * 255 / 6).round().int().tolist()
    assert brightness == plm_frame_indices(40, 25, 8)


def test_items_and_bad_markers_go_through_the_engine_collate(processor, tmp_path):
    from percli.core.data.loader import collate_skip_bad

    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    items = [processor({"text": "Fine."})]
    try:
        processor({"image": "broken.jpg", "conversations": chat("<image>?", "x")}, root=str(tmp_path))
    except BadSample as bad:  # what SeededSamples turns a BadSample into
        items.append({"_bad": {"path": bad.path, "reason": bad.reason}})
    out = collate_skip_bad(items, processor.collate)
    assert out["good"] == 1 and out["bad"][0]["reason"].startswith("unreadable_image:")
    assert out["batch"]["token_values"].shape == (1, 272)
