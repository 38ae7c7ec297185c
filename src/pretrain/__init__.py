"""Label-free pre-training of the demo's tiny DINOv3-shaped ViT on synthetic photos disjoint
from the demo's (issue #27): each patch token predicts the colour-class fractions of its pixels,
the CLS token the half's fractions and their spread. No mass ever enters the objective.

``data``: the photos and their pixel-derived targets; ``objective``: heads and loss;
``train``: the loop and the timm-format ``.safetensors`` it writes.
"""
