"""sdxl-img2img: the GPU side (pipelines, schedulers, the RQ worker)."""
