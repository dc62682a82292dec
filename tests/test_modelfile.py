"""Model files (save/load through PaDiM and padim.modelfile), atomic writes, packing and the Rd embedding."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import padim
from padim import ModelFileError, PaDiM, PadimError
from padim.backbone import build_backbone
from padim.embedding import embed, random_channels, split_by_tap
from padim.gaussian import pack_lower, symmetric_from_lower, unpack_lower
from padim.modelfile import CHECKSUM_KEY, FORMAT_VERSION, read_model, tensor_sha256
from padim.evaluation.synthetic import load_split

from conftest import TINY


@pytest.fixture(scope="module")
def split(texture_set: Path):
    return load_split(texture_set)


@pytest.fixture(scope="module")
def train(split) -> list[Path]:
    return split[0]


@pytest.fixture(scope="module")
def test_images(split) -> list[Path]:
    return split[1][:6]


@pytest.fixture(scope="module")
def fitted(train) -> PaDiM:
    return PaDiM(**TINY).fit(train)


@pytest.fixture(scope="module")
def saved(fitted: PaDiM, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fitted model written without and with statistics."""
    folder = tmp_path_factory.mktemp("models")
    plain, full = folder / "plain.safetensors", folder / "full.safetensors"
    fitted.save(plain)
    fitted.save(full, statistics=True)
    return {"plain": plain, "full": full}


@pytest.fixture(scope="module")
def reference_prediction(fitted: PaDiM, test_images):
    return fitted.predict(test_images)


def rewrite(src: Path, dst: Path, change: Callable[[dict, dict], None]) -> Path:
    """Copy a model file, letting change(tensors, meta) edit its contents on the way.

    The checksum is recomputed (unless change set one), so that the checks behind it are reached.
    """
    from safetensors.torch import save_file

    tensors, meta = read_model(src)
    tensors = {k: v.clone() for k, v in tensors.items()}
    before = meta[CHECKSUM_KEY]
    change(tensors, meta)
    if meta.get(CHECKSUM_KEY) == before:
        meta[CHECKSUM_KEY] = tensor_sha256(tensors)
    save_file(tensors, str(dst), metadata={"padim": json.dumps(meta)})
    return dst


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("kind", ["plain", "full"])
def test_round_trip_predictions_are_bit_identical(saved, kind: str, test_images, reference_prediction) -> None:
    loaded = PaDiM.load(saved[kind])
    got = loaded.predict(test_images)
    assert got.names == reference_prediction.names
    assert got.scores.dtype == reference_prediction.scores.dtype
    assert np.array_equal(got.scores, reference_prediction.scores)
    assert np.array_equal(got.maps, reference_prediction.maps)


def test_round_trip_restores_the_fitted_state(saved, fitted: PaDiM) -> None:
    loaded = PaDiM.load(saved["full"])
    assert torch.equal(loaded.mean_, fitted.mean_)
    assert loaded.mean_.dtype == torch.float64
    assert torch.equal(loaded.precision_cholesky_, fitted.precision_cholesky_)
    assert torch.equal(loaded.channel_indices_, fitted.channel_indices_)
    # The file keeps the lower triangle exactly; the in-memory scatter is symmetric up to rounding.
    assert torch.equal(loaded.stats_.covariance(0.01), fitted.stats_.covariance(0.01))
    assert torch.equal(loaded.stats_.mean, fitted.stats_.mean)
    assert loaded.n_samples_seen_ == fitted.n_samples_seen_ == 12
    assert loaded.feature_shape_ == fitted.feature_shape_ == (16, 16)
    assert loaded.preprocessing == fitted.preprocessing
    assert loaded.backbone_.layers == fitted.backbone_.layers
    file_meta = read_model(saved["full"])[1]
    loaded_meta = loaded.metadata()
    assert loaded_meta["created"] == file_meta["created"]  # kept from the file, not the load time
    fitted_meta = fitted.metadata()
    for meta in (loaded_meta, fitted_meta):
        del meta["created"]
    assert loaded_meta == fitted_meta
    assert PaDiM.load(saved["plain"]).stats_ is None


