#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/ from the test fixtures
and a few hand-made cases. scripts/fuzz.sh starts each target from these and its corpus; the
committed corpus (fuzz/corpus/) is what the fuzzer kept, minimized, and is replayed by
`cargo test`."""
import json
import shutil
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = Path(__file__).resolve().parent / "seeds"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def copy(target, path):
    put(target, path.name, path.read_bytes())


def safetensors(tensors):
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blob


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    for p in sorted((FIX / "hostile").glob("*.pth")):
        if p.stat().st_size < 300_000:
            copy("pth", p)
    copy("pth", FIX / "tiny" / "minigpt_med.pth")

    put("safetensors", "small.safetensors", safetensors({
        "a": ("F32", [2, 3], struct.pack("<6f", *range(6))),
        "b": ("F16", [4], b"\x00\x3c" * 4),
        "c": ("BF16", [1, 2], b"\x80\x3f\x00\x40"),
    }))
    put("safetensors", "empty.safetensors", safetensors({}))
    put("safetensors", "meta.safetensors", b"\x1b\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{"a":"b"}} ')
    put("safetensors", "huge_shape.safetensors", safetensors({"x": ("F32", [2147483647, 64], b"\x00" * 16)}))

    tiny = FIX / "tiny"
    put("configs", "config.json", (tiny / "llama-2-7b-chat-hf" / "config.json").read_bytes())
    put("configs", "minigpt_med.json", (tiny / "minigpt_med.json").read_bytes())
    put("configs", "bomb.json", '{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1000000000000,'
        '"num_attention_heads":4,"vocab_size":32000,"max_position_embeddings":1000000000}')
    put("configs", "zero.json", '{"vision":{"patch_size":0,"image_size":0},"connector":{"tokens_per_group":0}}')

    for p in sorted((tiny / "images").iterdir()):
        if p.stat().st_size < 70_000:
            copy("image", p)
    for p in sorted((FIX / "dicom").glob("*.png")):
        if p.stat().st_size < 3000:
            copy("image", p)
    for p in sorted((FIX / "dicom").glob("*.dcm")):
        copy("dicom", p)

    golden = json.loads((tiny / "golden.json").read_text())
    texts = ["<p>pneumonia</p> {<10><20><30><40>}", "{<0><0><100><100>}<delim>{<5><5><6><6>}",
             "<p>a</p>{<1><2><3>}", "<p>x</p> {<99><98><2><1>} <p>y</p>{<-5><500><7><8>}", "10, 20, 30, 40"]
    texts += [p.get("generated_text", "") for p in golden.get("prompts", []) if p.get("generated_text")]
    for i, t in enumerate(texts):
        put("boxes", f"text{i}", struct.pack("<HH", 640, 480) + t.encode())

    requests = [(0, "Describe this image in detail."), (1, "Is there a pleural effusion?"), (2, "pneumonia"),
                (3, "the nodule in the left lung"), (4, ""), (0x85, "10,20,30,40|what is this?"),
                (0xC5, "0,0,639,479|"), (6, "[vqa] <Img><ImageHere></Img> twice"),
                (1, '{"temperature":0.7,"top_p":0.9,"seed":3}'), (1, '{"preset":"demo","max_new_tokens":5}'),
                (1, '{"top_k":5}')]
    for i, (sel, t) in enumerate(requests):
        put("request", f"req{i}", bytes([sel]) + t.encode())

    try:  # other encodings of a small image, where Pillow is installed
        import io
        from PIL import Image
        src = Image.open(tiny / "images" / "synthetic_gradient.png").convert("RGB").resize((40, 24))
        for name, mode, fmt, kw in [("g.jpg", "L", "JPEG", {}), ("p.jpg", "RGB", "JPEG", {"progressive": True}),
                                    ("cmyk.jpg", "CMYK", "JPEG", {}), ("s.jpg", "RGB", "JPEG", {"subsampling": 2}),
                                    ("t.tif", "RGB", "TIFF", {}), ("i16.tif", "I;16", "TIFF", {}),
                                    ("b.bmp", "RGB", "BMP", {}), ("pal.png", "P", "PNG", {}),
                                    ("la.png", "LA", "PNG", {}), ("i16.png", "I;16", "PNG", {})]:
            buf = io.BytesIO()
            img = src.convert("L").convert(mode) if mode.startswith("I") else src.convert(mode)
            img.save(buf, fmt, **kw)
            put("image", name, buf.getvalue())
    except ImportError:
        pass

    png = (tiny / "images" / "synthetic_gradient.png").read_bytes()

    def cstr(s):
        b = s.encode()
        return bytes([len(b)]) + b

    def generate(task, text, chat=False, region=None, max_new=4, sampling=0):
        op = bytes([6 if chat else 5])
        body = bytes([0, task]) + cstr(text) + b"\x00"
        body += bytes([0, region[0] if region else 0]) + bytes(region[1] if region else [0, 0, 0, 0])
        body += bytes([1 if region else 0])
        body += b"\x00" + bytes([max_new]) + bytes([0, sampling]) + b"\x00" + b"\x00" + b"\x00"
        body += b"\x00"  # which image / chat
        return op + body

    image = b"\x00" + struct.pack("<H", len(png)) + png + b"\x00"
    read = b"\x09\x00\x00"
    put("capi", "generate_report", image + generate(0, "") + read)
    put("capi", "generate_vqa", image + generate(1, "Is there a nodule?") + read + b"\x0a\x00\x00\x01")
    put("capi", "identify_region", image + generate(5, "what is here?", region=(0, [30, 40, 60, 70])) + read)
    put("capi", "chat", image + b"\x07\x00\x00\x00\x00" + generate(1, "Where?", chat=True) + b"\x08\x00" + read)
    put("capi", "pixels", b"\x01\x10\x08\x00\x00\x00\x01\x07\x00" + b"\x02\x00\x00\x01" + b"\x03\x00" +
        struct.pack("<dd", 40.0, 400.0) + b"\x04\x00\x01" + generate(2, "effusion"))
    put("capi", "nulls", b"\x00\x00\x00\xff" + b"\x05" + b"\xff" * 40 + b"\x0b\x00\x05\x01" + b"\x0c\x0d\x00\x00")


if __name__ == "__main__":
    main()
