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
"""
import logging
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from ..heads.shot_head import build_shot_head
from ..pose.features import PoseFeatureExtractor, select_main_person

__all__ = ["PoseShotClassifier", "build_keypoint_cfg", "build_keypoint_model"]

logger = logging.getLogger(__name__)
TRAIN_MODES = ("cached", "frozen_detector")


def build_keypoint_cfg(cfg):
    """The keypoint model's config: ``MODEL.POSE_SHOT.KEYPOINT_CONFIG`` (a file, or
    ``model_zoo:<path>`` inside Detectron2's model zoo) + ``KEYPOINT_OPTS``, on ``cfg``'s device,
    with ``MODEL.WEIGHTS = KEYPOINT_WEIGHTS``. None when no keypoint config is set."""
    from detectron2.config import get_cfg

    from ...config import add_d2ext_config

    p = cfg.MODEL.POSE_SHOT
    if not p.KEYPOINT_CONFIG:
        return None
    path = p.KEYPOINT_CONFIG
    if path.startswith("model_zoo:"):
        from detectron2 import model_zoo

        path = model_zoo.get_config_file(path[len("model_zoo:"):])
    kcfg = get_cfg()
    add_d2ext_config(kcfg)
    kcfg.merge_from_file(path)
    kcfg.merge_from_list(list(p.KEYPOINT_OPTS))
    kcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    kcfg.MODEL.WEIGHTS = p.KEYPOINT_WEIGHTS
    if not kcfg.MODEL.KEYPOINT_ON:
        raise ValueError(f"MODEL.POSE_SHOT.KEYPOINT_CONFIG {p.KEYPOINT_CONFIG!r} is not a keypoint model "
                         f"(MODEL.KEYPOINT_ON is False)")
    kcfg.freeze()
    return kcfg


def build_keypoint_model(kcfg) -> nn.Module:
    """Build the keypoint model of ``kcfg``, load ``kcfg.MODEL.WEIGHTS`` (random init when empty,
    with a warning) and freeze it."""
    model = build_model(kcfg)
    if kcfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(kcfg.MODEL.WEIGHTS)
    else:
        logger.warning("PoseShotClassifier: no KEYPOINT_WEIGHTS given, the keypoint model is randomly "
                       "initialised (its keypoints are noise: smoke tests only)")
    model.eval()
    model.requires_grad_(False)
    return model


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
        features = PoseFeatureExtractor(
            normalization=p.NORMALIZATION, score_threshold=p.KEYPOINT_THRESHOLD, torso_scale=p.TORSO_SCALE,
            use_joint_angles=p.JOINT_ANGLES, use_wrist_height=p.WRIST_HEIGHT,
        )
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
        k = self.features.num_keypoints
        chosen, used = [], []
        for x, (kps, boxes, scores) in zip(batched_inputs, persons):
            size = (int(x["height"]), int(x["width"])) if "height" in x else None
            i = select_main_person(kps, boxes, scores, self.person_selection, size,
                                   self.features.score_threshold, self.min_person_score)
            chosen.append(i)
            used.append(kps[i] if i >= 0 else torch.zeros((k, 3)))
        keypoints = torch.stack(used).to(self.device)
        sizes = torch.tensor([[float(x.get("height", 1)), float(x.get("width", 1))] for x in batched_inputs],
                             device=self.device)
        logits = self.head(self.features(keypoints, sizes))
        if self.training:
            if any("label" not in x for x in batched_inputs):
                raise KeyError("PoseShotClassifier training needs a 'label' in every input dict")
            labels = torch.as_tensor([int(x["label"]) for x in batched_inputs], device=self.device)
            bad = [x for x in batched_inputs if not 0 <= int(x["label"]) < logits.shape[1]]
            if bad:
                raise ValueError(f"{bad[0].get('file_name', '?')}: label {bad[0]['label']} outside the "
                                 f"{logits.shape[1]} classes of the head (MODEL.POSE_SHOT.NUM_CLASSES)")
            return {"loss_shot": F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}
        probs = F.softmax(logits, dim=1)
        return [
            {"scores": p, "pred_class": int(p.argmax()), "keypoints": kp.cpu(), "person_index": i,
             "num_persons": len(pp[0])}
            for p, kp, i, pp in zip(probs, keypoints, chosen, persons)
        ]
