"""Knowledge base: Qdrant collections, ingestion and ACL-filtered search."""
