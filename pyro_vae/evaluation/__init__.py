"""Evaluation: held-out figures (:mod:`.evaluate`), posterior checks with ArviZ
(:mod:`.diagnostics`), and pictures of what a model learned (:mod:`.pictures`)."""
