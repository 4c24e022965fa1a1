"""PoseShotClassifier: a Detectron2 keypoint model feeding a pose-to-shot classifier head.

    image ──(frozen keypoint model, e.g. Keypoint R-CNN)──▶ persons (P, 17, 3)
    cached persons from the record ─────────────────────────┘
        ──▶ main person (largest box / highest score / nearest centre)
        ──▶ PoseFeatureExtractor (mid-hip origin, torso scale, joint mask, angles)  (N, D)
        ──▶ shot head (SHOT_HEAD_REGISTRY)                                         (N, K)

Inputs (from ``PoseShotDatasetMapper``), per image: ``height``, ``width``, training ``label``, and
either cached ``persons`` ``(P, 17, 3)`` with ``person_boxes`` ``(P, 4)`` XYXY and
``person_scores`` ``(P,)`` (head-only training, the default) or ``image`` ``(C, H, W)`` for the
keypoint model (``TRAIN_MODE: frozen_detector``, or records without cached keypoints). The
keypoint model is built from ``MODEL.POSE_SHOT.KEYPOINT_CONFIG``, loaded from
``KEYPOINT_WEIGHTS``, and always frozen (``eval()``, no gradients).

Outputs at inference, per image: ``{"scores": (K,) shot probabilities, "pred_class": int,
"keypoints": (17, 3) the person used (input-image pixels; zeros when none), "person_index": int
(-1 when no person was found), "num_persons": int}`` — ``scores`` is what the
``ClassificationEvaluator`` reads.

``FusedShotClassifier`` adds the image: a backbone's pooled features and the pose features go into
``FusedShotHead``; an image without a person gets the head's learned "no pose" input.
"""
import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_model
from detectron2.structures import ImageList

from ...checkpoint import SafeCheckpointer
from ..heads.shot_head import FusedShotHead, build_shot_head
from ...data.pose import build_keypoint_cfg
from ...data.pose_features import PoseFeatureExtractor, select_main_person

__all__ = ["PoseShotClassifier", "FusedShotClassifier", "build_keypoint_cfg", "build_keypoint_model"]

logger = logging.getLogger(__name__)
TRAIN_MODES = ("cached", "frozen_detector")


def build_keypoint_model(kcfg) -> nn.Module:
    """Build the keypoint model of ``kcfg``, load ``kcfg.MODEL.WEIGHTS`` (random init when empty,
    with a warning) and freeze it."""
    model = build_model(kcfg)
    if kcfg.MODEL.WEIGHTS:
        SafeCheckpointer(model, allow_partial=kcfg.MODEL.WEIGHTS_PARTIAL).load(kcfg.MODEL.WEIGHTS)
    else:
        logger.warning("PoseShotClassifier: no KEYPOINT_WEIGHTS given, the keypoint model is randomly "
                       "initialised (its keypoints are noise: smoke tests only)")
    model.eval()
    model.requires_grad_(False)
    return model


def _build_features(cfg) -> PoseFeatureExtractor:
    p = cfg.MODEL.POSE_SHOT
    return PoseFeatureExtractor(
        normalization=p.NORMALIZATION, score_threshold=p.KEYPOINT_THRESHOLD, torso_scale=p.TORSO_SCALE,
        use_joint_angles=p.JOINT_ANGLES, use_wrist_height=p.WRIST_HEIGHT,
        canonical_handedness=p.CANONICAL_HANDEDNESS,
    )


