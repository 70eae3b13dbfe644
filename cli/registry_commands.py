"""Registry commands: push, pull, search, list (a thin skin over :mod:`sftkit.registry`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from sftkit.cli._output import format_table, human_bytes

_KINDS = ("language", "task", "other")
_registry_option = click.option(
    "--registry",
    "registry_path",
    type=click.Path(file_okay=False),
    help="Local registry directory (default: $SFTKIT_HOME/registry or ~/.cache/sftkit/registry).",
)


def entries_table(entries: Sequence[Any]) -> str:
    """The table ``search`` and ``list`` print: one row per SFT."""
    rows = [
        (
            e.repo_id,
            (e.revision or "")[:10],
            e.kind,
            e.code or "",
            e.base_name or "",
            e.method or "",
            f"{e.nnz:,}" if e.nnz is not None else "",
            f"{e.density:.3%}" if e.density is not None else "",
            human_bytes(e.size) if e.size else "",
            e.source,
        )
        for e in entries
    ]
    headers = ("repo", "revision", "kind", "lang/task", "base", "method", "K", "density", "size", "source")
    return format_table(rows, headers)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("repo_id")
@click.option("--hub", is_flag=True, help="Push to the Hugging Face Hub (default: the local registry).")
@_registry_option
@click.option("--private", is_flag=True, help="Create the Hub repo as private.")
@click.option("--revision", help="Branch to push to (default: main).")
@click.option("--license", "license_id", help="License in the model card (default: apache-2.0).")
def push(file, repo_id, hub, registry_path, private, revision, license_id) -> None:
    """Publish an SFT FILE as REPO_ID (ORG/NAME, or just ORG to name it by convention).

    Writes sft.safetensors, a README.md model card (library_name: sftkit, base_model, language,
    tags) and sftkit.json; the local registry keeps every revision.

    \b
    Examples:
      sftkit push quy.safetensors myorg/xlmr-lang-sft-quy          # local registry
      sftkit push quy.safetensors myorg --hub                      # -> myorg/xlmr-lang-sft-quy on the Hub
      sftkit push nli.safetensors myorg/xlmr-task-sft-nli --hub --private --revision v2
    """
    from sftkit.registry import push as push_sft

    if hub and registry_path:
        raise click.UsageError("--hub and --registry are exclusive: push to the Hub or to a local registry")
    entry = push_sft(
        file, repo_id, hub=hub, registry=registry_path, private=private, revision=revision, license=license_id
    )
    where = "the Hub" if hub else "the local registry"
    click.echo(f"pushed {entry.ref} to {where}: {entry.kind} SFT, K={entry.nnz:,}, {human_bytes(entry.size or 0)}")


@click.command()
@click.argument("repo_ref", metavar="REPO_ID[@REV]")
@_registry_option
@click.option("--base", "base_path", help="Base model (dir or Hub id) for composable-sft imports: maps tied names, records the fingerprint.")
@click.option("--force-download", is_flag=True, help="Download again even if cached.")
def pull(repo_ref, registry_path, base_path, force_download) -> None:
    """Fetch an SFT from the Hub into the local registry (checksum-verified).

    Repos holding composable-sft's pytorch_diff.bin (e.g. cambridgeltl/xlmr-lang-sft-quy-small) are
    converted on the way in, with their provenance recorded. Cached revisions work offline
    (HF_HUB_OFFLINE=1).

    \b
    Examples:
      sftkit pull myorg/xlmr-lang-sft-quy
      sftkit pull myorg/xlmr-lang-sft-quy@3f2a9c1e0b
      sftkit pull cambridgeltl/xlmr-lang-sft-quy-small --base xlm-roberta-base
    """
    from sftkit.registry import pull as pull_sft

    base = None
    if base_path:
        from sftkit.models import load_model

        base = load_model(base_path, for_task="base")
    entry = pull_sft(repo_ref, registry=registry_path, base=base, force_download=force_download)
    click.echo(f"pulled {entry.ref}: {entry.kind} SFT, K={entry.nnz:,} -> {entry.file}")


@click.command()
@click.option("--language", help="ISO 639-3 code, e.g. quy.")
@click.option("--task", help="Task name, e.g. nli.")
@click.option("--base", help="Base model name or fingerprint.")
@click.option("--kind", type=click.Choice(_KINDS))
@click.option("--hub", is_flag=True, help="Search the Hugging Face Hub (default: the local registry).")
@_registry_option
def search(language, task, base, kind, hub, registry_path) -> None:
    """Find SFTs by language, task, base model or kind; prints a table.

    On the Hub this reads card data and safetensors headers, never whole SFT files.

    \b
    Examples:
      sftkit search --language quy
      sftkit search --task nli --base xlm-roberta-base --hub
    """
    from sftkit.registry import search as search_sfts

    if hub and registry_path:
        raise click.UsageError("--hub and --registry are exclusive: search the Hub or a local registry")
    entries = search_sfts(language=language, task=task, base=base, kind=kind, hub=hub, registry=registry_path)
    if not entries:
        click.echo("no SFTs match" + ("" if hub else "; try --hub to search the Hugging Face Hub"))
        return
    click.echo(entries_table(entries))


@click.command(name="list")
@_registry_option
def list_command(registry_path) -> None:
    """List the SFTs in the local registry (latest revision of each repo).

    \b
    Example:
      sftkit list --registry ./my-registry
    """
    from sftkit.registry import LocalRegistry

    registry = LocalRegistry(registry_path)
    entries = registry.list_entries()
    if not entries:
        click.echo(f"the local registry {registry.root} is empty; `sftkit push FILE ORG/NAME` adds an SFT")
        return
    click.echo(entries_table(entries))


def register(group: click.Group) -> None:
    for command in (push, pull, search, list_command):
        group.add_command(command)
