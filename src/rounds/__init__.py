"""After round 1: OOF merge, ensemble, pseudo-labels, post-processing, the final recipe, and scores."""
