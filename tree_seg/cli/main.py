"""The ``tree-seg`` command line."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from tree_seg.cli import params as p
from tree_seg.cli.batch import print_summary, run_batch, run_batch_dask, sigint_restored
from tree_seg.cli.options import (
    build_config,
    echo_error,
    flag_names,
    parse_bands,
    parse_k_range,
    parse_nodata,
    parse_scale,
    parse_tau,
)
from tree_seg.cli.paths import check_output_names, check_rasters, expand_inputs, output_folder
from tree_seg.config import SegmentationConfig, profile_names
from tree_seg.exceptions import ConfigurationError, RefinementFallbackWarning, TreeSegError
from tree_seg.log_context import InputTagFilter

app = typer.Typer(
    name="tree-seg",
    help="Unsupervised segmentation of trees and vegetation in aerial orthomosaics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

logger = logging.getLogger("tree_seg.cli")


def _print_version(value: bool) -> None:
    if value:
        from tree_seg import __version__

        typer.echo(f"tree-seg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", callback=_print_version,
                                          is_eager=True)] = False,
) -> None:
    """Unsupervised segmentation of trees and vegetation in aerial orthomosaics."""


def _setup_logging(verbose: int, quiet: bool, progress: bool = True) -> None:
    if verbose and quiet:
        raise typer.BadParameter("--verbose and --quiet conflict: give one of them")
    level = logging.WARNING if quiet else logging.INFO
    if verbose >= 2:
        level = logging.DEBUG
    if quiet or not progress:
        # Read by huggingface_hub and transformers when they are imported,
        # which happens later, when the backbone loads.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(input_tag)s%(message)s",
                        stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, InputTagFilter) for existing in handler.filters):
            handler.addFilter(InputTagFilter())
    logging.captureWarnings(True)
    # The library both logs and warns about a fallback, so the warning is
    # muted here to print it once.
    warnings.filterwarnings("ignore", category=RefinementFallbackWarning)
    # Log warnings as "Category: message", without the source line that
    # Python's default format appends.
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}"
    # One -v shows tree_seg's debug records, and a second one every library's.
    if verbose < 2:
        for noisy in ("distributed", "matplotlib", "PIL", "rasterio", "urllib3", "httpx"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if verbose >= 1:
        logging.getLogger("tree_seg").setLevel(logging.DEBUG)


def _check_unused_options(config: SegmentationConfig, options: dict[str, Any]) -> None:
    """Reject options that the resolved configuration would ignore."""
    if config.cluster.k is not None:
        source = "--k" if options.get("k") is not None else "the profile's fixed k"
        _reject_unused(options, ("k_range", "elbow_threshold"),
                      f"when the elbow rule chooses K, and {source} fixes it: drop one of them")
    if options.get("target_resolution") is not None and config.window.scale != "auto":
        raise typer.BadParameter(f"--target-resolution only applies with --scale auto, not --scale "
                                 f"{config.window.scale:g}: drop one of them")
    if config.read.nodata == "none":
        _reject_unused(options, ("nodata_tolerance", "collar_buffer"),
                      "to a nodata value, and --nodata none masks nothing: drop them or give --nodata a value")


def _reject_unused(options: dict[str, Any], names: tuple[str, ...], condition: str) -> None:
    # Raises "--a and --b only apply <condition>" for those of names that the
    # user passed.
    passed = [_flag(name) for name in names if options.get(name) is not None]
    if passed:
        verb = "applies" if len(passed) == 1 else "apply"
        raise typer.BadParameter(f"{' and '.join(passed)} only {verb} {condition}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_v2_options(config_method: str, v2_given: dict[str, Any]) -> None:
    given = [name for name, value in v2_given.items() if value is not None]
    if given and config_method != "head-refine":
        raise typer.BadParameter(
            f"{', '.join('--' + n for n in given)}: these options apply only to --model head-refine; drop them or use --model head-refine"
        )


def _config_from_options(
    *,
    method: str | None,
    profile: str | None,
    profiles_file: Path | None,
    options: dict[str, Any],
) -> SegmentationConfig:
    """Build the configuration from the options shared by segment, evaluate and sweep."""
    o = options
    k_min, k_max = parse_k_range(o["k_range"]) if o.get("k_range") else (None, None)
    threshold = o.get("elbow_threshold")
    if threshold is not None and not 0.0 < threshold < 100.0:
        raise typer.BadParameter(f"invalid --elbow-threshold {threshold:g}: give a percentage above 0 and below 100, "
                                 "e.g. 5")
    if threshold is not None and threshold < 1.0:
        # The metadata stores the threshold as a fraction (0.05 for 5%), so a
        # value copied from it would be 100 times too small here.
        logger.warning("--elbow-threshold %g is in percent, i.e. a %g%% drop; for a 5%% threshold pass 5",
                       threshold, threshold)
    tau = o.get("tau")

    config = build_config(
        profile=profile,
        profiles_file=profiles_file,
        given={
            "method": method,
            "metrics": o.get("metrics") or None,
            "read": {
                "bands": parse_bands(o["bands"]) if o.get("bands") else None,
                "nodata": parse_nodata(o["nodata"]) if o.get("nodata") else None,
                "nodata_tolerance": o.get("nodata_tolerance"),
                "collar_buffer": o.get("collar_buffer"),
            },
            "backbone": {
                "name": o.get("backbone"), "weights": o.get("weights"),
                "device": o.get("device"), "batch_size": o.get("batch_size"),
            },
            "window": {
                "window": o.get("window"), "overlap": o.get("overlap"),
                "scale": parse_scale(o["scale"]) if o.get("scale") else None,
                "target_resolution": o.get("target_resolution"),
            },
            "cluster": {
                "k": o.get("k"), "k_min": k_min, "k_max": k_max, "seed": o.get("seed"),
                "elbow_threshold": None if threshold is None else threshold / 100.0,
            },
            "head_refine": {
                "tau": parse_tau(tau) if isinstance(tau, str) else tau,
                "alpha": o.get("alpha"), "iterations": o.get("iterations"), "blend": o.get("blend"),
            },
            "labels": {"upsampling": o.get("upsampling"), "refine": o.get("refine"), "slic_size": o.get("slic_size")},
            "engine": {
                "chunk_size": o.get("chunk_size"), "workers": o.get("workers"),
                "scheduler": o.get("scheduler"), "feature_store": o.get("feature_store"),
                "feature_dtype": o.get("feature_dtype"),
            },
        },
    )
    if o.get("slic_size") is not None and config.labels.refine != "slic":
        raise typer.BadParameter("--slic-size only applies with --refine slic")
    _check_unused_options(config, o)
    if o.get("device") is not None and config.backbone.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise typer.BadParameter(f"--device {config.backbone.device}: CUDA is not available here; "
                                     "use --device auto or cpu")
    _check_window_early(config)
    return config


def _check_window_early(config: SegmentationConfig) -> None:
    """Check window and overlap against the backbone's patch size before any model loads."""
    from tree_seg.features.grid import check_patch_multiple
    from tree_seg.models.registry import resolve_backbone, valid_backbone_names

    # "auto" resolves to DINOv3 ViT-S/16 or the texture backbone, both 16 px.
    name = config.backbone.name
    if name.strip().lower() not in valid_backbone_names():
        raise typer.BadParameter(f"unknown backbone {name!r}: expected one of {', '.join(valid_backbone_names())}")
    try:
        patch_size = 16 if name == "auto" else resolve_backbone(name).patch_size
        check_patch_multiple("window", config.window.window, patch_size)
        check_patch_multiple("overlap", config.window.overlap, patch_size)
    except ConfigurationError as error:
        raise typer.BadParameter(flag_names(str(error))) from None


