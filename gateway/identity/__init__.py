"""Identity: token resolution, presence and visits (pure code)."""
