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

# IV-B / Table III baselines. SPADE (Cohen & Hoshen, 2020) "as described in the original publication",
# with a Wide-ResNet50-2: image level, mean distance to the K nearest training images' global
# average-pooled features; pixel level, distance to the nearest (k=1) patch feature among the
# layer1-3 maps of those K images; the map resized (bicubic) and smoothed like PaDiM's (sigma = 4).
SPADE_BACKBONE = "wide_resnet50_2"
SPADE_K_IMAGES = 50
SPADE_K_PATCHES = 1

# IV-B: "our own VAE ... with a ResNet18 as encoder and a 8x8 convolutional latent variable", trained
# per class on 10 000 images augmented by random rotation (-2, +2 degrees), 292x292 resize, random
# 282x282 crop, then 256x256 center crop; 100 epochs, Adam, initial learning rate 1e-4, batch 32.
# The anomaly map is the pixel-wise L2 reconstruction error.
VAE_ENCODER = "resnet18"
VAE_LATENT_GRID = 8
VAE_TRAIN_IMAGES = 10_000
VAE_MAX_DEGREES = 2.0
VAE_RESIZE = 292
VAE_RANDOM_CROP = 282
VAE_CROP = 256
VAE_EPOCHS = 100
VAE_LEARNING_RATE = 1e-4
VAE_BATCH_SIZE = 32
