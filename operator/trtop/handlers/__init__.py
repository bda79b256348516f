"""kopf wiring: short handlers that gather facts, call the planner, apply, write status."""
