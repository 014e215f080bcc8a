"""The one error type the commands turn into a one-line message."""


class InherituneError(ValueError):
    """Bad input, found before any expensive work. The message says what to do."""
