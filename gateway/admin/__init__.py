"""The operator's side: the admin API (cache settings, decisions, quality, tiering, teams,
reload) and the dashboard.

Imports every layer below ``gateway.api``.
"""
