"""STMT: the spatial-temporal mesh transformer for MoCap action recognition (Zhu, Huang et al., CVPR 2023),
with the official parameter names (zgzxy001/STMT, ``src/model/stmt_model.py`` and the modules it builds).

Per frame, two point branches read the mesh's vertices [N, 3]:

* ``geo`` (intrinsic neighbourhoods): a 1x1-conv stem, then two levels of farthest point sampling (64, then 32
  centres) whose 8 neighbours are the nearest in *geodesic* distance (the precomputed [N, N] matrix of the
  frame), each level grouped (neighbour feature minus centre, and the centre) and max-pooled by ``Local_op``;
  then ``pt_last``: offset self-attention (``SA_Layer``: shared query/key weights, softmax over keys then
  normalised over queries, ``x + relu(bn(trans(x - attention(x))))``) with a learned position code of the
  centres, and ``conv_fuse`` with a global max (unused by STMT: computed only for the golden stages);
* ``spa`` (extrinsic neighbourhoods): its own stem, grouped around geo's centres by *Euclidean* kNN; its
  second level groups around geo's level-1 centre features viewed as pairs (``cen1.view(BT, 32, 1, 2 c1)``:
  rows 2s and 2s+1 side by side), exactly as the official code does.

The two ``pt_last`` outputs [BT, 8 c1, 32] are concatenated (D = 16 c1), weighted by channel attention over the
frames (``ca_T1``), flattened to T x 32 tokens in frame-major order (no position encoding) and passed through a
pre-norm Transformer (GELU after the attention's output projection, as the official ``to_out``); the max over
tokens goes through ``mlp_head``. Farthest point sampling starts from a random vertex per frame; the draws can be
given (``fps_start_level1/2``) to reproduce a run. Dead official layers (``linear1-3``, ``bn6/7``, the branch's
``conv_fuse`` output, ``sa3/sa4``) are kept so official checkpoints load strictly; they get no gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import LoadReport, check_fit, plain, read_state

# --------------------------------------------------------------------------- sampling and grouping


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points [B, N, C] at idx [B, S] or [B, S, K] -> [B, S(, K), C]."""
    batch = torch.arange(points.shape[0], device=points.device).view(-1, *([1] * (idx.dim() - 1)))
    return points[batch, idx]


def farthest_point_sample(xyz: torch.Tensor, npoint: int, start: torch.Tensor | None = None) -> torch.Tensor:
    """The official farthest point sampling: [B, N, 3] -> indices [B, npoint], from `start` [B] (default a
    uniform draw per row, as the official ``torch.randint``)."""
    b, n, _ = xyz.shape
    farthest = start.to(xyz.device) if start is not None else torch.randint(0, n, (b,), device=xyz.device)
    centroids = torch.zeros(b, npoint, dtype=torch.long, device=xyz.device)
    distance = torch.full((b, n), 1e10, device=xyz.device, dtype=xyz.dtype)
    rows = torch.arange(b, device=xyz.device)
    for i in range(npoint):
        centroids[:, i] = farthest
        centre = xyz[rows, farthest].view(b, 1, 3)
        distance = torch.minimum(distance, ((xyz - centre) ** 2).sum(-1))
        farthest = distance.max(-1)[1]
    return centroids


def knn_euclidean(k: int, xyz: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Indices [B, S, k] of the k points of `xyz` [B, N, 3] nearest to `queries` [B, S, 3] (the official squared
    distance expansion ``-2 q.p + |q|^2 + |p|^2``)."""
    dist = -2 * queries @ xyz.transpose(1, 2)
    dist = dist + (queries ** 2).sum(-1)[..., None] + (xyz ** 2).sum(-1)[:, None]
    return dist.topk(k, dim=-1, largest=False, sorted=False)[1]


def knn_geodesic(k: int, geodist: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The k geodesically nearest points of each centre: geodist [B, N, N], centres [B, S] -> indices [B, S, k]
    and the centres' own distance matrix [B, S, S] (the next level's geodesics)."""
    rows = torch.gather(geodist, 1, centres[..., None].expand(-1, -1, geodist.shape[2]))  # [B, S, N]
    idx = rows.topk(k, dim=-1, largest=False, sorted=False)[1]
    return idx, torch.gather(rows, 2, centres[:, None].expand(-1, centres.shape[1], -1))


def group(points: torch.Tensor, idx: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Neighbour features minus the centre's, and the centre's: points [B, N, C], idx [B, S, K], centre
    [B, S, 1, C'] (C' = C) -> [B, S, K, 2C]."""
    grouped = index_points(points, idx) - centre
    return torch.cat([grouped, centre.expand(-1, -1, idx.shape[2], -1)], dim=-1)


# --------------------------------------------------------------------------- point branches


class Local_op(nn.Module):  # noqa: N801  the official class name
    """Two 1x1 convs (BN, ReLU) over each neighbour's features, max over the neighbours: [B, S, K, C] -> [B, C', S]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size=1, bias=False)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.bn2 = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, k, _ = x.shape
        # the 1x1 convs as matmuls over the channel axis (the same weights; far faster backward on CPU), and each
        # BatchNorm over [B*S, C, K] as the official, with the channels moved back into place
        x = F.linear(x.reshape(b * s, k, -1), self.conv1.weight[..., 0]).transpose(1, 2)  # [B*S, C, K]
        x = F.relu(self.bn1(x)).transpose(1, 2)
        x = F.relu(self.bn2(F.linear(x, self.conv2.weight[..., 0]).transpose(1, 2)))
        return x.amax(dim=-1).reshape(b, s, -1).permute(0, 2, 1)


