"""Training: the 4-bit LoRA recipe, its Trainer callback and event fold, failure reasons, background jobs,
multi-process launch and resource estimates."""
