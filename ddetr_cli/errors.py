"""The one exception type users see."""


class DdetrError(Exception):
    """A user-facing error: its message is one clear line that names the culprit.

    The CLI prints it as ``error: <message>`` and exits with status 1, without a traceback
    (``ddetr --debug`` shows the traceback).
    """
