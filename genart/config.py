"""Typed configuration: one schema for data, model, training, tuning and serving.

A config is loaded once, from YAML, then environment variables, then ``section.key=value`` overrides
from the command line, later sources winning. Nothing happens at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_BIT_DEPTH",
    "MAX_FRAMES",
    "MAX_IMAGE_PIXELS",
    "MAX_PREPROCESS_BYTES",
    "MAX_TIFF_BLOCKS",
    "AugmentConfig",
    "DataConfig",
    "DecodeLimits",
    "GenartConfig",
    "ModelConfig",
    "ServeConfig",
    "ServeModel",
    "Settings",
    "TrainConfig",
    "TuneConfig",
    "load_config",
    "parse_overrides",
]

# The vocabularies, defined once: a typo in a YAML file or an override fails when the config is loaded.
CropPolicy = Literal["crop", "resize"]
EnsembleRule = Literal["mean", "weighted", "vote"]
OptimizerName = Literal["adamw", "sgd"]
ScheduleName = Literal["cosine", "step", "constant"]
IngressLayout = Literal["proxy", "haproxy"]  # how HTTP reaches a Serve app: genart.serve.app.INGRESS_ENV

#: Larger images are refused before any pixel is decoded (decompression bombs). 64 MP covers camera photos.
MAX_IMAGE_PIXELS = 64_000_000
#: A 1 x N strip is resized to N x 256 by a model that resizes the short side: 74000 x 1 would need 19 GB.
MAX_ASPECT_RATIO = 100.0
#: Only the first frame is decoded, but counting and seeking frames costs time per frame.
MAX_FRAMES = 10_000
#: Bits per sample; 32-bit integer and float images have no place in a photo detector.
MAX_BIT_DEPTH = 16
#: A TIFF of a million one-row strips costs a decoder call per strip.
MAX_TIFF_BLOCKS = 65_536
#: The sum of the intermediates one image's preprocessing allocates: decoded image, resize output, tensor.
MAX_PREPROCESS_BYTES = 384 * 2**20


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DecodeLimits(BaseModel):
    """The decoding budget, checked from an image's header before any pixel is decoded.

    One set of caps for serving, ``genart predict``, ``genart evaluate``, the index and the Ray Data pipeline
    (:func:`genart.data.headers.check_budget`). A refusal names the field and the image's value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pixels: int = Field(MAX_IMAGE_PIXELS, ge=1, description="decompression-bomb cap, in pixels")
    max_aspect_ratio: float = Field(MAX_ASPECT_RATIO, ge=1, description="long side / short side")
    max_frames: int = Field(
        MAX_FRAMES, ge=1, description="frames an animation may claim (GIF, APNG, WEBP, TIFF)"
    )
    max_bit_depth: int = Field(MAX_BIT_DEPTH, ge=1, description="bits per sample")
    max_tiff_blocks: int = Field(MAX_TIFF_BLOCKS, ge=1, description="strips or tiles of one TIFF")
    max_preprocess_bytes: int = Field(
        MAX_PREPROCESS_BYTES,
        ge=1,
        description="sum of the intermediates: decoded image, resize output, tensor",
    )


class DataConfig(_Section):
    """Where the images are and how they are split."""

    root: Path | None = Field(None, description="dataset root in the GenImage layout")
    manifest: Path | None = Field(
        None, description="a split manifest (Parquet) written by `genart data split`"
    )
    split_mode: Literal["stratified", "folders"] = "stratified"
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    generators: list[str] | None = Field(None, description="train only on these generators (None: all)")
    exclude_generators: list[str] = Field(default_factory=list, description="hold these generators out")
    max_per_generator: int | None = Field(
        None, ge=1, description="train on at most this many images per generator x label (seeded sample)"
    )


