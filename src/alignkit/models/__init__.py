"""Model loading (packaged default, GGUF, local folder, hub id), tiny test models, LoRA,
checkpoints."""
