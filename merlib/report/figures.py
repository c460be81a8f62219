"""Figures 2, 5 and 6 and the TIM strip, and how a notebook shows a figure (one captioned image)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from merlib.registry import VARIANT_ORDER, VARIANTS
from merlib.report.tables import usable

class FigureView:
    """How a notebook shows a figure: one PNG image, and a caption as its text form (instead of
    matplotlib's ``<Figure size …>``, which is all a reader sees where images do not render)."""

    def __init__(self, fig, caption: str, *, dpi: int = 100) -> None:
        self.fig, self.caption, self.dpi = fig, caption, dpi

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=self.dpi, bbox_inches="tight")
        return buf.getvalue()

    def __repr__(self) -> str:
        return self.caption


def show(fig, caption: str) -> FigureView:
    """The figure as the notebook's cell result: exactly one image, captioned."""
    return FigureView(fig, caption)


def figure6(preds: dict[int, pd.DataFrame], *, title: str):
    """The variants' confusion matrices side by side (rows: true class, columns: predicted)."""
    return confusion_grid({VARIANTS[k]: preds[k] for k in VARIANT_ORDER if k in preds}, title=title)


def figure6_paper(preds: dict[str, dict[int, pd.DataFrame]], *, title: str):
    """Figure 6 as the paper arranges it: a row per dataset (CASME II, SAMM, SMIC, MEGC), a
    column per variant (Without, 24, 10 IBs), panels lettered (a)-(l) row by row; a missing run
    leaves its panel empty."""
    rows = {name: {VARIANTS[k]: p[k] if k in p else None for k in VARIANT_ORDER}
            for name, p in preds.items()}
    return confusion_grid(rows, title=title, letters=True)


def confusion_grid(preds: dict, *, title: str, letters: bool = False):
    """Confusion matrices of named sets of pooled predictions: one row of them, or, given
    {row name: {column name: predictions or None}}, a grid. A run of several training seeds
    shows its first seed's."""
    import seaborn as sns

    from merlib.metrics import compute_metrics, confusion
    from merlib.report.tables import first_seed

    rows = preds if preds and all(isinstance(v, dict) for v in preds.values()) else {"": preds}
    n_cols = max([len(r) for r in rows.values()] + [1])
    fig, axes = _figure(len(rows), n_cols, figsize=(4.2 * n_cols, 3.8 * len(rows)), squeeze=False)
    letter = iter("abcdefghijklmnopqrstuvwxyz")
    for row_axes, (row_name, row) in zip(axes, rows.items()):
        for ax, (name, p) in zip(row_axes, row.items()):
            label = f"({next(letter)}) " if letters else ""
            head = f"{label}{row_name} {name}".strip()
            if p is None:
                ax.set_axis_off()
                ax.set_title(f"{head}\n(not trained)", fontsize=10)
                continue
            p = first_seed(p)
            cm = confusion(p["y_true"], p["y_pred"])
            m = compute_metrics(p["y_true"], p["y_pred"])
            sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, square=True)
            ax.set_title(f"{head}\nAcc {m['acc']:.3f}  UF1 {m['uf1']:.3f}  UAR {m['uar']:.3f}",
                         fontsize=10)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- Figures 2 and 5

def _figure(*grid, figsize, **kw):
    """A figure and its axes, closed in pyplot at once: the backend is left as configured (a
    kernel's inline one stays), the notebook shows the returned figure exactly once, and nothing
    piles up in pyplot's registry over a batch run. Headless, matplotlib picks Agg by itself."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, figsize=figsize, **kw)
    plt.close(fig)
    return fig, axes



def figure5(manifest: pd.DataFrame, *, n: int = 4):
    """dif_i (Eq. 17) over each clip's onset-offset span, the chosen apex as a red line (Fig. 5)."""
    import numpy as np

    ok = usable(manifest).head(n)
    fig, axes = _figure(1, len(ok), figsize=(3.6 * len(ok), 2.8), squeeze=False)
    for ax, row in zip(axes[0], ok.itertuples()):
        with np.load(row.file) as z:
            dif, nums = z["dif"], z["frame_numbers"]
            detected, annotated = int(z["apex_detected"]), int(z["apex_annotated"])
        ax.plot(nums, dif, color="0.2", lw=1)
        ax.axvline(detected, color="red", lw=1.5, label=f"detected {detected}")
        if annotated >= 0:
            ax.axvline(annotated, color="tab:blue", ls="--", lw=1, label=f"annotated {annotated}")
        gt = getattr(row, "gt_apex", float("nan"))
        if pd.notna(gt) and int(gt) != annotated:
            ax.axvline(int(gt), color="tab:green", ls=":", lw=1, label=f"true {int(gt)}")
        ax.set_title(f"{row.subject}/{row.clip} ({row.label})", fontsize=9)
        ax.set_xlabel("frame")
        ax.legend(fontsize=7, loc="lower center")
    axes[0][0].set_ylabel("dif (Eq. 17)")
    fig.tight_layout()
    return fig


