"""A small tuned lens: one affine translator per layer, trained to make the lens match the model's final output.

The logit lens reads the residual stream after block ``l`` through the final norm and the unembedding. Early layers
live in a basis the unembedding does not read well, so the logit lens under-states what they know. A tuned lens
(Belrose et al., 2023) learns ``h -> h + A_l h + b_l`` per layer, minimising KL(final || lens_l) on held-in tokens;
``A`` and ``b`` start at zero, so an untrained tuned lens *is* the logit lens. The ``tuned-lens`` package supports no
MoE model, hence this module.

Examples
--------
>>> lens, report = train_tuned_lens(model, batch, steps=300)      # doctest: +SKIP
>>> report["heldout_kl_tuned"].mean() < report["heldout_kl_logit"].mean()   # doctest: +SKIP
True
>>> lens.save("lens.safetensors"); TunedLens.load("lens.safetensors")        # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from adt_probe.architectures import architecture, get_module
from adt_probe.lens import Lens
from adt_probe.recording import _slice_inputs, capture_hooks


class TunedLens(Lens):
    """Per-layer translators ``h + A_l h + b_l`` for ``n_layers`` residual streams of width ``hidden``.

    Pass it to ``record(model, inputs, lens=tuned_lens)``; ``TunedLens(n_layers, hidden)`` untrained is the logit lens.
    """

    name = "tuned"

    def __init__(self, n_layers: int, hidden: int, meta: Mapping | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_layers, hidden, hidden))
        self.bias = nn.Parameter(torch.zeros(n_layers, hidden))
        self.meta = dict(meta or {})

    def transform_hidden(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Translate (tokens, hidden) residuals of ``layer``; same shape and dtype out."""
        w, b = self.weight[layer].to(h.dtype), self.bias[layer].to(h.dtype)
        return h + h @ w.T + b

    def save(self, path: str | Path) -> None:
        """Write the translators as safetensors (metadata: n_layers, hidden and ``meta`` as JSON)."""
        n_layers, hidden = self.bias.shape
        save_file({"weight": self.weight.detach().contiguous(), "bias": self.bias.detach().contiguous()}, str(path),
                  metadata={"n_layers": str(n_layers), "hidden": str(hidden), "meta": json.dumps(self.meta)})

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        """Read a lens written by ``save``."""

        with safe_open(str(path), "pt") as f:
            info = f.metadata() or {}
        tensors = load_file(str(path))
        lens = cls(int(info["n_layers"]), int(info["hidden"]), json.loads(info.get("meta", "{}")))
        lens.load_state_dict(tensors)
        return lens


def collect_residuals(model, inputs: Mapping, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual streams after every block for the real tokens of ``inputs``.

    Returns
    -------
    resid : (layers, tokens, hidden) float32.
    sequence : (tokens,) int64, the sequence each token belongs to (for held-out splits by sequence).
    """
    spec = architecture(model)
    n = int(inputs["input_ids"].shape[0])
    chunks, seqs = [], []
    for start in range(0, n, batch_size):
        batch = _slice_inputs(inputs, start, min(n, start + batch_size), n)
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
        resid, _ = capture_hooks(model, spec, batch)
        chunks.append(torch.stack([r[mask].float() for r in resid]))
        seqs.append((torch.arange(mask.shape[0])[:, None].expand_as(mask) + start)[mask])
    return torch.cat(chunks, dim=1), torch.cat(seqs)


@contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """The modules' parameters take no gradient inside the block (the lens trains through them, never into them)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _kl_per_layer(model, spec, lens: TunedLens | None, resid: torch.Tensor) -> torch.Tensor:
    """KL(final || lens_l) per layer, mean over tokens, shape (layers,), nats (gradients reach only ``lens``)."""
    norm, unembed = spec.readout(model)  # with the family's logit scale / soft-cap, if any
    with torch.no_grad():  # the target distribution is a constant
        final = torch.log_softmax(unembed(norm(resid[-1])).float(), -1)
    kls = []
    for layer in range(resid.shape[0]):
        h = resid[layer] if lens is None or layer == resid.shape[0] - 1 else lens(resid[layer], layer)
        lp = torch.log_softmax(unembed(norm(h)).float(), -1)
        kls.append((final.exp() * (final - lp)).sum(-1).mean())
    return torch.stack(kls)


def train_tuned_lens(model, inputs: Mapping, *, steps: int = 300, lr: float = 1e-3, tokens_per_step: int = 512,
                     heldout_fraction: float = 0.25, seed: int = 0, batch_size: int = 8) -> tuple[TunedLens, dict]:
    """Train a tuned lens on ``inputs`` (split by sequence into train and held-out parts).

    Returns
    -------
    lens : the trained ``TunedLens``.
    report : ``heldout_kl_logit`` and ``heldout_kl_tuned`` (layers,) arrays in nats, and the split sizes.
    """
    torch.manual_seed(seed)
    spec = architecture(model)
    resid, seq = collect_residuals(model, inputs, batch_size=batch_size)  # under no_grad: no graph to the model
    n_seq = int(seq.max()) + 1
    rng = np.random.default_rng(seed)
    held = torch.from_numpy(np.isin(seq.numpy(), rng.permutation(n_seq)[: max(1, int(n_seq * heldout_fraction))]))
    if held.all() or not held.any():
        raise ValueError(f"need at least 2 sequences to split into train and held-out parts, got {n_seq}")
    train, test = resid[:, ~held], resid[:, held]
    lens = TunedLens(resid.shape[0], resid.shape[-1], meta={"model_class": type(model).__name__, "steps": steps,
                                                             "architecture": spec.family})
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with _frozen(get_module(model, spec.final_norm), get_module(model, spec.unembed)):
        for _ in range(steps):
            idx = torch.randint(0, train.shape[1], (min(tokens_per_step, train.shape[1]),), generator=gen)
            loss = _kl_per_layer(model, spec, lens, train[:, idx])[:-1].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        report = {"heldout_kl_logit": _kl_per_layer(model, spec, None, test).numpy(),
                  "heldout_kl_tuned": _kl_per_layer(model, spec, lens, test).numpy(),
                  "train_tokens": int(train.shape[1]), "heldout_tokens": int(test.shape[1])}
    return lens.eval(), report
