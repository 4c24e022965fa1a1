"""Darknet ``.cfg`` + ``.weights`` <-> d2ext YOLO models (YOLOv3, yolov3-tiny, YOLOv2 layouts).

- :func:`parse_darknet_cfg` reads a cfg into sections (errors name ``file:line``);
  :func:`conv_specs` walks them to find every convolution's input channels.
- :func:`read_darknet_weights` / :func:`write_darknet_weights`: Darknet's binary format — a header
  of int32 major, minor, revision and the ``seen`` counter (int64 when ``10 * major + minor >= 2``,
  else int32), then per ``[convolutional]`` in cfg order: biases (with ``batch_normalize=1``:
  BN beta, then scales = gamma, rolling mean, rolling variance) and the ``(out, in, k, k)`` weights,
  all float32 little-endian.
- :func:`d2ext_opts_from_darknet` infers the d2ext config (layout, width, blocks, anchors, classes)
  of a cfg; :func:`darknet_cfg_text` writes the cfg of a d2ext config. Import checks the cfg it
  was given against the one it would write for the inferred config, layer by layer, so a cfg
  that d2ext cannot reproduce is refused with the first differing line instead of loading
  weights into the wrong places.
- :func:`darknet_modules` lists a built model's convolutions in cfg order (backbone, then head,
  each module knowing its own order via ``darknet_layers()``); :func:`load_darknet_weights` /
  :func:`export_darknet_weights` move tensors between the file and the model.

No Darknet reader exists as a maintained Python library (OpenCV's ``readNetFromDarknet`` builds
its own network and does not hand the tensors out), hence this module; OpenCV is used in the tests
as the independent implementation to check against.
"""
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = [
    "DarknetSection", "ConvSpec", "DarknetFormatError", "parse_darknet_cfg", "conv_specs",
    "read_darknet_weights", "write_darknet_weights", "d2ext_opts_from_darknet", "darknet_cfg_text",
    "darknet_modules", "load_darknet_weights", "export_darknet_weights", "LAYOUTS",
    "parse_darknet_cfg_text", "check_same_structure", "darknet_cfg_text_of_model", "layout_config",
    "randomize_weights",
]

# layout -> (meta-architecture, backbone builder, default head name)
LAYOUTS = {
    "yolov3": ("YOLOV3", "build_darknet53_backbone", "YOLOV3Head"),
    "yolov3-tiny": ("YOLOV3", "build_darknet_tiny_backbone", "YOLOV3TinyHead"),
    "yolov2": ("YOLOV2", "build_darknet19_backbone", "YOLOV2Head"),
}

# layout -> the YAML under configs/darknet/ of the matching d2ext model
LAYOUT_CONFIGS = {"yolov3": "yolov3.yaml", "yolov3-tiny": "yolov3-tiny.yaml", "yolov2": "yolov2-voc.yaml"}


def layout_config(layout: str) -> str:
    """Path of the d2ext config (``configs/darknet/*.yaml``) that builds ``layout``'s model."""
    from ..core import repo_root

    return str(repo_root() / "configs" / "darknet" / LAYOUT_CONFIGS[layout])


