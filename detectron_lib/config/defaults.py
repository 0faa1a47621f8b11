"""Every config key with its default value: Detectron's key tree, in Detectron's order.

Keys, groups and default values follow Detectron's ``detectron/core/config.py``; a YAML
config may only set keys listed here (``merge_from_file`` rejects anything else). Keys
that this project adds are grouped at the end of the file.

Keys whose comment starts with [Inert] are read by nothing here (Caffe2 switches, features
not carried over); they are listed, with why, in ``compat.INERT_KEYS``, so Detectron's configs
still load, and setting one to a value other than its default warns.

Two values change representation, not meaning: ``PIXEL_MEANS`` is a tuple of three BGR
means instead of a (1, 1, 3) numpy array, and ``BBOX_XFORM_CLIP`` is a Python float.
"""
import math
import os

from detectron_lib.config.node import CfgNode

_C = CfgNode()

# ---------------------------------------------------------------------------- #
# Training options
# ---------------------------------------------------------------------------- #
_C.TRAIN = CfgNode()
# Initial weights for training: a local file or a URL (empty: random initialization)
_C.TRAIN.WEIGHTS = ""
# Catalog names of the datasets to train on; several names train on their union
_C.TRAIN.DATASETS = ()
# Shorter-side image sizes in pixels; one is drawn at random per image (scale jitter)
_C.TRAIN.SCALES = (600,)
# Upper bound in pixels on the longer side of a resized training image
_C.TRAIN.MAX_SIZE = 1000
# Images per GPU (per process) in a training minibatch
_C.TRAIN.IMS_PER_BATCH = 2
# RoIs sampled per image for the box head's minibatch
_C.TRAIN.BATCH_SIZE_PER_IM = 64
# Fraction of the sampled RoIs that should be foreground
_C.TRAIN.FG_FRACTION = 0.25
# An RoI with IoU >= FG_THRESH against a ground-truth box is foreground
_C.TRAIN.FG_THRESH = 0.5
# An RoI with IoU in [BG_THRESH_LO, BG_THRESH_HI) is background (upper bound)
_C.TRAIN.BG_THRESH_HI = 0.5
# Lower bound of the background IoU interval
_C.TRAIN.BG_THRESH_LO = 0.0
# Also train on horizontally flipped copies of the images
_C.TRAIN.USE_FLIPPED = True
# Sampled RoIs whose IoU with their best ground-truth box is >= BBOX_THRESH are trained to
# regress onto it (on that box's class), fg or bg; equal to FG_THRESH (the default and every
# Detectron baseline), exactly the fg RoIs are
_C.TRAIN.BBOX_THRESH = 0.5
# Save a checkpoint every SNAPSHOT_ITERS iterations (Detectron divided it by NUM_GPUS; not here)
_C.TRAIN.SNAPSHOT_ITERS = 80000
# Precomputed proposal files for training, one per entry of TRAIN.DATASETS
_C.TRAIN.PROPOSAL_FILES = ()
# Group images of similar aspect ratio into the same minibatch (saves padding and memory)
_C.TRAIN.ASPECT_GROUPING = True

# RPN training options
# [Inert] Caffe2's CPU or CUDA proposal op (proposals are computed on the model's device)
_C.TRAIN.GENERATE_PROPOSALS_ON_GPU = False
# An anchor with IoU >= this against a ground-truth box is a positive RPN example
_C.TRAIN.RPN_POSITIVE_OVERLAP = 0.7
# An anchor whose best IoU is < this is a negative RPN example
_C.TRAIN.RPN_NEGATIVE_OVERLAP = 0.3
# Fraction of the RPN minibatch that should be positive anchors
_C.TRAIN.RPN_FG_FRACTION = 0.5
# Anchors sampled per image for the RPN loss
_C.TRAIN.RPN_BATCH_SIZE_PER_IM = 256
# NMS IoU threshold applied to RPN proposals during training
_C.TRAIN.RPN_NMS_THRESH = 0.7
# Top-scoring proposals kept before NMS in training (per FPN level with FPN)
_C.TRAIN.RPN_PRE_NMS_TOP_N = 12000
# Proposals kept after NMS in training (in total, with or without FPN)
_C.TRAIN.RPN_POST_NMS_TOP_N = 2000
# Drop anchors that stick out of the image by more than this many pixels (-1: keep all)
_C.TRAIN.RPN_STRADDLE_THRESH = 0
# Minimum proposal width and height, in original-image pixels
_C.TRAIN.RPN_MIN_SIZE = 0
# Training on precomputed proposals: drop those with more than this fraction of their area
# inside a crowd region (iscrowd; VOC's difficult objects); 0 keeps all. End-to-end (RPN)
# training never filters, as in Detectron
_C.TRAIN.CROWD_FILTER_THRESH = 0.7
# Ignore ground-truth objects smaller than this area (-1: keep all)
_C.TRAIN.GT_MIN_AREA = -1
# [Inert] Detectron: do not train the conv body (FPN included); not implemented, see FREEZE_AT
_C.TRAIN.FREEZE_CONV_BODY = False
# Resume from the latest checkpoint found in the output directory
_C.TRAIN.AUTO_RESUME = True
# [Inert] Detectron: copy TRAIN.WEIGHTS into the output directory; not implemented
_C.TRAIN.COPY_WEIGHTS = False
# Freeze the backbone up to and including this stage (0: nothing, 2: stem and res2)
_C.TRAIN.FREEZE_AT = 2

