"""Outputs that are not images: NaN or infinite values (which PIL would silently turn into black
pixels), or all black from an input image that is not. Such an output is refused, not stored and
not charged (worker.errors.UnusableOutput), rather than sold as a result.

The check runs on the decoder's output as the pipeline's image processor hands it over with
`output_type="np"` (floats in [0, 1]), before the conversion to 8-bit that would hide a NaN.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def unusable_output(decoded: np.ndarray, source: Image.Image) -> bool:
    """`decoded`: one output, [height, width, 3]; `source`: the input image it was made from."""
    if not np.isfinite(decoded).all():
        return True
    # Black as the 8-bit image would be: diffusers' numpy_to_pil rounds `x * 255`.
    return bool((decoded * 255).round().max() <= 0) and not is_black(source)


def is_black(image: Image.Image) -> bool:
    """Every pixel 0 in every channel: from such an input an all-black output is a fair answer."""
    extrema = image.convert("RGB").getextrema()
    return all(high == 0 for _, high in extrema)
