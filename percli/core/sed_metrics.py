"""Sound event detection scored against strong labels, with sed_eval's definitions (Mesaros, Heittola and
Virtanen, "Metrics for polyphonic sound event detection", 2016; the DCASE conventions).

Events are :class:`~percli.core.data.caption_manifest.Event` ``(file, onset, offset, label)`` in seconds.
Files are scored one by one and the counts summed; a file with estimated events but no reference event
is scored as a clip without events (its detections are false positives). ``labels`` picks the classes
scored; events of other labels are left out on both sides. All rates are fractions, not percent.

- Segment-based (:func:`segment_metrics`): a file is cut into segments of ``resolution_s`` (1 s); a class
  is active in a segment when one of its events overlaps it (segments ``floor(onset / r)`` to
  ``ceil(offset / r) - 1``, sed_eval's event roll). Counts over all (segment, class) pairs give the micro
  precision / recall / F1; per segment, with N_ref and N_sys active classes of which N_tp agree,
  S = min(N_ref, N_sys) - N_tp, D = max(0, N_ref - N_sys), I = max(0, N_sys - N_ref), and the error rate
  is ER = (sum S + sum D + sum I) / sum N_ref.
- Event-based (:func:`event_metrics`): an estimated event is correct for a reference event of the same
  label when the onsets differ by at most ``collar_s`` (0.2 s) and, unless ``evaluate_offset=False``, the
  offsets by at most max(``collar_s``, ``offset_fraction`` * reference length) (DCASE: 0.2 of the
  length; sed_eval's default is 0.5). Each event counts once: per file and class the correct pairs are
  matched by a maximum bipartite matching (augmenting paths over reference and estimated events in
  onset order), which is sed_eval's default ``event_matching_type='optimal'`` and can only find more
  true positives than greedy first-fit. Substitutions (for the ER) then pair the unmatched reference and
  estimated events of different labels whose times fit, greedily in onset order as sed_eval does;
  D = N_ref - N_tp - S and I = N_sys - N_tp - S.
- Micro scores pool the counts of all classes; the macro F1 is the mean of the class-wise F1 over the
  classes with a reference (segment or event); a class without any is undefined and left out, as
  sed_eval's nan-mean does. Precision with nothing estimated is 0, so an empty system output scores
  F1 0 (sed_eval's ``empty_system_output_handling='zero_score'``).
- Frame-level AUROC (:func:`frame_auroc`): per-file probability tracks [frames, classes] with frame i
  covering [i * hop, (i + 1) * hop); its target is the event roll at resolution ``hop_s``.
- Thresholding (:func:`spans_from_probs`, :func:`events_from_probs`): PE-A-Frame's rule.

Times within 1e-9 s of a collar or a segment boundary count as on it: sed_eval compares the raw floats,
so there |2.7 - 2.5| = 0.20000000000000018 misses a 0.2 s collar; here it is inside.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from percli.core.data.caption_manifest import Event
from percli.core.metrics import roc_auc

SLACK = 1e-9  # seconds (and segment units) of floating-point slack at collar and segment edges


def _scored_labels(reference: Sequence[Event], estimated: Sequence[Event], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return sorted({e.label for e in reference} | {e.label for e in estimated})
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {list(labels)}")
    return list(labels)


def _events_by_file(events: Sequence[Event], labels: Sequence[str]) -> dict[str, list[Event]]:
    """The events of the scored labels, file -> events sorted by onset (then offset, label)."""
    scored = set(labels)
    by_file: dict[str, list[Event]] = {}
    for event in events:
        if event.label in scored:
            by_file.setdefault(event.file, []).append(event)
    return {file: sorted(found, key=lambda e: (e.onset, e.offset, e.label)) for file, found in by_file.items()}


def event_roll(events: Sequence[Event], labels: Sequence[str], resolution_s: float,
               num_frames: int | None = None) -> torch.Tensor:
    """Bool [num_frames, len(labels)] activity of one file's events at `resolution_s`.

    Frame i spans [i * r, (i + 1) * r); it is active for a class when an event of the class overlaps it
    (frames ``floor(onset / r)`` to ``ceil(offset / r) - 1``). ``num_frames`` None: just long enough for
    every event; otherwise events are cut at the end. Events of other labels are ignored.
    """
    if not resolution_s > 0:
        raise ValueError(f"resolution_s must be > 0 seconds, got {resolution_s}")
    column = {label: c for c, label in enumerate(labels)}
    spans = [(column[e.label], math.floor(e.onset / resolution_s + SLACK),
              max(math.ceil(e.offset / resolution_s - SLACK), math.floor(e.onset / resolution_s + SLACK)))
             for e in events if e.label in column]
    if num_frames is None:
        num_frames = max((end for _, _, end in spans), default=0)
    roll = torch.zeros(num_frames, len(labels), dtype=torch.bool)
    for c, start, end in spans:
        roll[start:end, c] = True
    return roll


def _pad_frames(roll: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`roll` [T, C] extended with inactive frames to at least `num_frames`."""
    missing = num_frames - len(roll)
    return roll if missing <= 0 else torch.cat([roll, roll.new_zeros(missing, roll.shape[1])])


