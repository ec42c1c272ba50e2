"""latentstudio: a Stable Diffusion studio (web UI, A1111-compatible API, CLI and training)."""
