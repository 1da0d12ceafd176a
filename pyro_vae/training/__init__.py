"""Training: the SVI step (:mod:`.step`), the training plan and ``fit`` (:mod:`.plan`), the
joint optimiser (:mod:`.optim`), data-parallel groups (:mod:`.distributed`), stop signals
(:mod:`.signals`)."""
