"""MiniGPT-Med inference in Python: one radiology image and an instruction in, text and boxes out.

A thin binding over the Rust engine ``minigpt-med-core``::

    import minigpt_med as mm

    model = mm.Model.load(llama="llama-2-7b-chat-hf", vit="eva_vit_g.pth",
                          checkpoint="minigpt_med.pth")
    ans = model.generate("chest.png", task="refer", prompt="the nodule in the left lung")
    print(ans.text, ans.boxes)
    for piece in model.stream("chest.png", task="report"):
        print(piece, end="")

Images may be paths, encoded bytes, numpy arrays (uint8 ``HxW`` or ``HxWx3``, uint16 ``HxW``),
PIL images or :class:`Image` objects. Errors are :class:`MiniGptMedError` subclasses.
"""

from __future__ import annotations

from ._errors import (
    CancelledError,
    ContextOverflowError,
    ImageError,
    InternalError,
    MiniGptMedError,
    ModelFileError,
    OptionsError,
    TokenizerError,
    UnsupportedError,
)
from ._native import (
    Answer,
    BoundingBox,
    Chat,
    Image,
    Model,
    Region,
    Study,
    TextStream,
    __version__,
    parse_boxes,
    preprocess,
    set_threads,
)

#: The tasks accepted by ``task=``.
TASKS = ("report", "vqa", "detection", "refer", "grounding", "identify", "custom")

__all__ = [
    "Answer",
    "BoundingBox",
    "CancelledError",
    "Chat",
    "ContextOverflowError",
    "Image",
    "ImageError",
    "InternalError",
    "MiniGptMedError",
    "Model",
    "ModelFileError",
    "OptionsError",
    "Study",
    "Region",
    "TASKS",
    "TextStream",
    "TokenizerError",
    "UnsupportedError",
    "__version__",
    "parse_boxes",
    "preprocess",
    "set_threads",
]
