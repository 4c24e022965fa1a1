"""Training augmentations (d2ext.data.augmentations): labels move with the pixels and keep their
class ids, photometric ones leave labels alone, and the test-time scale rule."""
import numpy as np
import pytest
from PIL import Image

from d2ext.config import add_d2ext_config
from d2ext.data import build_dataset_mapper
from d2ext.data.augmentations import (AUGMENTATION_REGISTRY, ChannelGainTransform, HueShiftTransform,
                                      RandomScale, build_augmentations)
from detectron2.config import get_cfg

GEOMETRIC = ["scale_jitter", "random_crop", "pad_to_crop", "flips"]
PHOTOMETRIC = ["color_jitter", "hue_shift", "channel_gain", "gaussian_blur"]
LEVELS = (230, 150, 60)  # grey of background / cytoplasm / nucleus: darker = higher class id


def _cell_case(tmp_path, coloured=False):
    """64x80 image of one off-centre cell: label 1 = a disc, 2 = a smaller disc inside it; the
    image is the grey level of each class (purple-ish when ``coloured``)."""
    yy, xx = np.mgrid[:64, :80]
    labels = np.zeros((64, 80), np.uint8)
    labels[(yy - 24) ** 2 + (xx - 26) ** 2 <= 15 ** 2] = 1
    labels[(yy - 22) ** 2 + (xx - 24) ** 2 <= 7 ** 2] = 2
    grey = np.array(LEVELS, np.uint8)[labels]
    image = np.stack([grey, grey, grey], -1)
    if coloured:
        image[labels > 0] = [120, 60, 160]
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(labels).save(tmp_path / "lab.png")
    record = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "lab.png"),
              "height": 64, "width": 80, "image_id": 0}
    return record, labels, image


def _cfg(names, **aug):
    cfg = get_cfg()
    add_d2ext_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "AugmentedDatasetMapper"
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.AUG.TRAIN = list(names)
    cfg.INPUT.AUG.CROP_SIZE = (48, 48)
    for k, v in aug.items():
        setattr(cfg.INPUT.AUG, k, v)
    return cfg


def _labels_from_pixels(image_chw):
    grey = image_chw.float().mean(0).numpy()
    return np.where(grey < 105, 2, np.where(grey < 190, 1, 0))


def test_registry_holds_the_recipe():
    for name in GEOMETRIC + PHOTOMETRIC:
        assert name in AUGMENTATION_REGISTRY


@pytest.mark.parametrize("names", [[n] for n in GEOMETRIC] + [GEOMETRIC])
def test_geometric_augmentations_move_labels_with_pixels(tmp_path, names):
    record, labels, _ = _cell_case(tmp_path)
    mapper = build_dataset_mapper(_cfg(names), True)
    sizes = set()
    for seed in range(6):
        np.random.seed(seed)
        out = mapper(dict(record))
        sem = out["sem_seg"].numpy()
        assert out["image"].shape[1:] == sem.shape
        assert set(np.unique(sem)) <= {0, 1, 2}  # nearest-neighbour: no new class ids
        agree = (_labels_from_pixels(out["image"]) == sem).mean()
        assert agree > 0.97, (names, seed, agree)
        sizes.add(sem.shape)
        if names in (["flips"], ["random_crop"]):
            # a label that did not move with the pixels would be caught: the cell is off-centre
            assert (_labels_from_pixels(out["image"]) == sem[::-1, ::-1]).mean() < 0.9
    if names == ["scale_jitter"]:
        assert len(sizes) > 1  # the scale changes
    if names in (["random_crop"], GEOMETRIC):
        assert sizes == {(48, 48)}  # cropped when larger, mirrored out to the crop when smaller


def test_reflect_pad_mirrors_labels_with_pixels():
    from d2ext.data.augmentations import RandomReflectPad, ReflectPadTransform

    yy, xx = np.mgrid[:5, :7]
    labels = ((xx + 2 * yy) % 3).astype(np.uint8)
    image = np.stack([labels * 80] * 3, -1).astype(np.uint8)
    t = ReflectPadTransform(12, 3, 1, 20)  # pads larger than the image: mirrored in steps
    img, lab = t.apply_image(image), t.apply_segmentation(labels)
    assert img.shape == (20, 28, 3) and lab.shape == (20, 28)
    np.testing.assert_array_equal(img[..., 0], lab * 80)  # every padded pixel keeps its label
    np.testing.assert_array_equal(lab[12:17, 1:8], labels)  # the original at (left, top)
    np.testing.assert_array_equal(lab[11, 1:8], labels[1])  # a mirror without repeating the edge row
    assert t.apply_coords(np.array([[0.0, 0.0]])).tolist() == [[1.0, 12.0]]
    one = ReflectPadTransform(2, 1, 0, 0).apply_segmentation(np.array([[4, 5]], np.uint8))
    assert one.tolist() == [[4, 5]] * 4  # a 1-pixel-high image is replicated
    np.random.seed(0)
    from detectron2.data.transforms import NoOpTransform

    assert isinstance(RandomReflectPad(4, 4).get_transform(image), NoOpTransform)  # already large enough
    tops = {RandomReflectPad(9, 7).get_transform(image).top for _ in range(30)}
    assert tops == {0, 1, 2, 3, 4}  # the image lands anywhere inside


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_augmentations_keep_labels(tmp_path, name):
    record, labels, image = _cell_case(tmp_path, coloured=True)
    mapper = build_dataset_mapper(_cfg([name], BLUR_PROB=1.0), True)
    changed = False
    for seed in range(4):
        np.random.seed(seed)
        out = mapper(dict(record))
        np.testing.assert_array_equal(out["sem_seg"].numpy(), labels)
        changed |= not np.array_equal(out["image"].permute(1, 2, 0).numpy(), image)
    assert changed


def test_hue_and_gain_transforms_exact():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    cyan = HueShiftTransform(0.5, "RGB").apply_image(red)  # 180 degrees: red -> cyan
    assert cyan[0, 0].tolist() == [0, 255, 255]
    green = HueShiftTransform(1 / 3, "RGB").apply_image(red)
    assert green[0, 0].tolist() == [0, 255, 0]
    blue_in_bgr = HueShiftTransform(1 / 3, "BGR").apply_image(red[..., ::-1].copy())  # same, BGR order
    assert blue_in_bgr[0, 0].tolist() == [0, 255, 0]
    px = np.full((1, 1, 3), 100, np.uint8)
    assert ChannelGainTransform([0.5, 1.0, 3.0]).apply_image(px)[0, 0].tolist() == [50, 100, 255]
    seg = np.arange(4).reshape(2, 2)
    assert HueShiftTransform(0.2).apply_segmentation(seg) is seg


def test_random_scale_range():
    np.random.seed(0)
    img = np.zeros((300, 300, 3), np.uint8)
    sides = [RandomScale(0.4, 3.0).get_transform(img).new_h for _ in range(200)]
    assert min(sides) >= 120 and max(sides) <= 900
    assert min(sides) < 180 and max(sides) > 600  # both ends are reached (log-uniform)


def test_test_time_scale_rule_follows_each_image():
    cfg = _cfg(GEOMETRIC)
    assert build_augmentations(cfg, False) == []  # native resolution
    cfg.INPUT.AUG.BASE_SCALE = 0.5
    (aug,) = build_augmentations(cfg, False)
    assert aug.get_transform(np.zeros((300, 300, 3))).new_h == 150
    assert aug.get_transform(np.zeros((120, 90, 3))).new_w == 45  # a factor, not a fixed side
