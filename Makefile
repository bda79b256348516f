# trtop's few make targets: container images (needs Docker), plain manifests, lints.
#   make images      build the five images, tagged with operator/trtop/versions.py
#   make push        push them (REGISTRY=... to retag: make images push REGISTRY=my.reg/trtop)
#   make manifests   regenerate deploy/ from charts/trtop (hack/gen-manifests.sh)
#   make lock        pin images/constraints.txt to the test environment (images/lock.py)
#   make lint        helm lint, hadolint, and the no-drift checks of deploy/ and the lock
#   make native      the native HTTP front-end (native/http, Go) into .work/native/trtop-http
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
DOCKER ?= docker
HADOLINT ?= $(if $(wildcard .venv/bin/hadolint),.venv/bin/hadolint,hadolint)
include hack/versions.env
HELM ?= $(or $(TRTOP_CACHE),$(HOME)/.cache/trtop)/bin/helm-$(HELM_VERSION)/helm

# Every image name and version comes from operator/trtop/versions.py, the one place.
version = $(shell PYTHONPATH=operator $(PYTHON) -c 'from trtop import versions as v; print(v.$(1))')
TRTOP_VERSION := $(call version,TRTOP_VERSION)
TENSORRT_VERSION := $(call version,TENSORRT_VERSION)
TENSORRT_BASE_IMAGE := $(call version,TENSORRT_BASE_IMAGE)
GO_IMAGE := $(call version,GO_IMAGE)
REGISTRY ?= $(call version,IMAGE_REGISTRY)
BUILD = $(DOCKER) build --build-arg TRTOP_VERSION=$(TRTOP_VERSION)
GPU_ARGS = --build-arg TENSORRT_BASE_IMAGE=$(TENSORRT_BASE_IMAGE) --build-arg TENSORRT_VERSION=$(TENSORRT_VERSION)
IMAGES = operator converter converter-cpu server server-cpu

.PHONY: images push manifests lock lint native $(addprefix image-,$(IMAGES))

images: $(addprefix image-,$(IMAGES))

image-operator:
	$(BUILD) -f images/operator/Dockerfile -t $(REGISTRY)/operator:$(TRTOP_VERSION) .
image-converter:
	$(BUILD) $(GPU_ARGS) -f images/converter/Dockerfile -t $(REGISTRY)/converter:$(TRTOP_VERSION) .
image-converter-cpu:
	$(BUILD) -f images/converter/Dockerfile.cpu -t $(REGISTRY)/converter-cpu:$(TRTOP_VERSION) .
image-server:
	$(BUILD) $(GPU_ARGS) --build-arg GO_IMAGE=$(GO_IMAGE) -f images/server/Dockerfile -t $(REGISTRY)/server:$(TRTOP_VERSION) .
image-server-cpu:
	$(BUILD) --build-arg GO_IMAGE=$(GO_IMAGE) -f images/server/Dockerfile.cpu -t $(REGISTRY)/server-cpu:$(TRTOP_VERSION) .

push:
	for i in $(IMAGES); do $(DOCKER) push $(REGISTRY)/$$i:$(TRTOP_VERSION) || exit 1; done

native:
	PYTHONPATH=operator $(PYTHON) -m trtop_dev.native

manifests:
	HELM=$(HELM) hack/gen-manifests.sh

lock:
	$(PYTHON) images/lock.py

lint:
	$(HELM) lint --strict charts/trtop
	$(HELM) lint --strict charts/trtop -f charts/trtop/ci/namespaced-values.yaml
	$(HADOLINT) images/operator/Dockerfile images/converter/Dockerfile images/converter/Dockerfile.cpu images/server/Dockerfile images/server/Dockerfile.cpu
	$(PYTHON) images/lock.py --check
	$(PYTHON) -m pytest -q tests/charts -m 'not e2e'
