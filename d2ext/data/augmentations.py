"""Scale- and stain-robust training augmentations, the mapper that applies them, and the
controlled test-set shifts of the WBC shift benchmark.

Training recipe (``INPUT.DATASET_MAPPER_NAME: "AugmentedDatasetMapper"``): the names in
``cfg.INPUT.AUG.TRAIN`` are looked up in :data:`AUGMENTATION_REGISTRY`; each entry is a builder
``fn(cfg) -> [T.Augmentation, ...]`` and the lists are applied in order, with Detectron2's
``AugInput`` so images, sem-seg label maps, boxes and polygons move together. Builders:

================  ===========================================================================
``scale_jitter``  :class:`RandomScale`: resize by ``INPUT.AUG.BASE_SCALE`` x a factor drawn
                  log-uniformly from ``INPUT.AUG.SCALE_RANGE`` (cells 0.4x-3x their size)
``random_crop``   Detectron2 ``T.RandomCrop("absolute", INPUT.AUG.CROP_SIZE x BASE_SCALE)``
                  (no-op on smaller images)
``pad_to_crop``   :class:`RandomReflectPad`: a smaller image is mirrored out to the crop size
                  (sem-seg only; without it the batch is padded with the ignore label)
``flips``         Detectron2 ``T.RandomFlip`` horizontal and vertical (cells have no "up")
``color_jitter``  Detectron2 ``T.RandomBrightness`` / ``RandomContrast`` / ``RandomSaturation``
``hue_shift``     :class:`RandomHue` (HSV hue rotation: stains differ in hue)
``channel_gain``  :class:`RandomChannelGain` (per-channel gain: illumination / camera white balance)
``gaussian_blur`` :class:`RandomGaussianBlur` with probability ``INPUT.AUG.BLUR_PROB`` (focus)
================  ===========================================================================

``RandomHue``, ``RandomChannelGain`` and ``RandomGaussianBlur`` are ours because Detectron2 has no
hue, per-channel gain or blur augmentation, and ``RandomScale`` because ``T.ResizeScale`` scales
relative to a fixed target box, not to each image's own size (a magnification factor).

Inference (the same mapper, ``is_train=False``) resizes every image by ``INPUT.AUG.BASE_SCALE``
(1.0 = native resolution) instead of to a fixed short side, so a cell keeps the pixel size it had
in training whatever the test image's size; ``SemanticSegmentor`` / ``GeneralizedRCNN`` paste the
output back at the original size. ``INPUT.MIN_SIZE_*`` are not used by this mapper.

Shifts (:data:`SHIFTS`, :func:`shift_augmentations`, :func:`apply_shift`): fixed, seeded
transforms of a test image and its labels — zoom in x2 / x2.5 / x3 then crop back to the original
size (crop window centred, jittered by a seeded quarter of the slack), zoom out x0.5, hue +30
degrees, saturation x0.5, brightness x0.7, Gaussian blur sigma 2 — used by ``tools/benchmark.py
wbc_seg_shift``. Images there are RGB.
"""
import math
from collections import OrderedDict
from typing import Callable, List, Sequence

import numpy as np
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data import detection_utils as utils
from detectron2.utils.registry import Registry

from .mappers import DATASET_MAPPER_REGISTRY

__all__ = [
    "AUGMENTATION_REGISTRY", "build_augmentations", "AugmentedDatasetMapper",
    "RandomScale", "RandomHue", "RandomChannelGain", "RandomGaussianBlur", "JitteredCrop", "RandomReflectPad",
    "HueShiftTransform", "ChannelGainTransform", "GaussianBlurTransform", "ReflectPadTransform",
    "SHIFTS", "shift_augmentations", "apply_shift",
]

AUGMENTATION_REGISTRY = Registry("AUGMENTATION")
AUGMENTATION_REGISTRY.__doc__ = """
Training augmentations by name (``cfg.INPUT.AUG.TRAIN``). An entry is called as ``fn(cfg)`` and
returns a list of Detectron2 ``T.Augmentation``.
"""


# --------------------------------------------------------------------------------------------
# transforms (deterministic; label maps, boxes and polygons unchanged by colour transforms)
# --------------------------------------------------------------------------------------------
def _as_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8) if img.dtype != np.uint8 else img


class _PhotometricTransform(T.Transform):
    """Changes pixel values only: coordinates and segmentation pass through."""

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        return T.NoOpTransform()


