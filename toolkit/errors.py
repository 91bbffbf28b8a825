"""The one error type users see: a single line, a non-zero exit code, no traceback."""
import click


class MCPMError(click.ClickException):
    """A problem with the user's input or environment.

    Click prints it as one line ``Error: <message>`` and exits with ``exit_code``.
    Library callers get an ordinary exception with the same message.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def fail(path, reason: str, exit_code: int | None = None) -> "MCPMError":
    """Build the standard '<path>: <reason>' error."""
    return MCPMError(f"{path}: {reason}", exit_code)
