"""All d2ext config keys, with their defaults.

``add_d2ext_config(cfg)`` is the only entry point, as in Detectron2's ``projects/``: call it on a
fresh ``get_cfg()`` before ``merge_from_file``. Keys live where Detectron2 users look for them
(``MODEL.<ARCH>``, ``INPUT``, ``TEST``); each topic adds its keys in its own function below.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_d2ext_config"]


def add_d2ext_config(cfg: CN) -> CN:
    """Add every d2ext key with its default to ``cfg`` (in place; also returned).

    Safe to call twice: keys already present keep their current values.
    """
    if "DATASET_MAPPER_NAME" in cfg.INPUT:  # already added: keep the user's values
        return cfg
    _add_data_config(cfg)
    _add_augmentation_config(cfg)
    _add_weights_config(cfg)
    _add_classification_config(cfg)
    _add_backbone_config(cfg)
    _add_detector_config(cfg)
    _add_segmentation_config(cfg)
    _add_pose_config(cfg)
    _add_evaluation_config(cfg)
    _add_lineage_config(cfg)
    _add_solver_config(cfg)
    return cfg


def _add_data_config(cfg: CN) -> None:
    # Name in d2ext.data.DATASET_MAPPER_REGISTRY; "" = Detectron2's DatasetMapper (detection,
    # instances, keypoints, sem-seg). Classifier configs set "ClassificationDatasetMapper".
    cfg.INPUT.DATASET_MAPPER_NAME = ""


def _add_augmentation_config(cfg: CN) -> None:
    # Training augmentations of the mapper "AugmentedDatasetMapper" (d2ext/data/augmentations.py):
    # names in AUGMENTATION_REGISTRY applied in order ([] = Detectron2's ResizeShortestEdge + flip).
    # The WBC configs use scale_jitter, random_crop, flips, color_jitter, hue_shift, channel_gain,
    # gaussian_blur (README, "WBC segmentation recipe").
    cfg.INPUT.AUG = CN()
    cfg.INPUT.AUG.TRAIN = []
    # Every image (train and test) is resized by this factor of its own size (1.0 = native); a
    # test image is never resized to a fixed side, so cells keep their training pixel size.
    cfg.INPUT.AUG.BASE_SCALE = 1.0
    # scale_jitter: extra factor, log-uniform in this range (cells 0.4x-3x their size)
    cfg.INPUT.AUG.SCALE_RANGE = (0.4, 3.0)
    # random_crop: (height, width) at BASE_SCALE 1 (multiplied by BASE_SCALE), clipped to the image
    cfg.INPUT.AUG.CROP_SIZE = (320, 320)
    cfg.INPUT.AUG.BRIGHTNESS = (0.7, 1.3)  # color_jitter: Detectron2 RandomBrightness range
    cfg.INPUT.AUG.CONTRAST = (0.7, 1.3)  # color_jitter: RandomContrast range
    cfg.INPUT.AUG.SATURATION = (0.5, 1.5)  # color_jitter: RandomSaturation range
    cfg.INPUT.AUG.HUE_DELTA = 0.1  # hue_shift: uniform in +-this many turns (0.1 = 36 degrees)
    cfg.INPUT.AUG.CHANNEL_GAIN = (0.8, 1.2)  # channel_gain: per-channel multiplier range
    cfg.INPUT.AUG.BLUR_SIGMA = (0.5, 2.5)  # gaussian_blur: sigma range in pixels (at BASE_SCALE)
    cfg.INPUT.AUG.BLUR_PROB = 0.3  # gaussian_blur: probability of blurring an image


def _add_weights_config(cfg: CN) -> None:
    # True: MODEL.WEIGHTS may fill under half of the model's parameters (a backbone-only
    # initialisation); False: such a checkpoint is an error (d2ext.checkpoint.SafeCheckpointer).
    cfg.MODEL.WEIGHTS_PARTIAL = False


def _add_classification_config(cfg: CN) -> None:
    # ImageClassifier (META_ARCHITECTURE "ImageClassifier"): backbone -> pooling -> head.
    cfg.MODEL.CLASSIFIER = CN()
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 1000  # ImageNet-1k, as the torchvision models
    # Backbone feature the head reads (e.g. "pool5" VGG/AlexNet, "res5", "dense4", "inception5b").
    cfg.MODEL.CLASSIFIER.IN_FEATURE = "res5"
    # Adaptive average pooling to POOL_SIZE x POOL_SIZE before flattening (torchvision: AlexNet 6,
    # VGG 7, LeNet-5 5 = its 5x5 S4 map; 1 = global average pooling for ResNet/GoogLeNet/DenseNet).
    cfg.MODEL.CLASSIFIER.POOL_SIZE = 1
    # Hidden fully connected layers before the class scores (AlexNet/VGG [4096, 4096]; LeNet-5
    # [120, 84] = its C5 and F6 layers, LeCun et al. 1998).
    cfg.MODEL.CLASSIFIER.HIDDEN_DIMS = []
    cfg.MODEL.CLASSIFIER.ACTIVATION = "relu"  # of the hidden layers: "relu" or "tanh"
    # Dropout probability (AlexNet/VGG 0.5, GoogLeNet 0.2, ResNet/DenseNet 0).
    cfg.MODEL.CLASSIFIER.DROPOUT = 0.0
    # True: dropout before each hidden layer (AlexNet); False: after each hidden activation (VGG).
    # Without hidden layers dropout (if any) comes before the class-score layer (GoogLeNet).
    cfg.MODEL.CLASSIFIER.DROPOUT_FIRST = False
    # Auxiliary classifiers (GoogLeNet: ["inception4a", "inception4d"]); training only.
    cfg.MODEL.CLASSIFIER.AUX_IN_FEATURES = []
    # Loss weight of each auxiliary classifier (0.3 each, Szegedy et al. 2015).
    cfg.MODEL.CLASSIFIER.AUX_LOSS_WEIGHTS = []
    cfg.MODEL.CLASSIFIER.AUX_DROPOUT = 0.7  # inside each auxiliary head (Szegedy et al. 2015)
    cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING = 0.0  # of the cross-entropy losses
    # Classification mapper (INPUT.DATASET_MAPPER_NAME "ClassificationDatasetMapper"): resize the
    # short edge to INPUT.MIN_SIZE_TRAIN / MIN_SIZE_TEST (0 = keep), then crop CROP_SIZE x
    # CROP_SIZE (random when training, centred when testing; 0 = no crop); flip per
    # INPUT.RANDOM_FLIP; INPUT.FORMAT "L" gives 1 channel, "RGB"/"BGR" 3 (grey images replicated).
    cfg.INPUT.CLASSIFICATION = CN()
    cfg.INPUT.CLASSIFICATION.CROP_SIZE = 0
    # Training only: translate by up to this many pixels, zero fill (digits: 3 of 32).
    cfg.INPUT.CLASSIFICATION.RANDOM_SHIFT = 0


def _add_backbone_config(cfg: CN) -> None:
    # Classic backbones (d2ext/modeling/backbone); each also honours MODEL.BACKBONE.FREEZE_AT
    # (freeze that many stages, in the order listed in each builder's docstring).
    # LeNet-5 (LeCun et al. 1998), "build_lenet_backbone": stages s2 (stride 2), s4 (stride 4).
    cfg.MODEL.LENET = CN()
    cfg.MODEL.LENET.OUT_FEATURES = ["s4"]
    cfg.MODEL.LENET.ACTIVATION = "relu"  # "tanh" for the 1998 network
    cfg.MODEL.LENET.POOL = "max"  # "avg" = the 1998 subsampling layers (without their weights)
    # AlexNet (Krizhevsky et al. 2012), "build_alexnet_backbone": conv1, conv2, conv5, pool5.
    cfg.MODEL.ALEXNET = CN()
    cfg.MODEL.ALEXNET.OUT_FEATURES = ["pool5"]
    # VGG (Simonyan & Zisserman 2015), "build_vgg_backbone": vgg1..vgg5 (strides 1..16, vgg4 =
    # conv4_3), pool5 (stride 32).
    cfg.MODEL.VGG = CN()
    cfg.MODEL.VGG.DEPTH = 16  # 11, 13, 16 or 19
    cfg.MODEL.VGG.NORM = ""  # "" = as published; "BN" = torchvision's vgg*_bn
    cfg.MODEL.VGG.CEIL_MODE = False  # ceil-mode max pools (SSD300: 75 -> 38 at pool3)
    cfg.MODEL.VGG.OUT_FEATURES = ["pool5"]
    # 2 = DeepLab's atrous VGG: pool4 stride 1 + dilated conv5, `vgg5` at stride 8 (1 = published)
    cfg.MODEL.VGG.VGG5_DILATION = 1
    # GoogLeNet / Inception v1 (Szegedy et al. 2015), "build_googlenet_backbone": conv1, conv3,
    # inception3b, inception4a, inception4d, inception4e, inception5b.
    cfg.MODEL.GOOGLENET = CN()
    cfg.MODEL.GOOGLENET.OUT_FEATURES = ["inception5b"]
    # DenseNet (Huang et al. 2017), "build_densenet_backbone": stem, dense1..dense4.
    cfg.MODEL.DENSENET = CN()
    cfg.MODEL.DENSENET.DEPTH = 121  # 121, 161, 169 or 201 (layers per block from the paper)
    cfg.MODEL.DENSENET.GROWTH_RATE = 32  # 48 for DenseNet-161
    cfg.MODEL.DENSENET.NUM_INIT_FEATURES = 64  # channels of the stem; 96 for DenseNet-161
    cfg.MODEL.DENSENET.BN_SIZE = 4  # bottleneck width = BN_SIZE * GROWTH_RATE
    cfg.MODEL.DENSENET.COMPRESSION = 0.5  # transition layers keep this fraction of channels
    cfg.MODEL.DENSENET.DROP_RATE = 0.0  # dropout after each dense layer
    cfg.MODEL.DENSENET.MEMORY_EFFICIENT = False  # recompute concatenations in backward (checkpoint)
    cfg.MODEL.DENSENET.OUT_FEATURES = ["dense4"]


def _add_detector_config(cfg: CN) -> None:
    # SSD (Liu et al. 2016), meta-architecture "SSD" + backbone "build_ssd_vgg16_backbone".
    cfg.MODEL.SSD = CN()
    # Foreground classes (the classifier adds a background logit at index 0, as torchvision).
    cfg.MODEL.SSD.NUM_CLASSES = 80
    # Backbone maps fed to the head, finest first (SSD300: 38, 19, 10, 5, 3, 1 px maps).
    cfg.MODEL.SSD.IN_FEATURES = ["conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2"]
    # Side of the square network input; images are warped to it inside the model (300 or 512).
    cfg.MODEL.SSD.IMAGE_SIZE = 300
    # Extra aspect ratios per map besides 1 (paper Sec. 2.2; 4 or 6 default boxes per location).
    cfg.MODEL.SSD.ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    # Default-box scales as fractions of IMAGE_SIZE, one per map plus one (the authors' COCO
    # SSD300 values, as torchvision's ssd300_vgg16).
    cfg.MODEL.SSD.SCALES = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    # Pixel distance between default-box centres per map ([] = IMAGE_SIZE / map size).
    cfg.MODEL.SSD.STEPS = [8, 16, 32, 64, 100, 300]
    # Clip default-box widths/heights to the image side.
    cfg.MODEL.SSD.CLIP_DEFAULT_BOXES = True
    # A default box is positive at IoU >= this with a ground-truth box (plus each gt's best box).
    cfg.MODEL.SSD.IOU_THRESHOLD = 0.5
    # Hard negatives kept per positive in the classification loss (3:1, paper Sec. 2.2).
    cfg.MODEL.SSD.NEG_POS_RATIO = 3.0
    # Box2BoxTransform weights: (10, 10, 5, 5) = SSD's centre/size variances 0.1 / 0.2.
    cfg.MODEL.SSD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    # Smooth-L1 beta of the box loss (1.0 as in the paper / Fast R-CNN).
    cfg.MODEL.SSD.SMOOTH_L1_BETA = 1.0
    # Inference: per-class score threshold, top-k per class before NMS, NMS IoU threshold
    # (torchvision's 0.01 / 400 / 0.45; the number kept is TEST.DETECTIONS_PER_IMAGE).
    cfg.MODEL.SSD.SCORE_THRESH_TEST = 0.01
    cfg.MODEL.SSD.TOPK_CANDIDATES_TEST = 400
    cfg.MODEL.SSD.NMS_THRESH_TEST = 0.45
    cfg.MODEL.SSD.VGG = CN()
    # "ssd300" (paper Fig. 2) or "ssd512" (authors' Caffe model: one more map, conv12_2).
    cfg.MODEL.SSD.VGG.EXTRA_LAYERS = "ssd300"
    # Multiplier on every VGG channel count (1.0 = the paper; < 1 for small CPU runs).
    cfg.MODEL.SSD.VGG.WIDTH_MULT = 1.0
    # Norm after each conv: "" = none (the paper, torchvision weights), "BN" for from-scratch runs.
    cfg.MODEL.SSD.VGG.NORM = ""
    # Initial scale of the conv4_3 L2 normalisation (20, paper Sec. 3.1).
    cfg.MODEL.SSD.VGG.L2NORM_SCALE = 20.0

    # YOLO v1/v2/v3: meta-architectures "YOLOV1" / "YOLOV2" / "YOLOV3".
    cfg.MODEL.YOLO = CN()
    # Object classes (80 = COCO, the paper's YOLOv3; 20 = VOC for v1/v2).
    cfg.MODEL.YOLO.NUM_CLASSES = 80
    # Backbone features fed to the head, finest first (v3: 3 levels; v2: passthrough + main map;
    # v1: the stride-64 map).
    cfg.MODEL.YOLO.IN_FEATURES = ["dark3", "dark4", "dark5"]
    # Anchors (w, h) in input pixels, one list per output level, finest first (v2: one level).
    # Default: YOLOv3's COCO k-means anchors at 416 (Redmon & Farhadi 2018); tools/anchors.py
    # computes them for another dataset.
    cfg.MODEL.YOLO.ANCHORS = [
        [[10, 13], [16, 30], [33, 23]],
        [[30, 61], [62, 45], [59, 119]],
        [[116, 90], [156, 198], [373, 326]],
    ]
    # Predictions with IoU above this with any object get no no-object loss (0.5 in v3, 0.6 v2).
    cfg.MODEL.YOLO.IGNORE_THRESH = 0.5
    # Initial objectness probability (sets the prediction bias; keeps early negatives small).
    cfg.MODEL.YOLO.OBJECTNESS_PRIOR = 0.01
    # Head (YOLO_HEAD_REGISTRY): "" = the meta-architecture's own (YOLOV3Head / YOLOV2Head /
    # YOLOV1Head); "YOLOV3TinyHead" for Darknet's yolov3-tiny layout.
    cfg.MODEL.YOLO.HEAD_NAME = ""
    # Norm after each head conv ("BN" as Darknet); the head's own key, not the backbone's.
    cfg.MODEL.YOLO.HEAD_NORM = "BN"
    # Inference: score (objectness x class) threshold, candidates kept before NMS, NMS IoU
    # (Darknet's 0.45); the number kept is TEST.DETECTIONS_PER_IMAGE.
    cfg.MODEL.YOLO.SCORE_THRESH_TEST = 0.01
    cfg.MODEL.YOLO.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.YOLO.NMS_THRESH_TEST = 0.45
    cfg.MODEL.YOLO.V1 = CN()
    # Grid side S (7 at 448 input, Redmon et al. 2016); the stride-64 map is pooled to S x S.
    cfg.MODEL.YOLO.V1.GRID_SIZE = 7
    # Boxes predicted per cell (B = 2 in the paper).
    cfg.MODEL.YOLO.V1.BOXES_PER_CELL = 2
    # Hidden fully connected layer width (4096 in the paper).
    cfg.MODEL.YOLO.V1.FC_DIM = 4096
    # Dropout after the first fully connected layer (0.5 in the paper).
    cfg.MODEL.YOLO.V1.DROPOUT = 0.5
    # Loss weights of box coordinates and of confidences without object (5 and 0.5, Sec. 2.2).
    cfg.MODEL.YOLO.V1.LAMBDA_COORD = 5.0
    cfg.MODEL.YOLO.V1.LAMBDA_NOOBJ = 0.5

    # Darknet backbones: "build_darknet53_backbone", "build_darknet19_backbone",
    # "build_yolov1_backbone"; MODEL.BACKBONE.FREEZE_AT freezes the stem + early stages.
    cfg.MODEL.DARKNET = CN()
    # Features returned ("stem", "dark1" ... "dark5"/"dark6"; feature darkK has stride 2**K).
    cfg.MODEL.DARKNET.OUT_FEATURES = ["dark3", "dark4", "dark5"]
    # Multiplier on every channel count (1.0 = the papers; < 1 for small CPU runs).
    cfg.MODEL.DARKNET.WIDTH_MULT = 1.0
    # Darknet-53 residual blocks per stage (Redmon & Farhadi 2018, Table 1).
    cfg.MODEL.DARKNET.STAGE_BLOCKS = [1, 2, 8, 8, 4]
    # Norm after each conv ("BN" as Darknet; "FrozenBN"/"GN"/"SyncBN" also accepted).
    cfg.MODEL.DARKNET.NORM = "BN"
    # LeakyReLU slope (0.1 in every Darknet config).
    cfg.MODEL.DARKNET.NEGATIVE_SLOPE = 0.1
    # YOLOv1 net: "full" (the paper's 24 convs) or "fast" (Fast YOLO, 9 convs).
    cfg.MODEL.DARKNET.V1_VARIANT = "full"


def _add_segmentation_config(cfg: CN) -> None:
    # U-Net (Ronneberger et al. 2015) as a Detectron2 sem-seg head: SemanticSegmentor +
    # MODEL.SEM_SEG_HEAD.NAME "UNetHead"; the head reads SEM_SEG_HEAD.IN_FEATURES / NUM_CLASSES /
    # IGNORE_VALUE / NORM / LOSS_WEIGHT and the keys below.
    cfg.MODEL.UNET = CN()
    # Output channels of each decoder block, coarse to fine: one block per skip feature after the
    # deepest, then one per extra x2 step down to stride 1 (classic: 512, 256, 128, 64).
    cfg.MODEL.UNET.DECODER_CHANNELS = [512, 256, 128, 64]
    # "transposed": 2x2 stride-2 transposed conv ("up-conv", as in the paper); "bilinear": bilinear
    # x2 followed by a 1x1 conv (fewer parameters, no checkerboard artefacts).
    cfg.MODEL.UNET.UPSAMPLE = "transposed"
    # "ce" (cross-entropy), "dice" (soft Dice, Milletari et al. 2016) or "ce+dice" (their sum).
    cfg.MODEL.UNET.LOSS_TYPE = "ce"
    # Additive smoothing of the soft Dice ratio (keeps it defined for empty classes).
    cfg.MODEL.UNET.DICE_SMOOTH = 1.0
    # Classic encoder (backbone "build_unet_encoder_backbone"): channels of each level; level i
    # outputs "enc{i+1}" at stride 2**i (classic: 64 -> 1024, features enc1..enc5, strides 1..16).
    cfg.MODEL.UNET.ENCODER_CHANNELS = [64, 128, 256, 512, 1024]
    # Norm after each encoder 3x3 conv ("" = none as in the paper, "BN" trains faster from scratch).
    cfg.MODEL.UNET.ENCODER_NORM = "BN"

    # DeepLabv3 / v3+ (Chen et al. 2017 / 2018): MODEL.SEM_SEG_HEAD.NAME "DeepLabV3Head"; ASPP reads
    # the last of SEM_SEG_HEAD.IN_FEATURES (NUM_CLASSES / IGNORE_VALUE / NORM / LOSS_WEIGHT apply).
    cfg.MODEL.DEEPLAB = CN()
    cfg.MODEL.DEEPLAB.ASPP_CHANNELS = 256  # every ASPP branch and its projection (256 in the paper)
    # Rates of the three 3x3 atrous branches: 6/12/18 at output stride 16, 12/24/36 at 8 (Sec. 3.3).
    cfg.MODEL.DEEPLAB.ASPP_DILATIONS = [6, 12, 18]
    cfg.MODEL.DEEPLAB.ASPP_DROPOUT = 0.1  # after the ASPP projection (the official implementation)
    # "" = DeepLabv3; a stride-4 feature such as "res2" = DeepLabv3+ decoder with that skip.
    cfg.MODEL.DEEPLAB.LOW_LEVEL_FEATURE = ""
    cfg.MODEL.DEEPLAB.LOW_LEVEL_CHANNELS = 48  # 1x1 reduction of the skip (48, Chen et al. 2018)
    cfg.MODEL.DEEPLAB.DECODER_CHANNELS = 256  # the v3+ decoder's two 3x3 convs (256)
    cfg.MODEL.DEEPLAB.LOSS_TYPE = "ce"  # "ce", "dice" or "ce+dice" (soft Dice of the U-Net head)
    cfg.MODEL.DEEPLAB.DICE_SMOOTH = 1.0  # additive smoothing of the soft Dice ratio
    # Dilated ResNet (backbone "build_dilated_resnet_backbone"): res4 dilation, 1 or 2; with
    # Detectron2's MODEL.RESNETS.RES5_DILATION (1, 2 or 4 there) it sets the output stride:
    # 1/1 -> 32, 1/2 -> 16, 2/4 -> 8 (Detectron2's own builder dilates only res5, never R18/R34).
    cfg.MODEL.RESNETS.RES4_DILATION = 1
    # Mask R-CNN scored as a segmenter (evaluator_type "mask_sem_seg", see
    # d2ext.evaluation.mask_sem_seg): one sem-seg dataset per DATASETS.TEST entry whose label maps
    # the predicted instance masks are scored against ("" = skip that test set).
    cfg.TEST.MASK_SEM_SEG_DATASETS = []
    cfg.TEST.MASK_SEM_SEG_SCORE_THRESH = 0.5  # instances below this score are not painted


def _add_pose_config(cfg: CN) -> None:
    # PoseShotClassifier (META_ARCHITECTURE "PoseShotClassifier"): COCO keypoints of the main
    # person -> normalised pose features -> shot head. Mapper: "PoseShotDatasetMapper".
    cfg.MODEL.POSE_SHOT = CN()
    cfg.MODEL.POSE_SHOT.NUM_CLASSES = 4  # shot classes (= class folders of the cricket dataset)
    # Detectron2 keypoint model config (file path, or "model_zoo:COCO-Keypoints/..."; "" = none:
    # the model then needs cached keypoints in every input).
    cfg.MODEL.POSE_SHOT.KEYPOINT_CONFIG = ""
    cfg.MODEL.POSE_SHOT.KEYPOINT_WEIGHTS = ""  # its weights file ("" = random init: smoke tests only)
    cfg.MODEL.POSE_SHOT.KEYPOINT_OPTS = []  # extra KEY VALUE overrides of the keypoint config
    # "cached": train the head on keypoints stored in the records (fast); "frozen_detector": run
    # the frozen keypoint model on the images during training too.
    cfg.MODEL.POSE_SHOT.TRAIN_MODE = "cached"
    cfg.MODEL.POSE_SHOT.PERSON_SELECTION = "largest_box"  # or "highest_score", "nearest_center"
    cfg.MODEL.POSE_SHOT.MIN_PERSON_SCORE = 0.0  # detections below this score are not candidates
    # A joint is present when its visibility / score exceeds this (Detectron2's Visualizer: 0.05).
    cfg.MODEL.POSE_SHOT.KEYPOINT_THRESHOLD = 0.05
    # "torso" (mid-hip origin, scale max(TORSO_SCALE x torso, largest joint distance)) or "image"
    # (x / width, y / height: the un-normalised baseline).
    cfg.MODEL.POSE_SHOT.NORMALIZATION = "torso"
    cfg.MODEL.POSE_SHOT.TORSO_SCALE = 2.5  # an adult is about 2.5 torso lengths tall
    cfg.MODEL.POSE_SHOT.JOINT_ANGLES = True  # append elbow/shoulder/knee angles (+ masks)
    cfg.MODEL.POSE_SHOT.WRIST_HEIGHT = True  # append wrist height above the shoulders (+ masks)
    # Training: probability of mirroring a pose with the COCO flip map (left-handed batsmen).
    cfg.MODEL.POSE_SHOT.MIRROR_PROB = 0.0
    cfg.MODEL.POSE_SHOT.LABEL_SMOOTHING = 0.0
    cfg.MODEL.POSE_SHOT.HEAD = CN()
    cfg.MODEL.POSE_SHOT.HEAD.NAME = "ShotClassifierHead"  # in SHOT_HEAD_REGISTRY
    cfg.MODEL.POSE_SHOT.HEAD.NUM_LAYERS = 2  # hidden layers of the MLP
    cfg.MODEL.POSE_SHOT.HEAD.HIDDEN_DIM = 128
    cfg.MODEL.POSE_SHOT.HEAD.DROPOUT = 0.1
    # Mirror every pose to face one way before the features (left-handed batsmen mirror
    # right-handers: a mirrored shot then gives the same features and class).
    cfg.MODEL.POSE_SHOT.CANONICAL_HANDEDNESS = False
    # FusedShotClassifier (META_ARCHITECTURE "FusedShotClassifier", mapper "FusedShotDatasetMapper"):
    # pooled backbone features (MODEL.BACKBONE) + pose features -> FusedShotHead.
    cfg.MODEL.POSE_SHOT.FUSION = CN()
    cfg.MODEL.POSE_SHOT.FUSION.IN_FEATURE = "res5"  # backbone output, averaged over space
    cfg.MODEL.POSE_SHOT.FUSION.HIDDEN_DIM = 128  # width of each branch and of the fused layer
    cfg.MODEL.POSE_SHOT.FUSION.DROPOUT = 0.1
    # training: share of present poses replaced by the learned "no pose" input, so that input is
    # learned even when every training image has a person
    cfg.MODEL.POSE_SHOT.FUSION.POSE_DROP_PROB = 0.1


def _add_evaluation_config(cfg: CN) -> None:
    # COCOEvaluator: Detectron2's compiled fast COCOeval needs `_C`, which does not load on
    # Python 3.11; the pure pycocotools path gives the same numbers.
    cfg.TEST.COCO_USE_FAST_IMPL = False
    # Maximum number of images for which evaluators draw overlay PNGs (0 = none).
    cfg.TEST.NUM_VIS_IMAGES = 4
    # Test-time augmentation of semantic segmenters (d2ext.modeling.SemSegTTA), used when
    # Detectron2's TEST.AUG.ENABLED is True: class probabilities averaged over every scale factor
    # (relative to the test scale, INPUT.AUG.BASE_SCALE) x flip. TEST.AUG.FLIP (Detectron2's)
    # adds the horizontal flip, TEST.AUG.VFLIP the vertical and both together.
    cfg.TEST.AUG.SCALE_FACTORS = (1.0,)
    cfg.TEST.AUG.VFLIP = False


def _add_lineage_config(cfg: CN) -> None:
    # PatchDetector / RCNNClassic (the course's detection lineage, d2ext/modeling/meta_arch/
    # patch_detector.py, rcnn_classic.py): crops of an image warped to CROP_SIZE, classified by
    # MODEL.BACKBONE + a MODEL.CLASSIFIER head with NUM_CLASSES + 1 outputs (last = background).
    cfg.MODEL.PATCH_DETECTOR = CN()
    cfg.MODEL.PATCH_DETECTOR.NUM_CLASSES = 1
    # Where the crops come from: "grid" (GRID x GRID cells), "anchors" (every ANCHOR_SIZES x
    # ANCHOR_ASPECT_RATIOS box on an ANCHOR_STRIDE grid) or "proposals" (precomputed, e.g.
    # selective search through MODEL.LOAD_PROPOSALS + DATASETS.PROPOSAL_FILES_*).
    cfg.MODEL.PATCH_DETECTOR.PATCHES = "grid"
    cfg.MODEL.PATCH_DETECTOR.GRID = 2
    cfg.MODEL.PATCH_DETECTOR.ANCHOR_SIZES = [160, 224]  # sqrt(area), input pixels
    cfg.MODEL.PATCH_DETECTOR.ANCHOR_ASPECT_RATIOS = [0.5, 1.0, 2.0]  # height / width
    cfg.MODEL.PATCH_DETECTOR.ANCHOR_STRIDE = 96
    cfg.MODEL.PATCH_DETECTOR.CROP_SIZE = 64  # warped crop side (R-CNN warps to 227, Girshick et al. 2014)
    # Training labels: IoU >= IOU_THRESHOLD or an object's best crop (Matcher, low-quality matches).
    cfg.MODEL.PATCH_DETECTOR.IOU_THRESHOLD = 0.5
    # Crops per image and share of positives per training step (R-CNN fine-tuning: 32 of 128).
    cfg.MODEL.PATCH_DETECTOR.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.PATCH_DETECTOR.POSITIVE_FRACTION = 0.25
    cfg.MODEL.PATCH_DETECTOR.PROPOSALS_PER_IMAGE = 300  # "proposals": the first N of each image
    # Inference: boxes kept per image (1 = the course's "best patch is the box"), class-wise NMS.
    cfg.MODEL.PATCH_DETECTOR.DETECTIONS_PER_IMAGE = 1
    cfg.MODEL.PATCH_DETECTOR.NMS_THRESH = 0.3  # R-CNN's test-time NMS IoU
    # RCNNClassic only: the SVM / box-regression stage (tools/train_rcnn_svm.py).
    cfg.MODEL.RCNN_CLASSIC = CN()
    cfg.MODEL.RCNN_CLASSIC.SVM_C = 0.001  # LinearSVC C (scikit-learn); features scaled to mean norm 20
    cfg.MODEL.RCNN_CLASSIC.NEG_IOU = 0.3  # SVM negatives: proposals below this IoU (paper: 0.3)
    cfg.MODEL.RCNN_CLASSIC.HARD_NEGATIVE_ROUNDS = 3  # retrain on violating negatives this often
    cfg.MODEL.RCNN_CLASSIC.BBOX_REG_IOU = 0.6  # box-regression training pairs (paper: 0.6)
    cfg.MODEL.RCNN_CLASSIC.BBOX_REG_LAMBDA = 1000.0  # ridge penalty (paper: 1000)


def _add_solver_config(cfg: CN) -> None:
    # "SGD" (Detectron2's build_optimizer: momentum SOLVER.MOMENTUM, nesterov SOLVER.NESTEROV) or
    # "AdamW" (Loshchilov & Hutter 2019; betas SOLVER.BETAS). Both use SOLVER.BASE_LR,
    # WEIGHT_DECAY, WEIGHT_DECAY_NORM, BIAS_LR_FACTOR and gradient clipping as Detectron2 does.
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BETAS = (0.9, 0.999)
