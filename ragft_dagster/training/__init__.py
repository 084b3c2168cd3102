"""Training: LoRA SFT, DPO, the derived specialist, checkpoints and the multi-process worker."""
