"""Keypoint backends: one interface, several pose models, the same COCO keypoint output.

A backend is built by name from :data:`KEYPOINT_BACKEND_REGISTRY` (``build_keypoint_backend(name,
**options)``) and called on an image file::

    height, width, persons, attempt = backend(file_name)

``persons`` is a list of COCO results without ids, best first: ``{"category_id": 1, "score",
"bbox": [x, y, w, h], "keypoints": [x, y, s] * 17}`` in COCO order, ``x, y`` COCO pixel indices
(pixel centre = integer), ``s`` the keypoint's score; ``attempt`` names the input that gave the
persons (``"original"``, ``"pad25"``, ...; None when nobody was found). ``backend.info()`` is
what ``tools/extract_keypoints.py`` records in its output.

Backends:

* ``"detectron2"``: any Detectron2 keypoint model (a config with the user-given weights; the
  tool accepts ``model_zoo:...`` configs), several persons per image; ``s`` is Detectron2's
  keypoint score.
* ``"mediapipe"``: MediaPipe BlazePose (Bazarevsky et al. 2020), the legacy
  ``mediapipe.solutions.pose`` API of ``mediapipe==0.10.14``, whose wheel bundles the detector and
  the "full" landmark model, so nothing is downloaded (``make setup-pose``). One person per
  image. Its 33 landmarks are mapped to the 17 COCO keypoints (:data:`BLAZEPOSE_TO_COCO`);
  ``s`` is BlazePose's landmark visibility (0..1) and the person ``score`` the mean of the 17.
  When no person is found in the image as given, the backend tries again on copies with a
  constant border (``pad25``: 25 % of the long side on each side, then ``pad50``): BlazePose's
  detector misses people who fill the frame or touch its edges, and a border shrinks them
  inside the detector's 224 x 224 input. Coordinates are mapped back to the original image.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.utils.registry import Registry

from converters.coco_keypoints import COCO_PERSON_KEYPOINT_NAMES

__all__ = ["KEYPOINT_BACKEND_REGISTRY", "BLAZEPOSE_LANDMARK_NAMES", "BLAZEPOSE_TO_COCO", "MEDIAPIPE_ATTEMPTS",
           "build_keypoint_backend", "mediapipe_available", "blazepose_to_coco", "Detectron2Backend",
           "MediaPipeBackend"]

KEYPOINT_BACKEND_REGISTRY = Registry("KEYPOINT_BACKEND")
KEYPOINT_BACKEND_REGISTRY.__doc__ = """
Registry of keypoint backends (module doc): ``cls(**options)`` is callable on an image file and
returns ``(height, width, persons, attempt)``.
"""

#: BlazePose's 33 landmarks in model output order (``mediapipe.solutions.pose.PoseLandmark``,
#: lower-cased). "left" is the person's left, as in COCO.
BLAZEPOSE_LANDMARK_NAMES: Tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)
#: ``coco[k] = blazepose[BLAZEPOSE_TO_COCO[k]]``: the 17 COCO keypoints are BlazePose landmarks of
#: the same name (COCO's eyes are BlazePose's eye centres, not the inner/outer corners).
BLAZEPOSE_TO_COCO: Tuple[int, ...] = tuple(BLAZEPOSE_LANDMARK_NAMES.index(n) for n in COCO_PERSON_KEYPOINT_NAMES)
#: Inputs the MediaPipe backend tries in turn until a person is found: (name, border fraction).
MEDIAPIPE_ATTEMPTS: Tuple[Tuple[str, float], ...] = (("original", 0.0), ("pad25", 0.25), ("pad50", 0.5))


def mediapipe_available() -> bool:
    """Whether ``mediapipe``'s pose solution imports (``make setup-pose`` installs it)."""
    try:
        from mediapipe.python.solutions import pose  # noqa: F401
    except Exception:  # ImportError, or a protobuf runtime it cannot use
        return False
    return True


def blazepose_to_coco(landmarks: np.ndarray, height: int, width: int) -> Dict:
    """BlazePose ``(33, 4)`` normalised landmarks ``(x, y, z, visibility)`` (x, y in 0..1 of the
    image) -> one COCO result (module doc): pixel coordinates, the 17 COCO keypoints in COCO order
    with their visibility as score, person score = mean visibility, box = extent of the 33
    landmarks clipped to the image."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (len(BLAZEPOSE_LANDMARK_NAMES), 4):
        raise ValueError(f"expected ({len(BLAZEPOSE_LANDMARK_NAMES)}, 4) BlazePose landmarks, got {lm.shape}")
    # normalised image coordinates are continuous (0 = left edge); COCO keypoints are pixel indices
    xy = lm[:, :2] * [width, height] - 0.5
    vis = np.clip(lm[:, 3], 0.0, 1.0)
    coco = np.concatenate([xy[list(BLAZEPOSE_TO_COCO)], vis[list(BLAZEPOSE_TO_COCO), None]], axis=1)
    x0, y0 = np.clip(xy.min(0), 0, [width - 1, height - 1])
    x1, y1 = np.clip(xy.max(0), 0, [width - 1, height - 1])
    return {"category_id": 1, "score": round(float(coco[:, 2].mean()), 5),
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "keypoints": [round(float(v), 3) for v in coco.reshape(-1)]}


def _read_rgb(file_name: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, EXIF orientation applied (as Detectron2's ``read_image``)."""
    from PIL import Image, ImageOps

    with Image.open(file_name) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


