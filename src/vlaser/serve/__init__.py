"""Serving vlaser models behind an OpenAI-compatible API: request parsing now, the server to follow."""

from vlaser.serve.messages import ChatRequest, parse_chat_request

__all__ = ["ChatRequest", "parse_chat_request"]
