"""Every config_hub YAML runs: its own command, its own settings, shrunk to a tiny model of its family and a few steps.

The way LitGPT tests its config_hub: the recipe's reference (or model config) is replaced by a randomly initialised
model of the same architecture with 4 blocks and width 64, the data by a little real text, the budget by a few
steps; everything else (optimizer, schedule, precision, command) is the YAML's.
"""

import re
from pathlib import Path

import pytest
import yaml

HUB = Path(__file__).parents[1] / "config_hub"
YAMLS = sorted(HUB.glob("*.yaml"))
TINY = dict(n_layer=4, n_embd=64, n_head=4, intermediate_size=128, padded_vocab_size=49152, vocab_size=49152,
            block_size=64)


def command_of(path: Path) -> str:
    return re.search(r"litgpt (\w+)", path.read_text().splitlines()[0]).group(1)


def family_config(path: Path, config: dict):
    """The LitGPT Config of the YAML's reference, shrunk."""
    from litgpt import Config

    reference = str(config.get("reference_dir", ""))
    if "model_config" in config:
        values = dict(config["model_config"])
    elif reference.startswith("out/gpt2_"):  # grown from a reference of gpt2_*_reference.yaml
        name = reference.split("/")[1].removesuffix("_reference")
        values = dict(yaml.safe_load((HUB / f"{name}_reference.yaml").read_text())["model_config"])
    else:
        return Config.from_name(Path(reference).name, **TINY, n_query_groups=4)
    values.update(TINY, n_query_groups=4)
    return Config(**values)


