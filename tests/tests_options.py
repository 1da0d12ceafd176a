"""Training options shared by the distributed test and its single-process comparison: large
enough that runs with different seeds agree within about half a nat."""

OPTIONS = dict(epochs=6, batch_size=100, hidden=(200,), z_dim=10, seed=0)
