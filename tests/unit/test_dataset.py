"""Tests of tree_seg.evaluation.dataset on tiny dataset folders."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from tree_seg.evaluation.dataset import Pair, load_dataset, read_mask
from tree_seg.exceptions import DatasetError

UTM_32N = CRS.from_epsg(32632)
ONE_METRE_GRID = Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 6000000.0)


def _write_tif(
    path: Path, values: np.ndarray, *, crs: CRS | None = UTM_32N, transform: Affine = ONE_METRE_GRID
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = values if values.ndim == 3 else values[np.newaxis]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            height=bands.shape[1],
            width=bands.shape[2],
            count=bands.shape[0],
            dtype=bands.dtype,
            crs=crs,
            transform=transform,
        ) as dst:
            dst.write(bands)
    return path


def _write_png(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="PNG", height=values.shape[0], width=values.shape[1], count=1, dtype="uint8"
        ) as dst:
            dst.write(values[np.newaxis])
    return path


def _image(height: int = 4, width: int = 4) -> np.ndarray:
    return np.zeros((3, height, width), dtype=np.uint8)


def _mask(height: int = 4, width: int = 4) -> np.ndarray:
    return np.zeros((height, width), dtype=np.uint8)


def _read_with_image_grid(pair: Pair) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(pair.image_path) as image:
            shape, crs, transform = image.shape, image.crs, image.transform
    return read_mask(pair, image_shape=shape, image_crs=crs, image_transform=transform)


def test_load_dataset_pairs_by_stem(tmp_path: Path) -> None:
    _write_tif(tmp_path / "images" / "tile_a_image.tif", _image())
    _write_tif(tmp_path / "masks" / "tile_a_mask.tif", _mask())
    _write_tif(tmp_path / "images" / "b.tif", _image())
    _write_png(tmp_path / "masks" / "b.png", _mask())
    (tmp_path / "images" / "notes.txt").write_text("not a raster")

    dataset = load_dataset(tmp_path)

    assert [pair.stem for pair in dataset.pairs] == ["b", "tile_a"]
    assert dataset.pairs[0].image_path == tmp_path / "images" / "b.tif"
    assert dataset.pairs[0].mask_path == tmp_path / "masks" / "b.png"
    assert dataset.pairs[1].image_path == tmp_path / "images" / "tile_a_image.tif"
    assert dataset.pairs[1].mask_path == tmp_path / "masks" / "tile_a_mask.tif"
    assert dataset.class_names is None
    assert dataset.root == tmp_path


def test_load_dataset_missing_mask_names_image(tmp_path: Path) -> None:
    _write_tif(tmp_path / "images" / "a_image.tif", _image())
    _write_tif(tmp_path / "masks" / "a_mask.tif", _mask())
    _write_tif(tmp_path / "images" / "c_image.tif", _image())

    with pytest.raises(DatasetError, match=r"no mask in .*masks for .*c_image\.tif; add <stem>_mask\.tif"):
        load_dataset(tmp_path)


def test_load_dataset_missing_image_names_mask(tmp_path: Path) -> None:
    _write_tif(tmp_path / "images" / "a.tif", _image())
    _write_tif(tmp_path / "masks" / "a.tif", _mask())
    _write_tif(tmp_path / "masks" / "d_mask.tif", _mask())

    with pytest.raises(DatasetError, match=r"no image in .*images for .*d_mask\.tif"):
        load_dataset(tmp_path)


def test_load_dataset_missing_masks_folder(tmp_path: Path) -> None:
    _write_tif(tmp_path / "images" / "a.tif", _image())

    with pytest.raises(DatasetError, match=r"masks is missing; a dataset folder needs images/ and masks/"):
        load_dataset(tmp_path)


def test_load_dataset_no_pairs(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()

    with pytest.raises(DatasetError, match="has no image-mask pairs"):
        load_dataset(tmp_path)


def test_load_dataset_duplicate_stem(tmp_path: Path) -> None:
    _write_tif(tmp_path / "images" / "a.tif", _image())
    _write_tif(tmp_path / "images" / "a_image.tif", _image())
    _write_tif(tmp_path / "masks" / "a.tif", _mask())

    with pytest.raises(DatasetError, match=r"a\.tif and .*a_image\.tif both pair as 'a'"):
        load_dataset(tmp_path)


def _single_pair_folder(root: Path) -> None:
    _write_tif(root / "images" / "a.tif", _image())
    _write_tif(root / "masks" / "a.tif", _mask())


def test_load_dataset_classes_txt(tmp_path: Path) -> None:
    _single_pair_folder(tmp_path)
    (tmp_path / "classes.txt").write_text("other\ntree\n\n")

    assert load_dataset(tmp_path).class_names == ["other", "tree"]


def test_load_dataset_classes_json(tmp_path: Path) -> None:
    _single_pair_folder(tmp_path)
    (tmp_path / "classes.json").write_text('{"1": "tree", "0": "other"}')

    assert load_dataset(tmp_path).class_names == ["other", "tree"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"0": "other", "2": "tree"}', r"class indices \[0, 2\]; expected every index from 0 to 1"),
        ('{"zero": "other"}', "has key 'zero'"),
        ('["other", "tree"]', "contains a list"),
        ("{", "is not valid JSON"),
    ],
)
def test_load_dataset_classes_json_invalid(tmp_path: Path, text: str, message: str) -> None:
    _single_pair_folder(tmp_path)
    (tmp_path / "classes.json").write_text(text)

    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path)


def test_load_dataset_classes_txt_blank_line(tmp_path: Path) -> None:
    _single_pair_folder(tmp_path)
    (tmp_path / "classes.txt").write_text("other\n\ntree\n")

    with pytest.raises(DatasetError, match="classes.txt line 2 is empty"):
        load_dataset(tmp_path)


def test_read_mask_same_grid_unchanged(tmp_path: Path) -> None:
    values = np.arange(16, dtype=np.uint8).reshape(4, 4)
    pair = Pair(
        stem="a",
        image_path=_write_tif(tmp_path / "a_image.tif", _image()),
        mask_path=_write_tif(tmp_path / "a_mask.tif", values),
    )

    mask = _read_with_image_grid(pair)

    np.testing.assert_array_equal(mask, values)
    assert mask.dtype == np.uint8


def test_read_mask_resampled_by_transform(tmp_path: Path) -> None:
    coarse = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    two_metre_grid = Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 6000000.0)
    pair = Pair(
        stem="a",
        image_path=_write_tif(tmp_path / "a_image.tif", _image(4, 6)),
        mask_path=_write_tif(tmp_path / "a_mask.tif", coarse, transform=two_metre_grid),
    )

    mask = _read_with_image_grid(pair)

    # The mask covers 4 x 4 m, so image columns 4-5 lie east of it and become ignore.
    expected = np.array(
        [
            [1, 1, 2, 2, 255, 255],
            [1, 1, 2, 2, 255, 255],
            [3, 3, 4, 4, 255, 255],
            [3, 3, 4, 4, 255, 255],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(mask, expected)


def test_read_mask_offset_transform_same_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    values = np.arange(1, 5, dtype=np.uint8).reshape(2, 2)
    one_column_east = Affine(1.0, 0.0, 500001.0, 0.0, -1.0, 6000000.0)
    pair = Pair(
        stem="a",
        image_path=_write_tif(tmp_path / "a_image.tif", _image(2, 2)),
        mask_path=_write_tif(tmp_path / "a_mask.tif", values, transform=one_column_east),
    )

    with caplog.at_level(logging.WARNING, logger="tree_seg"):
        mask = _read_with_image_grid(pair)

    np.testing.assert_array_equal(mask, [[255, 1], [255, 3]])
    assert "covers 50.0% of image" in caplog.text


def test_read_mask_rotated_transform(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.uint8).reshape(2, 3)
    # Mask rows run east and mask columns run south, so on the image grid the mask is transposed.
    swapped_axes = Affine(0.0, 1.0, 500000.0, -1.0, 0.0, 6000000.0)
    pair = Pair(
        stem="a",
        image_path=_write_tif(tmp_path / "a_image.tif", _image(3, 2)),
        mask_path=_write_tif(tmp_path / "a_mask.tif", values, transform=swapped_axes),
    )

    mask = _read_with_image_grid(pair)

    np.testing.assert_array_equal(mask, values.T)


def test_read_mask_png_scaled_by_size(tmp_path: Path) -> None:
    coarse = np.array([[0, 1], [1, 255]], dtype=np.uint8)
    pair = Pair(
        stem="a",
        image_path=_write_tif(tmp_path / "a_image.tif", _image(4, 4)),
        mask_path=_write_png(tmp_path / "a_mask.png", coarse),
    )

    mask = _read_with_image_grid(pair)

    np.testing.assert_array_equal(mask, np.kron(coarse, np.ones((2, 2), dtype=np.uint8)))


def test_read_mask_downsampled_by_size(tmp_path: Path) -> None:
    fine = np.arange(16, dtype=np.uint8).reshape(4, 4)
    pair = Pair(stem="a", image_path=tmp_path / "a.png", mask_path=_write_png(tmp_path / "a_mask.png", fine))

    mask = read_mask(pair, image_shape=(2, 2), image_crs=None, image_transform=None)

    # Image pixel centres fall at mask coordinates 1.0 and 3.0, so rows and columns 1 and 3 are taken.
    np.testing.assert_array_equal(mask, [[5, 7], [13, 15]])


def test_read_mask_crs_mismatch(tmp_path: Path) -> None:
    pair = Pair(
        stem="a",
        image_path=_write_tif(tmp_path / "a_image.tif", _image()),
        mask_path=_write_tif(tmp_path / "a_mask.tif", _mask(), crs=CRS.from_epsg(32633)),
    )

    with pytest.raises(DatasetError, match=r"a_mask\.tif has CRS EPSG:32633 but image .*a_image\.tif has CRS EPSG:32632"):
        _read_with_image_grid(pair)


def test_read_mask_unreadable(tmp_path: Path) -> None:
    mask_path = tmp_path / "a_mask.tif"
    mask_path.write_bytes(b"not a tiff")
    pair = Pair(stem="a", image_path=tmp_path / "a_image.tif", mask_path=mask_path)

    with pytest.raises(DatasetError, match=r"failed to read mask .*a_mask\.tif"):
        read_mask(pair, image_shape=(4, 4), image_crs=None, image_transform=None)


def test_read_mask_multiband_rejected(tmp_path: Path) -> None:
    pair = Pair(
        stem="a",
        image_path=tmp_path / "a_image.tif",
        mask_path=_write_tif(tmp_path / "a_mask.tif", _image()),
    )

    with pytest.raises(DatasetError, match=r"a_mask\.tif has 3 bands; a mask must have a single band"):
        read_mask(pair, image_shape=(4, 4), image_crs=UTM_32N, image_transform=ONE_METRE_GRID)


def test_read_mask_values_out_of_range(tmp_path: Path) -> None:
    values = np.array([[0, 300]], dtype=np.uint16)
    pair = Pair(stem="a", image_path=tmp_path / "a_image.tif", mask_path=_write_tif(tmp_path / "a_mask.tif", values))

    with pytest.raises(DatasetError, match="has values from 0 to 300"):
        read_mask(pair, image_shape=(1, 2), image_crs=UTM_32N, image_transform=ONE_METRE_GRID)


@pytest.mark.shared_data
def test_load_dataset_real_pairs(tmp_path: Path, shared_data: Path) -> None:
    sources = {
        "images": [shared_data / "oam_tcd" / "tcd_00004_image.tif", shared_data / "denmark_crowns" / "dk41_image.tif"],
        "masks": [shared_data / "oam_tcd" / "tcd_00004_mask.tif", shared_data / "denmark_crowns" / "dk41_mask.tif"],
    }
    for sub, paths in sources.items():
        (tmp_path / sub).mkdir()
        for path in paths:
            (tmp_path / sub / path.name).symlink_to(path)

    dataset = load_dataset(tmp_path)
    masks = {pair.stem: _read_with_image_grid(pair) for pair in dataset.pairs}

    assert [pair.stem for pair in dataset.pairs] == ["dk41", "tcd_00004"]
    assert masks["dk41"].shape == (327, 428)
    assert masks["tcd_00004"].shape == (2048, 2048)
    assert set(np.unique(masks["dk41"]).tolist()) == {0, 1}
    assert set(np.unique(masks["tcd_00004"]).tolist()) == {0, 1, 255}