# ---------------------------------------------------------------------------- #
# Data loader options
# ---------------------------------------------------------------------------- #
_C.DATA_LOADER = CfgNode()
# Worker threads (processes) that prepare minibatches
_C.DATA_LOADER.NUM_THREADS = 4
# [Inert] Capacity of Caffe2's shared minibatch queue (the torch DataLoader prefetches itself)
_C.DATA_LOADER.MINIBATCH_QUEUE_SIZE = 64
# [Inert] Capacity of Caffe2's per-GPU queue of input blobs
_C.DATA_LOADER.BLOBS_QUEUE_CAPACITY = 8

# ---------------------------------------------------------------------------- #
# Inference ("test") options
# ---------------------------------------------------------------------------- #
_C.TEST = CfgNode()
# Weights to evaluate: a local file or a URL
_C.TEST.WEIGHTS = ""
# Catalog names of the datasets to evaluate on, one after the other
_C.TEST.DATASETS = ()
# Shorter-side image size in pixels at test time
_C.TEST.SCALE = 600
# Upper bound in pixels on the longer side of a resized test image
_C.TEST.MAX_SIZE = 1000
# NMS IoU threshold for final detections (suppress boxes with IoU >= NMS)
_C.TEST.NMS = 0.3
# Apply the predicted box deltas (box head; RetinaNet's box branch); False keeps the proposals
# (anchors) as the boxes
_C.TEST.BBOX_REG = True
# Precomputed proposal files for testing, one per entry of TEST.DATASETS
_C.TEST.PROPOSAL_FILES = ()
# [Inert] Caffe2's CPU or CUDA proposal op (proposals are computed on the model's device)
_C.TEST.GENERATE_PROPOSALS_ON_GPU = False
# Most precomputed proposals used per image
_C.TEST.PROPOSAL_LIMIT = 2000
# NMS IoU threshold applied to RPN proposals at test time
_C.TEST.RPN_NMS_THRESH = 0.7
# Top-scoring proposals kept before NMS at test time (per FPN level with FPN)
_C.TEST.RPN_PRE_NMS_TOP_N = 12000
# Proposals kept after NMS at test time (in total)
_C.TEST.RPN_POST_NMS_TOP_N = 2000
# Minimum proposal width and height at test time, in original-image pixels
_C.TEST.RPN_MIN_SIZE = 0
# Most detections returned per image (100 is the COCO limit)
_C.TEST.DETECTIONS_PER_IM = 100
# Detections scoring below this are dropped before NMS
_C.TEST.SCORE_THRESH = 0.05
# [Inert] Detectron: False salts the detection file's name and deletes it after evaluation;
# detectron test always keeps <dataset>_{bbox,segm,keypoints}_results.json
_C.TEST.COMPETITION_MODE = True
# [Inert] Detectron: evaluate datasets with their own evaluator (VOC) with the COCO API;
# detectron test evaluates every dataset with the COCO API
_C.TEST.FORCE_JSON_DATASET_EVAL = False
# [Inferred by finalize(); do not set] the model has no RPN, so testing needs TEST.PROPOSAL_FILES
_C.TEST.PRECOMPUTED_PROPOSALS = True

# Test-time augmentation for boxes
_C.TEST.BBOX_AUG = CfgNode()
# Enable test-time augmentation for box detection
_C.TEST.BBOX_AUG.ENABLED = False
# How scores of the augmented predictions are combined: 'ID', 'AVG' or 'UNION'
_C.TEST.BBOX_AUG.SCORE_HEUR = "UNION"
# How box coordinates of the augmented predictions are combined: 'ID', 'AVG' or 'UNION'
_C.TEST.BBOX_AUG.COORD_HEUR = "UNION"
# Add a horizontally flipped pass at the original scale
_C.TEST.BBOX_AUG.H_FLIP = False
# Extra shorter-side scales to test at
_C.TEST.BBOX_AUG.SCALES = ()
# Upper bound on the longer side for the extra scales
_C.TEST.BBOX_AUG.MAX_SIZE = 4000
# Also test a horizontally flipped image at each extra scale
_C.TEST.BBOX_AUG.SCALE_H_FLIP = False
# Keep only small boxes from upscaled passes and large boxes from downscaled passes
_C.TEST.BBOX_AUG.SCALE_SIZE_DEP = False
# Area below which downscaled-pass boxes are dropped (with SCALE_SIZE_DEP)
_C.TEST.BBOX_AUG.AREA_TH_LO = 50**2
# Area above which upscaled-pass boxes are dropped (with SCALE_SIZE_DEP)
_C.TEST.BBOX_AUG.AREA_TH_HI = 180**2
# Extra aspect ratios (relative to the image width) to test at
_C.TEST.BBOX_AUG.ASPECT_RATIOS = ()
# Also test a horizontally flipped image at each extra aspect ratio
_C.TEST.BBOX_AUG.ASPECT_RATIO_H_FLIP = False

