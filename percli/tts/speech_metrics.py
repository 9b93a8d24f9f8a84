"""Speech-edit and TTS metrics as the VoiceCraft paper reports them: WER/CER, speaker similarity, MCD.

Text normalisation (before WER and CER): lower-case; curly apostrophes become "'"; every character
that is not a letter, a digit or an apostrophe inside a word becomes a space (so "well-known" is two
words and "don't" one); runs of spaces collapse. Numbers are NOT expanded: "3" stays "3", which an
ASR that writes "three" counts as an error, so write numbers as words in transcripts (pocketsphinx
always writes words).

WER = (substitutions + deletions + insertions) / reference words, from a word-level Levenshtein
alignment (`percli.core.metrics.edit_operations`); CER the same on the characters of the normalised
text (single spaces between words included). Corpus figures sum the errors and the reference
lengths over rows (not a mean of rows).

Mel-cepstral distortion (dB), defined here as: 16 kHz audio, 25 ms Hann frames every 5 ms
(n_fft 512, no centring), the power spectrum through 40 mel filters (Slaney mel scale and area
normalisation, 0-8 kHz), the natural log of the filter amplitudes L_k = 0.5 * ln(max(power_k,
1e-10)), and a DCT-II scaled by 2/M, c_d = 2/M * sum_k L_k cos(pi d (k + 1/2) / M) with M = 40 (the
cosine-series coefficients of the log mel amplitude: the scale of SPTK's mel-cepstrum, so values
are of the usual magnitude; an orthonormal DCT would make them sqrt(M/2) = 4.5 times larger).
c_0 (energy) is dropped and c_1..c_24 compared:
``MCD = 10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)`` per frame pair, averaged over the frame pairs
whose reference frame is speech (mean band level within 40 dB of the reference's loudest frame:
silence frames of espeak or of a codec would otherwise dominate). Frame pairs come either 1:1
(unedited regions of an edit, which keep their timing) or from a DTW path over the cepstra
(syntheses).
"""

from __future__ import annotations

import math
import re

import numpy as np

from percli.core.metrics import ErrorCounts, edit_operations

MCD_RATE = 16000
MCD_WINDOW = 400  # 25 ms
MCD_HOP = 80  # 5 ms
MCD_FFT = 512
MCD_MELS = 40
MCD_ORDER = 24  # c_1..c_24 compared
MCD_SPEECH_DB = 40.0  # frames more than this below the loudest reference frame are silence
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


# --------------------------------------------------------------------------------------------
# WER / CER


def normalize_text(text: str) -> list[str]:
    """Lower-cased words without punctuation (see the module doc); numbers are kept as written."""
    text = text.lower().replace("’", "'").replace("‘", "'")
    text = re.sub(r"[^\w']|_", " ", text)  # keep letters, digits and apostrophes
    return [w for w in (token.strip("'") for token in text.split()) if w]


def word_errors(reference: str, hypothesis: str) -> ErrorCounts:
    return edit_operations(normalize_text(reference), normalize_text(hypothesis))


def char_errors(reference: str, hypothesis: str) -> ErrorCounts:
    return edit_operations(list(" ".join(normalize_text(reference))), list(" ".join(normalize_text(hypothesis))))


# --------------------------------------------------------------------------------------------
# Mel-cepstral distortion


