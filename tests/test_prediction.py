"""The one loop that collects a detector's batches into a Prediction."""

from __future__ import annotations

import numpy as np
import torch

from padim.data import Batch, Preprocess
from padim.prediction import collect


def batch(names: list[str], sizes: list[tuple[int, int]]) -> Batch:
    return Batch(torch.zeros(len(names), 3, 8, 8), names, sizes)


def test_tensors_and_arrays_give_the_same_prediction_in_input_order() -> None:
    maps = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8)
    scores = torch.tensor([3.0, 1.0, 2.0])
    first, second = batch(["a", "b"], [(8, 8)] * 2), batch(["c"], [(8, 8)])
    from_tensors = collect([(first, maps[:2], scores[:2], {}), (second, maps[2:], scores[2:], {})])
    from_arrays = collect([(first, maps[:2].numpy(), scores[:2].numpy(), {}),
                           (second, maps[2:].numpy(), scores[2:].numpy(), {})])
    for pred in (from_tensors, from_arrays):
        assert pred.names == ["a", "b", "c"]
        assert np.array_equal(pred.scores, scores.numpy()) and np.array_equal(pred.maps, maps.numpy())
        assert pred.contrast is None and pred.frame_scores is None


def test_extras_become_fields_and_any_missing_batch_leaves_none() -> None:
    one, two = batch(["a"], [(8, 8)]), batch(["b"], [(8, 8)])
    maps, score = np.zeros((1, 8, 8), np.float32), np.zeros(1, np.float32)
    pred = collect([(one, maps, score, {"contrast": np.array([0.5]), "blank": None}),
                    (two, maps, score, {"contrast": np.array([0.25]), "blank": np.array([True])})])
    assert np.array_equal(pred.contrast, [0.5, 0.25]) and pred.blank is None


def test_maps_at_original_sizes_are_a_list() -> None:
    pre = Preprocess((8, 8), None)
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    pred = collect([(batch(["a", "b"], [(16, 12), (8, 8)]), maps, maps.amax(dim=(1, 2)), {})], original_size=pre)
    assert isinstance(pred.maps, list) and [m.shape for m in pred.maps] == [(16, 12), (8, 8)]
    assert np.array_equal(pred.maps[0], pre.to_original(maps[:1], (16, 12))[0].numpy())
    assert np.allclose(pred.maps[1], maps[1].numpy(), atol=1e-6)
