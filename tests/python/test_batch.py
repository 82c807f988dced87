"""Batched generation from Python: `Model.generate_batch(items)` answers as `Model.generate`
does item by item; a failing item's slot holds its exception and the others are answered."""

from __future__ import annotations

import pathlib

import pytest

import minigpt_med as mm

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"
CT = TINY / "images" / "ct_nlst.png"
CXR = TINY / "images" / "cxr_rsna.jpg"


@pytest.fixture(scope="module")
def model():
    return mm.Model.load_dir(TINY, progress=False)


ITEMS = [
    {"image": str(CT), "task": "report"},
    {"image": CT, "task": "vqa", "prompt": "Is there an effusion?"},
    {"image": str(CXR), "task": "detection", "prompt": "pneumonia", "color": "rgb"},
    {"image": str(CXR), "task": "refer", "prompt": "the left lung"},
    {"image": str(CT), "task": "identify", "region": (10, 20, 200, 300)},
    {"image": CXR.read_bytes(), "instruction": "[grounding] please describe this image in details"},
]


def direct(model, item, **options):
    kw = {k: v for k, v in item.items() if k not in ("image", "instruction")}
    if "instruction" in item:
        kw = {"task": "custom", "prompt": item["instruction"], **{k: v for k, v in kw.items() if k != "task"}}
    return model.generate(item["image"], **kw, **options)


def test_batch_answers_equal_generate(model):
    for options in [{"max_new_tokens": 9}, {"max_new_tokens": 12, "temperature": 1.3, "seed": 7}]:
        got = model.generate_batch(ITEMS, **options)
        assert len(got) == len(ITEMS)
        for item, answer in zip(ITEMS, got):
            want = direct(model, item, **options)
            assert isinstance(answer, mm.Answer), answer
            assert answer.token_ids == want.token_ids, item
            assert answer.text == want.text
            assert answer.stop_reason == want.stop_reason
    # Two at a time: the same answers.
    two = model.generate_batch(ITEMS, batch_size=2, max_new_tokens=9)
    assert [a.token_ids for a in two] == [a.token_ids for a in model.generate_batch(ITEMS, max_new_tokens=9)]


def test_a_failing_item_holds_its_exception(model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    items = [
        {"image": str(CT), "task": "report"},
        {"image": str(broken)},
        {"image": str(CT), "task": "vqa"},  # a VQA item needs a question
        {"image": str(CT), "task": "no-such-task"},
        {"image": str(CT), "colour": "gray"},
        "not a dict",
        {"task": "report"},
        {"image": str(CT), "task": "grounding"},
    ]
    got = model.generate_batch(items, max_new_tokens=6)
    assert len(got) == len(items)
    assert got[0].token_ids == model.generate(CT, max_new_tokens=6).token_ids
    assert got[7].token_ids == model.generate(CT, task="grounding", max_new_tokens=6).token_ids
    assert isinstance(got[1], mm.ImageError) and "broken.png" in str(got[1])
    assert isinstance(got[2], mm.OptionsError) and "question" in str(got[2])
    assert isinstance(got[3], mm.OptionsError)
    assert isinstance(got[4], mm.OptionsError) and "colour" in str(got[4])
    assert isinstance(got[5], mm.OptionsError)
    assert isinstance(got[6], mm.OptionsError) and "image" in str(got[6])
    with pytest.raises(mm.OptionsError):
        model.generate_batch(items, batch_size=0)
    with pytest.raises(mm.OptionsError):
        model.generate_batch(items, max_new_tokens=-1)
    assert model.generate_batch([]) == []
