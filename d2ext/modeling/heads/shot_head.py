"""Shot classifier heads: pose feature vector ``(N, D)`` -> shot logits ``(N, num_classes)``.

Heads live in :data:`SHOT_HEAD_REGISTRY` and are built by :func:`build_shot_head` from
``cfg.MODEL.POSE_SHOT.HEAD.NAME``; ``PoseShotClassifier`` gives them the feature size.
:class:`FusedShotHead` combines the pose features with image features (``FusedShotClassifier``).
"""
import torch
from torch import nn
from detectron2.config import configurable
from detectron2.utils.registry import Registry

__all__ = ["SHOT_HEAD_REGISTRY", "ShotClassifierHead", "FusedShotHead", "build_shot_head"]

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


class FusedShotHead(nn.Module):
    """Pose features + image features -> shot logits; every image gets a prediction.

    ``pose (N, pose_dim)``, ``has_pose (N,)`` bool, ``image (N, image_dim)`` -> ``(N, num_classes)``.

        pose  -> Linear -> ReLU -> (Dropout)  --\
                 (no pose: a learned vector) ---+-> concat -> Linear -> ReLU -> (Dropout) -> cls_score
        image -> Linear -> ReLU -> (Dropout)  --/

    Where ``has_pose`` is False the pose embedding is replaced by the learned ``no_pose`` vector
    (late fusion with a learned missing-modality token), so an image without a detected person
    is classified from its image features alone instead of from an all-zero pose. In training,
    ``pose_drop_prob`` drops present poses at random so that the ``no_pose`` path is learned even
    when every training image has a person.
    """

    @configurable
    def __init__(self, *, pose_dim: int, image_dim: int, num_classes: int, hidden_dim: int = 128,
                 dropout: float = 0.1, pose_drop_prob: float = 0.1):
        super().__init__()
        if hidden_dim < 1 or not 0.0 <= dropout < 1.0 or not 0.0 <= pose_drop_prob < 1.0:
            raise ValueError(f"FusedShotHead: need hidden_dim >= 1, 0 <= dropout < 1, 0 <= pose_drop_prob < 1; "
                             f"got {hidden_dim}, {dropout}, {pose_drop_prob}")
        drop = (lambda: nn.Dropout(dropout)) if dropout > 0 else nn.Identity
        self.pose_branch = nn.Sequential(nn.Linear(pose_dim, hidden_dim), nn.ReLU(inplace=True), drop())
        self.image_branch = nn.Sequential(nn.Linear(image_dim, hidden_dim), nn.ReLU(inplace=True), drop())
        self.no_pose = nn.Parameter(torch.zeros(hidden_dim))
        self.fuse = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(inplace=True), drop())
        self.cls_score = nn.Linear(hidden_dim, num_classes)
        self.pose_drop_prob = float(pose_drop_prob)
        self.pose_dim, self.image_dim, self.num_classes = pose_dim, image_dim, num_classes

    @classmethod
    def from_config(cls, cfg, pose_dim: int, image_dim: int):
        f = cfg.MODEL.POSE_SHOT.FUSION
        return {"pose_dim": pose_dim, "image_dim": image_dim, "num_classes": cfg.MODEL.POSE_SHOT.NUM_CLASSES,
                "hidden_dim": f.HIDDEN_DIM, "dropout": f.DROPOUT, "pose_drop_prob": f.POSE_DROP_PROB}

    def forward(self, pose: torch.Tensor, has_pose: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        has_pose = has_pose.to(device=pose.device, dtype=torch.bool)
        if self.training and self.pose_drop_prob > 0:
            keep = torch.rand(has_pose.shape, device=pose.device) >= self.pose_drop_prob
            has_pose = has_pose & keep
        p = self.pose_branch(pose)
        p = torch.where(has_pose[:, None], p, self.no_pose.to(p.dtype).expand_as(p))
        x = self.fuse(torch.cat([p, self.image_branch(image)], dim=1))
        return self.cls_score(x)
