"""Upstream providers and the router that retries, balances and falls back across them."""
