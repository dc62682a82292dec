"""The estimator: fit / partial_fit / merge equivalence, inputs, sizes and misuse."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from padim import NotFittedError, PaDiM, PadimError
from padim.evaluation.synthetic import load_split

from conftest import TINY


@pytest.fixture(scope="module")
def split(texture_set):
    return load_split(texture_set)


@pytest.fixture(scope="module")
def fitted(split) -> PaDiM:
    return PaDiM(**TINY).fit(split[0])


def assert_same_statistics(a: PaDiM, b: PaDiM) -> None:
    assert a.n_samples_seen_ == b.n_samples_seen_
    assert torch.allclose(a.mean_, b.mean_, rtol=0, atol=1e-9)
    assert torch.allclose(a.stats_.scatter, b.stats_.scatter, rtol=1e-9, atol=1e-9)
    assert torch.allclose(a.covariance_, b.covariance_, rtol=1e-9, atol=1e-9)


def assert_state_is_the_networks(model: PaDiM) -> None:
    """The estimator holds no tensor of its own: its fitted attributes are the network's buffers."""
    assert [name for name, value in vars(model).items() if isinstance(value, torch.Tensor)] == []
    net = model.net_
    assert model.mean_ is net.mean and model.channel_indices_ is net.channel_indices
    assert model.components_ is (net.projection if net.projection.numel() else None)
    assert model.feature_shape_ == net.grid
    if model.stats_ is not None:  # the running sum has its own mean: the next partial_fit leaves the buffer alone
        assert model.stats_.mean.data_ptr() != net.mean.data_ptr()


def test_the_network_is_the_only_copy_of_the_fitted_state(split, fitted, tmp_path) -> None:
    train = split[0]
    assert_state_is_the_networks(fitted)
    a, b = PaDiM(**TINY).fit(train[:7]), PaDiM(**TINY).fit(train[7:])
    assert_state_is_the_networks(a.partial_fit(train[7:9]))
    assert_state_is_the_networks(b.merge(PaDiM(**TINY).fit(train[:3])))
    pca = PaDiM(**{**TINY, "reduction": "pca", "n_features": 8}).fit(train[:4])
    assert_state_is_the_networks(pca)
    for model, statistics in ((fitted, False), (pca, True)):
        model.save(tmp_path / "m.safetensors", statistics=statistics)
        assert_state_is_the_networks(PaDiM.load(tmp_path / "m.safetensors"))


def test_unfitted_state_is_a_not_fitted_error() -> None:
    model = PaDiM(**TINY)
    for name in ("mean_", "precision_cholesky_", "embedding_dim_"):
        assert not hasattr(model, name)  # NotFittedError is an AttributeError, as scikit-learn's is
        with pytest.raises(NotFittedError, match="not fitted"):
            getattr(model, name)


def test_partial_fit_equals_fit_on_everything(split, fitted) -> None:
    train = split[0]
    model = PaDiM(**TINY).fit(train[:5]).partial_fit(train[5:])
    assert_same_statistics(model, fitted)


def test_merge_in_either_order_equals_fit_on_everything(split, fitted) -> None:
    train = split[0]
    a, b = PaDiM(**TINY).fit(train[:7]), PaDiM(**TINY).fit(train[7:])
    assert_same_statistics(PaDiM(**TINY).fit(train[:7]).merge(b), fitted)
    assert_same_statistics(b.merge(a), fitted)


def test_image_order_does_not_change_the_model(split, fitted) -> None:
    shuffled = list(reversed(split[0]))
    assert_same_statistics(PaDiM(**TINY).fit(shuffled), fitted)


def test_merge_refuses_a_model_with_other_rd_channels(split, fitted) -> None:
    other = PaDiM(**{**TINY, "seed": 1}).fit(split[0][:3])
    with pytest.raises(PadimError, match="cannot merge"):
        PaDiM(**TINY).fit(split[0][:3]).merge(other)


def test_every_input_kind_gives_the_same_scores(split, fitted, texture_set) -> None:
    paths = split[1][:4]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    by_path = fitted.predict(paths).scores
    assert np.array_equal(fitted.predict([Image.open(p) for p in paths]).scores, by_path)
    assert np.array_equal(fitted.predict(arrays).scores, by_path)
    assert np.array_equal(fitted.predict(np.stack(arrays)).scores, by_path)
    tensors = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    assert np.array_equal(fitted.predict(tensors).scores, by_path)
    assert np.allclose(fitted.predict(tensors.float() / 255).scores, by_path, rtol=1e-6)
    folder_scores = fitted.predict(texture_set / "test" / "good").scores
    assert np.array_equal(folder_scores, fitted.predict(sorted((texture_set / "test" / "good").glob("*.png"))).scores)


def test_maps_at_original_size(fitted) -> None:
    images = [np.full((50, 80, 3), 120, np.uint8), np.full((64, 64), 30, np.uint8)]
    pred = fitted.predict(images, original_size=True)
    assert [m.shape for m in pred.maps] == [(50, 80), (64, 64)]
    assert np.allclose(pred.maps[1], fitted.predict(images[1:]).maps[0], rtol=1e-5, atol=1e-5)


def test_crop_maps_back_with_nan_outside_the_crop(split) -> None:
    model = PaDiM(**{**TINY, "image_size": 80, "crop_size": 64}).fit(split[0][:4])
    amap = model.predict(split[1][:1], original_size=True).maps[0]
    assert amap.shape == (96, 96)
    assert np.isnan(amap[:2]).all() and amap[48, 48] > 0  # not inspected, never a low score


def test_non_square_input_without_crop(split) -> None:
    model = PaDiM(**{**TINY, "image_size": (48, 96)}).fit(split[0][:4])
    assert model.feature_shape_ == (12, 24)
    assert model.predict(split[1][:2]).maps.shape == (2, 48, 96)


