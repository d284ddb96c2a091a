"""The top-level ``tree_seg`` namespace."""

import pytest

import tree_seg


def test_package_dir_lists_lazy_functions():
    names = dir(tree_seg)

    for name in ("segment", "segment_to_files", "evaluate_dataset", "SegmentationConfig", "__version__"):
        assert name in names


def test_package_lazy_function_loads_on_access():
    from tree_seg.core.segmentation import segment

    assert tree_seg.segment is segment


def test_package_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="has no attribute 'segmnet'"):
        tree_seg.segmnet  # noqa: B018
