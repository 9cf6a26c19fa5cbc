"""KaniTTS-2: config.json keys, complete loading, frame positions, RoPE scales, cached generation, packing."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kanitts.errors import UserError

VOCAB, AUDIO, DIM = 120, 60, 8
SOH, SOA, PAD = 53, 57, 55


@pytest.fixture(scope="module")
def kani2(tmp_path_factory):
    """(folder, model): a tiny KaniTTS-2 with learnable RoPE, saved as the upstream layout."""
    from kanitts.tiny import build_kanitts2

    folder = tmp_path_factory.mktemp("kanitts2")
    model = build_kanitts2(folder, vocab_size=VOCAB, audio_tokens_start=AUDIO, speaker_emb_dim=DIM, hidden_size=32)
    return folder, model.eval()


def _frame(i: int) -> list[int]:
    return [AUDIO + i, AUDIO + 12 + i, AUDIO + 24 + i, AUDIO + 36 + i]


def test_config_json_round_trip_with_the_upstream_keys(kani2, tmp_path):
    from kanitts.models.kanitts2 import KaniTTS2ForCausalLM, is_kanitts2_config

    folder, model = kani2
    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in ("audio_tokens_start", "tokens_per_frame", "audio_step", "use_learnable_rope",
                                   "alpha_min", "alpha_max", "speaker_emb_dim")} == {
        "audio_tokens_start": AUDIO, "tokens_per_frame": 4, "audio_step": 1.0, "use_learnable_rope": True,
        "alpha_min": 0.1, "alpha_max": 2.0, "speaker_emb_dim": DIM,
    }
    assert is_kanitts2_config(config) and config["model_type"] == "lfm2"
    # one file, as the upstream learnable-RoPE loader reads, with the upstream parameter names
    from safetensors import safe_open

    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"model.speaker_emb_projection.weight", "model.learnable_rope_layers.1.alpha_weight",
            "model.learnable_rope_layers.3.alpha_weight"} <= keys
    assert not any("learnable_rope_layers.0." in k for k in keys)
    # sharded checkpoints load too, every parameter equal
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    again = KaniTTS2ForCausalLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert again.kanitts2 == model.kanitts2


def _drop_key(src, dst, prefix):
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    for name in ("config.json", "generation_config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    tensors = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if not k.startswith(prefix)}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def test_a_missing_projection_or_rope_scale_is_an_error(kani2, tmp_path):
    from kanitts.models.kanitts2 import KaniTTS2ForCausalLM

    folder, _ = kani2
    _drop_key(folder, tmp_path / "noproj", "model.speaker_emb_projection")
    with pytest.raises(UserError, match=r"noproj: not a complete KaniTTS-2 checkpoint: parameters missing.*"
                                        r"model\.speaker_emb_projection\.weight"):
        KaniTTS2ForCausalLM.from_pretrained(tmp_path / "noproj")
    _drop_key(folder, tmp_path / "norope", "model.learnable_rope_layers.3")
    with pytest.raises(UserError, match=r"learnable_rope_layers\.3\.alpha_weight.*use_learnable_rope"):
        KaniTTS2ForCausalLM.from_pretrained(tmp_path / "norope")
    config = json.loads((folder / "config.json").read_text())
    del config["audio_tokens_start"]
    (tmp_path / "noproj" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="needs audio_tokens_start"):
        KaniTTS2ForCausalLM.from_pretrained(tmp_path / "noproj")


def test_frame_positions_for_mixed_text_and_audio():
    from kanitts.models.kanitts2 import KaniTTS2Settings, frame_positions

    settings = KaniTTS2Settings(AUDIO, 4, 1.0, False, 0.1, 2.0, DIM, AUDIO - 2)
    ids = torch.tensor([[SOH, 5, 6, *_frame(0), *_frame(1), 52, 7]])
    assert frame_positions(ids, settings).tolist() == [[0, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 6]]
    half = frame_positions(ids, KaniTTS2Settings(AUDIO, 4, 0.5, False, 0.1, 2.0, DIM, AUDIO - 2))
    assert half.dtype == torch.float32 and half.tolist() == [[0, 1, 2, 3, 3, 3, 3, 3.5, 3.5, 3.5, 3.5, 4, 5]]
    # left padding does not shift a row; packed sequences restart at their boundaries
    padded = torch.tensor([[PAD, PAD, SOH, *_frame(0), 5]])
    assert frame_positions(padded, settings, torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])).tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 2]]
    packed = torch.tensor([[SOH, *_frame(0), 5, SOH, 6, *_frame(1)]])
    assert frame_positions(packed, settings, boundaries=torch.tensor([0, 6, 12])).tolist() == [
        [0, 1, 1, 1, 1, 2, 0, 1, 2, 2, 2, 2]]


def test_rope_scale_acts_and_without_it_the_model_is_stock_lfm2(kani2):
    from transformers import Lfm2ForCausalLM

    _, model = kani2
    ids = torch.tensor([[SOH, 5, *_frame(0), *_frame(1), 52]])
    plain = Lfm2ForCausalLM(model.config).eval()
    state = {k: v for k, v in model.state_dict().items() if k in plain.state_dict()}
    plain.load_state_dict(state)
    positions = model.frame_positions(ids)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        stock = plain(input_ids=ids, position_ids=positions, attention_mask=torch.ones_like(ids)).logits
        assert not torch.allclose(ours, stock, atol=1e-4)  # the scales start away from alpha = 1
        weights = [p for n, p in model.named_parameters() if n.endswith("alpha_weight")]
        saved = [w.clone() for w in weights]
        alpha_one = torch.logit(torch.tensor((1.0 - 0.1) / (2.0 - 0.1)))
        for w in weights:
            w.fill_(alpha_one)
        try:
            torch.testing.assert_close(model(input_ids=ids).logits, stock, atol=2e-5, rtol=0)
        finally:
            for w, s in zip(weights, saved):
                w.copy_(s)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(w.grad is not None and w.grad.abs() > 0 for w in weights)
    model.zero_grad(set_to_none=True)


def test_cached_batched_generation_equals_uncached_recomputation(kani2):
    _, model = kani2
    slot = model.kanitts2.speaker_slot_id
    prompts = [[SOH, slot, 5, 6, 7, 54, SOA, 51, *_frame(0)], [SOH, slot, 9, 54, SOA, 51, *_frame(1), *_frame(2)]]
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    voices = torch.randn(2, DIM, generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=9, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, speaker_embeddings=voices,
                             return_dict_in_generate=True, output_logits=True, **settings)
        uncached = model.generate(input_ids=ids, attention_mask=mask, speaker_embeddings=voices, use_cache=False,
                                  **settings)
        assert torch.equal(out.sequences, uncached)
        for step, logits in enumerate(out.logits):
            sofar = out.sequences[:, : width + step]
            step_mask = torch.cat([mask, torch.ones(2, step, dtype=mask.dtype)], 1)
            full = model(input_ids=sofar, attention_mask=step_mask, speaker_embeddings=voices).logits[:, -1]
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
        for row, prompt in enumerate(prompts):  # a row alone generates what it did in the batch
            alone = model.generate(input_ids=torch.tensor([prompt]), speaker_embeddings=voices[row:row + 1], **settings)
            assert alone[0, len(prompt):].tolist() == out.sequences[row, width:].tolist()
        other = model.generate(input_ids=ids, attention_mask=mask, speaker_embeddings=-voices,
                               return_dict_in_generate=True, output_logits=True, **settings)
        assert not torch.allclose(other.logits[0], out.logits[0])  # the voice reaches the model


def test_packed_equals_unpacked_with_the_speaker_slot(kani2):
    from kanitts.models.kanitts2 import FramePositions
    from kanitts.training.batching import PackingCollator, PaddingCollator, SpeakerSlot
    from kanitts.training.packing import disable_exact_packing, enable_exact_packing

    _, model = kani2
    slot = SpeakerSlot(start_of_human=SOH, slot=model.kanitts2.speaker_slot_id)
    generator = torch.Generator().manual_seed(1)
    examples = []
    for text, frames in ((3, 2), (5, 4), (1, 1)):
        ids = [SOH, *torch.randint(3, 50, (text,), generator=generator).tolist(), 54, SOA, 51]
        ids += [t for f in range(frames) for t in _frame(int(torch.randint(0, 12, (1,), generator=generator)))]
        voice = torch.randn(DIM, generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": ids, "speaker_embedding": voice})

    def losses(batch):
        labels, voices = batch.pop("labels"), batch.pop("speaker_embeddings")
        logits = model(**batch, speaker_embeddings=voices, use_cache=False).logits
        per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none")
        return per_token[labels[:, 1:].flatten() != -100]

    with torch.no_grad():
        alone = torch.cat([losses(PaddingCollator(PAD, SOA, speaker_slot=slot)([e])) for e in examples])
        packed_batch = PackingCollator(SOA, speaker_slot=slot, positions=FramePositions(model.kanitts2))(examples)
        starts = packed_batch["cu_seq_lens_q"][:-1]
        assert packed_batch["position_ids"][0, starts + 1].tolist() == [1, 1, 1]  # the slot counts as a token
        enable_exact_packing(model)
        try:
            packed = losses(packed_batch)
        finally:
            disable_exact_packing(model)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


# --- the speaker embedder ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_embedder_dir(tmp_path_factory):
    from kanitts.tiny import build_tiny_speaker_embedder

    return build_tiny_speaker_embedder(tmp_path_factory.mktemp("speaker_embedder"), embd_size=DIM)


def _voice(seconds=0.6, rate=16000, pitch=180.0, seed=0):
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.05, t.shape)
    return (0.3 * np.sin(2 * np.pi * pitch * t) + 0.1 * np.sin(2 * np.pi * 3 * pitch * t) + noise).astype("float32")


def test_embedder_shapes_normalisation_and_hub_key_names(tiny_embedder_dir):
    import numpy as np
    from safetensors import safe_open

    from kanitts.models.speaker_embedder import KaniSpeakerEmbedder

    with safe_open(str(tiny_embedder_dir / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"top_layers.affine1.weight", "top_layers.affine2.bias", "top_layers.batchnorm1.running_var",
            "top_layers.batchnorm2.running_mean"} <= keys and any(k.startswith("wavlm.encoder.") for k in keys)
    embedder = KaniSpeakerEmbedder.load(str(tiny_embedder_dir))
    assert embedder.dim == DIM and not embedder.model.training
    norm = embedder.model.top_layers.batchnorm1
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))  # the statistics were read
    clip = _voice()
    vector = embedder.embed(clip, 16000)
    assert vector.shape == (DIM,) and vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    # per-utterance normalisation: gain and DC offset change nothing
    np.testing.assert_allclose(embedder.embed(3.0 * clip + 0.2, 16000), vector, atol=1e-4)
    # stereo is averaged, other rates resampled to 16 kHz
    np.testing.assert_allclose(embedder.embed(np.stack([clip, clip], axis=1), 16000), vector, atol=1e-5)
    from kanitts.audio import resample

    at_24k = embedder.embed(resample(clip, 16000, 24000), 24000)
    assert float(at_24k @ vector) > 0.99
    assert float(embedder.embed(_voice(pitch=90.0, seed=1), 16000) @ vector) < 0.9999
    with pytest.raises(ValueError, match="empty"):
        embedder.embed(np.zeros(0, dtype="float32"), 16000)


def test_embedder_refuses_a_plain_wavlm(tmp_path):
    from transformers import WavLMConfig, WavLMModel

    from kanitts.models.speaker_embedder import KaniSpeakerEmbedder

    WavLMModel(WavLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                           conv_dim=(8,), conv_stride=(5,), conv_kernel=(10,), num_conv_pos_embeddings=8,
                           num_conv_pos_embedding_groups=2)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"not a complete speaker embedder checkpoint \(missing top_layers"):
        KaniSpeakerEmbedder.load(str(tmp_path))
    with pytest.raises(UserError, match="neither a folder nor a Hub id"):
        KaniSpeakerEmbedder.load(str(tmp_path / "nope"))
