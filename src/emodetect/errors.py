"""The one exception type the CLI turns into a clear, single-line error message."""


class EmodetectError(Exception):
    """A user-facing problem (bad input, missing file, unknown name). The CLI prints it without a traceback."""
