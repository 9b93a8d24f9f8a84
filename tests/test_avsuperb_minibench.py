"""The synthetic AV-SUPERB mini-benchmark: readable by every task reader, learnable, cached, deterministic."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest
from filelock import FileLock

from percli.avsuperb.minibench import ASR_LETTERS, make_minibench
from percli.avsuperb.tasks import TASKS, read_task

# (train, dev, test) clip counts and number of classes written for each task.
EXPECTED = {
    "as20k": ((48, None, 24), 6),
    "vggsound": ((48, None, 24), 4),
    "ks": ((48, 8, 24), 4),
    "ucf101": ((48, None, 24), 4),
    "iemocap": ((38, 10, 24), 4),
    "voxceleb": ((24, 12, 16), 6),
    "lrs3": ((48, 8, 16), 0),
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    # One build per test run, shared by the xdist workers (their base temps share this run's folder): the
    # lock serialises them and make_minibench's cache makes the second worker reuse the first one's files.
    run_folder = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_folder = run_folder.parent
    root = run_folder / "avsuperb_minibench"
    with FileLock(f"{root}.lock"):
        return make_minibench(root)


def _files(folder):
    return {p.relative_to(folder): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_task_is_written_and_readable(bench):
    assert set(bench) == set(TASKS)
    for name, folder in bench.items():
        out = read_task(name, folder)
        (train, dev, test), n_classes = EXPECTED[name]
        sizes = tuple(None if out[s] is None else len(out[s]) for s in ("train", "dev", "test"))
        assert sizes == (train, dev, test), name
        assert len(out["classes"]) == n_classes and out["bad"] == 0, name
        for split in ("train", "test"):
            sample = out[split][0]
            assert sample["audio"].shape[0] > 4000 and sample["video"].shape[1:] == (32, 32, 3), name
        if TASKS[name].kind in ("classification", "multilabel"):
            labels = out["train"].targets()
            flat = [c for t in labels for c in (t if isinstance(t, list) else [t])]
            assert set(flat) == set(range(n_classes)), name
        assert (out["test"][len(out["test"]) - 1] is not None) and not out["test"].bad


def test_speaker_trials_and_transcripts(bench):
    vox = read_task("voxceleb", bench["voxceleb"])
    ids = {clip.id for clip in vox["test"].clips}
    assert sum(same for *_, same in vox["trials"]) == 16 and len(vox["trials"]) == 32
    speaker = lambda clip_id: clip_id.split("/")[2]  # noqa: E731
    assert all((speaker(a) == speaker(b)) == same and a in ids and b in ids for a, b, same in vox["trials"])
    lrs3 = read_task("lrs3", bench["lrs3"])
    texts = lrs3["train"].targets()
    assert all(set(t) <= set(ASR_LETTERS + " ") and t.strip() == t for t in texts) and len(set(texts)) > 40


def _nearest_centroid_accuracy(train, test, features):
    x, y = np.stack([features(s) for s in train]), np.array([s["target"] for s in train])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    centroids = {c: ((x[y == c] - mu) / sd).mean(0) for c in set(y.tolist())}
    hits = [min(centroids, key=lambda c: np.sum(((features(s) - mu) / sd - centroids[c]) ** 2)) == s["target"]
            for s in test]
    return float(np.mean(hits))


def _audio_features(sample):
    wave = sample["audio"].numpy()
    frames = np.lib.stride_tricks.sliding_window_view(wave, 512)[::256] * np.hanning(512)  # [N, 512]
    bands = np.log1p(np.abs(np.fft.rfft(frames))[:, :256].reshape(len(frames), 32, 8).mean(-1))  # [N, 32]
    return np.concatenate([bands.mean(0), bands.std(0)])


def _video_features(sample):
    frames = sample["video"].float()  # [F, H, W, 3]
    bright = frames.max(-1).values > 100  # the moving square
    colour = (frames * bright[..., None]).sum((0, 1, 2)) / bright.sum().clamp(min=1)
    rows, cols = bright.float().mean(2), bright.float().mean(1)  # [F, H], [F, W]
    return np.concatenate([colour.numpy(), (rows[-1] - rows[0]).numpy(), (cols[-1] - cols[0]).numpy()])


@pytest.mark.parametrize(("task", "features"), [("ks", _audio_features), ("ks", _video_features),
                                                 ("iemocap", _audio_features)])
def test_labels_are_learnable_from_the_intended_modality(bench, task, features):
    out = read_task(task, bench[task], modalities=("audio",) if features is _audio_features else ("video",))
    assert _nearest_centroid_accuracy(list(out["train"]), list(out["test"]), features) >= 0.9


def test_cached_tasks_are_not_rewritten(bench):
    root = bench["as20k"].parent
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    started = time.perf_counter()
    assert make_minibench(root) == bench
    assert time.perf_counter() - started < 1.0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_incomplete_or_other_seed_task_is_rebuilt(tmp_path):
    folder = make_minibench(tmp_path, tasks=["ucf101"])["ucf101"]
    (folder / ".complete").unlink()
    (folder / "stray.txt").write_text("left by an interrupted run")
    make_minibench(tmp_path, tasks=["ucf101"])
    assert (folder / ".complete").is_file() and not (folder / "stray.txt").exists()
    marker = (folder / ".complete").stat().st_mtime_ns
    make_minibench(tmp_path, seed=1, tasks=["ucf101"])
    assert (folder / ".complete").stat().st_mtime_ns != marker


def test_generation_is_deterministic_for_a_seed(tmp_path):
    def digest(root, seed):
        folder = make_minibench(root, seed=seed, tasks=["ucf101"])["ucf101"]
        return {rel: hashlib.sha256(p.read_bytes()).hexdigest() for rel, p in _files(folder).items()
                if rel.name != ".complete"}

    first = digest(tmp_path / "a", 5)
    assert digest(tmp_path / "b", 5) == first
    other = digest(tmp_path / "c", 6)
    assert other.keys() == first.keys() and other != first


def test_unknown_task_is_refused(tmp_path):
    with pytest.raises(KeyError, match="unknown AV-SUPERB task"):
        make_minibench(tmp_path, tasks=["mnist"])
