"""VoiceCraft pretraining: a codec language model trained by token infilling on (audio, transcript) pairs.

Each utterance becomes phonemes (espeak-ng through phonemizer, official format) and frozen Encodec
codes; the model reads the phonemes, then the codes rearranged by causal masking and delayed
stacking with 1-3 random spans moved to the end, and predicts every rearranged token
(`percli.models.voicecraft`).

Official recipe (z_scripts/e830M.sh, GigaSpeech XL): 830M model, codebook weights (5, 1, 0.5, 0.1),
audio 2-20 s, text <= 400 phonemes, 50k steps, fp16, 4 GPUs; ScaledAdam (lr 0.05, betas 0.9/0.95, its own
clipping at 2x the median gradient norm of 1000 steps) with Eden (3000 steps, 4 epochs of 3000 steps, 1%
warmup); dynamic batches of up to 100k codec frames per GPU and step in 6 duration buckets, each cut into
26 accumulation micro-batches. These are the defaults here (bf16 instead of fp16; see the 830m preset).
The loss is the official token sum divided by the token count (ScaledAdam's steps do not depend on the
gradient's scale, so this matches the release's summed loss, up to the weighting of micro-batches).

Data: `data.source` is a JSONL manifest of {"audio": path, "text": transcript} lines (relative paths
resolve against the manifest's folder), or `embedded`: short English sentences synthesised with
espeak-ng (`percli.tts.corpus`). Codes are computed once into a cache file keyed by the codec weights
and the manifest; unreadable audio is counted and skipped. Without `model.codec_checkpoint` the codec
is a seeded random-init Encodec of the configured size whose codebooks are fitted by k-means on the
data (as audiocraft initialises them): the codes follow the audio, but the decoder is untrained, so
the decoded sample is not speech.

Finetuning: `model.checkpoint` (a release .pth such as giga830M.pth, a pyp1/VoiceCraft_* Hugging Face
folder, or a percli run / checkpoint dir / model.safetensors) builds the model from the checkpoint's
config and loads its weights strictly; its phoneme vocabulary becomes the run's (data phonemes outside
it are dropped and counted in the summary). Release weights need the released codec as
`model.codec_checkpoint`; a percli checkpoint without it uses the codec its run saved.

Run dir: `phn2num.json` (the phoneme vocabulary), `codec.safetensors` (the codec used, with its
config), checkpoints whose metadata hold the model config, phn2num and the codec's location, and
`samples/tts_sample.wav`: a held-out prompt continued by the trained model (top-k 40, seeded).

Examples:
  percli pretrain voicecraft                      # tiny model on the embedded corpus, a few CPU minutes
  percli pretrain voicecraft --preset 830m data.source=train.jsonl model.codec_checkpoint=encodec_4cb2048_giga.th
  percli pretrain voicecraft train.max_steps=50 data.source=my_speech.jsonl   # tiny model on your data
  percli pretrain voicecraft --preset 830m model.checkpoint=giga830M.pth data.source=my_speech.jsonl \
      model.codec_checkpoint=encodec_4cb2048_giga.th train.max_steps=2000 optim.name=adamw optim.lr=1e-5 \
      optim.warmup_fraction=0.1 train.grad_clip=1.0 data.max_tokens=20000 train.grad_accum_steps=12
      # finetune the released model with the release's finetuning optimizer and batches (e830M_ft.sh)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from accelerate import Accelerator
from rich.console import Console
from rich.progress import Progress
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.checkpoint import save_weights
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data import BadSample, load_audio
from percli.core.data.dynamic_batches import BucketBatchSampler
from percli.core.data.loader import mix_seed
from percli.core.data.paths import resolve_manifest_path
from percli.core.rundir import write_json_atomic
from percli.models import create_model, list_models
from percli.models.common import plain
from percli.models.hub import is_hub_spec, resolve_weights

PHN2NUM_FILE = "phn2num.json"
CODEC_FILE = "codec.safetensors"
SAMPLE_FILE = Path("samples") / "tts_sample.wav"


@dataclasses.dataclass
class VoiceCraftModelSection:
    name: str = "voicecraft_830m"
    """Registered VoiceCraft variant (`percli ls models`); codec and vocabulary sizes come from the data."""
    kwargs: dict = dataclasses.field(default_factory=dict)
    """Official constructor arguments overriding the variant's, e.g. {d_model: 64, num_decoder_layers: 2}."""
    codec: str = "encodec_16khz_4cb2048"
    codec_kwargs: dict = dataclasses.field(default_factory=dict)
    """Codec constructor arguments (a random-init codec's size, e.g. {n_filters: 8, bins: 64})."""
    codec_checkpoint: str | None = None
    """The frozen codec: the released encodec_4cb2048_giga.th or a percli codec .safetensors.
    Unset: a random-init codec seeded with `codec_seed` (codes without learned structure)."""
    codec_seed: int = 0
    checkpoint: str | None = None
    """Initial weights (finetuning): a release .pth (giga830M.pth, ...), a Hugging Face VoiceCraft folder
    or a percli run / checkpoint dir / model.safetensors. The model then comes from the checkpoint's
    config (`kwargs` may only repeat it) and the vocabulary from its phn2num."""
    grad_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (less memory, same gradients)."""


@dataclasses.dataclass
class SpeechDataSection:
    source: str = "embedded"
    """A .jsonl manifest of {"audio": path, "text": transcript}, or `embedded` (espeak-ng sentences)."""
    val_source: str | None = None
    """Held-out manifest; unset: the last `val_size` utterances of `source` are held out."""
    val_size: int = 8
    embedded_size: int = 200
    """Sentences in the embedded corpus (held-out ones included)."""
    audio_min_length: float = 2.0
    audio_max_length: float = 20.0
    """Utterances outside [min, max] seconds are left out (official: 2-20 s, longer ones dropped)."""
    text_max_length: int = 400
    """Utterances with more phonemes are left out (official: 400)."""
    max_tokens: int | None = 100000
    """Dynamic batches: codec frames per process and optimizer step, padding counted (utterances x the
    longest), cut into train.grad_accum_steps micro-batches (official max_num_tokens: 100000). null: fixed
    batches of train.batch_size utterances (train.batch_size always sizes the evaluation batches)."""
    num_buckets: int = 6
    """Dynamic batches: duration buckets; a batch holds utterances of one bucket (official: 6)."""
    phn2num: str | None = None
    """A JSON phoneme vocabulary {phoneme: id}; unset: built from the data (sorted)."""
    cache_dir: str | None = None
    """Where corpus audio and precomputed codes go; unset: `<run dir>/cache` (share it between runs)."""


@dataclasses.dataclass
class Config:
    model: VoiceCraftModelSection = dataclasses.field(default_factory=VoiceCraftModelSection)
    data: SpeechDataSection = dataclasses.field(default_factory=SpeechDataSection)
    sample_prompt_fraction: float = 0.5
    """The finishing sample continues this share of a held-out utterance's frames (0 = no sample)."""
    sample_top_k: int = 40
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        max_steps=50000, batch_size=16, grad_accum_steps=26, grad_clip=None, mixed_precision="bf16", seed=1))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        name="scaled_adam", lr=0.05, lr_scaling="none", betas=(0.9, 0.95), warmup_fraction=0.01, weight_decay=0.01,
        clipping_scale=2.0, clipping_update_period=1000, eden_lr_steps=3000, eden_lr_epochs=4, eden_epoch_steps=3000))


