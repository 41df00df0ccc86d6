"""One /v1/rerank request with 8 image documents, end to end: total, media fetch, scoring; concurrent vs sequential.

The images (512x512 JPEG, all different) come from a local HTTP server that delays each response by 0.2 s;
the model is the tiny random-weight Qwen3-VL reranker, exported to ONNX and served in-process on CPU.
`--fetch sequential` makes the app's MediaFetcher fetch one item at a time (the same fetcher, one
`fetch_all` per item), to show what fetching concurrently saves; the default runs both.

.venv/bin/python -m bench.multimodal_request [--artifact DIR] [--fetch both|concurrent|sequential] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.lib.results import machine, write_result
from rerankrt.runtime import Reranker
from rerankrt.server import create_app
from rerankrt.server.settings import ServeSettings
from rerankrt.testing.media_server import serve_media

IMAGES, SIZE, DELAY_S, REPEATS = 8, 512, 0.2, 5


def jpeg(seed: int) -> bytes:
    """A smooth random picture (JPEG-friendly), different per seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


PICTURES = {f"{i}.jpg": jpeg(i) for i in range(IMAGES)}


def fetch_one_at_a_time(fetcher) -> None:
    """The fetcher's fetch_all, one item at a time (the same pixel budget for every item)."""
    concurrent = fetcher.fetch_all

    async def sequential(refs, budget=None):
        return [(await concurrent([ref], budget))[0] for ref in refs]

    fetcher.fetch_all = sequential


async def measure(reranker, base: str, mode: str) -> dict:
    app = create_app(ServeSettings(model_path="-", media_allowed_networks=["127.0.0.0/8"]), reranker.model)
    body = {
        "query": "a colourful abstract picture",
        "documents": [
            [{"type": "image_url", "image_url": {"url": f"{base}/{name}?delay={DELAY_S}"}}] for name in PICTURES
        ],
    }
    fetch_sum = "rerankrt_media_fetch_seconds_sum"
    registry = app.state.metrics.registry
    totals, fetches = [], []
    async with app.router.lifespan_context(app):
        if mode == "sequential":
            fetch_one_at_a_time(app.state.media)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=120) as http:
            for attempt in range(REPEATS + 1):  # the first is a warm-up
                before = registry.get_sample_value(fetch_sum) or 0.0
                started = time.perf_counter()
                response = await http.post("/v1/rerank", json=body)
                total = time.perf_counter() - started
                assert response.status_code == 200, response.text
                if attempt:
                    totals.append(total)
                    fetches.append(registry.get_sample_value(fetch_sum) - before)
    total, fetch = statistics.median(totals), statistics.median(fetches)
    return {"total_s": total, "fetch_s": fetch, "scoring_s": total - fetch, "totals_s": totals, "fetches_s": fetches}


def artifact_dir(given: Path | None) -> Path:
    if given:
        return given
    from rerankrt.export import export_model
    from rerankrt.testing.tiny_models import build_qwen3_vl

    root = Path(tempfile.mkdtemp(prefix="rerankrt-bench-vl-"))
    export_model(str(build_qwen3_vl(root / "model")), root / "artifact")
    return root / "artifact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="tiny Qwen3-VL artifact (default: build and export one)")
    parser.add_argument("--fetch", choices=["both", "concurrent", "sequential"], default="both")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    reranker = Reranker.load(str(artifact_dir(args.artifact)), backend="onnxruntime", threads=args.threads)
    modes = ["concurrent", "sequential"] if args.fetch == "both" else [args.fetch]
    with serve_media(PICTURES) as base:
        results = {mode: asyncio.run(measure(reranker, base, mode)) for mode in modes}
    print(f"{IMAGES} image documents of {SIZE}x{SIZE}, server delay {DELAY_S} s each, median of {REPEATS}")
    for mode, r in results.items():
        print(f"{mode:>10}: total {r['total_s']:.3f} s = fetch {r['fetch_s']:.3f} s + scoring {r['scoring_s']:.3f} s")
    if len(results) == 2:
        saved = results["sequential"]["total_s"] - results["concurrent"]["total_s"]
        print(f"fetching concurrently saves {saved:.3f} s per request")
    path = write_result(
        "multimodal_request",
        {"images": IMAGES, "size": SIZE, "delay_s": DELAY_S, "repeats": REPEATS, "threads": args.threads,
         "machine": machine(), "results": results},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