@KEYPOINT_BACKEND_REGISTRY.register()
class MediaPipeBackend:
    """MediaPipe BlazePose (module doc). ``min_detection_confidence`` is BlazePose's detector
    threshold (MediaPipe's default 0.5); ``attempts`` the inputs tried in turn."""

    name = "mediapipe"

    def __init__(self, min_detection_confidence: float = 0.5,
                 attempts: Sequence[Tuple[str, float]] = MEDIAPIPE_ATTEMPTS):
        try:
            from mediapipe.python.solutions import pose as mp_pose
        except Exception as e:
            raise RuntimeError(f"keypoint backend 'mediapipe' needs mediapipe==0.10.14: run `make setup-pose` "
                               f"({type(e).__name__}: {e})") from None
        import mediapipe

        # static_image_mode: every photo on its own (no tracking between images); complexity 1 is
        # the "full" landmark model, the one the wheel bundles (0 and 2 would be downloaded)
        self._pose = mp_pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                                  min_detection_confidence=float(min_detection_confidence))
        self.min_detection_confidence = float(min_detection_confidence)
        self.attempts = tuple((str(n), float(f)) for n, f in attempts)
        self.version = mediapipe.__version__

    def info(self) -> Dict:
        return {"backend": self.name, "mediapipe": self.version, "model": "BlazePose full (pose_landmark_full)",
                "min_detection_confidence": self.min_detection_confidence,
                "attempts": [{"name": n, "border": f} for n, f in self.attempts],
                "keypoint_score": "BlazePose landmark visibility", "person_score": "mean keypoint visibility"}

    def detect_array(self, image: np.ndarray) -> Tuple[List[Dict], Optional[str]]:
        """``(H, W, 3)`` uint8 RGB -> ``(persons, attempt)`` (module doc)."""
        h, w = image.shape[:2]
        for name, border in self.attempts:
            pad = int(round(border * max(h, w)))
            inp = image if pad == 0 else np.pad(image, ((pad, pad), (pad, pad), (0, 0)), constant_values=114)
            res = self._pose.process(np.ascontiguousarray(inp))
            if res.pose_landmarks is None:
                continue
            lm = np.array([[p.x, p.y, p.z, p.visibility] for p in res.pose_landmarks.landmark])
            if pad:  # back to the original image's normalised coordinates
                ph, pw = inp.shape[:2]
                lm[:, 0] = (lm[:, 0] * pw - pad) / w
                lm[:, 1] = (lm[:, 1] * ph - pad) / h
            return [blazepose_to_coco(lm, h, w)], name
        return [], None

    def __call__(self, file_name: str):
        image = _read_rgb(file_name)
        persons, attempt = self.detect_array(image)
        return image.shape[0], image.shape[1], persons, attempt

    def close(self):
        self._pose.close()


@KEYPOINT_BACKEND_REGISTRY.register()
class Detectron2Backend:
    """A Detectron2 keypoint model: ``cfg`` (built by the caller, e.g. ``setup_cfg`` of a model-zoo
    config with the user-given ``MODEL.WEIGHTS``); keeps persons with ``score >= min_score``, at
    most ``max_persons``, best first."""

    name = "detectron2"

    def __init__(self, cfg, min_score: float = 0.0, max_persons: int = 10):
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        from ...checkpoint import SafeCheckpointer

        if not cfg.MODEL.KEYPOINT_ON:
            raise ValueError("keypoint backend 'detectron2': the config is not a keypoint model "
                             "(MODEL.KEYPOINT_ON is False)")
        self.model = build_model(cfg)
        self.model.eval()
        SafeCheckpointer(self.model, allow_partial=cfg.MODEL.WEIGHTS_PARTIAL).load(cfg.MODEL.WEIGHTS)
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.format = cfg.INPUT.FORMAT
        self.weights = cfg.MODEL.WEIGHTS
        self.min_score, self.max_persons = float(min_score), int(max_persons)

    def info(self) -> Dict:
        return {"backend": self.name, "weights": self.weights}

    def __call__(self, file_name: str):
        import torch
        from detectron2.data import detection_utils as utils

        image = utils.read_image(file_name, format=self.format)
        h, w = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        inp = {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": h, "width": w}
        with torch.no_grad():
            inst = self.model([inp])[0]["instances"].to("cpu")
        persons = []
        for k in torch.argsort(inst.scores, descending=True)[:self.max_persons].tolist():
            score = float(inst.scores[k])
            if score < self.min_score:
                continue
            x0, y0, x1, y1 = [float(v) for v in inst.pred_boxes.tensor[k]]
            kp = inst.pred_keypoints[k].clone()
            kp[:, :2] -= 0.5  # Detectron2 continuous coordinates -> COCO pixel indices
            persons.append({"category_id": 1, "score": round(score, 5),
                            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                            "keypoints": [round(float(v), 3) for v in kp.flatten()]})
        return h, w, persons, ("original" if persons else None)


_NAMES = {"mediapipe": "MediaPipeBackend", "detectron2": "Detectron2Backend"}


def build_keypoint_backend(name: str, **options):
    """The backend ``name`` (``"detectron2"`` or ``"mediapipe"``, or a registered class name)."""
    cls_name = _NAMES.get(name, name)
    if cls_name not in KEYPOINT_BACKEND_REGISTRY:
        raise KeyError(f"keypoint backend {name!r}: expected one of {list(_NAMES)}")
    return KEYPOINT_BACKEND_REGISTRY.get(cls_name)(**options)
