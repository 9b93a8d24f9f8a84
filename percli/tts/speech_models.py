"""The models `eval tts` scores with: a speech recogniser (WER/CER) and a speaker encoder (similarity).

Recognisers: pocketsphinx's English model (shipped in its wheel; the whole utterance decoded at 16 kHz
with its default language model, -60 dBFS of fixed-seed dither so digital silence does not break its
silence model) or a local Hugging Face ASR folder (Whisper, wav2vec2-CTC) through `transformers`.

Speaker encoders: the GE2E LSTM of Resemblyzer (Wan et al. 2018 as trained by Resemble AI: 40 mel bands
of 25 ms / 10 ms frames, 3 LSTM layers of 256, a linear layer + ReLU, L2-normalised; an utterance's
embedding is the normalised mean over 1.6 s partial windows 0.77 s apart), with the weights from the
`resemblyzer` package's ``pretrained.pt`` read with ``torch.load(weights_only=True)`` (only its
tensors; its Python code is not imported). Its voice-activity trimming (webrtcvad) is replaced by an
energy gate: 30 ms windows more than 40 dB below the loudest are dropped, keeping 180 ms around speech.
Or a local Hugging Face speaker-verification folder (e.g. microsoft/wavlm-base-plus-sv) through
`transformers` (its x-vector head's embeddings).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

RATE = 16000
_DITHER = 1e-3
# GE2E front end and partial windows (Resemblyzer's hyper-parameters).
_GE2E_MELS, _GE2E_WINDOW, _GE2E_HOP = 40, 400, 160
_GE2E_PARTIAL = 160  # frames (1.6 s)
_GE2E_PARTIAL_STEP = 77  # frames: 1.3 partials per second
_GE2E_MIN_COVERAGE = 0.75
_GE2E_TARGET_DBFS = -30.0
_GATE_WINDOW, _GATE_DB, _GATE_KEEP = 480, 40.0, 6  # 30 ms windows, threshold, windows kept around speech


class MissingModel(RuntimeError):
    """An optional model or package is unavailable; the message says what to install or pass."""


def _need_transformers(what: str):
    try:
        import transformers
    except ImportError as exc:
        raise MissingModel(f"{what} needs the transformers package: pip install transformers") from exc
    return transformers


def _hf_folder(path: str, key: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise MissingModel(f"{key}={path}: not a Hugging Face model folder (no config.json); pass a local folder "
                           "downloaded with `huggingface-cli download`")
    return folder


# --------------------------------------------------------------------------------------------
# Speech recognition


class PocketsphinxRecognizer:
    name = "pocketsphinx"

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise MissingModel("eval.asr=pocketsphinx needs pocketsphinx: pip install \"percli[tts]\" (its wheel "
                               "ships the English model)") from exc
        self.decoder = Decoder(samprate=RATE, loglevel="FATAL")

    def __call__(self, wav: np.ndarray) -> str:
        """Transcript of 16 kHz float audio."""
        wav = wav + _DITHER * np.random.default_rng(0).standard_normal(len(wav)).astype(np.float32)
        pcm = (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


class HuggingFaceRecognizer:
    """A local Whisper or CTC folder through transformers' ASR pipeline (long audio chunked by 30 s)."""

    def __init__(self, path: str, device: str):
        transformers = _need_transformers(f"eval.asr={path}")
        self.name = str(path)
        self.pipe = transformers.pipeline("automatic-speech-recognition", model=str(_hf_folder(path, "eval.asr")),
                                          device=device, chunk_length_s=30)

    def __call__(self, wav: np.ndarray) -> str:
        return self.pipe({"raw": wav, "sampling_rate": RATE})["text"]


def load_recognizer(asr: str, device: str):
    return PocketsphinxRecognizer() if asr == "pocketsphinx" else HuggingFaceRecognizer(asr, device)


# --------------------------------------------------------------------------------------------
# Speaker embeddings


class GE2EEncoder(nn.Module):
    """The GE2E speaker encoder: mel frames ``[B, T, 40]`` -> L2-normalised embeddings ``[B, 256]``."""

    def __init__(self, n_mels: int = _GE2E_MELS, hidden: int = 256, layers: int = 3, dim: int = 256):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # hidden: [layers, B, hidden]
        embeds = torch.relu(self.linear(hidden[-1]))
        return embeds / embeds.norm(dim=1, keepdim=True).clamp_min(1e-12)


