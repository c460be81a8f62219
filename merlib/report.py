"""Tables and figures for the notebooks, each written with a provenance record.

Our numbers come from files merlib computed (indexes, predictions); the paper's come from
``merlib.paper``. Tables put the two side by side with the difference (ours - paper).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from merlib import paper
from merlib.config import CLASSES, VARIANT_ORDER, VARIANTS, atomic_write_text, git_commit, to_jsonable

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "scikit-image",
            "opencv-contrib-python-headless", "face-recognition", "dlib-bin", "papermill")


# --------------------------------------------------------------------------- provenance

def hardware() -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "system": platform.platform()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # torch is optional for the division tables
        pass
    return info


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Provenance:
    """Who/what/where of a result. Start it when the work starts, so wall time is honest."""

    dataset: str
    index_hash: str = ""
    profile: str = ""
    config: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def record(self, **extra) -> dict:
        return {
            "git_commit": git_commit(),
            "dataset": self.dataset,
            "index_hash": self.index_hash,
            "profile": self.profile,
            "config": to_jsonable(self.config),
            "packages": package_versions(),
            "hardware": hardware(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.time() - self.started, 2),
            **to_jsonable(extra),
        }


def for_display(df: pd.DataFrame, *, digits: int = 4) -> pd.DataFrame:
    """A table as a notebook shows it (HTML in JupyterLab): floats rounded, the first column as
    the index. Plain values, so its text and HTML are the same on every run (nbval compares them)."""
    if df.empty:
        return df
    return df.set_index(df.columns[0]).round(digits)


def provenance_table(prov: Provenance, *, weights: str = "—") -> pd.DataFrame:
    """The provenance a reader wants at a glance (the full record is in the .provenance.json
    files beside every table and figure): commit, data, profile, weights, wall time, machine."""
    rec = prov.record()
    data = rec["config"].get("data", {})
    where = data.get("root") or (f"SynthME under MERLIB_DATA ({data.get('preset')}, "
                                 f"{data.get('layout')} layout, seed {data.get('seed')})")
    rows = [("commit", rec["git_commit"][:12] + ("+dirty" if rec["git_commit"].endswith("+dirty") else "")),
            ("dataset", f"{rec['dataset']} (index hash {rec['index_hash']})"),
            ("data", where),
            ("profile", rec["profile"] or "—"),
            ("VGG16 weights", weights),
            ("wall time so far", f"{rec['wall_time_s']:.0f} s"),
            ("machine", f"{rec['hardware'].get('cpu_count', '?')} CPU cores, "
                        f"{rec['hardware'].get('gpu') or 'no GPU'}"),
            ("packages", ", ".join(f"{k} {v}" for k, v in rec["packages"].items()
                                   if k in ("torch", "torchvision", "scikit-learn")))]
    return pd.DataFrame(rows, columns=["item", "value"])


def write_table(df: pd.DataFrame, out_dir: Path, name: str, prov: Provenance,
                *, floatfmt: str = ".4f", **extra) -> dict[str, Path]:
    """``name.csv``, ``name.md`` and ``name.provenance.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md",
             "provenance": out_dir / f"{name}.provenance.json"}
    atomic_write_text(paths["csv"], df.to_csv(index=False))
    atomic_write_text(paths["md"], df.to_markdown(index=False, floatfmt=floatfmt, missingval="—") + "\n")
    atomic_write_text(paths["provenance"],
                  json.dumps(prov.record(table=name, **extra), indent=2, sort_keys=True) + "\n")
    return paths


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


