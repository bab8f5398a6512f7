"""The HTTP layer: routes, request and response bodies, middleware, authentication, error bodies.

It may touch the runtime (service.runtime) and the text-level helpers of service.prm.formatting, never
tensors, engines or files. Which layer checks what, so that each check lives in one place:

- `schemas.py` (pydantic, 422): the shape and types of a body; unknown fields are refused.
- `routes.py` and `protocols.py` (413, 422): the operator's size limits (--max-items-per-request,
  --max-steps-per-item, --max-step-chars, --max-problem-chars), before any text reaches a tokenizer,
  and what a protocol means (a model name, a prompt that begins its query).
- `service.prm.formatting` (422, 413): the text itself (no empty step, no separator inside a step, no
  lone surrogate) and the token length against the model's maximum; every route's text goes through it.
- `service.runtime` and the engine (429, 504): admission (requests in flight, queued tokens) and deadlines.
- `middleware.py` (413, 500): the body size, and a JSON 500 for a bug, keeping the connection.
"""
