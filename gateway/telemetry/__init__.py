"""What happened to each request: the decision log and its sinks, Prometheus metrics, traces
(OTLP), the exporter process, alerts, cost and the dashboard's time series.

Imports ``gateway.policy``, ``gateway.core`` and ``providers`` public types.
"""
