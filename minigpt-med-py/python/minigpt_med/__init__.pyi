"""Type stubs for minigpt_med (the classes are implemented in Rust, in minigpt_med._native)."""

import os
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from ._errors import (
    CancelledError as CancelledError,
    ContextOverflowError as ContextOverflowError,
    ImageError as ImageError,
    InternalError as InternalError,
    MiniGptMedError as MiniGptMedError,
    ModelFileError as ModelFileError,
    OptionsError as OptionsError,
    TokenizerError as TokenizerError,
    UnsupportedError as UnsupportedError,
)

__version__: str
TASKS: Tuple[str, ...]

_Path = Union[str, os.PathLike[str]]
#: Accepted image inputs: a path, encoded bytes, a numpy array (uint8 HxW / HxWx3, uint16 HxW),
#: a PIL image, or an Image.
ImageInput = Union[_Path, bytes, bytearray, npt.NDArray[np.uint8], npt.NDArray[np.uint16], "Image", object]
_Color = Literal["gray", "rgb"]
_Window = Tuple[float, float]
_Task = Literal["report", "vqa", "detection", "refer", "grounding", "identify", "custom"]
_RegionArg = Union["Region", Tuple[float, float, float, float], Sequence[float]]
_Progress = Union[bool, Callable[[int, int], object], None]

class Image:
    """A decoded input image, reusable across calls."""

    def __init__(self, source: ImageInput, *, color: Optional[_Color] = None, window: Optional[_Window] = None) -> None: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def size(self) -> Tuple[int, int]: ...
    @property
    def color(self) -> _Color: ...
    @property
    def pixel_format(self) -> Literal["gray8", "rgb8", "gray16"]: ...
    def with_options(self, *, color: Optional[_Color] = None, window: Optional[_Window] = None) -> "Image": ...

class Region:
    """A region for the identify task."""

    @staticmethod
    def grid(x1: int, y1: int, x2: int, y2: int) -> "Region": ...
    @staticmethod
    def pixels(x1: float, y1: float, x2: float, y2: float) -> "Region": ...

class BoundingBox:
    """A box the model wrote."""

    @property
    def label(self) -> Optional[str]: ...
    @property
    def grid(self) -> Tuple[int, int, int, int]: ...
    @property
    def pixels(self) -> Tuple[float, float, float, float]: ...

class Answer:
    """The model's answer to one task."""

    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> list[int]: ...
    @property
    def boxes(self) -> list[BoundingBox]: ...
    @property
    def stop_reason(self) -> Literal["eos", "max_tokens", "stop_string", "cancelled", "context_full"]: ...
    @property
    def timings(self) -> dict[str, float]: ...
    @overload
    def draw(self, image: ImageInput, *, window: Optional[_Window] = None, as_array: Literal[False] = False) -> Any:
        """The boxes drawn over ``image`` as a ``PIL.Image`` (one colour per label)."""
    @overload
    def draw(self, image: ImageInput, *, window: Optional[_Window] = None, as_array: Literal[True]) -> npt.NDArray[np.uint8]: ...

class TextStream(Iterator[str]):
    """The pieces of an answer as they are generated (see Model.stream)."""

    def __iter__(self) -> "TextStream": ...
    def __next__(self) -> str: ...
    @property
    def answer(self) -> Optional[Answer]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "TextStream": ...
    def __exit__(self, *exc: object) -> bool: ...

class Chat:
    """A conversation about one image (see Model.chat)."""

    def ask(
        self,
        instruction: Optional[str] = None,
        *,
        task: Optional[_Task] = None,
        prompt: Optional[str] = None,
        region: Optional[_RegionArg] = None,
        preset: Optional[Literal["eval", "greedy", "demo"]] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        stop: Union[str, Sequence[str], None] = None,
        context_limit: Optional[int] = None,
    ) -> Answer: ...
    def stream(
        self,
        instruction: Optional[str] = None,
        *,
        task: Optional[_Task] = None,
        prompt: Optional[str] = None,
        region: Optional[_RegionArg] = None,
        preset: Optional[Literal["eval", "greedy", "demo"]] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        stop: Union[str, Sequence[str], None] = None,
        context_limit: Optional[int] = None,
    ) -> TextStream: ...
    @property
    def turns(self) -> int: ...
    @property
    def context_len(self) -> int: ...

