"""Issue 12, items 2-3: one table bounds every parameter a user or a model file sets; NaN is never a pass."""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from padim import InputError, PaDiM, PadimError
from padim.baselines.spade import Spade
from padim.baselines.vae import VAE
from padim.calibration import Calibration
from padim.errors import PadimWarning
from padim.utils.constraints import PADIM_CONSTRAINTS, check_params
from padim.model import Prediction, add_verdicts
from padim.modelfile import CHECKSUM_KEY, read_model, tensor_sha256
from padim.evaluation.synthetic import load_split

from conftest import TINY

NOWHERE = ["/nonexistent/never-read.png"]  # a parameter error must come before this is looked at


@pytest.fixture(scope="module")
def split(texture_set: Path):
    return load_split(texture_set)


@pytest.fixture(scope="module")
def fitted(split) -> PaDiM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PadimWarning)  # few hold-out images for a 1% FPR: expected
        return PaDiM(**TINY, holdout=0.25).fit(split[0])


@pytest.fixture(scope="module")
def saved(fitted: PaDiM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("constraints") / "model.safetensors"
    fitted.save(path)
    return path


def rewrite(src: Path, dst: Path, edit_meta=None, edit_tensors=None, fix_checksum: bool = True) -> Path:
    """Copy a model file with edited metadata and/or tensors; the checksum recomputed unless told otherwise."""
    tensors, meta = read_model(src)
    tensors = {k: v.clone() for k, v in tensors.items()}
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    if fix_checksum and CHECKSUM_KEY in meta:
        meta[CHECKSUM_KEY] = tensor_sha256(tensors)
    save_file(tensors, str(dst), metadata={"padim": json.dumps(meta)})
    return dst


def one_line_refusal(call, *needles: str) -> str:
    """Run call(), expect a one-line PadimError containing every needle; return the message."""
    with pytest.raises(PadimError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# ----------------------------------------------------------------------------- the table
def test_the_table_covers_every_constructor_parameter() -> None:
    params = set(inspect.signature(PaDiM.__init__).parameters) - {"self"}
    assert params == set(PADIM_CONSTRAINTS)


def test_the_defaults_and_the_test_configuration_pass_the_table() -> None:
    defaults = {k: p.default for k, p in inspect.signature(PaDiM.__init__).parameters.items() if k != "self"}
    check_params(defaults, PADIM_CONSTRAINTS)
    check_params({**defaults, **TINY}, PADIM_CONSTRAINTS)


ESTIMATORS = [PaDiM, Spade, VAE]


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_every_estimator_table_covers_its_constructor_and_its_defaults_pass(cls) -> None:
    signature = inspect.signature(cls.__init__).parameters
    assert set(signature) - {"self"} == set(cls._parameter_constraints)
    defaults = {k: p.default for k, p in signature.items() if k != "self"}
    check_params(defaults, cls._parameter_constraints)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_parameters_after_the_first_are_keyword_only(cls) -> None:
    params = [p for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"]
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    with pytest.raises(TypeError):
        cls(params[0].default, params[1].default)


TABLE_ENTRIES = [(cls, name) for cls in ESTIMATORS for name in cls._parameter_constraints]


@pytest.mark.parametrize("cls, name", TABLE_ENTRIES, ids=[f"{c.__name__}.{n}" for c, n in TABLE_ENTRIES])
def test_each_constraint_refuses_a_bad_value_with_its_message(cls, name: str) -> None:
    rules = cls._parameter_constraints[name]
    expected = f"{name} must be {' or '.join(rule.text for rule in rules)}, got "
    with pytest.raises(InputError) as err:
        cls(**{name: object()})._check_params()  # PaDiM refuses it already when made
    assert str(err.value).startswith(expected), err.value


SPADE_AND_VAE_BAD = [
    (Spade, "k_images", 0, "k_images must be a positive integer, got 0"),
    (Spade, "k_patches", 1.5, "k_patches must be a positive integer, got 1.5"),
    (Spade, "sigma", -1.0, "sigma must be >= 0, got -1.0"),
    (Spade, "layers", ("layer1", "global_pool"), "layers must be 1 to 16 distinct, non-empty module names, not "
                                                 "'global_pool' (it is added)"),
    (VAE, "learning_rate", 0.0, "learning_rate must be positive, got 0.0"),
    (VAE, "max_degrees", float("nan"), "max_degrees must be >= 0, got nan"),
    (VAE, "crop_size", 48, "crop_size must be a multiple of 32 (the encoder's stride), got 48"),
    (VAE, "epochs", 0, "epochs must be a positive integer, got 0"),
]


@pytest.mark.parametrize("cls, name, value, message", SPADE_AND_VAE_BAD,
                         ids=[f"{c.__name__}.{n}={v!r}" for c, n, v, _ in SPADE_AND_VAE_BAD])
def test_baseline_parameters_are_refused_with_their_message(cls, name: str, value, message: str) -> None:
    with pytest.raises(InputError) as err:
        cls(**{name: value})._check_params()
    assert str(err.value).startswith(message), err.value


def test_the_checks_of_several_parameters_run_after_the_table() -> None:
    with pytest.raises(InputError, match=r"crop size \(80, 80\) is larger than image size \(64, 64\)"):
        Spade(image_size=64, crop_size=80)._check_params()
    with pytest.raises(InputError, match="crop_size <= random_crop <= resize, got 64, 32, 96"):
        VAE(resize=96, random_crop=32, crop_size=64)._check_params()
    with pytest.raises(InputError, match="engine 'openvino' runs on the CPU only"):
        PaDiM(**TINY, engine="openvino", device="cuda")._check_params()


BAD_PARAMETERS = [
    ("image_size", 100000), ("image_size", (64, 100000)), ("image_size", 8), ("image_size", 64.5),
    ("image_size", (64, 64, 64)), ("crop_size", 100000), ("crop_size", 0),
    ("sigma", float("nan")), ("sigma", 1e5), ("sigma", 1e6), ("sigma", -1.0), ("sigma", float("inf")), ("sigma", "4"),
    ("eps", float("nan")), ("eps", 1e-300), ("eps", 0), ("eps", float("inf")), ("eps", -0.01),
    ("n_features", 2.5), ("n_features", 0), ("n_features", True), ("n_features", 10**9), ("n_features", "some"),
    ("batch_size", 0), ("batch_size", 2.5), ("batch_size", -3), ("batch_size", 10**7),
    ("seed", -1), ("seed", 2**40), ("seed", 1.5),
    ("holdout", float("nan")), ("holdout", 1.0), ("holdout", -0.1),
    ("fpr", float("nan")), ("fpr", 0.0), ("fpr", 1.0), ("fpr", float("inf")),
    ("layers", ()), ("layers", ("",)), ("layers", ("layer1", "layer1")), ("layers", "layer1"),
    ("threads", 0), ("threads", 2.0), ("workers", -1), ("reduction", "svd"), ("verbose", "yes"), ("backbone", ""),
]


@pytest.mark.parametrize("name, value", BAD_PARAMETERS, ids=[f"{n}={v!r}" for n, v in BAD_PARAMETERS])
def test_bad_parameters_are_refused_before_any_image_is_read(name: str, value) -> None:
    one_line_refusal(lambda: PaDiM(**{**TINY, name: value}).fit(NOWHERE), name)


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:99"])
def test_unusable_devices_are_refused_before_any_image_is_read(device: str) -> None:
    one_line_refusal(lambda: PaDiM(**{**TINY, "device": device}).fit(NOWHERE), device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line() -> None:
    one_line_refusal(lambda: PaDiM(**{**TINY, "device": "cuda"}).fit(NOWHERE), "cuda", "no CUDA GPU")


def test_gaussians_larger_than_the_machine_are_refused_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    import padim.utils.constraints

    monkeypatch.setattr(padim.utils.constraints, "physical_memory", lambda: 2**20)  # a 1 MiB machine
    one_line_refusal(lambda: PaDiM(**TINY).fit(NOWHERE), "GiB", "64x64", "32 features")


# ----------------------------------------------------------------------------- hostile metadata
def _set(path: tuple, value):
    def edit(meta: dict) -> None:
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


HOSTILE = {
    "sigma 1e6": (_set(("sigma",), 1e6), "sigma"),
    "sigma NaN": (_set(("sigma",), float("nan")), "sigma"),
    "sigma negative": (_set(("sigma",), -4.0), "sigma"),
    "image size 100000": (_set(("preprocessing", "image_size"), [100000, 100000]), "image_size"),
    "crop size 100000": (_set(("preprocessing", "crop_size"), [100000, 100000]), "crop_size"),
    "eps 1e-300": (_set(("eps",), 1e-300), "eps"),
    "eps NaN": (_set(("eps",), float("nan")), "eps"),
    "n_features 2.5": (_set(("n_features",), 2.5), "n_features"),
    "n_features 1e9": (_set(("n_features",), 10**9), "n_features"),
    "seed -1": (_set(("seed",), -1), "seed"),
    "empty layer": (_set(("backbone", "layers"), [""]), "layers"),
    "feature grid 100000": (_set(("feature_shape",), [100000, 100000]), "feature_shape"),
    "n_samples_seen 2.5": (_set(("n_samples_seen",), 2.5), "n_samples_seen"),
    "channels 0": (_set(("backbone", "channels"), [0, 128, 256]), "channels"),
    "precision dtype float64": (_set(("precision_dtype",), "float64"), "precision_dtype"),
    "calibration fpr NaN": (_set(("calibration", "fpr"), float("nan")), "false-positive rate"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_metadata_is_refused_in_one_line_naming_the_file(saved: Path, tmp_path: Path, case: str) -> None:
    edit, needle = HOSTILE[case]
    path = rewrite(saved, tmp_path / "hostile.safetensors", edit_meta=edit)
    one_line_refusal(lambda: PaDiM.load(path), str(path), needle)


def test_nan_calibration_scores_in_a_file_are_refused(saved: Path, tmp_path: Path) -> None:
    def poison(tensors: dict) -> None:
        tensors["calibration_image_scores"][0] = float("nan")

    path = rewrite(saved, tmp_path / "nan_cal.safetensors", edit_tensors=poison)
    one_line_refusal(lambda: PaDiM.load(path), str(path), "NaN")


# ----------------------------------------------------------------------------- checksums
def _flip_byte_of(tensor_name: str):
    def flip(src: Path, dst: Path) -> Path:
        data = bytearray(src.read_bytes())
        n = int.from_bytes(data[:8], "little")
        start = json.loads(data[8 : 8 + n])[tensor_name]["data_offsets"][0] + 8 + n
        data[start + 5] ^= 0x10  # one bit of one value: still a finite number
        dst.write_bytes(bytes(data))
        return dst
    return flip


@pytest.mark.parametrize("tensor", ["mean", "precision_cholesky", "channel_indices", "calibration_image_scores"])
def test_a_flipped_bit_in_tensor_data_is_refused_naming_the_file(saved: Path, tmp_path: Path, tensor: str) -> None:
    path = _flip_byte_of(tensor)(saved, tmp_path / "flipped.safetensors")
    one_line_refusal(lambda: PaDiM.load(path), str(path), "checksum")
    one_line_refusal(lambda: read_model(path), str(path), "checksum")


def test_a_checksum_that_does_not_match_is_refused(saved: Path, tmp_path: Path) -> None:
    path = rewrite(saved, tmp_path / "wrong.safetensors", edit_meta=_set((CHECKSUM_KEY,), "0" * 64), fix_checksum=False)
    one_line_refusal(lambda: PaDiM.load(path), str(path), "checksum")


def test_a_version_2_file_without_checksum_is_refused(saved: Path, tmp_path: Path) -> None:
    path = rewrite(saved, tmp_path / "nosum.safetensors", edit_meta=lambda m: m.pop(CHECKSUM_KEY), fix_checksum=False)
    one_line_refusal(lambda: PaDiM.load(path), str(path), CHECKSUM_KEY)


def test_a_version_1_file_loads_with_a_warning_and_saves_as_version_2(saved: Path, tmp_path: Path, fitted: PaDiM,
                                                                     split) -> None:
    def as_v1(meta: dict) -> None:
        meta.pop(CHECKSUM_KEY)
        meta["format_version"] = 1

    path = rewrite(saved, tmp_path / "v1.safetensors", edit_meta=as_v1, fix_checksum=False)
    with pytest.warns(PadimWarning, match="no tensor checksum"):
        old = PaDiM.load(path)
    assert np.array_equal(old.predict(split[1][:2]).scores, fitted.predict(split[1][:2]).scores)
    again = tmp_path / "v2.safetensors"
    old.save(again)
    assert read_model(again)[1]["format_version"] == 2 and CHECKSUM_KEY in read_model(again)[1]


def test_the_checksum_does_not_depend_on_tensor_order_but_on_every_byte() -> None:
    a, b = torch.arange(6.0), torch.zeros(2, 3, dtype=torch.float64)
    assert tensor_sha256({"a": a, "b": b}) == tensor_sha256({"b": b, "a": a})
    assert tensor_sha256({"a": a, "b": b}) != tensor_sha256({"a": a, "b": b.reshape(3, 2)})
    c = a.clone()
    c.view(torch.uint8)[3] ^= 1
    assert tensor_sha256({"a": a}) != tensor_sha256({"a": c})


# ----------------------------------------------------------------------------- NaN is never a pass
@pytest.mark.parametrize("which", ["image_threshold", "pixel_threshold"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_bad_thresholds_are_refused_before_scoring(fitted: PaDiM, which: str, value: float) -> None:
    one_line_refusal(lambda: fitted.predict(NOWHERE, **{which: value}), which)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_add_verdicts_refuses_non_finite_thresholds(value: float) -> None:
    pred = Prediction(["a.png"], np.array([3.0], np.float32), np.zeros((1, 4, 4), np.float32))
    one_line_refusal(lambda: add_verdicts(pred, None, value, None), "image threshold")
    one_line_refusal(lambda: add_verdicts(pred, None, None, value), "pixel threshold")


def test_calibration_refuses_nan_scores_and_fpr(fitted: PaDiM) -> None:
    one_line_refusal(lambda: Calibration(np.array([1.0, np.nan]), np.array([0.5]), 0.1, "test"), "NaN")
    one_line_refusal(lambda: Calibration(np.array([1.0]), np.array([np.inf]), 0.1, "test"), "NaN")
    one_line_refusal(lambda: fitted.calibrate(NOWHERE, fpr=float("nan")), "fpr")


def nan_model(saved: Path, position: int = 3) -> PaDiM:
    """The saved model with one NaN in its mean, in memory (a file with one is refused on load)."""
    broken = PaDiM.load(saved)
    mean = broken.net_.mean.clone()
    mean[position, 1] = float("nan")
    broken.net_.set_gaussians(mean, broken.net_.factor)
    return broken


def test_a_nan_in_the_model_is_an_error_naming_the_image_never_a_verdict(saved: Path, split) -> None:
    broken = nan_model(saved)
    image = split[1][0]
    one_line_refusal(lambda: broken.predict([image], image_threshold=1.0), str(image), "NaN")


def test_overflowing_inverse_covariances_are_refused_at_fit(split, monkeypatch: pytest.MonkeyPatch) -> None:
    import padim.model

    real = padim.model.precision_factor
    monkeypatch.setattr(padim.model, "precision_factor", lambda stats, eps: [blk * float("inf") for blk in real(stats, eps)])
    one_line_refusal(lambda: PaDiM(**TINY).fit(split[0][:2]), "eps")


def test_half_precision_save_refuses_factors_beyond_float16(saved: Path, tmp_path: Path) -> None:
    big = PaDiM.load(saved)
    big.net_.set_gaussians(big.net_.mean, [blk * 1e6 for blk in big.net_.factor])
    path = tmp_path / "half.safetensors"
    one_line_refusal(lambda: big.save(path, half=True), str(path), "float16")
    assert not path.exists()


def test_exported_metadata_with_a_nan_threshold_is_refused() -> None:
    from padim.deployment.export import _parse_metadata

    meta = {"preprocessing": {"image_size": [64, 64], "crop_size": None, "mean": [0.5] * 3, "std": [0.2] * 3},
            "calibration": {"image_threshold": float("nan"), "pixel_threshold": 1.0, "image_scores": [1.0]}}
    one_line_refusal(lambda: _parse_metadata(Path("m.onnx"), json.dumps(meta)), "m.onnx", "image_threshold")
    meta["calibration"].update(image_threshold=1.0, image_scores=[1.0, float("inf")])
    one_line_refusal(lambda: _parse_metadata(Path("m.onnx"), json.dumps(meta)), "m.onnx", "NaN or inf")


def test_the_service_answers_a_nan_score_with_an_error_not_a_verdict(saved: Path, split) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from padim.deployment.service import create_app

    broken = nan_model(saved, position=0)
    with TestClient(create_app(broken, max_upload_bytes=200_000, max_pixels=100_000)) as client:
        path = Path(split[1][0])
        r = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert r.status_code == 422, r.text
    assert "NaN" in r.text and "defective" not in r.json()
