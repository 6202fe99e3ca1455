"""Serving vlaser models behind an OpenAI-compatible API (``vlaser serve``).

``messages`` reads chat requests into the inference vocabulary (``vlaser.inference``: a ``Request`` and its
``GenerationParams``), ``schema`` declares the request and response bodies, ``engine`` batches generation, ``app``
is the FastAPI application (``create_app``) and ``page`` the web page; the last three need the ``serve`` extra
and are imported from their modules.
"""

from vlaser.serve.messages import MediaLimits, parse_chat_request

__all__ = ["MediaLimits", "parse_chat_request"]
