"""Names and fields that cannot work are refused with the field and a fix (mirrors the CRD's rules)."""
import pytest

from trtop.api.errors import SpecError
from trtop.api.validation import check_name, check_resources, check_rollout


@pytest.mark.parametrize("name", ["resnet", "a", "r2-d2", "x" * 63])
def test_names_that_can_name_a_service_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["res.net", "x" * 64, "1resnet", "-a", "a-", "Resnet", "", None])
def test_names_that_cannot_name_a_service_or_a_label_are_refused(name):
    with pytest.raises(SpecError) as info:
        check_name(name)
    assert info.value.field == "metadata.name" and str(info.value).startswith("metadata.name:")


def test_quantities_are_checked_like_the_api_server():
    assert check_resources({"limits": {"cpu": "500m", "memory": "2Gi"}, "requests": {"cpu": 1, "x": "1e3"}}) == {
        "limits": {"cpu": "500m", "memory": "2Gi"}, "requests": {"cpu": "1", "x": "1e3"}}
    for bad in ("lots", "1.2.3", "-1", "2 Gi", True):
        with pytest.raises(SpecError):
            check_resources({"limits": {"cpu": bad}})


def test_rollout_needs_room_to_replace_a_pod():
    check_rollout("1", "0")
    check_rollout("0", "25%")
    for surge, unavailable in (("0", "0"), ("0%", "0"), ("00", "0%")):
        with pytest.raises(SpecError, match="cannot both be 0"):
            check_rollout(surge, unavailable)
