"""Registration into the stock `litgpt` CLI.

A few tests run `litgpt` in a subprocess exactly as a user does (registration at interpreter start-up, the console
script, a YAML run); the help and parsing tests call LitGPT's own ``litgpt.__main__.main`` in this process, which
builds the same parser from the same command table without starting Python and importing torch again.
"""

import inspect
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml

from litgpt_inheritune.commands import analyze, arms, evaluate, grow, init, prune, width
from litgpt_inheritune.commands import data as data_subset
from litgpt_inheritune.commands import inheritune as train

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def litgpt(*args: str, **kw) -> subprocess.CompletedProcess:
    return run(str(BIN / "litgpt"), *args, **kw)


def test_litgpt_help_lists_our_commands_next_to_stock_ones():
    out = litgpt("--help").stdout
    for command in ("inheritune", "inheritune_init", "inheritune_data", "inheritune_analyze", "inheritune_grow",
                    "pretrain", "evaluate", "convert_from_litgpt"):
        assert command in out


def test_python_m_litgpt_also_has_the_commands():
    out = run(sys.executable, "-m", "litgpt", "--help").stdout
    assert "inheritune_init" in out


def test_stock_command_still_works(litgpt_cli):
    code, out, _ = litgpt_cli("pretrain", "--help")
    assert code == 0 and "--initial_checkpoint_dir" in out


@pytest.mark.parametrize("command, function", [("inheritune", train.setup), ("inheritune_init", init.setup),
                                               ("inheritune_data", data_subset.setup), ("inheritune_analyze", analyze.setup),
                                               ("inheritune_grow", grow.setup), ("inheritune_arms", arms.setup),
                                               ("inheritune_evaluate", evaluate.setup),
                                               ("inheritune_collect", evaluate.collect_setup),
                                               ("inheritune_width", width.setup), ("inheritune_prune", prune.setup)])
def test_help_documents_every_argument(command, function, litgpt_cli):
    code, out, _ = litgpt_cli(command, "--help")
    assert code == 0
    for name, parameter in inspect.signature(function).parameters.items():
        # Required arguments are positional (with a --name alias), the rest are options.
        shown = f"--{name}" if parameter.default is not inspect.Parameter.empty else name
        assert shown in out, f"{shown} missing from `litgpt {command} --help`"
    if command == "inheritune":
        for nested in ("--train.epochs", "--train.max_tokens", "--eval.interval", "--optimizer", "--data.help"):
            assert nested in out
        # Docstrings reach the help text.
        assert "Inherit the first" in out


def test_console_script_fallback_lists_and_runs_commands(tmp_path, tiny_reference):
    out = run(str(BIN / "litgpt-inheritune"), "--help").stdout
    assert "inheritune" in out and "inheritune_init" in out
    run(str(BIN / "litgpt-inheritune"), "inheritune_init", str(tiny_reference), "--n_layers", "2",
        "--out_dir", str(tmp_path / "child"))
    assert yaml.safe_load((tmp_path / "child" / "model_config.yaml").read_text())["n_layer"] == 2


def test_start_up_hook_imports_neither_torch_nor_litgpt():
    code = "import sys; print(sorted(m for m in ('torch', 'litgpt', 'litgpt_inheritune._hook') if m in sys.modules))"
    out = run(sys.executable, "-c", code).stdout.strip()
    assert out == "['litgpt_inheritune._hook']"


