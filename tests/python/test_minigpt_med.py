"""Tests of the `minigpt_med` Python package on the bundled tiny model (random weights).

Run by `scripts/test-python.sh` against a wheel built with maturin and installed in a fresh
virtual environment. Exact token ids come from tests/fixtures/tiny/golden.json, produced by an
independent fp32 PyTorch reference (see tests/fixtures/README.md).
"""

from __future__ import annotations

import _thread
import json
import pathlib
import signal
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image as PILImage

import minigpt_med as mm

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"
GOLDEN = json.loads((TINY / "golden.json").read_text())
PROMPTS = {p["name"]: p for p in GOLDEN["prompts"]}
IMAGES = {i["name"]: i for i in GOLDEN["images"]}
CT = TINY / "images" / "ct_nlst.png"  # 512x512 gray PNG: decodes exactly like Pillow


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Minimal safetensors reader (the format is a JSON header and raw little-endian data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    dtypes = {"U8": np.uint8, "I64": np.int64, "F32": np.float32, "F16": np.float16}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        buf = raw[8 + n + start : 8 + n + end]
        out[name] = np.frombuffer(buf, dtype=dtypes[meta["dtype"]]).reshape(meta["shape"])
    return out


TENSORS = read_safetensors(TINY / "golden.safetensors")


def task_args(p: dict) -> dict:
    """The typed task of a golden prompt, as generate() keywords."""
    instruction = p["instruction"]
    arg = instruction.split("] ", 1)[1] if "] " in instruction else None
    task = p["task"]
    if task == "identify":
        return {"task": "identify", "region": mm.Region.grid(12, 34, 56, 78)}
    if task.startswith("report"):
        return {"task": "report"}
    if task == "grounding":
        return {"task": "grounding"}
    return {"task": task, "prompt": arg}


def golden_ids(name: str) -> list[int]:
    return [int(v) for v in TENSORS[f"generated_ids.{name}"]]


def golden_view(image: str) -> np.ndarray:
    """The golden 448x448 resized image as an HxWx3 uint8 array."""
    return np.ascontiguousarray(TENSORS[f"pixel_u8.{image}"].transpose(1, 2, 0))


def png_prompts() -> list[str]:
    return [n for n, p in PROMPTS.items() if IMAGES[p["image"]]["file"].endswith(".png")]


@pytest.fixture(scope="module")
def model() -> mm.Model:
    return mm.Model.load_dir(TINY, progress=False)


# --- goldens -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", png_prompts())
def test_png_files_give_golden_ids(model, name):
    p = PROMPTS[name]
    ans = model.generate(TINY / IMAGES[p["image"]]["file"], max_new_tokens=20, **task_args(p))
    assert ans.token_ids == golden_ids(name)
    assert ans.text == p["answer"]
    assert ans.stop_reason == "max_tokens"
    assert repr(ans).startswith(f"Answer(text={p['answer']!r}, tokens=20, boxes=0")
    assert str(ans) == ans.text


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_all_prompts_from_golden_pixels(model, name):
    # The golden resized pixels fed as a 448x448 RGB array: resizing 448 -> 448 is the
    # identity and gray conversion of R=G=B is exact, so JPEG prompts (whose files our decoder
    # reads 1 level differently from Pillow) are checked exactly too.
    p = PROMPTS[name]
    ans = model.generate(golden_view(p["image"]), max_new_tokens=20, **task_args(p))
    assert ans.token_ids == golden_ids(name)
    assert ans.text == p["answer"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_preprocess_matches_pillow(image):
    view = mm.preprocess(TINY / IMAGES[image]["file"])
    assert view.shape == (448, 448, 3) and view.dtype == np.uint8
    diff = np.abs(view.astype(int) - golden_view(image).astype(int))
    if IMAGES[image]["file"].endswith(".png"):
        assert diff.max() == 0
    else:  # JPEG decoders differ by a level or two (see tests/fixtures/README.md)
        assert diff.max() <= 2


def test_preprocess_options():
    assert mm.preprocess(CT, size=64).shape == (64, 64, 3)
    rgb = mm.preprocess(TINY / "images" / "mri_brain.jpg", color="rgb")
    assert rgb.shape == (448, 448, 3)
    with pytest.raises(mm.OptionsError):
        mm.preprocess(CT, size=0)


# --- image inputs ----------------------------------------------------------------------------


def strided(a: np.ndarray) -> np.ndarray:
    """The same values as `a`, as a non-contiguous view (every other row of a larger array)."""
    big = np.zeros((a.shape[0] * 2,) + a.shape[1:], dtype=a.dtype)
    big[::2] = a
    return big[::2]


def ct_inputs():
    gray = np.asarray(PILImage.open(CT))
    assert gray.dtype == np.uint8 and gray.ndim == 2
    return {
        "str": str(CT),
        "pathlike": CT,
        "bytes": CT.read_bytes(),
        "bytearray": bytearray(CT.read_bytes()),
        "uint8 gray": gray,
        "uint8 gray HxWx1": gray[:, :, None],
        "uint8 rgb": np.stack([gray] * 3, axis=-1),
        "fortran order": np.asfortranarray(gray),
        "strided view": strided(gray),
        "PIL L": PILImage.open(CT),
        "PIL RGB": PILImage.open(CT).convert("RGB"),
        "PIL P": PILImage.open(CT).convert("P"),
        "mm.Image": mm.Image(CT),
    }


@pytest.mark.parametrize("kind", list(ct_inputs()))
def test_image_input_kinds(model, kind):
    image = ct_inputs()[kind]
    p = PROMPTS["p1_refer"]
    ans = model.generate(image, max_new_tokens=20, **task_args(p))
    if kind == "PIL P":  # a palette quantises the gray levels: only check it runs
        assert len(ans.token_ids) == 20
    else:
        assert ans.token_ids == golden_ids("p1_refer"), kind


def test_uint16_inputs(model):
    gray = np.asarray(PILImage.open(CT)).astype(np.uint16) * 257 + 3
    a = model.generate(gray, "vqa", "what?", max_new_tokens=8)
    # The same 16-bit values through PIL ("I;16") and through mm.Image give the same answer.
    b = model.generate(PILImage.fromarray(gray), "vqa", "what?", max_new_tokens=8)
    c = model.generate(mm.Image(gray), "vqa", "what?", max_new_tokens=8)
    assert a.token_ids == b.token_ids == c.token_ids
    assert mm.Image(gray).pixel_format == "gray16"
    # A window changes what the model sees.
    narrow = mm.preprocess(gray, window=(30000.0, 2000.0))
    assert not np.array_equal(narrow, mm.preprocess(gray))
    # A 16-bit PNG file.
    import io

    buf = io.BytesIO()
    PILImage.fromarray(gray).save(buf, format="PNG")
    assert mm.Image(buf.getvalue()).pixel_format == "gray16"


def test_image_class(model):
    img = mm.Image(CT, color="rgb")
    assert (img.width, img.height, img.size) == (512, 512, (512, 512))
    assert img.color == "rgb" and img.pixel_format == "gray8"
    assert img.with_options(color="gray").color == "gray"
    assert "512" in repr(img)


def test_color_modes(model):
    mri = TINY / "images" / "mri_brain.jpg"
    gray = mm.preprocess(mri, color="gray")
    rgb = mm.preprocess(mri, color="rgb")
    assert np.array_equal(gray[..., 0], gray[..., 1])
    assert model.generate(mri, "vqa", "what?", color="rgb", max_new_tokens=4).stop_reason in ("max_tokens", "eos")
    assert rgb.shape == gray.shape


# --- tasks and options -----------------------------------------------------------------------


def test_every_task(model):
    img = mm.Image(CT)
    cases = {
        "report": dict(task="report"),
        "report with text": dict(task="report", prompt="Describe this image in detail"),
        "vqa": dict(task="vqa", prompt="Is there a nodule?"),
        "detection": dict(task="detection", prompt="nodule"),
        "refer": dict(task="refer", prompt="the nodule"),
        "grounding": dict(task="grounding"),
        "identify grid": dict(task="identify", region=mm.Region.grid(12, 34, 56, 78)),
        "identify pixels": dict(task="identify", region=(62, 175, 287, 400)),
        "identify Region.pixels": dict(task="identify", region=mm.Region.pixels(62, 175, 287, 400)),
        "custom": dict(task="custom", prompt="[vqa] Is there a nodule?"),
    }
    answers = {k: model.generate(img, max_new_tokens=6, **kw) for k, kw in cases.items()}
    for k, a in answers.items():
        assert 1 <= len(a.token_ids) <= 6, k
        assert isinstance(a.text, str) and set(a.timings) == {"encode_ms", "prefill_ms", "decode_ms", "tokens_per_s"}
    # Same instruction, same answer: the typed tasks build the instructions of the original.
    assert answers["report"].token_ids == answers["report with text"].token_ids
    assert answers["vqa"].token_ids == answers["custom"].token_ids
    # 512 px image: int(62 / 512 * 100) = 12, ... -> the same grid box.
    assert answers["identify grid"].token_ids == answers["identify pixels"].token_ids
    assert answers["identify grid"].token_ids == answers["identify Region.pixels"].token_ids
    assert answers["identify grid"].token_ids == golden_ids("p3_identify")[:6]


def test_sampling_options(model):
    a = model.generate(CT, "vqa", "what?", temperature=0.8, top_p=0.9, top_k=40, seed=7, max_new_tokens=12)
    b = model.generate(CT, "vqa", "what?", temperature=0.8, top_p=0.9, top_k=40, seed=7, max_new_tokens=12)
    assert a.token_ids == b.token_ids
    demo = model.generate(CT, "vqa", "what?", preset="demo", seed=3, max_new_tokens=12)
    assert 1 <= len(demo.token_ids) <= 12
    # top_k=1 is greedy whatever the temperature.
    greedy = model.generate(CT, "vqa", "what?", max_new_tokens=12)
    k1 = model.generate(CT, "vqa", "what?", temperature=1.5, top_k=1, seed=1, max_new_tokens=12)
    assert k1.token_ids == greedy.token_ids
    pen = model.generate(CT, "vqa", "what?", repetition_penalty=1.3, max_new_tokens=12)
    assert len(pen.token_ids) >= 1
    limited = model.generate(CT, "vqa", "what?", context_limit=300, max_new_tokens=12)
    assert len(limited.token_ids) >= 1


def test_stop_strings(model):
    full = model.generate(CT, max_new_tokens=20, **task_args(PROMPTS["p1_refer"]))
    stop = full.text[5:8]
    cut = model.generate(CT, max_new_tokens=20, stop=stop, **task_args(PROMPTS["p1_refer"]))
    assert cut.stop_reason == "stop_string"
    assert stop not in cut.text and full.text.startswith(cut.text)
    many = model.generate(CT, max_new_tokens=20, stop=[stop, "zzzz"], **task_args(PROMPTS["p1_refer"]))
    assert many.text == cut.text


def test_answer_and_boxes():
    boxes = mm.parse_boxes("<p>nodule</p> {<10><20><30><40>}<delim>{<50><60><70><80>} and {<1><2><3><4>}", 200, 100)
    assert [b.label for b in boxes] == ["nodule", "nodule", None]
    assert boxes[0].grid == (10, 20, 30, 40)
    assert boxes[0].pixels == (20.0, 20.0, 60.0, 40.0)
    assert repr(boxes[0]) == "BoundingBox(label='nodule', grid=(10, 20, 30, 40), pixels=(20.0, 20.0, 60.0, 40.0))"
    assert "label=None" in repr(boxes[2])
    assert mm.parse_boxes("no boxes", 10, 10) == []


def test_model_info(model):
    info = model.info
    assert info["hidden_size"] == 64 and info["image_size"] == 448 == model.image_size
    assert info["llm_dtype"] == "f32"
    assert "Model(" in repr(model)


def test_an_f16_kv_cache_keeps_the_golden_tokens():
    # p4_report on the gradient PNG: its top two logits never come closer than 0.14, far more
    # than an f16 cache moves them (<= 0.05 on the tiny model; tests/kv_dtype.rs).
    m = mm.Model.load_dir(TINY, kv_dtype="f16", progress=False)
    assert m.info["kv_dtype"] == "f16"
    p = PROMPTS["p4_report"]
    ans = m.generate(TINY / IMAGES[p["image"]]["file"], max_new_tokens=20, **task_args(p))
    assert ans.token_ids == golden_ids("p4_report")


def test_load_with_files_dtypes_and_progress():
    calls = []
    m = mm.Model.load(
        llama=TINY / "llama-2-7b-chat-hf",
        vit=str(TINY / "eva_vit_g.pth"),
        checkpoint=TINY / "minigpt_med.pth",
        config=TINY / "minigpt_med.json",
        dtype="f16",
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls and calls[-1][0] == calls[-1][1]
    assert [d for d, _ in calls] == list(range(1, len(calls) + 1))
    assert m.info["llm_dtype"] == "f16"
    assert len(m.generate(CT, "vqa", "what?", max_new_tokens=4).token_ids) >= 1
    # The default bar (tqdm when installed) and no progress.
    mm.Model.load_dir(TINY, progress=True)
    mm.Model.load_dir(TINY, progress=False, dtype="q8_0")
    with pytest.raises(mm.OptionsError, match="use f32 or f16"):
        mm.Model.load_dir(TINY, progress=False, kv_dtype="q4_0")

    def boom(done, total):
        raise RuntimeError("progress failed")

    with pytest.raises(RuntimeError, match="progress failed"):
        mm.Model.load_dir(TINY, progress=boom)

    # Returning False cancels the load at that step; None (a bar's return) goes on.
    steps = []

    def stop_at_two(done, total):
        steps.append(done)
        return done < 2

    with pytest.raises(mm.CancelledError, match="progress callback returned false"):
        mm.Model.load_dir(TINY, progress=stop_at_two)
    assert steps == [1, 2]


def test_temperature_zero_is_greedy(model):
    greedy = model.generate(CT, "vqa", "what?", max_new_tokens=6).token_ids
    assert model.generate(CT, "vqa", "what?", temperature=0, max_new_tokens=6).token_ids == greedy


def test_grid_regions_take_whole_numbers_only():
    assert repr(mm.Region.grid(1, 2, 3, 4)) == "Region.grid(1, 2, 3, 4)"
    with pytest.raises(mm.OptionsError, match="whole number"):
        mm.Region.grid(1.5, 2, 3, 4)
    with pytest.raises(mm.OptionsError, match="0..=100"):
        mm.Region.grid(0, 0, 101, 5)


# --- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", png_prompts())
def test_stream_equals_generate(model, name):
    p = PROMPTS[name]
    image = TINY / IMAGES[p["image"]]["file"]
    plain = model.generate(image, max_new_tokens=20, **task_args(p))
    stream = model.stream(image, max_new_tokens=20, **task_args(p))
    assert stream.answer is None
    pieces = list(stream)
    assert "".join(pieces) == plain.text == p["answer"]
    assert stream.answer.token_ids == plain.token_ids == golden_ids(name)
    assert next(stream, None) is None  # exhausted stays exhausted


def test_stream_long_answer_equals_generate(model):
    plain = model.generate(CT, "report", max_new_tokens=300)
    assert len(plain.token_ids) > 100
    assert "".join(model.stream(CT, "report", max_new_tokens=300)) == plain.text


def test_stream_close_cancels(model):
    # synthetic_gradient's grounding answer streams ~100 tokens before the core's
    # long stretch without new text, so the cancellation is seen at once.
    synthetic = TINY / "images" / "synthetic_gradient.png"
    with model.stream(synthetic, "grounding", max_new_tokens=3000) as stream:
        first = next(stream)
        assert first
    assert stream.answer is not None
    assert stream.answer.stop_reason == "cancelled"
    assert len(stream.answer.token_ids) < 100
    assert list(stream) == []
    # Dropping an unfinished stream cancels it too (its worker stops at the next piece).
    s = model.stream(synthetic, "grounding", max_new_tokens=3000)
    next(s)
    del s


def test_stream_errors_are_raised(model):
    with pytest.raises(mm.OptionsError):
        model.stream(CT, "vqa")  # no question: raised before any thread starts
    with pytest.raises(mm.ContextOverflowError):
        list(model.stream(CT, "vqa", "word " * 5000))


# --- chat ------------------------------------------------------------------------------------


def test_chat(model):
    chat = model.chat(CT)
    p = PROMPTS["p1_refer"]
    first = chat.ask(p["instruction"], max_new_tokens=20)
    # The first turn is exactly a generation.
    assert first.token_ids == golden_ids("p1_refer")
    second = chat.ask("[vqa] Is there a nodule?", max_new_tokens=10)
    assert len(second.token_ids) >= 1
    assert chat.turns == 2 and chat.context_len > 0
    by_task = model.chat(CT).ask(task="refer", prompt="give me the location of tumor ", max_new_tokens=20)
    assert by_task.token_ids == first.token_ids
    streamed = model.chat(CT).stream(p["instruction"], max_new_tokens=20)
    assert "".join(streamed) == first.text
    original = model.chat(CT, history="original")
    original.ask(p["instruction"], max_new_tokens=5)
    original.ask("[vqa] and?", max_new_tokens=5)
    assert original.turns == 2
    with pytest.raises(mm.OptionsError):
        chat.ask()
    with pytest.raises(mm.OptionsError):
        chat.ask("[vqa] x", task="vqa")
    with pytest.raises(mm.OptionsError):
        model.chat(CT, history="forever")
    with pytest.raises(mm.OptionsError):
        chat.ask("follow-up with <ImageHere>", max_new_tokens=2)


# --- errors ----------------------------------------------------------------------------------


def test_bad_paths(model, tmp_path):
    with pytest.raises(mm.ImageError, match="no_such.png"):
        model.generate(tmp_path / "no_such.png")
    with pytest.raises(mm.ModelFileError) as e:
        mm.Model.load_dir(tmp_path / "nothing", progress=False)
    assert isinstance(e.value, mm.MiniGptMedError) and isinstance(e.value, OSError)
    with pytest.raises(mm.ModelFileError):
        mm.Model.load(tmp_path, TINY / "eva_vit_g.pth", TINY / "minigpt_med.pth", progress=False)
    # The ViT file given as the checkpoint: a format/tensor error naming the file.
    with pytest.raises(mm.ModelFileError, match="minigpt_med|checkpoint|eva_vit_g"):
        mm.Model.load(TINY / "llama-2-7b-chat-hf", TINY / "eva_vit_g.pth", TINY / "eva_vit_g.pth", progress=False)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(mm.ImageError):
        model.generate(garbage)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), dtype=np.float64),
        np.zeros((10, 10), dtype=np.int64),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((10, 10, 2), dtype=np.uint8),
        np.zeros((10, 10, 3), dtype=np.uint16),
        np.zeros((2, 10, 10, 3), dtype=np.uint8),
        np.zeros((10,), dtype=np.uint8),
        np.zeros((0, 10), dtype=np.uint8),
        np.zeros((10, 0, 3), dtype=np.uint8),
        b"",
        b"\x89PNG\r\n\x1a\ntruncated",
        12345,
        None,
        object(),
        PILImage.new("F", (8, 8)),
    ],
    ids=lambda v: type(v).__name__ + str(getattr(v, "shape", getattr(v, "dtype", ""))),
)
def test_bad_images(model, bad):
    with pytest.raises(mm.ImageError) as e:
        model.generate(bad, max_new_tokens=2)
    assert isinstance(e.value, ValueError)
    assert "image" in str(e.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=0.7, top_p=1.5), "top_p"),
        (dict(temperature=0.7, top_k=-3), "top_k"),
        (dict(seed=3), "seed"),
        (dict(top_p=0.5), "top_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(stop=""), "stop"),
        (dict(stop=["a", ""]), "stop"),
        (dict(context_limit=10, max_new_tokens=20), "context_limit"),
        (dict(preset="creative"), "preset"),
        (dict(task="dance"), "unknown task"),
        (dict(task="vqa"), "question"),
        (dict(task="identify"), "region"),
        (dict(task="identify", region=(1, 2, 3)), "region"),
        (dict(color="purple"), "colour"),
        (dict(window=(100.0, 0.0)), "window"),
        (dict(task="vqa", prompt="q", region=(1, 2, 3, 4)), "only used by the identify task"),
        (dict(task="identify", region=(1, float("nan"), 3, 4)), "finite"),
    ],
)
def test_bad_options(model, kwargs, match):
    with pytest.raises(mm.OptionsError, match=match) as e:
        model.generate(CT, **kwargs)
    assert isinstance(e.value, ValueError) and isinstance(e.value, mm.MiniGptMedError)


