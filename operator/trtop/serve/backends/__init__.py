"""Runtime backends (one module each, imported only when chosen through ``trtop.serve.runtime.BACKENDS``)."""
