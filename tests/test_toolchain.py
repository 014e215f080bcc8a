"""The child in LitGPT's whole toolchain: README's "After training" commands, copied from README.md and run through
LitGPT's own entry point (tiny sizes appended), on a tiny trained run's final/ and best/; the child's name keeps
every name lookup of LitGPT; the demo's tokenizer files say what the GGUF says."""

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from litgpt.args import EvalArgs

from litgpt_inheritune import patches
from litgpt_inheritune.commands.inheritune import setup
from test_train import small_text, train_args

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {  # appended to README's commands: jsonargparse takes the last value given
    "finetune_lora": "--lora_r 2 --train.max_steps 2 --train.epochs 1 --train.micro_batch_size 1 "
                     "--train.global_batch_size 1 --train.lr_warmup_steps 1 --train.max_seq_length 32 --eval.interval 1000 "
                     "--eval.initial_validation false --eval.final_validation false --data.val_split_fraction 0.5 --data.num_workers 0 "
                     "--precision 32-true --devices 1 --logger_name csv",
    "finetune_full": "--train.max_steps 2 --train.epochs 1 --train.micro_batch_size 1 --train.global_batch_size 1 "
                     "--train.lr_warmup_steps 1 --train.max_seq_length 32 --eval.interval 1000 "
                     "--eval.initial_validation false --eval.final_validation false --data.val_split_fraction 0.5 --data.num_workers 0 "
                     "--precision 32-true --devices 1 --logger_name csv",
    "generate": "--max_new_tokens 2 --precision 32-true",
    "pretrain": "--train.max_tokens 128 --train.micro_batch_size 2 --train.global_batch_size 2 --train.max_seq_length 32 "
                "--train.lr_warmup_steps 1 --eval.interval 1000 --eval.max_iters 1 --eval.initial_validation false "
                "--eval.final_validation false --precision 32-true --devices 1 --logger_name csv --data.num_workers 1",
}


def after_training_commands() -> list[str]:
    """The lines of the first bash block of README's "After training" section."""
    section = README.read_text().split("### After training", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def as_argv(line: str, checkpoint: Path, work: Path, text: Path, instructions: Path) -> list[str]:
    """A README line as the shell would pass it to `litgpt` (without the word litgpt), its paths moved here."""
    line = (line.replace("out/first/final", str(checkpoint)).replace("out/first-", f"{work}/")
            .replace("out/demo/data", str(text)).replace("my_instructions.json", str(instructions)))
    files = re.findall(r'"\$\(cat ([^)]+)\)"', line)
    line = re.sub(r'"\$\(cat ([^)]+)\)"', "CAT_OUTPUT", line)
    argv = shlex.split(line)
    assert argv[0] == "litgpt"
    argv = [Path(files.pop(0)).read_text() if word == "CAT_OUTPUT" else word for word in argv[1:]]
    return argv + shlex.split(TINY.get(argv[0], ""))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_reference, text_dirs) -> Path:
    """A 2-block child of the tiny reference, named as an instruct model (LitGPT picks a chat template by that name),
    trained 2 steps and evaluated every step (so best/ is written)."""
    import shutil

    import yaml

    tmp = tmp_path_factory.mktemp("toolchain")
    reference = tmp / "SmolLM2-135M-Instruct"
    shutil.copytree(tiny_reference, reference)
    config = yaml.safe_load((reference / "model_config.yaml").read_text())
    (reference / "model_config.yaml").write_text(yaml.safe_dump({**config, "name": "SmolLM2-135M-Instruct"}))
    out = tmp / "run"
    setup(reference, n_layers=2, out_dir=out, data=small_text(tmp, text_dirs, n_train=1),
          train=train_args(max_tokens=2 * 64), precision="32-true", devices=1, logger_name="csv", compile=False,
          eval=EvalArgs(interval=1, max_iters=1, initial_validation=False, final_validation=False))
    return out


