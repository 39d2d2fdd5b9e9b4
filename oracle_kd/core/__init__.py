"""The bottom layer: the feature contract, loss primitives and Step A (no imports from other layers)."""
