"""Speed, memory and model size of torch-padim: backbone-only floor, fit, predict, peak RSS, file sizes.

    python benchmarks/speed.py                                  # r18-rd100, wr50-rd550, lite0 at N=100
    python benchmarks/speed.py --configs r18-rd100 --n 100,1000
    python benchmarks/speed.py --half-check                     # float16 model file vs float32 on the demo data

Every (config, N) runs in a fresh process so peak resident memory (VmHWM) is its own. Images are
synthetic 224x224 crops of scikit-image textures written to disk once (fit reads them from files,
so the inputs do not sit in memory). ResNet weights are random here (no ImageNet download on this
machine): labelled as such; speed and memory do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "r18-rd100": dict(backbone="resnet18", n_features=100, weights="random"),
    "wr50-rd550": dict(backbone="wide_resnet50_2", n_features=550, weights="random"),
    "lite0": dict(backbone="efficientnet_lite0", n_features="all", weights=None),
}
N_PREDICT = 100
SIZE = 224


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n synthetic 224x224 RGB texture crops with noise, written once and reused."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.png" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    textures = [data.brick(), data.grass(), data.gravel()]
    for i, path in enumerate(paths):
        tex = textures[i % 3]
        y, x = rng.integers(0, tex.shape[0] - SIZE, size=2)
        crop = tex[y : y + SIZE, x : x + SIZE].astype(np.float32)
        rgb = np.stack([crop * rng.uniform(0.9, 1.1) for _ in range(3)], axis=2) + rng.normal(0, 4, (SIZE, SIZE, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, compress_level=1)
    return paths


def worker(config: str, n: int, cache: Path) -> dict:
    """Measure one configuration at one N (run in its own process)."""
    import torch

    from padim import PaDiM
    from padim.benchmark import peak_rss_mb as peak_mb
    from padim.benchmark import reset_peak_rss as peak_reset

    params = CONFIGS[config]
    train = make_images(cache / "train", n)
    test = make_images(cache / "test", N_PREDICT, seed=1)
    model = PaDiM(**params, image_size=SIZE, crop_size=None, batch_size=32)
    model._init_network()
    batch = torch.randn(32, 3, SIZE, SIZE)
    with torch.no_grad():
        model.net_.extractor(batch)  # warm-up
        t0 = time.perf_counter()
        for _ in range(max(1, n // 32)):
            model.net_.extractor(batch)
        backbone_ips = 32 * max(1, n // 32) / (time.perf_counter() - t0)
    peak_reset()
    t0 = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    fit_peak = peak_mb()
    peak_reset()
    t0 = time.perf_counter()
    model.predict(test)
    predict_s = time.perf_counter() - t0
    predict_peak = peak_mb()
    out = cache / f"{config}.safetensors"
    model.save(out)
    size_mb = out.stat().st_size / 1e6
    model.save(out, half=True)
    half_mb = out.stat().st_size / 1e6
    out.unlink()
    return {
        "config": config, "n": n, "weights": "random" if params["weights"] == "random" else "imagenet",
        "d": model.embedding_dim_, "positions": model.feature_shape_[0] * model.feature_shape_[1],
        "backbone_ips": backbone_ips, "fit_ips": n / fit_s, "predict_ips": N_PREDICT / predict_s,
        "fit_s": fit_s, "predict_s": predict_s, "fit_peak_mb": fit_peak, "predict_peak_mb": predict_peak,
        "model_mb": size_mb, "half_model_mb": half_mb, "threads": torch.get_num_threads(),
    }


def half_check() -> dict:
    """Image and pixel AUROC of the demo data with the float32 and the float16 model file."""
    import tempfile

    import numpy as np
    from PIL import Image

    from padim import PaDiM
    from padim.metrics import image_auroc, pixel_auroc
    from padim.synthetic import TEXTURES, load_split, make_inspection_set

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for texture in TEXTURES:
            train, test, masks = load_split(make_inspection_set(tmp, texture, 60, 20, 40, seed=0))
            model = PaDiM().fit(train)
            gt = [model.preprocess_.mask(np.asarray(Image.open(m))) if m else np.zeros((224, 224), bool) for m in masks]
            labels = [m is not None for m in masks]
            row = {"texture": texture}
            for name, half in (("float32", False), ("float16", True)):
                path = Path(tmp) / f"{texture}-{name}.safetensors"
                model.save(path, half=half)
                pred = PaDiM.load(path).predict(test)
                row[name] = {"image_auroc": image_auroc(labels, pred.scores), "pixel_auroc": pixel_auroc(gt, pred.maps),
                             "mb": path.stat().st_size / 1e6}
            rows.append(row)
    return {"half_check": rows}


def table(rows: list[dict]) -> str:
    head = ("| config | weights | N | d | backbone img/s | fit img/s | fit/backbone | predict img/s | predict/backbone "
            "| fit peak MB | predict peak MB | model MB | float16 MB |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['weights']} | {r['n']} | {r['d']} | {r['backbone_ips']:.1f} | {r['fit_ips']:.1f} | "
            f"{r['fit_ips'] / r['backbone_ips']:.2f} | {r['predict_ips']:.1f} | {r['predict_ips'] / r['backbone_ips']:.2f} | "
            f"{r['fit_peak_mb']:.0f} | {r['predict_peak_mb']:.0f} | {r['model_mb']:.0f} | {r['half_model_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="r18-rd100,wr50-rd550,lite0")
    parser.add_argument("--n", default="100", help="comma-separated training set sizes")
    parser.add_argument("--cache", default="/tmp/padim-speed-images")
    parser.add_argument("--out", default=str(HERE / "results" / "speed.json"))
    parser.add_argument("--half-check", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), Path(args.cache))))
        return
    if args.half_check:
        result = half_check()
        print(json.dumps(result, indent=2))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_name("half_check.json").write_text(json.dumps(result, indent=2))
        return
    rows = []
    for config in args.configs.split(","):
        for n in [int(v) for v in args.n.split(",")]:
            run = subprocess.run([sys.executable, __file__, "--worker", config, str(n), "--cache", args.cache],
                                 capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if run.returncode != 0:
                print(f"{config} N={n} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