@META_ARCH_REGISTRY.register()
class PoseShotClassifier(nn.Module):
    """Shot classification from the pose of the main person (module doc)."""

    @configurable
    def __init__(self, *, head: nn.Module, features: PoseFeatureExtractor,
                 keypoint_model: Optional[nn.Module] = None, person_selection: str = "largest_box",
                 min_person_score: float = 0.0, train_mode: str = "cached", label_smoothing: float = 0.0):
        super().__init__()
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"MODEL.POSE_SHOT.TRAIN_MODE {train_mode!r}: expected one of {TRAIN_MODES}")
        if train_mode == "frozen_detector" and keypoint_model is None:
            raise ValueError("TRAIN_MODE 'frozen_detector' needs a keypoint model (MODEL.POSE_SHOT.KEYPOINT_CONFIG)")
        self.head = head
        self.features = features
        self.keypoint_model = keypoint_model
        if keypoint_model is not None:
            keypoint_model.eval()
            keypoint_model.requires_grad_(False)
        self.person_selection = person_selection
        self.min_person_score = float(min_person_score)
        self.train_mode = train_mode
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("_device_anchor", torch.zeros(0), False)

    @classmethod
    def from_config(cls, cfg):
        p = cfg.MODEL.POSE_SHOT
        features = _build_features(cfg)
        kcfg = build_keypoint_cfg(cfg)
        return {
            "head": build_shot_head(cfg, features.dim),
            "features": features,
            "keypoint_model": build_keypoint_model(kcfg) if kcfg is not None else None,
            "person_selection": p.PERSON_SELECTION,
            "min_person_score": p.MIN_PERSON_SCORE,
            "train_mode": p.TRAIN_MODE,
            "label_smoothing": p.LABEL_SMOOTHING,
        }

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def train(self, mode: bool = True):
        super().train(mode)
        if self.keypoint_model is not None:
            self.keypoint_model.eval()  # frozen: BN statistics and proposals stay in test mode
        return self

    def _persons(self, batched_inputs: List[Dict]):
        """Per image: ``(keypoints (P, 17, 3), boxes (P, 4) XYXY, scores (P,))`` on the CPU."""
        out: List = [None] * len(batched_inputs)
        need = [i for i, x in enumerate(batched_inputs) if "persons" not in x]
        for i, x in enumerate(batched_inputs):
            if "persons" in x:
                kps = x["persons"].float().cpu()
                boxes = x.get("person_boxes", torch.zeros((len(kps), 4))).float().cpu()
                scores = x.get("person_scores", torch.ones(len(kps))).float().cpu()
                out[i] = (kps, boxes, scores)
        if need:
            if self.keypoint_model is None:
                name = batched_inputs[need[0]].get("file_name", "?")
                raise ValueError(f"{name}: no cached 'persons' and no keypoint model "
                                 f"(set MODEL.POSE_SHOT.KEYPOINT_CONFIG or attach keypoints to the records)")
            if self.training and self.train_mode == "cached":
                name = batched_inputs[need[0]].get("file_name", "?")
                raise ValueError(f"{name}: TRAIN_MODE 'cached' but the record has no cached keypoints; run "
                                 f"tools/extract_keypoints.py and attach them, or use TRAIN_MODE frozen_detector")
            with torch.no_grad():
                results = self.keypoint_model([batched_inputs[i] for i in need])
            for i, r in zip(need, results):
                inst = r["instances"].to("cpu")
                if inst.has("pred_keypoints"):
                    out[i] = (inst.pred_keypoints.float(), inst.pred_boxes.tensor.float(), inst.scores.float())
                else:  # no detection at all
                    out[i] = (torch.zeros((0, self.features.num_keypoints, 3)), torch.zeros((0, 4)), torch.zeros(0))
        return out

    def forward(self, batched_inputs: List[Dict]):
        persons = self._persons(batched_inputs)
        keypoints, chosen = _main_persons(batched_inputs, persons, self.person_selection, self.features,
                                          self.min_person_score, self.device)
        sizes = _image_sizes(batched_inputs, self.device)
        logits = self.head(self.features(keypoints, sizes))
        if self.training:
            return {"loss_shot": _shot_loss(logits, batched_inputs, self.label_smoothing, type(self).__name__)}
        probs = F.softmax(logits, dim=1)
        return [
            {"scores": p, "pred_class": int(p.argmax()), "keypoints": kp.cpu(), "person_index": i,
             "num_persons": len(pp[0])}
            for p, kp, i, pp in zip(probs, keypoints, chosen, persons)
        ]


def _main_persons(batched_inputs, persons, selection, features, min_score, device):
    """The batsman of each image: ``(keypoints (N, K, 3) on device, zeros where none; chosen
    person index per image, -1 where none)``."""
    k = features.num_keypoints
    chosen, used = [], []
    for x, (kps, boxes, scores) in zip(batched_inputs, persons):
        size = (int(x["height"]), int(x["width"])) if "height" in x else None
        i = select_main_person(kps, boxes, scores, selection, size, features.score_threshold, min_score)
        chosen.append(i)
        used.append(kps[i] if i >= 0 else torch.zeros((k, 3)))
    return torch.stack(used).to(device), chosen


def _image_sizes(batched_inputs, device):
    return torch.tensor([[float(x.get("height", 1)), float(x.get("width", 1))] for x in batched_inputs],
                        device=device)


