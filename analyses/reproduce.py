"""The paper's pipeline end to end on the model organism: what ``make demo`` runs (``adt-probe reproduce``).

    adt-probe reproduce --out demo            # about 15 minutes on 2 CPU cores (3 seeds)
    adt-probe reproduce --out demo --quick    # about 3 minutes: fewer steps and items, same code path

Steps, each a function below, each writing under ``--out``:

1. ``train``       base organism -> stage 1 -> boundary mining -> stage 2, per seed
   (``rl.train.grpo`` with ``rl/configs/demo.toml``);
                   ``runs/seed-S/log.jsonl``, ``runs/seed-S/checkpoints/step-N``
2. ``evaluate``    the base and every seed's final model on held-out items (``rl.evaluate``): accuracy, think-rate,
                   similarity of the think text to the reference chains, rubric process score; and on extra items
                   the greedy columns alone; ``eval_base.json``, ``eval_seed-S.json`` (with each item's completion)
3. ``compare``     ``adt-probe compare`` of the base and the final models (``analyses.compare``, the same code): both
                   verdicts by the rules of ``analyses.verdicts``, the router effect at fixed input with random-update
                   calibration and matched-norm controls, settling curves, mirror; ``compare/``
4. ``record``      both models (and the base again, batched differently: the noise floor) teacher-forced on the final
                   model's completions, and on the base's own completions (the mirror check); ``recordings*/``
   ``findings``    gating drift with intervals and noise floor, band contrast, crystallization; ``findings*/``
   ``decompose``   the exact split of the router-logit change into router term and input term
5. ``weights``     router weight drift base -> final, against the drift of the other weights of each block
6. ``trajectory``  gating and weight drift at every checkpoint of the run
7. ``transplant``  the final model with the base's routers per layer band (and the reverse): change of accuracy
8. ``report``      ``report.md`` (figures inline, the results table, commands and versions) and ``results.json``

A step that finished left ``steps/<name>.json``; a re-run skips it (and training resumes from its newest checkpoint),
so an interrupted demo continues where it stopped. ``--redo STEP`` runs a step (and every later one) again.
Nothing here is tuned to make a finding appear: the held-out set, bands and statistics are fixed in advance. The
analyses read the completions the evaluate step generated and scored (greedy, one per item), not a second copy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import adt_probe
from adt_probe.outputs import output_dir
from analyses import checkpoints
from analyses.cli import command_parser
from analyses.models import load_pretrained
from rl.data.prompts import MAX_NEW_TOKENS
from rl.data.tasks import DIFFICULTY_BANDS, heldout_set
from rl.evaluate import evaluate, hierarchical_mean_ci, make_eval_judge, mean_ci, proportion
from rl.organism import calibrated_audio
from rl.train.config import load_config

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "rl" / "configs" / "demo.toml"

#: what ``reproduce`` writes in ``--out`` (and, with ``--overwrite``, the only names it replaces there)
WRITES = ["plan.json", "steps", "runs", "eval_*.json", "recordings", "recordings_mirror",
          "findings", "findings_mirror", "decompose", "weights", "trajectory", "transplant", "figures", "report.md",
          "results.json"]

#: ``--quick``: the same pipeline at a size a test can afford (``--set`` overrides of the demo config). It checks the
#: code path, not the reasoning: 64 tokens cut the longest reference chains, which it allows (the evaluation says so).
QUICK_OVERRIDES = ["stages.0.steps=6", "stages.1.steps=3", "grpo.batch_size=4", "grpo.num_generations=4",
                   "grpo.max_new_tokens=64", "grpo.allow_truncated_chains=true", "mining.pool.n_items=16",
                   "mining.k_rollouts=4", "checkpoint.every=3"]


@dataclass
class Plan:
    """What one ``reproduce`` run does; saved as ``plan.json`` so a re-run can check it continues the same run."""

    out: str
    config: str = str(DEMO_CONFIG)
    quick: bool = False
    overrides: list[str] = field(default_factory=list)  # the user's ``--set``; ``--quick`` adds QUICK_OVERRIDES
    n_per_cell: int = 4  # held-out items per family x difficulty (7 families x 3 difficulties), for every step
    eval_seed: int = 30_011  # the held-out set; training and mining use other seeds
    # More held-out items for the before/after table's greedy columns only (no judge, no sampling; seeds from
    # ``extra_seed``): on 84 items one model's accuracy moves by about +-0.09 from one item set to another, as much
    # as the change the table reads. 12 per cell cost 154 s of the demo's 15 minutes (263 s to evaluate four models
    # against 109 s without them); 8 per cell: 252 items in all, the change's interval about +-0.04.
    extra_per_cell: int = 8
    n_boot: int = 1000
    # Tokens a completion may take, in training and in every evaluation; ``make`` copies the config's
    # ``grpo.max_new_tokens`` so a model is judged at the length it was trained to reason in.
    max_new_tokens: int = MAX_NEW_TOKENS
    bands: int = 2  # router transplant: equal layer bands, lowest first
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # RL runs: run-to-run variation needs several
    # Processes at once (RL runs, evaluations), one thread each; None: all at once. Two one-thread processes do 1.4x
    # the work of one two-thread process on 2 cores; two at a time left a core idle while the third seed (or the
    # fourth model) ran alone.
    jobs: int | None = None

    @property
    def dir(self) -> Path:
        return Path(self.out)

    @property
    def extra_seed(self) -> int:
        """The extra items' first seed: the held-out set takes one per difficulty band from ``eval_seed``."""
        return self.eval_seed + len(DIFFICULTY_BANDS)

    @property
    def config_overrides(self) -> list[str]:
        return (QUICK_OVERRIDES if self.quick else []) + self.overrides

    @classmethod
    def make(cls, out: str, *, quick: bool, config: str | None = None, overrides: list[str] | None = None) -> Plan:
        plan = cls(out=out, config=config or str(DEMO_CONFIG), quick=quick, overrides=list(overrides or []))
        if quick:
            plan.n_per_cell, plan.extra_per_cell, plan.n_boot, plan.seeds = 2, 1, 200, [0, 1]
        plan.max_new_tokens = load_config(plan.config, plan.config_overrides).grpo.max_new_tokens
        return plan


