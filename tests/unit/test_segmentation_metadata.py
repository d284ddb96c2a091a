"""The V2 record in the run metadata (head_refine_metadata)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tree_seg.config import SegmentationConfig
from tree_seg.core.segmentation import head_refine_metadata


def _refinement(iterations_run: int, converged: bool) -> SimpleNamespace:
    return SimpleNamespace(tau=0.05, iterations_run=iterations_run, converged=converged, fell_back=False,
                           fallback_reason=None, cell_size=4, priors=np.array([0.25, 0.75], dtype=np.float32))


@pytest.mark.parametrize(("iterations_run", "converged", "m_steps", "recorded"), [
    (1, False, 0, None),
    (3, True, 2, True),
    (5, False, 4, False),
])
def test_metadata_records_m_steps_and_convergence(iterations_run, converged, m_steps, recorded):
    config = SegmentationConfig().with_updates({"head_refine": {"iterations": 5}})

    record = head_refine_metadata(_refinement(iterations_run, converged), config)

    assert record["iterations"] == 5
    assert record["iterations_run"] == iterations_run
    assert record["m_steps"] == m_steps
    assert record["converged"] is recorded
    assert record["priors"] == [0.25, 0.75]
