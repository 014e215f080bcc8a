"""The one error type the commands turn into a one-line message."""


class InherituneError(ValueError):
    """Bad input, found before any expensive work. The message says what to do."""


_DISK_CAUSES = {28: "no space left on the device", 13: "permission denied", 30: "read-only file system",
                122: "disk quota exceeded", 2: "no such file or directory", 20: "a part of the path is a file"}


def disk_error(exc: OSError, path, doing: str = "writing") -> InherituneError:
    """An ``OSError`` while writing as one line naming the path and the cause (no space, permission, read-only)."""
    cause = _DISK_CAUSES.get(getattr(exc, "errno", None) or -1) or exc.strerror or str(exc)
    hint = "; free some space or choose another --out_dir" if exc.errno in (28, 122) else "; choose another --out_dir"
    return InherituneError(f"{doing} {str(path)!r} failed: {cause}{hint}")


def one_line_errors(command):
    """Wraps a command's ``setup``: an ``InherituneError`` ends the process with ``error: <message>`` (exit 1).

    The wrapper keeps the signature and the docstring (``functools.wraps``), from which jsonargparse builds the
    command's arguments and help.
    """
    import functools
    import sys

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InherituneError as exc:
            raise SystemExit(f"error: {exc}") from None
        except KeyboardInterrupt:  # Ctrl-C: what was written stays whole (checkpoints are renamed into place)
            print("error: interrupted; rerun with --resume true to continue", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