# ---------------------------------------------------------------------------------------------------------------------
# the steps


def step_train(plan: Plan) -> dict:
    """GRPO on every seed: stage 1, mining, stage 2. Each run resumes from its newest complete checkpoint."""
    cfg = load_config(plan.config, plan.config_overrides)
    pending = list(plan.seeds)
    running: list[tuple[int, subprocess.Popen, object]] = []
    while pending or running:
        while pending and len(running) < (plan.jobs or len(plan.seeds)):
            seed = pending.pop(0)
            folder = run_dir(plan, seed)
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / "train.log", "a")  # noqa: SIM115  (closed when the process ends)
            command = [sys.executable, "-m", "rl.train.grpo", "--config", plan.config, "--out", str(folder),
                       "--resume", "--set", f"seed={seed}", "--set", "threads=1",
                       *[a for o in plan.config_overrides for a in ("--set", o)]]
            say(f"train seed {seed}: {folder / 'train.log'}")
            running.append((seed, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(1.0)
        for entry in [r for r in running if r[1].poll() is not None]:
            seed, proc, log = entry
            log.close()
            running.remove(entry)
            if proc.returncode:
                for _, other, other_log in running:
                    other.terminate()
                    other_log.close()
                raise SystemExit(f"training seed {seed} failed (exit {proc.returncode}); its log: "
                                 f"{run_dir(plan, seed) / 'train.log'}. Re-run to resume.")
    return {"final": {str(s): str(final_checkpoint(plan, s)) for s in plan.seeds},
            "steps": sum(s.steps for s in cfg.stages), "config": cfg.to_dict()}


def step_evaluate(plan: Plan) -> dict:
    """Base and every seed's final model on the held-out set (with the judge's process score) and extra items; the
    final models pooled with a hierarchical interval (seeds, then items)."""
    models = {"base": base_path(plan), **{f"seed-{s}": final_checkpoint(plan, s) for s in plan.seeds}}
    # One process per model, ``plan.jobs`` at once with one thread each: generation on a small model is bound by
    # Python overhead, so two one-thread processes do nearly twice the work of one two-thread process.
    with ProcessPoolExecutor(max_workers=plan.jobs or len(models), mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        reports = dict(zip(models, pool.map(evaluate_model, [plan] * len(models), models.values(), models)))
    for name, report in reports.items():
        say(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in headline(report).items() if isinstance(v, float)))
    seeds = [reports[f"seed-{s}"] for s in plan.seeds]
    return {"base": headline(reports["base"]), "final": pooled_headline(seeds),
            "change": pooled_headline(seeds, minus=reports["base"]),
            "over_base_direct": over_base_direct(seeds, reports["base"]),
            "seeds": {str(s): headline(r) for s, r in zip(plan.seeds, seeds)},
            "items": {"held_out": reports["base"]["n_items"], "extra": _n_extra(reports["base"])}}


def evaluate_model(plan: Plan, path: Path, name: str) -> dict:
    """One model on the held-out set (``rl.evaluate.evaluate`` with the judge and sampled completions) and on the
    extra items (greedy completions only: their outcomes under ``extra``), written to ``eval_<name>.json``."""
    torch.manual_seed(0)
    model, processor = load_pretrained(checkpoints.model_folder(path))
    # facts written out and notes measure the organism, not what RL changed: left to rl.organism's own evaluation
    report = evaluate(model, processor, heldout(plan), judge=make_eval_judge("smollm2"), facts_and_notes=False,
                      max_new_tokens=plan.max_new_tokens)
    if plan.extra_per_cell:
        extra = evaluate(model, processor, extra_heldout(plan), think_samples=False, facts_and_notes=False,
                         max_new_tokens=plan.max_new_tokens)
        report["extra"] = {"n_items": extra["n_items"], "seed": plan.extra_seed, "per_item": extra["per_item"]}
    report["model"] = str(path)
    (plan.dir / f"eval_{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def step_record(plan: Plan) -> dict:
    """Recordings on the final model's completions (the default) and on the base's own (the mirror check)."""
    from analyses.record_pair import record_pair

    out = {}
    for source, folder in (("rl", "recordings"), ("base", "recordings_mirror")):
        name = f"seed-{plan.seeds[0]}" if source == "rl" else "base"
        paths = record_pair(base_path(plan), final_checkpoint(plan), heldout(plan), plan.dir / folder,
                            source=source, routing="full", max_new_tokens=plan.max_new_tokens,
                            completions=greedy_completions(plan, name))
        out[source] = {k: str(v) for k, v in paths.items()}
    return out


def step_compare(plan: Plan) -> dict:
    """Both verdicts and their numbers: ``adt-probe compare`` of the base and every seed's final model (several
    runs: hierarchical intervals over runs, then sequences)."""
    from analyses.compare import compare

    finals = [final_checkpoint(plan, s) for s in plan.seeds]
    findings = compare(base_path(plan), finals, heldout(plan), plan.dir / "compare",
                       n_nulls=2 if plan.quick else 5, n_boot=plan.n_boot, max_new_tokens=plan.max_new_tokens,
                       rl_completions=[greedy_completions(plan, f"seed-{s}") for s in plan.seeds],
                       base_completions=greedy_completions(plan, "base"),
                       data_path=f"held-out synthetic set (seeds from {plan.eval_seed}, {plan.n_per_cell} per cell)")
    return {"verdicts": {k: v["verdict"] for k, v in findings["verdicts"].items()},
            "findings": str(plan.dir / "compare" / "findings.json")}


def step_findings(plan: Plan) -> dict:
    """Gating drift and crystallization, from both recording sets."""
    from analyses.findings import findings

    return {folder: findings(plan.dir / f"recordings{suffix}", plan.dir / folder, n_boot=plan.n_boot)
            for suffix, folder in (("", "findings"), ("_mirror", "findings_mirror"))}


def step_decompose(plan: Plan) -> dict:
    """The exact split of the router-logit change into router term and input term, per layer (adt_probe.decompose)."""
    from analyses.decompose import run

    return run(base_path(plan), final_checkpoint(plan), plan.dir / "recordings", plan.dir / "decompose",
               n_boot=plan.n_boot)


def step_weights(plan: Plan) -> dict:
    """Router weight drift base -> final, and the relative change of the block's other weights as the reference."""
    from analyses.weights import run

    return run(base_path(plan), final_checkpoint(plan), plan.dir / "weights")


def step_trajectory(plan: Plan) -> dict:
    """Drift from the base at every checkpoint, on the final model's completions."""
    from analyses.trajectory import run

    return run(run_dir(plan), base_path(plan), plan.dir / "recordings", plan.dir / "trajectory",
               n_boot=min(plan.n_boot, 200))


def step_transplant(plan: Plan) -> dict:
    """Router transplant per layer band, both directions, on the held-out set."""
    from adt_probe import plot
    from analyses.transplant import run

    ds = run(base_path(plan), final_checkpoint(plan), heldout(plan), n_bands=plan.bands, n_boot=plan.n_boot,
             rl_completions=greedy_completions(plan, f"seed-{plan.seeds[0]}"),
             base_completions=greedy_completions(plan, "base"),
             max_new_tokens=plan.max_new_tokens)
    folder = plan.dir / "transplant"
    folder.mkdir(parents=True, exist_ok=True)
    adt_probe.save(ds, folder / "transplant.nc")
    for metric in ("accuracy", "think_rate"):
        fig = plot.transplant_effects(ds, metric)
        plot.save(fig, folder / f"transplant_{metric}")
    return {direction: {band: {m: {k: float(ds[f"{m}_delta{s}"].sel(band=band, direction=direction))
                                   for k, s in (("value", ""), ("lo", "_lo"), ("hi", "_hi"))}
                               for m in ("accuracy", "think_rate", "reward", "kl_to_rl", "think_logprob")}
                        for band in ds.band.values.tolist()}
            for direction in ds.direction.values.tolist()} | {"reference": dict(ds.attrs)}


def step_report(plan: Plan) -> dict:
    """``report.md`` and ``results.json`` from what the other steps wrote."""
    from analyses.report import write_report

    return write_report(plan, {name: read_step(plan, name) for name, _ in STEPS if name != "report"})


STEPS = [("train", step_train), ("evaluate", step_evaluate), ("compare", step_compare), ("record", step_record),
         ("findings", step_findings),
         ("decompose", step_decompose), ("weights", step_weights), ("trajectory", step_trajectory),
         ("transplant", step_transplant), ("report", step_report)]


# ---------------------------------------------------------------------------------------------------------------------
# plumbing


def say(msg: str) -> None:
    """Progress of the demo: an info message of the ``analyses.reproduce`` logger (``adt-probe`` shows it)."""
    log.info(f"[reproduce] {msg}")


def base_path(plan: Plan) -> Path:
    return Path(load_config(plan.config, plan.config_overrides).model_path())


def run_dir(plan: Plan, seed: int | None = None) -> Path:
    """The RL run of ``seed`` (default: the first seed, the run the single-run analyses read)."""
    return plan.dir / "runs" / f"seed-{plan.seeds[0] if seed is None else seed}"


def final_checkpoint(plan: Plan, seed: int | None = None) -> Path:
    """The newest complete checkpoint of the run of ``seed`` (default: the first seed)."""
    folder = run_dir(plan, seed)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no run; run the 'train' step first")
    return checkpoints.latest(folder)  # damaged or incomplete checkpoints are skipped with a line saying why


def heldout(plan: Plan):
    """The held-out items every step reads."""
    return _synthetic(plan, plan.n_per_cell, plan.eval_seed)


def greedy_completions(plan: Plan, name: str) -> list[str] | None:
    """A model's greedy think-first completions to the held-out items, as the evaluate step generated and scored them
    (``eval_<name>.json``; None from a folder evaluated before they were kept): the analyses read the same texts."""
    return json.loads((plan.dir / f"eval_{name}.json").read_text())["per_item"].get("completion")


def extra_heldout(plan: Plan):
    """The extra items of the results table's greedy columns."""
    return _synthetic(plan, plan.extra_per_cell, plan.extra_seed)


def _synthetic(plan: Plan, n_per_cell: int, seed: int):
    # the ids ``adt-probe record`` gives the same items (``analyses.record_pair.heldout``), clips as the base hears them
    return heldout_set(n_per_cell, seed, prefix="eval", calibrated=calibrated_audio(base_path(plan)))


#: The per-item outcomes of the results table: its name -> ``per_item`` key of ``rl.evaluate.evaluate``.
POOLED = {"accuracy": "accuracy", "think_rate": "think_rate", "reference_similarity": "reference_similarity",
          "inference_coverage": "inference_coverage", "process_score": "process_score",
          "direct_accuracy": "direct_correct"}
#: Those that are proportions (Wilson intervals); the others are means (bootstrap intervals over items).
PROPORTIONS = {"accuracy", "think_rate", "direct_accuracy"}


def headline(report: dict) -> dict:
    """The numbers of the results table: think-first prompt, greedy (the setting RL trains), plus direct accuracy,
    over the held-out and extra items (:func:`evaluate_model`; the process score on the held-out items alone); the
    sampled think-rate and distinct n-grams of the held-out items."""
    row = {}
    for name, key in POOLED.items():
        if key in report["per_item"]:
            values = _per_item(report, key)
            values = values[~np.isnan(values)]  # undefined: no inference step to cover, not judged, judge failed
            ci = proportion(values.astype(bool)) if name in PROPORTIONS else mean_ci(values)
            row[name], row[f"{name}_ci"] = ci["value"], [ci["lo"], ci["hi"]]
    greedy, sampled = report["think_prompt"]["greedy"], report["think_prompt"].get("sampled_t1")
    if sampled:
        row["think_rate_sampled_t1"] = sampled["think_rate"]["value"]
    for name, d in greedy.get("distinct_ngrams", {}).items():
        row[name] = d["value"]
    row["n_items"] = report["n_items"] + _n_extra(report)
    return row


def _n_extra(report: dict) -> int:
    """How many extra items an :func:`evaluate_model` report holds (0 without them)."""
    return (report.get("extra") or {}).get("n_items", 0)


def _per_item(report: dict, key: str) -> np.ndarray:
    """One per-item outcome of an :func:`evaluate_model` report over its held-out items, then its extra items, shape
    (items,); NaN where it is undefined (and on the extra items for an outcome measured without them)."""
    extra = report["extra"]["per_item"] if _n_extra(report) else {}
    values = report["per_item"][key] + extra.get(key, [None] * _n_extra(report))
    return np.array([np.nan if v is None else float(v) for v in values])


def pooled_headline(reports: list[dict], minus: dict | None = None) -> dict:
    """The headline numbers of several runs on the same items, each with a hierarchical interval (runs, then items);
    with ``minus``, the paired change from that report (the base) item by item."""
    row = {}
    for name, key in POOLED.items():
        if not all(key in r["per_item"] for r in reports):
            continue
        values = np.stack([_per_item(r, key) for r in reports])  # (runs, items)
        if minus is not None:
            values = values - _per_item(minus, key)
        ci = hierarchical_mean_ci(values)
        row[name], row[f"{name}_ci"] = ci["value"], [ci["lo"], ci["hi"]]
    row["n_items"], row["n_runs"] = len(_per_item(reports[0], "accuracy")), len(reports)
    return row


def over_base_direct(reports: list[dict], base: dict) -> dict:
    """The RL runs' think-first accuracy minus the base's *direct* answer (the answer prompt), paired item by item,
    with a hierarchical interval (runs, then items): the gain over the best the base does without a think block. The
    headline change compares the same think-first prompt, which a base that answers it worse than directly inflates.
    """
    gain = np.stack([_per_item(r, "accuracy") for r in reports]) - _per_item(base, "direct_correct")
    ci = hierarchical_mean_ci(gain)
    return {"accuracy": ci["value"], "accuracy_ci": [ci["lo"], ci["hi"]]}


def read_step(plan: Plan, name: str) -> dict | None:
    path = plan.dir / "steps" / f"{name}.json"
    return json.loads(path.read_text())["result"] if path.exists() else None


#: Plan fields that only schedule the work (every process is seeded and single-threaded): a run may continue with
#: other values (a demo folder from before ``jobs`` defaulted to all at once holds ``jobs: 2``).
SCHEDULE_ONLY = frozenset({"jobs"})


def check_plan(plan: Plan) -> None:
    """Refuse to continue a run in ``--out`` made with other settings (its finished steps would be reused)."""
    path = plan.dir / "plan.json"
    mine = dataclasses.asdict(plan)
    if path.exists():
        theirs = json.loads(path.read_text())
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v and k not in SCHEDULE_ONLY}
        if diff:
            what = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise SystemExit(f"{plan.dir} holds a run made with other settings ({what}); choose another --out, or "
                             f"delete {plan.dir} to start afresh")
    plan.dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=2) + "\n")


