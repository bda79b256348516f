"""The chart, the images and the Makefile repeat operator/trtop/versions.py: they must agree.

Helm cannot import Python and a Dockerfile's ARG needs a default, so the versions are
written again there; these tests make a bump that forgets one of them fail.
"""
from __future__ import annotations

import re
import sys
from dataclasses import fields

import pytest
import yaml

from tests.charts.chart import CHART, ROOT
from trtop import versions
from trtop.config import Settings

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
DOCKERFILES = sorted(p for p in (ROOT / "images").glob("*/Dockerfile*") if not p.name.endswith(".dockerignore"))


def arg_defaults(path):
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), re.MULTILINE))


def test_values_name_the_default_images_of_versions_py():
    image = VALUES["image"]
    assert f"{image['repository']}:{image['tag']}" == versions.OPERATOR_IMAGE
    workloads = VALUES["workloads"]
    assert workloads["converterImage"] == versions.CONVERTER_IMAGE
    assert workloads["converterCpuImage"] == versions.CONVERTER_CPU_IMAGE
    assert workloads["serverImage"] == versions.SERVER_IMAGE
    assert workloads["serverCpuImage"] == versions.SERVER_CPU_IMAGE


def test_values_carry_the_engine_versions_of_versions_py():
    # Both are part of every engine key: a mismatch would rebuild (or wrongly reuse) engines.
    assert VALUES["workloads"]["tensorrtVersion"] == versions.TENSORRT_VERSION
    assert VALUES["workloads"]["onnxruntimeVersion"] == versions.ONNXRUNTIME_VERSION


def test_chart_app_version_is_the_trtop_release():
    assert CHART_META["appVersion"] == versions.TRTOP_VERSION


def test_values_defaults_equal_the_operators_own_defaults():
    defaults = Settings()
    assert VALUES["store"]["mountPath"] == defaults.store_mount_path
    assert VALUES["workloads"]["imagePullPolicy"] == defaults.image_pull_policy
    assert VALUES["metricsPort"] == defaults.metrics_port
    assert VALUES["operator"]["autoscaleIntervalSeconds"] == defaults.autoscale_interval_seconds
    assert {f.name for f in fields(Settings)} >= {"store_mount_path", "metrics_port"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_defaults_equal_versions_py(dockerfile):
    args = arg_defaults(dockerfile)
    assert args["TRTOP_VERSION"] == versions.TRTOP_VERSION
    if "GO_IMAGE" in args:  # the native HTTP front-end's build stage (server images)
        assert args["GO_IMAGE"] == versions.GO_IMAGE
    if "TENSORRT_BASE_IMAGE" in args:
        assert args["TENSORRT_BASE_IMAGE"] == versions.TENSORRT_BASE_IMAGE
        assert args["TENSORRT_VERSION"] == versions.TENSORRT_VERSION


@pytest.mark.parametrize("dockerfile", [p for p in DOCKERFILES if "PYTHON_IMAGE" in arg_defaults(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_images_run_the_python_the_tests_run(dockerfile):
    tag = arg_defaults(dockerfile)["PYTHON_IMAGE"]
    assert tag.startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}-"), tag


def test_every_image_dockerfile_is_versioned():
    # The five images of `make images`; a new one must come with its own checks above.
    assert [str(p.relative_to(ROOT / "images")) for p in DOCKERFILES] == [
        "converter/Dockerfile", "converter/Dockerfile.cpu", "operator/Dockerfile", "server/Dockerfile", "server/Dockerfile.cpu"]


def test_images_carry_the_onnxruntime_that_cpu_engine_keys_name():
    pins = dict(line.split("==") for line in (ROOT / "images" / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["onnxruntime"].startswith(versions.ONNXRUNTIME_VERSION + ".")
