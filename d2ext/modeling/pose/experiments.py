"""In-process experiments on synthetic batsmen (no images, seconds on a CPU): what the tests and
``tools/benchmark.py pose_synthetic`` / ``pose_fused_synthetic`` measure.

* :func:`synthetic_head_accuracy`: the pose shot head, torso-normalised vs image coordinates,
  optionally with handedness canonicalisation (train on right-handers, test on left-handers).
* :func:`fused_vs_single_accuracy`: ``FusedShotHead`` vs a pose-only and an image-only head on a
  task where each modality holds *different* information (see the function).
"""
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ...data.pose_features import PoseFeatureExtractor
from ...data.synthetic_pose import SYNTHETIC_SHOT_CLASSES, generate_poses
from ..heads.shot_head import FusedShotHead, ShotClassifierHead

__all__ = ["synthetic_head_accuracy", "fused_vs_single_accuracy"]


def synthetic_head_accuracy(normalization: str = "torso", num_train: int = 300, num_test: int = 1000,
                            iters: int = 1500, seed: int = 0, joint_angles: bool = False,
                            train_pose_kwargs: Optional[Dict] = None, test_pose_kwargs: Optional[Dict] = None,
                            image_size: Tuple[int, int] = (480, 640), canonical_handedness: bool = False) -> float:
    """Top-1 accuracy (0..1) of a ``ShotClassifierHead`` (2 x 128, dropout 0.1) trained in-process
    on ``num_train`` synthetic batsmen and tested on ``num_test`` others (different seeds).

    Both feature kinds get the same budget: Adam (lr 1e-3, wd 1e-4), ``iters`` batches of 64.
    ``train_pose_kwargs`` / ``test_pose_kwargs`` go to :func:`generate_poses` (e.g. different
    ``torso_px_range`` for a near -> far shift, ``left_handed_prob`` for mirrored batsmen). Used by
    the tests and ``tools/benchmark.py pose_synthetic``.
    """
    torch.manual_seed(seed)
    tr = generate_poses(num_train, seed=2 * seed + 100, image_size=image_size, **(train_pose_kwargs or {}))
    te = generate_poses(num_test, seed=2 * seed + 101, image_size=image_size, **(test_pose_kwargs or {}))
    fx = PoseFeatureExtractor(normalization, use_joint_angles=joint_angles, use_wrist_height=joint_angles,
                              canonical_handedness=canonical_handedness)

    def features(poses):
        kps = torch.from_numpy(poses["keypoints"])
        return fx(kps, torch.tensor([image_size]).expand(len(kps), 2)), torch.from_numpy(poses["labels"])

    (x, y), (xt, yt) = features(tr), features(te)
    head = ShotClassifierHead(input_dim=fx.dim, num_classes=len(SYNTHETIC_SHOT_CLASSES))
    _train(head, lambda idx: F.cross_entropy(head(x[idx]), y[idx]), num_train, iters, seed)
    with torch.no_grad():
        return float((head(xt).argmax(1) == yt).float().mean())


def _train(model, forward, num_train, iters, seed, lr=1e-3):
    """Adam (lr 1e-3, wd 1e-4), ``iters`` batches of 64 drawn with a seeded generator."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(iters):
        idx = torch.randint(0, num_train, (64,), generator=gen)
        loss = forward(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def fused_vs_single_accuracy(num_train: int = 1000, num_test: int = 1000, iters: int = 800, seed: int = 0,
                             missing_pose_prob: float = 0.2, image_dim: int = 16, image_noise: float = 0.5,
                             shots: Tuple[str, str] = ("cut", "pull")) -> Dict[str, float]:
    """Top-1 (0..1) of the pose-only head, the image-only head and ``FusedShotHead``.

    The task has four classes ``2 * a + b``: ``a`` is the shot of a synthetic batsman (``shots[a]``
    of :data:`SHOT_POSES`, seen only in the pose), ``b`` a binary attribute seen only in the image
    features (a stand-in for what a backbone sees and a pose does not: bat, ball, field, camera).
    Image features are ``image_dim``-d Gaussian vectors whose mean is ``+-1`` along a fixed random
    direction for ``b`` (noise ``image_noise``); a share ``missing_pose_prob`` of the images has no
    person (all keypoints missing). A perfect pose-only model reaches 50 % on images with a pose
    and 25 % without; a perfect image-only model 50 %; only the fusion can reach 100 % (50 % without
    pose). Same features, optimiser and iterations for the three heads.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 7)
    fx = PoseFeatureExtractor("torso", canonical_handedness=True)
    direction = torch.from_numpy(rng.normal(size=image_dim)).float()
    direction /= direction.norm()

    def make(n, s):
        poses = generate_poses(n, seed=s, classes=shots)
        a = torch.from_numpy(poses["labels"])
        b = torch.from_numpy(rng.integers(0, 2, n))
        kps = torch.from_numpy(poses["keypoints"])
        has_pose = torch.from_numpy(rng.random(n) >= missing_pose_prob)
        kps[~has_pose] = 0.0  # no person found: every joint missing, as the models see it
        image = (2.0 * b[:, None].float() - 1.0) * direction + image_noise * torch.randn(n, image_dim)
        return fx(kps), has_pose, image, 2 * a + b

    pose, has, image, y = make(num_train, 2 * seed + 300)
    pose_t, has_t, image_t, y_t = make(num_test, 2 * seed + 301)
    heads = {
        "pose": ShotClassifierHead(input_dim=fx.dim, num_classes=4),
        "image": ShotClassifierHead(input_dim=image_dim, num_classes=4),
        "fused": FusedShotHead(pose_dim=fx.dim, image_dim=image_dim, num_classes=4),
    }
    train_inputs = {"pose": lambda i: (pose[i],), "image": lambda i: (image[i],),
                    "fused": lambda i: (pose[i], has[i], image[i])}
    test_inputs = {"pose": (pose_t,), "image": (image_t,), "fused": (pose_t, has_t, image_t)}
    acc = {}
    for name, head in heads.items():
        inputs = train_inputs[name]
        _train(head, lambda idx, h=head, inp=inputs: F.cross_entropy(h(*inp(idx)), y[idx]), num_train, iters, seed)
        with torch.no_grad():
            acc[name] = float((head(*test_inputs[name]).argmax(1) == y_t).float().mean())
    with torch.no_grad():
        miss = ~has_t
        acc["fused_no_pose"] = float((heads["fused"](pose_t[miss], has_t[miss], image_t[miss]).argmax(1)
                                      == y_t[miss]).float().mean()) if miss.any() else float("nan")
    return acc