@pytest.fixture(scope="module")
def text(tmp_path_factory, text_dirs) -> Path:
    """train/ and val/ of a little of the real text, as the demo lays out its data."""
    root = tmp_path_factory.mktemp("text")
    for name, source in zip(("train", "val"), text_dirs):
        (root / name).mkdir()
        first = sorted(source.glob("*.txt"))[0]
        (root / name / first.name).write_text(first.read_text()[:20000])
    return root


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("instructions") / "my_instructions.json"
    path.write_text(json.dumps([{"instruction": f"Say {word}.", "input": "", "output": word}
                                for word in ("yes", "no", "list", "dict")]))
    return path


@pytest.mark.parametrize("which", ["final", "best"])
def test_readme_after_training_commands_take_the_checkpoint(which, trained, text, instructions, tmp_path, litgpt_cli):
    from litgpt import GPT, Config
    from litgpt.prompts import Default, PromptStyle, load_prompt_style
    from transformers import AutoConfig, AutoModelForCausalLM

    checkpoint = trained / which
    weights = torch.load(checkpoint / "lit_model.pth", weights_only=True)
    assert "model" not in weights and "optimizer" not in weights  # LitGPT's format: the weights alone
    config = Config.from_file(checkpoint / "model_config.yaml")
    assert config.name == "SmolLM2-135M-Instruct-inheritune-2L"

    lines = after_training_commands()
    assert [shlex.split(line)[1] for line in lines] == ["finetune_lora", "generate", "finetune_full",
                                                        "convert_pretrained_checkpoint", "generate", "pretrain",
                                                        "convert_from_litgpt"]
    outputs = {}
    for line in lines:
        argv = as_argv(line, checkpoint, tmp_path, text, instructions)
        # stock pretrain compiles, and its TextFiles prepares tokens in spawned workers (each imports torch afresh)
        with patches.patched("torch.compile", lambda model, *args, **kwargs: model), patches.forked_text_preparation():
            code, out, err = litgpt_cli(*argv)
        assert code == 0, f"{line}\n{err[-3000:]}"
        outputs[line] = out

    # finetune_lora merged the adapter into full weights
    merged = torch.load(tmp_path / "lora" / "final" / "lit_model.pth", weights_only=True)
    assert merged.keys() == weights.keys()
    assert not torch.equal(merged["transformer.h.0.attn.qkv.weight"], weights["transformer.h.0.attn.qkv.weight"])
    assert (tmp_path / "full" / "final" / "lit_model.pth").is_file()

    # the copy and stock pretrain's checkpoints keep the plain prompt style, which LitGPT would not pick by name
    assert type(PromptStyle.from_config(config)) is not Default
    for directory in (tmp_path / "copy", tmp_path / "more" / "final"):
        assert type(load_prompt_style(directory)) is Default, directory
    (generated,) = [out for line, out in outputs.items() if "first-copy --prompt" in line]
    assert "A list is" in generated and "assistant" not in generated  # no chat template around the prompt

    # the HF export of stock pretrain's tied child gives LitGPT's logits
    more = tmp_path / "more" / "final"
    trained_state = torch.load(more / "lit_model.pth", weights_only=False)["model"]
    assert torch.equal(trained_state["lm_head.weight"], trained_state["transformer.wte.weight"])  # still tied
    assert not torch.equal(trained_state["lm_head.weight"], weights["lm_head.weight"])  # and trained
    lit = GPT(Config.from_file(more / "model_config.yaml"))
    lit.load_state_dict(trained_state)
    hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(more), torch_dtype=torch.float32)
    hf.load_state_dict(torch.load(tmp_path / "hf" / "model.pth"))  # README's lines
    tokens = torch.tensor([[1, 502, 1800, 37, 12, 9000, 3]])
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, lit.eval()(tokens), atol=1e-4, rtol=0)


