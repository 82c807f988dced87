"""Studies: one image, many questions. `Model.study(image)` encodes the image and runs the
prompt's prefix once; every `Study.ask` answers exactly as `Model.generate` of the same task."""

from __future__ import annotations

import pathlib

import minigpt_med as mm

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"
CT = TINY / "images" / "ct_nlst.png"

def test_study_answers_equal_generate_for_every_task():
    model = mm.Model.load_dir(TINY, progress=False)
    for color in ["gray", "rgb"]:
        study = model.study(CT, color=color)
        assert study.prefix_len > 256
        for task, prompt, region in [("report", None, None), ("vqa", "Is there an effusion?", None),
                                     ("detection", "pneumonia", None), ("refer", "the left lung", None),
                                     ("identify", None, (10, 20, 200, 300)), ("grounding", None, None)]:
            want = model.generate(CT, task=task, prompt=prompt, region=region, color=color, max_new_tokens=10)
            got = study.ask(task=task, prompt=prompt, region=region, max_new_tokens=10)
            assert got.token_ids == want.token_ids, (task, color)
            assert got.text == want.text
    # A verbatim instruction, and streaming.
    study = model.study(CT)
    a = study.ask("[vqa] Which lung?", max_new_tokens=8)
    assert "".join(study.stream("[vqa] Which lung?", max_new_tokens=8)) == a.text