def test_defects_score_higher_than_good_parts(split, fitted) -> None:
    _, test, masks = split
    scores = fitted.predict(test).scores
    defect = np.array([m is not None for m in masks])
    assert scores[defect].mean() > scores[~defect].mean()


def test_one_training_image_fits_without_nan(split) -> None:
    model = PaDiM(**TINY).fit(split[0][:1])
    pred = model.predict(split[1][:2])
    assert model.n_samples_seen_ == 1 and np.isfinite(pred.maps).all()


def test_zero_images_and_unfitted_use_are_clear_errors(split) -> None:
    with pytest.raises(PadimError, match="no images"):
        PaDiM(**TINY).fit([])
    with pytest.raises(PadimError, match="not fitted"):
        PaDiM(**TINY).predict(split[1][:1])
    with pytest.raises(NotFittedError):
        PaDiM(**TINY).save("unused.safetensors")


def test_nan_features_are_refused(split, monkeypatch) -> None:
    model = PaDiM(**TINY)
    model._init_network()
    engine = model.engine_for_device()

    def second_image_inf(x):
        emb = engine(x)
        emb[5, 1:2, 3] = float("inf")  # one value of the second image of each batch
        return emb

    monkeypatch.setattr(model, "engine_", second_image_inf)
    with pytest.raises(PadimError, match=r"001\.png: backbone produced NaN/inf features \(1 image"):
        model.partial_fit(split[0][:2])


def test_nan_features_at_predict_time_name_the_image(split, monkeypatch) -> None:
    model = PaDiM(**TINY).fit(split[0])
    engine = model.engine_for_device()

    def third_image_nan(x):
        emb = engine(x)
        if emb.shape[1] > 2:
            emb[11, 2, 0] = float("nan")  # one value of one patch of the third image
        return emb

    monkeypatch.setattr(model, "engine_", third_image_nan)
    with pytest.raises(PadimError, match=re.escape(str(split[1][2])) + r": anomaly score is NaN/inf .*\(1 image"):
        model.predict(split[1][:4])


def test_nan_in_the_model_fails_prediction_naming_the_image(split) -> None:
    model = PaDiM(**TINY).fit(split[0])
    model.net_.mean[7, 0] = float("nan")
    model.net_.set_gaussians(model.net_.mean, model.net_.factor)
    with pytest.raises(PadimError, match=r"anomaly score is NaN/inf"):
        model.predict(split[1][:2])


def test_rd_defaults_follow_the_paper() -> None:
    assert PaDiM(backbone="resnet18", weights="random", image_size=32, crop_size=None).fit(
        [np.zeros((32, 32), np.uint8)] * 2).channel_indices_.numel() == 100


def test_bad_parameters_are_refused_before_reading_images() -> None:
    with pytest.raises(PadimError, match="eps"):
        PaDiM(**{**TINY, "eps": 0}).fit(["/nonexistent.png"])
    with pytest.raises(PadimError, match="crop size"):
        PaDiM(**{**TINY, "image_size": 32, "crop_size": 64}).fit(["/nonexistent.png"])


def test_pca_reduction_uses_the_principal_components_of_training_patches(split, tmp_path) -> None:
    from sklearn.decomposition import PCA

    model = PaDiM(**{**TINY, "reduction": "pca", "n_features": 8}).fit(split[0])
    assert model.components_.shape == (448, 8) and model.embedding_dim_ == 8
    projection, model.net_.projection = model.net_.projection, torch.empty(0)
    patches = model.transform(split[0])  # (N, 448, h, w) without the projection
    model.net_.projection = projection
    reference = PCA(8).fit(patches.transpose(0, 2, 3, 1).reshape(-1, 448).astype(np.float64))
    alignment = np.abs(reference.components_ @ projection.double().numpy())  # identity up to signs
    assert np.allclose(alignment, np.eye(8), atol=1e-4)
    model.save(tmp_path / "pca.safetensors")
    loaded = PaDiM.load(tmp_path / "pca.safetensors", batch_size=TINY["batch_size"])
    assert np.array_equal(loaded.predict(split[1]).maps, model.predict(split[1]).maps)
    other = PaDiM(**{**TINY, "reduction": "pca", "n_features": 8}).fit(split[0][:4])
    with pytest.raises(PadimError, match="PCA"):
        PaDiM(**{**TINY, "reduction": "pca", "n_features": 8}).fit(split[0][4:]).merge(other)


def test_fit_predict_and_calibrate_all_see_camera_jpegs_upright(split, tmp_path) -> None:
    """EXIF orientation 6 JPEGs give exactly what their pixels turned upright give, in every entry point."""
    from camera_files import decoded_as_stored, rotated_jpeg

    rng = np.random.default_rng(3)
    jpegs = [rotated_jpeg(tmp_path / f"{i}.jpg", 6, rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
             for i in range(6)]
    upright = [np.ascontiguousarray(np.rot90(decoded_as_stored(p), -1)) for p in jpegs]
    assert upright[0].shape == (80, 48, 3)
    from_files = PaDiM(**TINY).fit(jpegs[:4])
    from_arrays = PaDiM(**TINY).fit(upright[:4])
    assert torch.equal(from_files.mean_, from_arrays.mean_)
    pred = from_files.predict(jpegs[4:], original_size=True)
    assert np.array_equal(pred.scores, from_files.predict(upright[4:]).scores)
    assert pred.maps[0].shape == (80, 48)  # maps on the upright grid
    from_files.calibrate(jpegs[4:], fpr=0.5)
    threshold = from_files.calibration_.image_threshold
    assert from_files.calibrate(upright[4:], fpr=0.5).calibration_.image_threshold == threshold
