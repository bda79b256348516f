"""The converter: one engine request in, one verified engine published to the store.

``trtop convert`` (see ``cli.py``) is the program of every build Job and a tool a person
can run by hand. The stages live in ``pipeline.py``; TensorRT's builder is reached only
through ``tensorrt_build.py``, and the engine is run (verified, timed) by the server's own
runtime in ``trtop.gpu``, so both can be tested with a fake module. Exit codes and domain exceptions: ``errors.py``. Guide: docs/converter.md.
"""
