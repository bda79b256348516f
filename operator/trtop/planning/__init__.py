"""The planner: desired objects and status from (spec, observed cluster facts, engine records).

Pure functions over plain data; never imports kopf, kubernetes or ``trtop.k8s``
(import-linter keeps it so). The operator's handlers gather ``ClusterFacts``, call
``plan_model_deployment`` and apply what comes back.
"""
