"""Parse command-line option strings and build a configuration from them.

Options left unset on the command line take the profile's value, then the
dataclass default. Parsing errors raise :class:`typer.BadParameter`, which
Typer prints as one line naming the option.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from tree_seg.config import SegmentationConfig, load_profile
from tree_seg.exceptions import ConfigurationError

__all__ = ["build_config", "echo_error", "flag_names", "parse_bands", "parse_k_range", "parse_nodata", "parse_scale", "parse_tau"]

# Configuration fields that a command-line option sets under another name.
_OPTIONS = {"k_min": "--k-range", "k_max": "--k-range", "method": "--model", "name": "--backbone",
            "weights": "--weights"}
_FIELDS = ("alpha", "batch_size", "blend", "chunk_size", "collar_buffer", "device", "feature_dtype", "iterations", "k",
           "nodata", "nodata_tolerance", "overlap", "refine", "scale", "scheduler", "seed", "slic_size", "target_resolution", "tau",
           "upsampling", "window", "workers")
_SECTION_FIELD = re.compile(r"\b(?:read|window|backbone|cluster|head_refine|labels|engine)\.(" + "|".join(_FIELDS) + r")\b(?=:)")
# A field inside "SomethingConfig(field=value)" is Python, for API users, and stays.
_FIELD_VALUE = re.compile(r"(?<!Config\()\b(" + "|".join(sorted([*_FIELDS, *_OPTIONS], key=len, reverse=True)) + r")=('([^']*)'|[^\s:,;)]+)")


def flag_names(message: str) -> str:
    """Rewrite ``field=value`` in a configuration message as the option, ``--field value``.

    The library's messages name dataclass fields, which a command-line user
    never typed. A ``section.field:`` key, as in a feature-store mismatch,
    becomes ``--field:``.
    """
    def option(match: re.Match[str]) -> str:
        field, value, quoted = match.group(1), match.group(2), match.group(3)
        flag = _OPTIONS.get(field, "--" + field.replace("_", "-"))
        if quoted is not None and (not quoted or quoted != quoted.strip()):
            # An empty value, or one with outer spaces, stays visible in quotes.
            return f"{flag} {value}"
        return f"{flag} {quoted if quoted is not None else value}"

    message = _SECTION_FIELD.sub(lambda match: "--" + match.group(1).replace("_", "-"), message)
    return _FIELD_VALUE.sub(option, message)


def parse_bands(text: str) -> tuple[int, ...]:
    """Parse ``"1,2,3"`` into 1-based band indices."""
    try:
        bands = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"invalid --bands {text!r}: use 1-based indices such as 1,2,3") from None
    if not bands or min(bands) < 1:
        raise typer.BadParameter(f"invalid --bands {text!r}: use 1-based indices such as 1,2,3")
    return bands


def parse_k_range(text: str) -> tuple[int, int]:
    """Parse ``"A:B"`` into an inclusive K range."""
    parts = text.split(":")
    try:
        low, high = (int(part) for part in parts)
    except ValueError:
        raise typer.BadParameter(f"invalid --k-range {text!r}: use A:B, e.g. 2:10") from None
    if low < 2 or high < low:
        raise typer.BadParameter(f"invalid --k-range {text!r}: need 2 <= A <= B, e.g. 2:10")
    return low, high


def parse_nodata(text: str) -> float | str:
    """Parse ``--nodata``: a number, ``auto`` or ``none``."""
    if text.lower() in ("auto", "none"):
        return text.lower()
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"invalid --nodata {text!r}: use a number, 'auto' or 'none'") from None


def parse_scale(text: str) -> float | str:
    """Parse ``--scale``: a positive number or ``auto``."""
    if text.lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"invalid --scale {text!r}: use a number such as 0.5, or 'auto'") from None


def parse_tau(text: str) -> float | str:
    """Parse ``--tau``: a positive number or ``auto``."""
    if text.lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"invalid --tau {text!r}: use a positive number or 'auto'") from None
    if not value > 0:
        raise typer.BadParameter(f"invalid --tau {text!r}: tau must be > 0 (or 'auto')")
    return value


def _merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in updates.items():
        if isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    return merged


def build_config(
    *,
    profile: str | None,
    profiles_file: Path | None,
    given: dict[str, dict[str, Any] | Any],
) -> SegmentationConfig:
    """Build the configuration from a profile and the options that were given.

    Parameters
    ----------
    profile : str or None
        Preset name from ``profiles.toml``; None starts from the defaults.
    profiles_file : Path or None
        Another TOML file of presets.
    given : dict
        Options set on the command line, as ``{"stage": {"field": value}}``;
        entries whose value is None were not given and are dropped.

    Raises
    ------
    typer.BadParameter
        When a value is out of range or options conflict.
    """
    cleaned: dict[str, Any] = {}
    for key, value in given.items():
        if isinstance(value, dict):
            section = {name: v for name, v in value.items() if v is not None}
            if section:
                cleaned[key] = section
        elif value is not None:
            cleaned[key] = value

    if profiles_file is not None and profile is None:
        raise typer.BadParameter("--profiles-file needs --profile NAME to choose a preset from it")
    try:
        updates = load_profile(profile, profiles_file) if profile else {}
        return SegmentationConfig().with_updates(_merge(updates, cleaned))
    except ConfigurationError as error:
        raise typer.BadParameter(flag_names(str(error))) from None


def echo_error(error: Exception) -> None:
    """Print a library error on standard error, with option names for the configuration fields it names."""
    typer.echo(f"Error: {flag_names(str(error))}", err=True)