@app.command()
def segment(
    inputs: Annotated[list[str], typer.Argument(help="Raster files, folders of rasters, or glob patterns.", show_default=False, metavar="INPUT")],
    outdir: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created when missing).")],
    model: Annotated[str | None, typer.Option("--model", help="Method: head-refine (V2: K-means refined by the image-guided soft assignment) or kmeans (V1.5). [default: head-refine]", show_default=False)] = None,
    backbone: p.BackboneOption = None,
    weights: p.WeightsOption = None,
    profile: p.ProfileOption = None,
    profiles_file: p.ProfilesFileOption = None,
    k: p.KOption = None,
    k_range: p.KRangeOption = None,
    elbow_threshold: p.ElbowThresholdOption = None,
    refine: p.RefineOption = None,
    upsampling: p.UpsamplingOption = None,
    slic_size: p.SlicSizeOption = None,
    nodata: p.NodataOption = None,
    nodata_tolerance: p.NodataToleranceOption = None,
    collar_buffer: p.CollarBufferOption = None,
    bands: p.BandsOption = None,
    window: p.WindowOption = None,
    overlap: p.OverlapOption = None,
    scale: p.ScaleOption = None,
    target_resolution: p.TargetResolutionOption = None,
    seed: p.SeedOption = None,
    device: p.DeviceOption = None,
    batch_size: p.BatchSizeOption = None,
    tau: p.TauOption = None,
    alpha: p.AlphaOption = None,
    iterations: p.IterationsOption = None,
    blend: p.BlendOption = None,
    engine: p.EngineOption = "auto",
    workers: p.WorkersOption = None,
    chunk_size: p.ChunkSizeOption = None,
    scheduler: p.SchedulerOption = None,
    feature_store: p.FeatureStoreOption = None,
    feature_dtype: p.FeatureDtypeOption = None,
    progress: p.ProgressOption = True,
    metrics: p.MetricsOption = False,
    pictures: p.PicturesOption = True,
    verbose: p.VerboseOption = 0,
    quiet: p.QuietOption = False,
) -> None:
    """Segment rasters and write labels, metadata and pictures to OUTDIR.

    Each input gets OUTDIR/<stem>_<method>_labels.tif (uint8, 255 = nodata,
    the input's CRS and transform), _metadata.json and PNGs. A failed input is
    reported and the others go on; the exit code is 1 when any input failed.
    """
    _setup_logging(verbose, quiet, progress)
    options = {name: value for name, value in locals().items() if name not in ("inputs", "outdir", "model", "profile", "profiles_file")}
    config = _config_from_options(method=model, profile=profile, profiles_file=profiles_file, options=options)
    _check_v2_options(config.method, {"tau": tau, "alpha": alpha, "iterations": iterations, "blend": blend})

    paths, problems = expand_inputs(inputs)
    shapes, unreadable = check_rasters(paths, config.read.bands)
    paths = list(shapes)
    problems += unreadable
    check_output_names(paths)
    # On standard output, with the summary's lines for inputs that fail later.
    for item, reason in problems:
        typer.echo(f"failed  {item}: {reason}")
    if not paths:
        print_summary(len(problems), len(problems))
        raise typer.Exit(code=1)
    dask_options = {"workers": workers, "chunk_size": chunk_size, "scheduler": scheduler, "feature_store": feature_store,
                    "feature_dtype": feature_dtype}
    with sigint_restored(), output_folder(outdir):
        try:
            if _use_dask(engine, list(shapes.values()), config, dask_options):
                failures = run_batch_dask(paths, outdir, config, show_metrics=metrics, pictures=pictures,
                                          progress=progress and not quiet, failed_before=len(problems))
            else:
                failures = run_batch(paths, outdir, config, show_metrics=metrics, pictures=pictures,
                                     failed_before=len(problems))
        except KeyboardInterrupt:
            # Interrupted outside an input, e.g. while the pipeline was imported.
            typer.echo("\ninterrupted before any input finished", err=True)
            raise typer.Exit(code=130) from None
        if failures or problems:
            raise typer.Exit(code=1)


