"""The PaDiM paper's VAE baseline (Section IV-B): ResNet18 encoder, 8x8 convolutional latent, L2 error map.

The paper gives the encoder, the latent grid, the augmentations and the optimisation; it does not give
the latent width, the decoder or the loss weighting. Ours: a 1x1-conv Gaussian latent of
`latent_channels` channels on ResNet18's stride-32 layer4 grid (256 -> 8x8), a decoder mirroring the
encoder's widths with five x2 upsampling stages, and the standard loss (per-image sum of squared
errors in normalised pixel space + KL divergence to N(0, I), averaged over the batch).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from padim import paper
from padim.backbone import WeightSource, build_backbone, state_sha256
from padim.data import Item, Preprocess, as_items, check_finite, iter_batches, n_batches
from padim.errors import ModelFileError, NotFittedError, PadimError
from padim.modelfile import FileKind, read_model, write_model
from padim.prediction import Prediction, Scored, collect
from padim.scoring import gaussian_blur, image_scores

STRIDE = 32  # ResNet18's layer4 stride: paper.VAE_CROP / STRIDE == paper.VAE_LATENT_GRID
# Decoder widths, latent -> image: ResNet18's layer4, layer3, layer2, layer1 and stem widths, then 32.
DECODER_WIDTHS = (512, 256, 128, 64, 64, 32)

CHECKPOINT_VERSION = 1
CHECKPOINT = FileKind("torch-padim-vae-checkpoint", CHECKPOINT_VERSION, "padim_vae", "torch-padim VAE checkpoint",
                      "VAE checkpoint")


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
    backbone = build_backbone(paper.VAE_ENCODER, ("layer4",), weights, seed)  # same weight lookup as PaDiM
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


# ----------------------------------------------------------------------------- checkpoints
def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as flat 'optimizer.<index>.<name>' tensors."""
    return {f"optimizer.{i}.{name}": value for i, state in optimizer.state_dict()["state"].items()
            for name, value in state.items()}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of optimizer_tensors (hyper-parameters stay those the optimizer was built with)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