def _shot_loss(logits, batched_inputs, label_smoothing, name):
    if any("label" not in x for x in batched_inputs):
        raise KeyError(f"{name} training needs a 'label' in every input dict")
    bad = [x for x in batched_inputs if not 0 <= int(x["label"]) < logits.shape[1]]
    if bad:
        raise ValueError(f"{bad[0].get('file_name', '?')}: label {bad[0]['label']} outside the "
                         f"{logits.shape[1]} classes of the head (MODEL.POSE_SHOT.NUM_CLASSES)")
    labels = torch.as_tensor([int(x["label"]) for x in batched_inputs], device=logits.device)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


@META_ARCH_REGISTRY.register()
class FusedShotClassifier(nn.Module):
    """Shot classification from the batsman's pose *and* the image (module doc of FusedShotHead).

    Inputs (``FusedShotDatasetMapper``), per image: ``image (C, H, W)`` in ``INPUT.FORMAT``
    (0-255), cached ``persons (P, 17, 3)`` / ``person_boxes`` / ``person_scores`` (P may be 0: no
    person found), ``height``, ``width`` (of the original image, for person selection) and, in
    training, ``label``. Image features: ``backbone(image)[in_feature]`` averaged over space,
    ``(N, C)``. Pose features: the main person through :class:`PoseFeatureExtractor` (with the
    config's handedness canonicalisation), or the head's learned "no pose" input when there is
    no person. Inference output per image: ``{"scores", "pred_class", "keypoints" (17, 3),
    "person_index" (-1: no pose), "num_persons"}``, as ``PoseShotClassifier``.
    """

    @configurable
    def __init__(self, *, backbone: Backbone, head: nn.Module, features: PoseFeatureExtractor, in_feature: str,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float], person_selection: str = "largest_box",
                 min_person_score: float = 0.0, label_smoothing: float = 0.0):
        super().__init__()
        if in_feature not in backbone.output_shape():
            raise ValueError(f"FusedShotClassifier reads backbone feature {in_feature!r}, but the backbone "
                             f"outputs {sorted(backbone.output_shape())}")
        self.backbone = backbone
        self.head = head
        self.features = features
        self.in_feature = in_feature
        self.person_selection = person_selection
        self.min_person_score = float(min_person_score)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        p = cfg.MODEL.POSE_SHOT
        features = _build_features(cfg)
        backbone = build_backbone(cfg)
        in_feature = p.FUSION.IN_FEATURE
        if in_feature not in backbone.output_shape():
            raise ValueError(f"MODEL.POSE_SHOT.FUSION.IN_FEATURE {in_feature!r}: {cfg.MODEL.BACKBONE.NAME} "
                             f"outputs {sorted(backbone.output_shape())} (set its OUT_FEATURES)")
        image_dim = backbone.output_shape()[in_feature].channels
        return {
            "backbone": backbone,
            "head": FusedShotHead(cfg, features.dim, image_dim),
            "features": features,
            "in_feature": in_feature,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "person_selection": p.PERSON_SELECTION,
            "min_person_score": p.MIN_PERSON_SCORE,
            "label_smoothing": p.LABEL_SMOOTHING,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict]):
        k = self.features.num_keypoints
        persons = []
        for x in batched_inputs:
            kps = x.get("persons", torch.zeros((0, k, 3))).float().cpu()
            persons.append((kps, x.get("person_boxes", torch.zeros((len(kps), 4))).float().cpu(),
                            x.get("person_scores", torch.ones(len(kps))).float().cpu()))
        keypoints, chosen = _main_persons(batched_inputs, persons, self.person_selection, self.features,
                                          self.min_person_score, self.device)
        has_pose = torch.tensor([i >= 0 for i in chosen], device=self.device)
        pose = self.features(keypoints, _image_sizes(batched_inputs, self.device))
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        image_feats = self.backbone(images.tensor)[self.in_feature].mean(dim=(2, 3))
        logits = self.head(pose, has_pose, image_feats)
        if self.training:
            return {"loss_shot": _shot_loss(logits, batched_inputs, self.label_smoothing, type(self).__name__)}
        probs = F.softmax(logits, dim=1)
        return [
            {"scores": p, "pred_class": int(p.argmax()), "keypoints": kp.cpu(), "person_index": i,
             "num_persons": len(pp[0])}
            for p, kp, i, pp in zip(probs, keypoints, chosen, persons)
        ]
