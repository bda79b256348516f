"""What a ModelDeployment may ask of the platform: allowed images, and no say over trtop's own settings.

Build Jobs and serving pods run with the store's credentials and on the cluster's GPU
nodes, so ``engine.builderImage``, ``serving.image`` and each ``serving.sidecars[].image`` are
checked against ``Settings.allowed_images`` (exact references, or prefixes ending in ``*``); when
the list is empty only the operator's own images are allowed. ``serving.env`` may not set
what trtop decides itself (the engine set, the store, the backend, the model source) nor
store credentials (``AWS_*``, ``GOOGLE_*``); tuning variables (``TRTOP_THREADS`` ...) stay free. Pod annotations
may not loosen AppArmor or seccomp confinement. ``scaling.minReplicas: 0`` with the builtin autoscaler needs the
operator's wake query (``Settings.wake_query``): without it nothing would scale the object up again. A refusal is a ``SpecError`` (the handler reports it as
Stalled/InvalidSpec). Pure; called by the handler and the planner.
"""
from __future__ import annotations

from trtop import names
from trtop.api.errors import SpecError
from trtop.api.spec import ModelDeploymentSpec
from trtop.config import Settings


def allowed_images(settings: Settings) -> tuple[str, ...]:
    own = (settings.converter_image, settings.converter_cpu_image, settings.server_image, settings.server_cpu_image)
    return (*own, *settings.allowed_images)


def image_allowed(image: str, settings: Settings) -> bool:
    for pattern in allowed_images(settings):
        if pattern == "*" or image == pattern or (pattern.endswith("*") and image.startswith(pattern[:-1])):
            return True
    return False


RESERVED_ENV = frozenset({
    names.ENV_ENGINE_SET, names.ENV_STORE_URI, names.ENV_MODEL_NAME, names.ENV_FETCH_POLICY,
    names.ENV_SERVE_BACKEND, names.ENV_SERVE_ENGINE_DIR, names.ENV_SERVE_MODEL_PATH, names.ENV_SERVE_CACHE_DIR,
})
RESERVED_ENV_PREFIXES = ("AWS_", "GOOGLE_")


# Pod annotations that loosen a pod's confinement: the platform's to set (its Pod Security policy),
# not a ModelDeployment's. trtop's pods run with seccomp RuntimeDefault; an AppArmor annotation
# ``unconfined`` on the pods it makes would undo that where the namespace does not enforce Pod Security.
CONFINEMENT_ANNOTATION_PREFIXES = (
    "container.apparmor.security.beta.kubernetes.io/", "seccomp.security.alpha.kubernetes.io/",
    "container.seccomp.security.alpha.kubernetes.io/",
)


def check_spec_trust(spec: ModelDeploymentSpec, settings: Settings) -> None:
    """SpecError naming the field when the spec picks an image, a variable or a pod annotation it may not."""
    check_images(spec, settings)
    if spec.scaling.mode == "builtin" and spec.scaling.min_replicas == 0 and not settings.wake_query:
        raise SpecError("scaling.minReplicas", "0 with scaling.mode builtin needs a way back from zero, and this "
                        "operator has none: its platform team sets one with the Helm value operator.wakeQuery (a "
                        "Prometheus query of the requests waiting in front of a model). Use minReplicas >= 1, or "
                        "mode external with an autoscaler that scales from zero (KEDA)")
    for where, annotations in (("engine.podAnnotations", spec.engine.pod_annotations),
                               ("serving.podAnnotations", spec.serving.pod_annotations)):
        for key in annotations:
            if key.startswith(CONFINEMENT_ANNOTATION_PREFIXES):
                raise SpecError(where, f"{key!r} sets a pod's AppArmor or seccomp confinement, which is the "
                                "platform's to decide (trtop's pods run with the runtime's default); remove it")
    for i, env in enumerate(spec.serving.env):
        name = str(env.get("name", ""))
        if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
            raise SpecError(f"serving.env[{i}]", f"{name} is set by trtop (the engine set, the store, the "
                            "backend and its credentials come from the operator); remove it")


def check_images(spec: ModelDeploymentSpec, settings: Settings) -> None:
    """SpecError naming the field when the spec picks an image the platform does not allow."""
    images = [("engine.builderImage", spec.engine.builder_image), ("serving.image", spec.serving.image),
              *((f"serving.sidecars[{i}].image", c.image) for i, c in enumerate(spec.serving.sidecars))]
    for field, image in images:
        if image and not image_allowed(image, settings):
            raise SpecError(
                field, f"{image!r} is not in the platform's allowed images ({', '.join(allowed_images(settings))}); "
                "leave it empty for the operator's own image, or ask the platform team to allow it "
                "(chart value workloads.allowedImages)"
            )