def test_bad_load_options():
    with pytest.raises(mm.OptionsError, match="dtype"):
        mm.Model.load_dir(TINY, dtype="f64", progress=False)
    with pytest.raises(mm.OptionsError, match="device"):
        mm.Model.load_dir(TINY, device="tpu", progress=False)
    with pytest.raises(mm.OptionsError):
        mm.Model.load_dir(TINY, vit_dtype="q4_0", progress=False)
    with pytest.raises(mm.OptionsError):
        mm.Region.grid(-1, 0, 5, 5)


def test_context_overflow(model):
    with pytest.raises(mm.ContextOverflowError, match="positions"):
        model.generate(CT, "vqa", "word " * 5000)
    # context_limit left-truncates the prompt instead.
    assert model.generate(CT, "vqa", "what?", max_new_tokens=20, context_limit=100).token_ids


def test_exception_hierarchy():
    assert issubclass(mm.ModelFileError, mm.MiniGptMedError)
    assert issubclass(mm.ContextOverflowError, mm.OptionsError)
    for cls in (mm.TokenizerError, mm.UnsupportedError, mm.CancelledError, mm.InternalError):
        assert issubclass(cls, mm.MiniGptMedError)


def test_model_still_works_after_errors(model):
    for bad in (np.zeros((3, 3), dtype=np.float32), b"junk"):
        with pytest.raises(mm.ImageError):
            model.generate(bad)
    ans = model.generate(CT, max_new_tokens=20, **task_args(PROMPTS["p1_refer"]))
    assert ans.token_ids == golden_ids("p1_refer")


