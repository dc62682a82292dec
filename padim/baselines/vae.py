"""The PaDiM paper's VAE baseline (Section IV-B): ResNet18 encoder, 8x8 convolutional latent, L2 error map.

The estimator: training with checkpoints, and prediction; the network, its loss and the augmentation
are padim.baselines.vae_network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from padim import paper
from padim.backbone import state_sha256
from padim.baselines.vae_network import (STRIDE, PaperVAE, augmented_batch, build_network, reconstruction_error,
                                         vae_loss)
from padim.data import Item, Preprocess, as_items, check_finite, iter_batches, n_batches
from padim.errors import InputError, ModelFileError, NotFittedError, PadimError
from padim.modelfile import FileKind, read_model, write_model
from padim.prediction import Prediction, Scored, collect
from padim.scoring import gaussian_blur, image_scores
from padim.utils.constraints import (COMMON_CONSTRAINTS, NON_NEGATIVE, NONE, PATH, POSITIVE, POSITIVE_INT, SIDE, Check,
                                    CheckedParameters, multiple_of)

CHECKPOINT_VERSION = 1
CHECKPOINT = FileKind("torch-padim-vae-checkpoint", CHECKPOINT_VERSION, "padim_vae", "torch-padim VAE checkpoint",
                      "VAE checkpoint")


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
def _check_nested_sizes(crop_size: int, random_crop: int, resize: int) -> None:
    """Each crop lies inside the image it is cut from: crop_size <= random_crop <= resize."""
    if not crop_size <= random_crop <= resize:
        raise InputError(f"sizes must satisfy crop_size <= random_crop <= resize, got "
                         f"{crop_size}, {random_crop}, {resize}")


def _check_checkpoint_folder(checkpoint: str | None) -> None:
    """The checkpoint's folder exists (found now, not after the first epoch)."""
    folder = Path(checkpoint).parent if checkpoint is not None else None
    if folder is not None and not folder.is_dir():
        raise InputError(f"{checkpoint}: cannot write a checkpoint, folder {folder} does not exist")


class VAE(CheckedParameters):
    """The PaDiM paper's VAE baseline: ResNet18 encoder, 8x8 convolutional latent, pixel-wise L2 reconstruction error.

    Defaults follow the paper (Section IV-B): each epoch draws `n_train` augmented samples of the
    training images; Adam; anomaly map = L2 error, unsmoothed (sigma=0).

    Parameters
    ----------
    latent_channels : int
        Channels of the latent grid (ours: the paper does not give it).
    n_train : int
        Augmented samples drawn per epoch.
    epochs : int
        Training epochs.
    batch_size : int
        Samples per optimisation step (and images per forward pass when predicting).
    learning_rate : float
        Adam's learning rate.
    max_degrees : float
        Largest rotation of the augmentation, either way.
    resize : int
        Side images are resized to.
    random_crop : int
        Side of the augmentation's random crop of the resized image.
    crop_size : int
        Side of the center crop of the random crop (training) or of the resized image (testing);
        a multiple of 32, the encoder's stride.
    sigma : float
        Standard deviation, in pixels, of the Gaussian that smooths the maps (0: none).
    weights : str or None
        None finds ImageNet ResNet18 weights offline, a path reads a file, "random" gives seeded
        random weights (tests only).
    checkpoint : str or None
        A file saved after every epoch and resumed from by fit() when its hyper-parameters match.
    device : str
        Torch device.
    seed : int
        Seed of the weights, the augmentation and the latent samples.
    workers : int or None
        Background threads decoding images; None: padim.data.decode_threads decides.
    verbose : bool
        Progress bar on stderr.

    Attributes
    ----------
    preprocessing : Preprocess
        Test-time resize, center crop and normalisation (exists before fit).
    net_ : PaperVAE
        The trained network.
    weight_source_ : dict
        Where the encoder's initial weights came from (padim.backbone.WeightSource.to_dict).
    epochs_done_ : int
        Epochs trained, resumed ones included.
    losses_ : list of float
        Mean loss per image of every epoch.
    """

    _parameter_constraints = {
        "latent_channels": [POSITIVE_INT],
        "n_train": [POSITIVE_INT],
        "epochs": [POSITIVE_INT],
        "batch_size": [POSITIVE_INT],
        "learning_rate": [POSITIVE],
        "max_degrees": [NON_NEGATIVE],
        "resize": [SIDE],
        "random_crop": [SIDE],
        "crop_size": [multiple_of(STRIDE, "the encoder's stride")],
        "sigma": [NON_NEGATIVE],
        "weights": COMMON_CONSTRAINTS["weights"],
        "checkpoint": [NONE, PATH],
        "device": COMMON_CONSTRAINTS["device"],
        "seed": COMMON_CONSTRAINTS["seed"],
        "workers": COMMON_CONSTRAINTS["workers"],
        "verbose": COMMON_CONSTRAINTS["verbose"],
    }
    _parameter_checks = (Check(_check_nested_sizes, ("crop_size", "random_crop", "resize")),
                         Check(_check_checkpoint_folder, ("checkpoint",)))

    def __init__(
        self,
        latent_channels: int = 128,
        *,
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
    def preprocessing(self) -> Preprocess:
        """Test-time preprocessing: resize, center crop (256/292 ~ PaDiM's 224/256), ImageNet normalisation."""
        return Preprocess.from_sizes(self.resize, self.crop_size)

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
        batches = iter_batches(items, unnormalised, self.batch_size, workers=self.workers)
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
        from padim._version import __version__

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

        batches = iter_batches(items, self.preprocessing, self.batch_size, workers=self.workers)
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
