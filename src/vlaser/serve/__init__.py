"""Serving vlaser models behind an OpenAI-compatible API (``vlaser serve``).

``messages`` reads chat requests into prompt pieces (light: PIL only), ``schema`` declares the request and
response bodies, ``engine`` batches generation, ``app`` is the FastAPI application (``create_app``) and
``page`` the web page; the last three need the ``serve`` extra and are imported from their modules.
"""

from vlaser.serve.messages import ChatRequest, MediaLimits, parse_chat_request

__all__ = ["ChatRequest", "MediaLimits", "parse_chat_request"]
