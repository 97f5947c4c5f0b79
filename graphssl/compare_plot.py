"""``graphssl compare -o PICTURE``: the compared runs' curves against steps, FLOPs, images or time, and their
final evaluations as bars."""
from __future__ import annotations

from pathlib import Path

from graphssl.compare import AXES, CompareError, RunSummary, eval_metric_names


def figure(runs: list[RunSummary], x: str = "steps", title: str | None = None):
    """Loss curves | evaluations during training, against ``x`` (an AXES key) | final evaluations as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, FormatStrFormatter, MaxNLocator, NullFormatter

    if x not in AXES:
        raise CompareError(f"unknown x axis {x!r} (one of {', '.join(AXES)})")
    fig, (ax_loss, ax_knn, ax_bar) = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1.25, 1, 0.9]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def placed(points: list[tuple[int, float]], r: RunSummary) -> tuple[list[float], list[float]]:
        """(x, value) of points given as (steps done, value); points the run cannot place on the axis are left out."""
        pairs = [(r.x(x, n), v) for n, v in points]
        pairs = [(a, v) for a, v in pairs if a is not None]
        return [a for a, _ in pairs], [v for _, v in pairs]

    positive = True
    names = eval_metric_names(runs)
    styles = {key: ("-o", "--s", ":^", "-.v")[j % 4] for j, key in enumerate(names)}
    for i, r in enumerate(runs):
        color = colors[i % len(colors)]
        xs, values = placed([(s + 1, v) for s, v in r.curves.get("loss", [])], r)
        if xs:
            ax_loss.plot(xs, values, color=color, lw=1.4, label=r.label)
            positive = positive and min(values) > 0
        for key, style in styles.items():
            xs, values = placed(r.curves.get(key, []), r)
            if xs:
                ax_knn.plot(xs, values, style, color=color, ms=4, lw=1.2, label=f"{r.label} {key}")
    if positive and ax_loss.lines:
        ax_loss.set_yscale("log")
        low, high = ax_loss.get_ylim()
        plain = FormatStrFormatter("%.3g")
        ax_loss.yaxis.set_major_formatter(plain)
        ax_loss.yaxis.set_minor_formatter(plain if high / low < 20 else NullFormatter())
    for ax in (ax_loss, ax_knn):
        if x == "steps":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            if x in ("flops", "images"):
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 500G, 1T, ...
    ax_loss.set(title="training loss", xlabel=AXES[x], ylabel="loss (log)" if positive else "loss")
    ax_loss.grid(alpha=0.3, which="both")
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    start = "step 0" if x == "steps" else "0"
    ax_knn.set(title=f"evaluation during training ({start}: at initialisation)", xlabel=AXES[x],
               ylabel="on the test split")
    ax_knn.grid(alpha=0.3)
    if ax_knn.lines:
        ax_knn.legend(fontsize=7)

    width = 0.8 / max(1, len(names))
    for j, key in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(runs))]
        values = [r.final.get(key, 0.0) for r in runs]
        bars = ax_bar.bar(xs, values, width * 0.95, color=[colors[i % len(colors)] for i in range(len(runs))],
                          alpha=1.0 if j == 0 else 0.55, hatch=None if j == 0 else "//", edgecolor="white",
                          label=key)
        for bar, r in zip(bars, runs):
            if key in r.final:
                ax_bar.annotate(f"{r.final[key]:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=7)
    ax_bar.set_xticks(range(len(runs)), [r.name for r in runs], rotation=20 if len(runs) > 3 else 0, fontsize=8)
    ax_bar.set(title="final evaluation (" + ", ".join(names) + ")", ylim=(0, 1.05))
    ax_bar.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def unplaced(runs: list[RunSummary], x: str) -> list[RunSummary]:
    """Runs that logged nothing to place them on axis ``x`` (runs made before graphssl counted FLOPs)."""
    return [r for r in runs if r.steps and r.x(x, r.steps) is None]


def draw(runs: list[RunSummary], output: str | Path, title: str | None = None, x: str = "steps") -> Path:
    """Write :func:`figure` to ``output`` (png, svg, pdf)."""
    import matplotlib.pyplot as plt

    fig = figure(runs, x, title)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
