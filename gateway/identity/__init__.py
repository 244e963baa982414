"""Identity: token resolution, presence and visits (pure), and the shopper flow that runs them."""
