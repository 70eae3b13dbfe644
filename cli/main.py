"""The ``sftkit`` console script: a thin click skin over the library API.

User mistakes (any :class:`sftkit.errors.SFTError`, bad paths, bad options) print one line
``Error: …`` and exit with status 1 (2 for usage errors, as click does); no traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from sftkit._version import __version__
from sftkit.errors import SFTError

# Modules that each add their commands to ``main`` via ``register(group)``.
COMMAND_MODULES = ("sftkit.cli.core", "sftkit.cli.train", "sftkit.cli.registry_commands")


class _NoticeHandler(logging.Handler):
    """Library notices (skipped parameters, forced mismatches) as one line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        label = "Warning" if record.levelno >= logging.WARNING else "Notice"
        click.echo(f"{label}: {record.getMessage()}", err=True)


class SFTKitGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SFTError as exc:
            raise click.ClickException(str(exc)) from None
        except FileNotFoundError as exc:
            raise click.ClickException(f"{exc.filename or exc}: no such file or directory; check the path") from None
        except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            raise click.ClickException(f"{exc.filename or exc}: {exc.strerror or exc}") from None


@click.group(cls=SFTKitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sftkit")
@click.option("-v", "--verbose", is_flag=True, help="Show informational notices.")
def main(verbose: bool) -> None:
    """sftkit: composable sparse fine-tunings (LT-SFT, DeFT-X).

    \b
    Examples:
      sftkit demo                                  # the embedded end-to-end default
      sftkit info lang-sft.safetensors
      sftkit extract base/ finetuned/ -o delta.safetensors --density 0.05
      sftkit compose base/ lang.safetensors task.safetensors -o composed/
    """
    logger = logging.getLogger("sftkit")
    if not any(isinstance(h, _NoticeHandler) for h in logger.handlers):
        logger.addHandler(_NoticeHandler())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def _register_all() -> None:
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(main)


_register_all()

if __name__ == "__main__":
    sys.exit(main())
