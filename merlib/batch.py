"""``merlib reproduce``: the ordered notebooks for one run configuration, executed by papermill.

Executed copies go to ``runs/<run>/``; the notebooks themselves write ``tables/<run>/`` and
``figures/<run>/``, where ``<run>`` is the dataset name, or for SynthME its preset, layout and seed
(``synthme-demo-casme2-seed0``). Work the notebooks do is cached (SynthME, preprocessing, per-fold training),
so a rerun after an interruption resumes instead of starting over.

The notebooks' parameters are the run options of :mod:`merlib.options` (the same names as
``merlib train``'s flags), so a notebook and the command line build the same RunConfig.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from merlib.config import ExecutorConfig, Paths, RunConfig, project_root
from merlib.options import for_notebooks, make_run_config, seed_configs
from merlib.registry import BASELINES, DATASETS, VARIANT_ORDER

KERNEL = "merlib"
# The kernel's own log says at every start that a local kernel talks over TCP without encryption:
# noise in a batch run's terminal, which names only notebooks, timings and failures. Errors still
# show; the notebooks' own warnings go to their cells as always.
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]
TRAINING_PREFIX = "04"
PAPER_NOTEBOOK = "06"  # the whole paper, gathered from every dataset's run


def notebooks(folder: Path | None = None) -> list[Path]:
    """The numbered notebooks, in order."""
    folder = folder or project_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def jobs(selected: list[Path], baselines=tuple(BASELINES), *, train_seed: int = 0, seeds: int = 1):
    """(notebook, extra parameters, executed file name): the training notebook once per variant
    of the paper's model, then once per Table 6 baseline, each once per training seed (one run
    each); the other notebooks once, reading every seed."""
    runs = [({"blocks": k}, f"blocks{k}") for k in VARIANT_ORDER] + \
           [({"model": net}, net) for net in baselines]
    for nb in selected:
        if not nb.name.startswith(TRAINING_PREFIX):
            yield nb, {}, nb.name
            continue
        for extra, name in runs:
            for s in range(train_seed, train_seed + seeds):
                suffix = f"-seed{s}" if seeds > 1 else ""
                yield nb, {**extra, "train_seed": s, "seeds": 1}, f"{nb.stem}-{name}{suffix}.ipynb"


def execute(notebook: str | Path, out: str | Path | None = None, *, parameters: dict | None = None,
            kernel: str = KERNEL) -> None:
    """Run one notebook with papermill (in place when ``out`` is None), its cwd the notebook's
    folder, no progress bar, the kernel's log quiet (:data:`QUIET_KERNEL`)."""
    import papermill as pm

    notebook = Path(notebook)
    pm.execute_notebook(str(notebook), str(out or notebook), parameters=parameters or {},
                        kernel_name=kernel, cwd=str(notebook.parent), progress_bar=False,
                        log_output=False, extra_arguments=QUIET_KERNEL)


def training_runs(config: RunConfig):
    """(name, config) of every run notebook 04 trains: the variants, then the baselines."""
    for k in VARIANT_ORDER:
        yield f"blocks={k}", config.variant(k)
    for net in dataset_baselines(config):
        yield net, dataclasses.replace(config, train=dataclasses.replace(config.train, net=net))


def dataset_baselines(config: RunConfig) -> tuple[str, ...]:
    """The baselines that can run on the run's dataset (``registry.Dataset.baselines``)."""
    allowed = DATASETS[config.data.dataset].baselines
    return tuple(BASELINES) if allowed is None else tuple(allowed)


def run(parameters: dict, *, only: tuple[str, ...] = (), skip: tuple[str, ...] = (),
        paths: Paths | None = None, kernel: str = KERNEL,
        executor: ExecutorConfig | None = None) -> list[Path]:
    """Execute the notebooks in order with ``parameters``; stop at the first failure.

    With an ``executor`` other than local, the folds of every variant and baseline are trained on
    it first, here (notebooks never start clusters); notebook 04 then finds them finished and
    pools them."""
    paths = paths or Paths.from_env()
    config = make_run_config(**parameters)  # refuses bad options before any notebook starts
    parameters = for_notebooks(parameters)
    out_dir = paths.runs_for(config.data.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = [nb for nb in notebooks() if (not only or nb.name[:2] in only) and nb.name[:2] not in skip]
    if not selected:
        raise SystemExit(f"no notebook matches --only {','.join(only)}")
    if executor is not None and executor.kind != "local" and any(
            nb.name.startswith(TRAINING_PREFIX) for nb in selected):
        from merlib.experiment import prepare, train

        prepared = prepare(config, paths=paths)
        for what, run in training_runs(config):
            for seeded in seed_configs(run, parameters.get("seeds", 1)):
                t0 = time.time()
                print(f"[merlib reproduce] {config.data.name} {what} seed {seeded.train.seed}: "
                      f"folds on {executor.kind}", file=sys.stderr, flush=True)
                train(dataclasses.replace(seeded, executor=executor), prepared=prepared, paths=paths)
                print(f"[merlib reproduce] {config.data.name} {what} seed {seeded.train.seed} "
                      f"done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    done = []
    for nb, extra, out_name in jobs(selected, dataset_baselines(config), train_seed=config.train.seed,
                                    seeds=int(parameters.get("seeds", 1))):
        t0 = time.time()
        out = out_dir / out_name
        print(f"[merlib reproduce] {nb.name} {extra or ''} -> {out}", file=sys.stderr, flush=True)
        execute(nb, out, parameters={**parameters, **extra}, kernel=kernel)
        print(f"[merlib reproduce] {out_name} done in {time.time() - t0:.0f} s", file=sys.stderr,
              flush=True)
        done.append(out)
    return done
