"""The inference core: one request vocabulary, one prepare step and one engine for chat, eval and serve."""

from vlaser.inference.types import Completion, GenerationParams, Picture, Prepared, Request, Turn

__all__ = ["Completion", "GenerationParams", "Picture", "Prepared", "Request", "Turn"]
