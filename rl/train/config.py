"""The GRPO run configuration: typed dataclasses read from a TOML or YAML file, with errors that name the key.

A run is a list of *stages* (stage 1 on foundational items, stage 2 on mined boundary cases, ...), each with its own
data, reward weights and number of steps; everything else (sampling, loss, optimiser, checkpoints) is shared::

    model = "organism"                   # a folder written by save_pretrained, or "organism" (the shipped one)
    seed = 0
    prompt_mode = "think"

    [grpo]
    num_generations = 8                  # G completions per prompt
    batch_size = 4                       # prompts per step (over all processes)
    max_new_tokens = 64
    temperature = 1.0
    loss_type = "dapo"                   # "grpo" | "dapo" | "dr_grpo"
    scale_rewards = "group"              # "group" | "batch" | "none"
    multi_objective_aggregation = "sum_then_normalize"   # TRL's name; or "normalize_then_sum" (GDPO)

    [optim]
    lr = 1e-5
    lr_schedule = "cosine"               # "constant" | "linear" | "cosine", after `warmup_steps`

    [judge]                              # the LLM judge of the judge rewards (hybrid_reasoning, llm_judge)
    backend = "local"                    # "local" (in process) | "openai" (an OpenAI-compatible server: base_url)
    model = "smollm2"
    weight = 0.5                         # the judge's share of the hybrid reward (the rest: embedding cosine)

    [[stages]]
    name = "stage1"
    steps = 100
    rewards = { accuracy = 1.0, format = 0.25 }     # reward name -> weight (see rl.rewards.registry.REWARDS)
    [stages.data]
    source = "synthetic"                 # "synthetic" | "jsonl" | "mined"
    n_items = 256

Relative paths (``model``, ``ref_model``, ``*.path``) in a file are relative to that file's folder; values given with
``--set key=value`` on the command line are relative to the working directory. An unknown key is an error naming it
and its file (with the closest valid key); a value of the wrong type is an error naming the key and the expected type.

Examples
--------
>>> cfg = config_from_dict({"stages": [{"name": "s", "steps": 2, "rewards": {"accuracy": 1.0}}]})
>>> cfg.grpo.num_generations, cfg.stages[0].data.source
(8, 'synthetic')
>>> config_from_dict({"grpo": {"temprature": 1.0}, "stages": []})
Traceback (most recent call last):
...
rl.train.config.ConfigError: <dict>: unknown key 'grpo.temprature' (did you mean 'grpo.temperature'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from rl.judge.prompts import DEFAULT_HYBRID_WEIGHT, PROMPTS

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the file and the key."""


@dataclass
class DataConfig:
    """Where a stage's prompts come from.

    ``source = "synthetic"`` generates ``n_items`` items with :func:`rl.data.tasks.generate_items`
    (``families``: None for
    all; ``difficulties`` cycled through); ``"jsonl"`` loads ``path`` with :func:`rl.data.items.load_items`; ``"mined"``
    takes the items selected by curriculum mining (``[mining]``) from the policy's own rollouts before the stage.
    """

    source: Literal["synthetic", "jsonl", "mined"] = "synthetic"
    path: str | None = None
    n_items: int = 64
    seed: int = 0
    families: list[str] | None = None
    difficulties: list[str] = field(default_factory=lambda: ["easy", "medium", "hard"])
    prefix: str = "train"
    # synthetic clips at one fixed gain (rl.data.tasks.render); None: as the run's model was trained (its organism
    # manifest; False for other models)
    calibrated: bool | None = None
    shuffle: bool = True  # reshuffle the item order every epoch (deterministic in seed and epoch)


@dataclass
class StageConfig:
    """One stage of the curriculum: ``steps`` GRPO steps on ``data`` with ``rewards`` (name -> weight)."""

    name: str = "stage1"
    steps: int = 10
    data: DataConfig = field(default_factory=DataConfig)
    rewards: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.25})
    lr: float | None = None  # overrides optim.lr for this stage


