"""Training: the accelerate loop, the procedural shapes dataset, VAE / model modes and the shapes eval."""