def randomize_weights(model, seed: int = 0):
    """Random conv weights at a scale that keeps activations O(1) and random BatchNorm statistics
    (in place; returns ``model`` in eval mode): the weights an equivalence check writes to a
    Darknet file and loads into both implementations."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(0.4 * torch.rand(m.num_features, generator=g) - 0.2)
            elif isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.out_channels, generator=g) - 0.5)
    return model.eval()


class DarknetFormatError(ValueError):
    """A cfg or weights file d2ext cannot use; the message names the file (and line)."""


@dataclass
class DarknetSection:
    kind: str  # "net", "convolutional", "route", ...
    options: Dict[str, str] = field(default_factory=dict)
    line: int = 0  # 1-based line of the "[kind]" header

    def get(self, key, default=None, cast=str):
        return cast(self.options[key]) if key in self.options else default


@dataclass
class ConvSpec:
    """One ``[convolutional]``: shapes needed to read its tensors."""

    index: int  # layer index (0 = first layer after [net])
    line: int
    in_channels: int
    filters: int
    size: int
    stride: int
    batch_normalize: bool
    activation: str

    def num_floats(self) -> int:
        return self.filters * (4 if self.batch_normalize else 1) + self.filters * self.in_channels * self.size**2


def parse_darknet_cfg(path: str) -> List[DarknetSection]:
    """Sections of a Darknet cfg file, in order; the first is ``[net]``."""
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise DarknetFormatError(f"{path}: cannot read ({e})") from None
    return parse_darknet_cfg_text(text, path)


def parse_darknet_cfg_text(text: str, path: str = "cfg") -> List[DarknetSection]:
    """Sections of Darknet cfg ``text``; ``path`` names it in error messages."""
    sections: List[DarknetSection] = []
    lines = text.splitlines()
    for no, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetFormatError(f"{path}:{no}: section header without ']': {raw.strip()!r}")
            sections.append(DarknetSection(line[1:-1].strip(), {}, no))
        elif "=" in line:
            if not sections:
                raise DarknetFormatError(f"{path}:{no}: option before the first [section]")
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetFormatError(f"{path}:{no}: expected 'key=value' or '[section]', got {raw.strip()!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetFormatError(f"{path}:1: a Darknet cfg starts with [net]")
    return sections


def _ints(s: str) -> List[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def conv_specs(sections: List[DarknetSection], path: str = "cfg") -> List[ConvSpec]:
    """Walk the layers tracking output channels; return every convolution's :class:`ConvSpec`."""
    channels = int(sections[0].get("channels", 3))
    out_ch: List[int] = []
    specs = []
    for i, sec in enumerate(sections[1:]):
        where = f"{path}:{sec.line}"
        prev = out_ch[-1] if out_ch else channels
        try:
            if sec.kind in ("convolutional", "conv"):
                spec = ConvSpec(i, sec.line, prev, int(sec.get("filters", 1)), int(sec.get("size", 1)),
                                int(sec.get("stride", 1)), bool(int(sec.get("batch_normalize", 0))),
                                sec.get("activation", "logistic"))
                if int(sec.get("groups", 1)) != 1:
                    raise DarknetFormatError(f"{where}: grouped convolutions are not supported")
                specs.append(spec)
                out_ch.append(spec.filters)
            elif sec.kind == "route":
                idx = [j if j >= 0 else i + j for j in _ints(sec.get("layers", ""))]
                if not idx or any(j < 0 or j >= i for j in idx):
                    raise DarknetFormatError(f"{where}: route layers {sec.get('layers')!r} out of range")
                out_ch.append(sum(out_ch[j] for j in idx))
            elif sec.kind == "reorg":
                s = int(sec.get("stride", 2))
                out_ch.append(prev * s * s)
            elif sec.kind in ("shortcut", "maxpool", "upsample", "yolo", "region", "dropout"):
                out_ch.append(prev)
            else:
                raise DarknetFormatError(f"{where}: layer [{sec.kind}] is not supported")
        except (KeyError, ValueError) as e:
            if isinstance(e, DarknetFormatError):
                raise
            raise DarknetFormatError(f"{where}: bad option in [{sec.kind}] ({e})") from None
    return specs


