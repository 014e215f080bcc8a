"""Adds the commands of the ``litgpt.commands`` entry-point group to the ``litgpt`` CLI.

LitGPT 0.5 has no plugin mechanism: ``litgpt/__main__.py`` holds a fixed ``PARSER_DATA`` dict and checks it against
``litgpt.parser_config.parser_commands()``. The ``litgpt_inheritune.pth`` file installed into site-packages imports
this module at interpreter start; it only puts a finder on ``sys.meta_path`` (no torch, no litgpt import). When
``litgpt.__main__`` is imported, the finder lets the real module load, then adds every command declared under the
entry-point group ``litgpt.commands`` to ``PARSER_DATA`` and to both names of ``parser_commands``.
When ``litgpt.utils`` is imported, before any other module binds its names, ``copy_config_files`` is made to copy a
checkpoint's ``prompt_style.yaml`` along (patch "litgpt.copy_config_files"); when
``litgpt.scripts.convert_pretrained_checkpoint`` is, its command also takes a checkpoint that holds the weights alone
(patch "litgpt.convert_pretrained_checkpoint").
Installing twice is harmless: the finder is added once.
"""

import sys
from importlib.abc import Loader, MetaPathFinder

GROUP = "litgpt.commands"
TARGET = "litgpt.__main__"
UTILS = "litgpt.utils"
CONVERT_PRETRAINED = "litgpt.scripts.convert_pretrained_checkpoint"


def declared_commands() -> dict:
    """name -> function for every command declared in the ``litgpt.commands`` entry-point group. A declared command
    that fails to load is left out with a one-line warning: one broken plugin must not break all of `litgpt`."""
    from importlib.metadata import entry_points

    commands = {}
    for ep in entry_points(group=GROUP):
        try:
            commands[ep.name] = ep.load()
        except Exception as exc:  # any error of another package's import
            print(f"warning: litgpt command {ep.name!r} ({ep.value}) is left out: it failed to load "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
    return commands


def patch(namespace: dict) -> None:
    """Registers the declared commands in a loaded ``litgpt.__main__`` namespace (idempotent). The patch itself is
    "litgpt.parser_commands" in ``litgpt_inheritune.patches``."""
    import litgpt.parser_config as parser_config

    from litgpt_inheritune.patches import set_parser_commands

    commands = declared_commands()
    namespace["PARSER_DATA"].update(commands)
    original = getattr(parser_config.parser_commands, "__wrapped_commands__", parser_config.parser_commands)

    def parser_commands() -> list:
        names = list(original())
        return names + [name for name in commands if name not in names]

    parser_commands.__wrapped_commands__ = original
    set_parser_commands(parser_config, parser_commands)
    namespace["parser_commands"] = parser_commands


def patch_utils(namespace: dict) -> None:
    """Patch "litgpt.copy_config_files" in a loaded ``litgpt.utils`` namespace (idempotent)."""
    from litgpt_inheritune.patches import copying_prompt_style

    namespace["copy_config_files"] = copying_prompt_style(namespace["copy_config_files"])


def patch_convert_pretrained(namespace: dict) -> None:
    """Patch "litgpt.convert_pretrained_checkpoint" in a loaded module namespace (idempotent)."""
    from litgpt_inheritune.patches import accepting_weights

    name = "convert_pretrained_checkpoint"
    namespace[name] = accepting_weights(namespace[name], namespace["copy_config_files"])


class _PatchingLoader(Loader):
    def __init__(self, loader, after=None) -> None:
        self.loader = loader
        self.after = patch if after is None else after

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.after(module.__dict__)

    def get_code(self, fullname):
        if fullname != TARGET:
            return self.loader.get_code(fullname)
        # `python -m litgpt` execs this code as __main__: run the real body under its own name, patch, then main().
        _ORIGINAL_CODE[fullname] = self.loader.get_code(fullname)
        shim = (
            "import litgpt_inheritune._hook as _inheritune_hook\n"
            "_run_as = __name__\n"
            f"__name__ = {fullname!r}\n"
            f"exec(_inheritune_hook._ORIGINAL_CODE[{fullname!r}], globals())\n"
            "__name__ = _run_as\n"
            "_inheritune_hook.patch(globals())\n"
            "if __name__ == '__main__':\n"
            "    main()\n"
        )
        return compile(shim, self.loader.get_filename(fullname), "exec")

    def __getattr__(self, name):
        return getattr(self.loader, name)


_ORIGINAL_CODE: dict = {}


class InheritFinder(MetaPathFinder):
    # Recognised by this marker, not by class identity: a reloaded module defines a new class.
    is_inheritune_finder = True

    def find_spec(self, fullname, path, target=None):
        after = {TARGET: patch, UTILS: patch_utils, CONVERT_PRETRAINED: patch_convert_pretrained}.get(fullname)
        if after is None:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "is_inheritune_finder", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, after)
                return spec
        return None


def install() -> None:
    if not any(getattr(f, "is_inheritune_finder", False) for f in sys.meta_path):
        sys.meta_path.insert(0, InheritFinder())


install()
