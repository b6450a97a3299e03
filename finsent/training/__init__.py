"""Training: the encoder fine-tune and the LoRA SFT, on one Trainer-arguments builder (training.common)."""
