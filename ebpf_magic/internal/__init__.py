"""Plumbing shared by every layer: the cache directory, C text scanning, typed values."""