# --- threads and interrupts ------------------------------------------------------------------


def test_two_threads_share_one_model(model):
    jobs = [("p1_refer", CT), ("p3_identify", CT), ("p4_report", TINY / "images" / "synthetic_gradient.png")] * 2

    def run(job):
        name, image = job
        return model.generate(image, max_new_tokens=20, **task_args(PROMPTS[name])).token_ids

    # Sequential answers are the goldens; two threads at once must give the same.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, jobs))
    assert results == [golden_ids(name) for name, _ in jobs]


def test_generation_releases_the_gil(model):
    # While a long generation runs on another thread, this thread keeps running Python.
    done = threading.Event()
    ticks = 0

    def work():
        model.generate(CT, "grounding", max_new_tokens=400)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    assert ticks > 10


def interrupt_after(seconds: float) -> threading.Timer:
    """Makes the main thread see SIGINT, as if Ctrl-C was pressed, after `seconds`."""
    # A process started in the background (CI runners, nohup) inherits SIGINT as ignored, and
    # then interrupt_main() does nothing; restore Python's own handler, as a terminal has it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(seconds, _thread.interrupt_main)
    timer.start()
    return timer


def test_ctrl_c_interrupts_generate(model):
    # The grounding answer on this image runs to ~1500 tokens (seconds); Ctrl-C arrives while
    # the image is still being encoded and must be raised at once, not when the answer is done.
    full_start = time.monotonic()
    full = model.generate(CT, "grounding", max_new_tokens=3000)
    full_time = time.monotonic() - full_start
    assert full.stop_reason == "eos" and len(full.token_ids) > 1000
    timer = interrupt_after(0.05)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        model.generate(CT, "grounding", max_new_tokens=3000)
    elapsed = time.monotonic() - start
    timer.cancel()
    assert elapsed < full_time / 2, f"interrupted after {elapsed:.2f}s; a full run takes {full_time:.2f}s"
    # The model is still usable.
    assert model.generate(CT, max_new_tokens=20, **task_args(PROMPTS["p1_refer"])).token_ids == golden_ids("p1_refer")


