"""The HTTP surface: the aiohttp application, the request pipeline top to bottom, the ingress
formats it speaks (``ingress/``: OpenAI chat completions, Anthropic Messages, OpenAI Responses)
and embeddings, streaming, responses and errors on the wire, OpenAPI, feedback, lifecycle and
policy reload.

Imports everything in ``gateway`` but ``gateway.cli``.
"""
