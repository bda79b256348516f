"""Dev tooling for trtop: the local dev cluster (``trtop dev cluster``, its real node, the image builds, the demo).

Kept apart from the ``trtop`` package so that no image carries it (the images' .dockerignore
files leave ``operator/trtop_dev/`` out); the product never imports it (import-linter).
"""
