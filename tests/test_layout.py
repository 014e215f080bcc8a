"""The package's architecture, as rules a change can break: commands apart from building blocks."""

import ast
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "litgpt_inheritune"
COMMANDS = PACKAGE / "commands"
# The only modules that may import a command: the command table.
MAY_IMPORT_COMMANDS = {"_hook.py", "cli.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_building_blocks_never_import_a_command():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if COMMANDS in path.parents or path.name in MAY_IMPORT_COMMANDS:
            continue
        if any(m == "litgpt_inheritune.commands" or m.startswith("litgpt_inheritune.commands.")
               for m in imported_modules(path)):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


def test_a_command_module_is_its_setup_only():
    """Thin: the module defines the command's ``setup`` (and ``collect_setup``), wrapped by the shared error wrapper,
    and nothing else; its work lives in a building block."""
    for path in sorted(COMMANDS.glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        definitions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert definitions, path.name
        for node in definitions:
            assert node.name in ("setup", "collect_setup"), f"{path.name} defines {node.name}: move it to a building block"
            decorators = [d.id for d in node.decorator_list if isinstance(d, ast.Name)]
            assert decorators == ["one_line_errors"], f"{path.name}:{node.name} lacks @one_line_errors"
        assert len(path.read_text().splitlines()) < 120, f"{path.name} is no longer thin"


def test_every_entry_point_is_a_command_module():
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    commands = pyproject["project"]["entry-points"]["litgpt.commands"]
    modules = {value.split(":")[0] for value in commands.values()}
    assert modules == {f"litgpt_inheritune.commands.{p.stem}" for p in COMMANDS.glob("*.py") if p.stem != "__init__"}


def test_the_error_wrapper_keeps_the_signature_and_turns_bad_input_into_one_line():
    import inspect

    import pytest

    from litgpt_inheritune.commands import init
    from litgpt_inheritune.errors import InherituneError, one_line_errors

    assert "reference_dir" in inspect.signature(init.setup).parameters
    assert init.setup.__doc__.startswith("Write a child model")

    @one_line_errors
    def command(x: int) -> int:
        if x < 0:
            raise InherituneError("x must not be negative; pass --x 0 or more")
        return x

    assert command(3) == 3
    with pytest.raises(SystemExit) as exit_info:
        command(-1)
    assert str(exit_info.value.code) == "error: x must not be negative; pass --x 0 or more"


def test_every_module_is_a_package_file_that_git_and_the_wheel_keep():
    """Each folder of the package has its __init__.py, and no source file matches .gitignore (a root pattern such as
    `data/` once hid litgpt_inheritune/data/ from git and from the wheel, which builds from what git keeps)."""
    import shutil
    import subprocess

    import pytest

    for folder in {p.parent for p in PACKAGE.rglob("*.py")} - {PACKAGE}:
        if folder.name != "__pycache__":
            assert (folder / "__init__.py").is_file(), folder
    if shutil.which("git") is None or not (PACKAGE.parent / ".git").exists():
        pytest.skip("not a git checkout")
    sources = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *sources], cwd=PACKAGE.parent,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == []
