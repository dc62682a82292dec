"""Engines: every runtime reproduces torch eager on the real Lite0 weights and photos; selection and fallbacks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

from padim import PaDiM
from padim.backbone import build_backbone
from padim.errors import PadimWarning
from padim.data import Preprocess
from padim.images import pil_to_tensor
from padim.embedding import embed, split_by_tap
from padim.engine import AUTO, ENGINES, EXACTNESS, TapEmbedding, build_engine, default_engine, resolve
from padim.engine.openvino import LANE_SUB_BATCH, OPENVINO_SUB_BATCH
from padim.errors import PadimError
from padim.evaluation.metrics import image_auroc, pixel_auroc
from padim.scoring import anomaly_maps
from padim.torch_fast import optimised, same_padding
from padim.evaluation.synthetic import load_split, make_inspection_set

SIZE = (224, 224)


@pytest.fixture(scope="module")
def lite0() -> TapEmbedding:
    """The default backbone with its real ImageNet weights, every channel of its three taps kept."""
    backbone = build_backbone("efficientnet_lite0")
    return TapEmbedding(backbone.extractor, split_by_tap(torch.arange(sum(backbone.channels)), backbone.channels))


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Real photos (cat, coffee, astronaut, rocket, brick) in the paper's preprocessing."""
    pre = Preprocess()
    images = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket(), skdata.brick()]
    return torch.stack([pre(pil_to_tensor(Image.fromarray(a), "photo")) for a in images])


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_reproduces_torch_eager_on_real_weights_and_photos(name, lite0, photos) -> None:
    with torch.no_grad():
        want = lite0(photos)  # (3136, 5, 176): every tap value, repeated over the first grid
    engine = build_engine(lite0, SIZE, name=name)
    assert engine.name == name
    for batch in (photos[:1], photos):  # batch 1 and 5: static shapes compiled per batch size
        got = engine(batch).cpu()
        assert got.shape == (3136, len(batch), 176)
        assert float((got - want[:, : len(batch)]).abs().max()) <= EXACTNESS * float(want.abs().max())


def test_openvino_runs_large_batches_in_sub_batches_of_its_thread_count_that_equal_eager(lite0, photos) -> None:
    batch = torch.cat([photos, photos.flip(-1), photos.flip(-2), photos.roll(37, -1)])[:19]  # 8 + 8 + 3
    with torch.no_grad():
        want = lite0(batch)
    for threads, step in ((2, OPENVINO_SUB_BATCH), (1, LANE_SUB_BATCH)):  # a lane's engine has one thread
        engine = build_engine(lite0, SIZE, name="openvino", threads=threads)
        assert engine.sub_batch == step
        for _ in range(2):  # the second call reuses the gathering buffer
            got = engine(batch).clone()
            assert got.shape == (3136, 19, 176)
            assert float((got - want).abs().max()) <= EXACTNESS * float(want.abs().max())
        assert set(engine.compiled) == {step, 19 % step or step}  # not one model per batch size


def test_torch_fast_folds_every_batch_norm_and_fixes_the_padding(lite0) -> None:
    fast = optimised(lite0, SIZE)
    kinds = {type(m).__name__ for m in fast.extractor.model.modules()}
    used = set()
    hooks = [m.register_forward_hook(lambda m, i, o: used.add(type(m).__name__)) for m in fast.extractor.model.modules()]
    with torch.no_grad():
        fast(torch.zeros(1, 3, *SIZE))
    for h in hooks:
        h.remove()
    assert "StaticPadConv" in kinds
    assert not used & {"BatchNormAct2d", "BatchNorm2d", "Conv2dSame"}  # none runs up to the last tap
    assert "BatchNormAct2d" in {type(m).__name__ for m in lite0.extractor.model.modules()}  # the original is intact


def test_same_padding_is_tensorflows() -> None:
    conv = nn.Conv2d(3, 3, 3, stride=2)
    assert same_padding((224, 224), conv) == (0, 1, 0, 1)  # even input, stride 2: one pixel right/bottom
    assert same_padding((7, 9), nn.Conv2d(3, 3, 5, stride=1)) == (2, 2, 2, 2)


def demo_figures(category, model: PaDiM) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Maps, scores, image AUROC and pixel AUROC of a model on a miniature demo category."""
    train, test, mask_paths = load_split(category)
    pred = model.fit(train).predict(test)
    masks = [model.preprocessing.mask(np.asarray(Image.open(m))) if m else np.zeros(pred.maps.shape[1:], bool)
             for m in mask_paths]
    labels = [m is not None for m in mask_paths]
    return pred.maps, pred.scores, image_auroc(labels, pred.scores), pixel_auroc(masks, pred.maps)


def reference_maps(model: PaDiM, images) -> np.ndarray:
    """Yesterday's path: eager taps, resize-based embedding, float64 Mahalanobis, bicubic resize, conv blur."""
    net = model.net_
    pixels = torch.stack([model.preprocessing(pil_to_tensor(Image.open(p), str(p))) for p in images])
    with torch.no_grad():
        emb = embed(net.extractor(pixels), net.features.kept).double()  # (B, d, h, w)
    x = emb.flatten(2).permute(2, 0, 1) - model.mean_[:, None, :]  # float64 centring
    w = model.precision_cholesky_.double()
    dist = torch.einsum("pij,pbj->pbi", w, x).square().sum(-1).sqrt().T.reshape(len(images), *net.grid)
    return anomaly_maps(dist, model.preprocessing.output_size, model.sigma).float().numpy()


