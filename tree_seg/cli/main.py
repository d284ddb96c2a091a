"""The ``tree-seg`` command line."""

from __future__ import annotations

import glob
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tree_seg.cli.options import build_config, parse_bands, parse_k_range, parse_nodata, parse_tau
from tree_seg.config import SegmentationConfig, profile_names
from tree_seg.exceptions import TreeSegError

app = typer.Typer(
    name="tree-seg",
    help="Unsupervised segmentation of trees and vegetation in aerial orthomosaics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

logger = logging.getLogger("tree_seg.cli")

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".png", ".jpg", ".jpeg", ".jp2", ".img"}

_V1 = "V1.5 and V2"
_V2 = "V2 (--model head-refine) only"


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.captureWarnings(True)
    for noisy in ("distributed", "matplotlib", "PIL", "rasterio", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Expand files, folders (their rasters, sorted) and glob patterns into paths.

    Raises
    ------
    typer.BadParameter
        When an input matches nothing.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                raise typer.BadParameter(f"folder {item} holds no raster ({', '.join(sorted(RASTER_SUFFIXES))})")
            paths.extend(found)
        elif any(char in item for char in "*?["):
            found = sorted(Path(p) for p in glob.glob(item))
            if not found:
                raise typer.BadParameter(f"pattern {item!r} matches no file")
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def _print_stage_table(name: str, profile: dict[str, Any]) -> None:
    typer.echo(f"\n{name}: time per stage")
    typer.echo(f"  {'stage':<16}{'seconds':>10}")
    for stage, seconds in profile["stage_seconds"].items():
        typer.echo(f"  {stage:<16}{seconds:>10.2f}")
    typer.echo(f"  {'total':<16}{profile['total_seconds']:>10.2f}")
    typer.echo(f"  peak RSS {profile['peak_rss_mb']:.0f} MiB")
    if profile.get("peak_vram_mb") is not None:
        typer.echo(f"  peak VRAM {profile['peak_vram_mb']:.0f} MiB")
    if profile.get("seconds_per_window") is not None:
        typer.echo(f"  {profile['seconds_per_window']:.3f} s per window")


def _check_v2_options(config_method: str, v2_given: dict[str, Any]) -> None:
    given = [name for name, value in v2_given.items() if value is not None]
    if given and config_method != "head-refine":
        raise typer.BadParameter(
            f"{', '.join('--' + n for n in given)} only apply to --model head-refine; drop them or add --model head-refine"
        )


@app.command()
def segment(
    inputs: Annotated[list[str], typer.Argument(help="Raster files, folders of rasters, or glob patterns.", show_default=False)],
    outdir: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created when missing).")],
    model: Annotated[str | None, typer.Option("--model", help="Method: kmeans (V1.5) or head-refine (V2). [default: kmeans]", show_default=False)] = None,
    backbone: Annotated[str | None, typer.Option(help="Feature backbone: auto, texture, dinov3_vits16, dinov3_vitb16, dinov3_vitl16, dinov3_vith16plus, dinov3_vit7b16, dinov3_vitl16_sat, dinov2_vits14, dinov2_vitb14, dinov2_vitl14, dinov2_vitg14, or the aliases small/base/large/huge (DINOv3). auto uses DINOv3 ViT-S/16 when its weights are in the Hugging Face cache, else texture. [default: auto]", show_default=False)] = None,
    weights: Annotated[Path | None, typer.Option(help="Folder with a Hugging Face checkpoint (config.json, model.safetensors) for the backbone; without it the Hugging Face cache is searched.", show_default=False)] = None,
    profile: Annotated[str | None, typer.Option(help="Preset from profiles.toml: quick, balanced or quality; options given here override it.", show_default=False)] = None,
    profiles_file: Annotated[Path | None, typer.Option(help="Another TOML file of presets for --profile.", show_default=False)] = None,
    k: Annotated[int | None, typer.Option("--k", help="Fixed number of clusters K (2-254); skips the elbow rule.", show_default=False)] = None,
    k_range: Annotated[str | None, typer.Option(help="Inclusive K range A:B searched by the elbow rule. [default: 2:10]", show_default=False)] = None,
    elbow_threshold: Annotated[float | None, typer.Option(help="Relative inertia drop, in percent, below which one more cluster is not worth it; the elbow is the K before the first K whose drop falls below it. [default: 10]", show_default=False)] = None,
    refine: Annotated[str | None, typer.Option(help="Pixel snapping after labels are made: none or slic (majority label per SLIC superpixel). [default: none]", show_default=False)] = None,
    upsampling: Annotated[str | None, typer.Option(help="Patch scores to pixels: nearest (hard labels) or bilinear (soft scores, then argmax). [default: nearest]", show_default=False)] = None,
    slic_size: Annotated[int | None, typer.Option(help="SLIC superpixel side in input pixels, with --refine slic. [default: 16]", show_default=False)] = None,
    nodata: Annotated[str | None, typer.Option(help="Nodata value in input units (a pixel is nodata when all its bands equal it, within --nodata-tolerance), 'auto' (tag, alpha band, NaN, then a black or white border collar) or 'none'. [default: auto]", show_default=False)] = None,
    nodata_tolerance: Annotated[float | None, typer.Option(help="Largest difference from --nodata, in input units, that still counts as nodata. [default: 0]", show_default=False)] = None,
    collar_buffer: Annotated[int | None, typer.Option(help="Pixels by which a value-based nodata mask grows after specks are removed, to cover a JPEG fringe. [default: 3]", show_default=False)] = None,
    bands: Annotated[str | None, typer.Option(help="1-based band indices as in GDAL, e.g. 1,2,3. [default: bands 1-3, alpha excluded]", show_default=False)] = None,
    window: Annotated[int | None, typer.Option(help="Window side in pixels of the resampled image; a multiple of the patch size (16 DINOv3, 14 DINOv2). [default: 448]", show_default=False)] = None,
    overlap: Annotated[int | None, typer.Option(help="Overlap between windows in pixels; a multiple of the patch size. [default: 112]", show_default=False)] = None,
    scale: Annotated[float | None, typer.Option(help="Resampling factor before feature extraction (0.5 halves each side); labels are written on the input grid. [default: 1.0]", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of K-means and patch sampling. [default: 0]", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda. [default: auto]", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per forward pass. [default: 8]", show_default=False)] = None,
    tau: Annotated[str | None, typer.Option(help=f"{_V2}: softmax temperature on squared distances of unit vectors (range 0-4), > 0, or 'auto'. Smaller is harder. [default: auto]", show_default=False)] = None,
    alpha: Annotated[float | None, typer.Option(help=f"{_V2}: weight of the spatial blend in [0, 1]. [default: 0.5]", show_default=False)] = None,
    iterations: Annotated[int | None, typer.Option(help=f"{_V2}: most EM iterations, >= 1. [default: 5]", show_default=False)] = None,
    blend: Annotated[str | None, typer.Option(help=f"{_V2}: neighbour (3 x 3 patch mean) or guided (image-guided filter at near-pixel resolution). [default: guided]", show_default=False)] = None,
    metrics: Annotated[bool, typer.Option("--metrics", help="Print a per-stage table and record per-window timing, peak RSS and peak VRAM.")] = False,
    pictures: Annotated[bool, typer.Option("--pictures/--no-pictures", help="Write the PNG pictures.")] = True,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    """Segment rasters and write labels, metadata and pictures to OUTDIR.

    Each input gets OUTDIR/<stem>_<method>_labels.tif (uint8, 255 = nodata,
    the input's CRS and transform), _metadata.json and PNGs. A failed input is
    reported and the others go on; the exit code is 1 when any input failed.
    """
    _setup_logging(verbose, quiet)
    if k is not None and k_range is not None:
        raise typer.BadParameter("--k and --k-range conflict: give a fixed K or a range, not both")
    k_min, k_max = parse_k_range(k_range) if k_range else (None, None)

    v2_options = {"tau": tau, "alpha": alpha, "iterations": iterations, "blend": blend}
    config = build_config(
        profile=profile,
        profiles_file=profiles_file,
        given={
            "method": model,
            "metrics": metrics or None,
            "read": {
                "bands": parse_bands(bands) if bands else None,
                "nodata": parse_nodata(nodata) if nodata else None,
                "nodata_tolerance": nodata_tolerance,
                "collar_buffer": collar_buffer,
            },
            "backbone": {"name": backbone, "weights": weights, "device": device, "batch_size": batch_size},
            "window": {"window": window, "overlap": overlap, "scale": scale},
            "cluster": {
                "k": k, "k_min": k_min, "k_max": k_max, "seed": seed,
                "elbow_threshold": None if elbow_threshold is None else elbow_threshold / 100.0,
            },
            "head_refine": {**v2_options, "tau": parse_tau(tau) if tau else None},
            "labels": {"upsampling": upsampling, "refine": refine, "slic_size": slic_size},
        },
    )
    _check_v2_options(config.method, v2_options)
    if slic_size is not None and config.labels.refine != "slic":
        raise typer.BadParameter("--slic-size only applies with --refine slic")

    paths = expand_inputs(inputs)
    failures = run_batch(paths, outdir, config, show_metrics=metrics)
    if failures:
        raise typer.Exit(code=1)


def run_batch(paths: list[Path], outdir: Path, config: SegmentationConfig, *, show_metrics: bool) -> int:
    """Segment each path with one loaded backbone; return the number of failures."""
    from tree_seg.core.segmentation import segment_to_files
    from tree_seg.models import load_backbone

    try:
        backbone = load_backbone(config.backbone)
    except TreeSegError as error:
        typer.echo(f"error: {error}", err=True)
        return len(paths)

    rows: list[tuple[str, str, str]] = []
    for path in paths:
        try:
            run, files = segment_to_files(path, outdir, config, backbone=backbone)
        except (TreeSegError, OSError) as error:
            logger.error("failed on %s: %s", path, error)
            rows.append((str(path), "failed", str(error)))
            continue
        profile = run.profile.to_dict()
        rows.append((str(path), "ok", f"K={run.model.k}, {profile['total_seconds']:.1f} s -> {files['labels']}"))
        if show_metrics:
            _print_stage_table(path.name, profile)

    typer.echo(f"\nbackbone: {backbone.info()['name']}")
    for path_text, status, detail in rows:
        typer.echo(f"{status:<7} {path_text}: {detail}")
    failed = sum(1 for _, status, _ in rows if status != "ok")
    if len(rows) > 1 or failed:
        typer.echo(f"{len(rows) - failed} of {len(rows)} inputs segmented, {failed} failed")
    return failed


@app.command()
def profiles() -> None:
    """List the presets of --profile and their settings."""
    from tree_seg.config import load_profile

    for name in profile_names():
        typer.echo(f"[{name}]")
        for section, values in load_profile(name).items():
            typer.echo(f"  {section}: {values}")


def main() -> None:
    """Run the command line."""
    app()


if __name__ == "__main__":
    main()
