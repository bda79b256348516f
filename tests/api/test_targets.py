"""Targets from GFD labels: CC + product with -SHARED / MIG decorations stripped."""
import pytest

from trtop import names
from trtop.api.targets import Target, gpu_target_of_node, normalize_product, product_slug, target_matches_device


@pytest.mark.parametrize("raw,expected", [
    ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3"),
    ("NVIDIA-H100-80GB-HBM3-SHARED", "NVIDIA-H100-80GB-HBM3"),
    ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "NVIDIA-A100-SXM4-40GB"),
    ("NVIDIA-A100-SXM4-40GB-MIG-3g.20gb", "NVIDIA-A100-SXM4-40GB"),
    ("Tesla-T4", "Tesla-T4"),
])
def test_normalize_product_strips_sharing_and_mig(raw, expected):
    assert normalize_product(raw) == expected


def labels(major, minor, product):
    return {names.GFD_CC_MAJOR: major, names.GFD_CC_MINOR: minor, names.GFD_PRODUCT: product,
            names.GFD_FAMILY: "hopper"}


def test_target_keys_on_compute_capability_not_family():
    t = gpu_target_of_node(labels("9", "0", "NVIDIA-H100-80GB-HBM3-SHARED"), with_product=True)
    assert t == Target("9.0", "NVIDIA-H100-80GB-HBM3")
    assert gpu_target_of_node(labels("9", "0", "X"), with_product=False) == Target("9.0")


def test_node_without_gfd_labels_has_no_gpu_target():
    assert gpu_target_of_node({"kubernetes.io/os": "linux"}, with_product=True) is None
    assert gpu_target_of_node({names.GFD_CC_MAJOR: "x", names.GFD_CC_MINOR: "0"}, with_product=True) is None


def test_slugs_are_dns_labels():
    assert Target("9.0").slug == "sm90"
    assert Target("cpu").slug == "cpu"
    assert Target("8.9", "NVIDIA-L4").slug == "sm89-nvidia-l4"
    assert all(len(Target("8.0", "A" * 200).slug) <= 40 for _ in range(1))


def test_parse_and_round_trip():
    t = Target.parse("8.9/NVIDIA-L4-SHARED")
    assert t == Target("8.9", "NVIDIA-L4") and str(t) == "8.9/NVIDIA-L4"
    assert Target.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="compute capability"):
        Target.parse("hopper")


def test_device_matching_like_cc_model_filenames():
    assert target_matches_device(Target("9.0"), "9.0", "NVIDIA-H100-80GB-HBM3")
    assert not target_matches_device(Target("8.9"), "8.6", "NVIDIA-A10G")
    assert target_matches_device(Target("8.0", "NVIDIA-A100-SXM4-80GB"), "8.0", "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb")
    assert not target_matches_device(Target("8.0", "NVIDIA-A100-SXM4-80GB"), "8.0", "NVIDIA-A100-SXM4-40GB")


def test_products_match_in_nvml_and_gfd_spelling() -> None:
    assert product_slug("NVIDIA H100 80GB HBM3") == product_slug("NVIDIA-H100-80GB-HBM3-SHARED") == "nvidia-h100-80gb-hbm3"
    assert target_matches_device(Target("9.0", "NVIDIA-H100-80GB-HBM3"), "9.0", "NVIDIA H100 80GB HBM3")
    assert not target_matches_device(Target("9.0", "NVIDIA-H100-80GB-HBM3"), "9.0", "NVIDIA H100 PCIe")
