"""Run by tests/test_distributed.py under torchrun: fit on a .npz, save this rank's weights.

    torchrun --standalone --nproc-per-node 2 tests/ddp_fit.py DATA.npz OUT_DIR [OPTIONS_JSON]
"""

import json
import os
import sys

from safetensors.torch import save_file

import pyro_vae
from tests_options import OPTIONS  # noqa: F401  (shared with the single-process run)

data, out_dir = sys.argv[1], sys.argv[2]
extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
rank = int(os.environ["RANK"])
vae, metrics = pyro_vae.fit(dataset=data, out=os.path.join(out_dir, "run"), progress=False,
                            **OPTIONS, **extra)
state = {k: v.detach().contiguous() for k, v in vae.state_dict().items()}
save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))
if rank == 0:
    print(json.dumps(metrics[-1]))
