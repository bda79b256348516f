"""Domain exceptions of the API layer, translated to conditions at the handler boundary."""
from __future__ import annotations


class SpecError(ValueError):
    """A ModelDeployment spec the schema accepted but trtop cannot honour.

    ``field`` is the JSON path a person should fix; the message says how.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}")
        self.field = field
        self.message = message