def _scores(tp: torch.Tensor, n_ref: torch.Tensor, n_sys: torch.Tensor, substitutions: int, deletions: int,
            insertions: int) -> dict[str, float]:
    """Micro/macro F1 and error rates from per-class counts [C] (true positives, references, estimates)."""
    total_ref, total_sys, total_tp = int(n_ref.sum()), int(n_sys.sum()), int(tp.sum())
    if total_ref == 0:
        raise ValueError("no reference event of the scored labels: precision, recall and error rate are undefined; "
                         "check that the labels and file names of the estimates match the reference")
    precision = total_tp / total_sys if total_sys else 0.0
    recall = total_tp / total_ref
    class_precision = torch.where(n_sys > 0, tp / n_sys.clamp(min=1), torch.zeros_like(tp))
    class_recall = tp / n_ref.clamp(min=1)
    both = class_precision + class_recall
    class_f1 = torch.where(both > 0, 2 * class_precision * class_recall / both.clamp(min=1e-12), torch.zeros_like(tp))
    return {
        "f1_micro": _f1(precision, recall), "precision_micro": precision, "recall_micro": recall,
        "f1_macro": float(class_f1[n_ref > 0].mean()),
        "error_rate": (substitutions + deletions + insertions) / total_ref,
        "substitution_rate": substitutions / total_ref, "deletion_rate": deletions / total_ref,
        "insertion_rate": insertions / total_ref,
        "reference_count": float(total_ref), "estimated_count": float(total_sys),
    }


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def segment_metrics(reference: Sequence[Event], estimated: Sequence[Event], labels: Sequence[str] | None = None,
                    resolution_s: float = 1.0) -> dict[str, float]:
    """Segment-based micro/macro F1 and error rate (definitions in the module docstring).

    Args:
        reference, estimated: Events of any number of files.
        labels: Classes scored; None = every label of either side.
        resolution_s: Segment length in seconds.

    Returns:
        ``f1_micro``, ``precision_micro``, ``recall_micro``, ``f1_macro``, ``error_rate`` and its
        ``substitution_rate`` / ``deletion_rate`` / ``insertion_rate``, and the active (segment, class)
        counts ``reference_count`` / ``estimated_count``.
    """
    labels = _scored_labels(reference, estimated, labels)
    ref_files, est_files = _events_by_file(reference, labels), _events_by_file(estimated, labels)
    tp, n_ref, n_sys = (torch.zeros(len(labels), dtype=torch.float64) for _ in range(3))
    substitutions = deletions = insertions = 0
    for file in dict.fromkeys([*ref_files, *est_files]):
        ref = event_roll(ref_files.get(file, []), labels, resolution_s)  # [T_ref, C]
        est = event_roll(est_files.get(file, []), labels, resolution_s)  # [T_est, C]
        ref, est = _pad_frames(ref, len(est)), _pad_frames(est, len(ref))  # both [T, C]
        both = ref & est
        tp += both.sum(0)
        n_ref += ref.sum(0)
        n_sys += est.sum(0)
        seg_ref, seg_sys, seg_tp = ref.sum(1), est.sum(1), both.sum(1)  # [T] per segment
        substitutions += int((torch.minimum(seg_ref, seg_sys) - seg_tp).sum())
        deletions += int((seg_ref - seg_sys).clamp(min=0).sum())
        insertions += int((seg_sys - seg_ref).clamp(min=0).sum())
    return _scores(tp, n_ref, n_sys, substitutions, deletions, insertions)


