"""Drawing with Detectron2's ``Visualizer``: ground truth, model outputs, COCO result rows.

Semantic-segmentation label maps are filled with one distinct colour per class (Detectron2's
``colormap`` palette, not the dataset's ``stuff_colors``, which for the WBC masks are the grey
levels of the annotation) and get one legend per image instead of a text label per region.
Boxes, masks and keypoints get one colour per class (the dataset's ``thing_colors`` when it has
them), the same in every drawing: Detectron2's drawers pick a random colour per box.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

__all__ = ["draw_record", "draw_instances", "draw_coco_results", "draw_sem_seg", "class_colors"]


def class_colors(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` RGB colours in 0..1, distinct for neighbouring class ids (class ``k``
    always gets the same one)."""
    palette = colormap(rgb=True, maximum=1)
    return np.stack([palette[k % len(palette)] for k in range(num_classes)])


def draw_sem_seg(vis: Visualizer, label_map: np.ndarray, class_names: Optional[Sequence[str]] = None,
                 ignore_label: int = 255, alpha: float = 0.5, skip_background: bool = True):
    """Fill each class of an ``(H, W)`` integer label map with its colour on ``vis`` and add one
    legend (upper right) naming the classes drawn; a class named "background" is left unfilled
    unless ``skip_background`` is False. Returns ``vis.output``."""
    label_map = np.asarray(label_map)
    present = [int(c) for c in np.unique(label_map) if int(c) != ignore_label]
    n = max(present + [len(class_names or []) - 1, 0]) + 1
    colors = class_colors(n)
    handles = []
    from matplotlib.patches import Patch

    for c in present:
        name = class_names[c] if class_names and c < len(class_names) else f"class {c}"
        if skip_background and name.lower() == "background":
            continue
        vis.draw_binary_mask((label_map == c).astype(np.uint8), color=colors[c], edge_color=colors[c],
                             alpha=alpha, area_threshold=0)
        handles.append(Patch(facecolor=colors[c], edgecolor="black", label=name))
    if handles:
        vis.output.ax.legend(handles=handles, loc="upper right", framealpha=0.75,
                             fontsize=max(6.0, vis._default_font_size * vis.output.scale * 0.8))
    return vis.output


def _label_map(record: Dict) -> Optional[np.ndarray]:
    if record.get("sem_seg") is not None:
        return np.asarray(record["sem_seg"])
    if record.get("sem_seg_file_name"):
        from PIL import Image

        with Image.open(record["sem_seg_file_name"]) as im:
            return np.asarray(im)
    return None


def _class_names(metadata) -> Optional[List[str]]:
    names = metadata.get("thing_classes", None) if metadata is not None else None
    return list(names) if names else None


def _colors_for(class_ids: Sequence[int], metadata) -> List[np.ndarray]:
    """One colour per class: the dataset's ``thing_colors`` (0..255) when it has them, else
    ``class_colors``."""
    given = metadata.get("thing_colors", None) if metadata is not None else None
    if given and all(0 <= c < len(given) for c in class_ids):
        return [np.asarray(given[c], dtype=np.float64) / 255.0 for c in class_ids]
    table = class_colors(max(class_ids) + 1)
    return [table[c] for c in class_ids]


def _overlay_by_class(vis: Visualizer, boxes, class_ids: List[int], labels: List[str], masks=None,
                      keypoints=None):
    """``Visualizer.overlay_instances`` with one colour per class. Detectron2's
    ``draw_dataset_dict`` / ``draw_instance_predictions`` pick a random colour per box, so two
    drawings of the same boxes differ, and a box can come out in the colour of what it surrounds."""
    if not class_ids:
        return vis.output
    return vis.overlay_instances(
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4), labels=labels, masks=masks,
        keypoints=keypoints, assigned_colors=_colors_for(class_ids, vis.metadata))


def _label(class_id: int, names: Optional[List[str]], score: Optional[float] = None, crowd: bool = False,
           shown_id: Optional[int] = None) -> str:
    if names and 0 <= class_id < len(names):
        text = names[class_id]
    else:
        text = f"class {class_id if shown_id is None else shown_id}"
    if score is not None:
        text += f" {100 * score:.0f}%"
    return text + ("|crowd" if crowd else "")


