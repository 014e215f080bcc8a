"""`litgpt-inheritune`: the same commands as `litgpt inheritune*`, for when the start-up hook is not active."""


def main() -> None:
    from jsonargparse import set_config_read_mode, set_docstring_parse_options

    from litgpt.utils import CLI
    from litgpt_inheritune._hook import declared_commands

    set_docstring_parse_options(attribute_docstrings=True)
    set_config_read_mode(urls_enabled=False)
    CLI(declared_commands())


if __name__ == "__main__":
    main()
