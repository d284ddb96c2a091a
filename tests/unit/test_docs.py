"""Documentation that must agree with the code."""

from __future__ import annotations

import runpy
from pathlib import Path

from tree_seg.config import profile_names

ROOT = Path(__file__).resolve().parents[2]


def _table_rows() -> list[str]:
    script = runpy.run_path(str(ROOT / "docs" / "make_profiles_table.py"))
    return script["table_rows"]()


def test_docs_profile_table_matches_code():
    assert profile_names() == ["balanced", "quality", "quick"]
    text = (ROOT / "docs" / "profiles.md").read_text()
    for row in _table_rows():
        assert row in text, f"docs/profiles.md is out of date (run python docs/make_profiles_table.py): {row}"


def test_readme_test_command_is_ci_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest'
    assert command in readme
    assert command in ci
    first_lines = readme.split("## ")[0]
    assert "tree-seg segment examples/tcd_00000_image.tif -o out" in first_lines
    assert command in first_lines
