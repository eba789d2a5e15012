"""rag-gateway: an OpenAI-compatible gateway for production RAG."""

__version__ = "0.1.0"
