"""Video clip sources, the weighted mixture and the latent cache for TVP training."""