# ----- weights file ---------------------------------------------------------------------------
def read_darknet_weights(path: str, specs: Sequence[ConvSpec]) -> Tuple[Tuple[int, int, int, int], List[Dict[str, np.ndarray]]]:
    """(header (major, minor, revision, seen), per conv ``{"bias", ["scale", "mean", "var"],
    "weight"}``) from a ``.weights`` file; refuses a file that is shorter or longer than the cfg
    says."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise DarknetFormatError(f"{path}: cannot read ({e})") from None
    if len(data) < 12:
        raise DarknetFormatError(f"{path}: {len(data)} bytes, too short for a Darknet weights header")
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        (seen,), offset = struct.unpack_from("<q", data, 12), 20
    else:
        (seen,), offset = struct.unpack_from("<i", data, 12), 16
    floats = np.frombuffer(data, dtype="<f4", offset=offset) if len(data) > offset else np.zeros(0, "<f4")
    need = sum(s.num_floats() for s in specs)
    if (len(data) - offset) % 4 or floats.size != need:
        raise DarknetFormatError(
            f"{path}: holds {(len(data) - offset) / 4:g} floats after the header, the cfg's "
            f"{len(specs)} convolutions need {need}")
    out, pos = [], 0
    for s in specs:
        t = {}
        n = s.filters
        for key in ("bias", "scale", "mean", "var") if s.batch_normalize else ("bias",):
            t[key] = floats[pos: pos + n].astype(np.float32)
            pos += n
        k = n * s.in_channels * s.size**2
        t["weight"] = floats[pos: pos + k].reshape(n, s.in_channels, s.size, s.size).astype(np.float32)
        pos += k
        out.append(t)
    return (major, minor, revision, seen), out


def write_darknet_weights(path: str, specs: Sequence[ConvSpec], tensors: Sequence[Dict[str, np.ndarray]],
                          header: Tuple[int, int, int, int] = (0, 2, 0, 0)) -> None:
    """Write ``tensors`` (as :func:`read_darknet_weights` returns them) atomically."""
    from d2ext.core import atomic_write_bytes

    if len(specs) != len(tensors):
        raise ValueError(f"{len(specs)} convolutions but {len(tensors)} tensor groups")
    major, minor, revision, seen = header
    parts = [struct.pack("<3i", major, minor, revision),
             struct.pack("<q" if major * 10 + minor >= 2 else "<i", seen)]
    for s, t in zip(specs, tensors):
        keys = ("bias", "scale", "mean", "var") if s.batch_normalize else ("bias",)
        for key in keys + ("weight",):
            a = np.ascontiguousarray(t[key], dtype="<f4")
            want = (s.filters, s.in_channels, s.size, s.size) if key == "weight" else (s.filters,)
            if a.shape != want:
                raise ValueError(f"layer at cfg line {s.line}: {key} has shape {a.shape}, the cfg says {want}")
            parts.append(a.tobytes())
    atomic_write_bytes(path, b"".join(parts))


# ----- cfg <-> d2ext config -------------------------------------------------------------------
def d2ext_opts_from_darknet(sections: List[DarknetSection], path: str = "cfg") -> Tuple[str, List]:
    """(layout, ``setup_cfg`` opts) of the d2ext model matching a Darknet cfg (use with
    ``configs/darknet/<layout>.yaml``)."""
    kinds = [s.kind for s in sections[1:]]
    if "region" in kinds:
        layout = "yolov2"
    elif "yolo" in kinds:
        layout = "yolov3" if "shortcut" in kinds else "yolov3-tiny"
    else:
        raise DarknetFormatError(f"{path}: no [yolo] or [region] layer; only YOLOv2/v3 layouts are supported")
    convs = [s for s in sections[1:] if s.kind in ("convolutional", "conv")]
    if not convs:
        raise DarknetFormatError(f"{path}: no [convolutional] layer")
    # the widest conv has 1024 x WIDTH_MULT filters in every layout (narrow layers are clamped
    # to at least 8 channels, so the first conv does not tell the width)
    width_mult = max(int(s.get("filters", 0)) for s in convs if int(s.get("batch_normalize", 0))) / 1024
    net = sections[0]
    opts: List = ["MODEL.DARKNET.WIDTH_MULT", width_mult,
                  "INPUT.MIN_SIZE_TEST", int(net.get("height", 416)),
                  "INPUT.MAX_SIZE_TEST", max(int(net.get("height", 416)), int(net.get("width", 416)))]
    head_bn = [bool(int(s.get("batch_normalize", 0))) for s in convs]
    opts += ["MODEL.YOLO.HEAD_NORM", "BN" if head_bn[-2] else ""]
    if layout == "yolov2":
        reg = next(s for s in sections[1:] if s.kind == "region")
        raw = [float(v) for v in reg.get("anchors", "").split(",") if v.strip()]
        anchors = [[[raw[2 * j] * 32, raw[2 * j + 1] * 32] for j in range(len(raw) // 2)]]
        classes = int(reg.get("classes", 20))
        opts += ["MODEL.DARKNET.OUT_FEATURES", ["dark4", "dark5"], "MODEL.YOLO.IN_FEATURES", ["dark4", "dark5"]]
    else:
        yolos = [s for s in sections[1:] if s.kind == "yolo"]
        raw = [float(v) for v in yolos[0].get("anchors", "").split(",") if v.strip()]
        pairs = [[raw[2 * j], raw[2 * j + 1]] for j in range(len(raw) // 2)]
        levels = [[pairs[m] for m in _ints(y.get("mask", ""))] for y in yolos]
        anchors = levels[::-1]  # the cfg lists the deepest level first; d2ext finest first
        classes = int(yolos[0].get("classes", 80))
        names = ["dark3", "dark4", "dark5"][-len(yolos):] if layout == "yolov3" else ["dark4", "dark5"][-len(yolos):]
        opts += ["MODEL.DARKNET.OUT_FEATURES", names, "MODEL.YOLO.IN_FEATURES", names]
        if layout == "yolov3":
            blocks, count = [], None
            for s in sections[1:]:
                if s.kind in ("convolutional", "conv") and int(s.get("stride", 1)) == 2:
                    if count is not None:
                        blocks.append(count)
                    count = 0
                elif s.kind == "shortcut" and count is not None:
                    count += 1
                elif s.kind == "yolo":
                    break
            # the last stage's shortcuts end before the head's first conv
            blocks.append(count or 0)
            opts += ["MODEL.DARKNET.STAGE_BLOCKS", blocks]
    opts += ["MODEL.YOLO.NUM_CLASSES", classes, "MODEL.YOLO.ANCHORS", anchors]
    return layout, opts


def _conv(filters, size, stride=1, bn=True, activation="leaky"):
    lines = ["[convolutional]"] + (["batch_normalize=1"] if bn else []) + [
        f"filters={filters}", f"size={size}", f"stride={stride}", "pad=1", f"activation={activation}"]
    return "\n".join(lines)


def darknet_cfg_text(cfg, height: int = 416, width: int = 416) -> str:
    """The Darknet cfg of the d2ext YOLO model ``cfg`` builds (YOLOv3 with Darknet-53 or the tiny
    backbone, YOLOv2 with Darknet-19), for ``height`` x ``width`` inputs."""
    import torch  # noqa: F401  (the model is built to read its exact channel counts)
    from detectron2.modeling import build_model

    model = build_model(cfg)
    return darknet_cfg_text_of_model(model, cfg, height, width)


def _layout_of(cfg) -> str:
    for name, (arch, backbone, head) in LAYOUTS.items():
        if cfg.MODEL.META_ARCHITECTURE == arch and cfg.MODEL.BACKBONE.NAME == backbone and \
                (cfg.MODEL.YOLO.HEAD_NAME or head) == head:
            return name
    raise DarknetFormatError(
        f"no Darknet layout for {cfg.MODEL.META_ARCHITECTURE} + {cfg.MODEL.BACKBONE.NAME} + "
        f"{cfg.MODEL.YOLO.HEAD_NAME or 'default head'}; supported: {', '.join(LAYOUTS)}")


def darknet_cfg_text_of_model(model, cfg, height: int, width: int) -> str:
    """The Darknet cfg of a built d2ext YOLO ``model`` (built from ``cfg``)."""
    from torch import nn

    layout = _layout_of(cfg)
    bb, head = model.backbone, model.head
    k = model.num_classes
    anchors = [a.tolist() for a in model.anchors]
    layers: List[str] = []
    feature_layer: Dict[str, int] = {}  # backbone stage -> index of its last layer

    def conv_of(m, activation="leaky"):
        conv = m.conv if hasattr(m, "conv") else m
        return _conv(conv.out_channels, conv.kernel_size[0], conv.stride[0], bn=conv.bias is None,
                     activation=activation)

    # backbone
    for name, stage in bb.stages.items():
        for m in ([stage] if hasattr(stage, "conv") else stage.children()):
            if isinstance(m, nn.MaxPool2d):
                layers.append(f"[maxpool]\nsize={m.kernel_size}\nstride={m.stride}")
            elif type(m).__name__ == "_MaxPoolSame":
                layers.append("[maxpool]\nsize=2\nstride=1")
            elif type(m).__name__ == "DarknetResidual":
                layers += [conv_of(m.conv1), conv_of(m.conv2), "[shortcut]\nfrom=-3\nactivation=linear"]
            else:
                layers.append(conv_of(m))
        feature_layer[name] = len(layers) - 1
        if name == model.head_in_features[-1]:
            break
    flat = [wh for level in anchors for wh in level]
    offsets = np.cumsum([0] + [len(a) for a in anchors]).tolist()

    def yolo(level):
        mask = ",".join(str(j) for j in range(offsets[level], offsets[level + 1]))
        anc = ", ".join(f"{w:g},{h:g}" for w, h in flat)
        return (f"[yolo]\nmask={mask}\nanchors={anc}\nclasses={k}\nnum={len(flat)}\njitter=.3\n"
                f"ignore_thresh={model.ignore_thresh:g}\ntruth_thresh=1\nrandom=1")

    feats = list(model.head_in_features)
    if layout == "yolov3":
        nl = len(head.blocks)
        for i in range(nl):
            lvl = nl - 1 - i
            layers += [conv_of(m) for m in head.blocks[i]]
            layers += [conv_of(head.heads[i][0]), conv_of(head.heads[i][1], "linear"), yolo(lvl)]
            if i + 1 < nl:
                layers += ["[route]\nlayers=-4", conv_of(head.laterals[i]), "[upsample]\nstride=2",
                           f"[route]\nlayers=-1, {feature_layer[feats[lvl - 1]]}"]
    elif layout == "yolov3-tiny":
        nl = len(head.heads)
        layers += [conv_of(head.reduce), conv_of(head.heads[0][0]), conv_of(head.heads[0][1], "linear"),
                   yolo(nl - 1)]
        for i in range(1, nl):
            lvl = nl - 1 - i
            back = -4 if i == 1 else -5  # the reduce conv, then the previous upsample
            layers += [f"[route]\nlayers={back}", conv_of(head.laterals[i - 1]), "[upsample]\nstride=2",
                       f"[route]\nlayers=-1, {feature_layer[feats[lvl]]}", conv_of(head.heads[i][0]),
                       conv_of(head.heads[i][1], "linear"), yolo(lvl)]
    else:  # yolov2
        stride = model.strides[0]
        anc = ", ".join(f"{w / stride:.8g},{h / stride:.8g}" for w, h in anchors[0])
        layers += [conv_of(head.conv5[0]), conv_of(head.conv5[1]),
                   f"[route]\nlayers={feature_layer[feats[0]]}", conv_of(head.passthrough),
                   "[reorg]\nstride=2", "[route]\nlayers=-1,-4", conv_of(head.fuse),
                   conv_of(head.pred, "linear"),
                   f"[region]\nanchors={anc}\nbias_match=1\nclasses={k}\ncoords=4\nnum={len(anchors[0])}\n"
                   f"softmax=1\njitter=.3\nrescore=1\nobject_scale=5\nnoobject_scale=1\nclass_scale=1\n"
                   f"coord_scale=1\nabsolute=1\nthresh={model.ignore_thresh:g}\nrandom=1"]
    net = f"[net]\nbatch=1\nsubdivisions=1\nwidth={width}\nheight={height}\nchannels=3"
    return "\n\n".join([f"# {layout} layout written by d2ext (d2ext.modeling.darknet_weights)", net] + layers) + "\n"


def _normalised(sections: List[DarknetSection]) -> List[Tuple[str, Tuple]]:
    """The parts of each layer that decide the network's structure and weights."""
    keys = {
        "convolutional": ("filters", "size", "stride", "batch_normalize", "activation"),
        "maxpool": ("size", "stride"), "route": ("layers",), "shortcut": ("from",),
        "upsample": ("stride",), "reorg": ("stride",), "yolo": ("mask", "classes"),
        "region": ("classes", "num"),
    }
    defaults = {"stride": "1", "batch_normalize": "0", "activation": "logistic", "size": "1"}
    out = []
    for i, s in enumerate(sections[1:]):
        kind = "convolutional" if s.kind == "conv" else s.kind
        vals = []
        for key in keys.get(kind, ()):
            v = s.options.get(key, defaults.get(key, ""))
            if key == "layers":  # relative and absolute indices are the same layer
                v = ",".join(str(j if j >= 0 else i + j) for j in _ints(v))
            elif key == "from":
                v = str(i + int(v) if int(v) < 0 else int(v))
            elif key == "mask":  # which anchors a level uses is read from the cfg, not checked
                v = str(len(_ints(v)))
            vals.append(v.strip())
        if kind == "maxpool" and not s.options.get("stride"):
            vals[1] = vals[0]
        out.append((kind, tuple(vals)))
    return out


