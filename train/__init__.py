"""Training for MultiMix: `python -m train --help`.

Modules: config (options), data (streams, label budgets, synthetic cache), augment (weak/strong),
losses (CE, Dice, L_u, KL_seg), step (the one-encoder-pass training step), metrics (validation),
trainer (loop, DDP, compile, precision, checkpoints, resume, logs).
"""
