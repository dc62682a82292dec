"""Coverage: the paper's preset (resize 256, centre crop 224) against the full-frame preset, scored at full size.

    python benchmarks/coverage.py                 # demo textures, defects anywhere and defects at the border
    python benchmarks/coverage.py --textures brick --n-train 30

Sets: padim.evaluation.synthetic's miniature MVTec layouts from scikit-image's real texture photos (192 px crops),
once with defects anywhere (the demo's) and once with every defect centred in the outer band the paper's
crop never sees (`defects_at="border"`). Model: efficientnet_lite0 with its real ImageNet weights.
Metrics are computed at the ORIGINAL image size against the original masks: pixels the model did not
inspect (NaN in its maps) count as the lowest score, so a defect there is a miss, as it is on the line.
(The paper's protocol crops the masks too, which hides those defects instead.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from padim import PaDiM
from padim.data import full_frame_size
from padim.evaluation.metrics import au_pro, image_auroc, pixel_auroc
from padim.evaluation.synthetic import TEXTURES, load_split, make_inspection_set

HERE = Path(__file__).resolve().parent


def presets(size: int) -> dict[str, dict]:
    """The presets for square size x size images; full-frame-256 has the paper's magnification (+31% positions)."""
    return {"paper": dict(image_size=256, crop_size=224),
            "full-frame": dict(image_size=full_frame_size(size, size), crop_size=None),
            "full-frame-256": dict(image_size=full_frame_size(size, size, area=256**2), crop_size=None)}


def score(category: Path, params: dict) -> dict:
    """Fit on the good training images, score the test set at original size."""
    train, test, mask_paths = load_split(category)
    t0 = time.perf_counter()
    model = PaDiM(**params).fit(train)
    pred = model.predict(test, original_size=True)
    seconds = time.perf_counter() - t0
    maps = np.stack(pred.maps)
    unseen = ~np.isfinite(maps)
    maps = np.where(unseen, np.nanmin(maps) - 1.0, maps)  # not inspected: no evidence of anything
    masks = np.stack([np.asarray(Image.open(m)) > 0 if m else np.zeros(maps.shape[1:], bool) for m in mask_paths])
    labels = [m is not None for m in mask_paths]
    return {"image_auroc": image_auroc(labels, pred.scores), "pixel_auroc": pixel_auroc(masks, maps),
            "au_pro": au_pro(masks, maps), "inspected": float(1 - unseen.mean()),
            "defect_pixels_inspected": float((~unseen & masks).sum() / max(1, masks.sum())), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--textures", default=",".join(TEXTURES))
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-good", type=int, default=20)
    parser.add_argument("--n-defect", type=int, default=40)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--presets", default="paper,full-frame,full-frame-256")
    parser.add_argument("--out", default=str(HERE / "results" / "coverage.json"))
    args = parser.parse_args()
    rows = []
    print("| set | texture | preset | input | inspected | defect px inspected | image AUROC | pixel AUROC | AU-PRO |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for where in ("anywhere", "border"):
            for texture in args.textures.split(","):
                category = make_inspection_set(Path(tmp) / where, texture, n_train=args.n_train, n_test_good=args.n_good,
                                               n_test_defect=args.n_defect, size=args.size, seed=0, defects_at=where)
                for name, params in presets(args.size).items():
                    if name not in args.presets.split(","):
                        continue
                    r = {"set": where, "texture": texture, "preset": name, **score(category, params)}
                    size = params["crop_size"] or params["image_size"]
                    r["input"] = f"{size[0]}x{size[1]}" if isinstance(size, tuple) else f"{size}x{size}"
                    rows.append(r)
                    print(f"| defects {where} | {texture} | {name} | {r['input']} | {r['inspected']:.1%} | "
                          f"{r['defect_pixels_inspected']:.1%} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
                          f"{r['au_pro']:.3f} |", flush=True)
    for where in ("anywhere", "border"):
        for name in args.presets.split(","):
            sel = [r for r in rows if r["set"] == where and r["preset"] == name]
            if sel:
                mean = {k: float(np.mean([r[k] for r in sel])) for k in ("image_auroc", "pixel_auroc", "au_pro")}
                print(f"| **defects {where}, mean** | | {name} | | | | {mean['image_auroc']:.3f} | "
                      f"{mean['pixel_auroc']:.3f} | {mean['au_pro']:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