# Test-time augmentation for masks
_C.TEST.MASK_AUG = CfgNode()
# Enable test-time augmentation for instance masks
_C.TEST.MASK_AUG.ENABLED = False
# How augmented mask predictions are combined: 'SOFT_AVG', 'SOFT_MAX' or 'LOGIT_AVG'
_C.TEST.MASK_AUG.HEUR = "SOFT_AVG"
# Add a horizontally flipped pass at the original scale
_C.TEST.MASK_AUG.H_FLIP = False
# Extra shorter-side scales to test at
_C.TEST.MASK_AUG.SCALES = ()
# Upper bound on the longer side for the extra scales
_C.TEST.MASK_AUG.MAX_SIZE = 4000
# Also test a horizontally flipped image at each extra scale
_C.TEST.MASK_AUG.SCALE_H_FLIP = False
# Use scale-dependent selection of mask predictions
_C.TEST.MASK_AUG.SCALE_SIZE_DEP = False
# Area threshold of the scale-dependent selection
_C.TEST.MASK_AUG.AREA_TH = 180**2
# Extra aspect ratios (relative to the image width) to test at
_C.TEST.MASK_AUG.ASPECT_RATIOS = ()
# Also test a horizontally flipped image at each extra aspect ratio
_C.TEST.MASK_AUG.ASPECT_RATIO_H_FLIP = False

# Test-time augmentation for keypoints
_C.TEST.KPS_AUG = CfgNode()
# Enable test-time augmentation for keypoints
_C.TEST.KPS_AUG.ENABLED = False
# How augmented keypoint heatmaps are combined: 'HM_AVG' or 'HM_MAX'
_C.TEST.KPS_AUG.HEUR = "HM_AVG"
# Add a horizontally flipped pass at the original scale
_C.TEST.KPS_AUG.H_FLIP = False
# Extra shorter-side scales to test at
_C.TEST.KPS_AUG.SCALES = ()
# Upper bound on the longer side for the extra scales
_C.TEST.KPS_AUG.MAX_SIZE = 4000
# Also test a horizontally flipped image at each extra scale
_C.TEST.KPS_AUG.SCALE_H_FLIP = False
# Use scale-dependent selection of heatmaps
_C.TEST.KPS_AUG.SCALE_SIZE_DEP = False
# Area threshold of the scale-dependent selection
_C.TEST.KPS_AUG.AREA_TH = 180**2
# Extra aspect ratios (relative to the image width) to test at
_C.TEST.KPS_AUG.ASPECT_RATIOS = ()
# Also test a horizontally flipped image at each extra aspect ratio
_C.TEST.KPS_AUG.ASPECT_RATIO_H_FLIP = False

# Soft NMS
_C.TEST.SOFT_NMS = CfgNode()
# Decay overlapping scores (soft NMS) instead of discarding boxes; the IoU threshold is TEST.NMS
_C.TEST.SOFT_NMS.ENABLED = False
# Score decay: 'linear', 'gaussian' or 'hard'
_C.TEST.SOFT_NMS.METHOD = "linear"
# Width of the gaussian decay
_C.TEST.SOFT_NMS.SIGMA = 0.5

# Box voting (Multi-Region CNN)
_C.TEST.BBOX_VOTE = CfgNode()
# Refine each box kept by NMS with the boxes it suppressed
_C.TEST.BBOX_VOTE.ENABLED = False
# Boxes with IoU >= VOTE_TH against a kept box take part in its vote
_C.TEST.BBOX_VOTE.VOTE_TH = 0.8
# Score of a voted box: 'ID', 'TEMP_AVG', 'AVG', 'IOU_AVG', 'GENERALIZED_AVG' or 'QUASI_SUM'
_C.TEST.BBOX_VOTE.SCORING_METHOD = "ID"
# Parameter of the scoring method (temperature, exponent, ...)
_C.TEST.BBOX_VOTE.SCORING_METHOD_BETA = 1.0

# ---------------------------------------------------------------------------- #
# Model options
# ---------------------------------------------------------------------------- #
_C.MODEL = CfgNode()
# Model type, a Detectron model-builder name: 'generalized_rcnn', 'retinanet' or 'rfcn'
_C.MODEL.TYPE = ""
# Backbone builder, a Detectron function name, e.g. 'FPN.add_fpn_ResNet50_conv5_body'
_C.MODEL.CONV_BODY = ""
# Number of classes including background (81 for COCO); must be set
_C.MODEL.NUM_CLASSES = -1
# Predict one class-agnostic box per RoI instead of one box per class
_C.MODEL.CLS_AGNOSTIC_BBOX_REG = False
# Weights (wx, wy, ww, wh) that scale the box-regression targets
_C.MODEL.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Train RPN and the box head jointly (training) / take proposals from the RPN (inference)
_C.MODEL.FASTER_RCNN = False
# The model also predicts instance masks (Mask R-CNN)
_C.MODEL.MASK_ON = False
# The model also predicts keypoints (Keypoint R-CNN)
_C.MODEL.KEYPOINTS_ON = False
# The model stops at RPN proposals (no detection heads)
_C.MODEL.RPN_ONLY = False
# [Inert] Caffe2 net execution type ('dag' or 'prof_dag')
_C.MODEL.EXECUTION_TYPE = "dag"

