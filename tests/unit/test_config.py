import pytest

from tree_seg.config import (
    ClusterConfig,
    EngineConfig,
    HeadRefineConfig,
    ReadConfig,
    SegmentationConfig,
    WindowConfig,
    load_profile,
    profile_names,
)
from tree_seg.exceptions import ConfigurationError


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: HeadRefineConfig(tau=0.0), "tau=0.0"),
        (lambda: HeadRefineConfig(tau=-1.0), "tau=-1.0"),
        (lambda: HeadRefineConfig(tau="hot"), "tau='hot'"),
        (lambda: HeadRefineConfig(alpha=1.5), "alpha=1.5"),
        (lambda: HeadRefineConfig(alpha=-0.1), "alpha=-0.1"),
        (lambda: HeadRefineConfig(iterations=0), "iterations=0"),
        (lambda: HeadRefineConfig(blend="gaussian"), "blend='gaussian'"),
        (lambda: ClusterConfig(k=1), "k=1"),
        (lambda: ClusterConfig(k_min=5, k_max=3), "5:3"),
        (lambda: ClusterConfig(elbow_threshold=5.0), "elbow_threshold=5.0"),
        (lambda: WindowConfig(overlap=448), "overlap=448"),
        (lambda: WindowConfig(scale=0.0), "scale=0.0"),
        (lambda: WindowConfig(scale="0.5"), "invalid scale='0.5': expected a number in"),
        (lambda: ReadConfig(bands=(0, 1, 2)), "band index=0"),
        (lambda: ReadConfig(nodata="black"), "nodata='black'"),
        (lambda: SegmentationConfig(method="kmeans2"), "method='kmeans2'"),
        (lambda: EngineConfig(feature_dtype="float64"), "feature_dtype='float64'"),
        (lambda: EngineConfig(chunk_size=32), "chunk_size=32"),
        (lambda: EngineConfig(scheduler="Synchronous"), "scheduler='Synchronous'"),
        (lambda: EngineConfig(scheduler="tcp://127.0.0.1"), "scheduler='tcp://127.0.0.1'"),
    ],
)
def test_config_rejects_invalid_value_by_name(factory, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        factory()


def test_config_with_updates_replaces_nested_fields():
    config = SegmentationConfig().with_updates({"cluster": {"k": 5}, "method": "head-refine"})
    assert config.cluster.k == 5
    assert config.cluster.k_max == ClusterConfig().k_max
    assert config.method == "head-refine"


def test_config_with_updates_rejects_unknown_field():
    with pytest.raises(ConfigurationError, match="cluster.kk"):
        SegmentationConfig().with_updates({"cluster": {"kk": 5}})


def test_profiles_define_three_presets():
    assert profile_names() == ["balanced", "quality", "quick"]
    quick = SegmentationConfig.from_profile("quick")
    quality = SegmentationConfig.from_profile("quality")
    assert quick.window.target_resolution == 0.3
    assert quality.labels.refine == "none"
    assert quality.head_refine.guided_radius == 12
    assert load_profile("balanced")["cluster"]["k_max"] == 12


def test_profile_unknown_name_lists_presets():
    with pytest.raises(ConfigurationError, match="balanced"):
        SegmentationConfig.from_profile("fastest")


def test_config_to_dict_is_json_ready():
    import json

    text = json.dumps(SegmentationConfig().to_dict())
    assert '"method": "head-refine"' in text


@pytest.mark.parametrize("address", ["synchronous", "tcp://scheduler:8786", "10.0.0.5:8786", "tls://[::1]:8786",
                                     "inproc://10.0.0.5/1234/1", "ucx://10.0.0.5:13337"])
def test_engine_config_accepts_scheduler_addresses(address):
    assert EngineConfig(scheduler=address).scheduler == address
