"""Drawing with Detectron2's ``Visualizer``: ground truth, model outputs, COCO result rows.

Semantic-segmentation label maps are filled with one distinct colour per class (Detectron2's
``colormap`` palette, not the dataset's ``stuff_colors``, which for the WBC masks are the grey
levels of the annotation) and get one legend per image instead of a text label per region.
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


def draw_record(image_rgb: np.ndarray, record: Dict, metadata, scale: float = 1.0) -> np.ndarray:
    """Ground truth of a dataset dict drawn on its (H, W, 3) RGB image: instances as Detectron2
    draws them, a semantic label map (``sem_seg`` array or ``sem_seg_file_name``) as coloured
    classes with one legend."""
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    label_map = _label_map(record)
    instances = {k: v for k, v in record.items() if k not in ("sem_seg", "sem_seg_file_name")}
    out = vis.draw_dataset_dict(instances) if instances.get("annotations") else vis.output
    if label_map is not None:
        out = draw_sem_seg(vis, label_map, getattr(metadata, "stuff_classes", None) if metadata else None,
                           ignore_label=getattr(metadata, "ignore_label", 255) if metadata else 255)
    return out.get_image()


def draw_instances(image_rgb: np.ndarray, instances, metadata, score_thresh: float = 0.5,
                   scale: float = 1.0) -> np.ndarray:
    """A model's ``Instances`` above ``score_thresh`` drawn on the image."""
    if instances.has("scores"):
        instances = instances[instances.scores >= score_thresh]
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    return vis.draw_instance_predictions(instances).get_image()


def draw_coco_results(image_rgb: np.ndarray, rows: List[Dict], metadata=None, score_thresh: float = 0.5,
                      scale: float = 1.0, class_names: Optional[List[str]] = None) -> np.ndarray:
    """COCO result rows of one image (``category_id`` 1-based, ``bbox`` XYWH) drawn on it, one
    colour per class."""
    rows = [r for r in rows if r.get("score", 1.0) >= score_thresh and "bbox" in r]
    names = class_names or (list(metadata.thing_classes) if metadata is not None and
                            hasattr(metadata, "thing_classes") else None)
    boxes, labels, masks, keypoints, class_ids = [], [], [], [], []
    for r in rows:
        boxes.append(BoxMode.convert(list(r["bbox"]), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        c = int(r["category_id"]) - 1
        class_ids.append(max(c, 0))
        name = names[c] if names and 0 <= c < len(names) else f"class {r['category_id']}"
        labels.append(f"{name} {100 * r.get('score', 1.0):.0f}%")
        if "segmentation" in r and isinstance(r["segmentation"], dict):
            masks.append(mask_util.decode(r["segmentation"]))
        if "keypoints" in r:
            keypoints.append(np.asarray(r["keypoints"], dtype=np.float32).reshape(-1, 3))
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale)
    out = vis.overlay_instances(
        boxes=np.array(boxes) if boxes else None,
        labels=labels or None,
        masks=masks if masks and len(masks) == len(rows) else None,
        keypoints=np.stack(keypoints) if keypoints and len(keypoints) == len(rows) else None,
        # one colour per class (Detectron2 would pick a random one per box: pictures of the same
        # results would differ from run to run)
        assigned_colors=list(class_colors(max(class_ids) + 1)[class_ids]) if class_ids else None,
    )
    return out.get_image()
