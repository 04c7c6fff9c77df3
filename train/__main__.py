"""`python -m train ...` (and `torchrun --nproc-per-node N -m train ...`): the same command as
`mmtrt train` (train/command.py); the loop is train/trainer.py."""

from .command import main

if __name__ == "__main__":
    main()
