"""Scale-out on Ray Data: :class:`Predictor`, a callable class for ``Dataset.map_batches``.

Each actor loads the model once (a converted model file is memory-mapped, so actors on one
node share its pages) and answers its batches with :meth:`Model.generate_batch`::

    import ray
    from minigpt_med.ray import Predictor

    ds = ray.data.read_binary_files("archive/", include_paths=True)
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={"model": "minigpt-med.gguf", "task": "report"},
                        concurrency=4, num_cpus=8, batch_size=8)
    ds.write_parquet("results/")

Input columns: ``bytes`` (from ``read_binary_files``) or ``path``, plus optional per-row
``task``, ``prompt``, ``instruction`` and ``color``. Every input column but ``bytes`` is passed
through; ``text``, ``token_ids``, ``boxes`` (JSON) and ``error`` are added. A row that fails (an
unreadable file, a bad task) gets its ``error`` and empty results; the other rows are answered.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

import numpy as np

from . import Answer, Model, set_threads

_ROW_KEYS = ("task", "prompt", "instruction", "color")


def _actor_cpus() -> Optional[int]:
    """The CPUs Ray assigned to this actor (None outside Ray)."""
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not in a Ray worker: leave the thread count to the engine
        return None
    return max(1, round(cpus)) if cpus else None


def _value(column: Any, i: int) -> Optional[str]:
    """Row ``i`` of an optional text column; None, NaN and "" mean "not given"."""
    if column is None:
        return None
    v = column[i]
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    v = v.decode() if isinstance(v, bytes) else str(v)
    return v or None


class Predictor:
    """Answers batches of rows with one model per actor.

    Args:
        model: a converted model file (``minigpt-med convert``).
        model_dir: or a model directory (``llama-2-7b-chat-hf/``, ``eva_vit_g.pth``,
            ``minigpt_med.pth``).
        llama, vit, checkpoint, config: or the original files, as :meth:`Model.load`.
        dtype, vit_dtype, kv_dtype, device: as :meth:`Model.load`.
        threads: CPU threads of the actor's matrix work (default: the actor's ``num_cpus``).
        task, prompt: the task of rows that name none (default ``"report"``).
        batch_size: rows decoding together inside the actor (default: the whole batch).
        **options: generation options of :meth:`Model.generate` (``max_new_tokens``,
            ``temperature``, ``seed``, ``stop``, ...), for every row.
    """

    def __init__(
        self,
        *,
        model: Optional[str] = None,
        model_dir: Optional[str] = None,
        llama: Optional[str] = None,
        vit: Optional[str] = None,
        checkpoint: Optional[str] = None,
        config: Optional[str] = None,
        dtype: str = "f32",
        vit_dtype: str = "f32",
        kv_dtype: str = "f32",
        device: str = "cpu",
        threads: Optional[int] = None,
        task: str = "report",
        prompt: Optional[str] = None,
        batch_size: Optional[int] = None,
        **options: Any,
    ) -> None:
        sources = [s for s in (model, model_dir, llama) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of model=, model_dir= or llama= (with vit= and checkpoint=)")
        threads = threads or _actor_cpus()
        if threads:
            set_threads(threads)
        load = {"device": device, "dtype": dtype, "vit_dtype": vit_dtype, "kv_dtype": kv_dtype, "progress": False}
        if model is not None:
            self.model = Model.load(model, **load)
        elif model_dir is not None:
            self.model = Model.load_dir(model_dir, **load)
        else:
            self.model = Model.load(llama, vit, checkpoint, config, **load)
        self.task, self.prompt, self.batch_size, self.options = task, prompt, batch_size, options

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        images = batch.get("bytes")
        if images is None:
            images = batch.get("path")
        if images is None:
            raise ValueError("the dataset needs a 'bytes' column (ray.data.read_binary_files) or a 'path' column")
        n = len(images)
        items = []
        for i in range(n):
            image = images[i]
            item: dict[str, Any] = {"image": bytes(image) if isinstance(image, (bytes, bytearray, np.ndarray)) else str(image)}
            row = {k: _value(batch.get(k), i) for k in _ROW_KEYS}
            if row["instruction"] is not None:
                item["instruction"] = row["instruction"]
            else:
                item["task"] = row["task"] or self.task
                prompt = row["prompt"] if row["task"] is not None else (row["prompt"] or self.prompt)
                if prompt is not None:
                    item["prompt"] = prompt
            if row["color"] is not None:
                item["color"] = row["color"]
            items.append(item)
        results = self.model.generate_batch(items, batch_size=self.batch_size, **self.options)
        out = {k: v for k, v in batch.items() if k != "bytes"}
        text, token_ids, boxes, error = [], [], [], []
        for r in results:
            if isinstance(r, Answer):
                text.append(r.text)
                token_ids.append(list(r.token_ids))
                boxes.append(json.dumps([{"label": b.label, "grid": list(b.grid), "pixels": list(b.pixels)} for b in r.boxes]))
                error.append(None)
            else:
                text.append(None)
                token_ids.append([])
                boxes.append("[]")
                error.append(f"{type(r).__name__}: {r}")
        out["text"] = np.array(text, dtype=object)
        ids = np.empty(n, dtype=object)
        ids[:] = token_ids
        out["token_ids"] = ids
        out["boxes"] = np.array(boxes, dtype=object)
        out["error"] = np.array(error, dtype=object)
        return out