def reproduce(plan: Plan, *, redo: str | None = None, threads: int = 2, overwrite: bool = False) -> dict:
    """Run every step not finished yet (``redo``: that step and every later one again); returns the report step's
    result.

    ``plan.out`` must be new, empty, or an earlier ``reproduce`` output (``overwrite``: a folder with other files,
    which are left alone); it is locked while the run goes on, so a second ``reproduce`` there stops at once.
    """
    names = [n for n, _ in STEPS]
    if redo is not None and redo not in names:
        raise SystemExit(f"--redo {redo!r}: no such step; steps are {', '.join(names)}")
    with output_dir(plan.dir, tool="adt-probe reproduce", writes=WRITES, overwrite=overwrite):
        check_plan(plan)
        return _run_steps(plan, redo, threads)


def _run_steps(plan: Plan, redo: str | None, threads: int) -> dict:
    names = [n for n, _ in STEPS]
    torch.set_num_threads(threads)
    t_all = time.time()
    for name, fn in STEPS:
        marker = plan.dir / "steps" / f"{name}.json"
        if redo is not None and names.index(name) >= names.index(redo):
            marker.unlink(missing_ok=True)
        if marker.exists():
            say(f"{name}: done before ({json.loads(marker.read_text())['seconds']:.0f} s), reused")
            continue
        say(f"{name}: {fn.__doc__.splitlines()[0]}")
        t0 = time.time()
        torch.manual_seed(0)
        result = fn(plan)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds": round(time.time() - t0, 1), "result": result}, indent=2,
                                  default=str) + "\n")
        tmp.replace(marker)  # the marker appears only once the step's outputs are all written
        say(f"{name}: {time.time() - t0:.0f} s")
    say(f"done in {time.time() - t_all:.0f} s: {plan.dir / 'report.md'}")
    return read_step(plan, "report")


def main(argv=None) -> None:
    args = command_parser("reproduce", __doc__).parse_args(argv)
    plan = Plan.make(args.out, quick=args.quick, config=args.config, overrides=args.set)
    reproduce(plan, redo=args.redo, threads=args.threads, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
