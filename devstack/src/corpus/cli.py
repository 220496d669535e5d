"""``himig corpus``: generate test corpora (mounted by the main CLI as a typer sub-app)."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from corpus.malformed import generate_malformed
from corpus.models import CorpusEntry, CorpusManifest, make_manifest
from corpus.real import select_real_files
from corpus.sample import SAMPLE_SHAPE, build_sample_corpus
from corpus.synthetic import generate_studies

corpus_app = typer.Typer(
    help="Generate DICOM test corpora: real sample files, synthetic studies and hostile inputs, each with a "
    "corpus-manifest.json stating what a correct migration should conclude about every file.",
    no_args_is_help=True,
)


@corpus_app.callback()
def _group() -> None:
    """Keeps ``generate`` a sub-command even while it is the only one (typer collapses one-command apps)."""


class Kind(StrEnum):
    sample = "sample"
    synthetic = "synthetic"
    malformed = "malformed"
    real = "real"


class Modality(StrEnum):
    """Kept equal to synthetic.SOP_CLASSES by a test."""

    CT = "CT"
    MR = "MR"



_SYNTHETIC_ONLY = ("--patients", "--studies", "--series", "--instances", "--rows", "--cols", "--modality")


def _check_dest(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise typer.BadParameter(f"{dest} exists and is not a directory", param_hint="'DEST'")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise typer.BadParameter(
            f"{dest} is not empty; the manifest would not describe the files already there "
            "(pass --force to write into it anyway)", param_hint="'DEST'")


def _summary(console: Console, manifest: CorpusManifest, dest: Path, seconds: float) -> None:
    table = Table(title=f"{manifest.kind} corpus in {dest}", show_header=True)
    table.add_column("group")
    table.add_column("value")
    table.add_column("files", justify="right")
    for value, count in manifest.counts_by_origin().items():
        table.add_row("origin", value, str(count))
    for value, count in manifest.counts_by_expected().items():
        table.add_row("expected", value, str(count))
    console.print(table)
    console.print(f"{len(manifest.entries)} files, {manifest.total_bytes:,} bytes, seed {manifest.seed}, "
                  f"{seconds:.2f}s; manifest {dest / 'corpus-manifest.json'}")


@corpus_app.command()
def generate(
    dest: Annotated[Path, typer.Argument(help="Directory to create the corpus in (empty or absent).")],
    kind: Annotated[Kind, typer.Option(help="Which corpus to build.")] = Kind.sample,
    patients: Annotated[int | None, typer.Option(min=1, help="synthetic: number of patients [default: 2]")] = None,
    studies: Annotated[int | None, typer.Option(min=1, help="synthetic: studies per patient [default: 2]")] = None,
    series: Annotated[int | None, typer.Option(min=1, help="synthetic: series per study [default: 2]")] = None,
    instances: Annotated[int | None, typer.Option(min=1, help="synthetic: instances per series [default: 3]")] = None,
    rows: Annotated[int | None, typer.Option(min=1, max=4096, help="synthetic: image rows [default: 64]")] = None,
    cols: Annotated[int | None, typer.Option(min=1, max=4096, help="synthetic: image columns [default: 64]")] = None,
    modality: Annotated[Modality | None, typer.Option(help="synthetic: modality [default: CT]")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed; the same seed gives byte-identical files.")] = 0,
    force: Annotated[bool, typer.Option(help="Write into a non-empty DEST.")] = False,
) -> None:
    """Generate a corpus in DEST and print counts by origin and expected outcome."""
    if kind is not Kind.synthetic:
        given = [flag for flag, value in zip(_SYNTHETIC_ONLY, (patients, studies, series, instances, rows, cols,
                                                                modality), strict=True) if value is not None]
        if given:
            raise typer.BadParameter(f"only valid with --kind synthetic (got --kind {kind.value})",
                                     param_hint=", ".join(f"'{flag}'" for flag in given))
    _check_dest(dest, force)
    started = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    if kind is Kind.sample:
        manifest = build_sample_corpus(dest, seed=seed)
    else:
        entries: list[CorpusEntry]
        if kind is Kind.synthetic:
            entries = generate_studies(
                dest,
                patients=patients or SAMPLE_SHAPE["patients"],
                studies_per_patient=studies or SAMPLE_SHAPE["studies_per_patient"],
                series_per_study=series or SAMPLE_SHAPE["series_per_study"],
                instances_per_series=instances or SAMPLE_SHAPE["instances_per_series"],
                seed=seed, rows=rows or 64, cols=cols or 64, modality=(modality or Modality.CT).value,
            )
        elif kind is Kind.malformed:
            entries = generate_malformed(dest, seed=seed)
        else:
            entries = select_real_files(dest)
        manifest = make_manifest(kind.value, seed, entries)
        manifest.write(dest)
    _summary(Console(), manifest, dest, time.perf_counter() - started)