def _litgpt_name_checks() -> list[str]:
    """Every test LitGPT makes on a model's name in its config, model and converters, as Python expressions of ``n``
    (``"Gemma" in self.name``, ``config.name.lower().startswith("phi")``, ...)."""
    import litgpt

    root = Path(litgpt.__file__).parent
    names = {"config.name", "self.name", "model_name"}
    checks = []
    for path in ("config.py", "model.py", "scripts/convert_lit_checkpoint.py", "scripts/convert_hf_checkpoint.py"):
        for node in ast.walk(ast.parse((root / path).read_text())):
            tested = None
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and len(node.comparators) == 1:
                tested = node.comparators[0]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("startswith", "endswith"):
                tested = node.func.value
            if tested is None:
                continue
            source = ast.unparse(tested)
            base = source.removesuffix(".lower()")
            if base in names:
                checks.append(ast.unparse(node).replace(base, "n", 1))
    return sorted(set(checks))


def test_a_childs_name_keeps_every_name_lookup_of_litgpt():
    """A child is named {reference}-inheritune-{n}L; for every model of LitGPT's zoo, each test LitGPT makes on the
    name (RMSNorm's unit offset for Gemma, the converters' weight mapping, falcon's 7b/40b layout...) answers the same
    for the child's name, and the norm class is the same."""
    from litgpt import Config
    from litgpt.config import name_to_config

    from litgpt_inheritune.inherit import child_config, child_name

    checks = _litgpt_name_checks()
    assert len(checks) >= 15 and any("Gemma" in check for check in checks)  # the extraction found LitGPT's tests
    tests = [eval(f"lambda n: {check}") for check in checks]  # noqa: S307 - LitGPT's own expressions
    for name in name_to_config:
        for depth in (1, 7, 40):
            child = child_name(name, depth)
            assert child.startswith(name) and child.endswith(f"-inheritune-{depth}L")
            changed = [c for c, test in zip(checks, tests) if test(name) != test(child)]
            assert not changed, f"{name} -> {child}: {changed}"
    assert child_name("SmolLM2-135M-inheritune-8L", 4) == "SmolLM2-135M-inheritune-4L"  # a child of a child
    for prefix in ("Gemma-2", "Gemma-3", "falcon-7b", "phi-2", "Qwen2.5", "OLMo-2", "Qwen3", "Phi-4", "SmolLM2"):
        reference = Config.from_name(next(name for name in name_to_config if name.startswith(prefix)))
        child = child_config(reference, [0])
        assert child.name == f"{reference.name}-inheritune-1L"
        norm, child_norm = reference.norm_class, child.norm_class
        assert getattr(child_norm, "func", child_norm) is getattr(norm, "func", norm)
        assert getattr(child_norm, "keywords", None) == getattr(norm, "keywords", None)


def test_the_demo_tokenizer_files_say_what_the_gguf_says(tmp_path, smollm2_tokenizer):
    """transformers' GGUF reader wrote eos <|im_start|> and a BOS; the files now carry the GGUF's special tokens (an
    older conversion is repaired), so LitGPT's tokenizer and transformers' stop on the same token and agree on BOS."""
    import shutil

    from litgpt import Tokenizer
    from transformers import AutoTokenizer

    from litgpt_inheritune.demo.smollm2 import gguf_special_tokens, match_gguf_special_tokens

    child = tmp_path / "final"  # a child's dir: LitGPT decides BOS by the files there
    child.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (smollm2_tokenizer / name).is_file():
            shutil.copy(smollm2_tokenizer / name, child / name)
    match_gguf_special_tokens(child)
    assert match_gguf_special_tokens(child) is False  # already right: nothing rewritten
    gguf = gguf_special_tokens()
    assert gguf["eos_token"] == "<|im_end|>" and gguf["add_bos_token"] is False
    lit, hf = Tokenizer(child), AutoTokenizer.from_pretrained(child)
    assert lit.eos_id == hf.eos_token_id == hf.convert_tokens_to_ids(gguf["eos_token"]) == 2
    assert lit.bos_id == hf.bos_token_id == hf.convert_tokens_to_ids(gguf["bos_token"])
    text = "Inheritune: a list is"
    assert lit.encode(text).tolist() == hf(text).input_ids  # no BOS on either side
    assert json.loads((child / "generation_config.json").read_text())["eos_token_id"] == lit.eos_id
