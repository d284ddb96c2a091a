"""Typer option types shared by the ``tree-seg`` commands.

Each alias carries the help text, unit and default of one option, so every
command that takes the option documents it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_V2 = "V2 head refinement"

BackboneOption = Annotated[str | None, typer.Option(help="Feature backbone: auto, texture, dinov3_vits16, dinov3_vits16plus, dinov3_vitb16, dinov3_vitl16, dinov3_vith16plus, dinov3_vit7b16, dinov3_vitl16_sat, dinov3_vit7b16_sat, dinov2_vits14, dinov2_vitb14, dinov2_vitl14, dinov2_vitg14, or the aliases small/small_plus/base/large/huge (DINOv3). auto uses DINOv3 ViT-S/16 when its weights are in the Hugging Face cache, else texture. [default: auto]", show_default=False)]

WeightsOption = Annotated[Path | None, typer.Option(help="Folder with a Hugging Face checkpoint (config.json, model.safetensors) for the backbone; without it the Hugging Face cache is searched.", show_default=False)]

ProfileOption = Annotated[str | None, typer.Option(help="Preset from profiles.toml: quick, balanced or quality; options given here override it.", show_default=False)]

ProfilesFileOption = Annotated[Path | None, typer.Option(help="Another TOML file of presets for --profile.", show_default=False)]

KOption = Annotated[int | None, typer.Option("--k", help="Fixed number of clusters K (2-254); skips the elbow rule.", show_default=False)]

KRangeOption = Annotated[str | None, typer.Option(help="Inclusive K range A:B searched by the elbow rule, 2 <= A <= B <= 254. [default: 2:12]", show_default=False)]

ElbowThresholdOption = Annotated[float | None, typer.Option(help="Relative inertia drop, in percent (above 0 and below 100), below which one more cluster is not worth it; the elbow is the K before the first K whose drop falls below it. [default: 5]", show_default=False)]

RefineOption = Annotated[str | None, typer.Option(help="Pixel snapping after labels are made: none or slic (majority label per SLIC superpixel). [default: none]", show_default=False)]

UpsamplingOption = Annotated[str | None, typer.Option(help="Patch scores to pixels: nearest (hard labels) or bilinear (soft scores, then argmax). [default: nearest]", show_default=False)]

SlicSizeOption = Annotated[int | None, typer.Option(help="SLIC superpixel side in input pixels (4-1024), for the SLIC snapping step (segment --refine slic, or the +slic methods of evaluate). [default: 16]", show_default=False)]

NodataOption = Annotated[str | None, typer.Option(help="Nodata value in input units (a pixel is nodata when all its bands equal it, within --nodata-tolerance), 'auto' (tag, alpha band, NaN, then a black or white border collar) or 'none'. [default: auto]", show_default=False)]

NodataToleranceOption = Annotated[float | None, typer.Option(help="Largest difference from --nodata, in input units, that still counts as nodata; >= 0. [default: 0]", show_default=False)]

CollarBufferOption = Annotated[int | None, typer.Option(help="Pixels (0-64) by which a value-based nodata mask grows after specks are removed, to cover a JPEG fringe. [default: 3]", show_default=False)]

BandsOption = Annotated[str | None, typer.Option(help="1-based band indices as in GDAL, e.g. 1,2,3. [default: bands 1-3, alpha excluded]", show_default=False)]

WindowOption = Annotated[int | None, typer.Option(help="Window side in pixels of the resampled image, up to 8192; a multiple of the patch size (16 DINOv3, 14 DINOv2). [default: 448]", show_default=False)]

OverlapOption = Annotated[int | None, typer.Option(help="Overlap between windows in pixels, from 0 to below --window; a multiple of the patch size. [default: 112]", show_default=False)]

ScaleOption = Annotated[str | None, typer.Option(help="Resampling factor before feature extraction (0.05-4; 0.5 halves each side), or auto: about --target-resolution ground metres per pixel for georeferenced rasters (projected or in degrees), without upsampling and keeping the shorter side at least 512 resampled pixels, else 1. Labels are written on the input grid. [default: auto]", show_default=False)]

TargetResolutionOption = Annotated[float | None, typer.Option(help="Ground pixel size in metres that --scale auto aims for, measured on the ellipsoid at the raster's centre (a Web Mercator metre at 50 degrees north is 0.64 m); > 0. [default: 0.2]", show_default=False)]

SeedOption = Annotated[int | None, typer.Option(help="Seed of K-means and patch sampling (0 to 2^32 - 1). [default: 0]", show_default=False)]

DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu or cuda. [default: auto]", show_default=False)]

BatchSizeOption = Annotated[int | None, typer.Option(help="Windows per forward pass (1-4096). [default: 8]", show_default=False)]

TauOption = Annotated[str | None, typer.Option(help=f"{_V2}: softmax temperature, in the units of squared distances between unit vectors (which lie in 0-4); > 0, or 'auto'. Smaller is harder; auto gives the median patch 0.95 for its nearest cluster. [default: 0.05]", show_default=False)]

AlphaOption = Annotated[float | None, typer.Option(help=f"{_V2}: weight of the spatial blend in [0, 1]. [default: 1.0]", show_default=False)]

IterationsOption = Annotated[int | None, typer.Option(help=f"{_V2}: E-steps, each followed by the blend, with a centroid update between two; 1-1000. [default: 1]", show_default=False)]

BlendOption = Annotated[str | None, typer.Option(help=f"{_V2}: neighbour (3 x 3 patch mean) or guided (image-guided filter at near-pixel resolution). [default: guided]", show_default=False)]

MetricsOption = Annotated[bool, typer.Option("--metrics", help="Print a per-stage table and record per-window timing, peak RSS and peak VRAM.")]

PicturesOption = Annotated[bool, typer.Option("--pictures/--no-pictures", help="Write the PNG pictures.")]

VerboseOption = Annotated[int, typer.Option("--verbose", "-v", count=True, show_default=False, help="Debug log output of tree_seg (per chunk and per window, from Dask workers too); -vv adds that of the libraries it uses.")]

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]

EngineOption = Annotated[str, typer.Option("--engine", help="Execution: dask (chunked, on a Dask cluster, with a resumable feature store), memory (the whole raster in this process), or auto: dask when any input is larger than one chunk or a Dask option (--workers, --chunk-size, --scheduler, --feature-store, --feature-dtype) is given, else memory.")]

WorkersOption = Annotated[int | None, typer.Option(help="Worker processes of the local Dask cluster (1-4096). [default: sized to the machine]", show_default=False)]

ChunkSizeOption = Annotated[int | None, typer.Option(help="Chunk side in input pixels for the Dask engine (64-65536), rounded up to whole window strides. Memory per worker grows with it. [default: 2048]", show_default=False)]

SchedulerOption = Annotated[str | None, typer.Option(help="Address of a running Dask scheduler (tcp://HOST:8786), or 'synchronous' to run the Dask engine in this process for debugging. [default: start a local cluster]", show_default=False)]

FeatureStoreOption = Annotated[Path | None, typer.Option(help="Zarr feature store: a .zarr path, or a folder for <stem>_features.zarr; a rerun with the same settings reuses it. [default: OUTDIR/<stem>_features.zarr]", show_default=False)]

FeatureDtypeOption = Annotated[str | None, typer.Option(help="dtype of the feature store: float16 (half the disk) or float32, which reproduces --engine memory exactly; float16 rounding changes the K-means fit a little, so labels and even the elbow's K can differ. [default: float16]", show_default=False)]

ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars of weight loading and of the Dask engine passes.")]
