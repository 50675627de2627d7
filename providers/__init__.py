"""Provider wire protocols (pure adapters) and the pool that does their I/O."""