def write_figure(fig, out_dir: Path, name: str, prov: Provenance, **extra) -> dict[str, Path]:
    """``name.png``, ``name.pdf`` and ``name.provenance.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": out_dir / f"{name}.png", "pdf": out_dir / f"{name}.pdf",
             "provenance": out_dir / f"{name}.provenance.json"}
    fig.savefig(paths["png"], dpi=150, bbox_inches="tight")
    fig.savefig(paths["pdf"], bbox_inches="tight", metadata={"CreationDate": None})
    atomic_write_text(paths["provenance"],
                  json.dumps(prov.record(figure=name, **extra), indent=2, sort_keys=True) + "\n")
    return paths


# --------------------------------------------------------------------------- Tables 1-4

PAPER_TABLE = {"casme2": 1, "samm": 2, "smic": 3, "megc": 4}


def _emotion_summary(rows: pd.DataFrame) -> str:
    counts = rows["emotion"].fillna("?").value_counts()
    return ", ".join(f"{emo} {n}" for emo, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def class_division(index: pd.DataFrame, *, paper_source: str, comparable: bool = True) -> pd.DataFrame:
    """Per class: our usable count, the source emotions behind it, the paper's count, difference.

    ``paper_source`` picks the paper table to compare with (casme2: Table 1, samm: 2, smic: 3);
    ``comparable=False`` (SynthME) leaves the difference out: the counts are of different data.
    """
    ok = index[index["status"] == "ok"]
    ref = paper.division(paper_source).set_index("label")
    rows = []
    for label in CLASSES:
        mine = ok[ok["label"] == label]
        rows.append({
            "class": label,
            "emotions (ours)": _emotion_summary(mine),
            "ours": len(mine),
            "paper": int(ref.loc[label, "count"]),
            "ours - paper": len(mine) - int(ref.loc[label, "count"]),
            "emotions (paper)": (ref.loc[label, "emotions"] if isinstance(ref.loc[label, "emotions"], str)
                                 else "").replace(";", ", "),
        })
    total = {"class": "total", "emotions (ours)": "", "ours": sum(r["ours"] for r in rows),
             "paper": sum(r["paper"] for r in rows), "emotions (paper)": ""}
    total["ours - paper"] = total["ours"] - total["paper"]
    table = pd.DataFrame(rows + [total])
    return table if comparable else table.drop(columns="ours - paper")


def megc_division(index: pd.DataFrame) -> pd.DataFrame:
    """Table 4: per source and fused, usable counts per class, ours beside the paper's."""
    ok = index[index["status"] == "ok"]
    ours = (ok.groupby(["source", "label"]).size().unstack("label")
            .reindex(index=["casme2", "samm", "smic"], columns=list(CLASSES)).fillna(0).astype(int))
    ours.loc["fused"] = ours.sum()
    ours["total"] = ours.sum(axis=1)
    ref = paper.megc_division()
    out = pd.DataFrame({"source": ours.index})
    for col in [*CLASSES, "total"]:
        out[col] = ours[col].values
        out[f"{col} (paper)"] = ref[col].values
        out[f"{col} diff"] = ours[col].values - ref[col].values
    return out


def excluded_and_bad(index: pd.DataFrame) -> pd.DataFrame:
    """Every row that is not usable, with its status and reason (nothing is silently dropped)."""
    cols = ["source", "subject", "clip", "emotion", "status", "reason"]
    return index.loc[index["status"] != "ok", cols].reset_index(drop=True)


def status_summary(index: pd.DataFrame) -> pd.DataFrame:
    """How many rows per status, with what each status means."""
    from merlib.datasets.schema import STATUS_CODES

    counts = index["status"].value_counts()
    return pd.DataFrame({"status": counts.index, "rows": counts.values,
                         "meaning": [STATUS_CODES.get(s, "") for s in counts.index]})


def flags_summary(index: pd.DataFrame) -> pd.DataFrame:
    """Warnings on usable rows (missing apex, apex outside onset-offset), counted."""
    flags = index.loc[index["status"] == "ok", "flags"].fillna("").astype(str)
    exploded = flags[flags != ""].str.split(";").explode()
    counts = exploded.value_counts()
    return pd.DataFrame({"flag": counts.index, "clips": counts.values})


