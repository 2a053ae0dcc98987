"""rl/grpo_trainer.py's parts, each alone: the read-ahead dataloader, the master-gradient average over ranks
(two real gloo processes), and a mixin composed onto TRL's GRPOTrainer without the others."""

import zlib

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rl.precision import average_across_ranks


def test_lookahead_hands_each_batch_to_on_next_before_yielding_the_one_before():
    from rl.grpo_trainer import _Lookahead

    class Loader(list):
        sampler = "the sampler"

    events = []
    look = _Lookahead(Loader([1, 2, 3]), lambda b: events.append(f"prefetch {b}"))
    for batch in look:
        events.append(f"train {batch}")
    assert events == ["prefetch 2", "train 1", "prefetch 3", "train 2", "train 3"]
    assert len(look) == 3 and look.sampler == "the sampler"  # the wrapped loader's attributes
    assert list(_Lookahead(Loader([]), events.append)) == []


def _average_on_rank(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        masters = [torch.zeros(2), torch.zeros(3)]
        masters[0].grad = torch.tensor([1.0, 2.0]) * (rank + 1)  # rank 0: [1, 2]; rank 1: [2, 4]
        if rank == 1:  # a master without a gradient on rank 0 counts as zeros there
            masters[1].grad = torch.tensor([6.0, 8.0, 10.0])
        average_across_ranks(masters)
        if rank == 0:
            torch.save([m.grad for m in masters], out_file)
    finally:
        dist.destroy_process_group()


def test_master_gradients_are_averaged_over_ranks_with_missing_ones_as_zeros(tmp_path):
    out = tmp_path / "grads.pt"
    mp.spawn(_average_on_rank, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    first, second = torch.load(out)
    assert first.tolist() == [1.5, 3.0] and second.tolist() == [3.0, 4.0, 5.0]


def _reward(completions, kind, **_):
    return [1.0 if k == "const" else float(zlib.crc32(c.encode()) % 2) for c, k in zip(completions, kind)]


def test_dynamic_sampling_mixed_into_trl_alone_refills_with_informative_groups(tmp_path):
    from datasets import Dataset
    from trl import GRPOTrainer

    from rl import dynamic_sampling as ds
    from rl import trl_compat as compat
    from rl.grpo import GRPOParams, grpo_config
    from rl.grpo_trainer import DynamicSampling
    from rl.modeling import build_tiny_model, train_tokenizer

    class DynamicOnly(DynamicSampling, compat.GenerationRoundHook, GRPOTrainer):
        pass

    g = 4
    rows = [{"prompt": f"const {i} +", "kind": "const"} for i in range(4)]
    rows += [{"prompt": f"vary {i} -", "kind": "vary"} for i in range(4)]
    tok = train_tokenizer([r["prompt"] for r in rows] * 4, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    p = GRPOParams(max_steps=1, num_generations=g, prompts_per_step=2, max_completion_length=6)
    trainer = DynamicOnly(model=model, reward_funcs=[_reward], args=grpo_config(tmp_path, p),
                          train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.dynamic_sampling, trainer.max_resample_rounds = True, 8
    trainer.model.train()
    batch = [{"prompt": f"{k} {i} {'+' if k == 'const' else '-'}", "kind": k}
             for i, k in enumerate(["const", "vary"]) for _ in range(g)]
    out = trainer._generate_and_score_completions(batch)
    assert out["advantages"].shape[0] == 2 * g and ds.informative_groups(out["advantages"], g).all()
    assert not any("const" in s for s in tok.batch_decode(out["prompt_ids"], skip_special_tokens=True))
    assert compat.metrics(trainer)["dynamic_sampling/rounds"][-1] >= 2
