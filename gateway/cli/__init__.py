"""The ``gateway`` command (``main``) and its sub-commands: serve, check-config, hash-key, cache,
router, eval, ingest; and the local llama.cpp model it can start.

Imports everything.
"""
