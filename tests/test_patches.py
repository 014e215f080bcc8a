"""The patch list (litgpt_inheritune/patches.py) against the installed LitGPT, litdata, lm-eval and torch: every
patch still fits, a patch that no longer fits stops with one line, and no other module patches those projects."""

import re
from pathlib import Path
from unittest import mock

import pytest

from litgpt_inheritune import patches
from litgpt_inheritune.errors import InherituneError

PACKAGE = Path(__file__).resolve().parents[1] / "litgpt_inheritune"


@pytest.mark.parametrize("name", list(patches.PATCHES))
def test_every_patch_fits_the_installed_version(name):
    patches._checked.discard(name)
    patches.check(name)  # raises, naming the patch, if upstream moved or changed it


def test_a_patch_that_no_longer_fits_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(patches.PATCHES, "json.dumps moved", patches.Patch(
        "json", "dumps", "python 3", ("payload",), "a made-up patch for this test"))
    monkeypatch.setitem(patches.PATCHES, "json.gone", patches.Patch(
        "json", "no_such_function", "python 3", (), "a made-up patch for this test"))
    with pytest.raises(InherituneError) as info:
        patches.check("json.dumps moved")
    message = str(info.value)
    assert "\n" not in message and "patch 'json.dumps moved'" in message and "['obj'" in message
    assert "update litgpt_inheritune/patches.py" in message
    with pytest.raises(InherituneError, match="patch 'json.gone' .* it is gone"):
        patches.check("json.gone")


def test_a_patch_is_undone_when_its_block_ends():
    import litgpt.pretrain as pretrain

    plain = pretrain.validate
    with patches.patched("pretrain.validate", "stand-in"):
        assert pretrain.validate == "stand-in"
    assert pretrain.validate is plain
    with pytest.raises(RuntimeError):
        with patches.patched("pretrain.validate", "stand-in"):
            raise RuntimeError("an error inside the block")
    assert pretrain.validate is plain


def test_the_empty_stack_message_is_recognised():
    import torch

    with pytest.raises(RuntimeError) as info:
        torch.stack([])
    assert patches.is_empty_stack(info.value) and not patches.is_empty_stack(RuntimeError("other"))


def test_no_other_module_patches_litgpt_litdata_lm_eval_or_torch():
    libraries = r"(litgpt|litdata|lm_eval|torch|pretrain|pretrain_module|evaluator|parser_config|Block)"
    forbidden = [
        re.compile(r"mock\.patch(?!\.dict\(os\.environ)"),  # every replacement goes through patches.patched
        re.compile(rf"^\s*{libraries}(\.\w+)+\s*=(?!=)"),  # assignment to a library's attribute
        re.compile(r"setattr\(\s*" + libraries + r"\b"),
        re.compile(r"\.(_weights|_num_samples_yielded_wrapper|restore)\s*=(?!=)"),  # litdata's private state
    ]
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "patches.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if any(p.search(code) for p in forbidden):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "patch other projects only in litgpt_inheritune/patches.py:\n" + "\n".join(found)


def test_a_broken_entry_point_is_left_out_with_a_warning(capsys):
    from litgpt_inheritune import _hook

    class EntryPoint:
        def __init__(self, name, value, load):
            self.name, self.value, self.load = name, value, load

    def broken():
        raise ImportError("No module named 'someone_elses_plugin'")

    points = [EntryPoint("good", "pkg:setup", lambda: print), EntryPoint("bad", "someone_elses_plugin:setup", broken)]
    with mock.patch("importlib.metadata.entry_points", return_value=points):
        commands = _hook.declared_commands()
    assert list(commands) == ["good"]
    warning = capsys.readouterr().err.strip()
    assert "\n" not in warning and "'bad'" in warning and "someone_elses_plugin" in warning


_SET_IN_THIS_PROCESS: list[int] = []


def _forked(item):
    yield bool(_SET_IN_THIS_PROCESS)  # a forked worker has this process's memory; a spawned one imports afresh


def test_text_preparation_forks_litdatas_workers_and_restores_the_start_method(tmp_path, monkeypatch):
    import multiprocessing
    import sys

    import litdata
    from litdata.streaming import StreamingDataset

    if not sys.platform.startswith("linux"):
        pytest.skip("fork only on Linux")
    monkeypatch.setenv("DATA_OPTIMIZER_CACHE_FOLDER", str(tmp_path / "chunks"))
    monkeypatch.setenv("DATA_OPTIMIZER_DATA_CACHE_FOLDER", str(tmp_path / "data"))
    before = multiprocessing.get_start_method(allow_none=True)
    plain = litdata.optimize
    monkeypatch.setattr(sys.modules[__name__], "_SET_IN_THIS_PROCESS", [1])
    with patches.forked_text_preparation():
        assert litdata.optimize is not plain
        litdata.optimize(fn=_forked, inputs=[0, 1], output_dir=str(tmp_path / "out"), num_workers=1,
                         chunk_bytes="1MB")
    assert litdata.optimize is plain
    assert multiprocessing.get_start_method(allow_none=True) == before
    assert list(StreamingDataset(str(tmp_path / "out"))) == [True, True]
