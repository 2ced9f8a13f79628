"""Every file in examples/ runs (shortened to one epoch): a Python example as a script, a TOML
example through `fasttrain train --config`. A new example needs no new test, only to be quick
with the arguments below."""
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "examples").iterdir() if p.is_file())


def test_there_are_examples():
    assert {p.suffix for p in EXAMPLES} >= {".py", ".toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    if path.suffix == ".py":
        cmd = [sys.executable, str(path), "1"]
    elif path.suffix == ".toml":
        cmd = [sys.executable, "-m", "fasttrain", "train", "--config", str(path), "--epochs", "1", "--limit", "256",
               "--quiet", "--no-plot", "--run-dir", str(tmp_path / "run")]
    else:
        pytest.fail(f"{path.name}: no rule to run this kind of example; add one to {__file__}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "validation accuracy" in proc.stdout