def validate(cfg: Config) -> None:
    """Checks a dry run can make without building anything: names, paths and lengths."""
    if cfg.model.name not in list_models() or not cfg.model.name.startswith("voicecraft"):
        raise ConfigError(f"model.name: {cfg.model.name!r} is not a VoiceCraft model; use voicecraft_830m or "
                          "voicecraft_330m (see `percli ls models`)")
    if cfg.model.codec not in list_models():
        raise ConfigError(f"model.codec: unknown codec {cfg.model.codec!r}; use encodec_16khz_4cb2048")
    paths = {"data.source": cfg.data.source, "data.val_source": cfg.data.val_source,
             "data.phn2num": cfg.data.phn2num, "model.codec_checkpoint": cfg.model.codec_checkpoint}
    for key, value in paths.items():
        if value and value != "embedded" and not is_hub_spec(value) and not Path(value).expanduser().is_file():
            raise ConfigError(f"{key}: {value} is not a file; give an existing path"
                              + (" or 'embedded'" if key == "data.source" else ""))
    if not 0 <= cfg.data.audio_min_length < cfg.data.audio_max_length:
        raise ConfigError("data.audio_min_length must be >= 0 and below data.audio_max_length")
    if cfg.data.max_tokens is not None and cfg.data.max_tokens < 1:
        raise ConfigError(f"data.max_tokens: got {cfg.data.max_tokens}; give codec frames per step (release: "
                          "100000) or null for fixed batches of train.batch_size")
    if cfg.data.num_buckets < 1:
        raise ConfigError(f"data.num_buckets: got {cfg.data.num_buckets}; expected an integer >= 1 (release: 6)")
    if not 0 <= cfg.sample_prompt_fraction < 1:
        raise ConfigError("sample_prompt_fraction must lie in [0, 1)")
    if cfg.model.checkpoint:
        validate_checkpoint(cfg.model)


