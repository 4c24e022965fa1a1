"""The d2ext Trainer: Detectron2's ``DefaultTrainer`` with task-aware data and evaluation.

Differences from ``DefaultTrainer``, each for a reason:
- the dataset mapper comes from ``cfg.INPUT.DATASET_MAPPER_NAME`` (classification and
  segmentation need their own), the evaluator from the dataset's ``evaluator_type``;
- multi-process training works on CPU: Detectron2 wraps the model in DDP with
  ``device_ids=[local_rank]``, which DDP rejects for CPU modules, so we pass ``device_ids=None``
  when the model is not on a GPU (gloo backend, as ``launch`` picks without CUDA);
- ``SOLVER.AMP.ENABLED`` also works on CPU: Detectron2's ``AMPTrainer`` is CUDA-only (float16 +
  gradient scaler); on a CPU with bfloat16 units the forward pass runs under
  ``torch.autocast("cpu", torch.bfloat16)`` (:class:`AutocastTrainer`), elsewhere in float32.
"""
import contextlib
import functools
import logging
import os
import time
import weakref

import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import SafeCheckpointer, merge_config_file
from ..config import add_d2ext_config
from ..data import build_dataset_mapper
from ..data.coco_files import check_datasets, dataset_folder_name, register_coco_datasets, resolve_dataset
from ..evaluation import build_evaluator
from ..modeling.test_time_augmentation import with_test_time_augmentation

__all__ = ["Trainer", "setup_cfg", "AutocastTrainer", "training_autocast"]


@functools.lru_cache(maxsize=None)
def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); without it PyTorch
    emulates bfloat16 and autocast makes training slower, not faster."""
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(p() for p in probes if p is not None)


def training_autocast(cfg):
    """The mixed-precision context of a training forward pass under ``SOLVER.AMP.ENABLED``:
    float16 on CUDA (as Detectron2's ``AMPTrainer``), bfloat16 on a CPU that has it, else none
    (a warning says so)."""
    if not cfg.SOLVER.AMP.ENABLED:
        return contextlib.nullcontext()
    device = torch.device(cfg.MODEL.DEVICE).type
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if device == "cpu" and cpu_has_bfloat16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    logging.getLogger("detectron2").warning(
        "SOLVER.AMP.ENABLED: this %s has no bfloat16 units; training in float32", device)
    return contextlib.nullcontext()


class AutocastTrainer(SimpleTrainer):
    """``SimpleTrainer`` with the forward pass (and losses) under ``autocast``, backward and the
    optimizer step outside it (as PyTorch recommends); parameters and gradients stay float32.
    For bfloat16, which keeps float32's exponent range, so no gradient scaler is needed.
    Written here because Detectron2's ``AMPTrainer`` asserts CUDA and uses float16."""

    def __init__(self, model, data_loader, optimizer, autocast):
        super().__init__(model, data_loader, optimizer)
        self.autocast = autocast

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        self.optimizer.zero_grad()
        with self.autocast:
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        loss_dict = {k: v.float() for k, v in loss_dict.items()}
        losses = sum(loss_dict.values())
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        check_datasets(cfg)  # before building anything: a missing dataset or class-count mismatch
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        on_gpu = next(model.parameters()).is_cuda
        ddp_kwargs = {} if on_gpu else {"device_ids": None}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        if cfg.SOLVER.AMP.ENABLED and on_gpu:
            self._trainer = AMPTrainer(model, data_loader, optimizer)
        elif cfg.SOLVER.AMP.ENABLED:
            self._trainer = AutocastTrainer(model, data_loader, optimizer, training_autocast(cfg))
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, allow_partial=cfg.MODEL.WEIGHTS_PARTIAL,
                                             trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD (``SOLVER.OPTIMIZER "SGD"``), or AdamW with Detectron2's parameter
        groups (no weight decay on norm layers when ``WEIGHT_DECAY_NORM`` is 0, bias LR factor)
        and its gradient clipping: from-scratch segmenters converge faster with it."""
        name = cfg.SOLVER.OPTIMIZER.lower()
        if name == "sgd":
            return super().build_optimizer(cfg, model)
        if name != "adamw":
            raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'AdamW', got {cfg.SOLVER.OPTIMIZER!r}")
        from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS), weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """``DefaultTrainer.test``, through :class:`~d2ext.modeling.test_time_augmentation.SemSegTTA`
        when ``TEST.AUG.ENABLED`` (semantic segmenters)."""
        return super().test(cfg, with_test_time_augmentation(cfg, model), evaluators)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        resolve_dataset(dataset_name)
        return build_detection_test_loader(cfg, dataset_name, mapper=build_dataset_mapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            # a COCO-file dataset is named by its path: keep its outputs inside OUTPUT_DIR
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_folder_name(dataset_name))
        return build_evaluator(cfg, dataset_name, output_folder)


def setup_cfg(config_file: str = "", opts=(), freeze: bool = True, image_root=None):
    """``get_cfg()`` + d2ext keys + a YAML file + command-line ``opts``; CPU when there is no GPU.
    The file (and its ``_BASE_`` chain) is read with the safe YAML loader only
    (:func:`d2ext.checkpoint.merge_config_file`): a config that needs Python tags is refused.
    ``DATASETS.TRAIN`` / ``TEST`` entries that are COCO ``.json`` paths are registered under that
    path (:mod:`d2ext.data.coco_files`; images under ``image_root`` when given)."""
    cfg = get_cfg()
    add_d2ext_config(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    cfg.merge_from_list(list(opts))
    register_coco_datasets(cfg, image_root)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