def _use_dask(engine: str, shapes: list[tuple[int, int]], config: SegmentationConfig,
              dask_options: dict[str, Any]) -> bool:
    """Decide between the Dask engine and the in-memory pipeline (see ``--engine``)."""
    if engine not in ("auto", "dask", "memory"):
        raise typer.BadParameter(f"invalid --engine {engine!r}: use auto, dask or memory")
    given = [_flag(name) for name, value in dask_options.items() if value is not None]
    if engine == "memory":
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: these options apply only to the Dask engine; drop them or use --engine dask")
        return False
    if dask_options.get("workers") is not None and dask_options.get("scheduler") is not None:
        raise typer.BadParameter("--workers only sizes the local cluster that tree-seg starts; drop it with "
                                 "--scheduler, whose workers are set where it runs")
    feature_store = dask_options.get("feature_store")
    if feature_store is not None and Path(feature_store).is_file():
        raise typer.BadParameter(f"--feature-store {feature_store} is a file: pass a .zarr store or a folder")
    if engine == "dask" or given:
        return True
    return any(max(shape) > config.engine.chunk_size for shape in shapes)


def _shared_options(scope: dict[str, Any]) -> dict[str, Any]:
    skip = {"inputs", "outdir", "model", "profile", "profiles_file", "dataset", "source", "mask", "taus", "alphas",
            "progress"}
    return {name: value for name, value in scope.items() if name not in skip}


