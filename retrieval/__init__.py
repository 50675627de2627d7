"""Knowledge base: Qdrant collections, ingestion and ACL-filtered search (see the [knowledge] issue)."""