class Study:
    """One image prepared for many questions (see Model.study); thread-safe."""

    def ask(
        self,
        instruction: Optional[str] = None,
        *,
        task: Optional[_Task] = None,
        prompt: Optional[str] = None,
        region: Optional[_RegionArg] = None,
        preset: Optional[Literal["eval", "greedy", "demo"]] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        stop: Union[str, Sequence[str], None] = None,
        context_limit: Optional[int] = None,
    ) -> Answer: ...
    def stream(
        self,
        instruction: Optional[str] = None,
        *,
        task: Optional[_Task] = None,
        prompt: Optional[str] = None,
        region: Optional[_RegionArg] = None,
        preset: Optional[Literal["eval", "greedy", "demo"]] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        stop: Union[str, Sequence[str], None] = None,
        context_limit: Optional[int] = None,
    ) -> TextStream: ...
    @property
    def prefix_len(self) -> int: ...

class Model:
    """A loaded MiniGPT-Med model (thread-safe; loading and generating release the GIL)."""

    @staticmethod
    def load(
        llama: _Path,
        vit: Optional[_Path] = None,
        checkpoint: Optional[_Path] = None,
        config: Optional[_Path] = None,
        *,
        device: str = "cpu",
        dtype: str = "f32",
        vit_dtype: str = "f32",
        kv_dtype: Literal["f32", "f16"] = "f32",
        progress: _Progress = True,
    ) -> "Model":
        """A converted model file (``Model.load("x.gguf")``) or the three original files."""
        ...
    @staticmethod
    def load_dir(
        directory: _Path,
        *,
        device: str = "cpu",
        dtype: str = "f32",
        vit_dtype: str = "f32",
        kv_dtype: Literal["f32", "f16"] = "f32",
        progress: _Progress = True,
    ) -> "Model": ...
    def generate(
        self,
        image: ImageInput,
        task: _Task = "report",
        prompt: Optional[str] = None,
        *,
        region: Optional[_RegionArg] = None,
        color: Optional[_Color] = None,
        window: Optional[_Window] = None,
        preset: Optional[Literal["eval", "greedy", "demo"]] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        stop: Union[str, Sequence[str], None] = None,
        context_limit: Optional[int] = None,
    ) -> Answer: ...
    def stream(
        self,
        image: ImageInput,
        task: _Task = "report",
        prompt: Optional[str] = None,
        *,
        region: Optional[_RegionArg] = None,
        color: Optional[_Color] = None,
        window: Optional[_Window] = None,
        preset: Optional[Literal["eval", "greedy", "demo"]] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        stop: Union[str, Sequence[str], None] = None,
        context_limit: Optional[int] = None,
    ) -> TextStream: ...
    def generate_batch(
        self,
        items: Iterable[Mapping[str, object]],
        *,
        batch_size: Optional[int] = None,
        preset: Optional[Literal["eval", "greedy", "demo"]] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        stop: Union[str, Sequence[str], None] = None,
        context_limit: Optional[int] = None,
    ) -> list[Union[Answer, MiniGptMedError]]:
        """Answers every item (dicts with ``image`` and ``task``/``prompt``/``instruction``/
        ``region``/``color``/``window``) decoding together; a failing item's slot holds its
        exception instance."""
        ...
    def study(
        self,
        image: ImageInput,
        *,
        color: Optional[Literal["gray", "rgb"]] = None,
        window: Optional[Tuple[float, float]] = None,
    ) -> Study: ...
    def chat(
        self,
        image: ImageInput,
        *,
        color: Optional[_Color] = None,
        window: Optional[_Window] = None,
        history: Literal["keep_answers", "original"] = "keep_answers",
    ) -> Chat: ...
    @property
    def info(self) -> dict[str, object]: ...
    @property
    def image_size(self) -> int: ...

def preprocess(
    image: ImageInput, *, color: Optional[_Color] = None, window: Optional[_Window] = None, size: int = 448
) -> npt.NDArray[np.uint8]: ...
def parse_boxes(text: str, width: int, height: int) -> list[BoundingBox]: ...
def set_threads(threads: int) -> None:
    """CPU threads for all matrix work; call before loading a model (``OptionsError`` for 0)."""
