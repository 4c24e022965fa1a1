"""The one path by which d2ext reads weights and configs: files from strangers never run code.

Detectron2 trusts its inputs: ``CfgNode.merge_from_file`` falls back to ``yaml.unsafe_load`` when a
config carries Python tags, ``DetectionCheckpointer`` unpickles ``.pkl`` files without restriction
and fvcore calls ``torch.load`` without saying ``weights_only``. Here:

- :func:`merge_config_file` merges a YAML config (and its ``_BASE_`` chain) with the safe loader
  only; a file that needs a Python tag is refused with one line naming the file and line
  (:class:`ConfigError`).
- :func:`load_pickle_weights` reads a Detectron2 model-zoo ``.pkl`` (``{"model": {name: ndarray},
  "__author__": ..., "matching_heuristics": ...}`` or a plain dict of arrays) with a restricted
  unpickler that resolves only numpy arrays / dtypes / scalars, ``OrderedDict``, sets and the
  latin-1 ``bytes`` helper protocol-2 pickles use. Any other global is refused when the unpickler
  meets it, before any callable of the file has been called (:class:`UnsafeCheckpointError`).
- :func:`load_torch_weights` is ``torch.load(..., weights_only=True)``, said explicitly.
- :class:`SafeCheckpointer` is Detectron2's ``DetectionCheckpointer`` reading files through the
  two functions above, and refusing a checkpoint that fills fewer than half of the model's
  parameter values (:class:`CheckpointMismatchError`) unless ``allow_partial`` (config key
  ``MODEL.WEIGHTS_PARTIAL``: a backbone-only initialisation). Every tool and model that loads
  weights uses it (:func:`load_weights` for the one-call case).
"""
import codecs
import importlib
import logging
import os
import pickle
from typing import Any, Dict

import numpy as np
import yaml
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "ConfigError", "CheckpointError", "UnsafeCheckpointError", "CheckpointMismatchError",
    "merge_config_file", "load_pickle_weights", "load_torch_weights", "SafeCheckpointer",
    "load_weights", "MIN_LOADED_FRACTION",
]

logger = logging.getLogger(__name__)

# A checkpoint must fill at least this share of the model's parameter values (element count);
# fewer means the wrong file or the wrong architecture, not a fine-tuning start.
MIN_LOADED_FRACTION = 0.5


class ConfigError(ValueError):
    """A config file d2ext will not load (Python tags, bad YAML); the message names the file."""


class CheckpointError(ValueError):
    """A weights file d2ext will not load; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks for Python objects beyond plain weights (code could run on loading)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint fills too few of the model's parameters."""


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def _yaml_error_line(path: str, e: yaml.YAMLError):
    """(file[:line] of the problem, what the problem is)."""
    mark = getattr(e, "problem_mark", None)
    where = f"{getattr(mark, 'name', None) or path}"
    if mark is not None:
        where += f":{mark.line + 1}"
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return where, problem


