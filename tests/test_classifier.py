"""ImageClassifier (losses, aux weighting, inference), the classification mapper, the
ClassificationEvaluator on a hand-made case, digits, and training through tools/train_net.py."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from detectron2.data import DatasetCatalog, MetadataCatalog
from d2ext.data import DATASET_MAPPER_REGISTRY
from d2ext.data.classification import ClassificationDatasetMapper, RandomShift
from d2ext.engine import setup_cfg
from d2ext.evaluation import build_evaluator
from d2ext.evaluation.classification import ClassificationEvaluator
from d2ext.modeling.meta_arch.classifier import ClassificationHead, ImageClassifier

GOOGLENET = "configs/classification/googlenet.yaml"


def _googlenet(*opts):
    torch.manual_seed(0)
    cfg = setup_cfg(GOOGLENET, ["MODEL.CLASSIFIER.NUM_CLASSES", "5", "MODEL.CLASSIFIER.DROPOUT", "0.0",
                                "MODEL.CLASSIFIER.AUX_DROPOUT", "0.0", *opts])
    return ImageClassifier(cfg)


def _batch(n=3, side=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, side, side), generator=g).float(), "label": i % 5} for i in range(n)]


@pytest.mark.parametrize("weights", [(0.3, 0.3), (0.5, 0.1)])
def test_googlenet_training_losses_use_configured_aux_weights(weights):
    model = _googlenet("MODEL.CLASSIFIER.AUX_LOSS_WEIGHTS", str(list(weights))).train()
    batch = _batch()
    losses = model(batch)
    assert sorted(losses) == ["loss_aux1", "loss_aux2", "loss_cls"]
    # Recompute each loss by hand from the same (train-mode, dropout-free) network.
    labels = torch.tensor([b["label"] for b in batch])
    with torch.no_grad():
        feats = model.backbone(model.preprocess_image(batch).tensor)
        expected_cls = F.cross_entropy(model.head(feats["inception5b"]), labels)
        expected_aux = [w * F.cross_entropy(model.aux_heads[f"aux{i}"](feats[f]), labels)
                        for i, (w, f) in enumerate(zip(weights, ["inception4a", "inception4d"]), start=1)]
    torch.testing.assert_close(losses["loss_cls"].detach(), expected_cls)
    torch.testing.assert_close(losses["loss_aux1"].detach(), expected_aux[0])
    torch.testing.assert_close(losses["loss_aux2"].detach(), expected_aux[1])


def test_inference_returns_one_output_per_image_without_aux_heads():
    model = _googlenet().eval()
    calls = []
    for head in model.aux_heads.values():
        head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model(_batch(n=2))
    assert calls == [] and len(out) == 2
    for o in out:
        assert sorted(o) == ["pred_class", "scores"] and o["scores"].shape == (5,)
        assert math.isclose(float(o["scores"].sum()), 1.0, rel_tol=1e-5)
        assert o["pred_class"] == int(o["scores"].argmax())


def test_head_layer_order_follows_each_network():
    names = lambda h: [type(m).__name__ for m in h.children()]  # noqa: E731
    alexnet = ClassificationHead(8, 3, hidden_dims=[4, 4], dropout=0.5, dropout_first=True)
    vgg = ClassificationHead(8, 3, hidden_dims=[4, 4], dropout=0.5)
    googlenet = ClassificationHead(8, 3, dropout=0.2)
    assert names(alexnet) == ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]
    assert names(vgg) == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert names(googlenet) == ["Dropout", "Linear"]
    assert tuple(vgg(torch.randn(2, 8, 5, 5)).shape) == (2, 3)


def test_missing_backbone_feature_is_a_clear_error():
    cfg = setup_cfg(GOOGLENET, ["MODEL.GOOGLENET.OUT_FEATURES", '["inception5b"]'])
    with pytest.raises(ValueError, match="inception4a.*OUT_FEATURES"):
        ImageClassifier(cfg)


# ----------------------------------------------------------------------------------- mapper
@pytest.fixture
def grey_image(tmp_path):
    arr = (np.arange(6 * 10).reshape(6, 10) * 4).astype(np.uint8)  # 10 wide, 6 high
    path = tmp_path / "grey.png"
    Image.fromarray(arr, mode="L").save(path)
    return str(path), arr


def test_mapper_grey_to_three_or_one_channel(grey_image):
    path, arr = grey_image
    rec = {"file_name": path, "label": 2, "image_id": 0}
    rgb = ClassificationDatasetMapper(False, augmentations=[], image_format="RGB", num_channels=3)(rec)
    assert tuple(rgb["image"].shape) == (3, 6, 10) and rgb["label"] == 2
    assert all(torch.equal(rgb["image"][c], torch.from_numpy(arr)) for c in range(3))
    grey = ClassificationDatasetMapper(False, augmentations=[], image_format="L", num_channels=1)(rec)
    assert tuple(grey["image"].shape) == (1, 6, 10) and torch.equal(grey["image"][0], torch.from_numpy(arr))
    with pytest.raises(ValueError, match="grey.png.*1 channel.*normalises 3"):
        ClassificationDatasetMapper(False, augmentations=[], image_format="L", num_channels=3)(rec)
    with pytest.raises(KeyError, match="grey.png.*label"):
        ClassificationDatasetMapper(True, augmentations=[], image_format="L")({"file_name": path})


def test_mapper_from_config_resizes_and_crops(grey_image):
    path, arr = grey_image
    cfg = setup_cfg("configs/classification/resnet34.yaml",
                    ["INPUT.MIN_SIZE_TEST", "12", "INPUT.MIN_SIZE_TRAIN", "(12,)", "INPUT.CLASSIFICATION.CROP_SIZE", "8"])
    test_mapper = DATASET_MAPPER_REGISTRY.get("ClassificationDatasetMapper")(cfg, False)
    out = test_mapper({"file_name": path, "label": 0})
    assert tuple(out["image"].shape) == (3, 8, 8)  # 6x10 -> 12x20 -> centre 8x8
    full = ClassificationDatasetMapper(False, augmentations=test_mapper.augmentations.augs[:1], image_format="RGB")(
        {"file_name": path})["image"]
    assert tuple(full.shape) == (3, 12, 20)
    assert torch.equal(out["image"], full[:, 2:10, 6:14])  # centred: (12-8)/2 = 2, (20-8)/2 = 6
    train_out = DATASET_MAPPER_REGISTRY.get("ClassificationDatasetMapper")(cfg, True)({"file_name": path, "label": 1})
    assert tuple(train_out["image"].shape) == (3, 8, 8)
    too_big = setup_cfg("configs/classification/resnet34.yaml",
                        ["INPUT.MIN_SIZE_TEST", "0", "INPUT.CLASSIFICATION.CROP_SIZE", "8"])
    with pytest.raises(ValueError, match="grey.png.*smaller than INPUT.CLASSIFICATION.CROP_SIZE 8"):
        ClassificationDatasetMapper(too_big, False)({"file_name": path})


def test_test_mapper_matches_torchvision_eval_transform(tmp_path):
    """Resize(12) + CenterCrop(8) as torchvision does it, pixel for pixel (7x11: the long edge
    is 18.86 -> torchvision truncates to 18, where rounding would give 19)."""
    import torchvision.transforms as TV

    rgb = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    cfg = setup_cfg("configs/classification/resnet34.yaml",
                    ["INPUT.MIN_SIZE_TEST", "12", "INPUT.CLASSIFICATION.CROP_SIZE", "8"])
    ours = ClassificationDatasetMapper(cfg, False)({"file_name": str(path)})["image"]
    tv = TV.Compose([TV.Resize(12), TV.CenterCrop(8), TV.PILToTensor()])(Image.open(path).convert("RGB"))
    assert torch.equal(ours, tv)
    uncropped = setup_cfg("configs/classification/resnet34.yaml", ["INPUT.MIN_SIZE_TEST", "12",
                                                                   "INPUT.CLASSIFICATION.CROP_SIZE", "0"])
    assert tuple(ClassificationDatasetMapper(uncropped, False)({"file_name": str(path)})["image"].shape) == (3, 12, 18)


def test_random_shift_moves_content_with_zero_fill():
    img = np.zeros((9, 9, 1), np.uint8)
    img[4, 4] = 255
    np.random.seed(0)
    for _ in range(20):
        t = RandomShift(2).get_transform(img)
        out = t.apply_image(img)
        assert out.shape == img.shape and out.sum() == 255  # still one bright pixel, still 9x9
        y, x = np.argwhere(out[:, :, 0] == 255)[0]
        assert abs(y - 4) <= 2 and abs(x - 4) <= 2


# -------------------------------------------------------------------------------- evaluator
# 6 classes, 7 images; rankings are best first. Hand count:
#   top-1 correct: #1, #3, #5, #6, #7 -> 5/7; top-5 misses only #4 (class 2 ranked 6th) -> 6/7.
#   predicted:  0 <- #1, #4     1 <- #2, #3, #7     2 <- #5     3 <- #6
#   precision: 0: 1/2, 1: 2/3, 2: 1/1, 3: 1/1, 4 and 5: never predicted (NaN)
#   recall:    0: 1/2 (#2 missed), 1: 2/2, 2: 1/2 (#4 missed), 3: 1/1, 4 and 5: absent (NaN)
CASE = [  # (label, ranking)
    (0, [0, 1, 2, 3, 4, 5]), (0, [1, 0, 2, 3, 4, 5]), (1, [1, 0, 2, 3, 4, 5]), (2, [0, 1, 3, 4, 5, 2]),
    (2, [2, 0, 1, 3, 4, 5]), (3, [3, 0, 1, 2, 4, 5]), (1, [1, 2, 0, 3, 4, 5]),
]


def _scores(ranking):
    s = torch.zeros(6)
    for rank, c in enumerate(ranking):
        s[c] = 1.0 - 0.1 * rank
    return torch.softmax(s * 10, 0)


def test_evaluator_numbers_on_hand_made_case(tmp_path):
    names = ["a", "b", "c", "d", "e", "f"]
    ev = ClassificationEvaluator("unused", output_dir=str(tmp_path), distributed=False, class_names=names)
    ev.reset()
    for label, ranking in CASE:
        ev.process([{"label": label, "file_name": "x"}], [{"scores": _scores(ranking), "pred_class": ranking[0]}])
    res = ev.evaluate()["classification"]
    assert res["top1"] == pytest.approx(100 * 5 / 7)
    assert res["top5"] == pytest.approx(100 * 6 / 7)
    assert [res[f"precision-{n}"] for n in "abcd"] == pytest.approx([50.0, 100 * 2 / 3, 100.0, 100.0])
    assert [res[f"recall-{n}"] for n in "abcd"] == pytest.approx([50.0, 100.0, 50.0, 100.0])
    assert math.isnan(res["precision-e"]) and math.isnan(res["recall-f"])
    assert res["mean_precision"] == pytest.approx((50 + 200 / 3 + 100 + 100) / 4)
    assert res["mean_recall"] == pytest.approx(75.0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["confusion"] == [
        [1, 1, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0] * 6, [0] * 6]
    text = (tmp_path / "confusion_matrix.txt").read_text()
    assert "true c" in text and "pred f" in text
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_digits_dataset_and_evaluator_dispatch(tmp_path):
    train, test = DatasetCatalog.get("digits_train"), DatasetCatalog.get("digits_test")
    assert (len(train), len(test)) == (1438, 359)  # 1797 images, 20 % per class held out
    assert not {r["image_id"] for r in train} & {r["image_id"] for r in test}
    labels = np.bincount([r["label"] for r in test], minlength=10)
    assert labels.min() >= 35 and labels.max() <= 37  # stratified
    img = np.array(Image.open(test[0]["file_name"]))
    assert img.shape == (32, 32) and img.dtype == np.uint8 and img.max() > 200
    assert MetadataCatalog.get("digits_test").thing_classes == [str(i) for i in range(10)]
    cfg = setup_cfg("configs/classification/lenet5_digits.yaml")
    assert isinstance(build_evaluator(cfg, "digits_test", str(tmp_path)), ClassificationEvaluator)


# ------------------------------------------------------------------------ tools/train_net.py
def test_lenet_digits_few_iterations_through_train_net(tmp_path, run_tool):
    out = tmp_path / "lenet"
    run_tool("train_net.py", "--config-file", "configs/classification/lenet5_digits.yaml",
             "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)", "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "16",
             "OUTPUT_DIR", out)
    metrics = json.loads((out / "inference" / "digits_test" / "metrics.json").read_text())
    assert metrics["num_images"] == 359 and 0.0 <= metrics["top1"] <= 100.0
    assert (out / "model_final.pth").is_file()
    # Evaluating the saved checkpoint again gives the same numbers.
    run_tool("train_net.py", "--config-file", "configs/classification/lenet5_digits.yaml", "--eval-only",
             "MODEL.WEIGHTS", out / "model_final.pth", "OUTPUT_DIR", tmp_path / "eval")
    again = json.loads((tmp_path / "eval" / "inference" / "digits_test" / "metrics.json").read_text())
    assert again["top1"] == metrics["top1"] and again["confusion"] == metrics["confusion"]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["alexnet", "vgg16", "vgg16_bn", "googlenet", "resnet34", "densenet121"])
def test_every_backbone_trains_and_evaluates_through_train_net(tmp_path, run_tool, config):
    out = tmp_path / config
    run_tool("train_net.py", "--config-file", f"configs/classification/{config}.yaml",
             "DATASETS.TRAIN", "('digits_train',)", "DATASETS.TEST", "('digits_test',)",
             "MODEL.CLASSIFIER.NUM_CLASSES", "10", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
             "INPUT.CLASSIFICATION.CROP_SIZE", "64", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "4",
             "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0",
             "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", out)
    metrics = json.loads((out / "inference" / "digits_test" / "metrics.json").read_text())
    assert metrics["num_images"] == 359
