"""The `mcpm-mobile` command line: thin Click commands over the library API.

Each concern defines its commands in its own ``cli.py``; this module only collects them.
Heavy imports (TVM, onnx, gguf) happen inside the commands, so `mcpm-mobile check` stays fast.
"""
import click

from mcpm_mobile import __version__
from mcpm_mobile.compiler.cli import compile_cmd, inspect_cmd
from mcpm_mobile.devices.cli import check_cmd, devices_cmd
from mcpm_mobile.formats.cli import export_gguf_cmd, export_onnx_cmd
from mcpm_mobile.licenses.cli import license_cmd
from mcpm_mobile.model.cli import dev_cmd
from mcpm_mobile.quantize.cli import quantize_cmd
from mcpm_mobile.runtime.cli import run_cmd
from mcpm_mobile.targets.cli import build_cmd, verify_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcpm-mobile")
def main():
    """MiniCPM from a checkpoint on disk to a phone."""


# In pipeline order: checkpoint -> weights -> library -> run; exports; packages; phones; licences; tools.
for command in (quantize_cmd, compile_cmd, inspect_cmd, run_cmd, export_gguf_cmd, export_onnx_cmd, build_cmd,
                verify_cmd, devices_cmd, check_cmd, license_cmd, dev_cmd):
    main.add_command(command)