# ----------------------------------------------------------------------------- estimator
class VAE:
    """The PaDiM paper's VAE baseline: ResNet18 encoder, 8x8 convolutional latent, pixel-wise L2 reconstruction error.

    Defaults follow the paper (Section IV-B): each epoch draws `n_train` augmented samples of the
    training images; Adam; anomaly map = L2 error, unsmoothed (sigma=0). `latent_channels` is ours
    (the paper does not give it). `weights`: None finds ImageNet ResNet18 weights offline, a path
    reads a file, "random" gives seeded random weights (tests only). `checkpoint`: a file saved after
    every epoch and resumed from by fit() when its hyper-parameters match.
    """

    def __init__(
        self,
        latent_channels: int = 128,
        n_train: int = paper.VAE_TRAIN_IMAGES,
        epochs: int = paper.VAE_EPOCHS,
        batch_size: int = paper.VAE_BATCH_SIZE,
        learning_rate: float = paper.VAE_LEARNING_RATE,
        max_degrees: float = paper.VAE_MAX_DEGREES,
        resize: int = paper.VAE_RESIZE,
        random_crop: int = paper.VAE_RANDOM_CROP,
        crop_size: int = paper.VAE_CROP,
        sigma: float = 0.0,
        weights: str | None = None,
        checkpoint: str | None = None,
        device: str = "cpu",
        seed: int = 0,
        workers: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.latent_channels = latent_channels
        self.n_train = n_train
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_degrees = max_degrees
        self.resize = resize
        self.random_crop = random_crop
        self.crop_size = crop_size
        self.sigma = sigma
        self.weights = weights
        self.checkpoint = checkpoint
        self.device = device
        self.seed = seed
        self.workers = workers
        self.verbose = verbose

    @property
    def preprocess_(self) -> Preprocess:
        """Test-time preprocessing: resize, center crop (256/292 ~ PaDiM's 224/256), ImageNet normalisation."""
        return Preprocess(image_size=(self.resize, self.resize), crop_size=(self.crop_size, self.crop_size))

    def _check_params(self) -> None:
        """Reject parameter values that cannot work, before any image is read."""
        for name in ("latent_channels", "n_train", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise PadimError(f"{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise PadimError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.max_degrees < 0 or self.sigma < 0:
            raise PadimError(f"max_degrees and sigma must be >= 0, got {self.max_degrees!r} and {self.sigma!r}")
        if not self.crop_size <= self.random_crop <= self.resize:
            raise PadimError(f"sizes must satisfy crop_size <= random_crop <= resize, got "
                             f"{self.crop_size}, {self.random_crop}, {self.resize}")
        if self.crop_size % STRIDE:
            raise PadimError(f"crop_size must be a multiple of {STRIDE} (the encoder's stride), got {self.crop_size}")
        folder = Path(self.checkpoint).parent if self.checkpoint is not None else None
        if folder is not None and not folder.is_dir():  # found now, not after the first epoch
            raise PadimError(f"{self.checkpoint}: cannot write a checkpoint, folder {folder} does not exist")

    def _is_fitted(self) -> bool:
        return getattr(self, "epochs_done_", 0) > 0

    def _require_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError("this VAE is not fitted yet: call fit() first")

    # ----------------------------------------------------------------------------- training
    def _training_images(self, items: list[Item]) -> torch.Tensor:
        """Decode and resize every training image once: (N, 3, R, R) uint8 on the device.

        uint8, like the PIL images of a torchvision pipeline, keeps a class's few hundred images small.
        """
        unnormalised = Preprocess((self.resize, self.resize), None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        batches = iter_batches(items, unnormalised, self.batch_size, self.workers)
        pixels = torch.cat([(b.pixels * 255.0).round_().to(torch.uint8) for b in batches])
        return pixels.to(self.device)

    def _hyper_parameters(self, net: PaperVAE, images: torch.Tensor) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed."""
        return {
            "encoder": paper.VAE_ENCODER,
            "latent_channels": int(self.latent_channels),
            "n_train": int(self.n_train),
            "batch_size": int(self.batch_size),
            "learning_rate": float(self.learning_rate),
            "max_degrees": float(self.max_degrees),
            "resize": int(self.resize),
            "random_crop": int(self.random_crop),
            "crop_size": int(self.crop_size),
            "seed": int(self.seed),
            # of the tensors, not the file: the same weights from the hub or the HF cache match
            "initial_encoder_sha256": state_sha256(net.encoder.state_dict()),
            "n_images": int(images.shape[0]),
            "images_sha256": hashlib.sha256(images.cpu().numpy().tobytes()).hexdigest(),
        }

    def fit(self, images: Any) -> "VAE":
        """Train for `epochs` epochs, resuming from `checkpoint` when it holds an earlier epoch of this run."""
        self._check_params()
        items = as_items(images)
        data = self._training_images(items)
        net, source = build_network(self.latent_channels, self.weights, self.seed)
        net = net.to(self.device).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate)
        generator = torch.Generator().manual_seed(int(self.seed))
        params = self._hyper_parameters(net, data)
        done, losses = 0, []
        if self.checkpoint is not None and Path(self.checkpoint).exists():
            done, losses = self._resume(net, optimizer, generator, params)
        self.net_, self.weight_source_, self.epochs_done_, self.losses_ = net, source.to_dict(), done, losses
        self._train(data, optimizer, generator, params)
        self.net_.eval()
        return self

    def _train(self, data: torch.Tensor, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               params: dict[str, Any]) -> None:
        """Run the remaining epochs, checkpointing after each."""
        from tqdm.auto import tqdm

        steps = n_batches(self.n_train, self.batch_size)
        bar = tqdm(total=self.epochs * steps, initial=self.epochs_done_ * steps, desc="VAE", unit="step",
                   disable=not self.verbose, leave=False)
        with bar:
            for epoch in range(self.epochs_done_ + 1, self.epochs + 1):
                self.losses_.append(self._epoch(data, optimizer, generator, epoch, bar))
                self.epochs_done_ = epoch
                if self.checkpoint is not None:
                    self._save_checkpoint(optimizer, generator, params)

    def _epoch(self, data: torch.Tensor, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               epoch: int, bar: Any) -> float:
        """One epoch of n_train augmented samples; its mean loss per image."""
        mean = torch.tensor(paper.IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(paper.IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        total = 0.0
        for start in range(0, self.n_train, self.batch_size):
            size = min(self.batch_size, self.n_train - start)
            x = augmented_batch(data, size, generator, self.max_degrees, self.random_crop, self.crop_size)
            x = (x - mean) / std
            loss = vae_loss(x, *self.net_(x, generator))
            if not torch.isfinite(loss):
                raise PadimError(f"VAE training diverged at epoch {epoch} (loss {loss.item()})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * size
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch}/{self.epochs}", loss=f"{loss.item():.4g}")
        return total / self.n_train

    def _save_checkpoint(self, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                         params: dict[str, Any]) -> None:
        """Model, optimizer and RNG state after the last finished epoch, written atomically."""
        from padim import __version__

        tensors = {f"model.{k}": v for k, v in self.net_.state_dict().items()}
        tensors.update(optimizer_tensors(optimizer))
        meta = {
            "library_version": __version__,
            "epochs_done": self.epochs_done_,
            "losses": self.losses_,
            "hyper_parameters": params,
            "rng_state": generator.get_state().tolist(),
            "weights": self.weight_source_,
        }
        write_model(self.checkpoint, tensors, meta, CHECKPOINT)  # type: ignore[arg-type]

    def _resume(self, net: PaperVAE, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                params: dict[str, Any]) -> tuple[int, list[float]]:
        """Restore model, optimizer and RNG from the checkpoint; (epochs done, per-epoch losses)."""
        path = self.checkpoint
        tensors, meta = read_model(path, CHECKPOINT)  # type: ignore[arg-type]
        try:
            saved, done, losses = meta["hyper_parameters"], int(meta["epochs_done"]), list(meta["losses"])
            for key, value in params.items():
                if saved.get(key) != value:
                    raise ModelFileError(f"{path}: checkpoint has {key}={saved.get(key)!r}, this run has "
                                         f"{key}={value!r} (use the same settings, or another checkpoint file)")
            if done > self.epochs:
                raise ModelFileError(f"{path}: checkpoint has {done} epochs done, more than epochs={self.epochs}")
            net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
            load_optimizer_tensors(optimizer, {k: v for k, v in tensors.items() if k.startswith("optimizer.")})
            generator.set_state(torch.tensor(meta["rng_state"], dtype=torch.uint8))
        except PadimError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else ""
            raise ModelFileError(f"{path}: checkpoint incomplete or malformed ({type(exc).__name__}: {msg})") from None
        return done, losses

    # ----------------------------------------------------------------------------- prediction
    def predict(self, images: Any) -> Prediction:
        """Image scores (max of the map) and pixel-wise L2 reconstruction-error maps on the crop grid."""
        self._require_fitted()
        self.net_.eval()
        return collect(self._scored(as_items(images)))

    def _scored(self, items: list[Item]) -> Iterator[Scored]:
        """(batch, maps, scores, no extras) of every batch, with a progress bar when verbose."""
        from tqdm.auto import tqdm

        batches = iter_batches(items, self.preprocess_, self.batch_size, self.workers)
        bar = tqdm(batches, total=n_batches(len(items), self.batch_size), desc="predict", unit="batch",
                   disable=not self.verbose, leave=False)
        with torch.no_grad():
            for batch in bar:
                x = batch.pixels.to(self.device)
                batch_maps = gaussian_blur(reconstruction_error(x, self.net_(x)[0]), self.sigma)
                check_finite(batch_maps, batch, "VAE reconstruction is NaN/inf (diverged training?)")
                yield batch, batch_maps.float(), image_scores(batch_maps).float(), {}

    def __repr__(self) -> str:
        fitted = f", {self.epochs_done_} epochs done" if self._is_fitted() else ""
        return f"VAE(latent_channels={self.latent_channels}, n_train={self.n_train}, epochs={self.epochs}{fitted})"