def resemblyzer_weights() -> Path | None:
    """The installed resemblyzer package's pretrained.pt (found without importing the package), else None."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    return path if path.is_file() else None


def _energy_gate(wav: np.ndarray) -> np.ndarray:
    """Drop long silences: 30 ms windows > 40 dB under the loudest, except the 6 windows around speech."""
    n = len(wav) // _GATE_WINDOW
    if n < 2:
        return wav
    rms = np.sqrt((wav[: n * _GATE_WINDOW].reshape(n, _GATE_WINDOW) ** 2).mean(axis=1) + 1e-20)
    db = 20 * np.log10(rms)
    speech = db >= db.max() - _GATE_DB
    keep = np.array([speech[max(0, i - _GATE_KEEP): i + _GATE_KEEP + 1].any() for i in range(n)])
    return wav[: n * _GATE_WINDOW].reshape(n, _GATE_WINDOW)[keep].reshape(-1)


class GE2ESpeakerModel:
    def __init__(self, weights: Path, device: str):
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only, no code
            state = state.get("model_state", state)
            self.model = GE2EEncoder()
            # the GE2E loss's similarity scale and bias are training state, not part of the encoder
            self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})
        except (RuntimeError, AttributeError, EOFError, ValueError) as e:  # unpickling refused, wrong tensors
            raise MissingModel(f"eval.speaker_model={weights}: not GE2E speaker-encoder weights as Resemblyzer's "
                               f"pretrained.pt ({' '.join(str(e).split())[:200]}); pass that file or a Hugging Face "
                               "speaker-verification folder") from None
        self.model.eval().to(device)
        self.device = device
        self.name = f"ge2e:{weights}"

    @torch.no_grad()
    def embed(self, wav: np.ndarray) -> np.ndarray:
        import torchaudio

        wav = _energy_gate(wav.astype(np.float32))
        rms_db = 10 * np.log10(np.mean(wav**2) + 1e-20)
        if rms_db < _GE2E_TARGET_DBFS:  # raise quiet audio only, as the encoder was trained
            wav = wav * 10 ** ((_GE2E_TARGET_DBFS - rms_db) / 20)
        n_frames = len(wav) // _GE2E_HOP + 1
        starts = list(range(0, max(1, n_frames - _GE2E_PARTIAL + _GE2E_PARTIAL_STEP + 1), _GE2E_PARTIAL_STEP))
        if len(starts) > 1 and (len(wav) - starts[-1] * _GE2E_HOP) / (_GE2E_PARTIAL * _GE2E_HOP) < _GE2E_MIN_COVERAGE:
            starts.pop()  # the last window would be mostly padding
        wav = np.pad(wav, (0, max(0, (starts[-1] + _GE2E_PARTIAL) * _GE2E_HOP - len(wav))))
        to_mel = torchaudio.transforms.MelSpectrogram(RATE, n_fft=_GE2E_WINDOW, hop_length=_GE2E_HOP, n_mels=_GE2E_MELS,
                                                      norm="slaney", mel_scale="slaney", pad_mode="constant")
        mel = to_mel(torch.from_numpy(wav.astype(np.float32))).T.numpy()  # [frames, 40] power, as librosa's
        partials = torch.from_numpy(np.stack([mel[s: s + _GE2E_PARTIAL] for s in starts])).to(self.device)
        mean = self.model(partials).mean(dim=0)
        return (mean / mean.norm()).cpu().numpy()


class HuggingFaceSpeakerModel:
    """A local speaker-verification folder (x-vector head, e.g. WavLM-base-plus-sv) through transformers."""

    def __init__(self, path: str, device: str):
        transformers = _need_transformers(f"eval.speaker_model={path}")
        folder = _hf_folder(path, "eval.speaker_model")
        self.extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
        self.model = transformers.AutoModelForAudioXVector.from_pretrained(folder).eval().to(device)
        self.device = device
        self.name = str(path)

    @torch.no_grad()
    def embed(self, wav: np.ndarray) -> np.ndarray:
        inputs = self.extractor(wav, sampling_rate=RATE, return_tensors="pt").to(self.device)
        emb = self.model(**inputs).embeddings[0]
        return (emb / emb.norm()).cpu().numpy()


def load_speaker_model(spec: str, device: str):
    """``auto`` (Resemblyzer's weights if installed), a GE2E ``.pt`` file, or a Hugging Face folder.

    Raises:
        MissingModel: when no model is available; the message is the reason the summary reports.
    """
    if spec == "auto":
        weights = resemblyzer_weights()
        if weights is None:
            raise MissingModel("no speaker model: install the speaker extra (pip install \"percli[speaker]\", "
                               "Resemblyzer's GE2E weights) or pass eval.speaker_model=PATH (a GE2E .pt or a "
                               "Hugging Face speaker-verification folder)")
        return GE2ESpeakerModel(weights, device)
    path = Path(spec).expanduser()
    if path.is_file():
        return GE2ESpeakerModel(path, device)
    if not path.exists():
        raise MissingModel(f"eval.speaker_model={spec}: no such file or folder")
    return HuggingFaceSpeakerModel(spec, device)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
