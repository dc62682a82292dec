"""Every constant taken from the PaDiM paper (Defard et al., 2020), under the paper's name for it.

Section numbers refer to arXiv:2011.08785.
"""

# Eq. 1: Sigma_ij = 1/(N-1) sum (x - mu)(x - mu)^T + eps * I, "by default we use eps = 0.01" (IV-B).
EPSILON = 0.01

# IV-B: "we use a Gaussian filter on the anomaly maps with parameter sigma = 4".
GAUSSIAN_SIGMA = 4.0
# scipy.ndimage.gaussian_filter's default truncation (radius = 4 sigma), used by the reference code.
GAUSSIAN_TRUNCATE = 4.0

# IV-B: MVTec AD images are resized to 256x256 and center-cropped to 224x224 (bicubic).
MVTEC_RESIZE = 256
MVTEC_CROP = 224
# IV-B: STC images are only resized to 256x256.
STC_RESIZE = 256

# ImageNet normalisation of the torchvision/timm backbones the paper uses.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# IV-B: the first three layers of the ResNets (stride 4, 8, 16).
RESNET_LAYERS = ("layer1", "layer2", "layer3")
# IV-B: random dimensionality reduction Rd: "PaDiM-R18-Rd100", "PaDiM-WR50-Rd550".
RD_RESNET18 = 100
RD_WIDE_RESNET50 = 550

# IV-B: EfficientNet-B5 "layers 7 (level 2), 20 (level 4), and 26 (level 5)": see padim.backbone.
EFFICIENTNET_B5_LEVELS = (2, 4, 5)

# V-C, non-aligned MVTec AD: random rotation in (-10, +10) degrees and a random 224 crop of the
# 256-resized image, applied to train and test images alike.
NONALIGNED_RESIZE = 256
NONALIGNED_CROP = 224
NONALIGNED_MAX_DEGREES = 10.0

# Table III's split of the MVTec AD classes.
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper")

# V-B / Tables I-III: PRO is integrated up to a false-positive rate of 0.3 and divided by 0.3.
PRO_FPR_LIMIT = 0.3
