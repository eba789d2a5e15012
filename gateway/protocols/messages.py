"""Placeholder while Anthropic Messages is being written in this session (replaced wholesale)."""

from __future__ import annotations

from gateway.edge import ChatClient

NAME = "messages"


class MessagesClient(ChatClient):
    name = "messages"


class CountTokensEndpoint:
    def __init__(self, gateway: object) -> None:
        self.gateway = gateway

    async def __call__(self, scope: object, receive: object, send: object) -> None:
        raise NotImplementedError
