"""Model discovery, hashing, family detection, loading and management."""
