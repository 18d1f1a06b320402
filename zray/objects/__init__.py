"""Serialisation, the mmap object store, and refs with their reference counts."""
