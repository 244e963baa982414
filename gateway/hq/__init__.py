"""HQ-side tools (training, bundles, publishing); never needed on the Pi."""