def mel_cepstrum(wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mel cepstra c_1..c_24 ``[frames, 24]`` and each frame's mean mel-band level in dB ``[frames]`` (16 kHz audio)."""
    import torch
    import torchaudio

    wave = torch.from_numpy(np.asarray(wav, dtype=np.float32))
    if len(wave) < MCD_WINDOW:
        wave = torch.nn.functional.pad(wave, (0, MCD_WINDOW - len(wave)))
    spec = torch.stft(wave.double(), MCD_FFT, MCD_HOP, MCD_WINDOW, torch.hann_window(MCD_WINDOW, dtype=torch.float64),
                      center=False, return_complex=True)
    power = spec.abs() ** 2  # [freqs, frames]
    filters = torchaudio.functional.melscale_fbanks(MCD_FFT // 2 + 1, 0.0, MCD_RATE / 2, MCD_MELS, MCD_RATE,
                                                    norm="slaney", mel_scale="slaney").double()  # [freqs, mels]
    log_amplitude = 0.5 * torch.log((power.T @ filters).clamp_min(1e-10))  # [frames, mels]
    # DCT-II scaled by 2/M: c_d is the coefficient of cos(pi d (k + 1/2) / M) in the log amplitude of band k, the
    # scale of SPTK's mel-cepstrum (an orthonormal DCT would make every MCD sqrt(M/2) = 4.5 times larger)
    dct = torchaudio.functional.create_dct(MCD_ORDER + 1, MCD_MELS, norm=None).double() / MCD_MELS  # [mels, 25]
    cepstra = (log_amplitude @ dct).numpy()  # [frames, 25]
    frame_db = 20.0 / math.log(10.0) * log_amplitude.mean(dim=1).numpy()  # mean band level, dB
    return cepstra[:, 1:], frame_db


def frame_mcd(c_a: np.ndarray, c_b: np.ndarray) -> np.ndarray:
    """MCD (dB) of paired frames ``[N, D]`` x ``[N, D]`` -> ``[N]``."""
    return _MCD_SCALE * np.sqrt(((c_a - c_b) ** 2).sum(axis=1))


def loudest_frame_db(reference: np.ndarray) -> float:
    """The loudest frame of a signal (mean mel-band level, dB): the speech threshold is MCD_SPEECH_DB below it."""
    return float(mel_cepstrum(reference)[1].max())


def aligned_mcd(generated: np.ndarray, reference: np.ndarray, loudest_db: float | None = None) -> tuple[float, int]:
    """Sum of frame MCDs of two equally timed signals paired 1:1 (speech frames of the reference), and their count.

    Sums (not means) so that several regions add up; the shorter signal sets the number of frames.
    ``loudest_db``: the loudest frame of the whole reference when this is a region of it (default: of this one).
    """
    c_gen, _ = mel_cepstrum(generated)
    c_ref, db = mel_cepstrum(reference)
    n = min(len(c_gen), len(c_ref))
    db = db[:n]
    loudest = loudest_db if loudest_db is not None else (db.max() if n else 0.0)
    keep = db >= loudest - MCD_SPEECH_DB
    return float(frame_mcd(c_gen[:n][keep], c_ref[:n][keep]).sum()), int(keep.sum())


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-cost monotonic path (steps (1,0), (0,1), (1,1)) through ``cost [N, M]`` from (0,0) to (N-1,M-1).

    Filled one anti-diagonal at a time (each is a vectorised step), then backtracked.
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for d in range(2, n + m + 1):  # cells (i, j) with i + j = d, 1-based
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        acc[i, j] = cost[i - 1, j - 1] + np.minimum(np.minimum(acc[i - 1, j], acc[i, j - 1]), acc[i - 1, j - 1])
    path_i, path_j = [n - 1], [m - 1]
    i, j = n, m
    while (i, j) != (1, 1):
        steps = ((i - 1, j - 1), (i - 1, j), (i, j - 1))
        i, j = min(steps, key=lambda s: acc[s])
        path_i.append(i - 1)
        path_j.append(j - 1)
    return np.array(path_i[::-1]), np.array(path_j[::-1])


def dtw_mcd(generated: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """Mean frame MCD along the DTW path between the two signals' cepstra (speech frames of the reference), and the
    number of frame pairs averaged."""
    c_gen, _ = mel_cepstrum(generated)
    c_ref, db = mel_cepstrum(reference)
    cost = np.sqrt(((c_gen[:, None, :] - c_ref[None, :, :]) ** 2).sum(axis=2))  # [N, M]
    i, j = dtw_path(cost)
    keep = (db >= db.max() - MCD_SPEECH_DB)[j]
    values = _MCD_SCALE * cost[i[keep], j[keep]]
    return float(values.mean()) if len(values) else float("nan"), int(keep.sum())


def unedited_regions(generated_s: float, reference_s: float, edits: list[tuple[float, float]]
                     ) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Unedited stretches of an edit as ((start, end) in the generated, (start, end) in the reference), seconds.

    An edit changes the length only inside its spans: the audio before the first span has the same timing in both
    (aligned at the start), the audio after the last span is aligned at the end. The stretches between two spans
    are left out (where they sit in the reference is not known from spans in the generated audio alone).
    Empty stretches are dropped.
    """
    first = min(s for s, _ in edits)
    last = max(e for _, e in edits)
    regions = []
    head = min(first, reference_s)
    if head > 0:
        regions.append(((0.0, head), (0.0, head)))
    tail = min(generated_s - last, reference_s - head)  # never reuse reference audio already paired with the head
    if tail > 0:
        regions.append(((generated_s - tail, generated_s), (reference_s - tail, reference_s)))
    return regions


def edit_mcd(generated: np.ndarray, reference: np.ndarray, edits: list[tuple[float, float]]
             ) -> tuple[float, int]:
    """Mean frame MCD of the unedited regions (:func:`unedited_regions`) paired 1:1, and the frames averaged."""
    total, frames, loudest = 0.0, 0, loudest_frame_db(reference)
    for (gs, ge), (rs, re_) in unedited_regions(len(generated) / MCD_RATE, len(reference) / MCD_RATE, edits):
        g = generated[round(gs * MCD_RATE): round(ge * MCD_RATE)]
        r = reference[round(rs * MCD_RATE): round(re_ * MCD_RATE)]
        n = min(len(g), len(r))
        region_total, region_frames = aligned_mcd(g[:n], r[:n], loudest)
        total, frames = total + region_total, frames + region_frames
    return (total / frames if frames else float("nan")), frames