def validate_checkpoint(model: VoiceCraftModelSection) -> None:
    """model.checkpoint exists, and release weights come with the released codec."""
    from percli.tts.inference import checkpoint_layout

    path = resolve_weights(model.checkpoint)  # a path, or an hf-hub: spec's file in the Hugging Face cache
    if not path.exists():
        raise ConfigError(f"model.checkpoint: {path} does not exist; give a release .pth (giga830M.pth), a Hugging "
                          "Face VoiceCraft folder or a percli run dir")
    if checkpoint_layout(path) != "percli" and not model.codec_checkpoint:
        raise ConfigError(f"model.checkpoint={path} holds release weights, which read the codes of the released "
                          "codec: pass model.codec_checkpoint=encodec_4cb2048_giga.th (from "
                          "https://huggingface.co/pyp1/VoiceCraft)")


# --------------------------------------------------------------------------- data


def build_codec(section: VoiceCraftModelSection) -> nn.Module:
    """The codec's architecture, seeded with `codec_seed`, with the checkpoint's weights when one is given.

    A percli codec .safetensors brings its own constructor arguments (`codec_kwargs` then do not apply)."""
    from percli.core.checkpoint import read_header
    from percli.models import check_checkpoint_fits, family_fit
    from percli.models.encodec import load_official_state

    weights = resolve_weights(section.codec_checkpoint)
    kwargs = section.codec_kwargs
    if weights is not None and weights.suffix == ".safetensors":
        tensors, meta = read_header(weights)
        kwargs = meta.get("config") or kwargs
        check_checkpoint_fits(lambda: create_model(section.codec, **kwargs), weights, tensors, family_fit)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(section.codec_seed)
        codec = create_model(section.codec, **kwargs)
    if weights is not None:
        try:
            load_official_state(codec, weights)
        except RuntimeError as e:
            raise ConfigError(f"model.codec_checkpoint={weights} does not fit model.codec_kwargs={kwargs} ({e}); "
                              "drop model.codec_kwargs (model.codec_kwargs={} for the released codec)") from None
    return codec.eval().requires_grad_(False)


@torch.no_grad()
def fit_codebooks(codec: nn.Module, waves: list[torch.Tensor], seed: int, iterations: int = 10) -> None:
    """Fill a random-init codec's codebooks by k-means on the latents of `waves`, stage after stage.

    audiocraft starts its codebooks the same way (k-means on the first batch); with the drawn entries
    instead, nearly every latent frame falls on one or two codes and the codes say nothing.
    """
    g = torch.Generator().manual_seed(seed)
    residual = torch.cat([codec.encoder(w[None])[0].T for w in waves])  # [1, 1, T] -> [D, T'] -> [N, D]
    for layer in codec.quantizer.vq.layers:
        book = layer._codebook
        bins = book.embed.shape[0]
        # more entries than frames: repeat frames, the k-means moves the copies apart or leaves them
        centers = residual[torch.randint(len(residual), (bins,), generator=g)].clone()  # [bins, D]
        for _ in range(iterations):
            assign = torch.cdist(residual, centers).argmin(dim=1)  # [N]
            counts = torch.bincount(assign, minlength=bins).float()
            sums = torch.zeros_like(centers).index_add_(0, assign, residual)
            used = counts > 0
            centers[used] = sums[used] / counts[used, None]
        book.embed.copy_(centers)
        book.embed_avg.copy_(centers)
        book.cluster_size.copy_(counts)
        residual = residual - book.decode(book.encode(residual))