# ---------------------------------------------------------------------------- #
# RetinaNet options
# ---------------------------------------------------------------------------- #
_C.RETINANET = CfgNode()
# Build a RetinaNet instead of an R-CNN-style model
_C.RETINANET.RETINANET_ON = False
# Anchor aspect ratios (height / width)
_C.RETINANET.ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Anchor scales per octave
_C.RETINANET.SCALES_PER_OCTAVE = 3
# Anchor size at each level = ANCHOR_SCALE * level stride
_C.RETINANET.ANCHOR_SCALE = 4
# Conv layers in the classification and box towers (not counting the output conv)
_C.RETINANET.NUM_CONVS = 4
# Weight of the box-regression loss
_C.RETINANET.BBOX_REG_WEIGHT = 1.0
# Smooth-L1 beta of the box-regression loss
_C.RETINANET.BBOX_REG_BETA = 0.11
# At inference, top-scoring locations kept per FPN level before NMS
_C.RETINANET.PRE_NMS_TOP_N = 1000
# Anchors with IoU >= this are positive
_C.RETINANET.POSITIVE_OVERLAP = 0.5
# Anchors with IoU < this are negative
_C.RETINANET.NEGATIVE_OVERLAP = 0.4
# Focal loss alpha
_C.RETINANET.LOSS_ALPHA = 0.25
# Focal loss gamma
_C.RETINANET.LOSS_GAMMA = 2.0
# Prior foreground probability used to initialize the classifier bias
_C.RETINANET.PRIOR_PROB = 0.01
# Share one tower between the classification and box branches
_C.RETINANET.SHARE_CLS_BBOX_TOWER = False
# Class-specific box regression (default: class-agnostic)
_C.RETINANET.CLASS_SPECIFIC_BBOX = False
# Use a softmax classifier instead of per-class sigmoids
_C.RETINANET.SOFTMAX = False
# At inference, only anchors scoring above this are considered
_C.RETINANET.INFERENCE_TH = 0.05

# ---------------------------------------------------------------------------- #
# Solver options (used as given: rescale them yourself when changing the GPU count)
# ---------------------------------------------------------------------------- #
_C.SOLVER = CfgNode()
# Base learning rate
_C.SOLVER.BASE_LR = 0.001
# Learning-rate schedule: 'step', 'steps_with_decay', 'steps_with_lrs', 'cosine_decay', 'exp_decay'
_C.SOLVER.LR_POLICY = "step"
# Decay factor of 'step'/'steps_with_decay'; final/initial LR ratio of 'exp_decay'
_C.SOLVER.GAMMA = 0.1
# Period in iterations of the 'step' policy
_C.SOLVER.STEP_SIZE = 30000
# Iterations where the LR changes ('steps_with_decay', 'steps_with_lrs'); starts at 0
_C.SOLVER.STEPS = []
# Learning rate of each step ('steps_with_lrs')
_C.SOLVER.LRS = []
# Total training iterations
_C.SOLVER.MAX_ITER = 40000
# SGD momentum
_C.SOLVER.MOMENTUM = 0.9
# L2 weight decay
_C.SOLVER.WEIGHT_DECAY = 0.0005
# L2 weight decay of GroupNorm parameters
_C.SOLVER.WEIGHT_DECAY_GN = 0.0
# Warm-up length in iterations
_C.SOLVER.WARM_UP_ITERS = 500
# Warm-up starts at BASE_LR * WARM_UP_FACTOR
_C.SOLVER.WARM_UP_FACTOR = 1.0 / 3.0
# Warm-up shape: 'constant' or 'linear'
_C.SOLVER.WARM_UP_METHOD = "linear"
# [Inert] Detectron rescaled Caffe2's momentum buffer by new_lr / old_lr when the LR changed;
# torch.optim.SGD keeps the LR outside the buffer, which always has that effect
_C.SOLVER.SCALE_MOMENTUM = True
# [Inert] ...only when the relative LR change exceeded this ratio
_C.SOLVER.SCALE_MOMENTUM_THRESHOLD = 1.1
# [Inert] Detectron logged an LR change above this ratio (train_log.jsonl has every logged LR)
_C.SOLVER.LOG_LR_CHANGE_THRESHOLD = 1.1

# ---------------------------------------------------------------------------- #
# Fast R-CNN (box head) options
# ---------------------------------------------------------------------------- #
_C.FAST_RCNN = CfgNode()
# Box head builder, a Detectron function name, e.g. 'fast_rcnn_heads.add_roi_2mlp_head'
_C.FAST_RCNN.ROI_BOX_HEAD = ""
# Hidden width of the MLP box head
_C.FAST_RCNN.MLP_HEAD_DIM = 1024
# Channels of the conv box head
_C.FAST_RCNN.CONV_HEAD_DIM = 256
# Conv layers in the conv box head
_C.FAST_RCNN.NUM_STACKED_CONVS = 4
# RoI feature extraction: 'RoIPoolF' (RoI pooling) or 'RoIAlign'
_C.FAST_RCNN.ROI_XFORM_METHOD = "RoIPoolF"
# Sampling points per bin for RoIAlign (0: adaptive)
_C.FAST_RCNN.ROI_XFORM_SAMPLING_RATIO = 0
# Output size of the RoI feature transform
_C.FAST_RCNN.ROI_XFORM_RESOLUTION = 14

