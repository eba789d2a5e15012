"""Retrieval: document parsing and chunking, embeddings, the hybrid index."""