def _times_fit(ref: Event, est: Event, collar_s: float, offset_fraction: float, evaluate_offset: bool) -> bool:
    """sed_eval's onset (and offset) condition, labels aside."""
    if abs(ref.onset - est.onset) > collar_s + SLACK:
        return False
    offset_collar = max(collar_s, offset_fraction * (ref.offset - ref.onset))
    return not evaluate_offset or abs(ref.offset - est.offset) <= offset_collar + SLACK


def _max_matching(candidates: list[list[int]], num_estimated: int) -> list[int]:
    """Maximum bipartite matching by augmenting paths (Kuhn): `candidates[j]` = estimates that fit reference j.

    Returns, per estimate, the reference it is matched to or -1. Recursion depth <= references of one
    class in one file.
    """
    owner = [-1] * num_estimated

    def augment(j: int, seen: set[int]) -> bool:
        for i in candidates[j]:
            if i not in seen:
                seen.add(i)
                if owner[i] < 0 or augment(owner[i], seen):
                    owner[i] = j
                    return True
        return False

    for j in range(len(candidates)):
        augment(j, set())
    return owner


def event_metrics(reference: Sequence[Event], estimated: Sequence[Event], labels: Sequence[str] | None = None,
                  collar_s: float = 0.2, offset_fraction: float = 0.2,
                  evaluate_offset: bool = True) -> dict[str, float]:
    """Event-based micro/macro F1 and error rate (definitions and matching in the module docstring).

    Args:
        reference, estimated: Events of any number of files.
        labels: Classes scored; None = every label of either side.
        collar_s: Onset collar (and the least offset collar) in seconds.
        offset_fraction: Offset collar as a fraction of the reference event's length, when larger.
        evaluate_offset: False scores onsets only.

    Returns:
        The keys of :func:`segment_metrics`, counting events.
    """
    if collar_s < 0 or offset_fraction < 0:
        raise ValueError(f"collar_s and offset_fraction must be >= 0, got {collar_s} and {offset_fraction}")
    labels = _scored_labels(reference, estimated, labels)
    column = {label: c for c, label in enumerate(labels)}
    ref_files, est_files = _events_by_file(reference, labels), _events_by_file(estimated, labels)
    tp, n_ref, n_sys = (torch.zeros(len(labels), dtype=torch.float64) for _ in range(3))
    substitutions = 0
    for file in dict.fromkeys([*ref_files, *est_files]):
        refs, ests = ref_files.get(file, []), est_files.get(file, [])
        fits = [[_times_fit(r, e, collar_s, offset_fraction, evaluate_offset) for e in ests] for r in refs]
        ref_matched, est_matched = [False] * len(refs), [False] * len(ests)
        for label in {e.label for e in refs} & {e.label for e in ests}:
            ref_ids = [j for j, r in enumerate(refs) if r.label == label]
            est_ids = [i for i, e in enumerate(ests) if e.label == label]
            candidates = [[k for k, i in enumerate(est_ids) if fits[j][i]] for j in ref_ids]
            for k, owner in enumerate(_max_matching(candidates, len(est_ids))):
                if owner >= 0:
                    ref_matched[ref_ids[owner]] = est_matched[est_ids[k]] = True
                    tp[column[label]] += 1
        for r in refs:
            n_ref[column[r.label]] += 1
        for e in ests:
            n_sys[column[e.label]] += 1
        substituted = [False] * len(ests)
        for j in (j for j in range(len(refs)) if not ref_matched[j]):
            i = next((i for i in range(len(ests)) if not est_matched[i] and not substituted[i] and fits[j][i]), None)
            if i is not None:
                substituted[i] = True
                substitutions += 1
    total_tp = int(tp.sum())
    deletions = int(n_ref.sum()) - total_tp - substitutions
    insertions = int(n_sys.sum()) - total_tp - substitutions
    return _scores(tp, n_ref, n_sys, substitutions, deletions, insertions)


