"""The paper's VAE baseline: network shapes, augmentation, training, checkpoints, L2 error maps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from safetensors import safe_open
from safetensors.torch import load_file

import padim.baselines.vae
from padim import paper
from padim.images import list_images, read_image
from padim.errors import NotFittedError, PadimError
from padim.prediction import Prediction
from padim.scoring import gaussian_blur
from padim.baselines.vae import VAE
from padim.baselines.vae_network import STRIDE, augmented_batch, build_network, rotate

# Tiny sizes: 37 -> random 35 -> center 32 (a 1x1 latent grid), random (explicitly requested) weights.
SMALL = dict(latent_channels=16, n_train=16, epochs=1, batch_size=8, resize=37, random_crop=35, crop_size=32,
             weights="random", workers=1, seed=0)


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("vae") / "vae.safetensors")


@pytest.fixture(scope="module")
def fitted(texture_set: Path, checkpoint_path: str) -> VAE:
    """Three short epochs on the texture set's good training images, checkpointed (FIXTURE's settings)."""
    return VAE(**FIXTURE, checkpoint=checkpoint_path).fit(texture_set / "train" / "good")


FIXTURE = {**SMALL, "epochs": 3, "learning_rate": 1e-3}


def _state(vae: VAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vae.net_.state_dict().items()}


# ----------------------------------------------------------------------------- network
def test_paper_size_gives_8x8_latent_and_full_reconstruction() -> None:
    net, source = build_network(32, "random", seed=0)
    net.eval()
    with torch.no_grad():
        recon, mu, logvar = net(torch.zeros(1, 3, paper.VAE_CROP, paper.VAE_CROP))
    assert tuple(mu.shape) == (1, 32, paper.VAE_LATENT_GRID, paper.VAE_LATENT_GRID)
    assert logvar.shape == mu.shape
    assert tuple(recon.shape) == (1, 3, paper.VAE_CROP, paper.VAE_CROP)
    assert source.kind == "random" and source.seed == 0
    assert VAE().preprocessing.output_size == (paper.VAE_CROP, paper.VAE_CROP)
    assert VAE().preprocessing.image_size == (paper.VAE_RESIZE, paper.VAE_RESIZE)


def test_network_is_fully_convolutional_and_seeded() -> None:
    a, _ = build_network(8, "random", seed=3)
    b, _ = build_network(8, "random", seed=3)
    a.eval()
    with torch.no_grad():
        recon, mu, _ = a(torch.zeros(2, 3, 64, 96))
    assert tuple(mu.shape[-2:]) == (64 // STRIDE, 96 // STRIDE)
    assert tuple(recon.shape) == (2, 3, 64, 96)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_latent_is_sampled_in_training_and_the_mean_at_test_time() -> None:
    net, _ = build_network(8, "random", seed=0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    net.eval()
    with torch.no_grad():
        r1, r2 = net(x)[0], net(x)[0]
    assert torch.equal(r1, r2)
    net.train()
    with torch.no_grad():
        s1 = net(x, torch.Generator().manual_seed(1))[0]
        s2 = net(x, torch.Generator().manual_seed(1))[0]
        s3 = net(x, torch.Generator().manual_seed(2))[0]
    assert torch.equal(s1, s2)
    assert not torch.allclose(s1, s3)


# ----------------------------------------------------------------------------- augmentation
def test_augmented_samples_have_crop_size_differ_and_reproduce() -> None:
    images = torch.randint(0, 256, (3, 3, 73, 73), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(5)
    first = augmented_batch(images, 6, gen, paper.VAE_MAX_DEGREES, 70, 64)
    second = augmented_batch(images, 6, gen, paper.VAE_MAX_DEGREES, 70, 64)
    again = augmented_batch(images, 6, torch.Generator().manual_seed(5), paper.VAE_MAX_DEGREES, 70, 64)
    assert tuple(first.shape) == (6, 3, 64, 64)
    assert first.dtype == torch.float32 and float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert not torch.equal(first, second)
    assert torch.equal(first, again)


def test_rotate_matches_torchvision() -> None:
    img = torch.rand(1, 3, 41, 41, generator=torch.Generator().manual_seed(0))
    for degrees in (-7.0, 1.5, 30.0):
        ours = rotate(img, torch.tensor([degrees]))[0]
        ref = TF.rotate(img[0], degrees, interpolation=TF.InterpolationMode.BILINEAR)
        assert torch.allclose(ours, ref, atol=1e-4)


def _bar_angles(samples: torch.Tensor) -> np.ndarray:
    """Angle in degrees of a bright bar in each sample, from a line fit to its per-column centroid."""
    x = samples.mean(dim=1).numpy()  # (B, H, W)
    rows = np.arange(x.shape[1])[:, None]
    centroids = (x * rows).sum(axis=1) / x.sum(axis=1)  # (B, W)
    slopes = [np.polyfit(np.arange(x.shape[2]), c, 1)[0] for c in centroids]
    return np.degrees(np.arctan(slopes))


def test_rotation_stays_within_the_bound() -> None:
    bar = torch.zeros(1, 3, 101, 101, dtype=torch.uint8)
    bar[:, :, 48:53, :] = 255  # a horizontal bar through the centre
    angles = _bar_angles(augmented_batch(bar, 64, torch.Generator().manual_seed(0), 10.0, 96, 64))
    assert np.abs(angles).max() <= 10.3
    assert np.abs(angles).max() > 5.0  # it does rotate: 64 draws all under 5 degrees has chance 2**-64
    straight = _bar_angles(augmented_batch(bar, 16, torch.Generator().manual_seed(0), 0.0, 96, 64))
    assert np.abs(straight).max() < 1e-3


# ----------------------------------------------------------------------------- training
def test_training_reduces_the_loss(fitted: VAE) -> None:
    assert len(fitted.losses_) == 3 and fitted.epochs_done_ == 3
    assert all(np.isfinite(fitted.losses_))
    assert fitted.losses_[-1] < 0.8 * fitted.losses_[0], fitted.losses_


def test_checkpoint_resume_equals_an_uninterrupted_run(
    fitted: VAE, texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "part.safetensors"
    part = VAE(**{**FIXTURE, "epochs": 1, "checkpoint": str(ckpt)}).fit(texture_set / "train" / "good")
    assert part.epochs_done_ == 1
    resumed = VAE(**FIXTURE, checkpoint=str(ckpt), verbose=True).fit(texture_set / "train" / "good")
    assert "VAE" in capsys.readouterr().err  # the progress bar
    assert resumed.epochs_done_ == 3
    assert resumed.losses_ == pytest.approx(fitted.losses_, rel=1e-5)
    a, b = _state(fitted), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-6), k


def test_finished_checkpoint_is_loaded_without_training(fitted: VAE, texture_set: Path) -> None:
    done = VAE(**FIXTURE, checkpoint=fitted.checkpoint).fit(texture_set / "train" / "good")  # 3 of 3 epochs done
    assert done.losses_ == fitted.losses_
    assert all(torch.equal(v, _state(done)[k]) for k, v in _state(fitted).items())
    with pytest.raises(PadimError, match="3 epochs done, more than epochs=2"):
        VAE(**{**FIXTURE, "epochs": 2}, checkpoint=fitted.checkpoint).fit(texture_set / "train" / "good")


def test_checkpoint_is_safetensors_with_versioned_json_metadata(fitted: VAE) -> None:
    tensors = load_file(fitted.checkpoint)  # safetensors: no pickle involved
    assert any(k.startswith("model.encoder.") for k in tensors)
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg_sq") for k in tensors)
    with safe_open(fitted.checkpoint, framework="pt") as f:
        meta = json.loads(f.metadata()["padim_vae"])
    assert meta["format_version"] == padim.baselines.vae.CHECKPOINT_VERSION
    assert meta["epochs_done"] == 3 and meta["losses"] == fitted.losses_
    assert meta["hyper_parameters"]["latent_channels"] == FIXTURE["latent_channels"]
    assert meta["hyper_parameters"]["learning_rate"] == FIXTURE["learning_rate"]
    assert all(isinstance(v, int) for v in meta["rng_state"])
    assert meta["weights"] == fitted.weight_source_ and meta["weights"]["kind"] == "random"


def test_mismatched_checkpoint_is_refused(fitted: VAE, texture_set: Path) -> None:
    with pytest.raises(PadimError) as err:
        VAE(**{**FIXTURE, "latent_channels": 8}, checkpoint=fitted.checkpoint).fit(texture_set / "train" / "good")
    msg = str(err.value)
    assert fitted.checkpoint in msg and "latent_channels" in msg and "\n" not in msg
    with pytest.raises(PadimError, match="n_images"):  # other training images
        VAE(**FIXTURE, checkpoint=fitted.checkpoint).fit(texture_set / "test" / "good")


def test_crash_while_saving_keeps_the_previous_checkpoint(
    fitted: VAE, texture_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "vae.safetensors"
    shutil.copy(fitted.checkpoint, ckpt)
    before = ckpt.read_bytes()

    def crash(tensors: dict, path: str, metadata: dict) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise RuntimeError("power cut")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(RuntimeError, match="power cut"):  # resumes at epoch 3, trains epoch 4, crashes saving
        VAE(**{**FIXTURE, "epochs": 4, "checkpoint": str(ckpt)}).fit(texture_set / "train" / "good")
    assert ckpt.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.name]  # no temporary file left behind


# ----------------------------------------------------------------------------- prediction
def test_map_is_the_pixelwise_l2_reconstruction_error(fitted: VAE, texture_set: Path) -> None:
    paths = sorted((texture_set / "test").glob("[!g]*/*.png"))[:3]
    pred = fitted.predict(paths)
    x = torch.stack([fitted.preprocessing(read_image(p)) for p in paths])
    net = fitted.net_.eval()
    with torch.no_grad():
        recon = net.decode(net.encode(x)[0])  # the latent mean
    expected = (x - recon).pow(2).sum(dim=1).sqrt().numpy()
    np.testing.assert_allclose(pred.maps, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred.scores, expected.reshape(3, -1).max(axis=1), rtol=1e-5, atol=1e-5)
    smooth = VAE(**{**SMALL, "sigma": 2.0})
    smooth.net_, smooth.epochs_done_ = fitted.net_, fitted.epochs_done_
    np.testing.assert_allclose(smooth.predict(paths).maps, gaussian_blur(torch.from_numpy(expected), 2.0).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_end_to_end_on_the_texture_set(fitted: VAE, texture_set: Path) -> None:
    good = list_images(texture_set / "test" / "good")
    defect = sorted(p for p in (texture_set / "test").glob("*/*.png") if p.parent.name != "good")
    pred = fitted.predict(good + defect)
    n = len(good) + len(defect)
    assert isinstance(pred, Prediction)
    assert pred.names == [str(p) for p in good + defect]
    assert pred.scores.shape == (n,) and pred.scores.dtype == np.float32
    assert pred.maps.shape == (n, 32, 32) and pred.maps.dtype == np.float32
    assert np.isfinite(pred.scores).all() and (pred.maps >= 0).all()
    np.testing.assert_array_equal(pred.scores, pred.maps.reshape(n, -1).max(axis=1))
    assert fitted.weight_source_["kind"] == "random"


# ----------------------------------------------------------------------------- errors
def test_predict_before_fit_is_refused(texture_set: Path) -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        VAE(**SMALL).predict(texture_set / "test" / "good")


def test_nan_input_is_refused_by_name(fitted: VAE) -> None:
    images = np.full((1, 32, 32, 3), np.nan, dtype=np.float32)
    with pytest.raises(PadimError, match=r"array\[0\].*NaN"):
        fitted.predict(images)


def test_bad_sizes_are_refused(texture_set: Path) -> None:
    with pytest.raises(PadimError, match="multiple of 32"):
        VAE(**{**SMALL, "resize": 52, "random_crop": 50, "crop_size": 48}).fit(texture_set / "train" / "good")
    with pytest.raises(PadimError, match="random_crop"):
        VAE(**{**SMALL, "random_crop": 80}).fit(texture_set / "train" / "good")


def test_missing_imagenet_weights_are_an_error_not_random(empty_caches: Path, texture_set: Path) -> None:
    with pytest.raises(PadimError) as err:
        VAE(**{**SMALL, "weights": None}).fit(texture_set / "train" / "good")
    msg = str(err.value)
    assert "resnet18" in msg and "weights=" in msg and "\n" not in msg


def test_checkpoint_in_a_missing_folder_is_refused_before_training(texture_set: Path, tmp_path: Path) -> None:
    with pytest.raises(PadimError, match="does not exist"):
        VAE(**SMALL, checkpoint=str(tmp_path / "no" / "vae.safetensors")).fit(texture_set / "train" / "good")
