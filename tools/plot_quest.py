#!/usr/bin/python3
"""plot_quest.py: the passkey curve of bench/quest_quality's TSV.

    /usr/bin/python3 tools/plot_quest.py [TSV] [PNG]

Reads the TSV (default build/bench/quest_quality.tsv: columns test, mode,
budget, value, n, read_fraction) and writes passkey accuracy against the token
budget (default bench/quest_passkey.png): Quest and the window baseline as
curves, dense attention as a horizontal line. A second panel, when the TSV
has perplexity rows, shows held-out perplexity the same way. Needs Debian's
python3-matplotlib (hence /usr/bin/python3).
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def series(rows, test, mode):
    """(budgets, values) of one test and mode, by budget."""
    points = sorted((int(r["budget"]), float(r["value"])) for r in rows
                    if r["test"] == test and r["mode"] == mode)
    return [b for b, _ in points], [v for _, v in points]


def panel(ax, rows, test, ylabel):
    dense = [float(r["value"]) for r in rows if r["test"] == test and r["mode"] == "dense"]
    styles = {"quest": ("o-", "Quest (query-aware pages)"),
              "window": ("s--", "window (sink + recent pages)")}
    for mode, (style, label) in styles.items():
        budgets, values = series(rows, test, mode)
        if budgets:
            ax.plot(budgets, values, style, label=label)
    if dense:
        ax.axhline(dense[0], color="black", linestyle=":", label="dense attention")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(r["budget"]) for r in rows if r["test"] == test and r["mode"] != "dense"})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("token budget per head (pages of 16)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def main():
    tsv = sys.argv[1] if len(sys.argv) > 1 else "build/bench/quest_quality.tsv"
    png = sys.argv[2] if len(sys.argv) > 2 else "bench/quest_passkey.png"
    rows = read_rows(tsv)
    has_ppl = any(r["test"] == "perplexity" for r in rows)
    fig, axes = plt.subplots(1, 2 if has_ppl else 1, figsize=(11 if has_ppl else 6, 4.2))
    axes = list(axes) if has_ppl else [axes]
    trials = next((r["n"] for r in rows if r["test"] == "passkey"), "?")
    panel(axes[0], rows, "passkey", f"passkey accuracy ({trials} prompts of 4096 tokens)")
    axes[0].set_ylim(-0.03, 1.03)
    axes[0].set_title("llmd-20m: passkey retrieval at 4K context")
    if has_ppl:
        panel(axes[1], rows, "perplexity", "held-out perplexity (lower is better)")
        axes[1].set_title("llmd-20m: perplexity of late tokens at 4K")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
