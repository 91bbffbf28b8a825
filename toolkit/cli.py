"""The `mcpm-mobile` command line: thin Click commands over the library API.

Each concern defines its commands in its own ``cli.py``; this module only collects them.
Heavy imports (TVM, onnx, gguf) happen inside the commands, so `mcpm-mobile check` stays fast.
"""
import os
import signal

import click

from mcpm_mobile import __version__
from mcpm_mobile.compiler.cli import compile_cmd, inspect_cmd
from mcpm_mobile.devices.cli import check_cmd, devices_cmd
from mcpm_mobile.errors import MCPMError
from mcpm_mobile.formats.cli import export_gguf_cmd, export_onnx_cmd
from mcpm_mobile.licenses.cli import license_cmd
from mcpm_mobile.model.cli import dev_cmd
from mcpm_mobile.quantize.cli import quantize_cmd
from mcpm_mobile.runtime.cli import run_cmd
from mcpm_mobile.support.signals import Interrupted, raised_as_interrupts
from mcpm_mobile.targets.cli import build_cmd, verify_cmd

DEBUG_ENV = "MCPM_MOBILE_DEBUG"


class Guarded(click.Group):
    """Every failure leaves as one line: signals as 128+N, OS errors and internal errors with exit 2 / 70."""

    def invoke(self, ctx):
        with raised_as_interrupts() as received:
            try:
                return super().invoke(ctx)
            except (click.exceptions.Exit, click.ClickException, click.Abort):
                raise
            except KeyboardInterrupt as e:
                _interrupted(e.signum if isinstance(e, Interrupted) else signal.SIGINT)
            except OSError as e:
                if received:
                    _interrupted(received[0])
                where = e.filename or "output"
                raise MCPMError(f"{where}: {e.strerror or e}") from None
            except Exception as e:
                if received:  # TVM turns a signal inside its C++ code into an ordinary error
                    _interrupted(received[0])
                if os.environ.get(DEBUG_ENV):
                    raise
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise MCPMError(f"internal error ({type(e).__name__}: {first}); set {DEBUG_ENV}=1 for the "
                                "traceback and please report it", exit_code=70) from None


def _interrupted(signum: int):
    name = signal.Signals(signum).name
    click.echo(f"Interrupted ({name}); unfinished output was removed.", err=True)
    raise click.exceptions.Exit(128 + int(signum))



@click.group(cls=Guarded, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcpm-mobile")
def main():
    """MiniCPM from a checkpoint on disk to a phone."""


# In pipeline order: checkpoint -> weights -> library -> run; exports; packages; phones; licences; tools.
for command in (quantize_cmd, compile_cmd, inspect_cmd, run_cmd, export_gguf_cmd, export_onnx_cmd, build_cmd,
                verify_cmd, devices_cmd, check_cmd, license_cmd, dev_cmd):
    main.add_command(command)
