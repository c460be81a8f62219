"""Tables 1-6 and the notebooks' summary tables: our numbers computed from files merlib wrote
(indexes, manifests, predictions), the paper's read from ``merlib.paper``, side by side with the
difference (ours - paper) where the two measure the same data."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from merlib import paper
from merlib.registry import BASELINES, CLASSES, DATASETS, SOURCES, VARIANT_ORDER, VARIANTS
from merlib.registry import dataset as dataset_entry
from merlib.files import atomic_write_text
from merlib.report.provenance import Provenance, relative_paths, write_table


def for_display(df: pd.DataFrame, *, digits: int = 4) -> pd.DataFrame:
    """A table as a notebook shows it (HTML in JupyterLab): floats rounded, the first column as
    the index. Plain values, so its text and HTML are the same on every run (nbval compares them)."""
    if df.empty:
        return df
    return df.set_index(df.columns[0]).round(digits)


# --------------------------------------------------------------------------- Tables 1-4

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
            .reindex(index=list(SOURCES), columns=list(CLASSES)).fillna(0).astype(int))
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
    paper_table = dataset_entry(source).paper_table
    division = (megc_division(index) if len(dataset_entry(source).sources) > 1
                else class_division(index, paper_source=source, comparable=comparable))
    names = {"status": "index_status", "flags": "index_flags", "unusable_rows": "unusable_rows",
             "division": f"table{paper_table}_division"}
    tables["division"] = division
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "index.csv", relative_paths(index, data_root).to_csv(index=False))
    for key, df in tables.items():
        write_table(df, out_dir, names[key], prov, paper_table=paper_table, source=source)
    return tables


# --------------------------------------------------------------------------- Tables 5-6, Figure 6

METRICS = ("acc", "uf1", "uar")
METRIC_LABEL = {"acc": "Acc", "uf1": "UF1", "uar": "UAR"}


def paper_reference(dataset: str, source: str) -> tuple[str, bool]:
    """Which paper column to show beside a run, and whether a difference is meaningful.

    Real datasets compare with their own column. SynthME shows the column of the dataset whose
    layout it was written in, for reference only: the numbers measure different data.
    """
    if DATASETS[dataset].synthetic:
        return dataset_entry(source).paper_column, False
    return DATASETS[dataset].paper_column, True


def profile_label(pred: pd.DataFrame | None, profile: str) -> str:
    """The profile as tables show it, naming a non-paper input representation the run used and,
    for a network baseline trained shorter than its reference, its epochs."""
    inputs = set(pred["inputs"]) if pred is not None and "inputs" in pred else {"frames"}
    extra = sorted(inputs - {"frames"})
    label = f"{profile} ({', '.join(i.replace('_', '-') for i in extra)} maps)" if extra else profile
    if pred is not None and "epochs" in pred and "net" in pred:
        epochs, reference = int(pred["epochs"].iloc[0]), BASELINES[pred["net"].iloc[0]].schedule["epochs"]
        if epochs != reference:
            label += f", {epochs} of the reference's {reference} epochs"
    return label


def with_profile(label: str) -> str:
    """"quick (onset-delta maps)" -> "quick profile (onset-delta maps)", "quick, 25 of ..." ->
    "quick profile, 25 of ...": the word "profile" after the profile's name."""
    cut = min((i for i in (label.find(" ("), label.find(", ")) if i >= 0), default=len(label))
    return f"{label[:cut]} profile{label[cut:]}"


def seeded_metrics(pred: pd.DataFrame) -> dict:
    """Pooled Acc / UF1 / UAR of a run's predictions: with several training seeds (the
    ``train_seed`` column), each seed's pooled metrics and their mean as the value, with the
    standard deviation and the range beside it, and which seeds; one seed's own otherwise. A
    single seed's number overstates what it knows: see the spread before comparing variants."""
    from merlib.metrics import compute_metrics

    groups = list(pred.groupby("train_seed")) if "train_seed" in pred else [(None, pred)]
    per = pd.DataFrame([compute_metrics(g["y_true"], g["y_pred"]) for _, g in groups])
    out = {"n": int(per["n"].iloc[0])}
    if groups[0][0] is not None:
        out["seeds"] = ",".join(str(int(s)) for s, _ in groups)
    for met in METRICS:
        out[METRIC_LABEL[met]] = float(per[met].mean())
        if len(per) > 1:
            out[f"{METRIC_LABEL[met]} sd"] = float(per[met].std(ddof=1))
            out[f"{METRIC_LABEL[met]} range"] = f"{per[met].min():.3f}-{per[met].max():.3f}"
    return out


