"""fasttrain tune on a tiny digits subset: 2 coarse + 2 fine trials in spawned workers; sorted
table, CSV/JSON/PNG outputs, fine ranges inside the coarse ones and around the best trials;
log-uniform sampling and range narrowing; the CLI entry point."""
import csv
import json
import math

import numpy as np
import pytest

from fasttrain.config import make_config
from fasttrain.train import tune as tune_mod


def test_sample_log_uniform_and_narrow():
    rng = np.random.default_rng(0)
    v = tune_mod.sample_log_uniform(rng, 1e-4, 1e-1, 20000)
    assert v.min() >= 1e-4 and v.max() <= 1e-1
    logs = np.log10(v)
    assert abs(logs.mean() - (-2.5)) < 0.03            # uniform in log space: mean of the exponent
    assert np.mean(v < 1e-3) == pytest.approx(1 / 3, abs=0.02)
    lo, hi = tune_mod.narrow([1e-3, 3e-3], (1e-5, 1e-1), margin=0.25)
    assert lo == pytest.approx(10 ** (-3 - 1.0)) and hi == pytest.approx(10 ** (math.log10(3e-3) + 1.0))
    assert tune_mod.narrow([1e-1], (1e-5, 1e-1)) [1] == pytest.approx(1e-1)   # clipped to the full range
    with pytest.raises(ValueError, match="lr_range"):
        tune_mod.tune(make_config(), lr_range=(0, 1e-2), out_dir="/nonexistent-never-created")


def test_tune_tiny_subset_spawned_workers(tmp_path, monkeypatch, capsys):
    import multiprocessing

    seen = []
    real = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: seen.append(method) or real(method))
    cfg = make_config({"model": "mlp", "limit": 120, "batch_size": 32})
    res = tune_mod.tune(cfg, coarse_trials=2, fine_trials=2, coarse_epochs=1, fine_epochs=2,
                        lr_range=(1e-4, 1e-1), wd_range=(1e-6, 1e-2), workers=2, out_dir=tmp_path, seed=3)
    assert seen == ["spawn", "spawn"]                      # never fork
    rows = res["rows"]
    assert [r["stage"] for r in rows].count("coarse") == 2 and [r["stage"] for r in rows].count("fine") == 2
    accs = [r["val_acc"] for r in rows]
    assert accs == sorted(accs, reverse=True) and res["best"] is rows[0]
    assert all(r["epochs"] == (1 if r["stage"] == "coarse" else 2) for r in rows)
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert all(r["threads"] == 1 for r in rows)             # FASTTRAIN_THREADS=1 in every worker
    # fine trials inside the narrowed ranges, which lie inside the coarse ones and contain the best coarse trial
    (flo, fhi), (wlo, whi) = res["fine_ranges"]["lr"], res["fine_ranges"]["weight_decay"]
    assert 1e-4 <= flo <= fhi <= 1e-1 and 1e-6 <= wlo <= whi <= 1e-2
    best_coarse = [r for r in rows if r["stage"] == "coarse"][0]
    assert flo <= best_coarse["lr"] <= fhi
    for r in rows:
        if r["stage"] == "fine":
            assert flo <= r["lr"] <= fhi and wlo <= r["weight_decay"] <= whi
    with open(res["files"]["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [float(t["val_acc"]) for t in table] == pytest.approx(accs)
    assert json.load(open(res["files"]["json"]))["best"]["lr"] == pytest.approx(rows[0]["lr"])
    assert open(res["files"]["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "rank" in out and "best: lr" in out
