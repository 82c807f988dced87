"""Converted model files: `minigpt-med convert` writes one GGUF that `Model.load(path)` opens
and answers from exactly as from the original files, and that llama.cpp's own reader (the
`gguf` package, gguf-py) reads: its names, block types and row order are llama.cpp's."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

import minigpt_med as mm

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"
CT = TINY / "images" / "ct_nlst.png"
GOLDEN = json.loads((TINY / "golden.json").read_text())
CLI = os.environ.get("MINIGPT_MED_CLI")


def golden(name: str) -> dict:
    return next(p for p in GOLDEN["prompts"] if p["name"] == name)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, pathlib.Path]:
    if not CLI:
        raise RuntimeError("MINIGPT_MED_CLI must name the built CLI (scripts/test-python.sh sets it)")
    out = {}
    for dtype in ["f32", "q8_0"]:
        path = tmp_path_factory.mktemp("gguf") / f"tiny-{dtype}.gguf"
        subprocess.run([CLI, "convert", "--model-dir", str(TINY), "--llm-dtype", dtype, "--vit-dtype", "f32",
                        "--out", str(path)], check=True, capture_output=True)
        out[dtype] = path
    return out


def test_model_load_of_a_converted_file_matches_the_reference(converted):
    model = mm.Model.load(converted["f32"], progress=False)
    p = golden("p1_refer")
    answer = model.generate(CT, task="refer", prompt="give me the location of tumor ", max_new_tokens=20)
    assert answer.token_ids == p["generated_ids"]
    # The same file opened again and the original files agree on a quantized file too.
    q_file = mm.Model.load(converted["q8_0"], progress=False)
    q_orig = mm.Model.load_dir(TINY, dtype="q8_0", progress=False)
    a = q_file.generate(CT, task="report", max_new_tokens=12)
    b = q_orig.generate(CT, task="report", max_new_tokens=12)
    assert a.token_ids == b.token_ids


def test_load_refuses_half_of_the_original_files(converted):
    with pytest.raises(mm.OptionsError, match="vit= and checkpoint="):
        mm.Model.load(TINY / "llama-2-7b-chat-hf", vit=TINY / "eva_vit_g.pth")
    with pytest.raises(mm.ModelFileError, match="GGUF"):
        mm.Model.load(TINY / "minigpt_med.pth")


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = {"F16": np.float16, "F32": np.float32}[info["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dtype).reshape(info["shape"]).astype(np.float32)
    return out


def test_llama_cpp_reader_sees_a_standard_llama(converted):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(converted["q8_0"]))
    fields = reader.fields
    arch = fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    assert int(fields["llama.block_count"].parts[-1][0]) == 2
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.ffn_gate.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    hf = read_safetensors(TINY / "llama-2-7b-chat-hf" / "model.safetensors")
    heads = 4
    for name, hf_name, permuted in [("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight", False),
                                    ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", True)]:
        t = tensors[name]
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(hf[hf_name].shape)
        want = hf[hf_name]
        if permuted:
            # llama.cpp's convert_hf_to_gguf permutation of q/k rows.
            rows = want.shape[0]
            want = want.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(want.shape)
        # Q8_0: each value within half a step (step = amax / 127) of its block's scale, plus
        # the f16 rounding of the scale itself (up to 127 steps x 2^-11): 0.57 steps. Rows in
        # the wrong order, or the wrong nibble layout, would be off by whole values.
        step = np.abs(want.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
        err = np.abs(values.reshape(-1, 32) - want.reshape(-1, 32))
        assert (err <= step * 0.57 + 1e-6).all(), f"{name}: max error {(err / step).max()} steps"