# ---------------------------------------------------------------------------- #
# RPN options
# ---------------------------------------------------------------------------- #
_C.RPN = CfgNode()
# [Inferred by finalize(); do not set] the model contains an RPN
_C.RPN.RPN_ON = False
# Anchor sizes in input pixels (single-level RPN; FPN uses FPN.RPN_*)
_C.RPN.SIZES = (64, 128, 256, 512)
# Stride of the feature map the single-level RPN runs on
_C.RPN.STRIDE = 16
# Anchor aspect ratios (single-level RPN)
_C.RPN.ASPECT_RATIOS = (0.5, 1, 2)

# ---------------------------------------------------------------------------- #
# FPN options
# ---------------------------------------------------------------------------- #
_C.FPN = CfgNode()
# Build a feature pyramid on the backbone
_C.FPN.FPN_ON = False
# Channels of every pyramid level
_C.FPN.DIM = 256
# Initialize the lateral connections to output zero
_C.FPN.ZERO_INIT_LATERAL = False
# Stride of the coarsest level; inputs are padded to a multiple of it
_C.FPN.COARSEST_STRIDE = 32
# Pool RoI features from several pyramid levels
_C.FPN.MULTILEVEL_ROIS = False
# Canonical RoI size s0 of the RoI-to-level assignment
_C.FPN.ROI_CANONICAL_SCALE = 224
# Level k0 that an RoI of size s0 is assigned to
_C.FPN.ROI_CANONICAL_LEVEL = 4
# Coarsest level used for RoI pooling
_C.FPN.ROI_MAX_LEVEL = 5
# Finest level used for RoI pooling
_C.FPN.ROI_MIN_LEVEL = 2
# Run the RPN on several pyramid levels
_C.FPN.MULTILEVEL_RPN = False
# Coarsest RPN level
_C.FPN.RPN_MAX_LEVEL = 6
# Finest RPN level
_C.FPN.RPN_MIN_LEVEL = 2
# Anchor aspect ratios of the FPN RPN
_C.FPN.RPN_ASPECT_RATIOS = (0.5, 1, 2)
# Anchor size at RPN_MIN_LEVEL; it doubles at each coarser level
_C.FPN.RPN_ANCHOR_START_SIZE = 32
# Add the extra P6/P7 levels of RetinaNet
_C.FPN.EXTRA_CONV_LEVELS = False
# Use GroupNorm in the FPN layers (lateral and output convs)
_C.FPN.USE_GN = False

# ---------------------------------------------------------------------------- #
# Mask R-CNN options
# ---------------------------------------------------------------------------- #
_C.MRCNN = CfgNode()
# Mask head builder, a Detectron function name, e.g. 'mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs'
_C.MRCNN.ROI_MASK_HEAD = ""
# Side of the predicted masks
_C.MRCNN.RESOLUTION = 14
# RoI feature extraction for the mask head: 'RoIPoolF' or 'RoIAlign'
_C.MRCNN.ROI_XFORM_METHOD = "RoIAlign"
# Output size of the mask head's RoI feature transform
_C.MRCNN.ROI_XFORM_RESOLUTION = 7
# Sampling points per bin for RoIAlign (0: adaptive)
_C.MRCNN.ROI_XFORM_SAMPLING_RATIO = 0
# Channels of the mask head
_C.MRCNN.DIM_REDUCED = 256
# Dilation of the mask head convs
_C.MRCNN.DILATION = 2
# Upsampling factor of the predicted masks
_C.MRCNN.UPSAMPLE_RATIO = 1
# Predict masks with a fully connected layer instead of a conv
_C.MRCNN.USE_FC_OUTPUT = False
# Weight initializer of the mask head: 'GaussianFill' or 'MSRAFill'
_C.MRCNN.CONV_INIT = "GaussianFill"
# Predict one mask per class (False: one class-agnostic mask)
_C.MRCNN.CLS_SPECIFIC_MASK = True
# Weight of the mask loss
_C.MRCNN.WEIGHT_LOSS_MASK = 1.0
# Train the mask head on at most this many fg RoIs per image (0: all of them, as Detectron).
# The box head's sampler draws fg RoIs in random order, so the first ones are a uniform
# sample; a cap keeps the mask head's cost fixed when TRAIN.FG_FRACTION rises.
_C.MRCNN.MAX_FG_ROIS_PER_IM = 0
# Threshold that binarizes soft masks
_C.MRCNN.THRESH_BINARIZE = 0.5

