"""Lanes: a batch's parts embedded and scored side by side give the predictions of the whole engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from padim import PaDiM
from padim.engine import OpenVinoEngine
from padim.errors import InputError
from padim.evaluation.synthetic import load_split, make_inspection_set
from padim.lanes import LANE_MIN_BATCH, lane_parts, run_in_lanes
from padim.scoring import patch_distances

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_inspection_set(tmp_path_factory.mktemp("lanes"), "gravel", n_train=12, n_test_good=9, n_test_defect=10, seed=1)


@pytest.fixture(scope="module")
def fitted(category) -> PaDiM:
    train = load_split(category)[0]
    return PaDiM(engine="openvino", threads=2, n_features=48, batch_size=LANE_MIN_BATCH).fit(train)


def _without_lanes(monkeypatch) -> None:
    monkeypatch.setattr(OpenVinoEngine, "lanes", lambda self: [])


@pytest.mark.parametrize("n", range(1, 14))
@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lane_parts_cover_every_index_once_in_order_and_none_is_empty(n, lanes) -> None:
    parts = lane_parts(n, lanes)
    assert [i for sl in parts for i in range(sl.start, sl.stop)] == list(range(n))
    assert 1 <= len(parts) <= lanes and all(sl.stop > sl.start for sl in parts)
    sizes = [sl.stop - sl.start for sl in parts]
    assert max(sizes) - min(sizes) <= lanes - 1


class _Lane:
    def __init__(self, threads: int) -> None:
        self.threads = threads


def test_run_in_lanes_gives_each_part_its_own_lane_and_thread_count_and_restores_torch() -> None:
    lanes = [_Lane(1), _Lane(1)]
    outer = torch.get_num_threads()
    seen = run_in_lanes(lambda lane, sl: (id(lane), sl, torch.get_num_threads()), 9, lanes)
    assert [s[1] for s in seen] == [slice(0, 5), slice(5, 9)]
    assert {s[0] for s in seen} == {id(lane) for lane in lanes}
    assert [s[2] for s in seen] == [1, 1]
    assert torch.get_num_threads() == outer


def test_an_error_in_one_lane_is_raised() -> None:
    def fail(lane, sl):
        if sl.start:
            raise InputError("bad part")
        return sl

    with pytest.raises(InputError, match="bad part"):
        run_in_lanes(fail, 8, [_Lane(1), _Lane(1)])


def test_openvino_lanes_are_two_single_thread_engines_built_once(fitted) -> None:
    engine = fitted.engine_for_device()
    lanes = engine.lanes()
    assert [lane.threads for lane in lanes] == [1, 1] and engine.lanes() is lanes
    assert all(lane.config["INFERENCE_NUM_THREADS"] == 1 for lane in lanes)
    assert engine.config["INFERENCE_NUM_THREADS"] == 2 and all(lane.compiled is not engine.compiled for lane in lanes)


def test_predictions_through_lanes_equal_the_whole_engines(fitted, category, monkeypatch) -> None:
    test = load_split(category)[1]
    images = test + test[:3]  # 22 = 8 + 8 + 6: two batches in lanes, the last one (below LANE_MIN_BATCH) whole
    calls = []
    real = OpenVinoEngine.lanes
    monkeypatch.setattr(OpenVinoEngine, "lanes", lambda self: calls.append(1) or real(self))
    laned = fitted.predict(images)
    assert len(calls) == 2
    _without_lanes(monkeypatch)
    whole = fitted.predict(images)
    scale = float(whole.maps.max() - whole.maps.min())
    assert float(np.abs(laned.maps - whole.maps).max()) <= 1e-5 * scale
    np.testing.assert_allclose(laned.scores, whole.scores, rtol=1e-5)
    np.testing.assert_allclose(laned.frame_scores, whole.frame_scores, rtol=1e-5)
    assert np.array_equal(laned.blank, whole.blank) and np.array_equal(laned.contrast, whole.contrast)
    assert laned.names == whole.names == [str(p) for p in images]


def test_predictions_through_lanes_equal_the_float64_path(fitted, category) -> None:
    from tests.test_engine import reference_maps

    test = load_split(category)[1][:LANE_MIN_BATCH]
    ref = reference_maps(fitted, test)
    maps = fitted.predict(test).maps
    assert float(np.abs(maps - ref).max()) <= 1e-4 * float(ref.max() - ref.min())


def test_nan_scores_in_a_lane_are_refused_naming_the_image(fitted, category) -> None:
    test = load_split(category)[1][:LANE_MIN_BATCH]
    hi = fitted.net_.mean_hi
    saved = hi[5].clone()
    hi[5] = float("nan")  # position 5 of every image
    try:
        with pytest.raises(InputError, match=str(test[0]).replace("\\", "\\\\") + ".*NaN"):
            fitted.predict(test)
    finally:
        hi[5] = saved


def test_distances_honour_a_thread_count_of_one(monkeypatch) -> None:
    import padim.scoring as scoring

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, 12, generator=gen)
    stairs = [torch.randn(50, 12, 12, generator=gen)]
    want = patch_distances(x.clone(), stairs, threads=2)

    class NoPool:
        def __init__(self, *args, **kwargs) -> None:
            raise AssertionError("a pool was started for one thread")

    monkeypatch.setattr(scoring, "ThreadPoolExecutor", NoPool)
    torch.testing.assert_close(patch_distances(x.clone(), stairs, threads=1), want, rtol=1e-6, atol=1e-6)


def test_a_large_graph_gets_no_lanes(fitted, monkeypatch) -> None:
    import padim.engine.openvino as engine_module

    engine = fitted.engine_for_device()._twin(2)
    monkeypatch.setattr(engine_module, "LANE_MAX_GRAPH_BYTES", engine.graph_bytes - 1)
    assert engine.lanes() == []


def test_fit_through_lanes_gives_the_whole_engines_statistics(category, monkeypatch) -> None:
    train = load_split(category)[0]  # 12 = 8 (two lanes of 4) + 4 (below LANE_MIN_BATCH: the whole engine)
    calls = []
    real = OpenVinoEngine.lanes
    monkeypatch.setattr(OpenVinoEngine, "lanes", lambda self: calls.append(1) or real(self))
    laned = PaDiM(engine="openvino", threads=2, n_features=48, batch_size=LANE_MIN_BATCH).fit(train)
    assert len(calls) == 1
    _without_lanes(monkeypatch)
    whole = PaDiM(engine="openvino", threads=2, n_features=48, batch_size=LANE_MIN_BATCH).fit(train)
    assert laned.n_samples_seen_ == whole.n_samples_seen_ == len(train)
    for got, want in [(laned.stats_.mean, whole.stats_.mean), (laned.stats_.scatter, whole.stats_.scatter),
                      (laned.frame_stats_.gaussian.scatter, whole.frame_stats_.gaussian.scatter)]:
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    assert laned.frame_stats_.contrast_min == whole.frame_stats_.contrast_min


def test_nan_features_in_a_lane_are_refused_naming_the_image(category, monkeypatch) -> None:
    from padim.data import as_items

    train = load_split(category)[0][:LANE_MIN_BATCH]
    model = PaDiM(engine="openvino", threads=2, n_features=48, batch_size=LANE_MIN_BATCH)
    model._init_network()
    target = next(iter(model._batches(as_items(train), "fit"))).pixels[6]  # in the second lane's part
    real = OpenVinoEngine.__call__

    def poisoned(self, x):
        out = real(self, x)
        for i in range(len(x)):
            if torch.equal(x[i], target):
                out[:, i] = float("nan")
        return out

    monkeypatch.setattr(OpenVinoEngine, "__call__", poisoned)
    with pytest.raises(InputError, match=str(train[6]).replace("\\", "\\\\") + ": backbone produced NaN"):
        model.fit(train)


def test_a_small_batch_splits_its_distances_into_several_slices_a_thread(monkeypatch) -> None:
    import padim.scoring as scoring

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 12, generator=gen)
    stairs = [torch.randn(200, 12, 12, generator=gen)]
    want = patch_distances(x.clone(), stairs, threads=1)
    steps = []
    real = scoring.run_slices
    monkeypatch.setattr(scoring, "run_slices", lambda fn, total, step, *a, **k: steps.append(step) or real(fn, total, step, *a, **k))
    got = patch_distances(x.clone(), stairs, threads=2)
    assert steps and -(-200 // steps[0]) >= 8  # 4 slices a thread: not one slice on torch's OpenMP threads
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
