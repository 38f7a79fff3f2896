"""The front door: HAProxy in front of the serving nodes, and the control host's hand on it
(docs/runtime.md, "Front door")."""