def _format_score(value: Any) -> str:
    return "   n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:6.3f}"


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="Folder with images/ and masks/ whose files pair by stem.", show_default=False, metavar="DATASET")],
    outdir: Annotated[Path, typer.Option("--output", "-o", help="Output folder for results.json, results.csv and pictures.")],
    model: Annotated[list[str] | None, typer.Option("--model", help="Method to score; repeat to compare: kmeans, head-refine, kmeans+slic, head-refine+slic. [default: all four]", show_default=False)] = None,
    backbone: p.BackboneOption = None,
    weights: p.WeightsOption = None,
    profile: p.ProfileOption = None,
    profiles_file: p.ProfilesFileOption = None,
    k: p.KOption = None,
    k_range: p.KRangeOption = None,
    elbow_threshold: p.ElbowThresholdOption = None,
    upsampling: p.UpsamplingOption = None,
    slic_size: p.SlicSizeOption = None,
    nodata: p.NodataOption = None,
    nodata_tolerance: p.NodataToleranceOption = None,
    collar_buffer: p.CollarBufferOption = None,
    bands: p.BandsOption = None,
    window: p.WindowOption = None,
    overlap: p.OverlapOption = None,
    scale: p.ScaleOption = None,
    target_resolution: p.TargetResolutionOption = None,
    seed: p.SeedOption = None,
    device: p.DeviceOption = None,
    batch_size: p.BatchSizeOption = None,
    tau: p.TauOption = None,
    alpha: p.AlphaOption = None,
    iterations: p.IterationsOption = None,
    blend: p.BlendOption = None,
    pictures: p.PicturesOption = True,
    progress: p.ProgressOption = True,
    verbose: p.VerboseOption = 0,
    quiet: p.QuietOption = False,
) -> None:
    """Score methods on a labelled dataset folder: mIoU, boundary F, pixel accuracy.

    Features are computed once per image and reused by every method.
    """
    from tree_seg.evaluation.harness import evaluate_dataset, parse_variant
    from tree_seg.exceptions import ConfigurationError

    _setup_logging(verbose, quiet, progress)
    options = _shared_options(locals())
    if slic_size is not None:
        if not any(name.endswith("+slic") for name in (model or ["+slic"])):
            raise typer.BadParameter("--slic-size only applies to +slic methods, e.g. --model kmeans+slic")
        options["refine"] = "slic"
    config = _config_from_options(method=None, profile=profile, profiles_file=profiles_file, options=options)
    try:
        methods = [parse_variant(name).name for name in (model or ["kmeans", "head-refine", "kmeans+slic", "head-refine+slic"])]
    except ConfigurationError as error:
        raise typer.BadParameter(str(error)) from None
    if not any(name.startswith("head-refine") for name in methods):
        _check_v2_options("kmeans", {"tau": tau, "alpha": alpha, "iterations": iterations, "blend": blend})
    with output_folder(outdir):
        try:
            results = evaluate_dataset(dataset, outdir, config, methods=methods, pictures=pictures)
        except TreeSegError as error:
            echo_error(error)
            raise typer.Exit(code=1) from None

    typer.echo(f"\n{'method':<20}{'mIoU m2o':>10}{'mIoU hung':>11}{'bound. F':>10}{'pix acc':>9}{'K':>10}{'seconds':>9}")
    for name, summary in results["methods"].items():
        ks = ",".join(str(v) for v in summary["k"])
        typer.echo(
            f"{name:<20}{_format_score(summary['miou_many_to_one']):>10}{_format_score(summary['miou_hungarian']):>11}"
            f"{_format_score(summary['boundary_f']):>10}{_format_score(summary['pixel_accuracy']):>9}{ks:>10}"
            f"{summary['total_seconds']:>9.1f}"
        )
    typer.echo(f"\nwrote {outdir / 'results.json'}")


def _parse_list(text: str, parse: Any, option: str) -> list[Any]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise typer.BadParameter(f"invalid {option} {text!r}: give comma-separated values")
    return [parse(value) for value in values]


def _parse_sweep_tau(text: str) -> float | str:
    try:
        return parse_tau(text)
    except typer.BadParameter as error:
        raise typer.BadParameter(str(error).replace("invalid --tau", "invalid --taus value", 1)) from None


def _parse_alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"invalid --alphas value {text!r}: use numbers in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"invalid --alphas value {text!r}: alpha must lie in [0, 1]")
    return value


