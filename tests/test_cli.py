"""Config resolution (defaults < TOML < flags) and the CLI end to end on a small subset."""
import json
import re
import subprocess
import sys

import pytest

import fasttrain as ft
from fasttrain.cli import build_parser, main, resolve_config
from fasttrain.config import Config, load_config, make_config, save_config


def test_config_toml_and_flags_precedence(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('epochs = 7\nlr = 1\nmodel = "mlp"\nplot = false\n')
    cfg = load_config(p)
    assert (cfg.epochs, cfg.lr, cfg.model, cfg.plot) == (7, 1.0, "mlp", False)
    assert cfg.batch_size == Config().batch_size
    args = build_parser().parse_args(["train", "--config", str(p), "--epochs", "2", "--batch-size", "8", "--plot"])
    cfg = resolve_config(args)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.model, cfg.plot) == (2, 8, 1.0, "mlp", True)


def test_every_config_key_is_a_flag():
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert set(Config().to_dict()) <= flags


def test_every_config_key_is_described_in_help(capsys):
    """The comment beside each Config field is its --help text: a new key needs one."""
    from fasttrain.config import field_help

    described = field_help()
    assert set(described) == set(Config().to_dict()) and all(described.values())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--bucket-kb INT > 0: all-reduce KB-sized gradient buckets during backward (ring) (default: 0)" in out


