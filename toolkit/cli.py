"""The `mcpm-mobile` command line: thin Click commands over the library API.

Each concern defines its commands next to its code; this module only collects them.
Heavy imports (TVM, onnx) happen inside the commands, so `mcpm-mobile check` stays fast.
"""
import click

from mcpm_mobile import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcpm-mobile")
def main():
    """MiniCPM from a checkpoint on disk to a phone."""


# Commands, one line each (keep this list sorted by concern).
from mcpm_mobile.dev import dev  # noqa: E402
from mcpm_mobile.licenses.cli import license_cmd  # noqa: E402
from mcpm_mobile.quantize.cli import quantize  # noqa: E402

main.add_command(quantize)
main.add_command(dev)
main.add_command(license_cmd)
from mcpm_mobile.formats.gguf_cli import export_gguf_cmd  # noqa: E402

main.add_command(export_gguf_cmd)
from mcpm_mobile.formats.onnx_cli import export_onnx_cmd  # noqa: E402

main.add_command(export_onnx_cmd)
from mcpm_mobile.devices.cli import check, devices  # noqa: E402

main.add_command(devices)
main.add_command(check)
from mcpm_mobile.compiler.cli import compile_cmd  # noqa: E402
from mcpm_mobile.runtime.cli import run_cmd  # noqa: E402

main.add_command(compile_cmd)
main.add_command(run_cmd)
from mcpm_mobile.targets.cli import build, inspect_cmd, verify  # noqa: E402

main.add_command(build)
main.add_command(verify)
main.add_command(inspect_cmd)
