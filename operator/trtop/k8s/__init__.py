"""The only code that talks to the Kubernetes API: client setup, observing facts, applying plans."""
