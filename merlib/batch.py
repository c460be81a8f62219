"""``merlib reproduce``: the ordered notebooks for one dataset, executed by papermill.

Executed copies go to ``runs/<run>/``; the notebooks themselves write ``tables/<run>/`` and
``figures/<run>/``, where ``<run>`` is the dataset name, or for SynthME its preset, layout and seed
(``synthme-demo-casme2-seed0``). Work the notebooks do is cached (SynthME, preprocessing, per-fold training),
so a rerun after an interruption resumes instead of starting over.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from merlib.config import Paths, SynthConfig, project_root

KERNEL = "merlib"


@dataclass(frozen=True)
class BatchConfig:
    dataset: str = "synthme"
    data_root: str = ""
    profile: str = "quick"
    synth_preset: str = "demo"
    synth_seed: int = 0
    synth_layout: str = "casme2"
    only: tuple[str, ...] = ()


def run_name(cfg: BatchConfig) -> str:
    if cfg.dataset == "synthme":
        return SynthConfig(preset=cfg.synth_preset, seed=cfg.synth_seed,
                           layout=cfg.synth_layout).folder_name()
    return cfg.dataset


def notebooks(folder: Path | None = None) -> list[Path]:
    """The numbered notebooks, in order."""
    folder = folder or project_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def parameters(cfg: BatchConfig) -> dict:
    return {"dataset": cfg.dataset, "data_root": cfg.data_root, "profile": cfg.profile,
            "synth_preset": cfg.synth_preset, "synth_seed": cfg.synth_seed,
            "synth_layout": cfg.synth_layout}


def run(cfg: BatchConfig, *, paths: Paths | None = None, kernel: str = KERNEL) -> list[Path]:
    """Execute the notebooks in order; stop at the first failure (papermill raises)."""
    import papermill as pm

    paths = paths or Paths.from_env()
    out_dir = paths.runs_for(run_name(cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = [nb for nb in notebooks() if not cfg.only or nb.name[:2] in cfg.only]
    if not selected:
        raise SystemExit(f"no notebook matches --only {','.join(cfg.only)}")
    done = []
    for nb, extra, out_name in _jobs(selected):
        t0 = time.time()
        out = out_dir / out_name
        print(f"[merlib reproduce] {nb.name} {extra or ''} -> {out}", file=sys.stderr, flush=True)
        pm.execute_notebook(str(nb), str(out), parameters={**parameters(cfg), **extra},
                            kernel_name=kernel, cwd=str(nb.parent), progress_bar=False,
                            log_output=False)
        print(f"[merlib reproduce] {out_name} done in {time.time() - t0:.0f} s", file=sys.stderr,
              flush=True)
        done.append(out)
    return done


TRAINING_PREFIX = "04"
VARIANT_ORDER = (0, 24, 10)


def _jobs(selected: list[Path]):
    """(notebook, extra parameters, executed file name): the training notebook once per variant."""
    for nb in selected:
        if nb.name.startswith(TRAINING_PREFIX):
            for k in VARIANT_ORDER:
                yield nb, {"blocks": k}, f"{nb.stem}-blocks{k}.ipynb"
        else:
            yield nb, {}, nb.name


def main(args: argparse.Namespace) -> int:
    cfg = BatchConfig(dataset=args.dataset, data_root=args.data_root or "", profile=args.profile,
                      synth_preset=args.preset, synth_seed=args.seed,
                      only=tuple(s.strip().zfill(2) for s in args.only.split(",")) if args.only else ())
    if cfg.dataset != "synthme" and not cfg.data_root:
        print(f"merlib reproduce: --data-root is required for {cfg.dataset} "
              f"(the licensed datasets are not shipped)", file=sys.stderr)
        return 2
    t0 = time.time()
    run(cfg)
    print(f"[merlib reproduce] {cfg.dataset}: all done in {time.time() - t0:.0f} s",
          file=sys.stderr)
    return 0
