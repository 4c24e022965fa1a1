"""The controlled test-set shifts of the WBC shift benchmark: seeded, deterministic, aligned."""
import numpy as np
import pytest

from d2ext.data.augmentations import SHIFTS, apply_shift


def _case():
    yy, xx = np.mgrid[:90, :90]
    labels = ((yy - 40) ** 2 + (xx - 50) ** 2 <= 20 ** 2).astype(np.uint8)
    image = np.where(labels[..., None] > 0, np.array([150, 60, 170], np.uint8), np.uint8(225)).astype(np.uint8)
    return image, labels


def test_shift_names():
    from tools.bench.wbc_seg import SHIFT_NAMES  # the benchmark's --wbc-shifts choices

    assert tuple(SHIFTS) == SHIFT_NAMES
    assert list(SHIFTS) == ["unshifted", "zoom_in_x2", "zoom_in_x2.5", "zoom_in_x3", "zoom_out_x0.5",
                            "hue_+30deg", "saturation_x0.5", "brightness_x0.7", "blur_sigma2"]


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shift_is_deterministic_for_a_seed(name):
    image, labels = _case()
    np.random.seed(1)
    a_img, a_lab = apply_shift(name, image, labels, seed=7)
    np.random.seed(99)  # NumPy's global state plays no part
    b_img, b_lab = apply_shift(name, image, labels, seed=7)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert a_img.dtype == np.uint8 and set(np.unique(a_lab)) <= {0, 1}
    # labels stay aligned with the pixels: the cell is the dark part of the image
    grey = a_img.astype(float).mean(-1)
    assert ((grey < (grey.min() + grey.max()) / 2) == (a_lab == 1)).mean() > 0.97


def test_zoom_in_crop_depends_on_the_seed_and_keeps_the_size():
    image, labels = _case()
    crops = {apply_shift("zoom_in_x3", image, labels, seed=s)[1].tobytes() for s in range(5)}
    assert len(crops) > 1
    img, lab = apply_shift("zoom_in_x3", image, labels, seed=0)
    assert img.shape == image.shape and lab.shape == labels.shape
    assert lab.mean() > 2 * labels.mean()  # the cell fills more of the frame


def test_zoom_out_and_stain_shifts():
    image, labels = _case()
    img, lab = apply_shift("zoom_out_x0.5", image, labels)
    assert img.shape == (45, 45, 3) and abs(int(lab.sum()) - labels.sum() / 4) < 0.05 * labels.sum() / 4
    img, lab = apply_shift("brightness_x0.7", image, labels)
    assert img[0, 0].tolist() == [157, 157, 157] and np.array_equal(lab, labels)  # 225 * 0.7, truncated
    img, _ = apply_shift("saturation_x0.5", image, labels)
    assert img[0, 0].tolist() == [225, 225, 225]  # grey stays grey
    cell = img[40, 50].astype(int)
    assert cell[1] > 60 and cell[0] < 150  # halfway to grey
    img, _ = apply_shift("hue_+30deg", image, labels)
    assert img[0, 0].tolist() == [225, 225, 225] and img[40, 50].tolist() != [150, 60, 170]