class HueShiftTransform(_PhotometricTransform):
    """Rotate the HSV hue of a 3-channel uint8 image by ``delta`` turns (0.5 = 180 degrees)."""

    def __init__(self, delta: float, image_format: str = "BGR"):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        import cv2

        if self.delta == 0:
            return img
        to_hsv, from_hsv = ((cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if self.image_format == "RGB"
                            else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR))
        # float32 HSV: hue in degrees [0, 360), no 8-bit hue quantisation (2 degrees a step)
        hsv = cv2.cvtColor(_as_uint8(img).astype(np.float32) / 255.0, to_hsv)
        hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * self.delta, 360.0)
        return _as_uint8(cv2.cvtColor(hsv, from_hsv) * 255.0)


class ChannelGainTransform(_PhotometricTransform):
    """Multiply each channel by its gain (``gains`` has one value per channel), clipped to 0-255."""

    def __init__(self, gains: Sequence[float]):
        super().__init__()
        self.gains = np.asarray(gains, np.float32)

    def apply_image(self, img):
        return _as_uint8(img.astype(np.float32) * self.gains)


class ReflectPadTransform(T.Transform):
    """Pad by ``(top, bottom, left, right)`` pixels, mirroring the image (OpenCV
    ``BORDER_REFLECT_101``); label maps are mirrored the same way, so every padded pixel keeps a
    true label; coordinates shift by ``(left, top)``. For semantic segmentation: mirrored objects
    get no instance annotation."""

    def __init__(self, top: int, bottom: int, left: int, right: int):
        super().__init__()
        self._set_attributes(locals())

    def _pad(self, arr):
        import cv2

        t, b, l, r = self.top, self.bottom, self.left, self.right
        # REFLECT_101 mirrors at most size - 1 pixels at once: pad in steps on tiny images
        while t or b or l or r:
            h, w = arr.shape[:2]
            st, sb = min(t, h - 1), min(b, h - 1)
            sl, sr = min(l, w - 1), min(r, w - 1)
            if h == 1 and (t or b) or w == 1 and (l or r):  # a 1-pixel side mirrors as a copy
                arr = cv2.copyMakeBorder(arr, t, b, l, r, cv2.BORDER_REPLICATE)
                break
            arr = cv2.copyMakeBorder(arr, st, sb, sl, sr, cv2.BORDER_REFLECT_101)
            t, b, l, r = t - st, b - sb, l - sl, r - sr
        return arr

    def apply_image(self, img):
        return self._pad(np.ascontiguousarray(img))

    def apply_segmentation(self, segmentation):
        return self._pad(np.ascontiguousarray(segmentation))

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64).copy()
        coords[:, 0] += self.left
        coords[:, 1] += self.top
        return coords

    def inverse(self):
        raise NotImplementedError("ReflectPadTransform is a training augmentation")


class GaussianBlurTransform(_PhotometricTransform):
    """Gaussian blur with standard deviation ``sigma`` pixels (OpenCV picks the kernel size)."""

    def __init__(self, sigma: float):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        import cv2

        if self.sigma <= 0:
            return img
        return cv2.GaussianBlur(img, (0, 0), sigmaX=float(self.sigma), sigmaY=float(self.sigma),
                                borderType=cv2.BORDER_REFLECT_101)


# --------------------------------------------------------------------------------------------
# augmentations
# --------------------------------------------------------------------------------------------
class RandomScale(T.Augmentation):
    """Resize by ``base_scale * s``, ``s`` log-uniform in ``[min_scale, max_scale]`` (zooming in and
    out equally likely), relative to the image's own size; bilinear for the image, nearest for
    labels (Detectron2's ``ResizeTransform``)."""

    def __init__(self, min_scale: float, max_scale: float, base_scale: float = 1.0):
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"RandomScale needs 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        s = self.base_scale * math.exp(np.random.uniform(math.log(self.min_scale), math.log(self.max_scale)))
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        if (nh, nw) == (h, w):
            return T.NoOpTransform()
        return T.ResizeTransform(h, w, nh, nw)


class RandomHue(T.Augmentation):
    """Hue rotation by a uniform ``delta`` in ``[-max_delta, max_delta]`` turns."""

    def __init__(self, max_delta: float, image_format: str = "BGR"):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        return HueShiftTransform(float(np.random.uniform(-self.max_delta, self.max_delta)), self.image_format)