def test_ctrl_c_interrupts_chat(model):
    chat = model.chat(CT)
    timer = interrupt_after(0.05)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        chat.ask("[grounding] please describe this image in details", max_new_tokens=3000)
    timer.cancel()
    assert time.monotonic() - start < 2.0


def test_ctrl_c_interrupts_stream(model):
    # While __next__ waits for the first piece (image encoding), Ctrl-C raises at once and
    # cancels the worker, which stops at its first piece.
    stream = model.stream(TINY / "images" / "synthetic_gradient.png", "grounding", max_new_tokens=3000)
    timer = interrupt_after(0.02)
    with pytest.raises(KeyboardInterrupt):
        for _ in stream:
            pass
    timer.cancel()
    stream.close()
    assert stream.answer is not None and stream.answer.stop_reason == "cancelled"
    assert len(stream.answer.token_ids) < 100


def test_bad_inputs_never_crash_the_interpreter():
    # A fuzz-ish sweep in a child process: whatever happens, it must exit normally.
    import subprocess
    import sys

    code = f"""
import numpy as np, minigpt_med as mm
m = mm.Model.load_dir({str(TINY)!r}, progress=False)
rng = np.random.default_rng(0)
inputs = [rng.integers(0, 256, (s, s + 3), dtype=np.uint8) for s in (1, 2, 7)]
inputs += [rng.integers(0, 65536, (5, 9), dtype=np.uint16), np.zeros((1, 1, 3), np.uint8)]
inputs += [bytes(rng.integers(0, 256, 200, dtype=np.uint8)), b"BM" + bytes(60), b"\\xff\\xd8\\xff" + bytes(40)]
for x in inputs:
    try:
        m.generate(x, "vqa", "x", max_new_tokens=2)
    except mm.MiniGptMedError:
        pass
for text in ["{{<1><2><3>}}", "<p>", "</p>{{", "{{<99999999999999999999><0><0><0>}}", "\\u00e9<p>\\u00e9</p>{{<1><2><3><4>}}"]:
    mm.parse_boxes(text, 3, 3)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_draw_returns_the_boxes_over_the_input():
    from PIL import Image as PILImage

    ans = mm.parse_boxes("<p>nodule</p> {<10><20><50><60>}", 200, 100)
    assert ans[0].pixels == (20.0, 20.0, 100.0, 60.0)
    gray = np.full((100, 200), 40, dtype=np.uint8)
    model_answer = mm.Model.load_dir(str(TINY)).generate(gray, "report", max_new_tokens=2)
    img = model_answer.draw(gray)
    assert isinstance(img, PILImage.Image) and img.size == (200, 100)
    arr = model_answer.draw(gray, as_array=True)
    assert arr.shape == (100, 200, 3) and arr.dtype == np.uint8
    # No boxes in a 2-token random answer: the drawing is the gray input, replicated.
    if not model_answer.boxes:
        assert (arr == 40).all()


def test_dicom_input(model):
    dcm = TINY.parent / "dicom" / "CT_small.dcm"
    lung = mm.preprocess(str(dcm), window=(-600.0, 1500.0))
    default = mm.preprocess(str(dcm))
    assert lung.shape == (448, 448, 3) and not (lung == default).all()
    assert model.generate(dcm.read_bytes(), "vqa", prompt="what is shown?", max_new_tokens=3).token_ids


def test_set_threads_rejects_zero():
    with pytest.raises(mm.OptionsError, match="at least 1"):
        mm.set_threads(0)
