"""Telemetry: the monitoring certificates, the alert receiver and the status view (docs/telemetry.md)."""
