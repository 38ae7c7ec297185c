"""Models: the DINOv3 backbone, heads on its patch tokens, and the two-half biomass model."""
