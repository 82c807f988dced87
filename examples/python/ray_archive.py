"""Answers every file of a folder (an archive of X-rays, CTs, DICOMs) on Ray Data, writing Parquet.

One machine:   python examples/python/ray_archive.py archive/ --model minigpt-med.gguf --task report --out results/
A Ray cluster: start it (`ray start --head`, then `ray start --address=HEAD:6379` on each node), put the
               model file and the archive where every node can read them, and run the same command
               with --address auto on any node of the cluster.

Each actor loads the model once (a converted model file is memory-mapped: actors on one node share its
pages) and uses --cpus-per-actor threads. Rows of unreadable files get an `error` and the run goes on.
"""

from __future__ import annotations

import argparse

import ray

from minigpt_med.ray import Predictor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="the folder of images (read recursively)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a converted model file (minigpt-med convert)")
    src.add_argument("--model-dir", help="a model directory (the original files)")
    p.add_argument("--task", default="report", help="report, vqa, detection, refer, identify, grounding")
    p.add_argument("--prompt", help="the task's text (the question, class or phrase)")
    p.add_argument("--out", required=True, help="the Parquet output folder")
    p.add_argument("--actors", type=int, default=1, help="model replicas")
    p.add_argument("--cpus-per-actor", type=float, default=2,
                   help="CPUs Ray reserves for each replica (its threads, at least 1); leave some for reading files")
    p.add_argument("--batch-size", type=int, default=4, help="rows decoding together in an actor")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--address", help="a Ray cluster's address (default: a local Ray)")
    a = p.parse_args()

    ray.init(address=a.address)
    ds = ray.data.read_binary_files(a.dir, include_paths=True)
    source = {"model": a.model} if a.model else {"model_dir": a.model_dir}
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={**source, "task": a.task, "prompt": a.prompt, "max_new_tokens": a.max_new_tokens},
        concurrency=a.actors,
        num_cpus=a.cpus_per_actor,
        batch_size=a.batch_size,
    )
    ds.write_parquet(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
