"""Type aliases shared by the server's modules (one place, like starlette's ``types.py``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Array: TypeAlias = npt.NDArray[Any]
Feeds: TypeAlias = Mapping[str, Array]  # tensor name -> array, first dim = batch
Outputs: TypeAlias = dict[str, Array]
DType: TypeAlias = np.dtype[Any]
