"""Mesh sequences (registered meshes: one vertex list and one face list shared by every frame) and the two inputs
STMT needs from them: a farthest-point-sampled subset of the vertices per frame and its geodesic distances.

Layouts (`read_mesh_sequence`):

- an ``.npz`` with ``vertices`` [T, V, 3] (or ``verts`` / ``v``) and ``faces`` [F, 3] (or ``f``): the meshes an
  AMASS/KIT export writes once a body model has posed them (the official ``00_save_obj_single.py`` step);
- a folder of one ``.off`` or ``.obj`` file per frame, in name order (the official ``02_obj2off.py`` output).

Every frame must have the same vertex count and the same faces (vertex ``i`` is one body spot in all frames);
a frame that breaks this raises ``ValueError`` naming it, which the datasets report and skip.

Sampling and geodesics (`sample_with_geodesics`): ``n`` vertices by farthest point sampling on the first frame
from vertex 0 (so the sampled set is fixed for the sequence and follows the body), then shortest paths on the
mesh's edge graph weighted by the first frame's edge lengths (Dijkstra, SciPy): exact for that graph, an upper
bound of the true surface geodesic that tightens with mesh resolution (the official pipeline uses fast marching
on the decimated mesh per frame; for a near-isometric body the first frame's distances serve every frame).
Pairs in different connected components get 10x the largest finite distance, so they are never neighbours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

_VERTEX_KEYS, _FACE_KEYS = ("vertices", "verts", "v"), ("faces", "f")


def _polygons_to_triangles(polygons: list[list[int]]) -> np.ndarray:
    triangles = [(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)]  # a fan per polygon
    return np.asarray(triangles, dtype=np.int64).reshape(-1, 3)


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and triangles [F, 3] of an OFF file (polygons fanned into triangles)."""
    words = Path(path).read_text(encoding="ascii", errors="replace").split()
    if not words or not words[0].startswith("OFF"):
        raise ValueError(f"{path}: not an OFF file (no OFF header)")
    body = words[1:] if words[0] == "OFF" else [words[0][3:], *words[1:]]  # "OFF5 3 0" is legal too
    try:
        nv, nf = int(body[0]), int(body[1])
        values = body[3:]
        vertices = np.asarray(values[:3 * nv], dtype=np.float64).reshape(nv, 3)
        at, polygons = 3 * nv, []
        for _ in range(nf):
            k = int(values[at])
            polygons.append([int(i) for i in values[at + 1:at + 1 + k]])
            at += 1 + k
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: truncated or malformed OFF ({e})") from None
    return vertices, _polygons_to_triangles(polygons)


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and triangles [F, 3] of a Wavefront OBJ (``v`` and ``f`` lines; 1-based or negative
    indices, ``i/t/n`` forms)."""
    vertices, polygons = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        try:
            if parts[:1] == ["v"]:
                vertices.append([float(x) for x in parts[1:4]])
            elif parts[:1] == ["f"]:
                ids = [int(p.split("/")[0]) for p in parts[1:]]
                polygons.append([i - 1 if i > 0 else len(vertices) + i for i in ids])
        except ValueError as e:
            raise ValueError(f"{path}:{number}: malformed line ({e})") from None
    if not vertices:
        raise ValueError(f"{path}: no vertices")
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 3), _polygons_to_triangles(polygons)


def read_mesh_sequence(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [T, V, 3] (float32) and faces [F, 3] of a sequence in one of the module's layouts."""
    path = Path(path)
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in (".off", ".obj"))
        if not frames:
            raise ValueError(f"{path}: no .off or .obj frames")
        meshes = [read_off(p) if p.suffix.lower() == ".off" else read_obj(p) for p in frames]
        first_v, first_f = meshes[0]
        for frame, (v, f) in zip(frames, meshes):
            if len(v) != len(first_v):
                raise ValueError(f"{frame.name} has {len(v)} vertices, {frames[0].name} has {len(first_v)}: the frames "
                                 "of a sequence must be one registered mesh")
            if not np.array_equal(f, first_f):
                raise ValueError(f"{frame.name}'s faces differ from {frames[0].name}'s: the frames of a sequence must "
                                 "be one registered mesh")
        vertices, faces = np.stack([v for v, _ in meshes]), first_f
    else:
        with np.load(path, allow_pickle=False) as archive:
            vkey = next((k for k in _VERTEX_KEYS if k in archive), None)
            fkey = next((k for k in _FACE_KEYS if k in archive), None)
            if vkey is None or fkey is None:
                raise ValueError(f"{path}: needs vertices ({'/'.join(_VERTEX_KEYS)}) and faces "
                                 f"({'/'.join(_FACE_KEYS)}); it has {', '.join(archive.files) or 'nothing'}")
            vertices, faces = archive[vkey], archive[fkey]
        if vertices.ndim != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"{path}: vertices {list(vertices.shape)}: need [frames, vertices, 3] (one vertex count "
                             "for every frame)")
        if faces.ndim != 2 or faces.shape[-1] != 3:
            raise ValueError(f"{path}: faces {list(faces.shape)}: need [faces, 3] triangles")
    faces = faces.astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[1]):
        raise ValueError(f"{path}: a face names a vertex outside 0..{vertices.shape[1] - 1}")
    if not np.isfinite(vertices).all():
        raise ValueError(f"{path}: non-finite vertex coordinates")
    return vertices.astype(np.float32), faces


def farthest_vertices(xyz: np.ndarray, n: int) -> np.ndarray:
    """Indices of `n` vertices of `xyz` [V, 3] by farthest point sampling from vertex 0."""
    chosen = np.zeros(n, dtype=np.int64)
    distance = np.full(len(xyz), np.inf)
    for i in range(1, n):
        distance = np.minimum(distance, ((xyz - xyz[chosen[i - 1]]) ** 2).sum(-1))
        chosen[i] = int(distance.argmax())
    return chosen


def sample_with_geodesics(vertices: np.ndarray, faces: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points [T, n, 3] and their geodesic distances [n, n] (module docstring)."""
    v = vertices.shape[1]
    if v < n:
        raise ValueError(f"{v} vertices per frame, need at least {n} (data.points)")
    ids = farthest_vertices(vertices[0].astype(np.float64), n)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    lengths = np.linalg.norm(vertices[0, edges[:, 0]] - vertices[0, edges[:, 1]], axis=-1) + 1e-9
    graph = coo_matrix((lengths, (edges[:, 0], edges[:, 1])), shape=(v, v)).tocsr()
    dist = dijkstra(graph, directed=False, indices=ids)[:, ids]
    finite = np.isfinite(dist)
    dist[~finite] = 10 * (dist[finite].max() if finite.any() else 1.0)
    return vertices[:, ids], dist.astype(np.float32)