def test_config_errors(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("epochz = 3\n")
    with pytest.raises(KeyError, match="epochz"):
        load_config(p)
    p.write_text('epochs = "three"\n')
    with pytest.raises(ValueError, match="epochs.*expected int"):
        load_config(p)
    p.write_text("epochs = \n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_config(p)
    assert main(["train", "--config", str(p)]) == 2


def test_missing_config_file_names_the_path(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert main(["train", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--config: expected a TOML file of config keys, got '{missing}' (No such file or directory)" in err


@pytest.mark.parametrize("flags, message", [
    (["--compress", "int8"], "--compress: expected --dist ring or mpi with it .*got 'int8' with dist 'none'"),
    (["--bucket-kb", "64", "--local-sgd", "4"], "--bucket-kb: expected --dist ring or mpi"),
    (["--dist", "mpi", "--compress", "sign"], "compress='sign' with dist='mpi'"),
    (["--dist", "ring", "--local-sgd-optimizer"], "average_optimizer_state=True: .* expected local_sgd > 0"),
    (["--dist", "ring", "--compress", "int8", "--local-sgd", "2"], "local SGD averages parameters uncompressed"),
])
def test_data_parallel_option_errors_are_config_errors(flags, message, capsys):
    """Caught when the config is resolved, before any data or model is built: one line, exit 2,
    and options that only mean something under dist are not silently ignored without it."""
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fasttrain: error:") and err.count("\n") == 1
    assert re.search(message, err), err


def test_saved_config_roundtrips(tmp_path):
    cfg = make_config({"epochs": 3, "limit": 50, "run_dir": "x/y", "dropout": 0.1, "plot": False})
    save_config(cfg, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == cfg


def test_train_one_epoch_writes_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--epochs", "1", "--limit", "200", "--run-dir", str(run), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "final validation accuracy" in out and "wall time" in out
    for name in ("config.toml", "metrics.jsonl", "checkpoint.npz", "learning_curve.png", "summary.json"):
        assert (run / name).is_file(), name
    cfg = load_config(run / "config.toml")
    assert cfg.epochs == 1 and cfg.limit == 200 and cfg.run_dir == str(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["steps"] == -(-200 // cfg.batch_size)
    assert summary["val_acc"] > 0.3   # one epoch on 200 digits, far above chance (0.1)


@pytest.mark.parametrize("fmt, target", [("npz", "checkpoint.npz"), ("npz", ""), ("safetensors", "")])
def test_train_resume_continues(tmp_path, fmt, target):
    """From the checkpoint file, or from the run folder that holds it (either format)."""
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--limit", "64", "--run-dir", str(run), "--quiet", "--no-plot",
                 "--checkpoint-format", fmt]) == 0
    rc = main(["train", "--epochs", "2", "--limit", "64", "--quiet", "--no-plot",
               "--resume", str(run / target) if target else str(run)])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 4


def test_explosion_exit_code(tmp_path, capsys):
    rc = main(["train", "--epochs", "3", "--limit", "300", "--lr", "10000", "--schedule", "constant",
               "--run-dir", str(tmp_path), "--quiet"])
    assert rc == 2
    assert "too high" in capsys.readouterr().err


def test_python_dash_m_info():
    out = subprocess.run([sys.executable, "-m", "fasttrain", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert "numpy" in info["backends"] and "python" in info["build_info"]


def test_train_device_is_checked(tmp_path, capsys):
    flags = ["--epochs", "1", "--limit", "32", "--run-dir", str(tmp_path / "run"), "--quiet"]
    assert main(["train", "--device", "gpu", *flags]) == 2
    assert "--device: expected one of cpu, cuda, got 'gpu'" in capsys.readouterr().err
    if ft.backends()["cuda"] != "available":  # no GPU here: the reason is named, nothing is trained
        assert main(["train", "--device", "cuda", *flags]) == 2
        assert "--device: expected a usable CUDA GPU, got 'cuda', but" in capsys.readouterr().err
    else:
        assert main(["train", "--device", "cuda", "--dist", "ring", *flags]) == 2
        assert "--device: expected device 'cpu' with --dist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_every_config_key_has_a_rule():
    """A new config key (and so a new flag) must say what values it takes: see fasttrain/validation.py."""
    from fasttrain.config import field_types
    from fasttrain.validation import RULES

    missing = sorted(set(field_types()) - set(RULES))
    assert not missing, f"add a rule for {missing} to fasttrain.validation.RULES"
    assert not sorted(set(RULES) - set(field_types())), "a rule for a key that no longer exists"


def test_run_assembly_is_not_in_the_cli():
    """tune and the CLI both call fasttrain.train.run; nothing below the CLI imports it (no circle)."""
    code = ("import sys, fasttrain.train.tune, fasttrain.train.run; "
            "assert 'fasttrain.cli' not in sys.modules, 'fasttrain.cli imported below the CLI'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    import fasttrain.cli as cli

    assert not hasattr(cli, "train") and not hasattr(cli, "make_optimizer")


@pytest.mark.parametrize("flags, message", [
    (["--coarse-trials", "0"], "--coarse-trials: expected an integer >= 1, got 0"),
    (["--fine-epochs", "-2"], "--fine-epochs: expected an integer >= 1, got -2"),
    (["--lr-range", "0.1", "0.001"], "--lr-range: expected LO HI with 0 < LO <= HI, both finite, got '0.1 0.001'"),
    (["--wd-range", "-1", "1"], "--wd-range: expected a finite number > 0, got -1.0"),
])
def test_tune_option_errors_are_one_line(flags, message, tmp_path, capsys):
    assert main(["tune", *flags, "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err == f"fasttrain: error: {message}\n"
    assert not (tmp_path / "t").exists()


def test_every_command_takes_the_config_flags():
    parser = build_parser()
    for command in ("train", "check", "tune"):
        args = parser.parse_args([command, "--config", "c.toml", "--lr", "0.1", "--debug"])
        assert (args.config, args.lr, args.debug) == ("c.toml", 0.1, True), command


def test_more_threads_than_cores_is_allowed_but_said(tmp_path, monkeypatch, capsys):
    from fasttrain import settings

    monkeypatch.setattr(settings, "default_threads", lambda: 2)
    flags = ["train", "--epochs", "1", "--limit", "32", "--quiet", "--no-plot"]
    assert main([*flags, "--threads", "3", "--run-dir", str(tmp_path / "a")]) == 0
    assert ("fasttrain: note: --threads 3 is more than 2, the cores this process may use: the extra threads wait "
            "for a core") in capsys.readouterr().err
    assert main([*flags, "--threads", "2", "--run-dir", str(tmp_path / "b")]) == 0
    assert "is more than" not in capsys.readouterr().err
