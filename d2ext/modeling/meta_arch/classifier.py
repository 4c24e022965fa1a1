"""ImageClassifier: any registered backbone -> pooling -> fully connected head.

With the matching ``configs/classification/*.yaml`` it is exactly torchvision's AlexNet, VGG,
GoogLeNet (with both auxiliary classifiers), ResNet or DenseNet, and LeNet-5.
"""
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList

from ..backbone.blocks import activation_layer
from ..backbone.googlenet import InceptionAux

__all__ = ["ClassificationHead", "ImageClassifier"]


class ClassificationHead(nn.Module):
    """Adaptive average pooling, flatten, hidden FC layers, class scores.

    ``(N, C, H, W) -> (N, num_classes)`` logits. Layers: ``fc1`` .. ``fcK`` (hidden, with
    ``activation``), then ``cls_score``. Dropout ``p`` goes before each hidden layer when
    ``dropout_first`` (AlexNet), after each hidden activation otherwise (VGG); with no hidden
    layer, before ``cls_score`` (GoogLeNet).

    Args:
        in_channels: channels of the backbone feature.
        pool_size: adaptive-average-pool output side (1 = global; AlexNet 6, VGG 7).
    """

    def __init__(self, in_channels: int, num_classes: int, pool_size: int = 1,
                 hidden_dims: Sequence[int] = (), activation: str = "relu", dropout: float = 0.0,
                 dropout_first: bool = False):
        super().__init__()
        self.pool_size = int(pool_size)
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        dim = in_channels * self.pool_size ** 2
        layers = []
        for i, hidden in enumerate(hidden_dims, start=1):
            if dropout > 0 and dropout_first:
                layers.append((f"drop{i}", nn.Dropout(dropout)))
            layers += [(f"fc{i}", nn.Linear(dim, hidden)), (f"act{i}", activation_layer(activation))]
            if dropout > 0 and not dropout_first:
                layers.append((f"drop{i}", nn.Dropout(dropout)))
            dim = hidden
        if dropout > 0 and not hidden_dims:
            layers.append(("drop", nn.Dropout(dropout)))
        layers.append(("cls_score", nn.Linear(dim, num_classes)))
        for name, module in layers:
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.pool_size, self.pool_size):  # identity otherwise (LeNet's 5x5)
            x = F.adaptive_avg_pool2d(x, self.pool_size)
        x = torch.flatten(x, 1)
        for module in self.children():
            x = module(x)
        return x


@META_ARCH_REGISTRY.register()
class ImageClassifier(nn.Module):
    """Image classification on any Detectron2 backbone.

    Inputs (Detectron2 format): a list of dicts with ``"image"``, a ``(C, H, W)`` tensor in
    ``INPUT.FORMAT`` order and 0-255 range, and during training ``"label"`` (int class index).
    Images are normalised by ``pixel_mean``/``pixel_std`` and batched (equal sizes expected: the
    classification mapper crops to one size).

    Training returns ``{"loss_cls": CE}`` plus ``"loss_<aux name>": weight * CE`` for every
    auxiliary head (GoogLeNet: ``loss_aux1``, ``loss_aux2`` with weight 0.3 each, Szegedy et al.
    2015). Inference runs no auxiliary head and returns, per image,
    ``{"pred_class": int, "scores": (num_classes,) softmax probabilities}``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        in_feature: str,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        aux_heads: Dict[str, nn.Module] = None,
        aux_in_features: Sequence[str] = (),
        aux_loss_weights: Sequence[float] = (),
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_feature = in_feature
        shapes = backbone.output_shape()
        aux_heads = dict(aux_heads or {})
        if len(aux_heads) != len(aux_in_features) or len(aux_heads) != len(aux_loss_weights):
            raise ValueError(
                f"need one auxiliary feature and loss weight per auxiliary head: {len(aux_heads)} heads, "
                f"features {list(aux_in_features)}, weights {list(aux_loss_weights)}"
            )
        missing = [f for f in [in_feature, *aux_in_features] if f not in shapes]
        if missing:
            raise ValueError(
                f"ImageClassifier reads backbone features {missing}, but the backbone outputs "
                f"{sorted(shapes)} (add them to its OUT_FEATURES)"
            )
        self.aux_heads = nn.ModuleDict(aux_heads)
        self.aux_in_features = list(aux_in_features)
        self.aux_loss_weights = [float(w) for w in aux_loss_weights]
        self.label_smoothing = float(label_smoothing)
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"pixel_mean {pixel_mean} and pixel_std {pixel_std} differ in length")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        c = cfg.MODEL.CLASSIFIER
        shapes = backbone.output_shape()
        for f in [c.IN_FEATURE, *c.AUX_IN_FEATURES]:
            if f not in shapes:
                raise ValueError(
                    f"MODEL.CLASSIFIER reads backbone feature {f!r}, but {cfg.MODEL.BACKBONE.NAME} "
                    f"outputs {sorted(shapes)} (set its OUT_FEATURES)"
                )
        head = ClassificationHead(
            shapes[c.IN_FEATURE].channels,
            c.NUM_CLASSES,
            pool_size=c.POOL_SIZE,
            hidden_dims=c.HIDDEN_DIMS,
            activation=c.ACTIVATION,
            dropout=c.DROPOUT,
            dropout_first=c.DROPOUT_FIRST,
        )
        aux_heads = {
            f"aux{i}": InceptionAux(shapes[f].channels, c.NUM_CLASSES, dropout=c.AUX_DROPOUT)
            for i, f in enumerate(c.AUX_IN_FEATURES, start=1)
        }
        return {
            "backbone": backbone,
            "head": head,
            "in_feature": c.IN_FEATURE,
            "aux_heads": aux_heads,
            "aux_in_features": c.AUX_IN_FEATURES,
            "aux_loss_weights": c.AUX_LOSS_WEIGHTS,
            "label_smoothing": c.LABEL_SMOOTHING,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        logits = self.head(features[self.in_feature])
        if not self.training:
            probs = F.softmax(logits, dim=1)
            return [{"pred_class": int(p.argmax()), "scores": p} for p in probs]
        if any("label" not in x for x in batched_inputs):
            raise KeyError("ImageClassifier training needs a 'label' in every input dict")
        labels = torch.as_tensor([int(x["label"]) for x in batched_inputs], device=self.device)
        losses = {"loss_cls": F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}
        for (name, aux_head), feature, weight in zip(
            self.aux_heads.items(), self.aux_in_features, self.aux_loss_weights
        ):
            aux_logits = aux_head(features[feature])
            losses[f"loss_{name}"] = weight * F.cross_entropy(
                aux_logits, labels, label_smoothing=self.label_smoothing
            )
        return losses
