"""The builtin autoscaler: reads serving load and decides replicas the way the HPA does.

Layout (functional core, thin shell):
- ``policy``   : ScalingPolicy / RatePolicy (plain data; ``policy_from_spec`` maps the API spec).
- ``history``  : ScalingHistory, the recommendations and scale events a decision remembers.
- ``decision`` : ``decide(policy, observation, history) -> (Decision, history)``, pure.
- ``capacity`` : ``schedulable_capacity(nodes, ...)``, the GPU cap fed into the Observation.
- ``rates``    : pure counter/histogram rate math over two scrapes of a pod.
- ``load``     : async readers of load (each pod's /metrics, or a Prometheus HTTP API).

The operator's autoscale timer (trtop.handlers) calls ``load`` then ``decide`` and patches
the Deployment; nothing here talks to the Kubernetes API.
"""
from __future__ import annotations

from trtop.autoscale.decision import Decision, Observation, PodSample, decide
from trtop.autoscale.history import Recommendation, ScaleEvent, ScalingHistory
from trtop.autoscale.policy import RatePolicy, ScalingPolicy, policy_from_spec

__all__ = [
    "Decision", "Observation", "PodSample", "RatePolicy", "Recommendation", "ScaleEvent",
    "ScalingHistory", "ScalingPolicy", "decide", "policy_from_spec",
]