def tiny_checkpoint(directory: Path, config, smollm2_tokenizer: Path) -> Path:
    import shutil

    import torch
    from litgpt import GPT
    from litgpt.utils import save_config

    directory.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(GPT(config).state_dict(), directory / "lit_model.pth")
    save_config(config, directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(smollm2_tokenizer / name, directory / name)
    return directory


def test_every_recipe_names_its_command():
    assert {command_of(p) for p in YAMLS} <= {"inheritune", "inheritune_grow", "inheritune_arms", "pretrain"}
    for name in ("openllama3b_1b", "llama2_7b_50b", "openllama7b_50b", "gpt2_medium_reference", "gpt2_large_grow"):
        assert (HUB / f"{name}.yaml").is_file()


# One YAML per command and architecture family is trained (through LitGPT's CLI entry point, a few steps); the
# others are parsed in-process with the command's own signature, as the CLI parses them, and their reference's
# family config is built. Together: every YAML is valid for its command, every command and family runs.
RUN = {"openllama3b_1b", "gpt2_medium_child16", "gpt2_small_grow", "smollm2_arms", "gpt2_small_reference"}


def command_function(command: str):
    from litgpt_inheritune._hook import declared_commands

    if command == "pretrain":
        from litgpt.pretrain import setup

        return setup
    return declared_commands()[command]


@pytest.mark.parametrize("path", [p for p in YAMLS if p.stem not in RUN], ids=lambda p: p.stem)
def test_config_hub_recipe_parses_for_its_command(path):
    from jsonargparse import ActionConfigFile, ArgumentParser, set_config_read_mode, set_docstring_parse_options

    set_docstring_parse_options(attribute_docstrings=True)
    set_config_read_mode(urls_enabled=False)
    command = command_of(path)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(command_function(command))
    config = parser.parse_args(["--config", str(path)])
    parser.instantiate_classes(config)  # data modules and optimizers as the YAML gives them
    raw = yaml.safe_load(path.read_text())
    tiny = family_config(path, raw)  # its reference's architecture exists in LitGPT's zoo (or the YAML's config)
    assert tiny.n_layer == TINY["n_layer"]
    if command != "pretrain":
        assert str(config.reference_dir) == str(raw["reference_dir"])
    for key, value in raw.items():  # the YAML's plain settings are what the command receives
        if not isinstance(value, (dict, list)):
            assert str(config[key]) == str(value), key


def test_every_family_and_command_is_trained():
    ran = {(command_of(HUB / f"{name}.yaml"), family_config(HUB / f"{name}.yaml",
                                                            yaml.safe_load((HUB / f"{name}.yaml").read_text())).mlp_class_name)
           for name in RUN}
    every = {(command_of(p), family_config(p, yaml.safe_load(p.read_text())).mlp_class_name) for p in YAMLS}
    assert every <= ran, f"no smoke run for {every - ran}"


@pytest.mark.parametrize("path", [p for p in YAMLS if p.stem in RUN], ids=lambda p: p.stem)
def test_config_hub_recipe_runs_a_smoke_version(path, tmp_path, smollm2_tokenizer, text_dirs, litgpt_cli, monkeypatch):
    """Through LitGPT's own entry point in this process (test_cli proves the same entry point as a subprocess)."""
    import torch._dynamo

    config = yaml.safe_load(path.read_text())
    command = command_of(path)
    train_txt, val_txt = tmp_path / "train_txt", tmp_path / "val_txt"
    train_txt.mkdir()
    val_txt.mkdir()
    for source, target in ((text_dirs[0], train_txt), (text_dirs[1], val_txt)):
        first = sorted(source.glob("*.txt"))[0]
        (target / first.name).write_text(first.read_text())
    out = tmp_path / "out"
    args = [command, "--config", str(path), "--out_dir", str(out),
            "--data", "TextFiles", "--data.train_data_path", str(train_txt), "--data.val_data_path", str(val_txt),
            "--data.num_workers", "0", "--devices", "1",
            "--train.max_seq_length", "32", "--train.micro_batch_size", "1", "--train.global_batch_size", "2",
            "--train.save_interval", "null", "--eval.max_iters", "1", "--eval.interval", "1000"]
    if command != "inheritune_arms":  # arms always log to CSV (their curves are read from it)
        args += ["--logger_name", "csv"]
    tiny = family_config(path, config)
    if command == "pretrain":
        for key, value in {**TINY, "n_query_groups": 4}.items():
            args += [f"--model_config.{key}", str(value)]
        args += ["--tokenizer_dir", str(smollm2_tokenizer), "--train.max_tokens", "128"]
    else:
        reference = tiny_checkpoint(tmp_path / "reference", tiny, smollm2_tokenizer)
        args += ["--compile", "false"]
        if command == "inheritune_grow":
            args += ["--n_layers_start", "2", "--steps", "1"]
        else:
            args += ["--n_layers", "2", "--train.epochs", "null", "--train.max_tokens", "128"]
        if command == "inheritune_arms":
            args += ["--arms", "[inherit, random]", "--seeds", "[0]", "--eval.interval", "1"]
    if command != "pretrain":
        args.append(str(reference))  # reference_dir is positional; given after --config, it wins over the YAML's
    monkeypatch.chdir(tmp_path)  # the YAML's relative paths (its analysis dir, say) resolve where a user runs it
    with torch._dynamo.config.patch(disable=True):  # litgpt pretrain compiles unconditionally; the patch restores
        code, _, err = litgpt_cli(*args)
    assert code == 0, err[-3000:]
    finals = list(out.rglob("final/lit_model.pth"))
    assert finals, f"no final checkpoint under {out}"
    from litgpt import Config

    depth = Config.from_file(finals[0].parent / "model_config.yaml").n_layer
    assert depth == (TINY["n_layer"] if command == "pretrain" else 2) or command == "inheritune_grow"


def test_in_process_parsing_catches_a_broken_recipe(tmp_path):
    """The in-process parse is a real check: a misspelt key or a wrong type fails it, as it fails the CLI."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    for broken in ("n_layer: 13\n", "train:\n  epoch: 8\n", "n_layers: thirteen\n"):
        path = tmp_path / "broken.yaml"
        path.write_text("reference_dir: checkpoints/openlm-research/open_llama_3b\n" + broken)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--config", action=ActionConfigFile)
        parser.add_function_arguments(command_function("inheritune"))
        with pytest.raises(Exception):
            parser.parse_args(["--config", str(path)])