# ---------------------------------------------------------------------------- #
# Keypoint R-CNN options
# ---------------------------------------------------------------------------- #
_C.KRCNN = CfgNode()
# Keypoint head builder, a Detectron function name, e.g. 'keypoint_rcnn_heads.add_roi_pose_head_v1convX'
_C.KRCNN.ROI_KEYPOINTS_HEAD = ""
# Side of the predicted heatmaps (the loss is computed at this size)
_C.KRCNN.HEATMAP_SIZE = -1
# Bilinear upsampling factor applied to the final heatmaps
_C.KRCNN.UP_SCALE = -1
# Apply a transposed conv to the head features before predicting heatmaps
_C.KRCNN.USE_DECONV = False
# Channels of that transposed conv
_C.KRCNN.DECONV_DIM = 256
# Predict the heatmaps with a transposed conv
_C.KRCNN.USE_DECONV_OUTPUT = False
# [Inert] Dilation of Detectron's ResNet conv5 keypoint head, which is not implemented
_C.KRCNN.DILATION = 1
# Kernel size of every transposed conv
_C.KRCNN.DECONV_KERNEL = 4
# Keypoints per instance (17 for COCO)
_C.KRCNN.NUM_KEYPOINTS = -1
# Conv layers in the keypoint head
_C.KRCNN.NUM_STACKED_CONVS = 8
# Channels of the keypoint head convs
_C.KRCNN.CONV_HEAD_DIM = 256
# Kernel size of the keypoint head convs
_C.KRCNN.CONV_HEAD_KERNEL = 3
# Weight initializer of the keypoint head: 'GaussianFill' or 'MSRAFill'
_C.KRCNN.CONV_INIT = "GaussianFill"
# Keypoint OKS-NMS at test time: not implemented, True is a ConfigError (no Detectron baseline
# sets it)
_C.KRCNN.NMS_OKS = False
# Keypoint score source: 'bbox', 'logit' or 'prob'
_C.KRCNN.KEYPOINT_CONFIDENCE = "bbox"
# RoI feature extraction for the keypoint head: 'RoIPoolF' or 'RoIAlign'
_C.KRCNN.ROI_XFORM_METHOD = "RoIAlign"
# Output size of the keypoint head's RoI feature transform
_C.KRCNN.ROI_XFORM_RESOLUTION = 7
# Sampling points per bin for RoIAlign (0: adaptive)
_C.KRCNN.ROI_XFORM_SAMPLING_RATIO = 0
# Training on precomputed proposals: a minibatch (of one process) whose keypoint RoIs hold
# this many visible keypoints or fewer gets no keypoint loss (Detectron drew another
# minibatch instead); end-to-end (RPN) training ignores it, as Detectron's did
_C.KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH = 20
# Do not shrink heatmaps below this size when decoding keypoint locations
_C.KRCNN.INFERENCE_MIN_SIZE = 0
# Weight of the keypoint loss (1.0 with NORMALIZE_BY_VISIBLE_KEYPOINTS, else 4.0)
_C.KRCNN.LOSS_WEIGHT = 1.0
# Normalize the keypoint loss by the visible keypoints in the minibatch
_C.KRCNN.NORMALIZE_BY_VISIBLE_KEYPOINTS = True

# ---------------------------------------------------------------------------- #
# R-FCN options
# ---------------------------------------------------------------------------- #
_C.RFCN = CfgNode()
# Grid size (height = width) of position-sensitive RoI pooling
_C.RFCN.PS_GRID_SIZE = 3

# ---------------------------------------------------------------------------- #
# ResNet / ResNeXt options
# ---------------------------------------------------------------------------- #
_C.RESNETS = CfgNode()
# Groups of the 3x3 convs: 1 is ResNet, more is ResNeXt
_C.RESNETS.NUM_GROUPS = 1
# Channels per group in the first stage
_C.RESNETS.WIDTH_PER_GROUP = 64
# Put the stride-2 conv on the 1x1 conv (original MSRA ResNet) instead of the 3x3
_C.RESNETS.STRIDE_1X1 = True
# Residual block transformation, e.g. 'bottleneck_transformation'
_C.RESNETS.TRANS_FUNC = "bottleneck_transformation"
# Stem (conv1 + pool1), e.g. 'basic_bn_stem'
_C.RESNETS.STEM_FUNC = "basic_bn_stem"
# Projection shortcut, e.g. 'basic_bn_shortcut'
_C.RESNETS.SHORTCUT_FUNC = "basic_bn_shortcut"
# Dilation of the res5 stage
_C.RESNETS.RES5_DILATION = 1

# ---------------------------------------------------------------------------- #
# GroupNorm options
# ---------------------------------------------------------------------------- #
_C.GROUP_NORM = CfgNode()
# Channels per group (-1: use NUM_GROUPS)
_C.GROUP_NORM.DIM_PER_GP = -1
# Number of groups (-1: use DIM_PER_GP)
_C.GROUP_NORM.NUM_GROUPS = 32
# Epsilon added to the variance
_C.GROUP_NORM.EPSILON = 1e-5

