"""The fit planner against measured peaks: the three paper configurations at the paper's size.

    python benchmarks/plan.py                       # r18-rd100, wr50-rd550, effb5 at 256 -> 224, N=100
    python benchmarks/plan.py --configs r18-rd100 --n 200

Each configuration runs in a fresh process: PaDiM.plan(N) (which builds the engine and times a batch
of zeros), then fit on N real texture crops (peak RSS = VmHWM after a reset), save, load, predict
(peak again). ResNet/EfficientNet-B5 weights are random (no ImageNet download here): memory does not
depend on their values. The plan's times (fit: per image plus the factorisation spread over N) are
estimates from a batch of zeros and 64 positions; decoding, smoothing and Python overhead are not in them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "r18-rd100": dict(backbone="resnet18", n_features=100),
    "wr50-rd550": dict(backbone="wide_resnet50_2", n_features=550),
    "effb5": dict(backbone="efficientnet_b5"),
}
WORKER = r"""
import gc, json, sys, tempfile, time
import numpy as np
from padim import PaDiM
from padim.plan import MB, peak_rss_mb, reset_peak_rss
params, n = json.loads(sys.argv[1]), int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from speed import make_images
from pathlib import Path
paths = make_images(Path(sys.argv[4]), n, 50)
train, test = np.load(paths["train"]), np.load(paths["test"])
model = PaDiM(**params, weights="random", batch_size=32)
plan = model.plan(n)
reset_peak_rss()
t0 = time.perf_counter()
model.fit(train)
fit_s = time.perf_counter() - t0
fit_peak = peak_rss_mb()
with tempfile.TemporaryDirectory() as tmp:
    model.save(Path(tmp) / "m.safetensors")
    size = (Path(tmp) / "m.safetensors").stat().st_size
    del model
    gc.collect()
    model = PaDiM.load(Path(tmp) / "m.safetensors", batch_size=32)
    reset_peak_rss()
    t0 = time.perf_counter()
    model.predict(test)
    predict_s = (time.perf_counter() - t0) / len(test)
print(json.dumps({"plan_fit_mb": plan.fit_peak / MB, "fit_mb": fit_peak, "plan_predict_mb": plan.predict_peak / MB,
                  "predict_mb": peak_rss_mb(), "plan_model_mb": plan.model_file / MB, "model_mb": size / MB,
                  "plan_fit_s_per_image": plan.fit_s_per_image + plan.fixed_fit_s / n, "fit_s_per_image": fit_s / n,
                  "plan_predict_s_per_image": plan.predict_s_per_image, "predict_s_per_image": predict_s,
                  "engine": plan.engine, "d": plan.dim, "positions": plan.positions}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--cache", default="/tmp/padim-speed")
    parser.add_argument("--out", default=str(HERE / "results" / "plan.json"))
    args = parser.parse_args()
    rows = []
    print("| config | d x positions | fit peak plan / measured | predict peak plan / measured | model file plan / "
          "written | fit s/img plan / measured | predict s/img plan / measured |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(CONFIGS[name]), str(args.n), str(HERE),
                              args.cache], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1:]} |")
            continue
        r = {"config": name, **json.loads(out.stdout.strip().splitlines()[-1])}
        rows.append(r)
        print(f"| {name} | {r['d']} x {r['positions']} | {r['plan_fit_mb']:.0f} / {r['fit_mb']:.0f} MB "
              f"({r['plan_fit_mb'] / r['fit_mb']:.2f}) | {r['plan_predict_mb']:.0f} / {r['predict_mb']:.0f} MB "
              f"({r['plan_predict_mb'] / r['predict_mb']:.2f}) | {r['plan_model_mb']:.0f} / {r['model_mb']:.0f} MB | "
              f"{r['plan_fit_s_per_image']:.3f} / {r['fit_s_per_image']:.3f} | "
              f"{r['plan_predict_s_per_image']:.3f} / {r['predict_s_per_image']:.3f} |", flush=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
