"""The learned cost-tier router (cheap or frontier per request), its outcome memory, the offline
tier model and its features, and the Redis sync that shares outcomes between replicas.

Imports ``gateway.routing`` and below, and ``cache`` (the embedder).
"""
