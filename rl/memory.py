"""GPU memory one actor needs, estimated from a model's config.json numbers and the run's settings alone (no
model, no torch, no Ray). `pipelines/memory_plan.py` maps a recipe's actors onto these functions; `rayzero
cluster plan` prints the figures and `rayzero run` refuses a plan that does not fit before Ray starts.

Model states (ZeRO: Rajbhandari et al. 2020, arXiv:1910.02054, sec. 3.1 and 5.4; DeepSpeed's "Memory
Requirements" page and `estimate_zero2_model_states_mem_needs` / `estimate_zero3_model_states_mem_needs` in
deepspeed/runtime/zero/{stage_1_and_2,stage3}.py). Mixed-precision Adam over P parameters on N data-parallel
ranks holds, in bytes: 2P 16-bit weights, 2P 16-bit gradients and K*P optimizer state, and ZeRO partitions:

    stage 0: (2 + 2 + K) P          stage 2: 2P + (2 + K) P / N
    stage 1: (2 + 2) P + K P / N     stage 3: (2 + 2 + K) P / N  + 4 * largest layer (gathered for use)

The paper's K = 12 (fp32 master weights 4, Adam momentum 4, variance 4: its Figure 1 numbers, checked in
tests/unit/test_memory.py). DeepSpeed's estimator counts one more fp32 gradient beside each master (its
comment: "18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit"), which is what a
bf16 learner here holds too (gradients accumulate in fp32), so `training` uses K = 16: `optimizer` (Adam
m and v, 8) + `masters` (fp32 weights and gradients, 8). An fp32 learner has no masters: 4 + 4 + 8 bytes.
Offloading the optimizer (ZeRO-Offload) moves optimizer state, masters and gradients to CPU memory (stage
1/2 keep the 2P weights, stage 3 its 2P/N share); offloading parameters (stage 3) keeps only the gathered
layer on the GPU: DeepSpeed's estimator term by term (stage 3 without offload is 20 P/N here, 18 P/N there:
DeepSpeed leaves the 16-bit weights' share out of its sum).

LoRA: the base weights are frozen (no gradients, no optimizer state; partitioned only by stage 3); the
adapter (r * (in + out) per adapted linear) trains in fp32 (PEFT upcasts adapters): 4 + 4 + 8 bytes each.

Activations (after Korthikanti et al. 2022, arXiv:2205.05198, whose per-layer s*b*h*(34 + 5*a*s/h) is for a
GPT layer with materialised attention scores): what a Llama/Qwen decoder layer saves for backward with
SDPA/FlashAttention (no s x s scores), per token, in 16-bit: the two norms' inputs and outputs and the
attention output (10h), q (2h), k and v (4 kv d), and the SwiGLU MLP's gate, activation, up and product (8 I):
12h + 4 kv d + 8 I bytes; twice that in fp32. With gradient checkpointing each layer keeps
only its input (2h per token) and one layer is recomputed at a time. The loss projects 2048 positions at a
time (`rl.lean_loss.TOKEN_CHUNK`, as TRL's fused head does): one (2048, vocab) fp32 tile and its gradient.

Generation: the KV cache holds 2 * layers * kv_heads * head_dim values per token. vLLM: the engine's whole
budget is gpu_memory_utilization x the card (weights / tensor_parallel, its activations and the KV cache
within); its KV cache is what the weights leave of it. Each other process on a GPU adds `RUNTIME_GIB`
(CUDA context, cuBLAS workspaces, allocator slack), a rule of thumb rather than a formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

GIB = float(1 << 30)
LOGIT_TILE = 2048  # positions the loss projects at once (rl.lean_loss.TOKEN_CHUNK)
RUNTIME_GIB = 1.0  # per non-vLLM process on a GPU: CUDA context, library workspaces, fragmentation


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer's config.json that decide its memory."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False  # input embedding and output head share one matrix

    @classmethod
    def from_config(cls, config: Mapping) -> "ModelShape":
        """From a Hugging Face config.json (its `text_config` for a multimodal one). KeyError names the
        missing key."""
        c = config.get("text_config") or config
        hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
        return cls(hidden=hidden, layers=int(c["num_hidden_layers"]), heads=heads,
                   kv_heads=int(c.get("num_key_value_heads") or heads),
                   head_dim=int(c.get("head_dim") or hidden // heads), intermediate=int(c["intermediate_size"]),
                   vocab=int(c["vocab_size"]), tied=bool(c.get("tie_word_embeddings", False)))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by its usual module name."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def params(self) -> int:
        """Weights (biases left out: < 0.01 % of a 7B model)."""
        per_layer = sum(a * b for a, b in self.linears().values()) + 2 * self.hidden  # + the two norms
        return self.layers * per_layer + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def largest_layer(self) -> int:
        """Parameters of the largest module ZeRO-3 gathers at once (the embedding, for any usual vocab)."""
        return max(self.vocab * self.hidden, max(a * b for a, b in self.linears().values()))

    def lora_params(self, r: int, targets: Sequence[str] = ("all-linear",)) -> int:
        """Adapter parameters of rank `r` on `targets` (module-name suffixes; "all-linear" or an unknown name
        counts every linear layer but the output head: an upper bound)."""
        linears = self.linears()
        names = [n for n in linears if any(n.endswith(t) or t.endswith(n) for t in targets)]
        if "all-linear" in targets or not names:
            names = list(linears)
        return self.layers * sum(r * sum(linears[n]) for n in names)

    def kv_bytes_per_token(self, value_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * value_bytes

    def activation_bytes_per_token_layer(self, value_bytes: int = 2) -> float:
        """What one decoder layer saves for backward per token (see the module docstring)."""
        return (12 * self.hidden + 4 * self.kv_heads * self.head_dim + 8 * self.intermediate) * value_bytes / 2


def model_states(params: float, *, zero_stage: int = 0, data_parallel: int = 1, weight_bytes: float = 2,
                 grad_bytes: float = 2, optimizer_bytes: float = 8, master_bytes: float = 4, largest_layer: float = 0,
                 offload_optimizer: bool = False, offload_params: bool = False) -> dict[str, float]:
    """Bytes of each model state on one of `data_parallel` ranks under ZeRO `zero_stage` (the module
    docstring's table; `optimizer_bytes + master_bytes` is the paper's K). `largest_layer`: parameters
    ZeRO-3 gathers at once, held in 16-bit with their gradient (DeepSpeed's 4 * largest_layer_params)."""
    n = max(1, data_parallel)
    out = {"weights": weight_bytes * params, "gradients": grad_bytes * params,
           "optimizer": optimizer_bytes * params, "masters": master_bytes * params}
    for name, stage in (("optimizer", 1), ("masters", 1), ("gradients", 2), ("weights", 3)):
        if zero_stage >= stage:
            out[name] /= n
    if offload_optimizer:  # states, masters and gradients live (and are stepped) in CPU memory
        out["optimizer"] = out["masters"] = out["gradients"] = 0.0
    if zero_stage >= 3:
        if offload_params:
            out["weights"] = 0.0
        out["gathered"] = 4.0 * largest_layer
    return out


@dataclass(frozen=True)
class Training:
    """How a learner trains (one data-parallel rank)."""

    zero_stage: int = 0  # 0 = no DeepSpeed (DDP); 1-3 = ZeRO
    data_parallel: int = 1  # ranks the states are partitioned over
    weight_bytes: int = 4  # 2 = the learner holds 16-bit weights
    master_weights: bool = False  # fp32 master weights and gradients beside 16-bit weights
    offload_optimizer: bool = False
    offload_params: bool = False
    lora_r: int = 0
    lora_targets: tuple[str, ...] = ("all-linear",)
    micro_batch: int = 1  # rows per forward/backward
    seq_len: int = 512  # prompt + completion tokens per row
    gradient_checkpointing: bool = False
    activation_bytes: int = 4  # 2 = 16-bit compute (bf16 weights or autocast)
    reference_model: bool = False  # a frozen reference copy (GRPO beta > 0 without LoRA)
    generation_rows: int = 0  # in-learner generation: rows decoded at once, each of seq_len tokens


@dataclass(frozen=True)
class Estimate:
    """GiB one actor needs on one GPU at its peak (`parts`), and what it keeps while a colocated actor on
    the same GPU has its turn (`idle`)."""

    parts: Mapping[str, float]
    idle: float
    problem: str = ""  # the actor cannot run at all with these settings (e.g. vLLM weights above its share)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in self.parts.items() if v >= 0.05)


def training(shape: ModelShape, t: Training) -> Estimate:
    """A learner rank: model states (ZeRO, offload, LoRA), the reference model, and at its peak the larger of
    the backward pass's activations and in-learner generation's KV cache (they alternate)."""
    zero = {"zero_stage": t.zero_stage, "data_parallel": t.data_parallel, "offload_optimizer": t.offload_optimizer,
            "offload_params": t.offload_params}
    wb = t.weight_bytes
    masters = 8 if (wb < 4 and t.master_weights) else 0  # fp32 weights + fp32 gradients
    if t.lora_r:
        base = model_states(shape.params, weight_bytes=wb, grad_bytes=0, optimizer_bytes=0, master_bytes=0,
                            largest_layer=shape.largest_layer, **zero)
        adapter = model_states(shape.lora_params(t.lora_r, t.lora_targets), weight_bytes=4, grad_bytes=4,
                               optimizer_bytes=8, master_bytes=0, **zero)
        states = {k: base.get(k, 0.0) + adapter.get(k, 0.0) for k in base}
    else:
        states = model_states(shape.params, weight_bytes=wb, grad_bytes=wb, optimizer_bytes=8, master_bytes=masters,
                              largest_layer=shape.largest_layer, **zero)
    parts = {k: v / GIB for k, v in states.items()}
    if t.reference_model and not t.lora_r:  # LoRA's reference is the adapter-free base: no copy
        parts["reference"] = wb * shape.params / (t.data_parallel if t.zero_stage >= 3 else 1) / GIB
    idle = sum(parts.values()) + RUNTIME_GIB
    act = activations(shape, t.micro_batch, t.seq_len, checkpointing=t.gradient_checkpointing,
                      value_bytes=t.activation_bytes) / GIB
    kv = t.generation_rows * t.seq_len * shape.kv_bytes_per_token(t.activation_bytes) / GIB
    parts["activations"] = act
    if kv > act:
        parts = {**{k: v for k, v in parts.items() if k != "activations"}, "generation_kv": kv}
    parts["runtime"] = RUNTIME_GIB
    return Estimate(parts, idle)


def activations(shape: ModelShape, micro_batch: int, seq_len: int, *, checkpointing: bool = False,
                value_bytes: int = 2) -> float:
    """Bytes of activations a forward/backward of `micro_batch` rows of `seq_len` tokens keeps, plus the
    loss's logit tile and its gradient."""
    tokens = micro_batch * seq_len
    one_layer = tokens * shape.activation_bytes_per_token_layer(value_bytes)
    kept = shape.layers * tokens * shape.hidden * value_bytes + one_layer if checkpointing else shape.layers * one_layer
    return kept + 2 * min(LOGIT_TILE, tokens) * shape.vocab * 4


def inference(shape: ModelShape, *, weight_bytes: int = 2, rows: int = 1, seq_len: int = 512) -> Estimate:
    """A Hugging Face engine generating `rows` sequences of up to `seq_len` tokens at once: weights and KV
    cache (freed between calls, so `idle` keeps the weights)."""
    weights = weight_bytes * shape.params / GIB
    kv = rows * seq_len * shape.kv_bytes_per_token(weight_bytes) / GIB
    return Estimate({"weights": weights, "kv_cache": kv, "runtime": RUNTIME_GIB}, weights + RUNTIME_GIB)


def vllm(shape: ModelShape, *, gpu_gib: float, utilization: float, tensor_parallel: int = 1, weight_bytes: int = 2,
         max_model_len: int = 0, sleeping: bool = False) -> Estimate:
    """A vLLM engine (per GPU it spans): `utilization` x the card, of which the weights take their share and
    the KV cache the rest. `problem` when that rest cannot hold one `max_model_len`-token sequence (vLLM
    then refuses to start). `sleeping` engines (sleep_level > 0) free the GPU while the learner trains."""
    share = utilization * gpu_gib
    weights = weight_bytes * shape.params / tensor_parallel / GIB
    kv = share - weights
    one_seq = max_model_len * shape.kv_bytes_per_token(weight_bytes) / tensor_parallel / GIB
    problem = ""
    if kv <= one_seq:
        problem = (f"vLLM's share ({utilization:g} x {gpu_gib:g} GiB = {share:.1f} GiB) leaves {kv:.1f} GiB for the KV "
                   f"cache after {weights:.1f} GiB of weights" + (f", less than one {max_model_len}-token sequence "
                                                                  f"({one_seq:.1f} GiB)" if max_model_len else ""))
    return Estimate({"weights": weights, "kv_cache": max(kv, 0.0)}, 0.0 if sleeping else share, problem)


def gpu_total(estimates: Sequence[Estimate], concurrent: bool = False) -> float:
    """GiB one GPU needs for the actors sharing it: their peaks summed when they run at once (`concurrent`),
    else the worst of one actor at its peak while the others hold what they keep idle."""
    if concurrent or len(estimates) < 2:
        return sum(e.total for e in estimates)
    idle = sum(e.idle for e in estimates)
    return max(e.total + idle - e.idle for e in estimates)
