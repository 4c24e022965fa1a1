"""Classical segmentation baselines (OpenCV), scored by the same metrics as the networks.

Both methods map intensity to classes by one documented rule, **darker = higher class id**: in
bright-field microscopy of stained cells the background is brightest, cytoplasm darker and the
nucleus darkest, so with K classes class 0 is the brightest group and class K-1 the darkest.

- :func:`otsu_labels`: Otsu (1979) on the grey image gives threshold t1; for K = 3 a second
  Otsu threshold t2 is taken over the pixels <= t1 (multi-level by recursion on the dark side).
- :func:`kmeans_labels`: k-means (k = K) on the BGR colour of every pixel (OpenCV, k-means++
  init, seeded); clusters are ranked by the grey value of their centre.
"""
import logging
from typing import Dict, Optional

import cv2
import numpy as np
from detectron2.data import DatasetCatalog
from tqdm import tqdm

from .segmentation import SegmentationMetricsEvaluator

__all__ = ["otsu_labels", "kmeans_labels", "CLASSICAL_METHODS", "evaluate_classical"]

logger = logging.getLogger(__name__)


def _grey(image_bgr: np.ndarray) -> np.ndarray:
    return image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)


def otsu_labels(image_bgr: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """``(H, W, 3)`` uint8 BGR -> ``(H, W)`` uint8 labels in ``[0, num_classes)`` by repeated
    Otsu thresholding; darker pixels get higher ids."""
    if num_classes < 2:
        raise ValueError(f"otsu_labels needs num_classes >= 2, got {num_classes}")
    grey = _grey(image_bgr)
    labels = np.zeros(grey.shape, np.uint8)
    dark = np.ones(grey.shape, bool)
    for cls in range(1, num_classes):
        values = grey[dark]
        if values.size == 0:
            break
        # cv2.threshold's Otsu needs an image; a 1-row view of the remaining pixels works.
        t, _ = cv2.threshold(values.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        dark = dark & (grey <= t)
        labels[dark] = cls
    return labels


def kmeans_labels(image_bgr: np.ndarray, num_classes: int = 2, seed: int = 0, attempts: int = 3) -> np.ndarray:
    """``(H, W, 3)`` uint8 BGR -> ``(H, W)`` uint8 labels: k-means colour clusters ranked from
    brightest (0) to darkest (``num_classes - 1``) centre."""
    pixels = image_bgr.reshape(-1, image_bgr.shape[-1] if image_bgr.ndim == 3 else 1).astype(np.float32)
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 0.5)
    _, assign, centres = cv2.kmeans(pixels, num_classes, None, criteria, attempts, cv2.KMEANS_PP_CENTERS)
    if centres.shape[1] == 3:  # grey value of each BGR centre (ITU-R BT.601 weights)
        brightness = centres @ np.array([0.114, 0.587, 0.299], np.float32)
    else:
        brightness = centres[:, 0]
    rank = np.empty(num_classes, np.uint8)
    rank[np.argsort(-brightness)] = np.arange(num_classes, dtype=np.uint8)
    return rank[assign.reshape(-1)].reshape(image_bgr.shape[:2])


CLASSICAL_METHODS = {"otsu": otsu_labels, "kmeans": kmeans_labels}


def evaluate_classical(dataset_name: str, method: str, output_dir: Optional[str] = None,
                       num_vis: int = 4) -> Dict[str, float]:
    """Run ``method`` ("otsu" or "kmeans") on every image of a sem-seg dataset and return the
    :class:`SegmentationMetricsEvaluator` results (``{"mIoU", "mDice", "fgDice", "pACC", ...}``)."""
    if method not in CLASSICAL_METHODS:
        raise KeyError(f"unknown classical method {method!r}; known: {sorted(CLASSICAL_METHODS)}")
    fn = CLASSICAL_METHODS[method]
    evaluator = SegmentationMetricsEvaluator(dataset_name, output_dir, distributed=False, num_vis=num_vis)
    num_classes = evaluator.num_classes
    for d in tqdm(DatasetCatalog.get(dataset_name), desc=f"{method} on {dataset_name}", leave=False):
        image = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"{d['file_name']}: OpenCV cannot read this image")
        evaluator.process([d], [fn(image, num_classes)])
    return evaluator.evaluate()["sem_seg"]
