"""Conversion of foreign image objects (PIL images, array-likes) to numpy arrays.

The native module handles paths, bytes, numpy arrays and :class:`minigpt_med.Image` itself and
calls :func:`to_array` for anything else. Only the memory layout is converted here; colour
handling and resizing are the engine's.
"""

from __future__ import annotations

from typing import Any

from ._errors import ImageError

# PIL modes that map to an array the engine takes as is, and conversions for the others.
_PIL_16BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _from_pil(img: Any) -> Any:
    import numpy as np

    mode = img.mode
    if mode in ("L", "RGB"):
        return np.asarray(img)
    if mode in _PIL_16BIT:
        arr = np.asarray(img)
        if arr.dtype != np.uint16:
            # Mode "I" is int32; Pillow opens 16-bit PNGs as "I" or "I;16".
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ImageError(f"unusable image PIL image mode {mode}: values outside 0..65535")
            arr = arr.astype(np.uint16)
        return arr
    if mode in ("1", "LA", "La"):
        return np.asarray(img.convert("L"))
    if mode == "F":
        raise ImageError("unusable image PIL image mode F: float images are not accepted; convert to L or I;16")
    # P, RGBA, CMYK, YCbCr, LAB, HSV...: Pillow's own RGB conversion, as the original demo does.
    return np.asarray(img.convert("RGB"))


def to_array(obj: Any) -> Any:
    """Returns a numpy array for a PIL image or an array-like; raises :class:`ImageError`."""
    try:
        from PIL import Image as PILImage
    except ImportError:
        PILImage = None
    if PILImage is not None and isinstance(obj, PILImage.Image):
        return _from_pil(obj)
    if hasattr(obj, "__array__") or hasattr(obj, "__array_interface__"):
        import numpy as np

        return np.asarray(obj)
    raise ImageError(
        f"unusable image of type {type(obj).__name__}: pass a path, bytes, a numpy array, "
        "a PIL image or a minigpt_med.Image"
    )
