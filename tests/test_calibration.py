"""Thresholds from good images only, at a target false-positive rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from padim import PaDiM, PadimError
from padim.calibration import Calibration, holdout_split, normalize, threshold_at_fpr
from padim.errors import PadimWarning
from padim.evaluation.synthetic import load_split

from conftest import TINY


def test_threshold_lets_through_at_most_the_target_fraction() -> None:
    scores = np.arange(100, dtype=np.float32)
    assert threshold_at_fpr(scores, 0.01) == 98.0  # only 99 exceeds it
    assert threshold_at_fpr(scores, 0.05) == 94.0
    rng = np.random.default_rng(0)
    for fpr in (0.01, 0.1, 0.33):
        tied = np.sort(np.round(rng.normal(size=500), 1))
        t = threshold_at_fpr(tied, fpr)
        assert np.mean(tied > t) <= fpr
        assert np.mean(tied >= t) > fpr or t == tied[0]  # and it is the smallest such observed score


def test_normalised_scores_put_the_threshold_at_one_half() -> None:
    cal = Calibration(np.linspace(1, 2, 200), np.linspace(0, 1, 1000), 0.01, "test")
    t = cal.image_threshold
    norm = cal.normalize_scores(np.array([0.0, t, t + 1, 1e9]))
    assert norm[1] == pytest.approx(0.5) and np.all(np.diff(norm) > 0) and 0 <= norm.min() and norm.max() <= 1
    assert cal.normalize_scores(np.array([5.0]), threshold=5.0)[0] == pytest.approx(0.5)


def test_one_normalisation_of_scores_and_maps() -> None:
    cal = Calibration(np.linspace(1, 2, 200), np.linspace(0, 1, 1000), 0.01, "test")
    values = np.array([0.0, 0.7, 1.5, 3.0])
    assert np.array_equal(cal.normalize_scores(values), normalize(values, cal.image_threshold, cal.image_scores))
    assert np.array_equal(cal.normalize_maps(values), normalize(values, cal.pixel_threshold, cal.pixel_sample))
    assert normalize(values, 0.7, np.ones(5))[1] == pytest.approx(0.5)  # degenerate spread: still centred


def test_holdout_split_is_seeded_and_keeps_input_order() -> None:
    items = list("abcdefghij")
    fit, held = holdout_split(items, 0.3, seed=0)
    assert len(held) == 3 and sorted(fit + held) == items
    assert fit == sorted(fit) and held == sorted(held)
    assert holdout_split(items, 0.3, seed=0) == (fit, held) and holdout_split(items, 0.0, seed=0) == (items, [])
    with pytest.raises(PadimError, match="leaves none"):
        holdout_split(items[:1], 0.5, seed=0)


def test_bad_fpr_and_empty_calibration_are_refused() -> None:
    with pytest.raises(PadimError, match="false-positive rate"):
        Calibration(np.ones(3), np.ones(3), 1.5, "x")
    with pytest.raises(PadimError, match="at least one good image"):
        Calibration(np.ones(0), np.ones(3), 0.01, "x")


@pytest.fixture(scope="module")
def calibrated(texture_set):
    train, test, masks = load_split(texture_set)
    with pytest.warns(PadimWarning, match="only 3 calibration images"):
        model = PaDiM(**TINY, holdout=0.25).fit(train)
    return model, train, test


def test_holdout_images_are_kept_out_of_the_fit(calibrated) -> None:
    model, train, _ = calibrated
    assert model.n_samples_seen_ + len(model.calibration_.image_scores) == len(train)
    held = np.random.default_rng(TINY["seed"]).permutation(len(train))[:3]
    rest = [p for i, p in enumerate(train) if i not in set(held.tolist())]
    assert torch.allclose(PaDiM(**TINY).fit(rest).mean_, model.mean_, atol=1e-12)
    held_scores = PaDiM(**TINY).fit(rest).predict([train[i] for i in sorted(held)]).scores
    assert np.allclose(np.sort(held_scores), model.calibration_.image_scores, rtol=1e-6)
    assert "held-out training images" in model.calibration_.describe()


def test_predict_gives_verdicts_masks_and_accepts_overrides(calibrated) -> None:
    model, _, test = calibrated
    pred = model.predict(test)
    t, pt = model.calibration_.image_threshold, model.calibration_.pixel_threshold
    frame_fails = pred.blank | (pred.frame_scores > model.calibration_.frame_threshold)  # defective whatever the score
    assert np.array_equal(pred.decisions, (pred.scores > t) | frame_fails) and pred.image_threshold == t
    assert np.array_equal(pred.masks, pred.maps > pt)
    assert np.array_equal(pred.normalized_scores > 0.5, pred.scores > t)
    strict = model.predict(test, image_threshold=float(pred.scores.max()), pixel_threshold=1e9)
    assert np.array_equal(strict.decisions, frame_fails) and not strict.masks.any()
    assert strict.normalized_scores.max() == pytest.approx(0.5)


def test_separate_calibration_and_uncalibrated_models(calibrated, texture_set) -> None:
    model, train, test = calibrated
    plain = PaDiM(**TINY).fit(train)
    pred = plain.predict(test)
    assert pred.decisions is None and pred.normalized_scores is None and pred.masks is None
    assert plain.predict(test, image_threshold=5.0).decisions is not None
    with pytest.warns(PadimWarning):
        plain.calibrate(texture_set / "test" / "good", fpr=0.05)
    assert plain.calibration_.fpr == 0.05 and len(plain.calibration_.image_scores) == 4


def test_calibration_survives_save_and_load_and_refitting_discards_it(calibrated, tmp_path) -> None:
    model, train, test = calibrated
    model.save(tmp_path / "m.safetensors", statistics=True)
    loaded = PaDiM.load(tmp_path / "m.safetensors", batch_size=TINY["batch_size"])
    assert loaded.calibration_.image_threshold == model.calibration_.image_threshold
    assert np.array_equal(loaded.predict(test).decisions, model.predict(test).decisions)
    with pytest.warns(PadimWarning, match="calibration was discarded"):
        loaded.partial_fit(train[:2])
    assert loaded.calibration_ is None
