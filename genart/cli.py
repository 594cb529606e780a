"""The ``genart`` command: parsing arguments and calling the library, nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(
    help="genart: tell AI-generated images from real ones. Data, training, evaluation and serving on Ray.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Build, index, split and report on datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="where to write the dataset")],
    images_per_class: Annotated[int, typer.Option(help="images per generator x label in train/")] = 100,
    val_images_per_class: Annotated[int | None, typer.Option(help="per generator x label in val/")] = None,
    size: Annotated[int, typer.Option(help="square image side in pixels")] = 128,
    seed: Annotated[int, typer.Option()] = 0,
    formats: Annotated[
        str, typer.Option(help="'trap': nature JPEG and ai PNG, like GenImage; 'match': everything PNG")
    ] = "trap",
    workers: Annotated[int | None, typer.Option(help="processes (default: all cores)")] = None,
) -> None:
    """Generate the sample dataset in the Tiny GenImage layout (for running the system, not for accuracy)."""
    from genart.data.synth import synthesize

    try:
        summary = synthesize(
            out,
            images_per_class=images_per_class,
            val_images_per_class=val_images_per_class,
            size=size,
            seed=seed,
            formats=formats,  # type: ignore[arg-type]
            workers=workers,
        )
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {summary.files} images to {summary.root} in {summary.seconds:.1f}s")


@data_app.command("index")
def data_index(
    root: Annotated[Path, typer.Argument(help="dataset root in the GenImage layout")],
    out: Annotated[Path, typer.Option(help="manifest to write (Parquet)")] = Path("manifest.parquet"),
    workers: Annotated[int | None, typer.Option(help="processes (default: all cores)")] = None,
) -> None:
    """Scan a dataset into a manifest: one row per file, format sniffed from the bytes."""
    from genart.data.index import index_tree

    try:
        summary = index_tree(root, out, workers=workers)
    except FileNotFoundError as exc:
        _fail(str(exc))
    typer.echo(
        f"indexed {summary.files} files -> {summary.manifest}: {summary.unreadable} unreadable, "
        f"{summary.ext_mismatch} with a misleading extension, {summary.unlabelled} outside the layout, "
        f"{len(summary.skipped)} non-image files skipped"
    )
    for name in summary.skipped[:5]:
        typer.echo(f"  skipped: {name}")


@data_app.command("split")
def data_split(
    manifest: Annotated[Path, typer.Argument(help="manifest from `genart data index`")],
    out: Annotated[
        Path | None, typer.Option(help="split manifest to write (default: <manifest>.split.parquet)")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="'stratified' 70/15/15, or 'folders' to keep train/val folders")
    ] = ("stratified"),
    train: Annotated[float, typer.Option(help="train share")] = 0.7,
    val: Annotated[float, typer.Option(help="validation share")] = 0.15,
    test: Annotated[float, typer.Option(help="test share")] = 0.15,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Assign train/val/test, stratified by generator x label, with no file hash in two splits."""
    from genart.data.index import read_manifest, write_manifest
    from genart.data.split import assign_splits

    if not manifest.exists():
        _fail(f"no manifest at {manifest}: run `genart data index ROOT --out {manifest}` first")
    try:
        result = assign_splits(read_manifest(manifest), (train, val, test), seed=seed, mode=mode)  # type: ignore[arg-type]
    except ValueError as exc:
        _fail(str(exc))
    out = out or manifest.with_suffix(".split.parquet")
    write_manifest(result.manifest, out)
    typer.echo(result.counts.to_string())
    typer.echo(
        f"wrote {out}; sha256 in two splits: {result.leaked['sha256'].nunique()}; "
        f"near-identical re-encodes across splits: {int(result.near_duplicates['crosses_splits'].sum())}"
    )


@data_app.command("report")
def data_report(
    manifest: Annotated[Path, typer.Argument(help="manifest (split or not)")],
    out: Annotated[Path, typer.Option(help="folder for report.md and its PNGs")] = Path("reports/data"),
) -> None:
    """Write the data report: counts, sizes, the format x label confound, corrupt files, duplicates."""
    from genart.data.index import read_manifest
    from genart.data.report import write_report

    if not manifest.exists():
        _fail(f"no manifest at {manifest}")
    result = write_report(read_manifest(manifest), out)
    typer.echo(f"wrote {result.markdown} and {len(result.plots)} plots")
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW)


if __name__ == "__main__":  # pragma: no cover
    app()
