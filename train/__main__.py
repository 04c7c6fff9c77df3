"""`python -m train ...` (and `torchrun --nproc-per-node N -m train ...`): see train/trainer.py."""

import sys

from .trainer import main

if __name__ == "__main__":
    sys.exit(main())