@pytest.fixture(scope="module")
def demo_category(tmp_path_factory):
    return make_inspection_set(tmp_path_factory.mktemp("demo"), "gravel", n_train=16, n_test_good=6, n_test_defect=10, seed=0)


@pytest.mark.parametrize("name", ENGINES)
def test_demo_maps_and_auroc_equal_the_float64_path_with_every_engine(name, demo_category) -> None:
    model = PaDiM(engine=name, n_features=64)
    maps, scores, img_auc, pix_auc = demo_figures(demo_category, model)
    _, test, mask_paths = load_split(demo_category)
    ref = reference_maps(model, test)
    scale = float(ref.max() - ref.min())
    assert float(np.abs(maps - ref).max()) <= 1e-4 * scale
    labels = [m is not None for m in mask_paths]
    masks = [model.preprocessing.mask(np.asarray(Image.open(m))) if m else np.zeros(ref.shape[1:], bool) for m in mask_paths]
    assert abs(img_auc - image_auroc(labels, ref.reshape(len(ref), -1).max(1))) <= 1e-4
    assert abs(pix_auc - pixel_auroc(masks, ref)) <= 1e-4


def test_a_model_fitted_with_one_engine_predicts_with_any_other(demo_category, tmp_path) -> None:
    train, test, _ = load_split(demo_category)
    fitted = PaDiM(engine="openvino", n_features=32).fit(train[:8])
    fitted.save(tmp_path / "m.safetensors")
    want = fitted.predict(test[:4])
    for name in ENGINES:
        got = PaDiM.load(tmp_path / "m.safetensors", engine=name).predict(test[:4])
        scale = float(want.maps.max() - want.maps.min())
        assert float(np.abs(got.maps - want.maps).max()) <= 1e-4 * scale, name
    meta = (tmp_path / "m.safetensors").read_bytes()[:4096]
    assert b"openvino" not in meta  # the file says nothing about the engine


@pytest.mark.parametrize("name", [e for e in ENGINES if e in ("openvino", "onnxruntime")])
@pytest.mark.parametrize("batch", [4, 2 * OPENVINO_SUB_BATCH])  # the second: OpenVINO's gathering buffer
def test_transform_keeps_every_batch_with_runtimes_that_reuse_their_output_buffers(name, batch, demo_category) -> None:
    train = load_split(demo_category)[0][:8]
    images = (train * 4)[: 2 * batch]  # two batches of the same shape
    model = PaDiM(engine=name, n_features=16, batch_size=batch).fit(train)
    together = model.transform(images)
    one_by_one = np.concatenate([model.transform([p]) for p in images])
    assert float(np.abs(together - one_by_one).max()) <= 1e-4 * float(np.abs(one_by_one).max())


def test_auto_prefers_openvino_on_cpu_and_torch_fast_on_gpu() -> None:
    assert resolve(AUTO, "cpu")[0] == "openvino" and default_engine("cpu") == "openvino"
    assert resolve(AUTO, "cuda") == ["torch-fast", "torch"]
    with pytest.raises(PadimError, match="CPU only"):
        resolve("openvino", "cuda")
    with pytest.raises(PadimError, match="unknown engine 'tensorrt'"):
        resolve("tensorrt", "cpu")
    with pytest.raises(PadimError, match="unknown device 'bogus'"):
        resolve(AUTO, "bogus")
    with pytest.raises(PadimError, match="unknown engine"):
        PaDiM(engine="tensorrt", weights="random").fit([np.zeros((32, 32), np.uint8)])


def test_auto_falls_back_with_a_one_line_notice(lite0, monkeypatch) -> None:
    import padim.engine as engine_module

    real = engine_module._make

    def broken_openvino(name, *args):
        if name == "openvino":
            raise RuntimeError("Cannot load library 'libopenvino_intel_cpu_plugin.so'\nsecond line")
        return real(name, *args)

    monkeypatch.setattr(engine_module, "_make", broken_openvino)
    with pytest.warns(PadimWarning, match=r"engine openvino unavailable \(Cannot load library.*\): using onnxruntime"):
        assert build_engine(lite0, SIZE, name=AUTO).name == "onnxruntime"
    with pytest.raises(PadimError, match="engine 'openvino' cannot run here: Cannot load library"):
        build_engine(lite0, SIZE, name="openvino")


def test_an_inexact_engine_is_never_used(lite0, monkeypatch) -> None:
    # e.g. OpenVINO's bfloat16 default on CPUs with AMX: fast, but not the same features.
    import padim.engine as engine_module

    real = engine_module._make

    class Rounded:
        def __init__(self, engine):
            self.engine, self.name = engine, engine.name

        def __call__(self, x):
            return self.engine(x).to(torch.bfloat16).float()

    def rounding(name, *args):
        engine = real(name, *args)
        return Rounded(engine) if name in ("openvino", "onnxruntime") else engine

    monkeypatch.setattr(engine_module, "_make", rounding)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        chosen = build_engine(lite0, SIZE, name=AUTO)
    assert chosen.name == "torch-fast"
    assert [str(w.message).split(" (")[0] for w in seen] == ["engine openvino unavailable",
                                                              "engine onnxruntime unavailable"]
    assert "differ from torch eager" in str(seen[0].message)


def test_missing_runtimes_fall_through_quietly(lite0, monkeypatch) -> None:
    import padim.engine as engine_module

    monkeypatch.setattr(engine_module, "installed", lambda name: name.startswith("torch"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not installed is not a fault: no notice
        assert build_engine(lite0, SIZE, name=AUTO).name == "torch-fast"
    with pytest.raises(PadimError, match="openvino is not installed"):
        build_engine(lite0, SIZE, name="openvino")
