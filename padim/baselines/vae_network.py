"""The network, loss and augmentation of the PaDiM paper's VAE baseline (Section IV-B).

The paper gives the encoder, the latent grid, the augmentations and the optimisation; it does not give
the latent width, the decoder or the loss weighting. Ours: a 1x1-conv Gaussian latent of
`latent_channels` channels on ResNet18's stride-32 layer4 grid (256 -> 8x8), a decoder mirroring the
encoder's widths with five x2 upsampling stages, and the standard loss (per-image sum of squared
errors in normalised pixel space + KL divergence to N(0, I), averaged over the batch).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from padim import paper
from padim.backbone import WeightSource, build_backbone

STRIDE = 32  # ResNet18's layer4 stride: paper.VAE_CROP / STRIDE == paper.VAE_LATENT_GRID
# Decoder widths, latent -> image: ResNet18's layer4, layer3, layer2, layer1 and stem widths, then 32.
DECODER_WIDTHS = (512, 256, 128, 64, 64, 32)


# ----------------------------------------------------------------------------- network
def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    """x2 nearest upsampling, 3x3 conv, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class PaperVAE(nn.Module):
    """Pure torch VAE: normalised (B, 3, H, W) -> reconstruction (B, 3, H, W), latent mean and log-variance.

    H and W must be multiples of STRIDE; the latent grid is (H / 32, W / 32).
    """

    def __init__(self, encoder: nn.Module, latent_channels: int, encoder_channels: int = 512) -> None:
        super().__init__()
        self.encoder = encoder  # timm resnet18 without its classifier; forward_features stops at layer4
        self.mu = nn.Conv2d(encoder_channels, latent_channels, 1)
        self.logvar = nn.Conv2d(encoder_channels, latent_channels, 1)
        stages = [nn.Sequential(nn.Conv2d(latent_channels, DECODER_WIDTHS[0], 1, bias=False),
                                nn.BatchNorm2d(DECODER_WIDTHS[0]), nn.ReLU(inplace=True))]
        stages += [_up_block(a, b) for a, b in zip(DECODER_WIDTHS[:-1], DECODER_WIDTHS[1:])]
        stages.append(nn.Conv2d(DECODER_WIDTHS[-1], 3, 3, padding=1))  # no activation: normalised space
        self.decoder = nn.Sequential(*stages)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean and log-variance, (B, latent_channels, H/32, W/32) each."""
        h = self.encoder.forward_features(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, 3, 32 h, 32 w) of a latent (B, latent_channels, h, w)."""
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar); a sampled latent in training mode, the mean in eval mode."""
        mu, logvar = self.encode(x)
        z = mu
        if self.training:
            device = generator.device if generator is not None else mu.device
            noise = torch.randn(mu.shape, generator=generator, device=device, dtype=mu.dtype).to(mu.device)
            z = mu + torch.exp(0.5 * logvar) * noise
        return self.decode(z), mu, logvar


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-image sum of squared reconstruction errors plus KL(q(z|x) || N(0, I)), averaged over the batch."""
    sse = (recon - x).square().flatten(1).sum(dim=1)
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).flatten(1).sum(dim=1)
    return (sse + kl).mean()


def reconstruction_error(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Pixel-wise L2 norm over channels of x - recon: (B, 3, H, W) -> (B, H, W)."""
    return (x - recon).square().sum(dim=1).sqrt()


def build_network(
    latent_channels: int, weights: str | os.PathLike | None = None, seed: int = 0
) -> tuple[PaperVAE, WeightSource]:
    """A trainable PaperVAE with an ImageNet (default), file or seeded random ResNet18 encoder."""
    # the same weight lookup as PaDiM's
    backbone = build_backbone(paper.VAE_ENCODER, layers=("layer4",), weights=weights, seed=seed)
    encoder = backbone.extractor.model
    encoder.reset_classifier(0)
    encoder.requires_grad_(True).train()  # build_backbone freezes; the VAE fine-tunes its encoder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = PaperVAE(encoder, latent_channels)
    return net, backbone.source


# ----------------------------------------------------------------------------- augmentation
def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each square (B, C, S, S) image about its centre by its own angle (bilinear, zero fill)."""
    rad = torch.deg2rad(degrees.to(images))
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    # On a square image affine_grid's normalised coordinates are isotropic: this theta is a pure rotation.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augmented_batch(
    images: torch.Tensor, size: int, generator: torch.Generator, max_degrees: float, random_crop: int, crop: int
) -> torch.Tensor:
    """Draw `size` augmented samples (float in [0, 1]) from resized uint8 images (N, 3, R, R).

    Random image (with replacement), random rotation in +-max_degrees, random random_crop crop, center
    crop. The paper rotates before the 292 resize; rotation about the centre commutes with an isotropic
    resize, so rotating the cached resized images is the same augmentation up to interpolation.
    """
    n, resize = images.shape[0], images.shape[-1]
    index = torch.randint(n, (size,), generator=generator)
    degrees = (torch.rand(size, generator=generator, dtype=torch.float64) * 2 - 1) * max_degrees
    tops = torch.randint(resize - random_crop + 1, (size,), generator=generator).tolist()
    lefts = torch.randint(resize - random_crop + 1, (size,), generator=generator).tolist()
    rotated = rotate(images[index.to(images.device)].float() / 255.0, degrees)
    centre = int(round((random_crop - crop) / 2.0))  # as Preprocess.crop_box rounds
    return torch.stack([
        rotated[i, :, t + centre : t + centre + crop, l + centre : l + centre + crop]
        for i, (t, l) in enumerate(zip(tops, lefts))
    ])