class SA_Layer(nn.Module):  # noqa: N801
    """Offset self-attention with shared query / key weights (module docstring)."""

    def __init__(self, channels: int):
        super().__init__()
        self.q_conv = nn.Conv1d(channels, channels // 4, 1, bias=False)
        self.k_conv = nn.Conv1d(channels, channels // 4, 1, bias=False)
        self.q_conv.weight = self.k_conv.weight  # one parameter under both names, as the official
        self.v_conv = nn.Conv1d(channels, channels, 1)
        self.trans_conv = nn.Conv1d(channels, channels, 1)
        self.after_norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + pos
        energy = self.q_conv(x).transpose(1, 2) @ self.k_conv(x)  # [B, N, N]
        attention = energy.softmax(dim=-1)
        attention = attention / (1e-9 + attention.sum(dim=1, keepdim=True))
        x_r = self.v_conv(x) @ attention
        return x + F.relu(self.after_norm(self.trans_conv(x - x_r)))


class Point_Transformer_Last(nn.Module):  # noqa: N801
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=1, bias=False)
        self.pos_xyz = nn.Conv1d(3, channels, 1)
        self.bn1 = nn.BatchNorm1d(channels)
        self.sa1, self.sa2, self.sa3, self.sa4 = (SA_Layer(channels) for _ in range(4))

    def forward(self, x: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        pos = self.pos_xyz(xyz.transpose(1, 2))
        x = F.relu(self.bn1(self.conv1(x)))
        x1 = self.sa1(x, pos)
        x2 = self.sa2(x1, pos)
        if self.training:  # the official computes sa3 / sa4 and drops them: only their BN statistics move
            self.sa4(self.sa3(x2, pos), pos)
        return torch.cat([x1, x2], dim=1)


class PointBranch(nn.Module):
    """The layers of the official GeodesicModel / SpatialModel (the same tree; the forwards differ)."""

    def __init__(self, c1: int, c4: int, out40: int = 40):
        super().__init__()
        self.conv1 = nn.Conv1d(3, c1, kernel_size=1, bias=False)
        self.conv2 = nn.Conv1d(c1, c1, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c1)
        self.bn2 = nn.BatchNorm1d(c1)
        self.gather_local_0 = Local_op(2 * c1, 2 * c1)
        self.gather_local_1 = Local_op(4 * c1, 4 * c1)
        self.pt_last = Point_Transformer_Last(4 * c1)
        self.conv_fuse = nn.Sequential(nn.Conv1d(12 * c1, c4, kernel_size=1, bias=False), nn.BatchNorm1d(c4),
                                       nn.LeakyReLU(negative_slope=0.2))
        # the official classification head of the point transformer: built, never called by STMT
        self.linear1 = nn.Linear(c4, c4 // 2, bias=False)
        self.bn6 = nn.BatchNorm1d(c4 // 2)
        self.dp1 = nn.Dropout(p=0.5)
        self.linear2 = nn.Linear(c4 // 2, c4 // 4)
        self.bn7 = nn.BatchNorm1d(c4 // 4)
        self.dp2 = nn.Dropout(p=0.5)
        self.linear3 = nn.Linear(c4 // 4, out40)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """[BT, 3, N] -> per-point features [BT, N, c1]."""
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))).transpose(1, 2)


class STMT(nn.Module):
    """The model of the module docstring. ``forward(points [B, T, N, 3], geodist [B, T, N, N])`` -> logits; with
    ``return_intermediates=True`` a dict of every stage (the golden case's outputs)."""

    def __init__(self, num_classes: int = 56, framenum: int = 24, c1: int = 64, c4: int = 1024, depth: int = 5,
                 heads: int = 8, dim_head: int = 128, mlp_dim: int = 512, h1: int = 512, h2: int = 128,
                 out40: int = 40, level1: int = 64, level2: int = 32, neighbours: int = 8):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        if 2 * level2 != level1:
            raise ValueError(f"level1={level1}, level2={level2}: the spatial branch pairs level-1 centres, so "
                             "level1 must be 2 x level2 (the official 64 / 32)")
        self.framenum, self.level1, self.level2, self.k = framenum, level1, level2, neighbours
        dim = 16 * c1
        self.geo = PointBranch(c1, c4, out40)
        self.spa = PointBranch(c1, c4, out40)
        self.ca_T1 = ChannelAttention(dim)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, h1), nn.GELU(), nn.Linear(h1, h2), nn.GELU(),
                                      nn.Linear(h2, num_classes))

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config)}

    def unused_parameters(self) -> list[nn.Parameter]:
        """The parameters no loss reaches: the branches' dead classification heads, ``conv_fuse`` (its output is
        unused) and ``sa3`` / ``sa4`` (run for their BN statistics, output dropped). Freezing them lets DDP run
        without ``find_unused_parameters``."""
        dead = [getattr(branch, name) for branch in (self.geo, self.spa)
                for name in ("linear1", "bn6", "linear2", "bn7", "linear3", "conv_fuse")]
        dead += [getattr(branch.pt_last, name) for branch in (self.geo, self.spa) for name in ("sa3", "sa4")]
        return [p for module in dead for p in module.parameters()]

    def frame_tokens(self, points4DV_T: torch.Tensor, geodist: torch.Tensor,  # noqa: N803  the official names
                     fps_start_level1: torch.Tensor | None = None, fps_start_level2: torch.Tensor | None = None,
                     patch_mask: torch.Tensor | None = None, mask_features: tuple[torch.Tensor, torch.Tensor] | None
                     = None, causal: bool = False, intermediates: bool = False) -> dict[str, torch.Tensor]:
        """The per-frame point branches and the frame attention: ``tokens`` [B, T x level2, D] in frame-major order,
        with the sampling that made them (``fps_idx_level1`` [BT, level1] vertex ids, ``fps_idx_level2`` [BT,
        level2] level-1 ids, ``geo_knn_idx_level2`` [BT, level2, k] level-1 ids of each patch, the centres
        ``geo_new_xyz_1`` / ``geo_new_xyz_2``). ``patch_mask`` [BT, level2] (True = hidden) replaces the hidden
        patches' grouped features in each branch by ``mask_features`` (geo, spa) before the offset attention, so
        a hidden patch keeps only its centre's position code (masked vertex modelling). ``causal``: frame t's
        channel attention from frames <= t alone (future frame prediction)."""
        b, t, n, _ = points4DV_T.shape
        if t != self.framenum:
            raise ValueError(f"{t} frames per sequence, but the model was built for framenum={self.framenum}")
        xyz = points4DV_T.reshape(b * t, n, 3)
        x = xyz.transpose(1, 2)
        geo, spa, k = self.geo, self.spa, self.k

        def hide(features: torch.Tensor, which: int) -> torch.Tensor:  # [BT, C, level2]
            if patch_mask is None or mask_features is None:
                return features
            return torch.where(patch_mask[:, None], mask_features[which][None, :, None].to(features.dtype), features)

        # geodesic branch
        g0 = geo.stem(x)
        fps1 = farthest_point_sample(xyz, self.level1, fps_start_level1)
        xyz1, cen1 = index_points(xyz, fps1), index_points(g0, fps1)
        idx1, geodist1 = knn_geodesic(k, geodist.reshape(b * t, n, n), fps1)
        feature = geo.gather_local_0(group(g0, idx1, cen1[:, :, None])).transpose(1, 2)  # [BT, level1, 2 c1]
        fps2 = farthest_point_sample(xyz1, self.level2, fps_start_level2)
        xyz2, cen2 = index_points(xyz1, fps2), index_points(feature, fps2)
        idx2, _ = knn_geodesic(k, geodist1, fps2)
        geo_1 = hide(geo.gather_local_1(group(feature, idx2, cen2[:, :, None])), 0)
        geo_pt = geo.pt_last(geo_1, xyz2)
        # spatial branch, around the geodesic branch's centres
        s0 = spa.stem(x)
        sidx1 = knn_euclidean(k, xyz, xyz1)
        feature = spa.gather_local_0(group(s0, sidx1, cen1[:, :, None])).transpose(1, 2)
        sidx2 = knn_euclidean(k, xyz1, xyz2)
        paired = cen1.reshape(b * t, self.level2, 1, -1)  # the official view: level-1 centres side by side
        spa_1 = hide(spa.gather_local_1(group(feature, sidx2, paired)), 1)
        spa_pt = spa.pt_last(spa_1, xyz2)
        # frames -> tokens
        both = torch.cat([geo_pt, spa_pt], dim=1)  # [BT, D, level2]
        frames = both.reshape(b, t, both.shape[1], -1).permute(0, 2, 1, 3)  # [B, D, T, level2]
        attention = self.ca_T1(frames, causal)
        tokens = (attention * frames).permute(0, 2, 3, 1).reshape(b, t * frames.shape[3], -1)
        out = {"tokens": tokens, "fps_idx_level1": fps1, "fps_idx_level2": fps2, "geo_knn_idx_level2": idx2,
               "geo_new_xyz_1": xyz1, "geo_new_xyz_2": xyz2}
        if intermediates:  # the golden case's stages (conv_fuse's global max is computed for them alone)
            out.update(geo_global_feature=geo.conv_fuse(torch.cat([geo_pt, geo_1], dim=1)).amax(dim=-1),
                       spa_global_feature=spa.conv_fuse(torch.cat([spa_pt, spa_1], dim=1)).amax(dim=-1),
                       geo_pt_last=geo_pt, spa_pt_last=spa_pt, geo_new_feature_1=cen1, geo_new_feature_2=cen2,
                       channel_attention=attention, transformer_input=tokens,
                       geo_knn_idx_level1_sorted=idx1.sort(-1)[0], geo_knn_idx_level2_sorted=idx2.sort(-1)[0],
                       spa_knn_idx_level1_sorted=sidx1.sort(-1)[0], spa_knn_idx_level2_sorted=sidx2.sort(-1)[0])
        return out

    def forward(self, points4DV_T: torch.Tensor, geodist: torch.Tensor,  # noqa: N803  the official names
                fps_start_level1: torch.Tensor | None = None, fps_start_level2: torch.Tensor | None = None,
                return_intermediates: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        out = self.frame_tokens(points4DV_T, geodist, fps_start_level1, fps_start_level2,
                                intermediates=return_intermediates)
        encoded = self.transformer(out["tokens"])
        pooled = encoded.amax(dim=1)
        logits = self.mlp_head(pooled)
        if not return_intermediates:
            return logits
        out.pop("tokens")
        out.pop("geo_knn_idx_level2")
        out.update(logits=logits, transformer_output=encoded, pooled_max=pooled)
        return out


class PatchHead(nn.Module):
    """A token's prediction of its patch's ``k`` vertices, relative to the patch centre: [.., D] -> [.., k, 3]."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.k = k
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 3 * k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).unflatten(-1, (self.k, 3))


def chamfer(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared-L2 Chamfer distance of point sets [M, k, 3] (both directions, as Point-MAE), mean over M."""
    d = torch.cdist(pred.float(), target.float()) ** 2
    return d.min(-1)[0].mean() + d.min(-2)[0].mean()


class STMTPretrainer(nn.Module):
    """STMT's two self-supervised pretext tasks (paper, Sec. 3; the release has no pretraining code, so the
    details are percli's reading). The backbone is ``feat``, the name the official fine-tuning copy renames.

    A patch is a level-2 centre and its ``k`` geodesic neighbours among the level-1 centres (each a mesh vertex);
    its target is those vertices' positions relative to the centre, compared by Chamfer distance.

    * Masked vertex modelling (bidirectional attention): ``mask_ratio`` of each frame's patches are hidden (their
      grouped features replaced by a learned vector per branch, before the intra-frame offset attention, so only
      the centre's position code remains); the tokens of hidden patches predict their vertices.
    * Future frame prediction (frame-causal: a token attends to its own and earlier frames, and the channel
      attention of frame t reads frames <= t): every token of frame t predicts where its patch's vertices are in
      frame t+1 (the same vertex ids: mesh vertices correspond across frames), relative to the centre in frame t.

    ``forward`` returns ``{"mvm": loss, "ffp": loss}`` for the tasks asked. The backbone's classifier head and its
    dead official layers get no loss and are frozen (so DDP needs no ``find_unused_parameters``).
    """

    def __init__(self, backbone: STMT, mask_ratio: float = 0.5):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio}: give a fraction in (0, 1)")
        self.feat = backbone
        self.mask_ratio = mask_ratio
        self.config = {**backbone.config, "mask_ratio": mask_ratio}
        self.arch = f"{backbone.arch}_pretrain"
        c1 = backbone.config["c1"]
        self.mask_geo = nn.Parameter(torch.zeros(4 * c1))
        self.mask_spa = nn.Parameter(torch.zeros(4 * c1))
        nn.init.trunc_normal_(self.mask_geo, std=0.02)
        nn.init.trunc_normal_(self.mask_spa, std=0.02)
        self.mvm_head = PatchHead(16 * c1, backbone.k)
        self.ffp_head = PatchHead(16 * c1, backbone.k)
        for p in backbone.unused_parameters() + list(backbone.mlp_head.parameters()):
            p.requires_grad_(False)

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config)}

    def patch_targets(self, points: torch.Tensor, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch's vertices in its own frame and in the next frame, relative to its centre: [B, T, S, k, 3]
        twice (the last frame's "next" is meaningless; callers drop it)."""
        b, t, n, _ = points.shape
        ids = index_points(out["fps_idx_level1"][..., None], out["geo_knn_idx_level2"])[..., 0]  # [BT, S, k]
        centre = out["geo_new_xyz_2"][:, :, None]
        now = index_points(points.reshape(b * t, n, 3), ids) - centre
        later = index_points(points.roll(-1, dims=1).reshape(b * t, n, 3), ids) - centre
        return now.unflatten(0, (b, t)), later.unflatten(0, (b, t))

    def forward(self, points: torch.Tensor, geodist: torch.Tensor, mvm: bool = True,
                ffp: bool = True) -> dict[str, torch.Tensor]:
        b, t = points.shape[:2]
        s, losses = self.feat.level2, {}
        if mvm:
            hidden = max(1, round(self.mask_ratio * s))
            order = torch.rand(b * t, s, device=points.device).argsort(dim=1)
            patch_mask = torch.zeros(b * t, s, dtype=torch.bool, device=points.device)
            patch_mask.scatter_(1, order[:, :hidden], True)
            out = self.feat.frame_tokens(points, geodist, patch_mask=patch_mask,
                                         mask_features=(self.mask_geo, self.mask_spa))
            pred = self.mvm_head(self.feat.transformer(out["tokens"])).reshape(b * t, s, -1, 3)
            now, _ = self.patch_targets(points, out)
            losses["mvm"] = chamfer(pred[patch_mask], now.flatten(0, 1)[patch_mask])
        if ffp:
            out = self.feat.frame_tokens(points, geodist, causal=True)
            causal = frame_causal_mask(t, s, points.device)
            pred = self.ffp_head(self.feat.transformer(out["tokens"], mask=causal)).reshape(b, t, s, -1, 3)
            _, later = self.patch_targets(points, out)
            losses["ffp"] = chamfer(pred[:, :-1].flatten(0, 2), later[:, :-1].flatten(0, 2))
        return losses


# --------------------------------------------------------------------------- frame attention and transformer


class ChannelAttention(nn.Module):
    """sigmoid(fc2(relu(fc1(avg))) + fc2(relu(fc1(max)))) over [B, C, H, W], reduction 16 (official)."""

    def __init__(self, in_planes: int):
        super().__init__()
        self.fc1 = nn.Conv2d(in_planes, in_planes // 16, 1, bias=False)
        self.fc2 = nn.Conv2d(in_planes // 16, in_planes, 1, bias=False)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """[B, C, 1, 1]; ``causal``: [B, C, T, 1], frame t's weights from the statistics of frames <= t."""
        if causal:
            frames = torch.arange(1, x.shape[2] + 1, device=x.device, dtype=x.dtype).view(1, 1, -1, 1)
            mean = x.mean(dim=3, keepdim=True).cumsum(dim=2) / frames
            peak = x.amax(dim=3, keepdim=True).cummax(dim=2)[0]
        else:
            mean, peak = x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(mean))) + self.fc2(F.relu(self.fc1(peak))))


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(x, **kwargs) + x


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.GELU(), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        energy = (q @ k.transpose(-1, -2)) * self.scale
        if mask is not None:  # [N, N], True = may attend
            energy = energy.masked_fill(~mask, float("-inf"))
        attention = energy.softmax(dim=-1)
        return self.to_out((attention @ v).transpose(1, 2).reshape(b, n, -1))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """The official pre-norm Transformer (``layers.i.0`` attention, ``layers.i.1`` feed-forward)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([_Residual(_PreNorm(dim, _Attention(dim, heads, dim_head))),
                                                   _Residual(_PreNorm(dim, _FeedForward(dim, mlp_dim)))])
                                    for _ in range(depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` [N, N] (True = may attend): e.g. `frame_causal_mask` for future-frame prediction."""
        for attention, feed_forward in self.layers:
            x = feed_forward(attention(x, mask=mask))
        return x


def frame_causal_mask(frames: int, tokens_per_frame: int, device: torch.device | None = None) -> torch.Tensor:
    """[T S, T S] bool for frame-major tokens: a token sees every token of its own and earlier frames."""
    frame = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)
    return frame[None, :] <= frame[:, None]


