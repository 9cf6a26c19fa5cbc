"""Tiny random-initialised stand-ins for the real models, saved in the real on-disk layouts.

Nothing can be downloaded in CI or in the offline demo, yet every loader in the project is the
real one: these builders write a tokenizer, an LFM2 model and a codec into local folders that
`from_pretrained` reads exactly as it would read a Hub snapshot. Used by the tests, `make demo`
and the benchmarks.
"""

from __future__ import annotations

from pathlib import Path

from kanitts.config import CodecSection, ModelConfig, SpecialTokens, TokenizerSection

# Text the tiny tokenizer learns its merges from: enough to give English-like token counts.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Speech synthesis on a small machine can still be tested quickly.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Hello, this is a test of the text to speech system.",
    "alice: bob: carol: speaker voice model data train evaluate report",
]

# The LFM2 tokenizer's first ids: pad 0, start_of_text 1, end_of_text 2.
TINY_SPECIAL_TOKENS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>"]


def build_tokenizer(out_dir: Path | str, vocab_size: int = 384):
    """A byte-level BPE tokenizer that, like LFM2's, prepends <|startoftext|> (id 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_model_config(
    text_vocab_size: int, codebook_size: int = 4032, num_codebooks: int = 4, kind: str = "nanocodec",
    weights: str | None = None,
) -> ModelConfig:
    """A model_config whose specials and audio ids follow a tiny text vocabulary, reference-style.

    The offsets mirror the real layout (specials at vocab+1.., audio at vocab+10). With
    ``kind="kanade"`` the codec facts are Kanade's (one book of 12,800 codes at 12.5 Hz).
    """
    v = text_vocab_size
    codec = {"audio_tokens_start": v + 10, "kind": kind}
    if kind == "nanocodec":
        codec.update(num_codebooks=num_codebooks, codebook_size=codebook_size)
    if weights is not None:
        codec["weights"] = weights
    return ModelConfig(
        tokenizer=TokenizerSection(vocab_size=v),
        special_tokens=SpecialTokens(
            start_of_text=1, end_of_text=2, start_of_speech=v + 1, end_of_speech=v + 2,
            start_of_human=v + 3, end_of_human=v + 4, start_of_ai=v + 5, end_of_ai=v + 6, pad_token=v + 7,
        ),
        codec=CodecSection(**codec),
    )


def build_lfm2(
    out_dir: Path | str,
    vocab_size: int,
    hidden_size: int = 64,
    layer_types: tuple[str, ...] = ("conv", "full_attention", "conv", "full_attention"),
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    tokenizer=None,
):
    """A random LFM2 causal LM with both layer kinds (short conv and attention), saved to out_dir."""
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.manual_seed(seed)
    config = Lfm2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=len(layer_types),
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        layer_types=list(layer_types),
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = Lfm2ForCausalLM(config)
    model.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return model


def build_tiny_tts(out_dir: Path | str, **lfm2_kwargs) -> ModelConfig:
    """Tokenizer + LFM2 sized for its token layout, in one folder: a stand-in base model.

    Returns the model_config that matches the folder.
    """
    from kanitts.tokens import TokenLayout

    tokenizer = build_tokenizer(out_dir)
    cfg = tiny_model_config(len(tokenizer))
    layout = TokenLayout.from_config(cfg)
    build_lfm2(out_dir, vocab_size=layout.vocab_size, tokenizer=tokenizer, **lfm2_kwargs)
    return cfg


def build_kanitts2(
    out_dir: Path | str,
    vocab_size: int,
    audio_tokens_start: int,
    speaker_emb_dim: int = 16,
    use_learnable_rope: bool = True,
    audio_step: float = 1.0,
    hidden_size: int = 64,
    layer_types: tuple[str, ...] = ("conv", "full_attention", "conv", "full_attention"),
    seed: int = 0,
    tokenizer=None,
    speaker_slot_id: int | None = None,
):
    """A random KaniTTS-2-shaped model (LFM2 + frame positions, RoPE scales, speaker projection)
    saved as the upstream checkpoint layout. The RoPE scales start away from 1 (``alpha_weight``
    drawn around 0) so that tests see them act."""
    import torch
    from transformers import Lfm2Config

    from kanitts.models.kanitts2 import KaniTTS2ForCausalLM

    torch.manual_seed(seed)
    extra = {} if speaker_slot_id is None else {"speaker_slot_id": speaker_slot_id}
    config = Lfm2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=len(layer_types), num_attention_heads=4, num_key_value_heads=2,
        layer_types=list(layer_types), max_position_embeddings=4096, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=True, audio_tokens_start=audio_tokens_start,
        tokens_per_frame=4, audio_step=audio_step, use_learnable_rope=use_learnable_rope,
        alpha_min=0.1, alpha_max=2.0, speaker_emb_dim=speaker_emb_dim, **extra,
    )
    model = KaniTTS2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("alpha_weight"):
                param.normal_(0.0, 1.0)
    model.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return model


def build_tiny_kanitts2(out_dir: Path | str, **kwargs) -> ModelConfig:
    """Tokenizer + KaniTTS-2-shaped model for the tiny NanoCodec layout in one folder (a stand-in
    for ``nineninesix/kani-tts-2-*``); returns the matching model_config."""
    from kanitts.tokens import TokenLayout

    tokenizer = build_tokenizer(out_dir)
    cfg = tiny_model_config(len(tokenizer))
    layout = TokenLayout.from_config(cfg)
    build_kanitts2(
        out_dir, vocab_size=layout.vocab_size, audio_tokens_start=layout.audio_tokens_start,
        tokenizer=tokenizer, speaker_slot_id=layout.speaker_slot, **kwargs,
    )
    return cfg


def build_tiny_speaker_embedder(out_dir: Path | str, embd_size: int = 16, seed: int = 0) -> Path:
    """A random speaker embedder in the Hub layout (a two-layer WavLM of width 32), for tests.

    The batch-norm statistics are drawn away from (0, 1) so that a loader that skipped them
    would be seen to.
    """
    import torch
    from transformers import WavLMConfig

    from kanitts.models.speaker_embedder import SpeakerEmbeddingModel

    config = WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, num_buckets=32, max_bucket_distance=64,
        embd_size=embd_size, top_interm_size=24,
    )
    torch.manual_seed(seed)
    model = SpeakerEmbeddingModel(config)
    with torch.no_grad():
        for norm in (model.top_layers.batchnorm1, model.top_layers.batchnorm2):
            norm.running_mean.normal_(0.0, 0.1)
            norm.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


# The small NanoCodec used offline: same rates (1764 samples/frame at 22050 Hz) and the same
# 4 x 4032 FSQ codebooks as the real one, 0.9 M parameters instead of 61.7 M.
TINY_NANOCODEC_CONFIG = {
    "encoder_config": {"base_channels": 4},
    "decoder_config": {"base_channels": 32},
}


def build_tiny_nanocodec(out_dir: Path | str, seed: int = 0) -> Path:
    """A small random NanoCodec saved as config.json + model.safetensors (the Hub layout).

    `NanoCodec.from_pretrained(out_dir)` and `load_codec("nanocodec", out_dir)` read it back.
    """
    from kanitts.codecs.nanocodec import NanoCodec

    codec = NanoCodec.from_config(TINY_NANOCODEC_CONFIG, seed=seed, device="cpu")
    return codec.save_pretrained(out_dir)


def build_tiny_kanade(out_dir: Path | str, seed: int = 0, token_rate: float = 12.5) -> Path:
    """A small random Kanade codec (model and Vocos vocoder) saved as a local folder.

    The rates, the 12,800-code book and the 128-d global embedding are the released models'
    (12.5 tokens/s by default, 25 with ``token_rate=25``); the networks are a few hundred
    thousand parameters. ``load_codec("kanade", out_dir)`` reads it back, offline.
    """
    import torch

    from kanade_tokenizer.model import KanadeModel
    from kanade_tokenizer.testing import tiny_config
    from kanade_tokenizer.vocoders import Vocos, VocosConfig
    from kanitts.codecs.kanade import KanadeCodec
    from kanitts.runtime import scoped_seed

    config = tiny_config()
    args = config["model"]["init_args"]
    factor = {12.5: 4, 25: 2}[float(token_rate)]
    args["config"].update(downsample_factor=factor, mel_upsample_factor=2 * factor)
    args["global_encoder"]["init_args"]["output_channels"] = 128
    args["mel_decoder"]["init_args"]["adanorm_condition_dim"] = 128
    with scoped_seed(seed):
        model = KanadeModel.from_config(config)
        # AdaLN-Zero starts at zero, where the voice would change nothing: give it a say.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "condition_proj" in name:
                    param.normal_(0.0, 0.1)
        n_mels = args["config"]["n_mels"]
        vocoder = Vocos(VocosConfig(n_mels=n_mels, dim=32, intermediate_dim=48, num_layers=1))
    return KanadeCodec(model.eval(), vocoder=vocoder.eval(), device="cpu").save_pretrained(out_dir)


# Whisper's special tokens, in the order its tokenizers number them after the text vocabulary.
_WHISPER_SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
]


def build_tiny_whisper(out_dir: Path | str, seed: int = 0, spelling: dict[str, str] | None = None,
                       chunk_seconds: int = 1, alignment_heads: bool = True) -> Path:
    """A random two-language Whisper with its processor, as a Hub Whisper snapshot is laid out.

    The text vocabulary is the 256 byte-level symbols without merges, so any string tokenizes;
    the generation config carries the language and task ids that ``language=`` needs.
    ``spelling`` is written as the tokenizer's ``normalizer.json`` (the English spelling map).
    ``chunk_seconds`` is the longest clip it hears in one window (real Whisper: 30 s); a longer
    one takes Whisper's long-form path, which a random model cannot follow.
    ``alignment_heads``: the generation config names the cross-attention heads that time words
    (as OpenAI's checkpoints do); without them the model gives no word timestamps.
    """
    import json

    import torch
    from tokenizers import pre_tokenizers
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    out_dir = Path(out_dir)
    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in _WHISPER_SPECIALS:
        vocab[token] = len(vocab)
    ids = {token: vocab[token] for token in _WHISPER_SPECIALS}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    features = WhisperFeatureExtractor(feature_size=8, sampling_rate=16000, chunk_length=chunk_seconds, n_fft=64,
                                      hop_length=32)
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(str(out_dir))
    if spelling is not None:
        (out_dir / "normalizer.json").write_text(json.dumps(spelling))
    end = ids["<|endoftext|>"]
    config = WhisperConfig(
        vocab_size=len(vocab), num_mel_bins=8, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=250 * chunk_seconds, max_target_positions=32, pad_token_id=end, bos_token_id=end,
        eos_token_id=end, decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    generation = model.generation_config
    generation._from_model_config = False  # else loading rebuilds it from config.json, dropping the ids below
    settings = dict(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=end, pad_token_id=end,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|fr|>": ids["<|fr|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True, forced_decoder_ids=None,
        begin_suppress_tokens=[vocab["Ġ"], end], max_length=12,
    )
    if alignment_heads:
        settings["alignment_heads"] = [[0, 0], [0, 1]]
    for key, value in settings.items():  # setattr: GenerationConfig.update ignores the Whisper-only keys
        setattr(generation, key, value)
    model.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_wavlm_xvector(out_dir: Path | str, seed: int = 0) -> Path:
    """A random two-layer ``WavLMForXVector`` (8-dim x-vector) with its feature extractor.

    ``speaker_similarity.embedder: wavlm-xvector:<out_dir>`` loads it like a Hub snapshot.
    """
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(seed)
    config = WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), feat_extract_norm="layer",
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_buckets=32, max_bucket_distance=64,
        tdnn_dim=(16, 16, 24), tdnn_kernel=(3, 3, 1), tdnn_dilation=(1, 2, 1), xvector_output_dim=8,
        num_labels=4, initializer_range=0.3,
    )
    WavLMForXVector(config).eval().save_pretrained(str(out_dir))
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True,
                             return_attention_mask=True).save_pretrained(str(out_dir))
    return Path(out_dir)


def build_tiny_mos(out_dir: Path | str, seed: int = 0, norm: str = "layer") -> Path:
    """A random MOS predictor laid out as a Hub one: a two-layer wav2vec2 with a one-output head.

    ``Wav2Vec2ForSequenceClassification`` with ``num_labels=1`` (regression), the shape
    :class:`kanitts.evaluation.naturalness.NaturalnessPredictor` loads. ``norm="group"`` gives a
    feature encoder with group norm (and no attention mask), like wav2vec2-base.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), feat_extract_norm=norm,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, classifier_proj_size=16,
        num_labels=1, problem_type="regression", initializer_range=0.3,
    )
    Wav2Vec2ForSequenceClassification(config).eval().save_pretrained(str(out_dir))
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True,
                             return_attention_mask=norm == "layer").save_pretrained(str(out_dir))
    return Path(out_dir)
