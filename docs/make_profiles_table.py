"""Write docs/profiles.md from tree_seg/profiles.toml and the configuration defaults.

Run ``python docs/make_profiles_table.py`` after changing a default or a
profile; ``tests/unit/test_docs.py`` fails while the page is out of date.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tree_seg.config import SegmentationConfig

STAGES = ("read", "backbone", "window", "cluster", "head_refine", "labels")
PROFILES = ("quick", "balanced", "quality")

HEADER = """# Profiles and defaults

`tree-seg segment --profile NAME` and `SegmentationConfig.from_profile(NAME)`
load a preset from `tree_seg/profiles.toml`. Options given on the command
line override the preset. The first column is the default without a profile.
Window and overlap are in pixels of the resampled image, `slic_size` in input
pixels, `guided_radius` in guide cells, `guide_stride` in pixels per guide
cell, and `elbow_threshold` is a fraction (the CLI takes percent).

| setting | default | quick | balanced | quality |
|---|---|---|---|---|
"""

FOOTER = """
The default backbone `auto` is DINOv3 ViT-S/16 when its weights are in the
Hugging Face cache and the weight-free `texture` backbone otherwise.

How the defaults were chosen: [results/README.md](results/README.md).
"""


def table_rows() -> list[str]:
    """Return one Markdown row per setting: default, then each profile."""
    configs = [SegmentationConfig()] + [SegmentationConfig.from_profile(name) for name in PROFILES]
    rows = []
    for stage in STAGES:
        for field in dataclasses.fields(getattr(configs[0], stage)):
            values = [getattr(getattr(config, stage), field.name) for config in configs]
            rows.append(f"| `{stage}.{field.name}` | " + " | ".join(f"`{value}`" for value in values) + " |")
    return rows


if __name__ == "__main__":
    page = HEADER + "\n".join(table_rows()) + "\n" + FOOTER
    Path(__file__).with_name("profiles.md").write_text(page, encoding="utf-8")
