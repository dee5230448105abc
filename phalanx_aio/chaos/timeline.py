"""A timeline plot of a chaos run: every operation per client, and the fault windows.

Needs matplotlib (the ``bench`` extra); it is imported only when :func:`plot_timeline` runs.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from phalanx_aio.chaos.faults import FaultWindow
from phalanx_aio.chaos.linearizability import Operation, Outcome

__all__ = ["plot_timeline"]

_OUTCOME_COLOURS = {Outcome.OK: "tab:green", Outcome.FAILED: "tab:grey", Outcome.UNKNOWN: "tab:orange"}


def plot_timeline(
    history: Sequence[Operation],
    faults: Sequence[FaultWindow],
    path: str | pathlib.Path,
    *,
    title: str = "",
) -> pathlib.Path:
    """Draw ``history`` (one lane per client: a bar from call to return, green ok, grey failed,
    orange unknown) above ``faults`` (one lane per fault kind) and save a PNG at ``path``.

    Raises :class:`ImportError` if matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = sorted({str(op.client) for op in history}, key=lambda c: (not c.isdigit(), c.zfill(6)))
    lane = {c: i for i, c in enumerate(clients)}
    kinds = sorted({str(w.kind) for w in faults})
    end = max([op.ret or op.call for op in history] + [w.end for w in faults] + [1.0])
    fig, (ax_ops, ax_faults) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(14, 3 + 0.3 * (len(clients) + len(kinds))),
        gridspec_kw={"height_ratios": [max(len(clients), 1), max(len(kinds), 1)]},
    )
    for outcome, colour in _OUTCOME_COLOURS.items():
        bars: dict[int, list[tuple[float, float]]] = {}
        for op in history:
            if op.outcome is outcome:
                width = (op.ret if op.ret is not None else end) - op.call
                bars.setdefault(lane[str(op.client)], []).append((op.call, max(width, end / 5000)))
        for y, xs in bars.items():
            ax_ops.broken_barh(xs, (y - 0.35, 0.7), facecolors=colour, linewidth=0)
        count = sum(len(xs) for xs in bars.values())
        ax_ops.plot([], [], color=colour, linewidth=6, label=f"{outcome} ({count})")
    ax_ops.set_yticks(range(len(clients)), [f"client {c}" for c in clients])
    ax_ops.legend(loc="upper right", fontsize="small", ncols=3)
    for w in faults:
        ax_ops.axvspan(w.start, w.end, color="tab:red", alpha=0.06)
    klane = {k: i for i, k in enumerate(kinds)}
    for w in faults:
        y = klane[str(w.kind)]
        ax_faults.broken_barh(
            [(w.start, max(w.end - w.start, end / 5000))], (y - 0.35, 0.7), facecolors="tab:red"
        )
        label = ",".join(w.targets)
        if label:
            ax_faults.text(w.start, y + 0.4, label, fontsize=6, va="bottom")
    ax_faults.set_yticks(range(len(kinds)), kinds)
    ax_faults.set_xlabel("seconds")
    ax_faults.set_xlim(0, end)
    if title:
        ax_ops.set_title(title)
    fig.tight_layout()
    out = pathlib.Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
