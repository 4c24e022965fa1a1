"""Pieces shared by the classic backbones: a chain-of-named-stages ``Backbone`` with freezing.

LeNet-5, AlexNet, VGG, GoogLeNet and DenseNet are all a plain chain of stages; each stage's output
is a named feature (``vgg4``, ``dense3``, ...) with a channel count and a nominal stride, as
Detectron2's ResNet does with ``res2``..``res5``. :class:`StagedBackbone` holds such a chain,
runs it only as far as the deepest requested feature, and freezes its first stages.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import Backbone

__all__ = ["Stage", "StagedBackbone", "activation_layer", "rename_state_dict"]

# (name, module, output channels, output stride with respect to the input image)
Stage = Tuple[str, nn.Module, int, int]


def activation_layer(name: str) -> nn.Module:
    """``"relu"`` (in place) or ``"tanh"``; named by a config string."""
    name = name.lower()
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}; expected 'relu' or 'tanh'")


class StagedBackbone(Backbone):
    """A chain of named stages; ``forward`` returns the outputs named in ``out_features``.

    Args:
        stages: ``(name, module, channels, stride)`` in order; stage ``i`` consumes stage ``i-1``'s
            output. Each module is registered under its name, so checkpoint keys read
            ``<name>.<layer>...`` (e.g. ``vgg4.conv4_3.weight``).
        out_features: names of the stages whose outputs ``forward`` returns (default: the last).
        freeze_at: freeze the first ``freeze_at`` stages (``requires_grad=False`` and BatchNorm
            turned into ``FrozenBatchNorm2d``), as ``MODEL.BACKBONE.FREEZE_AT`` does for Detectron2's
            ResNet (1 = the first stage, 0 = nothing frozen).
        size_divisibility: what ``ImageList`` pads inputs to (0 where padding would change the
            network's output, e.g. LeNet's and AlexNet's inexact strides).
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        out_features: Sequence[str] = (),
        freeze_at: int = 0,
        size_divisibility: int = 0,
    ):
        super().__init__()
        if not stages:
            raise ValueError("a StagedBackbone needs at least one stage")
        self._stage_names: List[str] = []
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        for name, module, channels, stride in stages:
            if name in self._out_feature_channels:
                raise ValueError(f"duplicate stage name {name!r}")
            self.add_module(name, module)
            self._stage_names.append(name)
            self._out_feature_channels[name] = int(channels)
            self._out_feature_strides[name] = int(stride)
        out_features = list(out_features) or [self._stage_names[-1]]
        unknown = [f for f in out_features if f not in self._out_feature_channels]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown out_features {unknown}; available: {self._stage_names}"
            )
        self._out_features = out_features
        # Stop after the deepest requested stage: an SSD on vgg4/vgg5 never runs pool5.
        self._last_stage = max(self._stage_names.index(f) for f in out_features)
        self._size_divisibility = int(size_divisibility)
        self.freeze(freeze_at)

    @property
    def stage_names(self) -> List[str]:
        return list(self._stage_names)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def freeze(self, freeze_at: int = 0) -> "StagedBackbone":
        """Freeze the first ``freeze_at`` stages; returns ``self``."""
        if freeze_at < 0 or freeze_at > len(self._stage_names):
            raise ValueError(
                f"freeze_at={freeze_at} out of range 0..{len(self._stage_names)} "
                f"(stages: {self._stage_names})"
            )
        for name in self._stage_names[:freeze_at]:
            stage = getattr(self, name)
            for p in stage.parameters():
                p.requires_grad_(False)
            setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(stage))
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``x``: ``(N, C, H, W)`` normalised images -> ``{name: (N, C_name, H/s, W/s)}``."""
        outputs = {}
        for name in self._stage_names[: self._last_stage + 1]:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


def rename_state_dict(state_dict: Dict[str, torch.Tensor], rename, arch: str) -> Dict[str, torch.Tensor]:
    """Apply ``rename(key) -> new key | None`` to every key of a torchvision ``state_dict``.

    A key that ``rename`` does not know (``None``) is an error naming it: a file for another
    architecture must not load half-way.
    """
    out = {}
    unknown = []
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key in out:
            raise KeyError(f"{arch}: two torchvision keys map to {new_key!r}")
        out[new_key] = value
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise KeyError(
            f"{arch}: the state_dict has keys that a torchvision {arch} does not: "
            f"{unknown[:5]}{more}; is --arch right?"
        )
    return out
