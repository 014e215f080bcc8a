"""One module per `litgpt` command: its arguments, its help text, and the call into the building blocks.

Nothing outside this package imports from it except the command table (``_hook``, ``cli``) and the demo: the
building blocks beside it (``data``, ``pruning``, ``analysis``, ``training``, ``child``, ...) never depend on a
command. Every ``setup`` is wrapped by ``errors.one_line_errors``, which turns bad input into a one-line exit.
"""
