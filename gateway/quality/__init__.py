"""Is an answer good, and is a model getting worse: heuristic signals, the quality monitor and its
regression detector, the judge and grading, candidate evaluation and shadow traffic.

Imports ``gateway.routing`` and below, and ``providers``.
"""
