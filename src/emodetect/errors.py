"""The one exception type the CLI turns into a clear, single-line error message."""


class EmodetectError(Exception):
    """A user-facing problem (bad input, missing file, unknown name). The CLI prints it without a traceback."""


class FramesLost(UserWarning):
    """A video decoded fewer frames than its container declares: a damaged or cut-short file, read up to the
    first frame that would not decode. The frames before it are analysed as usual."""


def printable(text) -> str:
    """Text from the data (file names, CSV fields) with control characters escaped: one line stays one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))
