"""Where a request goes: the router (filter and order a route's candidates), the attempt loop
with fallback (panic routing, deadline shares, hedging, failure diagnostics), circuit breakers and
their replica-shared state, and task types.

Imports ``gateway.telemetry``, ``gateway.policy``, ``gateway.core`` and ``providers``.
"""
