"""R-CNN (Girshick et al. 2014): region proposals -> warped crops -> CNN features -> one linear SVM
per class -> class-specific bounding-box regression -> NMS.

Three stages, as in the paper:

1. Proposals: selective search, fast mode, capped (``tools/proposals.py``, cached per image and
   written as a Detectron2 proposal file; read through ``MODEL.LOAD_PROPOSALS``).
2. Fine-tuning: the CNN classifies warped proposals into ``num_classes + 1`` (IoU >= 0.5 with a
   ground-truth box = that class, else background; 25% positives per batch) — this is
   :class:`PatchDetector` training with ``PATCHES "proposals"``, run by ``tools/train_net.py``.
3. SVMs and box regression (``tools/train_rcnn_svm.py``): features of the fine-tuned network (the
   input of its last layer, the paper's fc7) for ground-truth boxes (positives) and proposals with
   IoU < 0.3 (negatives), one ``LinearSVC`` per class with hard-negative mining
   (:func:`train_svm_hard_negatives`); ridge regression from the same features to Detectron2's
   ``Box2BoxTransform`` deltas of proposals with IoU >= 0.6 (:func:`fit_box_regressor`; the
   paper regresses from pool5 features with lambda 1000). The results are stored in this model's
   buffers and saved in its checkpoint, so ``tools/train_net.py --eval-only`` evaluates it.

Until the SVM stage has run (``svm_trained`` is 0), inference scores crops with the fine-tuned
softmax, which the paper reports as the weaker option (its Sec. B).
"""
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransform

from .patch_detector import PatchDetector

__all__ = ["RCNNClassic", "train_svm_hard_negatives", "fit_box_regressor", "FEATURE_NORM"]

#: features are scaled so their mean L2 norm is 20 before the SVMs (Girshick et al. 2014, code).
FEATURE_NORM = 20.0


def train_svm_hard_negatives(pos: np.ndarray, neg: np.ndarray, C: float = 0.001, rounds: int = 3,
                             first_negatives: int = 2000, seed: int = 0) -> Tuple[np.ndarray, float]:
    """One linear SVM (scikit-learn ``LinearSVC``, hinge loss) with hard-negative mining.

    Starts from all positives and ``first_negatives`` random negatives; after each fit, the
    negatives the SVM scores above -1 (inside the margin or wrong: "hard") join the training
    set, and it is fitted again — ``rounds`` fits in all, stopping early when none are new.
    Returns ``(w (D,), b)``; ``w @ x + b > 0`` means the class.
    """
    from sklearn.svm import LinearSVC

    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"an SVM needs positives and negatives, got {len(pos)} and {len(neg)}")
    rng = np.random.default_rng(seed)
    active = np.zeros(len(neg), dtype=bool)
    active[rng.permutation(len(neg))[:first_negatives]] = True
    svm = None
    for _ in range(max(1, rounds)):
        x = np.concatenate([pos, neg[active]])
        y = np.concatenate([np.ones(len(pos)), np.zeros(int(active.sum()))])
        svm = LinearSVC(C=C, loss="hinge", dual=True, max_iter=20000, random_state=seed).fit(x, y)
        hard = (svm.decision_function(neg) > -1.0) & ~active
        if not hard.any():
            break
        active |= hard
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


def fit_box_regressor(features: np.ndarray, deltas: np.ndarray, lam: float = 1000.0):
    """Ridge regression ``deltas ~ W @ x + b`` (``W (4, D)``, ``b (4,)``), penalty ``lam``."""
    from sklearn.linear_model import Ridge

    reg = Ridge(alpha=lam).fit(np.asarray(features, np.float64), np.asarray(deltas, np.float64))
    return reg.coef_.astype(np.float32), reg.intercept_.astype(np.float32)


@META_ARCH_REGISTRY.register()
class RCNNClassic(PatchDetector):
    """R-CNN on a d2ext backbone. Same inputs/outputs as :class:`PatchDetector` (proposals needed).

    Buffers (in the checkpoint): ``svm_weight (K, D)``, ``svm_bias (K,)``, ``bbox_weight
    (K, 4, D)``, ``bbox_bias (K, 4)``, ``feature_scale ()``, ``svm_trained ()``.
    """

    @configurable
    def __init__(self, *, feature_dim: int, **kwargs):
        super().__init__(**kwargs)
        k = self.num_classes
        self.register_buffer("svm_weight", torch.zeros(k, feature_dim))
        self.register_buffer("svm_bias", torch.zeros(k))
        self.register_buffer("bbox_weight", torch.zeros(k, 4, feature_dim))
        self.register_buffer("bbox_bias", torch.zeros(k, 4))
        self.register_buffer("feature_scale", torch.tensor(1.0))
        self.register_buffer("svm_trained", torch.tensor(0))
        # deltas as in Fast R-CNN's box head (dx, dy, dw, dh), unweighted as in the R-CNN paper
        self.box2box = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))

    @classmethod
    def from_config(cls, cfg):
        ret = PatchDetector.from_config(cfg)
        if ret["patches"] != "proposals":
            raise ValueError("RCNNClassic scores region proposals: set MODEL.PATCH_DETECTOR.PATCHES "
                             "'proposals' (and MODEL.LOAD_PROPOSALS True)")
        ret["feature_dim"] = ret["head"].cls_score.in_features
        return ret

    def load_svm_stage(self, svm_weight, svm_bias, bbox_weight, bbox_bias, feature_scale) -> None:
        """Install the stage-3 results (arrays as returned by the fitting functions, per class)."""
        dev = self.device
        self.svm_weight.copy_(torch.as_tensor(np.asarray(svm_weight), device=dev))
        self.svm_bias.copy_(torch.as_tensor(np.asarray(svm_bias), device=dev))
        self.bbox_weight.copy_(torch.as_tensor(np.asarray(bbox_weight), device=dev))
        self.bbox_bias.copy_(torch.as_tensor(np.asarray(bbox_bias), device=dev))
        self.feature_scale.fill_(float(feature_scale))
        self.svm_trained.fill_(1)

    def forward(self, batched_inputs):
        if self.training:
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        boxes = [self.candidate_boxes(x, s) for x, s in zip(batched_inputs, images.image_sizes)]
        logits, feats = self.crop_logits_and_features(images, boxes)
        if int(self.svm_trained) == 0:
            scores = F.softmax(logits, dim=1)[:, : self.num_classes]
            return self.postprocess(batched_inputs, images, boxes, scores.split([len(b) for b in boxes]))
        feats = feats * self.feature_scale
        # SVM margins through a sigmoid: same ranking, scores in (0, 1) like other detectors
        scores = torch.sigmoid(feats @ self.svm_weight.T + self.svm_bias)
        deltas = torch.einsum("nd,kcd->nkc", feats, self.bbox_weight) + self.bbox_bias  # (N, K, 4)
        all_boxes = torch.cat(boxes)
        k = self.num_classes
        regressed = self.box2box.apply_deltas(
            deltas.reshape(-1, 4), all_boxes.unsqueeze(1).expand(-1, k, 4).reshape(-1, 4)
        ).reshape(-1, k, 4)
        counts = [len(b) for b in boxes]
        return self.postprocess(batched_inputs, images, boxes, scores.split(counts),
                                class_boxes=regressed.split(counts))
