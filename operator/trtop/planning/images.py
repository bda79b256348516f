"""Which container images a ModelDeployment may run: the platform's allowed-images list.

Build Jobs and serving pods run with the store's credentials and on the cluster's GPU
nodes, so ``engine.builderImage`` and ``serving.image`` are checked against
``Settings.allowed_images`` (exact references, or prefixes ending in ``*``); when the
list is empty only the operator's own images are allowed. A refusal is a ``SpecError``
(the handler reports it as Stalled/InvalidSpec). Pure; called by the handler and the planner.
"""
from __future__ import annotations

from trtop.api.errors import SpecError
from trtop.api.spec import ModelDeploymentSpec
from trtop.config import Settings


def allowed_images(settings: Settings) -> tuple[str, ...]:
    own = (settings.converter_image, settings.server_image, settings.server_cpu_image)
    return (*own, *settings.allowed_images)


def image_allowed(image: str, settings: Settings) -> bool:
    for pattern in allowed_images(settings):
        if pattern == "*" or image == pattern or (pattern.endswith("*") and image.startswith(pattern[:-1])):
            return True
    return False


def check_images(spec: ModelDeploymentSpec, settings: Settings) -> None:
    """SpecError naming the field when the spec picks an image the platform does not allow."""
    for field, image in (("engine.builderImage", spec.engine.builder_image), ("serving.image", spec.serving.image)):
        if image and not image_allowed(image, settings):
            raise SpecError(
                field, f"{image!r} is not in the platform's allowed images ({', '.join(allowed_images(settings))}); "
                "leave it empty for the operator's own image, or ask the platform team to allow it "
                "(chart value workloads.allowedImages)"
            )