def check_same_structure(given: List[DarknetSection], expected: List[DarknetSection], path: str) -> None:
    """Refuse a cfg whose layers differ from the one d2ext writes for the inferred model."""
    a, b = _normalised(given), _normalised(expected)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            raise DarknetFormatError(
                f"{path}:{given[i + 1].line}: layer {i} is [{x[0]}] {x[1]}; the matching d2ext model "
                f"has [{y[0]}] {y[1]} there")
    if len(a) != len(b):
        line = given[min(len(a), len(b))].line if len(a) > len(b) else given[-1].line
        raise DarknetFormatError(f"{path}:{line}: {len(a)} layers, the matching d2ext model has {len(b)}")


# ----- model <-> tensors ----------------------------------------------------------------------
def darknet_modules(model) -> list:
    """The model's convolutions in Darknet cfg order: ``ConvBNLeaky`` or plain ``nn.Conv2d``."""
    return list(model.backbone.darknet_layers()) + list(model.head.darknet_layers())


def load_darknet_weights(model, specs: Sequence[ConvSpec], tensors: Sequence[Dict[str, np.ndarray]],
                         path: str = "weights") -> None:
    """Copy Darknet tensors into ``model`` (in place), checking every shape."""
    import torch

    modules = darknet_modules(model)
    if len(modules) != len(specs):
        raise DarknetFormatError(f"{path}: {len(specs)} convolutions, the d2ext model has {len(modules)}")
    with torch.no_grad():
        for m, s, t in zip(modules, specs, tensors):
            conv = m.conv if hasattr(m, "conv") else m
            norm = getattr(m, "norm", None)
            if tuple(conv.weight.shape) != t["weight"].shape:
                raise DarknetFormatError(f"{path}: conv at cfg line {s.line} has weights {t['weight'].shape}, "
                                         f"the d2ext layer {tuple(conv.weight.shape)}")
            if s.batch_normalize != (norm is not None):
                raise DarknetFormatError(f"{path}: cfg line {s.line}: batch_normalize={int(s.batch_normalize)} "
                                         f"but the d2ext layer {'has' if norm is not None else 'has no'} norm")
            conv.weight.copy_(torch.from_numpy(t["weight"]))
            if norm is not None:
                norm.bias.copy_(torch.from_numpy(t["bias"]))
                norm.weight.copy_(torch.from_numpy(t["scale"]))
                norm.running_mean.copy_(torch.from_numpy(t["mean"]))
                norm.running_var.copy_(torch.from_numpy(t["var"]))
            else:
                conv.bias.copy_(torch.from_numpy(t["bias"]))


def export_darknet_weights(model) -> List[Dict[str, np.ndarray]]:
    """The model's tensors in Darknet order (see :func:`write_darknet_weights`)."""
    out = []
    for m in darknet_modules(model):
        conv = m.conv if hasattr(m, "conv") else m
        norm = getattr(m, "norm", None)
        t = {"weight": conv.weight.detach().cpu().numpy()}
        if norm is not None:
            t.update(bias=norm.bias.detach().cpu().numpy(), scale=norm.weight.detach().cpu().numpy(),
                     mean=norm.running_mean.cpu().numpy(), var=norm.running_var.cpu().numpy())
        else:
            t["bias"] = conv.bias.detach().cpu().numpy()
        out.append(t)
    return out
