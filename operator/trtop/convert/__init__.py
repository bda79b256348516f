"""The converter: one engine request in, one verified engine published to the store.

``trtop convert`` (see ``cli.py``) is the program of every build Job and a tool a person
can run by hand. The stages live in ``pipeline.py``; everything that touches TensorRT
goes through ``tensorrt_build.py`` / ``tensorrt_runtime.py`` so it can be tested with a
fake module. Exit codes and domain exceptions: ``errors.py``. Guide: docs/converter.md.
"""
