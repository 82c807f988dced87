"""One engine, one behaviour: the same image, task and decoding options give the same token ids
through the Python package, the command line (`minigpt-med generate --json`) and the C ABI
(`libminigpt_med`, called here through ctypes), for the defaults as well as explicit values.

`scripts/test-python.sh` builds the CLI and the C library and points MINIGPT_MED_CLI and
MINIGPT_MED_CAPI_LIB at them; with CI=true their absence is a failure, not a skip.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from pathlib import Path

import pytest

import minigpt_med as mm

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"
CT = TINY / "images" / "ct_nlst.png"

CLI = os.environ.get("MINIGPT_MED_CLI")
CAPI = os.environ.get("MINIGPT_MED_CAPI_LIB")
if not (CLI and CAPI and Path(CLI).exists() and Path(CAPI).exists()):
    if os.environ.get("CI") == "true":
        raise RuntimeError("MINIGPT_MED_CLI and MINIGPT_MED_CAPI_LIB must name the built CLI and C library")
    pytest.skip("run through scripts/test-python.sh (needs the CLI and libminigpt_med)", allow_module_level=True)


# --- the C ABI through ctypes, mirroring include/minigpt_med.h ------------------------------


class GenerateParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("max_new_tokens", ctypes.c_uint32),
        ("sampling", ctypes.c_uint32),
        ("temperature", ctypes.c_float),
        ("top_p", ctypes.c_float),
        ("top_k", ctypes.c_uint32),
        ("seed", ctypes.c_uint64),
        ("repetition_penalty", ctypes.c_float),
        ("context_limit", ctypes.c_uint32),
        ("stop_strings", ctypes.POINTER(ctypes.c_char_p)),
        ("stop_strings_len", ctypes.c_size_t),
        ("on_text", ctypes.c_void_p),
        ("on_text_user_data", ctypes.c_void_p),
    ]


class Region(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint32), ("coords", ctypes.c_double * 4)]


TASKS = {"report": 0, "vqa": 1, "detection": 2, "refer": 3, "grounding": 4, "identify": 5, "custom": 6}
PRESETS = {"eval": 0, "demo": 1}
SAMPLE = 1


@pytest.fixture(scope="module")
def capi():
    lib = ctypes.CDLL(CAPI)
    P = ctypes.POINTER
    lib.mgm_last_error.restype = ctypes.c_char_p
    lib.mgm_generate_params_default.restype = GenerateParams
    lib.mgm_generate_params_preset.argtypes = [ctypes.c_uint32, P(GenerateParams)]
    lib.mgm_model_load_dir.argtypes = [ctypes.c_char_p, ctypes.c_void_p, P(ctypes.c_void_p)]
    lib.mgm_image_open.argtypes = [ctypes.c_char_p, P(ctypes.c_void_p)]
    lib.mgm_generate.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, P(Region), P(GenerateParams),
        P(ctypes.c_void_p),
    ]
    lib.mgm_answer_token_ids.argtypes = [ctypes.c_void_p, P(P(ctypes.c_uint32)), P(ctypes.c_size_t)]
    for free in ("mgm_answer_free", "mgm_image_free", "mgm_model_free"):
        getattr(lib, free).argtypes = [ctypes.c_void_p]
    model, image = ctypes.c_void_p(), ctypes.c_void_p()
    assert lib.mgm_model_load_dir(str(TINY).encode(), None, ctypes.byref(model)) == 0, lib.mgm_last_error()
    assert lib.mgm_image_open(str(CT).encode(), ctypes.byref(image)) == 0, lib.mgm_last_error()
    yield lib, model, image
    lib.mgm_image_free(image)
    lib.mgm_model_free(model)


def c_ids(capi, task, prompt, region, opts):
    """The C caller's way: start from the defaults (or a preset), set what was given."""
    lib, model, image = capi
    if "preset" in opts:
        p = GenerateParams()
        assert lib.mgm_generate_params_preset(PRESETS[opts["preset"]], ctypes.byref(p)) == 0
    else:
        p = lib.mgm_generate_params_default()
    if "temperature" in opts:
        p.sampling = SAMPLE
    for key in ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "repetition_penalty"):
        if key in opts:
            setattr(p, key, opts[key])
    r = None
    if region is not None:
        r = Region(0, (ctypes.c_double * 4)(*region))
    answer = ctypes.c_void_p()
    text = prompt.encode() if prompt is not None else None
    status = lib.mgm_generate(
        model, image, TASKS[task], text, ctypes.byref(r) if r else None, ctypes.byref(p), ctypes.byref(answer)
    )
    assert status == 0, lib.mgm_last_error()
    ids, n = ctypes.POINTER(ctypes.c_uint32)(), ctypes.c_size_t()
    assert lib.mgm_answer_token_ids(answer, ctypes.byref(ids), ctypes.byref(n)) == 0
    out = [ids[i] for i in range(n.value)]
    lib.mgm_answer_free(answer)
    return out


def cli_answer(task, prompt, region, opts):
    args = [CLI, "generate", "--model-dir", str(TINY), "--image", str(CT), "--task", task, "--json"]
    if prompt is not None:
        args += ["--prompt", prompt]
    if region is not None:
        args += ["--grid-box", ",".join(str(v) for v in region)]
    for key, value in opts.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def model():
    return mm.Model.load_dir(TINY, progress=False)


CASES = [
    # The defaults of every door: greedy, 300 new tokens (the tiny model stops at EOS first).
    ("report", None, None, {}),
    ("vqa", "is there a nodule?", None, {"max_new_tokens": 12}),
    # A lone temperature: the same implied top-p, top-k and seed everywhere.
    ("vqa", "is there a nodule?", None, {"temperature": 0.7, "max_new_tokens": 12}),
    # Every sampling setting explicit.
    (
        "refer",
        "the tumor",
        None,
        {"temperature": 0.9, "top_p": 0.8, "top_k": 20, "seed": 7, "repetition_penalty": 1.1, "max_new_tokens": 12},
    ),
    # A preset by name, with one value changed.
    ("report", None, None, {"preset": "demo", "seed": 3, "max_new_tokens": 10}),
    # A region on the 0-100 grid.
    ("identify", None, (10, 20, 60, 70), {"max_new_tokens": 8}),
]


@pytest.mark.parametrize("task,prompt,region,opts", CASES)
def test_same_options_same_tokens_through_every_door(capi, model, task, prompt, region, opts):
    py_region = mm.Region.grid(*region) if region is not None else None
    py = model.generate(CT, task, prompt, region=py_region, **opts)
    cli = cli_answer(task, prompt, region, opts)
    c = c_ids(capi, task, prompt, region, opts)
    assert py.token_ids, "an answer with no tokens proves nothing"
    assert cli["token_ids"] == py.token_ids, (cli, py)
    assert c == py.token_ids
    assert cli["text"] == py.text
    assert cli["stop_reason"] == py.stop_reason
    assert [b["grid"] for b in cli["boxes"]] == [list(b.grid) for b in py.boxes]


def test_sampling_really_differs_from_greedy(model):
    # Guards the cases above: if sampling were ignored, they would pass with greedy ids.
    greedy = model.generate(CT, "vqa", "is there a nodule?", max_new_tokens=12).token_ids
    sampled = [
        model.generate(CT, "vqa", "is there a nodule?", temperature=1.5, seed=s, max_new_tokens=12).token_ids
        for s in range(4)
    ]
    assert any(ids != greedy for ids in sampled)


def test_stop_reasons_are_spelled_alike():
    out = cli_answer("vqa", "is there a nodule?", None, {"max_new_tokens": 2})
    assert out["stop_reason"] == "max_tokens"