def spans_from_probs(probs: torch.Tensor, threshold: float, hop_s: float, min_duration_s: float = 0.0,
                     merge_gap_s: float = 0.0) -> list[tuple[float, float]]:
    """Runs of frames with probability > `threshold` as (start_s, end_s) spans, end exclusive.

    PE-A-Frame's rule: ``preds = probs > threshold``; spans start where the zero-padded boolean turns on
    and end at the index after their last frame; times = frame index * `hop_s`. Then, both off by
    default: spans separated by at most `merge_gap_s` seconds are joined, and spans shorter than
    `min_duration_s` dropped (merging first, so a short burst next to a long one survives as part of it).

    Args:
        probs: [frames] probabilities of one class in one clip.
        threshold: Decision threshold (strictly above is active).
        hop_s: Seconds between frame starts (PE-A-Frame: hop_length / sampling_rate).
    """
    if probs.dim() != 1:
        raise ValueError(f"probs must be one class track [frames], got shape {tuple(probs.shape)}")
    if not hop_s > 0:
        raise ValueError(f"hop_s must be > 0 seconds, got {hop_s}")
    if torch.isnan(probs).any():
        raise ValueError("probs hold NaN: a NaN frame is neither above nor below the threshold")
    active = F.pad((probs > threshold).to(torch.int8), (1, 1))
    changes = torch.diff(active).nonzero().flatten().tolist()  # on at even entries, off at odd ones
    spans: list[list[float]] = []
    for start, end in zip(changes[::2], changes[1::2]):
        if merge_gap_s > 0 and spans and start * hop_s - spans[-1][1] <= merge_gap_s + SLACK:
            spans[-1][1] = end * hop_s
        else:
            spans.append([start * hop_s, end * hop_s])
    return [(start, end) for start, end in spans if end - start >= min_duration_s - SLACK]


def events_from_probs(file: str, probs: torch.Tensor, labels: Sequence[str], threshold: float, hop_s: float,
                      min_duration_s: float = 0.0, merge_gap_s: float = 0.0) -> list[Event]:
    """The events of one file from its probability tracks [frames, len(labels)], by :func:`spans_from_probs`,
    sorted by onset."""
    if probs.dim() != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probs of {file!r} must be [frames, {len(labels)} labels], got shape {tuple(probs.shape)}")
    events = [Event(file, start, end, label) for c, label in enumerate(labels)
              for start, end in spans_from_probs(probs[:, c], threshold, hop_s, min_duration_s, merge_gap_s)]
    return sorted(events, key=lambda e: (e.onset, e.offset, e.label))


def frame_auroc(probs: Mapping[str, torch.Tensor], reference: Sequence[Event], labels: Sequence[str],
                hop_s: float) -> dict[str, float]:
    """Frame-level ROC AUC of probability tracks against the reference events' frame targets.

    Args:
        probs: File -> [frames, len(labels)] probabilities (or logits: only the order matters); every
            file with a reference event of a scored label needs a track, and files without any score
            their frames as negatives.
        reference: Reference events; events of other labels are ignored, the parts after a track ends cut.
        labels: Class of each track column.
        hop_s: Seconds between frame starts.

    Returns:
        ``auroc``: mean over the classes with both positive and negative frames; ``auroc/<label>`` for
        each of those classes; ``classes_scored`` and ``frames`` (pooled over files).
    """
    labels = _scored_labels(reference, [], labels)
    ref_files = _events_by_file(reference, labels)
    missing = [file for file in ref_files if file not in probs]
    if missing:
        raise ValueError(f"no probability track for {len(missing)} file(s) with reference events, e.g. "
                         f"{missing[0]!r}: score every reference file (file names must match the labels')")
    scores, targets = [], []
    for file, track in probs.items():
        if track.dim() != 2 or track.shape[1] != len(labels):
            raise ValueError(f"probs of {file!r} must be [frames, {len(labels)} labels], got {tuple(track.shape)}")
        if torch.isnan(track).any():
            raise ValueError(f"probs of {file!r} hold NaN: check the model's outputs for that file")
        scores.append(track.detach().double().cpu())
        targets.append(event_roll(ref_files.get(file, []), labels, hop_s, num_frames=track.shape[0]))
    if not scores:
        raise ValueError("frame_auroc needs at least one probability track")
    auc = roc_auc(torch.cat(scores), torch.cat(targets))  # [C], NaN where a class lacks positives or negatives
    scored = [(label, float(value)) for label, value in zip(labels, auc) if not math.isnan(value)]
    if not scored:
        raise ValueError("no class has both positive and negative frames: AUROC is undefined")
    return {"auroc": sum(v for _, v in scored) / len(scored), **{f"auroc/{label}": v for label, v in scored},
            "classes_scored": float(len(scored)), "frames": float(sum(len(s) for s in scores))}