def merge_config_file(cfg, path: str):
    """``cfg.merge_from_file(path)`` with the safe YAML loader only (``_BASE_`` files too).

    A config that needs Python tags (``!!python/object/apply:...``) or is not valid YAML raises
    :class:`ConfigError` with one line naming the file (the base file, if the tag is there) and
    the line. Returns ``cfg``.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        # allow_unsafe=False: fvcore re-raises the safe loader's error instead of retrying with
        # yaml.unsafe_load, for the file and for every _BASE_ it pulls in.
        cfg.merge_from_file(path, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        where, problem = _yaml_error_line(path, e)
        tag = problem.split("tag ")[-1] if "tag" in problem else problem
        raise ConfigError(f"{where}: refused: the config needs the Python object tag {tag}; "
                          "d2ext loads configs with the safe YAML loader only (no code runs)") from None
    except yaml.YAMLError as e:
        where, problem = _yaml_error_line(path, e)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    return cfg


# ---------------------------------------------------------------------------------------------
# .pkl: restricted unpickler
# ---------------------------------------------------------------------------------------------
def _latin1_bytes(text, encoding="latin1"):
    """What protocol-2 pickles from Python 3 call (``_codecs.encode(str, 'latin1')``) to rebuild a
    ``bytes`` object (a numpy array's raw data); other codecs are refused."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return codecs.encode(text, "latin1")


def _numpy_global(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # numpy 1 <-> 2: numpy.core <-> numpy._core
        alt = module.replace("numpy._core", "numpy.core") if "._core" in module else \
            module.replace("numpy.core", "numpy._core")
        return getattr(importlib.import_module(alt), name)


# (module, name) -> how to resolve it. numpy's own pickling of arrays, dtypes and scalars uses
# exactly these (protocols 2-5, numpy 1 and 2); "__builtin__" / "copy_reg"-era names are Python 2's.
_NUMPY_GLOBALS = {
    (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")
} | {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")} | {
    ("numpy", "ndarray"), ("numpy", "dtype")}
_BUILTINS = {"set": set, "frozenset": frozenset, "bytearray": bytearray, "complex": complex}


class _WeightsUnpickler(pickle.Unpickler):
    """Resolves only the globals plain weight files need; everything else is refused at the
    GLOBAL opcode, i.e. before the REDUCE that would call it."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return _numpy_global(module, name)
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if (module, name) == ("collections", "OrderedDict"):
            from collections import OrderedDict

            return OrderedDict
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"global '{module}.{name}'")


_PLAIN = (str, bytes, bytearray, int, float, bool, complex, type(None), np.generic)


def _check_plain(obj, path: str) -> None:
    """Only containers, strings, numbers and numeric arrays (an object array could hide anything)."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(x)
        elif isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise UnsafeCheckpointError(f"{path}: refused: holds an array of Python objects, "
                                            "not numbers")
        elif not isinstance(x, _PLAIN):
            raise UnsafeCheckpointError(f"{path}: refused: holds a {type(x).__name__}")


def load_pickle_weights(path: str) -> Any:
    """The content of a ``.pkl`` weights file, read without running code from it.

    Admits numpy arrays (numeric dtypes), numpy scalars, strings, numbers and plain containers;
    Python-2 pickles are read with ``encoding="latin1"`` as Detectron2 does. Raises
    :class:`UnsafeCheckpointError` naming the file and the refused global, :class:`CheckpointError`
    on a corrupt file.
    """
    with open(path, "rb") as f:
        try:
            data = _WeightsUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            if str(e).startswith("global '"):
                raise UnsafeCheckpointError(
                    f"{path}: refused: the pickle asks for {e} (a plain weights file needs only "
                    "numpy arrays, numbers, strings and containers); nothing of it was run") from None
            raise CheckpointError(f"{path}: not a readable pickle ({e})") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise CheckpointError(f"{path}: not a readable pickle "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    _check_plain(data, path)
    return data


def load_torch_weights(path: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain containers
    only, whatever the installed torch's default. A refused or unreadable file raises
    :class:`UnsafeCheckpointError` / :class:`CheckpointError` with one line naming it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln
                       or "global" in ln.lower()), str(e).splitlines()[0] if str(e) else "")
        raise UnsafeCheckpointError(f"{path}: refused by torch's weights-only loader ({detail}); "
                                    "d2ext does not run code from checkpoints") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


# ---------------------------------------------------------------------------------------------
# Checkpointer
# ---------------------------------------------------------------------------------------------
class SafeCheckpointer(DetectionCheckpointer):
    """Detectron2's ``DetectionCheckpointer`` with safe file reading and a parameter-coverage check.

    ``.pkl``: :func:`load_pickle_weights`, then Detectron2's model-zoo / Caffe2 handling;
    ``.pyth`` (pycls) and everything else: :func:`load_torch_weights`. After loading the model
    weights, if the checkpoint filled fewer than ``MIN_LOADED_FRACTION`` of the model's parameter
    values (missing names or other shapes), :class:`CheckpointMismatchError` is raised unless
    ``allow_partial`` (``MODEL.WEIGHTS_PARTIAL``), which only logs the share.
    """

    def __init__(self, model, save_dir: str = "", *, allow_partial: bool = False,
                 save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_partial = bool(allow_partial)
        self._loading = None

    def load(self, path, *args, **kwargs):
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            data = load_pickle_weights(filename)
            if not isinstance(data, dict):
                raise CheckpointError(f"{filename}: expected a dict of weights, got {type(data).__name__}")
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            # Caffe2 / Detectron1 model zoo, as DetectionCheckpointer reads it
            if "blobs" in data:
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            data = load_torch_weights(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise CheckpointError(f"{filename}: a pycls checkpoint must contain 'model_state'")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)  # -> self._torch_load, plus Detectron2's URL queries

    def _torch_load(self, f: str):
        data = load_torch_weights(f)
        if not isinstance(data, dict):
            raise CheckpointError(f"{f}: expected a dict of weights, got {type(data).__name__}")
        return data

    def _load_model(self, checkpoint):
        path = self._loading or "checkpoint"
        try:
            incompatible = super()._load_model(checkpoint)
        except ValueError as e:  # fvcore: "Unsupported type found in checkpoint! k: <type>"
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: {str(e).splitlines()[0]}") from None
        self._check_coverage(incompatible, path)
        return incompatible

    def _check_coverage(self, incompatible, path: str) -> None:
        from fvcore.common.checkpoint import _filter_reused_missing_keys

        params = dict(self.model.named_parameters())
        total = sum(p.numel() for p in params.values())
        if total == 0:
            return
        not_loaded = set(_filter_reused_missing_keys(self.model, list(incompatible.missing_keys)))
        not_loaded |= {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [n for n in params if n in not_loaded]
        loaded = sum(p.numel() for n, p in params.items() if n not in not_loaded)
        share = loaded / total
        if share >= MIN_LOADED_FRACTION:
            return
        summary = (f"{path}: fills only {share:.1%} of the model's parameter values ({loaded:,} of "
                   f"{total:,}; {len(missing)} of {len(params)} parameter tensors missing or of "
                   f"another shape, e.g. {missing[0]!r})")
        if self.allow_partial:
            logger.warning("%s; accepted as a partial (backbone-only) initialisation "
                           "(MODEL.WEIGHTS_PARTIAL True)", summary)
            return
        raise CheckpointMismatchError(f"{summary}: wrong file or architecture? If it is a "
                                      "backbone-only initialisation, set MODEL.WEIGHTS_PARTIAL True")


def load_weights(model, path: str, allow_partial: bool = False) -> Dict[str, Any]:
    """Load ``path`` into ``model`` through :class:`SafeCheckpointer`; returns the leftover
    checkpoint entries, as ``Checkpointer.load`` does."""
    return SafeCheckpointer(model, allow_partial=allow_partial).load(path)
