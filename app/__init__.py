"""sdxl-img2img: the HTTP side (no torch, no diffusers) and the shared queue contract."""