# --------------------------------------------------------------------------- loading and variants


_PRETEXT = ("mask_geo", "mask_spa", "mvm_head", "ffp_head")


def load_state(model: STMT | STMTPretrainer, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """An official STMT checkpoint (``stmt_<epoch>.pth``'s ``state_dict``, a ``module.`` or ``feat.`` prefix
    stripped) or a percli state, strictly. Into an ``STMT``, a pretraining state gives its backbone: the pretext
    heads are dropped and the classifier head (never trained in pretraining) stays at init. Into an
    ``STMTPretrainer``, a pretraining state loads whole and a bare STMT state gives the backbone."""
    state = read_state(state_or_path)
    pretext = {k: v for k, v in state.items() if k.split(".")[0] in _PRETEXT}
    prefixes = ("module.", "feat.")
    backbone = {next((k[len(p):] for p in prefixes if k.startswith(p)), k): v for k, v in state.items()
                if k not in pretext}
    target = model.feat if isinstance(model, STMTPretrainer) else model
    dropped, missing = [], []
    if pretext and target is model:
        dropped = sorted(pretext)
    if dropped or target is not model:  # a pretraining head never trains; a pretrainer never uses its head
        dropped += sorted(k for k in backbone if k.startswith("mlp_head."))
        backbone = {k: v for k, v in backbone.items() if not k.startswith("mlp_head.")}
    tolerated = ("mlp_head.",) if dropped or target is not model else ()
    missing = check_fit(target, backbone, target.arch, tolerated=tolerated,
                        hint="build the STMT size the checkpoint was trained as")
    target.load_state_dict(backbone, strict=False)
    if target is not model:
        if pretext:
            model.load_state_dict(pretext, strict=False)
        missing = sorted(set(k for k in model.state_dict() if k.split(".")[0] in _PRETEXT) - set(pretext))
    return LoadReport(source_format="percli" if pretext else "official", dropped=dropped, missing=missing,
                      head_reset=bool(dropped) and target is model)


register_loader(__name__)(load_state)


@register_model
def stmt(**kwargs) -> STMT:
    """The official size (c1 64, D 1024, 5 blocks of 8 heads x 128), 56 KIT/BABEL classes, 24 frames."""
    model = STMT(**kwargs)
    model.arch = "stmt"
    return model


@register_model
def stmt_tiny(**kwargs) -> STMT:
    """The golden case's width (c1 8, D 128, 2 blocks of 4 heads x 32), CPU-sized."""
    args = dict(c1=8, c4=128, depth=2, heads=4, dim_head=32, mlp_dim=64, h1=64, h2=16, num_classes=10, framenum=2)
    model = STMT(**{**args, **kwargs})
    model.arch = "stmt_tiny"
    return model


@register_model
def stmt_pretrain(mask_ratio: float = 0.5, **kwargs) -> STMTPretrainer:
    """The official STMT size with the two pretext heads (``STMTPretrainer``)."""
    return STMTPretrainer(stmt(**kwargs), mask_ratio)


@register_model
def stmt_tiny_pretrain(mask_ratio: float = 0.5, **kwargs) -> STMTPretrainer:
    """``stmt_tiny`` with the two pretext heads."""
    return STMTPretrainer(stmt_tiny(**kwargs), mask_ratio)