def test_start_up_hook_survives_running_twice():
    site_packages = sysconfig.get_paths()["purelib"]
    assert (Path(site_packages) / "litgpt_inheritune.pth").is_file()
    code = (
        "import importlib, site, sys\n"
        f"site.addsitedir({site_packages!r})  # processes every .pth file a second time\n"
        "import litgpt_inheritune._hook as hook\n"
        "importlib.reload(hook)\n"
        "finders = [f for f in sys.meta_path if type(f).__name__ == 'InheritFinder']\n"
        "import litgpt.__main__ as m, litgpt.parser_config as pc\n"
        "names = pc.parser_commands()\n"
        "print(len(finders), names.count('inheritune'), names.count('inheritune_init'), 'inheritune' in m.PARSER_DATA)\n"
        "hook.patch(vars(m))  # patching again keeps one entry per command\n"
        "print(pc.parser_commands().count('inheritune'), m.parser_commands is pc.parser_commands)\n"
    )
    lines = run(sys.executable, "-c", code).stdout.split("\n")
    assert lines[0] == "1 1 1 True"
    assert lines[1] == "1 True"


def test_init_from_yaml_config_writes_a_child_that_stock_commands_accept(tmp_path, tiny_reference, litgpt_cli):
    config = tmp_path / "init.yaml"
    out = tmp_path / "child"
    config.write_text(yaml.safe_dump({"reference_dir": str(tiny_reference), "layers": [0, 1, 5], "out_dir": str(out)}))
    litgpt("inheritune_init", "--config", str(config))  # a YAML run as a user starts it
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3

    # Stock LitGPT takes the child as it is: generation and conversion to HF format (its own entry point, here).
    code, generated, err = litgpt_cli("generate", str(out), "--prompt", "Hello", "--max_new_tokens",
                                             "3", "--precision", "32-true")
    assert code == 0 and "Hello" in generated, err[-2000:]
    code, _, err = litgpt_cli("convert_from_litgpt", str(out), str(tmp_path / "hf"))
    assert code == 0, err[-2000:]
    converted = torch.load(tmp_path / "hf" / "model.pth", weights_only=True)
    assert {int(k.split(".")[2]) for k in converted if k.startswith("model.layers.")} == {0, 1, 2}


def test_unknown_yaml_key_is_rejected_before_any_work(tmp_path, tiny_reference, litgpt_cli):
    config = tmp_path / "bad.yaml"
    out = tmp_path / "run"
    config.write_text(yaml.safe_dump({"reference_dir": str(tiny_reference), "n_layers": 2, "out_dir": str(out),
                                      "train": {"epoch": 3}}))
    code, _, err = litgpt_cli("inheritune", "--config", str(config))
    assert code != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "train.epoch" in last
    assert not out.exists()


def test_inheritune_from_yaml_trains_and_records_its_arguments(tmp_path, tiny_reference, text_dirs, litgpt_cli):
    train_dir, val_dir = text_dirs
    out = tmp_path / "run"
    config = {
        "reference_dir": str(tiny_reference),
        "n_layers": 2,
        "out_dir": str(out),
        "precision": "32-true",
        "devices": 1,
        "compile": False,
        "logger_name": "csv",
        "data": {"class_path": "TextFiles",
                 "init_args": {"train_data_path": str(train_dir), "val_data_path": str(val_dir), "num_workers": 0}},
        "train": {"max_tokens": 4 * 2 * 32, "epochs": None, "micro_batch_size": 2, "global_batch_size": 2,
                  "max_seq_length": 32, "lr_warmup_steps": 1, "save_interval": None, "log_interval": 1},
        "eval": {"interval": 1000, "max_iters": 1, "initial_validation": False, "final_validation": False},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    litgpt("inheritune", "--config", str(path))
    final = out / "final"
    assert json.loads((final / "final.json").read_text())["iter"] == 4
    hp = yaml.safe_load((final / "hyperparameters.yaml").read_text())
    assert hp["n_layers"] == 2 and hp["compile"] is False and hp["train"]["max_tokens"] == 256
    assert hp["optimizer"]["init_args"]["lr"] == 1e-3
    # The recorded hyperparameters are themselves a valid config for the same command.
    code, replay, _ = litgpt_cli("inheritune", "--config", str(final / "hyperparameters.yaml"),
                                        "--print_config")
    assert code == 0 and yaml.safe_load(replay)["n_layers"] == 2
