"""bench/gpu_check.py, the one prepared GPU check, in its CPU mode: the same code paths as on a GPU, so the script
works the day a device is lent. Every section run for real (of the smoke, `litgpt inheritune --speed all`: each
command costs a `litgpt` start-up of 10-30 s on 2 shared cores), every smoke command's GPU and CPU arguments parsed
by the command's own parser, and a tiny budget trimmed and reported. `python bench/gpu_check.py --device cpu --tiny`
runs all seven commands (about 2.5 minutes here)."""

import importlib.util
import json
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_mode_measures_stock_and_a_candidate_and_smokes_a_command(tmp_path, smollm2_tokenizer, monkeypatch, capfd):
    """In this process, as `python bench/gpu_check.py` runs it (the smoke command is a real `litgpt` subprocess)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the smoke's work dir
    monkeypatch.setattr(tempfile, "tempdir", None)
    out = tmp_path / "check"
    gpu_check = gpu_check_module()
    result = gpu_check.main([
        "--device", "cpu", "--tiny", "--out_dir", str(out), "--tokenizer_dir", str(smollm2_tokenizer), "--steps", "3",
        "--warmup", "1", "--stock", "stock", "--candidates", "fused_ce+cudnn_attention", "--compile", "off",
        "--smoke", "inheritune",
    ])
    markdown = (out / "gpu_check.md").read_text()
    # the table is printed last, and it is the Markdown file, rendered from the JSON file
    assert capfd.readouterr().out.rstrip().endswith(markdown.rstrip())
    assert gpu_check.render(json.loads((out / "gpu_check.json").read_text())) == markdown
    rows = {r["requested"]: r for r in result["throughput"]}
    stock, candidate = rows["stock"], rows["fused_ce+cudnn_attention"]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in rows.values())
    assert stock["vs_stock"] == 1.0
    assert candidate["vs_stock"] == candidate["vs_best_stock"] == pytest.approx(
        candidate["tokens_per_s"] / stock["tokens_per_s"])
    # Only what needs CUDA is replaced on the CPU, and the row says so; both run LitGPT's default bf16-mixed, where the
    # fused head's loss curve is stock's up to bf16 rounding.
    assert candidate["run"] == "fused_ce" and stock["precision"] == candidate["precision"] == "bf16-mixed"
    assert candidate["notes"] == ["cudnn_attention dropped (cuDNN attention is CUDA only)"]
    assert candidate["loss_diff_vs"] == "stock" and candidate["loss_diff_steps"] == 3 and candidate["loss_diff"] < 2e-2
    assert f"| throughput | {candidate['run']} | ok | 3 | {candidate['tokens_per_s']:,.0f} |" in markdown
    assert f"{candidate['vs_best_stock']:.3f}x" in markdown and "goal 1.3x" in markdown
    (lean,) = result["mem24"]
    assert lean["status"] == "fits" and "adamw8bit -> adamw (bitsandbytes' 8-bit AdamW is CUDA only)" in lean["notes"]
    assert "| mem24 | fused_ce+checkpoint@precision=bf16-true,optimizer=adamw | fits |" in markdown
    # the smoke command ran through the real CLI and wrote what it should (one: each costs a `litgpt` start-up)
    (row,) = result["smoke"]
    assert row["name"] == "inheritune" and row["status"] == "ok", row
    assert "| litgpt inheritune | ok |" in markdown and "AdamW for 8-bit AdamW (CUDA only)" in markdown
    assert result["trimmed"] == [] and "- nothing" in markdown
    assert "not measured here" in markdown
    assert not list(tmp_path.glob("gpu-check-*"))  # the smoke's work dir is removed


def test_every_smoke_command_parses_with_its_own_cli_on_cuda_and_cpu(tmp_path):
    """The GPU's arguments (bf16, 8-bit AdamW, a bnb.nf4 teacher, --device cuda) cannot run here, but each command's
    own parser reads them as the `litgpt` CLI does, so a renamed or removed option fails here first."""
    from jsonargparse import ArgumentParser

    from litgpt_inheritune._hook import declared_commands
    from litgpt_inheritune.demo.run import write_pydoc_text

    gpu_check = gpu_check_module()
    commands = declared_commands()
    text = write_pydoc_text(tmp_path / "pydoc")
    for device in ("cuda", "cpu"):
        args = Namespace(device=device, smoke=list(gpu_check.SMOKE), smoke_steps=3)
        built = gpu_check.smoke_commands(args, tmp_path / "reference", text, tmp_path / device)
        assert list(built) == list(gpu_check.SMOKE)
        for name, (argv, note, _expected) in built.items():
            parser = ArgumentParser(exit_on_error=False)
            parser.add_function_arguments(commands[argv[0]], as_positional=True)  # as the CLI does
            config = parser.parse_args([str(a) for a in argv[1:]])
            parser.instantiate_classes(config)
            if "precision" in config:  # bf16 on the CPU too: it runs there
                assert config.precision.startswith("bf16"), name
            if device == "cuda":
                assert note == "", name
            else:  # a CPU row says what it replaced, and only what needs CUDA is
                replaces = {"inheritune", "fsdp", "width", "analyze", "evaluate"}
                assert bool(note) == (name in replaces), (name, note)
        arms, train = built["arms"][0], built["inheritune"][0]
        assert arms[arms.index("--kd_quantize") + 1] == "bnb.nf4"  # bitsandbytes' CPU kernels on a CPU
        if device == "cuda":
            assert train[train.index("--optimizer") + 1] == "bitsandbytes.optim.AdamW8bit"
            assert train[train.index("--speed") + 1] == "all"
        else:
            assert train[train.index("--optimizer") + 1] == "torch.optim.AdamW"
            assert train[train.index("--speed") + 1] == "fused_ce,checkpoint"
        for name, strategy in (("fsdp2", "fsdp2"), ("fsdp", "fsdp" if device == "cuda" else "fsdp2")):
            argv = built[name][0]  # one process, sharded by name: the sharded code paths on one GPU
            assert argv[argv.index("--strategy") + 1] == strategy and argv[argv.index("--devices") + 1] == 1

def test_a_tiny_budget_trims_steps_and_commands_and_says_so(tmp_path, smollm2_tokenizer, monkeypatch):
    """In this process (the imports are already paid for): the smoke does not fit and does not start, each
    throughput run is planned against its share of the budget, and all of it is listed (how many steps a run keeps
    depends on the machine's speed, so it is not asserted)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    budget = 10
    out = tmp_path / "check"
    result = gpu_check_module().main([
        "--device", "cpu", "--tiny", "--out_dir", str(out), "--tokenizer_dir", str(smollm2_tokenizer), "--only",
        "throughput,smoke", "--budget_s", str(budget), "--steps", "40", "--warmup", "1", "--stock", "stock",
        "--candidates", "fused_ce", "--est_overhead_s", "2", "--compile", "off",
    ])
    markdown = (out / "gpu_check.md").read_text()
    assert json.loads((out / "gpu_check.json").read_text())["trimmed"] == result["trimmed"]
    assert result["mem24"] == [] and result["trimmed"]
    for row in result["throughput"]:
        assert row["status"] in ("ok", "not run (budget)", "stopped (budget)"), row
        if row["status"] != "ok" or row["steps"] < 40:  # whatever was cut is listed
            assert any(t.startswith(f"throughput {row['requested']}:") for t in result["trimmed"])
    assert all(r["status"] == "not run (budget)" for r in result["smoke"]) and len(result["smoke"]) == len(gpu_check_module().SMOKE)
    assert any(t.startswith("smoke: not run") for t in result["trimmed"])
    assert "## Trimmed to fit the budget" in markdown and "- nothing" not in markdown
    for line in result["trimmed"]:
        assert f"- {line}" in markdown


def test_rows_measured_before_a_failure_are_kept(tmp_path, monkeypatch):
    """gpu_check.json and .md are rewritten after every section: a smoke that fails while it prepares leaves the
    throughput rows on disk."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "check"
    with pytest.raises(SystemExit, match="holds no tokenizer.json"):
        gpu_check_module().main([
            "--device", "cpu", "--tiny", "--out_dir", str(out), "--tokenizer_dir", str(tmp_path), "--only",
            "throughput,smoke", "--steps", "3", "--warmup", "1", "--stock", "stock", "--candidates", "",
            "--compile", "off",
        ])
    (row,) = json.loads((out / "gpu_check.json").read_text())["throughput"]
    assert row["run"] == "stock" and row["status"] == "ok" and row["tokens_per_s"] > 0
    assert "| throughput | stock | ok | 3 |" in (out / "gpu_check.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]  # no temp file left
