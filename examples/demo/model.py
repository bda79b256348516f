"""The demo's model: a small real Keras image classifier, made here (no download from a hub).

    python examples/demo/model.py OUT.keras

Random but seeded weights: the point is that the same input gives the same answer from
TensorFlow and from the engine trtop builds, not that the answer means anything.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

INPUT_SHAPE = (32, 32, 3)
CLASSES = 10


def build():  # type: ignore[no-untyped-def]
    import keras

    keras.utils.set_random_seed(7)
    return keras.Sequential([
        keras.Input(INPUT_SHAPE, name="image"),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax", name="probabilities"),
    ], name="demo_classifier")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    model = build()
    os.makedirs(os.path.dirname(os.path.abspath(argv[0])), exist_ok=True)
    model.save(argv[0])
    print(f"saved {argv[0]}: {model.count_params()} parameters, input {INPUT_SHAPE}, {CLASSES} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
