"""``mcpm-mobile eval``: perplexity, KL divergence and top-1 agreement of quantized artifacts vs the float model."""
