"""Shot classifier heads: pose feature vector ``(N, D)`` -> shot logits ``(N, num_classes)``.

Heads live in :data:`SHOT_HEAD_REGISTRY` and are built by :func:`build_shot_head` from
``cfg.MODEL.POSE_SHOT.HEAD.NAME``; ``PoseShotClassifier`` gives them the feature size.
"""
import torch
from torch import nn
from detectron2.config import configurable
from detectron2.utils.registry import Registry

__all__ = ["SHOT_HEAD_REGISTRY", "ShotClassifierHead", "build_shot_head"]

SHOT_HEAD_REGISTRY = Registry("SHOT_HEAD")
SHOT_HEAD_REGISTRY.__doc__ = """
Registry for pose-to-shot heads. A registered class is called as ``cls(cfg, input_dim)`` (use a
``@configurable`` ``__init__`` with ``from_config(cls, cfg, input_dim)``) and maps ``(N, input_dim)``
features to ``(N, num_classes)`` logits.
"""


@SHOT_HEAD_REGISTRY.register()
class ShotClassifierHead(nn.Module):
    """MLP: ``num_layers`` x (Linear -> ReLU -> Dropout) of width ``hidden_dim``, then ``cls_score``.

    ``(N, input_dim) -> (N, num_classes)`` logits; ``num_layers = 0`` is a linear classifier.
    Layer names: ``fc1`` .. ``fcK``, ``cls_score``.
    """

    @configurable
    def __init__(self, *, input_dim: int, num_classes: int, num_layers: int = 2, hidden_dim: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        if num_layers < 0 or hidden_dim < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"ShotClassifierHead: need num_layers >= 0, hidden_dim >= 1, 0 <= dropout < 1; "
                             f"got {num_layers}, {hidden_dim}, {dropout}")
        dim = input_dim
        for i in range(1, num_layers + 1):
            self.add_module(f"fc{i}", nn.Linear(dim, hidden_dim))
            self.add_module(f"relu{i}", nn.ReLU(inplace=True))
            if dropout > 0:
                self.add_module(f"drop{i}", nn.Dropout(dropout))
            dim = hidden_dim
        self.cls_score = nn.Linear(dim, num_classes)
        self.input_dim, self.num_classes = input_dim, num_classes

    @classmethod
    def from_config(cls, cfg, input_dim: int):
        h = cfg.MODEL.POSE_SHOT.HEAD
        return {"input_dim": input_dim, "num_classes": cfg.MODEL.POSE_SHOT.NUM_CLASSES,
                "num_layers": h.NUM_LAYERS, "hidden_dim": h.HIDDEN_DIM, "dropout": h.DROPOUT}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def build_shot_head(cfg, input_dim: int) -> nn.Module:
    return SHOT_HEAD_REGISTRY.get(cfg.MODEL.POSE_SHOT.HEAD.NAME)(cfg, input_dim)