def division_report(index: pd.DataFrame, *, dataset: str, source: str, out_dir: Path,
                    prov: Provenance, data_root: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Write notebook 01's tables for one dataset and return them, keyed status, flags,
    unusable_rows and division (the paper's Table 1, 2, 3 or 4 side by side with ours).

    ``source`` is the format the index came from (for SynthME, its layout), which picks the paper
    table to compare with; MEGC gets Table 4 (per source and fused).
    """
    tables: dict[str, pd.DataFrame] = {"status": status_summary(index),
                                       "flags": flags_summary(index),
                                       "unusable_rows": excluded_and_bad(index)}
    comparable = paper_reference(dataset, source)[1]
    division = (megc_division(index) if source == "megc"
                else class_division(index, paper_source=source, comparable=comparable))
    names = {"status": "index_status", "flags": "index_flags", "unusable_rows": "unusable_rows",
             "division": f"table{PAPER_TABLE[source]}_division"}
    tables["division"] = division
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "index.csv", relative_paths(index, data_root).to_csv(index=False))
    for key, df in tables.items():
        write_table(df, out_dir, names[key], prov, paper_table=PAPER_TABLE.get(source), source=source)
    return tables


def relative_paths(df: pd.DataFrame, root: str | Path | None, columns=("frames_dir", "file")) -> pd.DataFrame:
    """``df`` with its path columns relative to ``root`` (a committed table must not carry the
    absolute paths of the machine that wrote it); paths outside ``root`` are left as they are."""
    if root is None:
        return df
    root = Path(root).resolve()
    out = df.copy()
    for col in columns:
        if col in out:
            out[col] = [_relative(v, root) for v in out[col]]
    return out


def _relative(value, root: Path):
    if not isinstance(value, str) or not value:
        return value
    try:
        return Path(value).resolve().relative_to(root).as_posix()
    except ValueError:
        return value


# --------------------------------------------------------------------------- Tables 5-6, Figure 6

METRICS = ("acc", "uf1", "uar")
METRIC_LABEL = {"acc": "Acc", "uf1": "UF1", "uar": "UAR"}


def paper_reference(dataset: str, source: str) -> tuple[str, bool]:
    """Which paper column to show beside a run, and whether a difference is meaningful.

    Real datasets compare with their own column. SynthME shows the column of the dataset whose
    layout it was written in, for reference only: the numbers measure different data.
    """
    if dataset in ("casme2", "samm", "smic", "megc"):
        return dataset, True
    return source, False


def profile_label(pred: pd.DataFrame | None, profile: str) -> str:
    """The profile as tables show it, naming a non-paper input representation the run used."""
    inputs = set(pred["inputs"]) if pred is not None and "inputs" in pred else {"frames"}
    extra = sorted(inputs - {"frames"})
    return f"{profile} ({', '.join(i.replace('_', '-') for i in extra)} maps)" if extra else profile


def table5(preds: dict[int, pd.DataFrame], *, dataset: str, source: str, profile: str) -> pd.DataFrame:
    """Acc / UF1 / UAR per variant, pooled over LOSO folds, beside the paper's Table 5."""
    from merlib.metrics import compute_metrics

    ref_ds, comparable = paper_reference(dataset, source)
    ref = paper.table5()
    ref = ref[ref["dataset"] == ref_ds].set_index(["blocks", "metric"])["value"]
    rows = []
    for k in VARIANT_ORDER:
        if k not in preds:
            continue
        m = compute_metrics(preds[k]["y_true"], preds[k]["y_pred"])
        row = {"variant": VARIANTS[k], "profile": profile_label(preds[k], profile),
               "clips": int(m["n"])}
        for met in METRICS:
            row[METRIC_LABEL[met]] = m[met]
        for met in METRICS:
            row[f"paper {METRIC_LABEL[met]}"] = ref[(k, met)]
            if comparable:
                row[f"diff {METRIC_LABEL[met]}"] = m[met] - ref[(k, met)]
        rows.append(row)
    return pd.DataFrame(rows)


# Each measured baseline beside the paper's row of the same method (STSTNet is not in the paper's
# Table 6; its own paper reports MEGC2019 full UF1 0.7353, UAR 0.7605).
BASELINE_ROWS = {"lbptop-svm": "LBP-TOP", "off-apexnet": "OFF-ApexNet", "ststnet": None}


def table6(preds10: pd.DataFrame | None, *, dataset: str, source: str, profile: str,
           baselines: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The paper's comparison rows as reported, each followed by the same method measured here
    under merlib's protocol where one was run (baselines and the 10-IB model); ``origin`` says
    which is which, so the two can never be confused."""
    from merlib.metrics import compute_metrics

    ref_ds, _ = paper_reference(dataset, source)
    t6 = paper.table6()
    t6 = t6[t6["dataset"] == ref_ds].assign(
        ref=lambda d: d["ref"].map(lambda r: "" if pd.isna(r) else f"[{int(r)}]"))
    wide = (t6.pivot(index=["method", "ref"], columns="metric", values="value")
            .reindex(columns=list(METRICS)).reset_index())
    order = {m: i for i, m in enumerate(dict.fromkeys(t6["method"]))}
    wide = wide.sort_values("method", key=lambda s: s.map(order)).reset_index(drop=True)
    wide = wide.rename(columns=METRIC_LABEL)
    wide.columns.name = None
    wide["origin"] = f"reported ({ref_ds} column of the paper)"

    def measured(name: str, pred: pd.DataFrame) -> dict:
        m = compute_metrics(pred["y_true"], pred["y_pred"])
        return {"method": name, "ref": "", "Acc": m["acc"], "UF1": m["uf1"], "UAR": m["uar"],
                "origin": f"measured here ({profile_label(pred, profile)} profile, {dataset})"}

    extra = {"Our (10 IBs)": [measured("merlib 10 IBs", preds10)] if preds10 is not None else []}
    tail = []
    for net, pred in (baselines or {}).items():
        row = measured(net, pred)
        (extra.setdefault(BASELINE_ROWS[net], []) if BASELINE_ROWS.get(net) else tail).append(row)
    rows = []
    for rec in wide.to_dict(orient="records"):
        rows += [rec, *extra.get(rec["method"], [])]
    return pd.DataFrame(rows + tail, columns=wide.columns)


def per_source_table(preds: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """MEGC: metrics of each source's subset of the pooled predictions, per variant."""
    from merlib.metrics import metrics_table

    frames = []
    for k in VARIANT_ORDER:
        if k in preds:
            t = metrics_table(preds[k], by="source").reset_index()
            t.insert(0, "variant", VARIANTS[k])
            frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def figure6(preds: dict[int, pd.DataFrame], *, title: str):
    """The variants' confusion matrices side by side (rows: true class, columns: predicted)."""
    return confusion_grid({VARIANTS[k]: preds[k] for k in VARIANT_ORDER if k in preds}, title=title)


def confusion_grid(preds: dict[str, pd.DataFrame], *, title: str):
    """One confusion matrix per named set of pooled predictions, side by side."""
    import seaborn as sns

    from merlib.metrics import compute_metrics, confusion

    fig, axes = _figure(1, max(len(preds), 1), figsize=(4.2 * max(len(preds), 1), 3.8), squeeze=False)
    for ax, (name, p) in zip(axes[0], preds.items()):
        cm = confusion(p["y_true"], p["y_pred"])
        m = compute_metrics(p["y_true"], p["y_pred"])
        sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, square=True)
        ax.set_title(f"{name}\nAcc {m['acc']:.3f}  UF1 {m['uf1']:.3f}  UAR {m['uar']:.3f}",
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


def usable(manifest: pd.DataFrame, *, groundtruth_root: str | Path | None = None) -> pd.DataFrame:
    """The manifest's processed clips, in a stable order.

    With ``groundtruth_root`` (a SynthME folder) each clip also gets ``gt_apex``, the generator's
    true apex, and ``gt_abs_err`` / ``gt_rel_err``, the detected apex's error against it (frames,
    fraction of the onset-offset span; NaN where the folder has no ground truth for the clip).
    The cache records only what preprocessing computed, so the scoring happens here."""
    ok = (manifest[manifest["status"] == "ok"].sort_values(["subject", "clip"])
          .reset_index(drop=True))
    if groundtruth_root is None:
        return ok
    import numpy as np

    from merlib.preprocess.apex import apex_error
    from merlib.synth import MARKER, groundtruth_path

    root = Path(groundtruth_root)
    if not (root / MARKER).is_file():
        raise ValueError(f"{root} is not a SynthME folder (no {MARKER}): it has no ground truth")
    gt = {"gt_apex": [], "gt_abs_err": [], "gt_rel_err": []}
    for row in ok.itertuples():
        path = groundtruth_path(root, row.subject, row.clip)
        true_apex = err = None
        if path.is_file() and pd.notna(row.apex_detected):
            with np.load(path) as z:
                true_apex = int(z["apex"])
            err = apex_error(true_apex, int(row.apex_detected), int(row.n_frames_span))
        gt["gt_apex"].append(true_apex)
        gt["gt_abs_err"].append(np.nan if err is None else float(err.frames))
        gt["gt_rel_err"].append(np.nan if err is None else float(err.fraction))
    return ok.assign(gt_apex=pd.array(gt["gt_apex"], dtype="Int64"),
                     gt_abs_err=gt["gt_abs_err"], gt_rel_err=gt["gt_rel_err"])


def apex_error_table(manifest: pd.DataFrame, *,
                     groundtruth_root: str | Path | None = None) -> pd.DataFrame:
    """Detected apex (Eqs. 16-17) against the annotated apex, and, given ``groundtruth_root`` (the
    SynthME folder the manifest was made from), against SynthME's ground truth.

    Errors are in frames and as a fraction of the onset-offset span.
    """
    ok = usable(manifest, groundtruth_root=groundtruth_root)
    rows = []
    for ref, abs_col, rel_col in (("annotated apex", "apex_abs_err", "apex_rel_err"),
                                  ("ground truth (SynthME)", "gt_abs_err", "gt_rel_err")):
        if abs_col not in ok or ok[abs_col].isna().all():
            continue
        e = ok[abs_col].dropna().astype(float)
        r = ok[rel_col].dropna().astype(float)
        rows.append({"reference": ref, "clips": len(e), "MAE (frames)": e.mean(),
                     "median (frames)": e.median(), "MAE (fraction of clip)": r.mean(),
                     "within 3 frames": (e <= 3).mean(), "within 10% of clip": (r <= 0.1).mean()})
    return pd.DataFrame(rows)


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
    """The 10 TIM frames (onset -> apex) of one clip, aligned to 224x224."""
    import numpy as np

    with np.load(clip_file) as z:
        frames = z["frames"]
    fig, axes = _figure(1, len(frames), figsize=(1.5 * len(frames), 1.8))
    for i, (ax, f) in enumerate(zip(axes, frames)):
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


def preprocess_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per status: clips, face-detector calls per clip, frames that fell back to the previous
    frame's landmarks."""
    rows = []
    for status, g in manifest.groupby("status", sort=False):
        row = {"status": status, "clips": len(g)}
        if status == "ok":
            row["detector calls / clip"] = g["detector_calls"].mean()
            row["landmark fallback frames"] = int(g["n_landmark_fallback"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def calibration_table(figures: dict) -> pd.DataFrame:
    """SynthME calibration (merlib.synth.calibration.calibrate) as check / measured /
    target rows: is the synthetic set a fair stand-in for a micro-expression dataset?"""
    rows = [
        ("face found by face_recognition (HOG), sampled frames", figures["detection_rate"],
         ">= 0.99", figures["detection_rate"] >= 0.99),
        ("LOSO baseline UF1 (logistic regression, apex - onset)", figures["baseline_uf1"],
         f"well above chance ({figures['chance_uf1']:.3f}) and < 1",
         figures["chance_uf1"] + 0.15 <= figures["baseline_uf1"] < 1.0),
        ("largest landmark motion, px at 224 face scale", figures["max_motion_224"], "<= 6",
         figures["max_motion_224"] <= 6.0),
    ]
    return pd.DataFrame(rows, columns=["check", "measured", "target", "met"])
