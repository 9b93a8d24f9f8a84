"""Embedded MoCap mesh sequences for action recognition (STMT's input shape): articulated figures animated with one
motion per class, rendered as surface points with their geodesic distances. No download, made on a CPU.

Origin: written for percli (not derived from any published dataset). Sequence ``index`` of a split is a pure
function of ``(seed, split, index)`` and the sizes: a 15-joint figure (pelvis, spine, neck, head, shoulders,
elbows, hands, hips, knees, feet) of random proportions performs ``CLASSES[index % 8]`` (walk, run, jump, wave,
squat, kick, clap, turn) with random speed, phase, amplitude, heading and position. Its surface is ``points``
samples on capsules around the bones (spread in proportion to bone length, at fixed angles and heights along each
bone), so vertex ``i`` is the same body spot in every frame, as a registered MoCap mesh's vertices are.

Geodesic distances: shortest paths on the figure's surface graph in its rest pose (each sample joined to its
neighbours on its bone and, at a joint, to the samples of the bones meeting there), by Dijkstra (SciPy), exact
for that graph. Bending at a joint hardly changes distances along the surface, so the one [N, N] matrix serves
every frame (the official pipeline recomputes it per frame on the decimated mesh).

Frames are normalised as the official loader does: centred on the sequence's bounding-box centre and divided by
its vertical extent. Items: ``{"points": float32 [T, N, 3], "geodist": float32 [T, N, N], "label": int}``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path
from torch.utils.data import Dataset

CLASSES: tuple[str, ...] = ("walk", "run", "jump", "wave", "squat", "kick", "clap", "turn")
_SPLITS = {"train": 0, "val": 1}
_FPS = 12.0
# joint: (parent, rest offset from the parent in body units: x right, y up, z forward)
_JOINTS: dict[str, tuple[str | None, tuple[float, float, float]]] = {
    "pelvis": (None, (0.0, 1.0, 0.0)), "spine": ("pelvis", (0.0, 0.3, 0.0)), "neck": ("spine", (0.0, 0.3, 0.0)),
    "head": ("neck", (0.0, 0.2, 0.0)),
    "l_shoulder": ("neck", (-0.2, -0.05, 0.0)), "l_elbow": ("l_shoulder", (0.0, -0.28, 0.0)),
    "l_hand": ("l_elbow", (0.0, -0.26, 0.0)),
    "r_shoulder": ("neck", (0.2, -0.05, 0.0)), "r_elbow": ("r_shoulder", (0.0, -0.28, 0.0)),
    "r_hand": ("r_elbow", (0.0, -0.26, 0.0)),
    "l_hip": ("pelvis", (-0.1, -0.05, 0.0)), "l_knee": ("l_hip", (0.0, -0.45, 0.0)),
    "l_foot": ("l_knee", (0.0, -0.45, 0.0)),
    "r_hip": ("pelvis", (0.1, -0.05, 0.0)), "r_knee": ("r_hip", (0.0, -0.45, 0.0)),
    "r_foot": ("r_knee", (0.0, -0.45, 0.0)),
}
_NAMES = list(_JOINTS)
_BONES = [(parent, child) for child, (parent, _) in _JOINTS.items() if parent is not None]
_RADIUS = 0.05


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _pose(motion: str, t: float, amp: float) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Local joint rotations, the root's offset and its yaw at phase time `t` (radians of the motion cycle)."""
    rot: dict[str, np.ndarray] = {}
    s, c = math.sin(t), math.cos(t)
    lift = np.zeros(3)
    yaw = 0.0
    if motion in ("walk", "run"):
        swing = amp * (0.5 if motion == "walk" else 0.9)
        rot.update(l_hip=_rot_x(swing * s), r_hip=_rot_x(-swing * s), l_shoulder=_rot_x(-swing * s),
                   r_shoulder=_rot_x(swing * s), l_knee=_rot_x(-abs(swing * s)), r_knee=_rot_x(-abs(swing * c)))
        if motion == "run":
            rot.update(l_elbow=_rot_x(-1.2), r_elbow=_rot_x(-1.2))
            lift[1] = 0.05 * abs(s)
    elif motion == "jump":
        lift[1] = 0.3 * amp * max(s, 0.0)
        bend = 0.6 * amp * max(-s, 0.0)
        rot.update(l_knee=_rot_x(-bend), r_knee=_rot_x(-bend), l_hip=_rot_x(bend / 2), r_hip=_rot_x(bend / 2),
                   l_shoulder=_rot_z(-2.5 * max(s, 0.0)), r_shoulder=_rot_z(2.5 * max(s, 0.0)))
    elif motion == "wave":
        rot.update(r_shoulder=_rot_z(2.6), r_elbow=_rot_z(0.6 * amp * s))
    elif motion == "squat":
        bend = 1.2 * amp * (0.5 - 0.5 * c)
        lift[1] = -0.35 * (0.5 - 0.5 * c) * amp
        rot.update(l_hip=_rot_x(bend), r_hip=_rot_x(bend), l_knee=_rot_x(-2 * bend), r_knee=_rot_x(-2 * bend),
                   l_shoulder=_rot_x(bend), r_shoulder=_rot_x(bend))
    elif motion == "kick":
        rot.update(r_hip=_rot_x(1.3 * amp * max(s, 0.0)), r_knee=_rot_x(-0.8 * amp * max(c, 0.0)))
    elif motion == "clap":
        # arms raised forward, then swung together and apart about the vertical
        rot.update(l_shoulder=_rot_y(0.6 * amp * s) @ _rot_x(-1.4), r_shoulder=_rot_y(-0.6 * amp * s) @ _rot_x(-1.4))
    elif motion == "turn":
        yaw = t
        rot.update(l_shoulder=_rot_z(-0.4), r_shoulder=_rot_z(0.4))
    return rot, lift, yaw


