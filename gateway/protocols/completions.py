"""Placeholder while legacy completions is being written in this session (replaced wholesale)."""

from __future__ import annotations

from gateway.edge import ChatClient

NAME = "completions"


class CompletionsClient(ChatClient):
    name = "completions"
