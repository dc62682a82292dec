"""Whole predicts with OpenVINO lanes on and off, alternating in one process (padim.lanes).

    python benchmarks/lanes.py --config lite0 --pairs 8
    python benchmarks/lanes.py --config r18 --pairs 6

Images: speed.py's cached crops (run speed.py once first); fit on 100 of them, predict 200 per
measurement. Prints the median and every figure (img/s) of each mode; pairs alternate their order.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from padim import PaDiM
from padim.engine import OpenVinoEngine

CONFIGS = {"lite0": {}, "r18": {"backbone": "resnet18", "weights": "random"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="lite0")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--cache", default="/tmp/padim-speed")
    args = parser.parse_args()
    cache = Path(args.cache)
    train, test = np.load(cache / "train-400.npy")[:100], np.load(cache / "test-200.npy")
    model = PaDiM(**CONFIGS[args.config], engine="openvino", batch_size=32).fit(train)
    model.predict(test[:64])  # warm: compiled shapes of both modes
    real = OpenVinoEngine.lanes
    speeds: dict[str, list[float]] = {"lanes": [], "whole": []}
    for i in range(args.pairs):
        for mode in ("lanes", "whole") if i % 2 == 0 else ("whole", "lanes"):
            OpenVinoEngine.lanes = real if mode == "lanes" else (lambda self: [])  # type: ignore[method-assign]
            t0 = time.perf_counter()
            model.predict(test)
            speeds[mode].append(len(test) / (time.perf_counter() - t0))
    OpenVinoEngine.lanes = real  # type: ignore[method-assign]
    for mode, values in speeds.items():
        print(f"{args.config} {mode}: median {statistics.median(values):.1f} img/s ({' '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
