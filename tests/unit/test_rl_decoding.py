"""rl.decoding.sample draws from the distribution `generate` draws from, and bf16 decoding from the same
distribution as fp32 within tolerance.

- greedy decoding reproduces `model.generate` token for token (fp32);
- every recorded log-prob is the teacher-forced log-prob under the processed distribution (temperature,
  top-k, top-p), also for rows that finished early and were compacted out of the batch;
- a chi-square test over 4,000 two-token samples from one prompt (top-k 4, EOS among the likely first
  tokens, so a quarter of the rows leave the batch after one step) against the exact fp32 distribution,
  for the fp32 and the bf16 sampler;
- per-step next-token distributions of bf16 and fp32 weights along sampled continuations: total variation
  distance small.
"""

import math
from collections import Counter

import pytest
import torch

from rl.decoding import process_logits, sample
from rl.modeling import build_tiny_model, train_tokenizer

TEXTS = [f"{a} plus {b} is {a + b}." for a in range(12) for b in range(12)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


@pytest.fixture(scope="module")
def model(tok):
    m = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=128, seed=0)
    with torch.no_grad():  # peaky next-token distributions, so the tests can tell distributions apart
        m.model.embed_tokens.weight.mul_(12.0)
    return m.eval()


def _prompts(tok, n=6):
    return [tok(f"{i} plus {i + 1} is" + " 1" * (i % 3), add_special_tokens=False)["input_ids"] for i in range(n)]


def _processed_logprobs(model, prompt, completion, temperature, top_k, top_p):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].float()
    return process_logits(logits, temperature, top_k, top_p).log_softmax(-1)


def test_greedy_equals_generate(tok, model):
    prompts = _prompts(tok)
    ids, lps = sample(model, prompts, max_new_tokens=10, eos_token_ids=[tok.eos_token_id],
                      pad_token_id=tok.pad_token_id, greedy=True)
    width = max(map(len, prompts))
    inp = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    ref = model.generate(input_ids=inp, attention_mask=mask, do_sample=False, max_new_tokens=10,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, width:].tolist()
    for got, want in zip(ids, ref):
        n = next((k + 1 for k, t in enumerate(want) if t == tok.eos_token_id), len(want))
        assert got == want[:n]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8)])
def test_logprobs_are_the_processed_distributions(tok, model, temperature, top_k, top_p):
    prompts = _prompts(tok) * 3
    torch.manual_seed(0)
    free, _ = sample(model, prompts, max_new_tokens=12, eos_token_ids=[], pad_token_id=tok.pad_token_id,
                     temperature=temperature, top_k=top_k, top_p=top_p, logprobs=False)
    common = Counter(t for c in free for t in c).most_common(3)
    eos = [tok.eos_token_id, common[1][0]]  # a frequently sampled token ends rows early: compaction happens
    ids, lps = sample(model, prompts, max_new_tokens=12, eos_token_ids=eos, pad_token_id=tok.pad_token_id,
                      temperature=temperature, top_k=top_k, top_p=top_p)
    assert len({len(c) for c in ids}) > 1, "rows should finish at different steps"
    for p, c, lp in zip(prompts, ids, lps):
        assert len(c) == len(lp) >= 1
        assert all(t not in eos for t in c[:-1])
        ref = _processed_logprobs(model, p, c, temperature, top_k, top_p).gather(-1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lp), ref, atol=1e-4, rtol=1e-4)


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1 % point of chi-square(df) (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _exact_pairs(model, prompt, top_k, eos):
    """P(first two tokens) under the processed distribution (fp32); a first token in `eos` ends the row."""
    first = _processed_logprobs(model, prompt, [0], 1.0, top_k, 1.0)[0].exp()  # position of the first token
    probs = {}
    for a in first.nonzero()[:, 0].tolist():
        if a in eos:
            probs[(a,)] = float(first[a])
            continue
        second = _processed_logprobs(model, prompt, [a, 0], 1.0, top_k, 1.0)[1].exp()
        for b in second.nonzero()[:, 0].tolist():
            probs[(a, b)] = float(first[a] * second[b])
    return probs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_frequencies_match_the_exact_distribution(tok, model, dtype):
    prompt = _prompts(tok, 1)[0]
    top_k, n = 4, 4000
    first = _processed_logprobs(model, prompt, [0], 1.0, top_k, 1.0)[0].exp()
    eos = [int(first.argmax())]  # the likeliest first token ends the row
    exact = _exact_pairs(model, prompt, top_k, eos)
    m = model if dtype == torch.float32 else __import__("copy").deepcopy(model).to(dtype)
    torch.manual_seed(1)
    ids, _ = sample(m, [prompt] * n, max_new_tokens=2, eos_token_ids=eos, pad_token_id=tok.pad_token_id,
                    top_k=top_k, compact_fraction=0.05)
    counts = Counter(tuple(c) for c in ids)
    assert set(counts) <= set(exact)
    assert 0.05 < sum(v for k, v in counts.items() if len(k) == 1) / n < 0.95  # rows left the batch after one step
    cells = [k for k in exact if exact[k] * n >= 5]  # pool rare cells into one
    rest = 1.0 - sum(exact[k] for k in cells)
    stat = sum((counts.get(k, 0) - n * exact[k]) ** 2 / (n * exact[k]) for k in cells)
    observed_rest = n - sum(counts.get(k, 0) for k in cells)
    df = len(cells) - 1
    if rest * n >= 5:
        stat += (observed_rest - n * rest) ** 2 / (n * rest)
        df += 1
    assert stat < _chi2_critical(df), f"chi2={stat:.1f} over {df} degrees of freedom ({dtype})"


def test_bf16_next_token_distributions_stay_close_to_fp32(tok, model):
    import copy

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    prompts = _prompts(tok)
    torch.manual_seed(0)
    ids, _ = sample(model, prompts, max_new_tokens=16, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    tvs = []
    for p, c in zip(prompts, ids):
        a = _processed_logprobs(model, p, c, 1.0, 0, 1.0).exp()
        b = _processed_logprobs(bf16, p, c, 1.0, 0, 1.0).exp()
        tvs += (0.5 * (a - b).abs().sum(-1)).tolist()
    assert max(tvs) < 0.05 and sum(tvs) / len(tvs) < 0.02, (max(tvs), sum(tvs) / len(tvs))
