"""Ingress formats: the client's wire format, translated to and from the internal request.

The gateway's internal request and answer are OpenAI chat completions (``providers.schema``'s
``ChatRequest``, ``providers.base.Completion`` and ``chat.completion.chunk`` dicts for streams),
whatever the provider speaks. Each format a client may speak is one module here that converts in
both directions, as each provider is one adapter in ``providers/``:

- ``openai_chat``: ``POST /v1/chat/completions`` (the identity translation);
- ``anthropic_messages``: ``POST /v1/messages`` (Anthropic Messages), its stream in
  ``anthropic_stream``;
- ``openai_responses``: ``POST /v1/responses`` (the stateless subset of OpenAI Responses), its
  stream in ``responses_stream``.

The seam is ``base.IngressFormat``: authenticate, parse a body into an ``Exchange`` (the internal
request plus how to render its answer and its stream), render an error. The pipeline takes the
format as a parameter and never looks at a wire shape.
"""
