"""The exception types users see."""


class DdetrError(Exception):
    """A user-facing error: its message is one clear line that names the culprit.

    The CLI prints it as ``error: <message>`` and exits with status 1, without a traceback
    (``ddetr --debug`` shows the traceback).
    """


class UsageError(DdetrError):
    """A bad command-line value (an option out of range, options that exclude each other).

    Printed like any ``DdetrError`` but exits with status 2, as argument errors do.
    """


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first sentence of an exception's message, for a DdetrError built from a library's
    error (torch's go on for a paragraph); the exception's type name when it says nothing."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")[:limit]


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM) and stopped cleanly: training saved its
    checkpoint first. A KeyboardInterrupt, so that everything that tidies up after Ctrl-C does
    the same here; the CLI exits with 143 (128 + SIGTERM), as shells report a SIGTERM."""