class RandomChannelGain(T.Augmentation):
    """Independent gain per channel, uniform in ``[min_gain, max_gain]``."""

    def __init__(self, min_gain: float, max_gain: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        channels = image.shape[2] if image.ndim == 3 else 1
        return ChannelGainTransform(np.random.uniform(self.min_gain, self.max_gain, size=channels))


class RandomGaussianBlur(T.Augmentation):
    """Gaussian blur, ``sigma`` uniform in ``[min_sigma, max_sigma]`` pixels."""

    def __init__(self, min_sigma: float, max_sigma: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        return GaussianBlurTransform(float(np.random.uniform(self.min_sigma, self.max_sigma)))


class RandomReflectPad(T.Augmentation):
    """Pad an image smaller than ``(min_height, min_width)`` up to that size by mirroring
    (:class:`ReflectPadTransform`), the image at a random place inside: a zoomed-out sample fills
    the crop with cells instead of batch padding (no pixel the loss ignores, and BatchNorm sees
    the statistics of real images)."""

    def __init__(self, min_height: int, min_width: int):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        dh, dw = max(0, self.min_height - h), max(0, self.min_width - w)
        if not dh and not dw:
            return T.NoOpTransform()
        top, left = int(np.random.randint(0, dh + 1)), int(np.random.randint(0, dw + 1))
        return ReflectPadTransform(top, dh - top, left, dw - left)


class JitteredCrop(T.Augmentation):
    """Crop ``(height, width)`` (clipped to the image) around the centre, shifted by up to
    ``jitter`` of the slack each way with a private seeded generator: the same ``seed`` gives
    the same window, independent of NumPy's global state."""

    def __init__(self, height: int, width: int, jitter: float = 0.25, seed: int = 0):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        ch, cw = min(self.height, h), min(self.width, w)
        rng = np.random.default_rng(self.seed)
        u = rng.uniform(-self.jitter, self.jitter, size=2)
        y0 = int(round((h - ch) * (0.5 + u[0])))
        x0 = int(round((w - cw) * (0.5 + u[1])))
        y0, x0 = min(max(y0, 0), h - ch), min(max(x0, 0), w - cw)
        return T.CropTransform(x0, y0, cw, ch)


# --------------------------------------------------------------------------------------------
# registered builders (cfg.INPUT.AUG.TRAIN)
# --------------------------------------------------------------------------------------------
@AUGMENTATION_REGISTRY.register()
def scale_jitter(cfg) -> List[T.Augmentation]:
    lo, hi = cfg.INPUT.AUG.SCALE_RANGE
    return [RandomScale(lo, hi, cfg.INPUT.AUG.BASE_SCALE)]


@AUGMENTATION_REGISTRY.register()
def random_crop(cfg) -> List[T.Augmentation]:
    s = cfg.INPUT.AUG.BASE_SCALE  # the crop covers the same field of view at any working scale
    return [T.RandomCrop("absolute", tuple(max(1, int(round(c * s))) for c in cfg.INPUT.AUG.CROP_SIZE))]


@AUGMENTATION_REGISTRY.register()
def pad_to_crop(cfg) -> List[T.Augmentation]:
    s = cfg.INPUT.AUG.BASE_SCALE  # the size random_crop cuts (semantic segmentation only)
    return [RandomReflectPad(*(max(1, int(round(c * s))) for c in cfg.INPUT.AUG.CROP_SIZE))]


@AUGMENTATION_REGISTRY.register()
def flips(cfg) -> List[T.Augmentation]:
    return [T.RandomFlip(0.5, horizontal=True, vertical=False), T.RandomFlip(0.5, horizontal=False, vertical=True)]


@AUGMENTATION_REGISTRY.register()
def color_jitter(cfg) -> List[T.Augmentation]:
    a = cfg.INPUT.AUG
    # RandomSaturation's grey uses RGB weights; on BGR input it swaps the R/B weights (a
    # slightly different grey), harmless for an augmentation.
    return [T.RandomBrightness(*a.BRIGHTNESS), T.RandomContrast(*a.CONTRAST), T.RandomSaturation(*a.SATURATION)]


@AUGMENTATION_REGISTRY.register()
def hue_shift(cfg) -> List[T.Augmentation]:
    return [RandomHue(cfg.INPUT.AUG.HUE_DELTA, cfg.INPUT.FORMAT)]


@AUGMENTATION_REGISTRY.register()
def channel_gain(cfg) -> List[T.Augmentation]:
    return [RandomChannelGain(*cfg.INPUT.AUG.CHANNEL_GAIN)]


@AUGMENTATION_REGISTRY.register()
def gaussian_blur(cfg) -> List[T.Augmentation]:
    return [T.RandomApply(RandomGaussianBlur(*cfg.INPUT.AUG.BLUR_SIGMA), prob=cfg.INPUT.AUG.BLUR_PROB)]


def build_augmentations(cfg, is_train: bool) -> List[T.Augmentation]:
    """Training: the builders named in ``cfg.INPUT.AUG.TRAIN`` in order (empty list: Detectron2's
    ``build_augmentation``, i.e. ResizeShortestEdge + flip). Test: resize by
    ``INPUT.AUG.BASE_SCALE`` (nothing at 1.0)."""
    if not is_train:
        s = float(cfg.INPUT.AUG.BASE_SCALE)
        return [] if s == 1.0 else [RandomScale(s, s)]
    names = list(cfg.INPUT.AUG.TRAIN)
    if not names:
        return utils.build_augmentation(cfg, True)
    augs: List[T.Augmentation] = []
    for name in names:
        augs.extend(AUGMENTATION_REGISTRY.get(name)(cfg))
    return augs


@DATASET_MAPPER_REGISTRY.register()
class AugmentedDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` (sem-seg, instances, keypoints as usual) with the
    augmentations of :func:`build_augmentations`; boxes are recomputed from masks after a crop."""

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_augmentations(cfg, is_train)
        ret["recompute_boxes"] = bool(is_train and cfg.MODEL.MASK_ON and "random_crop" in cfg.INPUT.AUG.TRAIN)
        return ret


# --------------------------------------------------------------------------------------------
# controlled shifts of a test set (tools/benchmark.py wbc_seg_shift)
# --------------------------------------------------------------------------------------------
def _zoom_in(factor: float) -> Callable[[int, int, int], List[T.Augmentation]]:
    return lambda h, w, seed: [RandomScale(factor, factor), JitteredCrop(h, w, 0.25, seed)]


# name -> fn(height, width, seed) -> augmentations or transforms (every parameter fixed; only the
# crop of the zoom-in shifts is drawn, from ``seed``). Images are RGB.
SHIFTS: "OrderedDict[str, Callable[[int, int, int], list]]" = OrderedDict([
    ("unshifted", lambda h, w, seed: []),
    ("zoom_in_x2", _zoom_in(2.0)),
    ("zoom_in_x2.5", _zoom_in(2.5)),
    ("zoom_in_x3", _zoom_in(3.0)),
    ("zoom_out_x0.5", lambda h, w, seed: [RandomScale(0.5, 0.5)]),
    ("hue_+30deg", lambda h, w, seed: [HueShiftTransform(30 / 360, "RGB")]),
    ("saturation_x0.5", lambda h, w, seed: [T.RandomSaturation(0.5, 0.5)]),
    ("brightness_x0.7", lambda h, w, seed: [T.RandomBrightness(0.7, 0.7)]),
    ("blur_sigma2", lambda h, w, seed: [GaussianBlurTransform(2.0)]),
])


def shift_augmentations(name: str, height: int, width: int, seed: int = 0) -> list:
    """The augmentations (and fixed transforms) of shift ``name`` for an image of ``height x width`` (see :data:`SHIFTS`)."""
    if name not in SHIFTS:
        raise KeyError(f"unknown shift {name!r}; known: {list(SHIFTS)}")
    return SHIFTS[name](height, width, seed)


def apply_shift(name: str, image_rgb: np.ndarray, labels: np.ndarray, seed: int = 0):
    """``(shifted RGB uint8 image, shifted label map)``; the same inputs and seed always give the
    same outputs. Labels are resized with nearest neighbour, so they keep their class ids."""
    aug_input = T.AugInput(np.ascontiguousarray(image_rgb), sem_seg=np.ascontiguousarray(labels))
    T.AugmentationList(shift_augmentations(name, *image_rgb.shape[:2], seed=seed))(aug_input)
    return _as_uint8(aug_input.image), aug_input.sem_seg
