"""``python -m adv_transport`` (what torchrun starts: ``torchrun --nproc_per_node=N -m adv_transport train ...``)."""

import sys

from .cli import main

sys.exit(main())