def tim_strip(clip_file: str | Path, *, title: str = ""):
    """The 10 TIM frames (onset -> apex) of one clip, aligned to 224x224; a single-frame dataset's
    clip (the public MEGC2019 release: the apex alone) gives one panel."""
    import numpy as np

    with np.load(clip_file) as z:
        frames = z["frames"]
    fig, axes = _figure(1, len(frames), figsize=(max(1.5 * len(frames), 2.4), 1.8), squeeze=False)
    for i, (ax, f) in enumerate(zip(axes[0], frames)):
        ax.imshow(f)
        ax.set_axis_off()
        ax.set_title(str(i + 1), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure2(clip_file: str | Path, *, scheme: str = "fr72", compare: str | None = "gacnn24"):
    """Figure 2 on a real aligned frame: (a) 68 points, (b) 72 points, (c) the 24 IPs with
    48x48 blocks and (d) the 10 IPs with w x w blocks (w = |x55 - x49| / 2), both as *stored* in
    the clip's cache file (what the model was given; ``scheme`` is the reading that made them).
    ``compare`` adds (e): another reading of the 24 IPs, computed from the stored 72 points for
    comparison only (default gACNN's converter; docs/DECISIONS.md)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    from merlib.preprocess.blocks import identification_points
    from merlib.preprocess.landmarks import to68

    with np.load(clip_file) as z:
        frame, pts72 = z["frames"][0], z["landmarks"][0].astype(float)
        ip24, side24, ip10, side10 = (z[k][0].astype(float) for k in ("ip24", "side24", "ip10", "side10"))
    panels = [("(a) 68 facial key points (dlib)", to68(pts72), None),
              ("(b) 72 facial key points (face_recognition)", pts72, None),
              (f"(c) 24 IPs ({scheme}), 48x48 blocks", ip24, side24),
              (f"(d) 10 IPs ({scheme}), w x w blocks", ip10, side10)]
    if compare and compare != scheme:
        panels.append((f"(e) 24 IPs as {compare} reads them", *identification_points(
            pts72, scheme=24, numbering=compare)))
    fig, axes = _figure(1, len(panels), figsize=(4 * len(panels), 4.4))
    for ax, (title, pts, sides) in zip(axes, panels):
        ax.imshow(frame)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
        colour = "yellow" if sides is None else "red"
        ax.scatter(pts[:, 0], pts[:, 1], s=6, c=colour)
        for k, (x, y) in enumerate(pts, start=1):
            ax.annotate(str(k), (x, y), fontsize=5 if sides is None else 7, color=colour,
                        xytext=(2, -2), textcoords="offset points")
        if sides is not None:
            for (x, y), s in zip(pts, sides):
                ax.add_patch(Rectangle((x - s / 2, y - s / 2), s, s, fill=False, lw=0.8, ec="cyan"))
        ax.set_xlim(-0.5, frame.shape[1] - 0.5)  # blocks past the frame's edge must not rescale it
        ax.set_ylim(frame.shape[0] - 0.5, -0.5)
    fig.tight_layout()
    return fig




def face_sheet(manifest: pd.DataFrame, *, per_source: int = 6, blocks: int = 10):
    """Aligned faces with their ``blocks`` IBs as stored in the cache (the last frame of each
    clip: the apex), ``per_source`` clips of each source in a row: a check by eye that alignment,
    the 72 points and the blocks land where they should. Shows faces: a real dataset's sheet is
    shown, never written (``provenance.may_keep_faces``)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    ok = usable(manifest)
    sources = sorted(ok["source"].unique())
    fig, axes = _figure(len(sources), per_source, figsize=(2.1 * per_source, 2.3 * len(sources)),
                        squeeze=False)
    for row_axes, source in zip(axes, sources):
        picks = ok[ok["source"] == source]
        picks = picks.iloc[np.linspace(0, len(picks) - 1, min(per_source, len(picks))).round().astype(int)]
        for ax, rec in zip(row_axes, picks.itertuples()):
            with np.load(rec.file) as z:
                frame, ips, sides = z["frames"][-1], z[f"ip{blocks}"][-1], z[f"side{blocks}"][-1]
                route = getattr(rec, "face_route", "")
            ax.imshow(frame)
            ax.scatter(ips[:, 0], ips[:, 1], s=5, c="red")
            for (x, y), side in zip(ips, sides):
                ax.add_patch(Rectangle((x - side / 2, y - side / 2), side, side, fill=False, lw=0.6,
                                       ec="cyan"))
            ax.set_title(f"{source} {rec.subject}/{rec.clip}" + (f"\n({route})" if route else ""),
                         fontsize=6)
        for ax in row_axes:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def loss_curves(losses: pd.DataFrame, *, title: str):
    """Mean training loss per epoch of every fold (thin lines) and their mean (bold): the first
    place to look when a run predicts one class (columns fold, epoch, loss)."""
    fig, ax = _figure(1, 1, figsize=(5.5, 3.2))
    for _, g in losses.groupby("fold"):
        ax.plot(g["epoch"], g["loss"], color="0.6", lw=0.7, alpha=0.7)
    mean = losses.groupby("epoch")["loss"].mean()
    ax.plot(mean.index, mean.values, color="tab:red", lw=2, label="mean over folds")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("training cross-entropy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
