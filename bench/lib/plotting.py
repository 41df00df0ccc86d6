"""The figures in bench/results/, one function per figure, named for the script that writes it; matplotlib on its
file-only backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_figure(results: dict, path: Path) -> None:
    """bench/load.py: p50 latency against documents/s per server configuration, a panel per model."""
    plt = pyplot()
    models = list(results)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for config, levels in results[model].items():
            xs = [level["documents_per_s"] for level in levels]
            ys = [level["p50_s"] for level in levels]
            ax.plot(xs, ys, marker="o", label=config)
            for level, x, y in zip(levels, xs, ys, strict=True):
                ax.annotate(f"c={level['concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_title(model)
        ax.set_xlabel("documents / s")
        ax.set_ylabel("p50 latency (s)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cpu_speed_figure(data: dict, path: Path) -> None:
    """bench/cpu_speed.py: per section, docs (pairs)/s of every row that ran and, for the HTTP rows, p50 latency
    against the wall."""
    plt = pyplot()
    sections = [name for name, section in data["sections"].items() if "in_process" in section]
    if not sections:
        return
    fig, axes = plt.subplots(len(sections), 2, figsize=(14, 4.5 * len(sections)), squeeze=False)
    for (speed, latency), name in zip(axes, sections, strict=True):
        section = data["sections"][name]
        rows = {f"{row}, in-process": r["pairs_per_s"] for row, r in section["in_process"].items()}
        http = {row: r for row, r in section.get("http", {}).items() if "skipped" not in r}
        rows |= {f"{row}, HTTP": r["docs_per_s"] for row, r in http.items()}
        colours = ["tab:gray" if "sentence-transformers" in row or "model card" in row else
                   "tab:orange" if row.startswith("Infinity") else "tab:blue" for row in rows]  # fmt: skip
        speed.barh(list(rows), list(rows.values()), color=colours)
        for i, value in enumerate(rows.values()):
            speed.text(value, i, f" {value:.2f}", va="center", fontsize=7)
        speed.set_title(f"{name}: documents/s (2 CPU threads)")
        speed.invert_yaxis()
        speed.tick_params(axis="y", labelsize=7)
        if http:
            labels = list(http)
            latency.barh(labels, [r["wall_s"] for r in http.values()], color="lightgray", label="wall of the burst")
            latency.barh(labels, [r["p50_s"] for r in http.values()], color="tab:blue", height=0.5, label="p50")
            latency.set_title(f"{name}: HTTP burst latency (s)")
            latency.invert_yaxis()
            latency.tick_params(axis="y", labelsize=7)
            latency.legend(fontsize=7)
        else:
            latency.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def prefix_reuse_figure(results: dict, out: Path) -> None:
    """bench/prefix_reuse.py: each row's pairs/s over the model card's against the prefix share."""
    plt = pyplot()
    labels = [label for label in next(iter(results.values()))["rows"]]
    shares = [r.get("prefix_share") or 0 for r in results.values()]
    order = np.argsort(shares)
    fig, ax = plt.subplots(figsize=(9, 5))
    for label in labels:
        ys = [list(results.values())[i]["rows"].get(label, {}).get("vs_card", np.nan) for i in order]
        ax.plot([shares[i] for i in order], ys, marker="o", label=label)
    ax.set_xlabel("shared prompt / pair tokens")
    ax.set_ylabel("pairs/s vs the model card's fp32 code")
    ax.set_title("Qwen3-Reranker-0.6B size, 2 CPU threads")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def soak_figure(samples: list[dict], out: Path, title: str) -> None:
    """bench/soak.py: RSS, descriptors and threads, latency, errors and load over the run's minutes."""
    plt = pyplot()
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    axes[0].plot(t, [s["rss_mb"] for s in samples])
    axes[0].set_ylabel("RSS (MB)")
    axes[1].plot(t, [s["fds"] for s in samples], label="open fds")
    axes[1].plot(t, [s["threads"] for s in samples], label="threads")
    axes[1].legend()
    axes[2].plot(t, [s["p50_ms"] for s in samples], label="p50")
    axes[2].plot(t, [s["p99_ms"] for s in samples], label="p99")
    axes[2].set_ylabel("latency (ms)")
    axes[2].legend()
    axes[3].plot(t, [s["errors"] for s in samples], label="errors per window")
    axes[3].plot(t, [s.get("shed", 0) for s in samples], label="shed by the client per window")
    axes[3].plot(t, [s["offered_rps"] for s in samples], label="offered req/s")
    axes[3].set_xlabel("minutes")
    axes[3].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
