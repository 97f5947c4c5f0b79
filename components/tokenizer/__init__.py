"""Tokenizers: image tokenizers trained in their own stage (a VQ-VAE), read by ``target.tokenizer``."""
