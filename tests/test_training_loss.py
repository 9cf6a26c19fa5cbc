"""The chunked loss equals transformers' causal-LM loss, in value and gradients (fp32, tiny LFM2)."""

from __future__ import annotations

import copy

import pytest
import torch

from kanitts.config import LoraArgs
from kanitts.training.batching import IGNORE_INDEX, PackingCollator, PaddingCollator
from kanitts.training.lora import wrap_with_lora
from kanitts.training.loss import causal_lm_loss, decoder_and_head, head_cross_entropy_sum, model_loss
from kanitts.training.packing import enable_exact_packing

VOCAB = 300
START_OF_AI = 290
PAD = 0
LENGTHS = (23, 17, 5, 2, 31)
# A chunk smaller than the batch, so every test crosses chunk boundaries.
CHUNK = 16
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def base_lfm2(tmp_path_factory):
    from kanitts.tiny import build_lfm2

    return build_lfm2(
        tmp_path_factory.mktemp("lfm2_loss"), vocab_size=VOCAB, hidden_size=64,
        layer_types=("conv", "full_attention", "conv", "full_attention"),
    ).float()


@pytest.fixture(scope="module")
def examples():
    generator = torch.Generator().manual_seed(3)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, START_OF_AI, (n,), generator=generator).tolist()
        ids[min(n // 2, n - 1)] = START_OF_AI
        out.append({"input_ids": ids})
    return out


def lora_model(base, target_modules=("q_proj", "v_proj", "w1", "w2", "w3"), packed=False):
    model = copy.deepcopy(base)
    if packed:
        enable_exact_packing(model)
    torch.manual_seed(5)
    # dropout 0: both paths must see the same function, not two random masks
    model = wrap_with_lora(model, LoraArgs(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(target_modules)))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # LoRA starts at B = 0; random B makes the A gradients non-trivial
            torch.nn.init.normal_(parameter, std=0.05)
    return model.train()


def trainable_gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def stock_and_chunked(model, batch, num_items_in_batch=None, chunk_tokens=CHUNK):
    """(loss, gradients, d loss / d final hidden states) of the stock path, then of ours
    (``chunk_tokens`` None: the device's default chunk)."""
    decoder, _ = decoder_and_head(model)
    results = []
    for chunked in (False, True):
        model.zero_grad(set_to_none=True)
        hidden = []

        def keep_hidden(_module, _args, output):
            output.last_hidden_state.retain_grad()
            hidden.append(output.last_hidden_state)  # noqa: B023 - the hook is removed within this iteration

        handle = decoder.register_forward_hook(keep_hidden)
        try:
            if chunked:
                loss = model_loss(model, batch, num_items_in_batch, chunk_tokens=chunk_tokens)
            else:
                extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
                loss = model(**batch, **extra).loss
        finally:
            handle.remove()
        loss.backward()
        results.append((loss.detach(), trainable_gradients(model), hidden[0].grad.clone()))
    return results


def assert_same(stock, chunked):
    (stock_loss, stock_grads, stock_hidden), (loss, grads, hidden) = stock, chunked
    assert torch.isfinite(loss)
    assert abs(loss.item() - stock_loss.item()) <= TOLERANCE * max(1.0, abs(stock_loss.item()))
    assert grads.keys() == stock_grads.keys() and grads
    for name, grad in grads.items():
        scale = max(1.0, stock_grads[name].abs().max().item())
        assert (grad - stock_grads[name]).abs().max().item() <= TOLERANCE * scale, name
    assert (hidden - stock_hidden).abs().max().item() <= TOLERANCE
    assert hidden.abs().max() > 0


def test_padded_batch_equals_stock_loss(base_lfm2, examples):
    model = lora_model(base_lfm2)
    batch = PaddingCollator(pad_token_id=PAD, start_of_ai=START_OF_AI)(examples)
    assert_same(*stock_and_chunked(model, batch))


def test_packed_batch_equals_stock_loss(base_lfm2, examples):
    model = lora_model(base_lfm2, packed=True)
    batch = PackingCollator(start_of_ai=START_OF_AI)(examples)
    assert (batch["labels"][0, batch["cu_seq_lens_q"][:-1].long()] == IGNORE_INDEX).all()
    assert_same(*stock_and_chunked(model, batch))


@pytest.mark.parametrize("packed", [False, True])
def test_audio_only_loss_equals_stock_loss(base_lfm2, examples, packed):
    model = lora_model(base_lfm2, packed=packed)
    collate = (
        PackingCollator(start_of_ai=START_OF_AI, loss_on="audio")
        if packed
        else PaddingCollator(pad_token_id=PAD, start_of_ai=START_OF_AI, loss_on="audio")
    )
    batch = collate(examples)
    assert (batch["labels"] == IGNORE_INDEX).sum() > len(examples)  # prompts are masked
    assert_same(*stock_and_chunked(model, batch))


def test_num_items_in_batch_divides_the_sum_like_stock(base_lfm2, examples):
    """Gradient accumulation: the Trainer passes the token count of all micro-batches."""
    model = lora_model(base_lfm2)
    batch = PaddingCollator(pad_token_id=PAD, start_of_ai=START_OF_AI)(examples[:2])
    assert_same(*stock_and_chunked(model, batch, num_items_in_batch=torch.tensor(97)))


def test_trainable_tied_head_weight_gets_the_stock_gradient(base_lfm2, examples):
    model = lora_model(base_lfm2)
    _, head = decoder_and_head(model)
    assert type(head) is torch.nn.Linear
    head.weight.requires_grad_(True)  # tied to the input embeddings: both uses add to its gradient
    batch = PaddingCollator(pad_token_id=PAD, start_of_ai=START_OF_AI)(examples)
    stock, chunked = stock_and_chunked(model, batch)
    assert any("embed_tokens" in name or "lm_head" in name for name in chunked[1])
    assert_same(stock, chunked)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
def test_lora_on_the_head_falls_back_to_checkpointed_chunks(base_lfm2, examples):
    model = lora_model(base_lfm2, target_modules=("q_proj", "lm_head"), packed=True)
    _, head = decoder_and_head(model)
    assert type(head) is not torch.nn.Linear
    batch = PackingCollator(start_of_ai=START_OF_AI)(examples)
    stock, chunked = stock_and_chunked(model, batch)
    assert any("lm_head" in name for name in chunked[1])
    assert_same(stock, chunked)


def test_head_loss_with_bias_matches_cross_entropy():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 37)
    hidden = torch.randn(50, 8, requires_grad=True)
    targets = torch.randint(0, 37, (50,))
    ours = head_cross_entropy_sum(hidden, targets, head, chunk_tokens=7)
    ours.backward()
    ours_grads = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = head.weight.grad = head.bias.grad = None
    stock = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    stock.backward()
    assert torch.allclose(ours, stock, atol=1e-4)
    for got, expected in zip(ours_grads, [hidden.grad, head.weight.grad, head.bias.grad]):
        assert torch.allclose(got, expected, atol=1e-5)


def test_bf16_hidden_gradient_is_scaled_in_fp32():
    """The mean's 1/N reaches the bf16 hidden-state gradient unrounded: one bf16 rounding, not two."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False).to(torch.bfloat16)
    hidden = torch.randn(30, 16, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 40, (30,))
    head_cross_entropy_sum(hidden, targets, head, chunk_tokens=8).backward()
    summed = hidden.grad.clone()
    hidden.grad = None
    scale = 1 / 3  # 0.333984375 in bf16
    (head_cross_entropy_sum(hidden, targets, head, chunk_tokens=8) * scale).backward()
    assert torch.equal(hidden.grad, (summed.float() * scale).to(torch.bfloat16))


def test_no_targets_gives_nan_like_stock_mean():
    head = torch.nn.Linear(4, 5, bias=False)
    labels = torch.full((1, 6), IGNORE_INDEX)
    assert torch.isnan(causal_lm_loss(torch.randn(1, 6, 4), labels, head))


def test_model_without_a_decoder_body_is_refused():
    with pytest.raises(ValueError, match="chunked_loss"):
        decoder_and_head(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("packed", [False, True])
def test_trainer_steps_with_chunked_loss_equal_stock_steps(base_lfm2, examples, tmp_path, packed):
    """Through ExperimentTrainer with gradient accumulation: same logged losses, same LoRA weights."""
    import datasets
    from transformers import TrainingArguments

    from kanitts.training.trainer import ExperimentTrainer

    rows = [{**e, "labels": e["input_ids"], "length": len(e["input_ids"])} for e in examples]
    collate = (
        PackingCollator(start_of_ai=START_OF_AI)
        if packed
        else PaddingCollator(pad_token_id=PAD, start_of_ai=START_OF_AI)
    )
    runs = []
    for chunked in (False, True):
        model = lora_model(base_lfm2, packed=packed)
        args = TrainingArguments(
            output_dir=str(tmp_path / str(chunked)), per_device_train_batch_size=2, gradient_accumulation_steps=2,
            learning_rate=1e-2, max_steps=2, logging_steps=1, report_to="none", save_strategy="no",
            disable_tqdm=True, remove_unused_columns=False, use_cpu=True, seed=0,
        )
        trainer = ExperimentTrainer(
            model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), data_collator=collate,
            max_tokens_per_batch=40 if packed else None, chunked_loss=chunked, loss_chunk_tokens=CHUNK,
        )
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        runs.append((losses, weights))
    (stock_losses, stock_weights), (losses, weights) = runs
    assert len(losses) == 2 and losses == pytest.approx(stock_losses, rel=1e-5)
    moved = max((stock_weights[n] - p).abs().max().item() for n, p in weights.items())
    assert moved <= 1e-5


def test_default_chunk_keeps_cpu_logits_cache_sized_and_gives_the_same_loss(base_lfm2, examples):
    from kanitts.training.loss import CPU_LOGITS_CHUNK_BYTES, default_chunk_tokens

    chunk = default_chunk_tokens(16522, torch.device("cpu"))
    assert chunk % 64 == 0 and chunk >= 64 and chunk * 16522 * 4 <= CPU_LOGITS_CHUNK_BYTES
    assert default_chunk_tokens(80538, torch.device("cuda")) > default_chunk_tokens(80538, torch.device("cpu"))
    model = lora_model(base_lfm2)
    batch = PaddingCollator(pad_token_id=PAD, start_of_ai=START_OF_AI)(examples)
    with torch.no_grad():
        stock = model(**batch).loss
        ours = model_loss(model, batch)
    assert abs(ours.item() - stock.item()) <= TOLERANCE * stock.item()


def test_bf16_model_matches_stock_loss_to_bf16_precision(base_lfm2, examples):
    """bf16 weights (GPU training): logits in bf16, softmax in fp32, gradients cast back, as stock."""
    model = lora_model(copy.deepcopy(base_lfm2).to(torch.bfloat16), packed=True)
    batch = PackingCollator(start_of_ai=START_OF_AI)(examples)
    stock, chunked = stock_and_chunked(model, batch)
    assert chunked[0].dtype == torch.float32
    assert abs(chunked[0].item() - stock[0].item()) <= 1e-3 * stock[0].item()
    assert chunked[2].dtype == torch.bfloat16
    assert torch.allclose(chunked[2].float(), stock[2].float(), rtol=0.05, atol=1e-3)


def test_chunked_loss_is_a_training_option_on_by_default():
    from kanitts.config import TrainingOptions

    assert TrainingOptions().chunked_loss is True
    assert TrainingOptions.model_validate({"chunked_loss": False}).chunked_loss is False
    with pytest.raises(ValueError):
        TrainingOptions.model_validate({"chunked_loss": "sometimes"})


@pytest.mark.cuda
def test_chunked_loss_on_cuda_in_gpu_sized_chunks_matches_stock(tmp_path):
    """bf16 on a GPU with the KaniTTS vocabulary: the default GPU chunk (about 800 tokens) and a
    pack of about 2,000 targets, so the loss crosses chunk boundaries as in real training."""
    from kanitts.tiny import build_lfm2
    from kanitts.training.loss import default_chunk_tokens

    vocab = 80538
    base = build_lfm2(tmp_path, vocab_size=vocab, hidden_size=64, layer_types=("conv", "full_attention"))
    base = base.to("cuda", torch.bfloat16)
    generator = torch.Generator().manual_seed(4)
    examples = []
    for n in (700, 520, 410, 380):
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        ids[n // 4] = START_OF_AI
        examples.append({"input_ids": ids})
    batch = PackingCollator(start_of_ai=START_OF_AI)(examples)
    assert sum(len(e["input_ids"]) for e in examples) > 2 * default_chunk_tokens(vocab, torch.device("cuda"))
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    model = lora_model(base, packed=True)
    stock, chunked = stock_and_chunked(model, batch, chunk_tokens=None)
    print(f"loss on cuda: stock {stock[0].item():.6f}, chunked {chunked[0].item():.6f}")
    assert abs(chunked[0].item() - stock[0].item()) <= 1e-3 * stock[0].item()
    assert torch.allclose(chunked[2].float(), stock[2].float(), rtol=0.05, atol=1e-3)
    for name, grad in chunked[1].items():
        assert torch.allclose(grad.float(), stock[1][name].float(), rtol=0.05, atol=1e-3), name
