"""Run a trained model on image files and turn its outputs into COCO-format result rows.

Used by ``tools/predict.py``, ``tools/visualize_predictions.py`` and the demo. Images go through
the same test-time dataset mapper as evaluation (``build_dataset_mapper(cfg, False)``), so a
prediction on a file equals what the evaluator saw for it.
"""
import os
from typing import Dict, Iterable, List

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from PIL import Image

from ..checkpoint import SafeCheckpointer
from ..data import build_dataset_mapper
from ..modeling.test_time_augmentation import with_test_time_augmentation

__all__ = ["Predictor", "outputs_to_coco_results", "list_images", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(paths: Iterable[str]) -> List[str]:
    """Expand files and folders (recursively, sorted) into a list of image files."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, files in sorted(os.walk(p)):
                out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p!r} does not exist")
    return out


class Predictor:
    """``Predictor(cfg)(file_name) -> dict`` of model outputs (on CPU), weights from MODEL.WEIGHTS."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            SafeCheckpointer(self.model, allow_partial=cfg.MODEL.WEIGHTS_PARTIAL).load(cfg.MODEL.WEIGHTS)
        self.model = with_test_time_augmentation(self.cfg, self.model)  # TEST.AUG.* (sem-seg)
        self.mapper = build_dataset_mapper(self.cfg, False)
        names = cfg.DATASETS.TEST or cfg.DATASETS.TRAIN
        self.metadata = MetadataCatalog.get(names[0]) if names else None

    @torch.no_grad()
    def __call__(self, file_name: str) -> Dict:
        with Image.open(file_name) as im:
            width, height = im.size
        record = {"file_name": file_name, "image_id": os.path.basename(file_name),
                  "height": height, "width": width}
        inputs = self.mapper(record)
        return {k: v.to("cpu") if hasattr(v, "to") else v for k, v in self.model([inputs])[0].items()}


def _category_id_map(metadata):
    """contiguous id -> dataset (1-based COCO) id."""
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) if metadata else None
    if mapping:
        inv = {v: k for k, v in mapping.items()}
        return lambda c: int(inv[c])
    return lambda c: int(c) + 1


def outputs_to_coco_results(outputs: Dict, image_id, metadata=None, top_k: int = 5) -> List[Dict]:
    """COCO result rows for one image: detection (``instances``) or classification outputs.

    Detection rows: ``{"image_id", "category_id" (1-based), "bbox" XYWH, "score"}`` plus
    ``segmentation`` (RLE) / ``keypoints`` when the model predicts them. Classification rows
    (``scores`` of shape (K,)): the top-k ``{"image_id", "category_id", "score"}``.
    """
    to_id = _category_id_map(metadata)
    rows = []
    if "instances" in outputs:
        inst = outputs["instances"]
        boxes = BoxMode.convert(inst.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        for k in range(len(inst)):
            row = {"image_id": image_id, "category_id": to_id(int(inst.pred_classes[k])),
                   "bbox": [round(float(v), 2) for v in boxes[k]], "score": float(inst.scores[k])}
            if inst.has("pred_masks"):
                rle = mask_util.encode(np.asfortranarray(inst.pred_masks[k].numpy().astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("utf-8")
                row["segmentation"] = rle
            if inst.has("pred_keypoints"):
                kp = inst.pred_keypoints[k].numpy().copy()
                row["keypoints"] = [round(float(v), 2) for v in kp.flatten()]
            rows.append(row)
    elif "scores" in outputs:
        scores = torch.as_tensor(outputs["scores"]).flatten()
        k = min(top_k, scores.numel())
        vals, idx = scores.topk(k)
        rows = [{"image_id": image_id, "category_id": to_id(int(i)), "score": float(v)}
                for v, i in zip(vals, idx)]
    else:
        raise ValueError(f"don't know how to write outputs with keys {sorted(outputs)} as COCO results")
    return rows