def draw_record(image_rgb: np.ndarray, record: Dict, metadata, scale: float = 1.0) -> np.ndarray:
    """Ground truth of a dataset dict drawn on its (H, W, 3) RGB image: boxes, masks and
    keypoints as Detectron2's ``draw_dataset_dict`` draws them but one colour per class; a
    semantic label map (``sem_seg`` array or ``sem_seg_file_name``) as coloured classes with one
    legend."""
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    annos = record.get("annotations") or []
    out = vis.output
    if annos:
        names = _class_names(vis.metadata)
        class_ids = [int(a["category_id"]) for a in annos]
        boxes = [BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)
                 for a in annos]
        masks = [a["segmentation"] for a in annos] if all("segmentation" in a for a in annos) else None
        keypoints = (np.asarray([a["keypoints"] for a in annos], dtype=np.float32).reshape(len(annos), -1, 3)
                     if all("keypoints" in a for a in annos) else None)
        labels = [_label(c, names, crowd=bool(a.get("iscrowd", 0))) for c, a in zip(class_ids, annos)]
        out = _overlay_by_class(vis, boxes, class_ids, labels, masks, keypoints)
    label_map = _label_map(record)
    if label_map is not None:
        out = draw_sem_seg(vis, label_map, getattr(metadata, "stuff_classes", None) if metadata else None,
                           ignore_label=getattr(metadata, "ignore_label", 255) if metadata else 255)
    return out.get_image()


def draw_instances(image_rgb: np.ndarray, instances, metadata, score_thresh: float = 0.5,
                   scale: float = 1.0) -> np.ndarray:
    """A model's ``Instances`` above ``score_thresh`` drawn on the image, one colour per class."""
    if instances.has("scores"):
        instances = instances[instances.scores >= score_thresh]
    instances = instances.to("cpu")
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    if not instances.has("pred_boxes"):
        return vis.draw_instance_predictions(instances).get_image()
    names = _class_names(vis.metadata)
    class_ids = instances.pred_classes.tolist() if instances.has("pred_classes") else [0] * len(instances)
    scores = instances.scores.tolist() if instances.has("scores") else [None] * len(instances)
    labels = [_label(c, names, s) for c, s in zip(class_ids, scores)]
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
    keypoints = instances.pred_keypoints.numpy() if instances.has("pred_keypoints") else None
    return _overlay_by_class(vis, instances.pred_boxes.tensor.numpy(), class_ids, labels, masks,
                             keypoints).get_image()


def draw_coco_results(image_rgb: np.ndarray, rows: List[Dict], metadata=None, score_thresh: float = 0.5,
                      scale: float = 1.0, class_names: Optional[List[str]] = None) -> np.ndarray:
    """COCO result rows of one image (``category_id`` 1-based, ``bbox`` XYWH) drawn on it, one
    colour per class."""
    rows = [r for r in rows if r.get("score", 1.0) >= score_thresh and "bbox" in r]
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    names = class_names or _class_names(vis.metadata)
    boxes, labels, masks, keypoints, class_ids = [], [], [], [], []
    for r in rows:
        boxes.append(BoxMode.convert(list(r["bbox"]), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        c = int(r["category_id"]) - 1
        class_ids.append(max(c, 0))
        labels.append(_label(c, names, r.get("score", 1.0), shown_id=int(r["category_id"])))
        if "segmentation" in r and isinstance(r["segmentation"], dict):
            masks.append(mask_util.decode(r["segmentation"]))
        if "keypoints" in r:
            keypoints.append(np.asarray(r["keypoints"], dtype=np.float32).reshape(-1, 3))
    return _overlay_by_class(
        vis, boxes, class_ids, labels,
        masks=masks if masks and len(masks) == len(rows) else None,
        keypoints=np.stack(keypoints) if keypoints and len(keypoints) == len(rows) else None,
    ).get_image()