@dataclass
class GRPOConfig:
    """Sampling, advantage and loss settings (names follow TRL's GRPOConfig where one exists)."""

    num_generations: int = 8  # G completions per prompt
    batch_size: int = 4  # prompts per step, over all processes
    max_new_tokens: int = 64  # also the max_completion_length of the dr_grpo normaliser
    temperature: float = 1.0
    epsilon: float = 0.2  # lower clip: ratio >= 1 - epsilon
    epsilon_high: float | None = None  # upper clip: ratio <= 1 + epsilon_high (default: epsilon)
    beta: float = 0.0  # weight of the k3 KL to the reference model (0: no reference model is loaded)
    num_iterations: int = 1  # mu: optimiser steps on the same rollouts
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    # how several rewards combine (TRL's name and values): "sum_then_normalize" weighted sum, then scale_rewards;
    # "normalize_then_sum" (GDPO) normalise each reward within its group, then the weighted sum, then scale_rewards
    multi_objective_aggregation: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"
    mask_truncated_completions: bool = False  # drop completions without EOS from the loss
    micro_batch_size: int = 0  # completions per forward/backward (gradient accumulation); 0: all at once
    # a stage refuses items whose reference reasoning is longer than max_new_tokens (a completion cut there scores 0,
    # so the budget would punish the reasoning the rewards pay for); true lets it cut them (smoke tests)
    allow_truncated_chains: bool = False


@dataclass
class OptimConfig:
    """AdamW, gradient clipping and the learning-rate schedule (one schedule per stage)."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0  # optimiser steps of linear warm-up
    min_lr_ratio: float = 0.0  # floor of linear / cosine decay, as a fraction of lr
    freeze: list[str] = field(default_factory=lambda: ["model.visual"])  # parameter-name prefixes not trained


@dataclass
class CheckpointConfig:
    """``every`` N steps (and at each stage end) a checkpoint; the last ``keep_last`` are kept (0: all)."""

    every: int = 50
    keep_last: int = 3


@dataclass
class LoggingConfig:
    completions_per_step: int = 4  # sampled completions written to completions.jsonl per step
    progress_bar: bool = True
    # accelerate trackers that also get every step's numbers, as TRL's report_to: ["tensorboard"], ["wandb"], ...
    # (rl.train.trackers; tensorboard writes to <out>/runs)
    report_to: list[str] = field(default_factory=list)


@dataclass
class MiningConfig:
    """Curriculum mining between stages (implemented in ``rl.train.curriculum``; see ``rl.train.grpo.mine_items``).

    Each ``pool`` item gets ``k_rollouts`` completions from the current policy; items whose pass rate lies in
    ``pass_band = [lo, hi]`` are kept (boundary cases); ``keep_hard`` also keeps items labelled
    ``difficulty == "hard"`` (acoustically hard boundary cases).
    """

    k_rollouts: int = 8
    pass_band: list[float] = field(default_factory=lambda: [0.125, 0.625])
    keep_hard: bool = True
    max_items: int = 0  # 0: keep all that qualify
    pool: DataConfig = field(default_factory=lambda: DataConfig(n_items=256, difficulties=["hard"], prefix="pool",
                                                                seed=1))


@dataclass
class JudgeConfig:
    """The LLM judge the judge rewards (``hybrid_reasoning``, ``llm_judge``) ask: one per run, built when a stage
    first needs it (``rl.judge.SharedJudge``).

    ``backend = "local"``: ``model`` is a packaged judge (``"smollm2"``, the default; ``"gemma3-270m"``) or a folder
    with a causal LM; ``batch_size`` candidates per forward pass. ``"openai"``: an OpenAI-compatible server at
    ``base_url``; ``model`` is the served name (default: the first it lists); ``timeout`` seconds per request (an
    overall deadline), ``retries`` with ``backoff``, ``max_workers`` concurrent requests; the API key, if any, is read
    from the environment variable named by ``api_key_env``. ``prompt``: a name of ``rl.judge.PROMPTS`` (default:
    ``restate-likelihood`` in process, ``criteria-0-9`` on a server). ``weight``: the judge's share of the hybrid
    reward. ``max_failure_fraction`` of the last ``failure_window`` judgements may fail before the run stops.
    """

    backend: Literal["local", "openai"] = "local"
    model: str | None = None
    prompt: str | None = None
    weight: float = DEFAULT_HYBRID_WEIGHT
    batch_size: int = 8
    base_url: str | None = None
    timeout: float = 30.0
    retries: int = 2
    backoff: float = 0.5
    max_workers: int = 8
    endpoint: Literal["chat", "completions"] = "chat"
    mode: Literal["auto", "logprobs", "json"] = "auto"
    top_logprobs: int = 20
    api_key_env: str | None = None
    max_failure_fraction: float | None = 0.25
    failure_window: int = 32
    min_judgements: int = 8
    cache_path: str | None = None

    def settings(self) -> dict:
        """Keyword arguments of ``rl.judge.make_judge`` (besides ``backend``)."""
        common = {"max_failure_fraction": self.max_failure_fraction, "failure_window": self.failure_window,
                  "min_judgements": self.min_judgements, "cache_path": self.cache_path}
        if self.prompt is not None:
            common["prompt"] = self.prompt
        if self.backend == "local":
            return {"model": self.model or "smollm2", "batch_size": self.batch_size, **common}
        return {"base_url": self.base_url, "model": self.model, "timeout": self.timeout, "retries": self.retries,
                "backoff": self.backoff, "max_workers": self.max_workers, "endpoint": self.endpoint,
                "mode": self.mode, "top_logprobs": self.top_logprobs,
                "api_key": os.environ.get(self.api_key_env) if self.api_key_env else None, **common}


@dataclass
class TrainConfig:
    """A whole GRPO run. ``source`` is set by the loader (the file read), not a key."""

    model: str = "organism"
    ref_model: str | None = None  # reference of the KL term (default: `model`, the run's starting point)
    seed: int = 0
    prompt_mode: Literal["think", "answer", "describe"] = "think"
    threads: int = 0  # torch.set_num_threads per process; 0 leaves the default
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    reward_kwargs: dict[str, dict] = field(default_factory=dict)  # reward name -> keyword arguments bound to it
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    mining: MiningConfig | None = None
    stages: list[StageConfig] = field(default_factory=list)
    source: str = field(default="<dict>", metadata={"internal": True})

    def to_dict(self) -> dict:
        """JSON-ready dict (what a checkpoint records)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def model_path(self) -> str:
        """``model`` with ``"organism"`` resolved to the shipped organism's folder."""
        if self.model == "organism":
            from rl.organism import ORGANISM_DIR

            return str(ORGANISM_DIR)
        return self.model