def _joints(scale: np.ndarray, rot: dict[str, np.ndarray]) -> np.ndarray:
    """Forward kinematics: [J, 3] joint positions of a figure with per-joint offset scales."""
    world_rot: dict[str, np.ndarray] = {}
    pos: dict[str, np.ndarray] = {}
    for j, name in enumerate(_NAMES):
        parent, offset = _JOINTS[name]
        local = rot.get(name, np.eye(3))
        if parent is None:
            world_rot[name], pos[name] = local, np.asarray(offset) * scale[j]
        else:
            world_rot[name] = world_rot[parent] @ local
            pos[name] = pos[parent] + world_rot[parent] @ (np.asarray(offset) * scale[j])
    return np.stack([pos[n] for n in _NAMES])


def _samples(points: int) -> list[tuple[int, float, float]]:
    """(bone, height along it in [0, 1], angle) of every surface sample, spread in proportion to rest length."""
    lengths = np.array([np.linalg.norm(_JOINTS[child][1]) for _, child in _BONES])
    counts = np.maximum(np.floor(lengths / lengths.sum() * points).astype(int), 3)
    while counts.sum() > points:
        counts[counts.argmax()] -= 1
    counts[np.argsort(-lengths)[: points - counts.sum()]] += 1
    out = []
    for bone, n in enumerate(counts):
        rings = math.ceil(n / 3)  # three samples around the bone per ring, rings spread along it
        for i in range(n):
            out.append((bone, (i // 3 + 0.5) / rings, 2 * math.pi * (i % 3) / 3 + bone))
    return out


def _surface(joints: np.ndarray, samples: list[tuple[int, float, float]]) -> np.ndarray:
    """[N, 3] surface points of the capsules around the bones at these joint positions."""
    index = {n: i for i, n in enumerate(_NAMES)}
    bone = np.array([s[0] for s in samples])
    height = np.array([s[1] for s in samples])[:, None]
    angle = np.array([s[2] for s in samples])[:, None]
    starts = joints[[index[_BONES[b][0]] for b in bone]]  # [N, 3]
    ends = joints[[index[_BONES[b][1]] for b in bone]]
    axis = (ends - starts) / np.maximum(np.linalg.norm(ends - starts, axis=1, keepdims=True), 1e-9)
    helper = np.where(np.abs(axis[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(axis, u)
    return starts + height * (ends - starts) + _RADIUS * (np.cos(angle) * u + np.sin(angle) * v)


def surface_geodesics(rest: np.ndarray, samples: list[tuple[int, float, float]]) -> np.ndarray:
    """[N, N] shortest paths on the rest-pose surface graph (module docstring), float32."""
    n = len(samples)
    bone_of = np.array([s[0] for s in samples])
    rows, cols = [], []
    for bone in range(len(_BONES)):  # within a bone: every sample to its 4 nearest on the same bone
        members = np.flatnonzero(bone_of == bone)
        d = np.linalg.norm(rest[members, None] - rest[None, members], axis=-1)
        for i, row in zip(members, d):
            for j in members[np.argsort(row)[1:5]]:
                rows.append(i)
                cols.append(j)
    for child_bone, (parent, _) in enumerate(_BONES):  # at a joint: the bones meeting there, nearest samples
        for other, (p2, c2) in enumerate(_BONES):
            if other != child_bone and (c2 == parent or p2 == parent):
                a, b = np.flatnonzero(bone_of == child_bone), np.flatnonzero(bone_of == other)
                d = np.linalg.norm(rest[a, None] - rest[None, b], axis=-1)
                i, j = np.unravel_index(d.argmin(), d.shape)
                rows += [a[i]]
                cols += [b[j]]
    rows, cols = np.array(rows), np.array(cols)
    weights = np.linalg.norm(rest[rows] - rest[cols], axis=-1) + 1e-6
    graph = coo_matrix((weights, (rows, cols)), shape=(n, n)).tocsr()
    dist = shortest_path(graph, method="D", directed=False)
    if not np.isfinite(dist).all():
        raise RuntimeError("the figure's surface graph is not connected")  # a bug in the sampling, not input
    return dist.astype(np.float32)


class EmbeddedMocap(Dataset):
    """The sequences of the module docstring.

    Args:
        split: ``"train"`` or ``"val"`` (disjoint seed streams).
        num_sequences: Dataset length.
        frames: Frames per sequence (the official 24).
        points: Surface samples per frame (the official 128 after FPS).
        seed: Base seed.
    """

    def __init__(self, split: str = "train", num_sequences: int = 400, frames: int = 24, points: int = 128,
                 seed: int = 0) -> None:
        if split not in _SPLITS:
            raise ValueError(f"embedded MoCap split must be one of {', '.join(_SPLITS)}, got {split!r}")
        if frames < 2 or points < 3 * len(_BONES):
            raise ValueError(f"frames={frames}, points={points}: need at least 2 frames and {3 * len(_BONES)} points")
        self.split, self.num_sequences, self.frames, self.seed = split, int(num_sequences), frames, seed
        self.samples = _samples(points)
        self.classes = list(CLASSES)
        rest = _surface(_joints(np.ones(len(_NAMES)), {}), self.samples)
        self.geodist = torch.from_numpy(surface_geodesics(rest, self.samples))

    def __len__(self) -> int:
        return self.num_sequences

    def label(self, index: int) -> int:
        return index % len(CLASSES)

    def sequence(self, index: int) -> np.ndarray:
        """float32 [T, N, 3], normalised (module docstring)."""
        if not 0 <= index < self.num_sequences:
            raise IndexError(f"index {index} out of range for {self.num_sequences} sequences")
        rng = np.random.default_rng([self.seed, 57, _SPLITS[self.split], index])
        motion = CLASSES[self.label(index)]
        scale = rng.uniform(0.85, 1.15, size=len(_NAMES))
        speed, phase, amp = rng.uniform(0.8, 1.3), rng.uniform(0, 2 * math.pi), rng.uniform(0.7, 1.0)
        heading, offset = rng.uniform(0, 2 * math.pi), rng.uniform(-0.5, 0.5, size=3) * np.array([1, 0, 1])
        frames = []
        for f in range(self.frames):
            t = phase + 2 * math.pi * speed * f / _FPS
            rot, lift, yaw = _pose(motion, t, amp)
            joints = _joints(scale, rot) + lift
            turn = _rot_y(heading + yaw)
            pelvis = joints[0].copy()
            joints = (joints - pelvis) @ turn.T + pelvis + offset
            if motion == "walk" or motion == "run":  # travel along the heading
                joints += turn @ np.array([0.0, 0.0, 0.15 if motion == "walk" else 0.3]) * f / _FPS * speed
            frames.append(_surface(joints, self.samples))
        seq = np.stack(frames)
        low, high = seq.reshape(-1, 3).min(0), seq.reshape(-1, 3).max(0)
        seq = (seq - (low + high) / 2) / max(high[1] - low[1], 1e-6)
        return seq.astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        points = torch.from_numpy(self.sequence(index))
        return {"points": points, "geodist": self.geodist.expand(self.frames, -1, -1), "label": self.label(index)}