# ---------------------------------------------------------------------------- #
# Misc options
# ---------------------------------------------------------------------------- #
# GPUs (processes) of a run, as recorded in the zoo table; the workflow sets it to its torchrun
# worker count, which is what decides the processes (torchrun's WORLD_SIZE)
_C.NUM_GPUS = 1
# [Inert] Caffe2's all-reduce choice (torch.distributed uses NCCL on CUDA, gloo on the CPU)
_C.USE_NCCL = False
# Testing on precomputed proposals: proposals whose coordinates x DEDUP_BOXES round to the
# same integers are scored once, and all take that one's scores and boxes (0: off)
_C.DEDUP_BOXES = 1.0 / 16.0
# Clamp for predicted log width/height deltas, so exp() cannot overflow
_C.BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)
# Per-channel pixel means subtracted from input images, in PIXEL_ORDER (BGR by default)
_C.PIXEL_MEANS = (102.9801, 115.9465, 122.7717)
# Seed of the random number generators
_C.RNG_SEED = 3
# [Inert] A small constant Detectron defined but never read
_C.EPS = 1e-14
# [Inert] Detectron's code root (the working directory at import time), recorded only
_C.ROOT_DIR = os.getcwd()
# Directory that outputs are written under
_C.OUTPUT_DIR = "/tmp"
# [Inert] MATLAB of Detectron's official VOC evaluation (VOC AP here is the Python port)
_C.MATLAB = "matlab"
# [Inert] Share gradient memory between blobs (Caffe2 memonger)
_C.MEMONGER = True
# [Inert] Also share forward activations (Caffe2 memonger)
_C.MEMONGER_SHARE_ACTIVATIONS = False
# [Inert] Detectron: draw the detections while testing (detectron infer draws them)
_C.VIS = False
# [Inert] Score threshold of those drawings (detectron infer has --thresh)
_C.VIS_TH = 0.9
# [Inert] Detectron: [dataset, task, metric, value] entries checked after testing; not implemented
_C.EXPECTED_RESULTS = []
# [Inert] Relative tolerance of that check
_C.EXPECTED_RESULTS_RTOL = 0.1
# [Inert] Absolute tolerance of that check
_C.EXPECTED_RESULTS_ATOL = 0.005
# [Inert] For expectations given as mean and std: mean +/- SIGMA_TOL * std
_C.EXPECTED_RESULTS_SIGMA_TOL = 4
# [Inert] Address Detectron mailed when that check failed
_C.EXPECTED_RESULTS_EMAIL = ""
# Local cache for weights and proposal files referred to by URL
_C.DOWNLOAD_CACHE = "/tmp/detectron-download-cache"

# ---------------------------------------------------------------------------- #
# Cluster options
# ---------------------------------------------------------------------------- #
_C.CLUSTER = CfgNode()
# [Inert] Detectron: running on Facebook's cluster (read by its Cityscapes evaluator only)
_C.CLUSTER.ON_CLUSTER = False