# --- type checking -------------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return f"a table of {_type_name(args[1])}" if args else "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a float", str: "a string", bool: "a boolean (true/false)",
            dict: "a table"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; returns it converted (int -> float, nested dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad() -> ConfigError:
        shown = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
        return ConfigError(f"{source}: key '{key}' must be {_type_name(tp)}, got {type(value).__name__} ({shown})")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:  # `X | None`: X's own error is the helpful one (e.g. an unknown key inside a table)
            return _convert(candidates[0], value, key, source)
        for arg in candidates:
            try:
                return _convert(arg, value, key, source)
            except ConfigError:
                pass
        raise bad()
    if origin is Literal:
        if value in args and type(value) is type(next(a for a in args if a == value)):
            return value
        raise bad()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, key + ".", source)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise bad()
        return [_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad()
        return {k: _convert(args[1], v, f"{key}.{k}", source) for k, v in value.items()} if args else dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not in the file


#: keys that were renamed: old dotted key -> (new dotted key, note)
RENAMED = {"grpo.multi_reward": ("grpo.multi_objective_aggregation", "TRL's name; 'sum' is now "
                                 "'sum_then_normalize', 'gdpo' is now 'normalize_then_sum'")}


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    for k in data:
        if prefix + k in RENAMED:
            new, note = RENAMED[prefix + k]
            raise ConfigError(f"{source}: key '{prefix}{k}' is now '{new}' ({note})")
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; valid keys here: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{k}'{hint}")
    return cls(**{k: _convert(hints[k], v, prefix + k, source) for k, v in data.items()})


# --- loading -------------------------------------------------------------------------------------------------------

def _resolve_paths(raw: dict, base: Path) -> None:
    """Make relative paths in ``raw`` absolute against ``base`` (in place)."""
    def fix(d: dict, key: str) -> None:
        v = d.get(key)
        if isinstance(v, str) and v and v != "organism" and not os.path.isabs(v):
            d[key] = str((base / v).resolve())

    fix(raw, "model")
    fix(raw, "ref_model")
    for stage in raw.get("stages", []) if isinstance(raw.get("stages"), list) else []:
        if isinstance(stage, dict) and isinstance(stage.get("data"), dict):
            fix(stage["data"], "path")
    mining = raw.get("mining")
    if isinstance(mining, dict) and isinstance(mining.get("pool"), dict):
        fix(mining["pool"], "path")
    judge = raw.get("judge")
    if isinstance(judge, dict):
        fix(judge, "cache_path")
        model = judge.get("model")
        if judge.get("backend", "local") == "local" and isinstance(model, str) and model.startswith((".", "~", "/")):
            fix(judge, "model")  # a folder (a packaged judge's name has no path characters)


def _apply_override(raw: dict, assignment: str) -> None:
    """``"grpo.temperature=0.7"`` or ``"stages.0.steps=3"`` into ``raw``; the value is parsed as TOML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. grpo.temperature=0.7")
    key, text = (s.strip() for s in assignment.split("=", 1))
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: a string
    if isinstance(value, str) and (key in ("model", "ref_model") or key.endswith(".path")) and value != "organism":
        value = os.path.abspath(value)
    node: Any = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: no list element {part!r}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def read_raw(path: str | os.PathLike) -> dict:
    """The file's contents as a dict (TOML by default, YAML for ``.yaml`` / ``.yml``), paths resolved."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raw = tomllib.loads(text)
    except Exception as exc:  # noqa: BLE001 - tomllib and yaml raise different types; re-raise with the file name
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table of keys at the top level")
    _resolve_paths(raw, path.parent.resolve())
    return raw


def config_from_dict(raw: dict, *, source: str = "<dict>") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a plain dict (what the TOML/YAML file holds)."""
    cfg = _build(TrainConfig, raw, "", source)
    cfg.source = source
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML or YAML run configuration.

    Parameters
    ----------
    path : the file; relative paths inside it are taken relative to its folder.
    overrides : ``KEY=VALUE`` strings applied on top (dotted keys; list elements by index, e.g. ``stages.0.steps=3``).

    Raises
    ------
    ConfigError
        Unknown key, wrong type or invalid value; the message names the file and the key.
    """
    raw = read_raw(path)
    for assignment in overrides or []:
        _apply_override(raw, assignment)
    return config_from_dict(raw, source=str(path))


def validate(cfg: TrainConfig) -> None:
    """Value checks beyond types; raises :class:`ConfigError` naming the key."""
    src, g, o = cfg.source, cfg.grpo, cfg.optim

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{src}: key '{key}' {what}")

    need(g.num_generations >= 2, "grpo.num_generations", "must be >= 2 (group-relative advantages need a group)")
    need(g.batch_size >= 1, "grpo.batch_size", "must be >= 1")
    need(g.max_new_tokens >= 1, "grpo.max_new_tokens", "must be >= 1")
    need(g.temperature > 0, "grpo.temperature", "must be > 0 (GRPO samples)")
    need(g.epsilon >= 0, "grpo.epsilon", "must be >= 0")
    need(g.epsilon_high is None or g.epsilon_high >= 0, "grpo.epsilon_high", "must be >= 0")
    need(g.beta >= 0, "grpo.beta", "must be >= 0")
    need(g.num_iterations >= 1, "grpo.num_iterations", "must be >= 1")
    need(g.micro_batch_size >= 0, "grpo.micro_batch_size", "must be >= 0")
    need(o.lr >= 0, "optim.lr", "must be >= 0")
    need(len(o.adam_betas) == 2, "optim.adam_betas", "must hold two numbers")
    need(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must lie in [0, 1]")
    need(cfg.checkpoint.every >= 1, "checkpoint.every", "must be >= 1")
    need(cfg.checkpoint.keep_last >= 0, "checkpoint.keep_last", "must be >= 0")
    need(cfg.threads >= 0, "threads", "must be >= 0")
    need(bool(cfg.stages), "stages", "must list at least one stage ([[stages]] tables)")
    _validate_judge(cfg, need)
    names = [s.name for s in cfg.stages]
    need(len(set(names)) == len(names), "stages.name", f"must be unique, got {names}")
    datas = [(f"stages[{i}].data", s.data) for i, s in enumerate(cfg.stages)]
    if cfg.mining is not None:
        m = cfg.mining
        need(m.k_rollouts >= 1, "mining.k_rollouts", "must be >= 1")
        need(len(m.pass_band) == 2 and 0 <= m.pass_band[0] <= m.pass_band[1] <= 1, "mining.pass_band",
             f"must be [lo, hi] with 0 <= lo <= hi <= 1, got {m.pass_band}")
        need(m.pool.source != "mined", "mining.pool.source", "cannot be 'mined'")
        datas.append(("mining.pool", m.pool))
    for i, s in enumerate(cfg.stages):
        need(s.steps >= 1, f"stages[{i}].steps", "must be >= 1 (a stage of 0 steps trains nothing; remove it)")
        need(bool(s.rewards), f"stages[{i}].rewards", "must name at least one reward (name = weight)")
        need(s.lr is None or s.lr >= 0, f"stages[{i}].lr", "must be >= 0")
        need(s.data.source != "mined" or cfg.mining is not None, f"stages[{i}].data.source",
             "is 'mined' but there is no [mining] table")
    from rl.data.tasks import DIFFICULTY_BANDS, FAMILIES

    for key, d in datas:
        if d.source == "jsonl":
            need(bool(d.path), f"{key}.path", "is required when source = 'jsonl'")
        if d.source == "synthetic":
            need(d.n_items >= 1, f"{key}.n_items", "must be >= 1 (an empty dataset trains nothing)")
            unknown = [f for f in d.families or [] if f not in FAMILIES]
            need(not unknown, f"{key}.families", f"has unknown families {unknown}; choose from {sorted(FAMILIES)}")
            bad = [x for x in d.difficulties if x not in DIFFICULTY_BANDS]
            need(bool(d.difficulties) and not bad, f"{key}.difficulties",
                 f"must be a non-empty list of {list(DIFFICULTY_BANDS)}, got {d.difficulties}")


def _validate_judge(cfg: TrainConfig, need) -> None:
    """The [judge] table's values, and no judge settings left where they used to live (reward_kwargs)."""
    j = cfg.judge
    for name, kwargs in cfg.reward_kwargs.items():
        for k in kwargs:
            if k.startswith("judge_"):
                need(False, f"reward_kwargs.{name}.{k}", f"is a judge setting: it now lives in the [judge] table, "
                     f"as 'judge.{k.removeprefix('judge_')}'")
            need(not (name == "hybrid_reasoning" and k == "w"), f"reward_kwargs.{name}.w",
                 "is the judge's share of the hybrid reward: it now lives in the [judge] table, as 'judge.weight'")
    need(j.prompt is None or j.prompt in PROMPTS, "judge.prompt", f"must be one of {sorted(PROMPTS)}, got {j.prompt!r}")
    need(0.0 <= j.weight <= 1.0, "judge.weight", f"must lie in [0, 1], got {j.weight}")
    need(j.batch_size >= 1, "judge.batch_size", "must be >= 1")
    need(j.timeout > 0, "judge.timeout", "must be > 0 (seconds per request)")
    need(j.retries >= 0, "judge.retries", "must be >= 0")
    need(j.backoff >= 0, "judge.backoff", "must be >= 0")
    need(j.max_workers >= 1, "judge.max_workers", "must be >= 1")
    need(j.top_logprobs >= 1, "judge.top_logprobs", "must be >= 1")
    need(j.max_failure_fraction is None or 0 <= j.max_failure_fraction <= 1, "judge.max_failure_fraction",
         "must lie in [0, 1] (or be left out: never stop)")
    need(j.failure_window >= 1 and j.min_judgements >= 1, "judge.failure_window",
         "and judge.min_judgements must be >= 1")
    if j.backend == "openai":
        need(bool(j.base_url), "judge.base_url", "is required when backend = 'openai' (e.g. 'http://localhost:8000/v1')")
        likelihood = j.prompt is not None and PROMPTS[j.prompt].method == "likelihood"
        need(not likelihood or j.endpoint == "completions", "judge.endpoint",
             f"must be 'completions' for prompt {j.prompt!r} (the likelihood needs echoed prompt logprobs)")