class AugmentConfig(_Section):
    """Training-time augmentations. The JPEG/rescale/blur trio counters detectors that flip on a re-save."""

    hflip: float = Field(0.5, ge=0, le=1)
    jpeg_p: float = Field(0.3, ge=0, le=1)
    jpeg_quality: tuple[int, int] = (65, 100)
    rescale_p: float = Field(0.2, ge=0, le=1)
    rescale_range: tuple[float, float] = (0.5, 1.0)
    short_side: tuple[int, int] | None = Field(
        None, description="resize the short side to a random length in this range (class-matched size)"
    )
    blur_p: float = Field(0.1, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 1.5)

    @field_validator("jpeg_quality")
    @classmethod
    def _quality_in_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 100:
            raise ValueError("jpeg_quality must be (low, high) with 1 <= low <= high <= 100")
        return v


class ModelConfig(_Section):
    """Which network, and how it sees its input."""

    name: str = "residual"
    task: Literal["detect", "attribute"] = Field(
        "detect", description="'detect': nature vs ai; 'attribute': nature vs each training generator"
    )
    pretrained: bool = True
    weights: Path | None = Field(None, description="a local checkpoint of pretrained weights")
    crop_policy: CropPolicy | None = Field(None, description="override the zoo's input policy")
    input_size: int | None = Field(None, description="override the zoo's input size (square)")
    drop_rate: float = 0.0
    taps: list[int] | None = Field(
        None, description="frozen-encoder models: blocks whose class token is read"
    )
    head_c: float = Field(
        0.003, gt=0, description="frozen-encoder models: inverse L2 strength of the linear head (sklearn's C)"
    )
    train_views: int = Field(
        1,
        ge=0,
        description="frozen-encoder models: augmented views per training image, besides the eval view",
    )
    sized_views: int = Field(
        0,
        ge=0,
        description="frozen-encoder models: class-matched eval views per training image (both classes get "
        "augment.short_side and the random JPEG alike, then the eval transform with its eval-time JPEG), so "
        "the size an image is re-saved at cannot tell the classes apart",
    )
    canonical_jpeg: int | None = Field(
        None,
        ge=1,
        le=100,
        description="re-save every image the model judges as JPEG at this quality, at the size decoding "
        "reduces it to (eval-time canonicalisation: whether an upload was PNG or JPEG leaves no trace); "
        "null: off",
    )


class TrainConfig(_Section):
    """The training run."""

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = 1e-4
    optimizer: OptimizerName = "adamw"
    schedule: ScheduleName = "cosine"
    warmup_epochs: int = 0
    probe_epochs: int = Field(0, ge=0, description="linear-probe epochs before unfreezing the backbone")
    early_stop_patience: int = Field(3, ge=0)
    num_workers: int = Field(
        2,
        ge=0,
        description="Ray Train workers; 0 runs the loop in-process (debugging; no checkpoint)",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    mixed_precision: bool = True
    max_failures: int = 2
    keep_checkpoints: int = 2
    storage_path: Path = Path("runs")
    experiment: str = "genart"
    run_name: str | None = None
    limit_train_batches: int | None = None
    threshold_max_fpr: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="choose the decision threshold on validation as the lowest whose false-positive rate "
        "(real images called AI) is at most this, instead of maximising Youden's J",
    )
    verbose: bool = Field(
        False, description="also print Ray Train's report of every rank and epoch, and the step losses"
    )


class TuneConfig(_Section):
    """The hyperparameter grid and its scheduler."""

    lr: list[float] = Field(default_factory=lambda: [1e-5, 5e-5, 1e-4, 5e-4, 1e-3])
    batch_size: list[int] = Field(default_factory=lambda: [16, 32, 64])
    optimizer: list[OptimizerName] | None = None
    schedule: list[ScheduleName] | None = None
    head_c: list[float] = Field(
        default_factory=lambda: [0.001, 0.003, 0.01, 0.03],
        description="frozen-encoder models: inverse L2 strengths of the head (instead of lr x batch size)",
    )
    max_concurrent: int | None = None
    grace_period: int = 1


