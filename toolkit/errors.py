"""The one error type users see: a single line, a non-zero exit code, no traceback.

A message names the file or the parameter at fault. Parameters are written ``$name`` in the
message (``$block_size``): library callers read ``block_size``, the command line shows the flag that
sets it (``--block-size``), so only the CLI layer knows flag spellings.
"""
import re

import click

PARAMETER = re.compile(r"\$([a-z][a-z0-9_]*)")


class MCPMError(click.ClickException):
    """A problem with the user's input or environment.

    Click prints it as one line ``Error: <message>`` and exits with ``exit_code``.
    Library callers get an ordinary exception with the same message.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None, where: str | None = None):
        self.template, self.where = message, where
        super().__init__(self._text({}))
        if exit_code is not None:
            self.exit_code = exit_code

    def _text(self, names: dict[str, str]) -> str:
        text = PARAMETER.sub(lambda m: names.get(m.group(1), m.group(1)), self.template)
        return text if self.where is None else f"{self.where}: {text}"

    def respell(self, flags: dict[str, str]) -> None:
        """Name each ``$parameter`` as ``flags`` spells it (the command line's option names)."""
        self.message = self._text(flags)
        self.args = (self.message,)


def fail(path, reason: str, exit_code: int | None = None) -> "MCPMError":
    """Build the standard '<path>: <reason>' error (``reason`` may name parameters as ``$name``), on one line
    even when ``reason`` quotes a multi-line message from a library."""
    return MCPMError(" ".join(reason.split()), exit_code, where=str(path))