def first_seed(pred: pd.DataFrame) -> pd.DataFrame:
    """The predictions of a run's first training seed (a figure shows one seed's predictions)."""
    return pred[pred["train_seed"] == pred["train_seed"].min()] if "train_seed" in pred else pred


def table5(preds: dict[int, pd.DataFrame], *, dataset: str, source: str, profile: str) -> pd.DataFrame:
    """Acc / UF1 / UAR per variant, pooled over LOSO folds, beside the paper's Table 5 (columns
    "reported ..."); with several training seeds, their mean, sd and range
    (:func:`seeded_metrics`)."""
    ref_ds, comparable = paper_reference(dataset, source)
    ref = paper.table5()
    ref = ref[ref["dataset"] == ref_ds].set_index(["blocks", "metric"])["value"]
    rows = []
    for k in VARIANT_ORDER:
        if k not in preds:
            continue
        m = seeded_metrics(preds[k])
        row = {"variant": VARIANTS[k], "profile": profile_label(preds[k], profile),
               **({"input": DATASETS[dataset].note} if DATASETS[dataset].note else {}),
               "clips": m.pop("n"),
               # "training seeds: 0" rather than "seeds: 0", which reads as none
               **({"training seeds": m.pop("seeds")} if "seeds" in m else {}), **m}
        for met in METRICS:
            row[f"reported {METRIC_LABEL[met]}"] = ref[(k, met)]  # the paper's, as printed
            if comparable:
                row[f"diff {METRIC_LABEL[met]}"] = m[METRIC_LABEL[met]] - ref[(k, met)]
        rows.append(row)
    return pd.DataFrame(rows)


