"""xclip-jax: X-CLIP (Ni et al., ECCV 2022) in JAX/Flax."""
