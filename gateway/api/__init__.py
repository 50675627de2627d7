"""The HTTP surface: the aiohttp application, the request pipeline top to bottom, streaming,
responses and errors on the wire, OpenAPI, feedback, lifecycle and policy reload.

Imports everything in ``gateway`` but ``gateway.cli``.
"""