def test_metadata_in_the_file(saved, fitted: PaDiM) -> None:
    tensors, meta = read_model(saved["full"])
    assert meta["format"] == "torch-padim"
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["library_version"] == padim.__version__
    bb = meta["backbone"]
    assert bb["name"] == "resnet18"
    assert bb["layers"] == ["layer1", "layer2", "layer3"]
    assert bb["channels"] == [64, 128, 256]
    assert bb["weights"]["kind"] == "random"
    assert bb["weights"]["seed"] == 0
    assert bb["weights"]["sha256"] == fitted.backbone_.source.sha256
    assert len(bb["weights"]["sha256"]) == 64
    assert meta["preprocessing"]["image_size"] == [64, 64]
    assert meta["preprocessing"]["crop_size"] is None
    assert meta["preprocessing"]["interpolation"] == "bicubic"
    assert meta["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["eps"] == 0.01
    assert meta["sigma"] == 4.0
    assert meta["n_features"] == 32
    assert meta["n_samples_seen"] == 12
    assert meta["statistics"] is True
    assert torch.equal(tensors["channel_indices"], fitted.channel_indices_)
    d = 32
    assert tensors["mean"].shape == (256, d) and tensors["mean"].dtype == torch.float64
    assert tensors["precision_cholesky"].shape == (256, d * (d + 1) // 2)
    assert tensors["precision_cholesky"].dtype == torch.float32
    assert tensors["scatter"].dtype == torch.float64
    _, plain_meta = read_model(saved["plain"])
    assert plain_meta["statistics"] is False
    assert "scatter" not in read_model(saved["plain"])[0]


def test_saving_an_unfitted_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PadimError, match="not fitted"):
        PaDiM(**TINY).save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- statistics
def test_loaded_statistics_continue_fitting_like_memory(saved, train, tmp_path: Path) -> None:
    first, rest = train[:7], train[7:]
    path = tmp_path / "half.safetensors"
    PaDiM(**TINY).fit(first).save(path, statistics=True)
    resumed = PaDiM.load(path).partial_fit(rest)
    in_memory = PaDiM(**TINY).fit(first).partial_fit(rest)
    assert resumed.n_samples_seen_ == in_memory.n_samples_seen_ == len(train)
    assert torch.allclose(resumed.mean_, in_memory.mean_, rtol=0, atol=1e-9)
    assert torch.allclose(resumed.covariance_, in_memory.covariance_, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(resumed.precision_cholesky_, in_memory.precision_cholesky_, rtol=1e-5, atol=1e-5)


def test_model_without_statistics_cannot_be_refitted(saved, train) -> None:
    loaded = PaDiM.load(saved["plain"])
    with pytest.raises(PadimError, match="statistics=True"):
        loaded.partial_fit(train[:2])
    assert loaded.n_samples_seen_ == 12  # unchanged
    with pytest.raises(PadimError, match="without statistics"):
        loaded.covariance_  # noqa: B018
    with pytest.raises(PadimError, match="no statistics"):
        loaded.save(saved["plain"].with_name("again.safetensors"), statistics=True)


# ----------------------------------------------------------------------------- refusals
def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _not_safetensors(src: Path, dst: Path) -> Path:
    dst.write_bytes(b"this is a text file, not a model\n" * 20)
    return dst


def _pickle_named_safetensors(src: Path, dst: Path) -> Path:
    torch.save({"mean": torch.zeros(3)}, dst)
    return dst


def _no_metadata(src: Path, dst: Path) -> Path:
    from safetensors.torch import save_file

    save_file(read_model(src)[0], str(dst))
    return dst


def _foreign_metadata(src: Path, dst: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(dst), metadata={"padim": json.dumps({"format": "something-else"})})
    return dst


def _bad_json(src: Path, dst: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(dst), metadata={"padim": "{not json"})
    return dst


def _edit(change: Callable[[dict, dict], None]) -> Callable[[Path, Path], Path]:
    return lambda src, dst: rewrite(src, dst, change)


def _set_version(t: dict, m: dict) -> None:
    m["format_version"] = 999


def _short_precision(t: dict, m: dict) -> None:
    t["precision_cholesky"] = t["precision_cholesky"][:, :-1].contiguous()


def _mean_float32(t: dict, m: dict) -> None:
    t["mean"] = t["mean"].float()


def _indices_int32(t: dict, m: dict) -> None:
    t["channel_indices"] = t["channel_indices"].int()


def _nan_mean(t: dict, m: dict) -> None:
    t["mean"][5, 3] = float("nan")


def _inf_precision(t: dict, m: dict) -> None:
    t["precision_cholesky"][0, 0] = float("inf")


def _index_too_large(t: dict, m: dict) -> None:
    t["channel_indices"][-1] = 448


def _index_negative(t: dict, m: dict) -> None:
    t["channel_indices"][0] = -1


def _drop_mean(t: dict, m: dict) -> None:
    del t["mean"]


def _drop_scatter(t: dict, m: dict) -> None:
    del t["scatter"]


def _wrong_feature_shape(t: dict, m: dict) -> None:
    m["feature_shape"] = [8, 8]


def _zero_samples(t: dict, m: dict) -> None:
    m["n_samples_seen"] = 0


def _missing_layers(t: dict, m: dict) -> None:
    del m["backbone"]["layers"]


REFUSALS = {
    "truncated": (_truncate, "not a torch-padim model file"),
    "text file": (_not_safetensors, "not a torch-padim model file"),
    "pickle": (_pickle_named_safetensors, "not a torch-padim model file"),
    "no padim metadata": (_no_metadata, "no padim metadata"),
    "foreign format": (_foreign_metadata, "not a torch-padim model file"),
    "corrupt json": (_bad_json, "corrupt model metadata"),
    "format version 999": (_edit(_set_version), "version 999"),
    "wrong shape": (_edit(_short_precision), "precision_cholesky"),
    "wrong dtype": (_edit(_mean_float32), "'mean'"),
    "wrong index dtype": (_edit(_indices_int32), "channel_indices"),
    "nan in mean": (_edit(_nan_mean), "NaN"),
    "inf in precision": (_edit(_inf_precision), "NaN or inf"),
    "index out of range": (_edit(_index_too_large), "out of range"),
    "negative index": (_edit(_index_negative), "out of range"),
    "missing tensor": (_edit(_drop_mean), "'mean' is missing"),
    "missing statistics": (_edit(_drop_scatter), "'scatter' is missing"),
    "grid mismatch": (_edit(_wrong_feature_shape), "metadata implies"),
    "zero images": (_edit(_zero_samples), "n_samples_seen must be"),
    "malformed metadata": (_edit(_missing_layers), "malformed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_loading_refuses_bad_files(saved, tmp_path: Path, case: str) -> None:
    make, expected = REFUSALS[case]
    path = make(saved["full"], tmp_path / "bad.safetensors")
    with pytest.raises(PadimError) as err:
        PaDiM.load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert expected in msg
    assert "\n" not in msg
    assert isinstance(err.value, ModelFileError)


def test_metadata_that_is_not_a_json_object_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "list_meta.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"padim": json.dumps([1, 2])})
    with pytest.raises(PadimError) as err:
        PaDiM.load(path)
    assert str(path) in str(err.value)


def _feature_shape_text(t: dict, m: dict) -> None:
    m["feature_shape"] = "16x16"


def _n_samples_text(t: dict, m: dict) -> None:
    m["n_samples_seen"] = "twelve"


@pytest.mark.parametrize("change", [_feature_shape_text, _n_samples_text], ids=["feature_shape", "n_samples_seen"])
def test_metadata_values_of_the_wrong_kind_are_refused(saved, tmp_path: Path, change) -> None:
    path = rewrite(saved["full"], tmp_path / "odd_values.safetensors", change)
    with pytest.raises(PadimError) as err:
        PaDiM.load(path)
    assert str(path) in str(err.value)


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(PadimError, match="not found"):
        PaDiM.load(tmp_path / "absent.safetensors")


def test_random_weights_are_rebuilt_with_the_same_sha256(saved, fitted: PaDiM) -> None:
    loaded = PaDiM.load(saved["plain"])
    assert loaded.backbone_.source.kind == "random"
    assert loaded.backbone_.source.seed == 0
    assert loaded.backbone_.source.sha256 == fitted.backbone_.source.sha256
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for a, b in zip(loaded.backbone_.extractor(x), fitted.backbone_.extractor(x)):
            assert torch.equal(a, b)


def test_random_weights_with_a_nondefault_seed_round_trip(train, test_images, tmp_path: Path) -> None:
    model = PaDiM(**{**TINY, "seed": 3}).fit(train[:4])
    path = tmp_path / "seed3.safetensors"
    model.save(path)
    loaded = PaDiM.load(path)
    assert loaded.backbone_.source.seed == 3
    assert loaded.backbone_.source.sha256 == model.backbone_.source.sha256
    assert np.array_equal(loaded.predict(test_images[:2]).maps, model.predict(test_images[:2]).maps)


def _fake_sha(t: dict, m: dict) -> None:
    m["backbone"]["weights"]["sha256"] = "0" * 64


def _other_seed(t: dict, m: dict) -> None:
    m["backbone"]["weights"]["seed"] = 1  # rebuilds different random weights


@pytest.mark.parametrize("change", [_fake_sha, _other_seed], ids=["recorded sha256", "random seed"])
def test_weights_that_differ_from_the_recorded_sha256_are_refused(saved, tmp_path: Path, change) -> None:
    path = rewrite(saved["plain"], tmp_path / "other_weights.safetensors", change)
    with pytest.raises(PadimError) as err:
        PaDiM.load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "original weights" in msg and "weights=PATH" in msg
    assert isinstance(err.value, ModelFileError)


def test_file_weights_are_checked_on_load(train, test_images, tmp_path: Path) -> None:
    weights = tmp_path / "r18.pth"
    torch.save(build_backbone("resnet18", weights="random", seed=9).extractor.model.state_dict(), weights)
    model = PaDiM(**{**TINY, "weights": weights}).fit(train[:4])
    path = tmp_path / "filew.safetensors"
    model.save(path)
    loaded = PaDiM.load(path)  # finds the recorded path
    assert loaded.backbone_.source.kind == "file"
    assert np.array_equal(loaded.predict(test_images[:2]).scores, model.predict(test_images[:2]).scores)
    other = tmp_path / "other.pth"
    torch.save(build_backbone("resnet18", weights="random", seed=10).extractor.model.state_dict(), other)
    with pytest.raises(PadimError, match="original weights"):
        PaDiM.load(path, weights=other)


# ----------------------------------------------------------------------------- atomic writes
def _safetensors_disk_full() -> Exception:
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), _safetensors_disk_full(),
                                     RuntimeError("writer crashed"), KeyboardInterrupt()],
                         ids=["disk full", "disk full in safetensors", "error", "interrupt"])
def test_failed_save_keeps_the_previous_file(fitted: PaDiM, tmp_path: Path, monkeypatch, failure) -> None:
    import safetensors.torch

    path = tmp_path / "model.safetensors"
    fitted.save(path)
    before = path.read_bytes()
    real_save = safetensors.torch.save_file
    written: list[str] = []

    def half_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        written.append(filename)
        raise failure

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    io_error = isinstance(failure, OSError) or "os error" in str(failure)
    expected = PadimError if io_error else type(failure)  # a writer's bug still surfaces as itself
    with pytest.raises(expected) as err:
        fitted.save(path, statistics=True)
    if io_error:
        assert str(path) in str(err.value) and "No space left on device" in str(err.value)
    assert written and Path(written[0]).parent == tmp_path  # the fake writer really ran, beside the target
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    monkeypatch.undo()
    assert PaDiM.load(path).n_samples_seen_ == fitted.n_samples_seen_


def test_save_replaces_an_existing_file_completely(fitted: PaDiM, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * 10_000_000)  # larger than the model: must not leave a tail
    fitted.save(path)
    assert read_model(path)[1]["n_samples_seen"] == fitted.n_samples_seen_
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_saving_into_a_missing_folder_is_refused(fitted: PaDiM, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "model.safetensors"
    with pytest.raises(PadimError) as err:
        fitted.save(target)
    assert str(target) in str(err.value)
    assert not target.parent.exists()


def test_saved_file_has_ordinary_permissions(fitted: PaDiM, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        reference = tmp_path / "reference.bin"
        reference.write_bytes(b"")  # what open(..., "wb") gives under this umask: 0644
        path = tmp_path / "model.safetensors"
        fitted.save(path)
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(reference.stat().st_mode & 0o777)


# ----------------------------------------------------------------------------- packing
@pytest.mark.parametrize("dim", [1, 2, 7, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pack_unpack_round_trips(dim: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(dim)
    m = torch.randn(5, dim, dim, generator=g, dtype=torch.float64).to(dtype)
    packed = pack_lower(m)
    assert packed.shape == (5, dim * (dim + 1) // 2)
    assert packed.dtype == dtype
    # Row-major lower triangle, the layout the file format stores.
    expected = torch.stack([torch.cat([m[p, i, : i + 1] for i in range(dim)]) for p in range(5)])
    assert torch.equal(packed, expected)
    lower = m.tril()
    assert torch.equal(unpack_lower(packed, dim), lower)
    assert torch.equal(pack_lower(unpack_lower(packed, dim)), packed)
    sym = m + m.transpose(1, 2)
    rebuilt = symmetric_from_lower(pack_lower(sym), dim)
    assert torch.equal(rebuilt, sym)
    assert torch.equal(rebuilt, rebuilt.transpose(1, 2))


# ----------------------------------------------------------------------------- Rd channels
def test_random_channels_sorted_unique_seeded() -> None:
    a = random_channels(448, 100, seed=0)
    assert a.shape == (100,) and a.dtype == torch.int64
    assert torch.equal(a, a.sort().values)
    assert a.unique().numel() == 100
    assert int(a.min()) >= 0 and int(a.max()) < 448
    assert torch.equal(a, random_channels(448, 100, seed=0))
    assert not torch.equal(a, random_channels(448, 100, seed=1))
    assert torch.equal(random_channels(448, None, seed=3), torch.arange(448))
    assert torch.equal(random_channels(448, 448, seed=3), torch.arange(448))
    one = random_channels(10, 1, seed=2)
    assert one.shape == (1,) and 0 <= int(one) < 10


def test_random_channels_leave_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    random_channels(448, 100, seed=0)
    assert torch.equal(torch.rand(3), want)


@pytest.mark.parametrize("n_features", [0, -1, 449, 10_000])
def test_random_channels_out_of_range(n_features: int) -> None:
    with pytest.raises(PadimError, match="between 1 and 448"):
        random_channels(448, n_features, seed=0)


def reference_embedding(maps: list[torch.Tensor], channel_indices: torch.Tensor) -> torch.Tensor:
    """Upsample every full map to the first grid (nearest), concatenate, then pick the Rd channels."""
    grid = maps[0].shape[-2:]
    full = torch.cat([F.interpolate(m, size=grid, mode="nearest") if m.shape[-2:] != grid else m for m in maps], 1)
    return full.index_select(1, channel_indices)


def test_split_by_tap_local_indices() -> None:
    idx = torch.tensor([0, 5, 63, 64, 100, 191, 192, 447])
    parts = split_by_tap(idx, (64, 128, 256))
    assert [p.tolist() for p in parts] == [[0, 5, 63], [0, 36, 127], [0, 255]]
    parts = split_by_tap(torch.tensor([1, 2]), (64, 128, 256))
    assert [p.tolist() for p in parts] == [[1, 2], [], []]


@pytest.mark.parametrize(
    "channel_indices",
    [
        random_channels(448, 100, seed=0),
        random_channels(448, 7, seed=4),
        torch.arange(448),  # every channel: the no-select fast path
        torch.tensor([3, 10, 63]),  # only the first tap
        torch.tensor([200, 300, 447]),  # only the last tap
        torch.arange(64, 192),  # a whole middle tap
    ],
    ids=["rd100", "rd7", "all", "first-only", "last-only", "middle-whole"],
)
@pytest.mark.parametrize("grids", [((16, 16), (8, 8), (4, 4)), ((15, 9), (8, 5), (4, 3))], ids=["even", "odd"])
def test_embed_matches_concatenate_then_select(channel_indices: torch.Tensor, grids) -> None:
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(2, c, *hw, generator=g) for c, hw in zip((64, 128, 256), grids)]
    got = embed(maps, split_by_tap(channel_indices, (64, 128, 256)))
    want = reference_embedding(maps, channel_indices)
    assert got.shape == want.shape == (2, channel_indices.numel(), *grids[0])
    assert torch.equal(got, want)


def test_embed_on_real_backbone_maps() -> None:
    bb = build_backbone("resnet18", weights="random", seed=2)
    x = torch.randn(1, 3, 72, 40, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        maps = bb.extractor(x)
    idx = random_channels(sum(bb.channels), 50, seed=6)
    got = embed(maps, split_by_tap(idx, bb.channels))
    assert torch.equal(got, reference_embedding(maps, idx))


def test_half_precision_file_is_smaller_and_scores_stay_close(fitted: PaDiM, texture_set: Path, tmp_path: Path) -> None:
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    fitted.save(full)
    fitted.save(half, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    test = sorted((texture_set / "test").glob("*/*.png"))
    ref = fitted.predict(test)
    got = PaDiM.load(half, batch_size=fitted.batch_size).predict(test)
    assert np.allclose(got.scores, ref.scores, rtol=5e-3)
    assert np.abs(got.maps - ref.maps).max() < 5e-3 * np.abs(ref.maps).max()