# ---------------------------------------------------------------------------- #
# Keys of this project (not in Detectron)
# ---------------------------------------------------------------------------- #
# Root of the dataset files; empty means $DETECTRON_DATA_ROOT, else results/data
_C.DATA_ROOT = ""
# YAML file of user-registered datasets added to the dataset catalog (empty: none)
_C.DATASET_CATALOG_FILE = ""
# Device to run on: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'
_C.DEVICE = "auto"
# True (Detectron): box widths are x2 - x1 + 1, Detectron's pixel-index convention, in box
# coding, anchors, clipping and evaluation; training targets x2 = x + w - 1 from COCO's
# [x, y, w, h] and flips x -> width - 1 - x (boxes, proposals, polygons, keypoints), as
# Detectron loaded them. False: x2 - x1, x2 = x + w and x -> width - x, as torchvision and
# detectron2. A Detectron config (and a Detectron model-zoo .pkl) means True, the default.
_C.MODEL.BBOX_LEGACY_PLUS_ONE = True
# What a model's class labels are: False (Detectron), label k is the k-th category of the
# dataset in id order (1..K); True (torchvision's COCO models), a label is the dataset's JSON
# category id, so NUM_CLASSES exceeds the largest id (91 for COCO, whose ids run to 90)
_C.MODEL.LABELS_ARE_CATEGORY_IDS = False
# RoIAlign with the half-pixel offset of detectron2 (False: the RoIAlign of Detectron and of
# torchvision's detection models)
_C.MODEL.ROI_ALIGN_ALIGNED = False
# Channel order of the images the model receives: 'BGR' (Detectron, detectron2's MSRA models)
# or 'RGB' (torchvision); PIXEL_MEANS and PIXEL_STDS are given in this order
_C.PIXEL_ORDER = "BGR"
# Per-channel divisors applied after PIXEL_MEANS is subtracted, in PIXEL_ORDER (1: none, as in
# Detectron; torchvision's ImageNet models use 255 x (0.229, 0.224, 0.225) in RGB)
_C.PIXEL_STDS = (1.0, 1.0, 1.0)
# Paste masks into the image as Detectron and torchvision do (the mask, padded by one cell,
# resized to its box rounded to whole pixels; the default, as a Detectron config expects);
# False: detectron2's bilinear sampling of the mask at every pixel centre of the exact box
_C.MRCNN.LEGACY_PASTE = True
# Upsample keypoint heatmaps by KRCNN.UP_SCALE as torchvision and detectron2 do (bilinear
# interpolation repeating the border cells); False: Detectron's fixed bilinear transposed
# conv, which blends the border cells with zeros (the interior is the same)
_C.KRCNN.UP_SCALE_INTERPOLATE = False
# RetinaNet's P6 conv reads P5 (torchvision's RetinaNet) instead of C5, the res5 output (Detectron)
_C.FPN.EXTRA_CONV_LEVELS_ON_P5 = False
# RetinaNet anchor sizes truncated to whole pixels (torchvision: 32, 40, 50 for 32, 40.3, 50.8)
_C.RETINANET.INTEGER_ANCHOR_SIZES = False
# Order a cell's RetinaNet anchors aspect ratio first, then size (torchvision); False: size
# (octave scale) first, then aspect ratio (Detectron). The predictors' channels follow it
_C.RETINANET.RATIO_MAJOR_ANCHORS = False
# Round the cell anchors of the continuous box geometry (MODEL.BBOX_LEGACY_PLUS_ONE False) to
# whole pixels, as torchvision does; False keeps detectron2's exact anchors (22.63 x 11.31,
# not 23 x 11). Detectron's own geometry always rounds: False needs BBOX_LEGACY_PLUS_ONE False
_C.MODEL.ROUND_ANCHORS = True
# Map results back to the original image as detectron2's detector_postprocess does: boxes and
# keypoints (decoded in the resized image) scaled by the original / resized width and height,
# boxes clipped to the original image, empty ones dropped. False: boxes divided by the resize
# factor, keypoints decoded in the original image (Detectron). Needs BBOX_LEGACY_PLUS_ONE False
_C.MODEL.RESCALE_PER_AXIS = False
# Order a cell's RPN anchors size first, then aspect ratio (detectron2); False: ratio first
# (Detectron, torchvision). It matters for a single-level RPN with several RPN.SIZES (C4)
_C.RPN.SIZE_MAJOR_ANCHORS = False
# GroupNorm (GROUP_NORM.*) after every conv of the RetinaNet class and box towers, as
# detectron2's RetinaNet head offers; Detectron's towers have no norm
_C.RETINANET.USE_GN = False
# The tower convs keep their bias before the norm (detectron2's RetinaNet head with GN); False:
# the norm's shift replaces it, as in Detectron's ConvGN. No effect without RETINANET.USE_GN
_C.RETINANET.TOWER_CONV_BIAS = False
# Apply INFERENCE_TH on every level (detectron2); False: not on the coarsest level (Detectron)
_C.RETINANET.THRESH_ALL_LEVELS = False
# NMS on unclipped boxes, then clip them and drop the empty ones (detectron2); False: clip
# before NMS and keep every box (Detectron)
_C.RETINANET.CLIP_AFTER_NMS = False
# A keypoint's third value is detectron2's score, the spatial softmax at its argmax normalized
# over the predicted heatmap's cells; False: the heatmap logit at the argmax (Detectron)
_C.KRCNN.NORMALIZED_KEYPOINT_SCORES = False
# How COCO keypoint results (detectron test) write a keypoint: 'detectron' as predicted, with
# visibility 1; 'detectron2' as its COCOEvaluator writes them: its models predict pixel centres
# (it trains on COCO's integer keypoints + 0.5), so x and y - 0.5 (back to COCO's pixel
# indices), and the keypoint's score as the third value
_C.KRCNN.RESULTS_FORMAT = "detectron"
# Precision of the convolutional body (backbone and FPN) in training and inference: 'auto'
# (float16 autocast on CUDA; bfloat16 on CPUs with native bf16 arithmetic, AVX512-BF16 or
# AMX, detected at run time; float32 on other CPUs, which only emulate bfloat16, many times
# slower), 'float32', 'float16' or 'bfloat16'. Heads, box coding and losses run in float32.
_C.MODEL.BODY_PRECISION = "auto"
# Precision of the heads' hidden layers under autocast, same values: the RPN conv, the
# RetinaNet towers, the box head (fc6/fc7, Xconv1fc), the mask head's convs and transposed
# conv and the keypoint head's convs. Their predictors (class logits, box deltas, mask and
# keypoint logits), box coding and losses stay float32. 'auto': as for the body.
_C.MODEL.HEAD_PRECISION = "float32"

# Backbone pretraining by object classification (`detectron pretrain`), the stand-in for
# ImageNet pretraining where there is none: the ResNet body of MODEL.CONV_BODY learns to
# classify crops of the datasets' objects and background, and its weights are written in
# Detectron's ImageNet-weights format for TRAIN.WEIGHTS.
_C.PRETRAIN = CfgNode()
# Datasets whose objects are cropped (empty: TRAIN.DATASETS)
_C.PRETRAIN.DATASETS = ()
# Datasets whose crops measure the top-1 accuracy reported at the end (empty: none)
_C.PRETRAIN.VAL_DATASETS = ()
# Batches of crops of VAL_DATASETS used for that accuracy
_C.PRETRAIN.VAL_BATCHES = 20
_C.PRETRAIN.MAX_ITER = 500
# Side of the square crops, in pixels
_C.PRETRAIN.CROP_SIZE = 64
# A batch has IMAGES_PER_BATCH images x CROPS_PER_IMAGE crops
_C.PRETRAIN.IMAGES_PER_BATCH = 16
_C.PRETRAIN.CROPS_PER_IMAGE = 4
# Fraction of crops drawn from the background (label 0)
_C.PRETRAIN.BACKGROUND_FRACTION = 0.25
# SGD with SOLVER.MOMENTUM, linear warm-up then cosine decay to zero
_C.PRETRAIN.BASE_LR = 0.1
_C.PRETRAIN.WARM_UP_ITERS = 50
_C.PRETRAIN.WEIGHT_DECAY = 0.0001

_C.freeze()


def get_default_cfg():
    """A fresh, mutable copy of the default config."""
    return _C.clone()
