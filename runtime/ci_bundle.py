"""For CI: fit the default model on a small real-photo set, export its bundle, save the full package's scores."""

import json
import sys
from pathlib import Path

from padim import PaDiM
from padim.deployment.bundle import export_bundle
from padim.evaluation.synthetic import load_split, make_inspection_set

out = Path(sys.argv[1])
category = make_inspection_set(out / "data", "brick", n_train=24, n_test_good=4, n_test_defect=8, size=128, seed=3)
train, test, _ = load_split(category)
model = PaDiM(holdout=0.25).fit(train)
export_bundle(model, out / "bundle")
pred = model.predict(test)
(out / "expected.json").write_text(json.dumps({"images": [str(p) for p in test], "scores": pred.scores.tolist(),
                                               "decisions": pred.decisions.tolist()}))