@app.command()
def sweep(
    source: Annotated[Path, typer.Argument(help="Raster to sweep on.", show_default=False, metavar="SOURCE")],
    outdir: Annotated[Path, typer.Option("--output", "-o", help="Output folder for sweep.csv and sweep.json.")],
    taus: Annotated[str, typer.Option("--taus", help="Comma-separated tau values (> 0, or auto).")] = "auto,0.05,0.1,0.2",
    alphas: Annotated[str, typer.Option("--alphas", help="Comma-separated alpha values in [0, 1].")] = "0,0.5,1",
    mask: Annotated[Path | None, typer.Option(help="Ground-truth mask on the raster's grid; adds mIoU and boundary F columns.", show_default=False)] = None,
    backbone: p.BackboneOption = None,
    weights: p.WeightsOption = None,
    profile: p.ProfileOption = None,
    profiles_file: p.ProfilesFileOption = None,
    k: p.KOption = None,
    k_range: p.KRangeOption = None,
    elbow_threshold: p.ElbowThresholdOption = None,
    upsampling: p.UpsamplingOption = None,
    nodata: p.NodataOption = None,
    nodata_tolerance: p.NodataToleranceOption = None,
    collar_buffer: p.CollarBufferOption = None,
    bands: p.BandsOption = None,
    window: p.WindowOption = None,
    overlap: p.OverlapOption = None,
    scale: p.ScaleOption = None,
    target_resolution: p.TargetResolutionOption = None,
    seed: p.SeedOption = None,
    device: p.DeviceOption = None,
    batch_size: p.BatchSizeOption = None,
    iterations: p.IterationsOption = None,
    blend: p.BlendOption = None,
    progress: p.ProgressOption = True,
    verbose: p.VerboseOption = 0,
    quiet: p.QuietOption = False,
) -> None:
    """Run V2 for every (tau, alpha) pair on features extracted once.

    The first row is V1.5 (kmeans) on the same features and K-means fit.
    """
    from tree_seg.evaluation.sweep import sweep_head_refine

    _setup_logging(verbose, quiet, progress)
    tau_values = _parse_list(taus, _parse_sweep_tau, "--taus")
    alpha_values = _parse_list(alphas, _parse_alpha, "--alphas")
    config = _config_from_options(method="head-refine", profile=profile, profiles_file=profiles_file,
                                  options=_shared_options(locals()))
    with output_folder(outdir):
        try:
            result = sweep_head_refine(source, outdir, config, taus=tau_values, alphas=alpha_values, mask_path=mask)
        except TreeSegError as error:
            echo_error(error)
            raise typer.Exit(code=1) from None

    kmeans = result.kmeans
    typer.echo(f"\n{'tau':>8}{'tau used':>10}{'alpha':>7}{'clusters':>10}{'iters':>7}{'mIoU':>8}{'bound. F':>10}")
    typer.echo(f"{'kmeans':>8}{'-':>10}{'-':>7}{kmeans['clusters_used']:>10}{'-':>7}"
               f"{_format_score(kmeans['miou_many_to_one']):>8}{_format_score(kmeans['boundary_f']):>10}")
    for row in result.rows:
        typer.echo(
            f"{row['tau']!s:>8}{row['tau_used']:>10.4f}{row['alpha']:>7.2f}{row['clusters_used']:>10}"
            f"{row['iterations_run']:>7}{_format_score(row['miou_many_to_one']):>8}{_format_score(row['boundary_f']):>10}"
        )
    if mask is None:
        typer.echo("\nno --mask: scores are n/a; pass a ground-truth mask to compare the settings")
    typer.echo(f"\nwrote {outdir / 'sweep.csv'} and {outdir / 'sweep.json'}")


# Units of the profile fields that have one, as in docs/profiles.md.
_PROFILE_UNITS = {"window": "px", "overlap": "px", "target_resolution": "m", "collar_buffer": "px", "slic_size": "px",
                  "chunk_size": "px", "guided_radius": "cells", "guide_stride": "px"}


@app.command()
def profiles(profiles_file: p.ProfilesFileOption = None) -> None:
    """List the presets of --profile and the settings each one sets.

    A setting a preset leaves out keeps its default (see --help of segment).
    Units, where a preset sets them: window, overlap and guide_stride in
    pixels of the resampled image; slic_size, collar_buffer and chunk_size
    in input pixels; target_resolution in ground metres; elbow_threshold as
    a fraction.
    """
    from tree_seg.config import load_profile

    try:
        names = profile_names(profiles_file)
    except ConfigurationError as error:
        raise typer.BadParameter(str(error)) from None
    for name in names:
        typer.echo(f"[{name}]")
        for section, values in load_profile(name, profiles_file).items():
            settings = ", ".join(
                f"{key}={value}" + (f" {_PROFILE_UNITS[key]}" if key in _PROFILE_UNITS else "")
                for key, value in values.items()
            )
            typer.echo(f"  {section}: {settings}")


_terminated_by: int | None = None
"""The termination signal received, once SIGTERM has arrived."""


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds the stack, so the writers remove their temporary
    # files. The default SIGTERM action would leave them behind.
    global _terminated_by
    _terminated_by = signum
    raise SystemExit(128 + signum)


def main() -> None:
    """Run the command line."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        app()
    except Exception:
        # A SystemExit raised while a C extension module initialises comes
        # back as an ImportError, so the signal's exit code is restored here.
        if _terminated_by is not None:
            raise SystemExit(128 + _terminated_by) from None
        raise


if __name__ == "__main__":
    main()