def table6(preds10: pd.DataFrame | None, *, dataset: str, source: str, profile: str,
           baselines: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The paper's comparison rows as reported, each followed by the same method measured here
    under merlib's protocol where one was run (baselines and the 10-IB model); ``origin`` says
    which is which, so the two can never be confused. Each measured baseline follows the paper's
    row of the same method (``paper_row`` in ``merlib.registry.BASELINES``); one the paper does
    not list (STSTNet) comes last."""
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
        m = seeded_metrics(pred)
        seeds = (f"; seed{'s' if ',' in m['seeds'] else ''} {m['seeds']}") if "seeds" in m else ""
        spread = ("; " + ", ".join(f"{k.split()[0]} sd {m[k]:.3f}" for k in m if k.endswith(" sd"))
                  if any(k.endswith(" sd") for k in m) else "")
        entry = DATASETS[dataset]
        if name in BASELINES and BASELINES[name].net and entry.flow_from == "file":
            note = "flow images of the release"  # the input its authors used, not the apex frame
        else:
            note = entry.note
        return {"method": name, "ref": "", "Acc": m["Acc"], "UF1": m["UF1"], "UAR": m["UAR"],
                "origin": f"measured here ({with_profile(profile_label(pred, profile))}, {dataset}"
                          + (f"; {note}" if note else "") + seeds + spread + ")"}

    # On the composite, other papers' own numbers (paper.literature_megc) sit under the paper's
    # row of the same method, or after the paper's rows when it does not list the method.
    # A method may have several (its authors', then others' reruns): one row each, file order.
    literature: dict[str, list[dict]] = {}
    if ref_ds == "megc":
        for r in paper.literature_megc().to_dict(orient="records"):
            literature.setdefault(r["method"], []).append(
                {"method": r["method"], "ref": "", "Acc": float("nan"), "UF1": r["uf1"],
                 "UAR": r["uar"], "origin": f"{r['origin']}: {r['source']}"})
    # Rows to place under each reported method; what the paper's table lacks follows it, in order.
    extra = {"Our (10 IBs)": [measured("merlib 10 IBs", preds10)] if preds10 is not None else []}
    for method, rows_ in literature.items():
        extra.setdefault(method, []).extend(rows_)
    for net, pred in (baselines or {}).items():
        home = (BASELINES[net].paper_row or next((m for m in literature if m.lower() == net), None)
                or net)
        extra.setdefault(home, []).append(measured(net, pred))
    rows = []
    for rec in wide.to_dict(orient="records"):
        rows += [rec, *extra.pop(rec["method"], [])]
    for left in extra.values():
        rows += left
    return pd.DataFrame(rows, columns=wide.columns)


def across_datasets(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One table per dataset (its title -> table) as one, the dataset in the first column; the
    paper's Tables 5 and 6 over CASME II, SAMM, SMIC and MEGC."""
    frames = [t.assign(dataset=name)[["dataset", *t.columns]] for name, t in tables.items() if len(t)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def oracle_table(runs: list[tuple[str, pd.DataFrame, dict]]) -> pd.DataFrame:
    """Per run (name, pooled predictions, per-fold epoch probabilities): the honest last-epoch
    Acc / UF1 / UAR, then what choosing each held-out subject's best epoch on that subject would
    have reported, labelled as the invalid diagnostic it is, and the gap."""
    from merlib.metrics import ORACLE_LABEL, compute_metrics, oracle_metrics

    rows = []
    for name, pred, epochs in runs:
        honest = compute_metrics(pred["y_true"], pred["y_pred"])
        oracle = oracle_metrics(pred, epochs)
        n_epochs = {len(v) for v in epochs.values()}
        rows.append({"method": name, "epochs": "/".join(map(str, sorted(n_epochs))),
                     "Acc (last epoch)": honest["acc"], "UF1 (last epoch)": honest["uf1"],
                     "UAR (last epoch)": honest["uar"], "Acc (oracle)": oracle["acc"],
                     "UF1 (oracle)": oracle["uf1"], "UAR (oracle)": oracle["uar"],
                     "UF1 gap": oracle["uf1"] - honest["uf1"], "oracle": ORACLE_LABEL})
    return pd.DataFrame(rows)


def per_source_table(preds: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """MEGC: metrics of each source's subset of the pooled predictions, per variant (the first
    training seed's)."""
    from merlib.metrics import metrics_table

    frames = []
    for k in VARIANT_ORDER:
        if k in preds:
            t = metrics_table(first_seed(preds[k]), by="source").reset_index()
            t.insert(0, "variant", VARIANTS[k])
            frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def usable(manifest: pd.DataFrame, *, groundtruth_root: str | Path | None = None) -> pd.DataFrame:
    """The manifest's processed clips, in a stable order; with ``groundtruth_root`` (a SynthME
    folder) scored against the generator's true apex (``merlib.synth.scoring``)."""
    ok = (manifest[manifest["status"] == "ok"].sort_values(["subject", "clip"])
          .reset_index(drop=True))
    if groundtruth_root is None:
        return ok
    from merlib.synth.scoring import with_groundtruth

    return with_groundtruth(ok, groundtruth_root)


def apex_error_table(manifest: pd.DataFrame, *,
                     groundtruth_root: str | Path | None = None) -> pd.DataFrame:
    """Detected apex (Eqs. 16-17) against the annotated apex, and, given ``groundtruth_root`` (the
    SynthME folder the manifest was made from), against SynthME's ground truth.

    Errors are in frames and as a fraction of the onset-offset span. A clip of one frame (the
    public MEGC2019 release: the apex alone) has no apex to find and is left out; a dataset of
    only such clips gives an empty table.
    """
    ok = usable(manifest, groundtruth_root=groundtruth_root)
    if "n_frames_span" in ok:
        ok = ok[~(ok["n_frames_span"] <= 1)]
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



def face_routes(manifest: pd.DataFrame) -> pd.DataFrame:
    """Processed clips per face-finding route (``faces.find_face``: the detector, a padded frame,
    upsampling, the whole pre-cropped frame) and source."""
    ok = manifest[manifest["status"] == "ok"]
    routes = ok["face_route"].replace("", "(not recorded)")
    table = pd.crosstab(routes, ok["source"], margins=True, margins_name="all")
    table.index.name, table.columns.name = "face route", None
    return table.reset_index()


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


def synth_knobs(preset: str) -> pd.DataFrame:
    """The realism knobs of a SynthME preset (``synth.plan.KNOBS``) beside the ``tiny`` preset's
    (every knob off): what makes the data harder and closer to real recordings."""
    from merlib.synth.plan import KNOBS, get_preset

    this, off = get_preset(preset), get_preset("tiny")
    return pd.DataFrame([{"knob": k, preset: str(getattr(this, k)), "tiny (off)": str(getattr(off, k)),
                          "what it does": what} for k, what in KNOBS.items()])


def calibration_table(figures: dict) -> pd.DataFrame:
    """SynthME calibration (merlib.synth.calibration.calibrate) as check / measured /
    target rows: is the synthetic set a fair stand-in for a micro-expression dataset?"""
    rows = [
        ("face found by face_recognition (HOG), sampled frames", f"{figures['detection_rate']:.4f}",
         ">= 0.99", figures["detection_rate"] >= 0.99),
        ("LOSO baseline UF1 (logistic regression, apex - onset)", f"{figures['baseline_uf1']:.4f}",
         f"well above chance ({figures['chance_uf1']:.3f}) and < 1",
         figures["chance_uf1"] + 0.15 <= figures["baseline_uf1"] < 1.0),
        ("largest landmark motion, px at 224 face scale", f"{figures['max_motion_224']:.2f}", "<= 6",
         figures["max_motion_224"] <= 6.0),
        ("distinct people (source identities) / subjects",
         f"{figures['n_identities']} / {figures['n_subjects']}", "equal: a held-out subject is a "
         "held-out person", figures["n_identities"] == figures["n_subjects"]),
    ]
    return pd.DataFrame(rows, columns=["check", "measured", "target", "met"])



DEVICE_CHECK = Path("bench") / "results" / "device-check" / "device_check.json"


def device_check_summary(root: Path | None = None) -> str:
    """What the committed GPU check (bench/device_check.py, issue 22) measured, with its
    provenance; or that none has run."""
    import json

    from merlib.config import project_root

    path = (root or project_root()) / DEVICE_CHECK
    if not path.is_file():
        return ("No GPU check has run yet: no figure of the paper profile on a GPU is claimed. "
                "`make device-pack`, then `bash bench/device_check.sh --pack build/device-pack "
                f"--out OUT` on a CUDA machine, writes one; commit it as {DEVICE_CHECK.parent}/.")
    r = json.loads(path.read_text())
    env, prov = r["environment"], r["provenance"]
    step = next(s for s in r["step_figures"] if s["variant"] == VARIANTS[10])
    lines = [f"GPU check on {env['device']} (torch {env['torch']}, CUDA {env['cuda']}), pack of "
             f"commit {str(prov['commit'])[:12]}, {r['wall_s']:.0f} s" + (" - DRY RUN" if r["dry_run"] else ""),
             f"paper step, 10 IBs, batch {step['batch']}: {step['train clips/s']:.1f} clips/s, "
             f"{step['achieved TFLOP/s']:.1f} TFLOP/s"
             + (f" ({step['% of measured bf16 peak']:.0f}% of the measured bf16 peak)"
                if step.get("% of measured bf16 peak") else "")]
    for kind, run in r["loso"].items():
        p = run["pooled"]
        line = (f"paper profile on {prov['dataset']}, 10 IBs, {r['epochs']} epochs, {kind} labels: "
                f"UF1 {p['uf1']:.3f}, UAR {p['uar']:.3f}, Acc {p['acc']:.3f}")
        if "majority_class_share" in run:
            line += f" (majority class {run['majority_class_share']:.3f} of clips)"
        losses = run.get("mean_loss_per_epoch") or []
        if len(losses) > 1:
            line += f"; mean training loss {losses[0]:.3f} -> {losses[-1]:.3f}"
        lines.append(line)
    return "\n".join(lines)
