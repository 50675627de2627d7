"""Policy as data: process settings, the validated policy model and its sections, the catalog
compiled from it for the hot path, the run-time team overlay and the team limits.

Imports ``gateway.core`` and ``providers`` public types; nothing above.
"""
