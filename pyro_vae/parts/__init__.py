"""The built-in swappable parts; importing this package registers them.

- :mod:`.priors`: p(z) (``--prior``)
- :mod:`.likelihoods`: p(x|z) (``--likelihood``)
- :mod:`.families`: the variational family q(z|x) of the guide (``--guide``)
- :mod:`.networks`: encoder and decoder networks (``--arch``)
- :mod:`.objectives`: Pyro's ELBO estimators (``--elbo``)
- :mod:`.corruption`: the denoising corruption C(x̃|x) (``--corrupt``)
"""

from . import families, likelihoods, networks, objectives, priors  # noqa: F401
