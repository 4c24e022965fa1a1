"""The one place for YOLO box coding, target assignment and anchor clustering (v1, v2, v3).

Conventions: boxes are XYXY in input-tensor pixels; a grid of stride ``s`` has cell ``(gy, gx)``
covering ``[gx*s, (gx+1)*s) x [gy*s, (gy+1)*s)``; anchors are ``(w, h)`` in input pixels.
Dense predictions of a level with ``A`` anchors on an ``H x W`` grid are flattened in
Detectron2's ``(H, W, A)`` order (``permute_to_N_HWA_K``), so slot ``(gy, gx, a)`` of level ``l``
has flat index ``level_offset[l] + (gy * W + gx) * A + a``.
"""
import logging
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "wh_iou",
    "YoloBoxTransform",
    "YoloV1BoxTransform",
    "greedy_slot_assignment",
    "AnchorAssignment",
    "assign_anchor_targets",
    "assign_grid_cells",
    "filter_degenerate_boxes",
    "kmeans_anchors",
]

logger = logging.getLogger(__name__)

# Largest log-scale accepted by exp() when decoding (as Detectron2's Box2BoxTransform clamps).
_WH_SCALE_CLAMP = math.log(1000.0 / 16)


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of boxes that share their centre: (N, 2) x (M, 2) widths/heights -> (N, M).

    YOLOv2/v3 pick an object's anchor by this (Redmon & Farhadi 2017, Sec. "Dimension clusters").
    """
    inter = torch.min(wh1[:, None, 0], wh2[None, :, 0]) * torch.min(wh1[:, None, 1], wh2[None, :, 1])
    area1 = (wh1[:, 0] * wh1[:, 1])[:, None]
    area2 = (wh2[:, 0] * wh2[:, 1])[None, :]
    return inter / (area1 + area2 - inter).clamp(min=1e-12)


class YoloBoxTransform:
    """YOLOv2/v3 box parameterisation (Redmon & Farhadi 2017 Eq. in Sec. 2 "Direct location
    prediction"; 2018 Sec. 2.1)::

        bx = (sigmoid(tx) + cx) * stride     bw = anchor_w * exp(tw)
        by = (sigmoid(ty) + cy) * stride     bh = anchor_h * exp(th)

    ``get_deltas`` returns the *post-sigmoid* xy offsets in [0, 1] (what the loss compares with
    ``sigmoid(tx)``) and the log-scales; ``apply_deltas`` takes the same form, so
    ``apply_deltas(get_deltas(b)) == b``. The model applies the sigmoid before decoding.
    """

    @staticmethod
    def get_deltas(boxes: Tensor, cells: Tensor, strides: Tensor, anchors: Tensor) -> Tensor:
        """boxes (P, 4) XYXY, cells (P, 2) as (gx, gy), strides (P,), anchors (P, 2) -> (P, 4)
        ``(offset_x, offset_y, tw, th)``."""
        strides = strides.to(boxes.dtype)
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 / strides - cells[:, 0]
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 / strides - cells[:, 1]
        tw = torch.log((boxes[:, 2] - boxes[:, 0]) / anchors[:, 0])
        th = torch.log((boxes[:, 3] - boxes[:, 1]) / anchors[:, 1])
        return torch.stack([cx, cy, tw, th], dim=1)

    @staticmethod
    def apply_deltas(deltas: Tensor, cells: Tensor, strides: Tensor, anchors: Tensor) -> Tensor:
        """deltas (..., 4) ``(offset_x, offset_y, tw, th)`` with offsets already in [0, 1],
        cells (..., 2), strides (...,), anchors (..., 2) -> XYXY boxes (..., 4)."""
        strides = strides.to(deltas.dtype)
        cx = (deltas[..., 0] + cells[..., 0]) * strides
        cy = (deltas[..., 1] + cells[..., 1]) * strides
        w = anchors[..., 0] * torch.exp(deltas[..., 2].clamp(max=_WH_SCALE_CLAMP))
        h = anchors[..., 1] * torch.exp(deltas[..., 3].clamp(max=_WH_SCALE_CLAMP))
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


class YoloV1BoxTransform:
    """YOLOv1 direct regression (Redmon et al. 2016, Sec. 2.2): x, y are the box centre's offset
    within its cell, in [0, 1]; w, h are predicted as ``sqrt(w / image_w)``, ``sqrt(h / image_h)``
    so that errors on small boxes weigh more. The grid is ``S x S`` over the input tensor.
    """

    @staticmethod
    def get_deltas(boxes: Tensor, cells: Tensor, cell_size: Tuple[float, float],
                   image_size: Tuple[int, int]) -> Tensor:
        """boxes (P, 4) XYXY, cells (P, 2) (gx, gy), cell_size (cell_w, cell_h),
        image_size (H, W) -> (P, 4) ``(x, y, sqrt_w, sqrt_h)``."""
        cw, ch = cell_size
        h_img, w_img = image_size
        x = (boxes[:, 0] + boxes[:, 2]) / 2 / cw - cells[:, 0]
        y = (boxes[:, 1] + boxes[:, 3]) / 2 / ch - cells[:, 1]
        sw = ((boxes[:, 2] - boxes[:, 0]) / w_img).clamp(min=0).sqrt()
        sh = ((boxes[:, 3] - boxes[:, 1]) / h_img).clamp(min=0).sqrt()
        return torch.stack([x, y, sw, sh], dim=1)

    @staticmethod
    def apply_deltas(deltas: Tensor, cells: Tensor, cell_size: Tuple[float, float],
                     image_size: Tuple[int, int]) -> Tensor:
        """deltas (..., 4), cells (..., 2) -> XYXY (..., 4); negative sqrt-sizes decode as 0."""
        cw, ch = cell_size
        h_img, w_img = image_size
        cx = (deltas[..., 0] + cells[..., 0]) * cw
        cy = (deltas[..., 1] + cells[..., 1]) * ch
        w = deltas[..., 2].clamp(min=0) ** 2 * w_img
        h = deltas[..., 3].clamp(min=0) ** 2 * h_img
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def greedy_slot_assignment(candidate_slots: Tensor, candidate_scores: Tensor) -> Tensor:
    """Give each object its own prediction slot, best candidates first, dropping nobody who can
    be placed.

    Args:
        candidate_slots: (G, K) int64, the slot each object would take as its k-th choice.
        candidate_scores: (G, K), the object's score for that choice (e.g. anchor IoU), sorted
            descending along K.

    Returns:
        (G,) int64: the slot of each object, or -1 when all K of its candidates were taken by
        objects that ranked them higher (more than K objects competing for the same slots).

    Round ``r`` tries every still-unplaced object's ``r``-th choice; when several objects want the
    same free slot the highest score wins, the others move on to their next choice. Darknet
    instead lets the last object overwrite the slot, silently losing the others.
    """
    G, K = candidate_slots.shape
    result = torch.full((G,), -1, dtype=torch.long, device=candidate_slots.device)
    if G == 0:
        return result
    taken = set()
    pending = torch.arange(G, device=candidate_slots.device)
    for r in range(K):
        if pending.numel() == 0:
            break
        slots = candidate_slots[pending, r]
        scores = candidate_scores[pending, r]
        free = torch.tensor([int(s) not in taken for s in slots.tolist()], dtype=torch.bool,
                            device=slots.device) if taken else torch.ones_like(slots, dtype=torch.bool)
        # Highest score first; a stable sort keeps the earlier object on ties.
        order = torch.sort(scores, descending=True, stable=True).indices
        order = order[free[order]]
        winners = {}
        for i in order.tolist():
            s = int(slots[i])
            if s not in winners:
                winners[s] = i
        for s, i in winners.items():
            result[pending[i]] = s
            taken.add(s)
        placed = torch.zeros(pending.numel(), dtype=torch.bool, device=pending.device)
        placed[list(winners.values())] = True
        pending = pending[~placed]
    return result


class AnchorAssignment:
    """Positive slots of one image: ``gt_index`` (P,), ``level`` (P,), ``anchor`` (P,) (index
    within its level), ``cell`` (P, 2) as (gx, gy), ``slot`` (P,) flat index over all levels, and
    ``num_unplaced`` objects that had no free slot (reported, not hidden)."""

    def __init__(self, gt_index, level, anchor, cell, slot, num_unplaced):
        self.gt_index, self.level, self.anchor = gt_index, level, anchor
        self.cell, self.slot, self.num_unplaced = cell, slot, num_unplaced

    def __len__(self):
        return int(self.gt_index.numel())


def assign_anchor_targets(
    gt_boxes: Tensor,
    anchors: Sequence[Tensor],
    strides: Sequence[int],
    grid_sizes: Sequence[Tuple[int, int]],
) -> AnchorAssignment:
    """YOLOv2/v3 target assignment for one image.

    Each object goes to the cell that holds its box centre (``floor(c / stride)``, clamped into the
    grid so a centre on the far border stays inside) at the level of its best anchor by
    :func:`wh_iou` (Redmon & Farhadi 2018, Sec. 2.1: one prior per object). When that slot is
    already used by a better-matching object, the object takes its next-best anchor (any level)
    instead of being dropped; see :func:`greedy_slot_assignment`. There is no cap on the number
    of objects.

    Args:
        gt_boxes: (G, 4) XYXY in input pixels, all with positive width and height.
        anchors: per level, (A_l, 2) anchor (w, h) in input pixels.
        strides: per level stride in pixels.
        grid_sizes: per level (H_l, W_l).
    """
    device = gt_boxes.device
    G = gt_boxes.shape[0]
    all_anchors = torch.cat([a.to(device=device, dtype=gt_boxes.dtype) for a in anchors])
    level_of = torch.cat([torch.full((len(a),), i, dtype=torch.long) for i, a in enumerate(anchors)]).to(device)
    index_in_level = torch.cat([torch.arange(len(a)) for a in anchors]).to(device)
    offsets, total = [], 0
    for a, (h, w) in zip(anchors, grid_sizes):
        offsets.append(total)
        total += h * w * len(a)

    wh = gt_boxes[:, 2:] - gt_boxes[:, :2]
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    # cells[l]: (G, 2) (gx, gy) of each object's centre on level l.
    cells = []
    for s, (h, w) in zip(strides, grid_sizes):
        c = torch.floor(centres / s).long()
        c[:, 0] = c[:, 0].clamp(0, w - 1)
        c[:, 1] = c[:, 1].clamp(0, h - 1)
        cells.append(c)
    cells_t = torch.stack(cells)  # (L, G, 2)
    ious = wh_iou(wh, all_anchors)  # (G, K)
    scores, order = ious.sort(dim=1, descending=True, stable=True)
    lvl = level_of[order]  # (G, K)
    a_idx = index_in_level[order]
    g_idx = torch.arange(G, device=device)[:, None].expand_as(order)
    cand_cells = cells_t[lvl, g_idx]  # (G, K, 2)
    widths = torch.tensor([w for _, w in grid_sizes], device=device)[lvl]
    num_a = torch.tensor([len(a) for a in anchors], device=device)[lvl]
    slot = torch.tensor(offsets, device=device)[lvl] + (
        cand_cells[..., 1] * widths + cand_cells[..., 0]) * num_a + a_idx
    chosen = greedy_slot_assignment(slot, scores)

    placed = chosen >= 0
    rank = (slot == chosen[:, None]).float().argmax(dim=1)  # which choice each object got
    gi = torch.nonzero(placed).squeeze(1)
    r = rank[gi]
    return AnchorAssignment(
        gt_index=gi,
        level=lvl[gi, r],
        anchor=a_idx[gi, r],
        cell=cand_cells[gi, r],
        slot=chosen[gi],
        num_unplaced=int((~placed).sum()),
    )


def assign_grid_cells(gt_boxes: Tensor, grid: Tuple[int, int], image_size: Tuple[int, int]) -> Tensor:
    """YOLOv1: the (gx, gy) cell of each box centre on an ``S_h x S_w`` grid over ``image_size``
    (H, W): (G, 4) -> (G, 2), clamped into the grid."""
    s_h, s_w = grid
    h, w = image_size
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    gx = torch.floor(centres[:, 0] / (w / s_w)).long().clamp(0, s_w - 1)
    gy = torch.floor(centres[:, 1] / (h / s_h)).long().clamp(0, s_h - 1)
    return torch.stack([gx, gy], dim=1)


def filter_degenerate_boxes(boxes: Tensor, classes: Tensor, min_size: float = 1e-3,
                            where: str = "") -> Tuple[Tensor, Tensor, int]:
    """Drop boxes with non-finite coordinates or width/height below ``min_size`` pixels; log a
    warning with the count. Returns ``(boxes, classes, num_removed)``."""
    finite = torch.isfinite(boxes).all(dim=1)
    safe = torch.where(finite[:, None], boxes, torch.zeros_like(boxes))
    keep = finite & ((safe[:, 2] - safe[:, 0]) > min_size) & ((safe[:, 3] - safe[:, 1]) > min_size)
    removed = int((~keep).sum())
    if removed:
        logger.warning(
            "%s: ignored %d degenerate ground-truth box(es) (non-finite, or width/height <= %g px)",
            where or "YOLO", removed, min_size,
        )
    return boxes[keep], classes[keep], removed


def kmeans_anchors(wh: Tensor, k: int, seed: int = 0, max_iter: int = 300,
                   centre: str = "mean") -> Tuple[Tensor, float]:
    """YOLOv2 dimension clusters (Redmon & Farhadi 2017, Sec. 2): k-means on box (w, h) with
    distance ``1 - IoU(box, centroid)`` (boxes centred together).

    Args:
        wh: (N, 2) box widths and heights (any unit; anchors come out in the same unit).
        k: number of clusters.
        seed: seeds the k-means++ initialisation (deterministic for a given input).
        centre: "mean" (the paper's k-means) or "median" of each cluster.

    Returns:
        (anchors (k, 2) sorted by area, mean over boxes of the best IoU with an anchor).
    """
    wh = wh.double()
    n = wh.shape[0]
    if n < k:
        raise ValueError(f"kmeans_anchors: {n} boxes cannot make {k} clusters")
    gen = torch.Generator().manual_seed(seed)
    # k-means++ with the 1 - IoU distance.
    centres = [wh[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d = 1 - wh_iou(wh, torch.stack(centres)).max(dim=1).values
        prob = d**2
        prob = prob / prob.sum() if prob.sum() > 0 else torch.full_like(prob, 1.0 / n)
        centres.append(wh[torch.multinomial(prob, 1, generator=gen)].squeeze(0))
    c = torch.stack(centres)
    assign: Optional[Tensor] = None
    for _ in range(max_iter):
        new_assign = wh_iou(wh, c).argmax(dim=1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        for j in range(k):
            members = wh[assign == j]
            if len(members):
                c[j] = members.mean(0) if centre == "mean" else members.median(0).values
    c = c[(c[:, 0] * c[:, 1]).argsort()]
    mean_iou = float(wh_iou(wh, c).max(dim=1).values.mean())
    return c.float(), mean_iou
