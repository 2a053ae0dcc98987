"""ZeRO-Offload from the recipe: `grpo.offload_optimizer` / `grpo.offload_params` reach the generated DeepSpeed
config as its offload sections (refusals at load are in test_config_rules), and a ZeRO-2 engine built from
that config with the optimizer offloaded takes an AdamW step on CPU (torch's AdamW, no DeepSpeedCPUAdam build)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rl.zero import deepspeed_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("use_gpu", [False, True])
def test_offload_sections_in_the_generated_config(use_gpu):
    plain = deepspeed_config(2, use_gpu=use_gpu)["zero_optimization"]
    assert "offload_optimizer" not in plain and "offload_param" not in plain
    z2 = deepspeed_config(2, use_gpu=use_gpu, offload_optimizer=True)["zero_optimization"]
    assert z2["offload_optimizer"] == {"device": "cpu", "pin_memory": use_gpu} and "offload_param" not in z2
    z3 = deepspeed_config(3, use_gpu=use_gpu, offload_optimizer=True, offload_params=True)["zero_optimization"]
    assert z3["offload_optimizer"] == z3["offload_param"] == {"device": "cpu", "pin_memory": use_gpu}
    assert deepspeed_config(1, use_gpu=use_gpu, offload_optimizer=True)["zero_optimization"]["offload_optimizer"]


@pytest.mark.parametrize("stage", [1, 2])
def test_parameter_offload_needs_zero3(stage):
    with pytest.raises(ValueError, match="offload_params=True needs grpo.zero_stage=3"):
        deepspeed_config(stage, use_gpu=False, offload_params=True)


def test_recipe_fields_reach_the_config():
    from pipelines.config import load_config

    g = load_config("micro", ["grpo.zero_stage=3", "grpo.offload_optimizer=true", "grpo.offload_params=true"]).grpo
    z = deepspeed_config(g.zero_stage, use_gpu=g.use_gpu, offload_optimizer=g.offload_optimizer,
                         offload_params=g.offload_params)["zero_optimization"]
    assert z["stage"] == 3 and "offload_optimizer" in z and "offload_param" in z


# One process, gloo: the engine DeepSpeed builds from our config (its optimizer section, "auto" filled in
# as the HF trainer would) with the optimizer states offloaded to the CPU.
STEP = textwrap.dedent("""
    import json, torch, deepspeed
    from rl.zero import deepspeed_config

    def filled(x):
        autos = {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 2, "gradient_accumulation_steps": 1,
                 "gradient_clipping": 1.0, "enabled": False, "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8,
                 "weight_decay": 0.0}
        return {k: filled(v) if isinstance(v, dict) else (autos[k] if v == "auto" else v) for k, v in x.items()}

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    before = [p.detach().clone() for p in model.parameters()]
    cfg = filled(deepspeed_config(2, use_gpu=False, offload_optimizer=True))
    engine, opt, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    loss = engine(torch.randn(2, 8)).pow(2).mean()
    engine.backward(loss)
    engine.step()
    moved = any(not torch.equal(b, p.detach()) for b, p in zip(before, engine.module.parameters()))
    print(json.dumps({"optimizer": type(opt.optimizer).__name__, "offload": bool(opt.cpu_offload), "moved": moved}))
""")


def test_zero2_offload_takes_an_adamw_step_on_cpu(tmp_path):
    pytest.importorskip("deepspeed")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", STEP], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"optimizer": "AdamW", "offload": True, "moved": True}, out
