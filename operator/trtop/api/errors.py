"""Domain exceptions of the API layer, translated to conditions at the handler boundary."""
from __future__ import annotations


class SpecError(ValueError):
    """A ModelDeployment spec the schema accepted but trtop cannot honour.

    ``field`` is the JSON path under ``spec`` a person should fix (or ``metadata.*``); the
    message says how.
    """

    def __init__(self, field: str, message: str) -> None:
        path = field if field.startswith("metadata.") else f"spec.{field}" if field else "spec"
        super().__init__(f"{path}: {message}")
        self.field = field
        self.message = message
