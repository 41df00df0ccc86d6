"""Replay a burst through the real `Scheduler` with a held backend: when does the median request finish?

16 (or 64) requests of 32 documents of 33-432 tokens are queued behind a held batch, then released; every batch
the scheduler forms is recorded, and time is counted as padded tokens (rows x longest pair: what a forward pass
costs on CPU). Per policy and padding cap: the median request's completion as a share of the burst, batches,
mean padding and padded tokens. No model runs: this isolates the policy from the machine.

    .venv/bin/python -m bench.scheduling_replay      # a few seconds
"""

from __future__ import annotations

import threading

import numpy as np

from bench.lib.results import markdown_row, markdown_table
from rerankrt.runtime.scheduler import Scheduler

CASES = (  # (padding cap, top_up_tokens): the CPU default, then looser caps with full top-up (a GPU's default)
    (0.1, 1024),
    (0.1, None),
    (0.3, None),
    (1.0, None),
)


def replay(policy: str, requests: int, docs: int, padding: float, top_up_tokens: int | None, seed: int):
    batches: list[tuple[list[int], list[int]]] = []
    release = threading.Event()

    def run(batch):
        release.wait(30)
        batches.append((batch["lengths"], batch["owners"]))
        return np.zeros(len(batch["lengths"]), dtype=np.float32)

    def collate(pairs):
        return {"lengths": [len(p["input_ids"]) for p in pairs], "owners": [p["owner"] for p in pairs]}

    scheduler = Scheduler(
        run, collate, max_batch_size=32, max_batch_tokens=16384, max_queued_pairs=100_000, batch_wait_ms=0,
        max_padding_ratio=padding, scheduling=policy, top_up_tokens=top_up_tokens,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    blocker = scheduler.submit([{"input_ids": np.ones(1), "owner": -1}])
    futures = [
        scheduler.submit([{"input_ids": np.ones(int(rng.integers(33, 433))), "owner": r} for _ in range(docs)])
        for r in range(requests)
    ]
    release.set()
    for future in [blocker, *futures]:
        future.result(30)
    scheduler.close()
    clock, done, left, padding_shares = 0, {}, dict.fromkeys(range(requests), docs), []
    for lengths, owners in batches[1:]:
        clock += max(lengths) * len(lengths)
        padding_shares.append(1 - sum(lengths) / (max(lengths) * len(lengths)))
        for owner in owners:
            left[owner] -= 1
            if left[owner] == 0:
                done[owner] = clock
    return np.median(list(done.values())) / clock, len(batches) - 1, float(np.mean(padding_shares)), clock


def main() -> None:
    header = ["requests", "padding cap", "top_up_tokens", "policy", "median done at", "batches", "mean padding",
              "padded tokens"]  # fmt: skip
    print(markdown_table(header, []))
    for requests in (16, 64):
        for padding, top_up in CASES:
            for policy in ("interleaved", "oldest-first"):
                if policy == "interleaved" and top_up is not None:
                    continue  # interleaved ignores top_up_tokens
                runs = np.array([replay(policy, requests, 32, padding, top_up, seed)[:4] for seed in range(3)])
                median, batches, pad, tokens = runs.mean(axis=0)
                cells = (requests, padding, top_up or "batch limit", policy, f"{median:.2f}", f"{batches:.0f}",
                         f"{pad:.3f}", f"{tokens:.0f}")  # fmt: skip
                print(markdown_row(cells), flush=True)


if __name__ == "__main__":
    main()
