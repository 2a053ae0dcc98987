"""ZeRO-3 with parameters really partitioned (`stage3_param_persistence_threshold: 0`; the default 1e5 keeps
every tiny test model whole) and the lean log-prob loss: rl.lean_loss reads the output embedding's weight
directly instead of calling the LM head module, so under ZeRO-3 that read must see the gathered weight, in
forward and in backward. One DeepSpeed process on CPU (gloo) trains two steps with TRL's own log-probs and
two with the lean ones on the same externally generated rollouts (a rollout pool's path: no in-learner
generation gathers the model first); losses, gradient norms and entropies must agree, for an untied head
(Qwen2.5-7B-like) and a tied one (Qwen2.5-0.5B-like)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from rl import lean_loss, trl_compat as compat
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import train_tokenizer
    from rl.zero import deepspeed_config, init_distributed_for_zero3

    init_distributed_for_zero3(False)
    ROWS = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(8)]
    tok = train_tokenizer([r["prompt"] + " " + r["answer"] for r in ROWS] * 4, 300)

    def reward(completions, **_):
        return [float(len(c) % 3) for c in completions]

    def rollout(prompts, trainer):  # fixed completions of different lengths, as a rollout pool would return
        g = torch.Generator().manual_seed(1000 + trainer.state.global_step)
        comps = [torch.randint(5, len(tok), (1 + int(torch.randint(0, 8, (1,), generator=g)),), generator=g).tolist()
                 for _ in prompts]
        return {"prompt_ids": compat.tokenize_prompts(trainer, prompts), "completion_ids": comps,
                "logprobs": [[-1.0] * len(c) for c in comps]}

    status_at_loss = []  # the head's ZeRO status when the loss starts: it must really be partitioned
    out = {}
    for tied in (False, True):
        for lean in (False, True):
            cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                              tie_word_embeddings=tied, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
            torch.manual_seed(0)
            model = LlamaForCausalLM(cfg)
            ds = deepspeed_config(3, use_gpu=False)
            ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
            p = GRPOParams(max_steps=2, num_generations=4, prompts_per_step=4, max_completion_length=8,
                           logging_steps=1, learning_rate=1e-3, lean_logps=lean, length_buckets=4)
            tr = make_grpo_trainer(model, tok, ROWS, [reward], [1.0], f"out-{tied}-{lean}", p, deepspeed=ds,
                                   use_cpu=True, seed=0, rollout_func=rollout)
            loss = type(tr).compute_loss

            def compute_loss(self, model, inputs, **kw):
                status_at_loss.append(str(model.module.get_output_embeddings().weight.ds_status))
                return loss(self, model, inputs, **kw)

            type(tr).compute_loss = compute_loss
            calls = []
            real = lean_loss.SelectedLogProbs.apply
            lean_loss.SelectedLogProbs.apply = lambda h, w, *a: calls.append(w.numel()) or real(h, w, *a)
            try:
                tr.train()
            finally:
                lean_loss.SelectedLogProbs.apply = real
                type(tr).compute_loss = loss
            logs = [h for h in tr.state.log_history if "loss" in h]
            out[f"tied={tied} lean={lean}"] = {
                "logs": [[h["loss"], h["grad_norm"], h["entropy"]] for h in logs], "lean_calls": len(calls),
                "head_numels_seen": sorted(set(calls)), "vocab_x_hidden": len(tok) * 32}
    out["status_at_loss"] = sorted(set(status_at_loss))
    print(json.dumps(out))
""")


def test_lean_loss_equals_trls_under_partitioned_zero3(tmp_path):
    pytest.importorskip("deepspeed")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29600 + os.getpid() % 1000), "CUDA_VISIBLE_DEVICES": "",
           "WANDB_MODE": "disabled"}
    env.pop("ACCELERATE_USE_CPU", None)  # with a DeepSpeed config it would silently drop DeepSpeed
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # the condition under test: the head is partitioned (not whole) when each loss begins
    assert out.pop("status_at_loss") == ["ZeroParamStatus.NOT_AVAILABLE"], out
    for tied in (False, True):
        trl, lean = out[f"tied={tied} lean=False"], out[f"tied={tied} lean=True"]
        assert trl["lean_calls"] == 0 and lean["lean_calls"] >= 2, (trl, lean)
        # every read of the head's weight on the lean path saw the whole (vocab, hidden) matrix
        assert lean["head_numels_seen"] == [lean["vocab_x_hidden"]], lean
        assert len(lean["logs"]) == len(trl["logs"]) == 2
        for (l1, g1, e1), (l2, g2, e2) in zip(trl["logs"], lean["logs"]):
            assert l2 == pytest.approx(l1, abs=1e-6)
            assert g2 == pytest.approx(g1, rel=1e-4)  # the gradient flows back into the partitioned head
            assert e2 == pytest.approx(e1, rel=1e-5)
