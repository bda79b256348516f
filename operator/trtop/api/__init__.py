"""The ModelDeployment API as plain data: spec types, defaults, validation, targets, engine keys.

Pure: never imports kopf, kubernetes or anything that talks to a cluster.
"""
