# %% [markdown]
# # minigpt_med quickstart
#
# MiniGPT-Med from Python on the bundled tiny model (random weights, so the answers are
# gibberish; the real model loads the same way from the original files:
# `mm.Model.load(llama="llama-2-7b-chat-hf", vit="eva_vit_g.pth", checkpoint="minigpt_med.pth")`).
#
# Run from the repository root: `python examples/python/quickstart.py` (after installing the
# wheel, e.g. with `bash scripts/test-python.sh` or `maturin develop` in minigpt-med-py/).

# %%
import pathlib

import numpy as np

import minigpt_med as mm

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"
CT = TINY / "images" / "ct_nlst.png"

print("minigpt_med", mm.__version__)

# %% Load (a tqdm bar shows if tqdm is installed; the GIL is released meanwhile).
model = mm.Model.load_dir(TINY)
print(model, model.info)

# %% One task: `refer` asks for the box of a described object.
ans = model.generate(CT, task="refer", prompt="the nodule in the left lung", max_new_tokens=40)
print("text:       ", repr(ans.text))
print("token ids:  ", ans.token_ids[:10], "...")
print("stop reason:", ans.stop_reason)
print("timings:    ", {k: round(v, 1) for k, v in ans.timings.items()})
for box in ans.boxes:
    print("box:", box.label, box.grid, box.pixels)

# %% Every task. `identify` takes a region: pixels of the input, or mm.Region.grid(...) (0-100).
tasks = {
    "report": dict(task="report"),
    "vqa": dict(task="vqa", prompt="Is there a nodule?"),
    "detection": dict(task="detection", prompt="nodule"),
    "grounding": dict(task="grounding"),
    "identify": dict(task="identify", region=(60, 170, 290, 400)),
    "custom": dict(task="custom", prompt="[vqa] Which lung is affected?"),
}
for name, kwargs in tasks.items():
    print(f"{name:>10}: {model.generate(CT, max_new_tokens=12, **kwargs).text!r}")

# %% Streaming: pieces arrive as they are generated and concatenate to the answer.
stream = model.stream(CT, task="report", max_new_tokens=40)
for piece in stream:
    print(piece, end="", flush=True)
print()
assert stream.answer is not None
print("streamed answer has", len(stream.answer.token_ids), "tokens")

# %% Sampling like the original demo (seeded, so reproducible).
print(model.generate(CT, task="vqa", prompt="What is shown?", preset="demo", seed=1, max_new_tokens=20).text)

# %% A conversation: the image is encoded once, follow-ups reuse the KV cache.
chat = model.chat(CT)
print(chat.ask("[vqa] Is there an effusion?", max_new_tokens=10).text)
print(chat.ask("[vqa] Where?", max_new_tokens=10).text, "| turns:", chat.turns)

# %% Inputs: paths, bytes, numpy arrays, PIL images. `preprocess` shows what the model sees.
gray = np.asarray(mm.preprocess(CT))[:, :, 0]
print("model view:", mm.preprocess(CT).shape, "from array:", model.generate(gray, max_new_tokens=5).token_ids)
try:
    from PIL import Image

    print("from PIL:", model.generate(Image.open(CT), max_new_tokens=5).token_ids)
except ImportError:
    pass

# %% Errors are Python exceptions with the engine's message.
try:
    model.generate(CT, task="vqa")
except mm.OptionsError as e:
    print("OptionsError:", e)
try:
    model.generate(np.zeros((4, 4), dtype=np.float32))
except mm.ImageError as e:
    print("ImageError:", e)

# %% Boxes can also be parsed from any text.
print(mm.parse_boxes("<p>nodule</p> {<10><20><30><40>}", 512, 512))