class ServeModel(_Section):
    """One model deployment of the serving ensemble."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,40}$", description="the deployment's name, unique in the app"
    )
    artifact: str | None = Field(
        None,
        description="an artefact path or models:/ URI; the deployment's user_config may set or swap it",
    )
    weight: float = Field(1.0, ge=0, description="its weight under the 'weighted' rule")


class ServeConfig(_Section):
    """The serving application: ``build_app(args)`` validates its ``args`` against this.

    What may change while serving (artefacts, ensemble rule, weights, threshold, batching) lives in the
    deployments' ``user_config`` and is applied by ``reconfigure`` without a restart; these are the defaults.
    """

    models: list[ServeModel] = Field(min_length=1)
    rule: EnsembleRule = "mean"
    threshold: float | None = Field(
        None, ge=0, le=1, description="the ensemble's P(ai) threshold; None: the members' weighted mean"
    )
    ensemble: str | None = Field(
        None,
        description="an ensemble artefact from `genart ensemble`: its rule, weights (in `models` order) "
        "and validation-chosen threshold become the ingress' defaults, so the app gives the verdicts "
        "`genart evaluate` measured; rule, weights or threshold set in the user_config still win",
    )
    max_batch_size: int = Field(16, ge=1, description="@serve.batch: most images in one forward pass")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="@serve.batch: wait for a batch to fill")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="larger request bodies get 413")
    max_batch_images: int = Field(32, ge=1, description="most images in one /batch-predict")
    max_pixels: int = Field(MAX_IMAGE_PIXELS, ge=1, description="decompression-bomb cap, in pixels")
    url_timeout_s: float = Field(5.0, gt=0)
    url_allowlist: list[str] = Field(
        default_factory=list,
        description="hosts or CIDR networks that URL fetching may reach although private or loopback",
    )
    store_buffer: int = Field(
        10_000, ge=1, description="predictions held in memory while the database is down"
    )
    request_deadline_s: float = Field(
        20.0,
        gt=0,
        description="the ingress answers 504 JSON past this; keep it under http_options.request_timeout_s "
        "(30 s in serve_config.yaml) so that Serve's proxy never answers in plain text",
    )
    max_in_flight: int = Field(
        96,
        ge=1,
        description="requests the ingress works on at once; more get 503 JSON with Retry-After. Keep it "
        "under the ingress' max_ongoing_requests (128)",
    )

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v: list[ServeModel]) -> list[ServeModel]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        return v


class GenartConfig(_Section):
    """The whole experiment: what `genart train`, `genart tune` and `jobs/*.py` read."""

    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    serve: ServeConfig | None = None


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "genart"


class Settings(BaseSettings):
    """Deployment settings from the environment: where Ray, the database and MLflow are."""

    model_config = SettingsConfigDict(env_prefix="GENART_", extra="ignore")

    ray_address: str | None = Field(None, validation_alias="RAY_ADDRESS")
    database_url: str = Field("sqlite:///genart.db", validation_alias="DATABASE_URL")
    mlflow_tracking_uri: str = Field("sqlite:///mlflow.db", validation_alias="MLFLOW_TRACKING_URI")
    api_key: str | None = Field(None, description="GENART_API_KEY: required on every route but /health")
    log_dir: Path | None = Field(None, description="GENART_LOG_DIR: rotating JSON logs of the serving app")
    data_dir: Path = Field(
        default_factory=lambda: _default_data_dir(),
        description="GENART_DATA_DIR: local state that must outlive a process, such as the ingress' spool of "
        "predictions not yet in the database (default: $XDG_DATA_HOME/genart or ~/.local/share/genart)",
    )


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4", "model.name=lite0"]`` into a nested dict, values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``GENART__TRAIN__LR=1e-4`` overrides ``train.lr``: double underscores separate the levels."""
    items = [
        f"{key[len('GENART__') :].lower().replace('__', '.')}={value}"
        for key, value in environ.items()
        if key.startswith("GENART__")
    ]
    return parse_overrides(items)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    environ: dict[str, str] | None = None,
) -> GenartConfig:
    """Load a config: YAML file (optional), then ``GENART__SECTION__KEY`` env vars, then CLI overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config {path} must be a mapping of sections, got {type(raw).__name__}")
    raw = _merge(raw, _env_overrides(dict(os.environ if environ is None else environ)))
    raw = _merge(raw, parse_overrides(overrides))
    return GenartConfig.model_validate(raw)