def prepare_codec(section: VoiceCraftModelSection, run_dir: Path, manifest: Path) -> nn.Module:
    """The run's frozen codec, saved as `codec.safetensors` in the run dir (reused on resume)."""
    saved = run_dir / CODEC_FILE
    codec = build_codec(dataclasses.replace(section, codec_checkpoint=str(saved)) if saved.is_file() else section)
    if not saved.is_file() and not section.codec_checkpoint:
        waves = []
        for record in read_speech_manifest(manifest)[0][:64]:
            try:
                waves.append(load_audio(record["audio"], codec.sample_rate))
            except BadSample:
                continue
        if not waves:
            raise ValueError(f"{manifest}: no readable audio among its first 64 utterances to fit the codec on")
        fit_codebooks(codec, waves, section.codec_seed)
    save_weights(saved, codec.state_dict(), codec.checkpoint_meta())
    return codec


def _fingerprint(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def read_speech_manifest(path: Path) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Usable {"audio", "text"} records of a JSONL manifest (audio resolved) and the malformed lines."""
    from percli.core.data.shards import BadRecords, read_records

    bad = BadRecords(keep=10**9)  # all of them: the run's summary counts them
    records = []
    for line_no, record, text in read_records(path, "text", bad):
        audio = record.get("audio")
        if not isinstance(audio, str) or not audio:
            bad.add(path, line_no, "no 'audio' path")
            continue
        records.append({"audio": resolve_manifest_path(path.parent, audio), "text": text})
    return records, bad.examples


def encode_manifest(path: Path, codec: nn.Module, cache_dir: Path, device: torch.device) -> Path:
    """Phonemes and codec codes of every utterance of `path`, computed once into a safetensors file.

    The file is keyed by the manifest (path, size, mtime) and the codec's weights; tensor ``codes``
    [K, total frames] holds the utterances end to end (``offsets`` [n + 1]), the metadata the
    per-utterance phonemes, durations and, for unreadable audio, the reason.
    """
    from percli.tts.text import phonemize

    stat = path.stat()
    key = hashlib.sha256(json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns,
                                     _fingerprint(codec.state_dict())]).encode()).hexdigest()[:16]
    out = cache_dir / f"codes-{path.stem}-{key}.safetensors"
    if out.is_file():
        return out
    records, malformed = read_speech_manifest(path)
    if not records:
        raise ValueError(f"{path}: no usable {{\"audio\": ..., \"text\": ...}} lines ({len(malformed)} malformed)")
    codec = codec.to(device)
    chunks, offsets, items = [], [0], []
    with Progress(console=Console(stderr=True), transient=True) as bar:
        job = bar.add_task(f"codec codes for {path.name}", total=len(records))
        for record in records:
            item = {"audio": record["audio"], "text": record["text"]}
            try:
                wave = load_audio(record["audio"], codec.sample_rate)  # [1, T]
                with torch.no_grad():
                    codes = codec.encode(wave[None].to(device))[0].cpu()  # [1, 1, T] -> [K, T']
                item.update(phonemes=phonemize(record["text"]), seconds=wave.shape[1] / codec.sample_rate)
                chunks.append(codes.to(torch.int32))
            except BadSample as bad:
                item["bad"] = bad.reason
            offsets.append(offsets[-1] + (chunks[-1].shape[1] if "bad" not in item else 0))
            items.append(item)
            bar.advance(job)
    cache_dir.mkdir(parents=True, exist_ok=True)
    codes = torch.cat(chunks, dim=1) if chunks else torch.zeros(codec.quantizer.n_q, 0, dtype=torch.int32)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({"codes": codes, "offsets": torch.tensor(offsets)}, str(tmp),
              metadata={"items": json.dumps(items), "malformed": json.dumps(malformed)})
    tmp.replace(out)
    return out


class SpeechCodesDataset(Dataset):
    """Precomputed utterances: ``{"x": phoneme ids [L], "y": codes [K, T], "path", "index"}``; an
    utterance whose audio could not be read raises `BadSample` (the engine counts and skips it).
    Phonemes missing from ``phn2num`` (a given vocabulary) are dropped, as official."""

    def __init__(self, codes: torch.Tensor, items: list[dict[str, Any]], phn2num: dict[str, int]):
        from percli.tts.text import tokens_to_ids

        self.codes, self.items = codes, items
        self.ids = [tokens_to_ids(it.get("phonemes", []), phn2num, drop_unknown=True) for it in items]
        self.dropped = sum(len(it.get("phonemes", [])) - len(ids) for it, ids in zip(items, self.ids))
        """Phoneme tokens of the data left out for lack of an id."""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if "bad" in item:
            raise BadSample(item["audio"], item["bad"])
        y = self.codes[:, item["start"]: item["end"]].long()  # [K, T]
        return {"x": torch.tensor(self.ids[index], dtype=torch.long), "y": y, "path": item["audio"], "index": index}


@dataclasses.dataclass
class SpeechData:
    train: SpeechCodesDataset
    val: SpeechCodesDataset
    phn2num: dict[str, int]
    left_out: dict[str, int]  # manifest lines not used (malformed, outside the length limits), by reason


def _load_codes(path: Path, data: SpeechDataSection) -> tuple[torch.Tensor, list, dict[str, int]]:
    """Codes and the items within the length limits (unreadable ones kept: the engine reports them)."""
    with safe_open(str(path), framework="pt") as f:
        codes, offsets = f.get_tensor("codes"), f.get_tensor("offsets").tolist()
        meta = f.metadata()
    items = json.loads(meta["items"])
    kept = []
    left_out = {"malformed_lines": len(json.loads(meta["malformed"])), "too_short": 0, "too_long": 0,
                "too_many_phonemes": 0}
    for i, item in enumerate(items):
        item.update(start=offsets[i], end=offsets[i + 1])
        if "bad" not in item:
            seconds = item["seconds"]
            frames = item["end"] - item["start"]
            # the masking needs a few frames besides the 1-3 spans, whatever the limit says
            if seconds < data.audio_min_length or frames < 8:
                left_out["too_short"] += 1
                continue
            if seconds > data.audio_max_length:
                left_out["too_long"] += 1
                continue
            if len(item["phonemes"]) > data.text_max_length:
                left_out["too_many_phonemes"] += 1
                continue
        kept.append(item)
    return codes, kept, left_out


def prepare_speech_data(cfg: Config, run_dir: Path, accelerator: Accelerator,
                        initial: InitialModel | None = None) -> tuple[nn.Module, SpeechData]:
    """Manifests -> codec -> cached codes -> datasets and the phoneme vocabulary (`initial`'s if given).

    The main process builds the corpus, the codec and the code caches; the others then read them.
    """
    from percli.tts.corpus import build_corpus
    from percli.tts.inference import WeightsError, check_codec_fits

    data = cfg.data
    cache = Path(data.cache_dir).expanduser() if data.cache_dir else run_dir / "cache"
    names: list[Any] = [None]
    if accelerator.is_main_process:
        source = build_corpus(cache / "embedded_corpus", data.embedded_size) if data.source == "embedded" \
            else Path(data.source).expanduser()
        codec = prepare_codec(cfg.model, run_dir, source)
        if initial is not None:
            try:
                check_codec_fits(codec, initial.model.n_codebooks, initial.model.audio_vocab_size)
            except WeightsError as e:
                raise ConfigError(f"model.codec_checkpoint={cfg.model.codec_checkpoint} does not fit "
                                  f"model.checkpoint={cfg.model.checkpoint}: {e}") from None
        files = [encode_manifest(source, codec, cache, accelerator.device)]
        if data.val_source:
            files.append(encode_manifest(Path(data.val_source).expanduser(), codec, cache, accelerator.device))
        names = [[str(f) for f in files]]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(names, from_process=0)
        if not accelerator.is_main_process:
            codec = build_codec(dataclasses.replace(cfg.model, codec_checkpoint=str(run_dir / CODEC_FILE)))
    loaded = [_load_codes(Path(f), data) for f in names[0]]
    codes, items, left_out = loaded[0]
    if data.val_source:
        val_codes, val_items, _ = loaded[1]
    else:
        if len(items) <= data.val_size:
            raise ValueError(f"{data.source} has {len(items)} usable utterances, not more than data.val_size="
                             f"{data.val_size}; give more data, lower data.val_size or set data.val_source")
        val_codes, val_items, items = codes, items[len(items) - data.val_size:], items[: len(items) - data.val_size]
    phn2num = initial.phn2num if initial is not None else \
        phoneme_vocabulary(data, run_dir, [it for it in items + val_items if "bad" not in it])
    return codec, SpeechData(SpeechCodesDataset(codes, items, phn2num),
                             SpeechCodesDataset(val_codes, val_items, phn2num), phn2num, left_out)


def phoneme_vocabulary(data: SpeechDataSection, run_dir: Path, items: list[dict[str, Any]]) -> dict[str, int]:
    """The run's `phn2num`: the given file, the run dir's (on resume), or every phoneme of the data, sorted."""
    saved = run_dir / PHN2NUM_FILE
    if data.phn2num or saved.is_file():
        return {str(k): int(v) for k, v in json.loads(Path(data.phn2num or saved).expanduser().read_text()).items()}
    return {p: i for i, p in enumerate(sorted({p for it in items for p in it["phonemes"]}))}


@dataclasses.dataclass
class InitialModel:
    """`model.checkpoint` loaded: the model with its weights and the vocabulary it was trained with."""

    model: nn.Module
    phn2num: dict[str, int]


def load_initial_model(cfg: Config) -> tuple[InitialModel, Config]:
    """The model of `model.checkpoint` and the config with the codec it reads (a percli run's own codec
    when `model.codec_checkpoint` is unset)."""
    from percli.tts.inference import read_voicecraft_weights

    validate_checkpoint(cfg.model)
    path = resolve_weights(cfg.model.checkpoint)
    weights = read_voicecraft_weights(path)
    if cfg.data.phn2num:
        given = {str(k): int(v) for k, v in json.loads(Path(cfg.data.phn2num).expanduser().read_text()).items()}
        if given != weights.phn2num:
            raise ConfigError(f"data.phn2num={cfg.data.phn2num} differs from the phoneme vocabulary of "
                              f"model.checkpoint={path}; drop data.phn2num (the checkpoint's is used)")
    if not cfg.model.codec_checkpoint:
        if weights.codec_path is None:
            raise ConfigError(f"model.checkpoint={path} names no codec; pass model.codec_checkpoint (the codec it "
                              "was trained with)")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, codec_checkpoint=str(weights.codec_path)))
    model = weights.build(path)
    clash = {k: v for k, v in cfg.model.kwargs.items() if plain(v) != model.config.get(k, "(not an argument)")}
    if clash:
        raise ConfigError(f"model.kwargs {clash} contradict model.checkpoint={path}, whose config gives "
                          f"{ {k: model.config.get(k, '(not an argument)') for k in clash} }: the model is built "
                          "from the checkpoint; drop model.kwargs (model.kwargs={} or --preset none)")
    return InitialModel(model, weights.phn2num), cfg


# --------------------------------------------------------------------------- task


def model_kwargs(kwargs: dict[str, Any], codec: nn.Module, phn2num: dict[str, int]) -> dict[str, Any]:
    """Constructor arguments with the audio ids taken from the codec and the text ids from phn2num."""
    bins, n_q = codec.quantizer.bins, codec.quantizer.n_q
    out = dict(kwargs)
    text_vocab = out.setdefault("text_vocab_size", max(phn2num.values(), default=0) + 1)
    if text_vocab <= max(phn2num.values(), default=0):
        raise ConfigError(f"model.kwargs.text_vocab_size={text_vocab} is too small for the {len(phn2num)} phonemes; "
                          "raise it or leave it unset")
    out.update(n_codebooks=n_q, audio_vocab_size=bins, empty_token=bins, eog=bins + 1, audio_pad_token=bins + 2,
               eos=bins + 3, n_special=4, text_pad_token=text_vocab)
    return out


class VoiceCraftTask:
    def __init__(self, cfg: Config, codec: nn.Module, data: SpeechData, initial: nn.Module | None = None):
        self.cfg, self.codec, self.data, self.initial = cfg, codec, data, initial
        # with initial weights, every constructor argument (create_model(name, **kwargs) rebuilds it)
        self.kwargs = dict(initial.config) if initial is not None else \
            model_kwargs(cfg.model.kwargs, codec, data.phn2num)
        self.text_pad = self.kwargs["text_pad_token"]

    def build_model(self) -> nn.Module:
        # on --resume the engine then loads the run's own checkpoint over the initial weights
        model = self.initial if self.initial is not None else create_model(self.cfg.model.name, **self.kwargs)
        self.model_config = dict(model.config)  # every constructor argument, as official args
        return model

    def model_meta(self) -> dict[str, Any]:
        codec_meta = self.codec.checkpoint_meta()
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "voicecraft",
                "config": self.model_config,
                "phn2num": self.data.phn2num, "sample_rate": self.codec.sample_rate,
                "frame_rate": self.codec.frame_rate,
                # the codec in use, relative to the checkpoint dir (checkpoints/step_N -> the run dir)
                "codec": {"name": codec_meta["name"], "config": codec_meta["config"], "path": f"../../{CODEC_FILE}",
                          "source": self.cfg.model.codec_checkpoint or "random init, codebooks fitted by k-means"}}

    def train_dataset(self) -> Dataset:
        return self.data.train

    def batch_sampler(self, world_size: int, rank: int, seed: int, grad_accum_steps: int) -> BucketBatchSampler | None:
        """Dynamic batches of up to data.max_tokens codec frames per step (None: fixed batches)."""
        max_tokens = self.cfg.data.max_tokens
        if max_tokens is None:
            return None
        lengths = [it["end"] - it["start"] for it in self.data.train.items]
        longest = max(lengths)
        if max_tokens < longest * grad_accum_steps:
            raise ConfigError(f"data.max_tokens={max_tokens} holds {max_tokens // longest} of the longest utterances "
                              f"({longest} frames), but each step's batch is cut into train.grad_accum_steps="
                              f"{grad_accum_steps} micro-batches: raise data.max_tokens to at least "
                              f"{longest * grad_accum_steps} or lower train.grad_accum_steps")
        return BucketBatchSampler(lengths, max_tokens, num_buckets=self.cfg.data.num_buckets, world_size=world_size,
                                  rank=rank, seed=seed, micro_batches=grad_accum_steps)

    def eval_dataset(self) -> Dataset | None:
        return self.data.val

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Variable lengths: phonemes padded with text_pad_token, codes with zeros (cut by y_lens)."""
        x_lens = torch.tensor([len(s["x"]) for s in samples])
        y_lens = torch.tensor([s["y"].shape[1] for s in samples])
        x = torch.full((len(samples), int(x_lens.max())), self.text_pad, dtype=torch.long)
        y = torch.zeros(len(samples), samples[0]["y"].shape[0], int(y_lens.max()), dtype=torch.long)
        for i, s in enumerate(samples):
            x[i, : len(s["x"])] = s["x"]
            y[i, :, : s["y"].shape[1]] = s["y"]
        return {"x": x, "x_lens": x_lens, "y": y, "y_lens": y_lens, "path": [s["path"] for s in samples],
                "index": torch.tensor([s["index"] for s in samples])}

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # The masked spans come from torch's global RNG, which the engine reseeds at every step
        # from (seed, step, micro-batch, rank): a resumed run draws the same spans.
        out = model(batch["x"], batch["x_lens"], batch["y"], batch["y_lens"])
        ntoken = out["effective_ntoken"]
        return {"loss": out["loss"] / ntoken, "top10acc": out["top10acc"].detach() / ntoken}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        seed = mix_seed(*batch["index"].tolist())  # the same spans at every evaluation
        out = model(batch["x"], batch["x_lens"], batch["y"], batch["y_lens"], rng=random.Random(seed),
                    generator=torch.Generator().manual_seed(seed))
        return {"loss": float(out["loss"]), "top10acc": float(out["top10acc"]),
                "ntoken": float(out["effective_ntoken"])}

    def eval_reduce(self, totals: dict[str, float]) -> dict[str, float]:
        n = max(totals.get("ntoken", 0.0), 1.0)
        return {"loss": totals.get("loss", 0.0) / n, "top10acc": totals.get("top10acc", 0.0) / n}

    @torch.no_grad()
    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        """Continue the first readable held-out utterance from its first frames; decode to a WAV."""
        from percli.models.voicecraft_decoding import SILENCE_TOKENS
        from percli.tts.inference import write_audio_atomic

        if self.cfg.sample_prompt_fraction <= 0:
            return {}
        good = [i for i, it in enumerate(self.data.val.items) if "bad" not in it]
        if not good:
            return {}
        item = self.data.val[good[0]]
        device = accelerator.device
        codes = item["y"].to(device)
        prompt = codes[:, : max(1, round(codes.shape[1] * self.cfg.sample_prompt_fraction))]
        # the silence ids of the decoding heuristic belong to the released codec only
        silence = SILENCE_TOKENS if self.cfg.model.codec_checkpoint else ()
        model.eval()
        new = model.generate(item["x"].to(device), prompt, top_k=self.cfg.sample_top_k, silence_tokens=silence,
                             codec_rate=self.codec.frame_rate,
                             generator=torch.Generator(device).manual_seed(self.cfg.train.seed))
        codec = self.codec.to(device)
        # a barely trained model can still sample a special id (pad, empty) inside a frame; such ids
        # are counted in the summary and decoded as code 0 rather than failing the whole run
        special = new >= codec.quantizer.bins
        frames = torch.cat([prompt, new.masked_fill(special, 0)], dim=1)
        wave = codec.decode(frames[None])[0, 0].clamp(-1, 1).float().cpu().numpy()
        path = run_dir / SAMPLE_FILE
        write_audio_atomic(path, wave, codec.sample_rate)
        return {"sample": str(path), "sample_s": round(len(wave) / codec.sample_rate, 3),
                "sample_prompt_s": round(prompt.shape[1] / codec.frame_rate, 3),
                "sample_new_frames": int(new.shape[1]),
                "sample_special_ids": int(special.sum()), "sample_prompt_audio": item["path"],
                "sample_text": self.data.val.items[good[0]]["text"]}


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    run_dir, accelerator, resume = ctx.run_dir, ctx.accelerator, ctx.resume
    initial = None
    if cfg.model.checkpoint:
        initial, cfg = load_initial_model(cfg)
    codec, data = prepare_speech_data(cfg, run_dir, accelerator, initial)
    if accelerator.is_main_process:
        write_json_atomic(run_dir / PHN2NUM_FILE, data.phn2num)
    task = VoiceCraftTask(cfg, codec, data, initial.model if initial is not None else None)
    summary = engine.train(task, cfg.train, cfg.optim, run_dir, accelerator, resume=resume)
    summary.update(left_out=data.left_out, phonemes=len(data.phn2num),
                   dropped_phonemes=data.train.dropped + data.val.dropped,
                   initial_weights=cfg.model.checkpoint or "random init",
                   codec=f"weights from {cfg.model.codec_checkpoint}" if cfg.model.codec_checkpoint else
                   "untrained (random init, codebooks fitted by k-means): the codes follow the audio, but the "
                   "decoded sample is not speech")
    if accelerator.is_main_process:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary
