"""Weights and configs load without running code (issue 15, group 1): d2ext.checkpoint."""
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from d2ext.checkpoint import (CheckpointError, CheckpointMismatchError, ConfigError,
                              SafeCheckpointer, UnsafeCheckpointError, load_pickle_weights,
                              load_weights)
from d2ext.engine import setup_cfg


class _Touch:
    """Unpickling this calls os.system('touch <marker>'): what a hostile weights file does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _small_model():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4), fc=nn.Linear(4, 2)))


def _arrays(seed=1):
    """Numpy weights for every entry of _small_model's state dict (numbers differ from its init)."""
    rng = np.random.default_rng(seed)
    out = OrderedDict()
    for k, v in _small_model().state_dict().items():
        out[k] = (rng.standard_normal(tuple(v.shape)).astype(np.float32) if v.dtype.is_floating_point
                  else np.asarray(7, dtype=np.int64))
    return out


def _assert_loaded(model, arrays, keys=None):
    sd = model.state_dict()
    for k in keys or arrays:
        np.testing.assert_array_equal(sd[k].numpy(), arrays[k])


# ---------------------------------------------------------------------------------------------
# .pkl
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["top", "inside_model_dict"])
def test_hostile_pickle_is_refused_before_it_runs(tmp_path, where):
    marker = tmp_path / "marker"
    if where == "top":
        payload = _Touch(marker)
    else:  # a valid-looking model-zoo file with the payload after the arrays
        model = _arrays()
        model["zzz"] = _Touch(marker)
        payload = {"model": model, "__author__": "Detectron2 Model Zoo"}
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"model\.pkl: refused: the pickle asks for "
                                                    r"global '(posix|os)\.system'") as e:
        load_pickle_weights(str(path))
    assert "\n" not in str(e.value)
    assert not marker.exists()
    # the same through the checkpointer every tool uses
    with pytest.raises(UnsafeCheckpointError):
        load_weights(_small_model(), str(path))
    assert not marker.exists()


def test_object_array_in_pickle_is_refused(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.array([1, "a"], dtype=object)}, "__author__": "x"}))
    with pytest.raises(UnsafeCheckpointError, match=r"obj\.pkl: refused: holds an array of Python objects"):
        load_pickle_weights(str(path))


def test_truncated_pickle_is_one_line(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"model": _arrays()}, protocol=2)[:300])
    with pytest.raises(CheckpointError, match=r"cut\.pkl: not a readable pickle") as e:
        load_pickle_weights(str(path))
    assert not isinstance(e.value, UnsafeCheckpointError) and "\n" not in str(e.value)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pickle_loads(tmp_path, protocol):
    """Detectron2 model-zoo format: {"model": {name: ndarray}, "__author__": ...}; protocol 2 is what
    Detectron2's own converters write (bytes via _codecs.encode), 4/5 what newer numpy does."""
    arrays = _arrays()
    path = tmp_path / "zoo.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo",
                                   "matching_heuristics": False, "note": {1, 2}}, protocol=protocol))
    model = _small_model()
    left = load_weights(model, str(path))
    _assert_loaded(model, arrays)
    assert left["note"] == {1, 2}


def test_plain_dict_of_arrays_pickle_loads(tmp_path):
    """A bare {name: ndarray} (Caffe2 / ImageNet-style): loaded through Detectron2's name matching
    (which renames Caffe2 "bn" names, so only conv and fc are compared)."""
    arrays = _arrays(seed=2)
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(dict(arrays), protocol=2))
    model = _small_model()
    load_weights(model, str(path))
    _assert_loaded(model, arrays, keys=["conv.weight", "conv.bias", "fc.weight", "fc.bias"])


# ---------------------------------------------------------------------------------------------
# .pth
# ---------------------------------------------------------------------------------------------
def test_pth_loads_and_hostile_pth_is_refused(tmp_path):
    arrays = _arrays(seed=3)
    good = tmp_path / "good.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in arrays.items()}, "iteration": 5}, good)
    model = _small_model()
    assert SafeCheckpointer(model).load(str(good)) == {"iteration": 5}
    _assert_loaded(model, arrays)

    marker = tmp_path / "marker"
    bad = tmp_path / "bad.pth"
    torch.save({"model": {}, "x": _Touch(marker)}, bad)
    with pytest.raises(UnsafeCheckpointError, match=r"bad\.pth: refused by torch's weights-only loader") as e:
        load_weights(_small_model(), str(bad))
    assert "\n" not in str(e.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# too few parameters matched
# ---------------------------------------------------------------------------------------------
def _partial_checkpoint(tmp_path):
    """Only fc.* (8 + 2 of the 108 + 4 + 4 + 4 + 8 + 2 = 130 parameter values): 7.7%."""
    arrays = _arrays(seed=4)
    path = tmp_path / "head_only.pth"
    torch.save({"model": {k: torch.from_numpy(arrays[k]) for k in ("fc.weight", "fc.bias")}}, path)
    return arrays, path


def test_checkpoint_matching_few_parameters_is_an_error(tmp_path):
    _, path = _partial_checkpoint(tmp_path)
    with pytest.raises(CheckpointMismatchError,
                       match=r"head_only\.pth: fills only 7\.7% of the model's parameter values "
                             r"\(10 of 130; 4 of 6 parameter tensors missing .*MODEL\.WEIGHTS_PARTIAL True"):
        load_weights(_small_model(), str(path))
    # a wrong shape counts as not loaded: conv weights of another size fill nothing (conv.bias 4
    # + fc.weight 8 values do)
    other = tmp_path / "other_shapes.pth"
    torch.save({"model": {"conv.weight": torch.zeros(4, 3, 5, 5), "conv.bias": torch.zeros(4),
                          "fc.weight": torch.zeros(2, 4)}}, other)
    with pytest.raises(CheckpointMismatchError, match=r"fills only 9\.2% .*\(12 of 130;"):
        load_weights(_small_model(), str(other))


def test_partial_override_loads_what_matches(tmp_path):
    arrays, path = _partial_checkpoint(tmp_path)
    model = _small_model()
    before = model.conv.weight.detach().clone()
    load_weights(model, str(path), allow_partial=True)
    _assert_loaded(model, arrays, keys=["fc.weight", "fc.bias"])
    assert torch.equal(model.conv.weight, before)


def test_weights_partial_config_key_reaches_the_predictor(tmp_path, repo_root):
    """MODEL.WEIGHTS_PARTIAL (default False) decides for the tools' loading path (Predictor)."""
    from d2ext.engine import Predictor

    cfg_file = str(repo_root / "configs" / "classification" / "lenet5_digits.yaml")
    path = tmp_path / "bias_only.pth"
    torch.save({"model": {}}, path)
    cfg = setup_cfg(cfg_file, ["MODEL.WEIGHTS", str(path), "MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.WEIGHTS_PARTIAL is False
    with pytest.raises(CheckpointMismatchError, match=r"bias_only\.pth: fills only 0\.0%"):
        Predictor(cfg)
    cfg = setup_cfg(cfg_file, ["MODEL.WEIGHTS", str(path), "MODEL.DEVICE", "cpu",
                               "MODEL.WEIGHTS_PARTIAL", "True"])
    Predictor(cfg)  # accepted with a warning


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def test_unsafe_yaml_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"MODEL:\n  DEVICE: cpu\nSOLVER: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml:3: refused: the config needs the Python object "
                                          r"tag 'tag:yaml.org,2002:python/object/apply:os.system'") as e:
        setup_cfg(str(evil))
    assert "\n" not in str(e.value)
    assert not marker.exists()
    # the tag in a _BASE_ file: the base file is named
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: evil.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml:3: refused"):
        setup_cfg(str(child))
    assert not marker.exists()


def test_base_chain_still_merges(tmp_path):
    (tmp_path / "base.yaml").write_text("SOLVER:\n  MAX_ITER: 7\n  BASE_LR: 0.5\n")
    (tmp_path / "mid.yaml").write_text("_BASE_: base.yaml\nSOLVER:\n  BASE_LR: 0.25\n")
    (tmp_path / "top.yaml").write_text("_BASE_: mid.yaml\nMODEL:\n  WEIGHTS_PARTIAL: True\n")
    cfg = setup_cfg(str(tmp_path / "top.yaml"))
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR, cfg.MODEL.WEIGHTS_PARTIAL) == (7, 0.25, True)


def test_bad_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER:\n  MAX_ITER: [1\n  BASE_LR: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: not valid YAML"):
        setup_cfg(str(bad))


@pytest.mark.slow  # two tool processes that import torch and Detectron2 (~10 s)
def test_tools_refuse_hostile_weights_and_config_in_one_line(tmp_path, repo_root, run_tool):
    """End to end: tools/predict.py with a hostile .pkl and tools/train_net.py with a hostile config
    exit 2 with one line naming the file; neither payload runs."""
    marker = tmp_path / "marker"
    evil_pkl = tmp_path / "model.pkl"
    evil_pkl.write_bytes(pickle.dumps({"model": {}, "__author__": "x", "p": _Touch(marker)}, protocol=2))
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("L", (32, 32)).save(image)
    proc = run_tool("predict.py", "--config-file", repo_root / "configs/classification/lenet5_digits.yaml",
                    "--weights", evil_pkl, "--input", image, "--output", tmp_path / "out.json",
                    "MODEL.DEVICE", "cpu", check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{evil_pkl}: refused: the pickle asks for global" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.json").exists()
    evil_yaml = tmp_path / "evil.yaml"
    evil_yaml.write_text(f"_BASE_: {repo_root / 'configs/classification/lenet5_digits.yaml'}\n"
                         f"SOLVER: !!python/object/apply:os.system ['touch {marker}']\n")
    proc = run_tool("train_net.py", "--config-file", evil_yaml, "--eval-only", check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{evil_yaml}:2: refused: the config needs the Python object tag" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
