"""`rayzero publish`: turn a stage folder into a self-contained, loadable checkpoint and put it in a
directory or on the Hugging Face Hub.

    rayzero publish runs/<run>/<stage> --to <dir> | hf://<org>/<name>[@revision] [--overwrite] [--adapter]

What gets published (with `--adapter`: the stage's LoRA adapter instead of the weights, see
pipelines/publish/adapter.py; tokenizer, card, plots and recipe as below):
- the weights as safetensors. A DeepSpeed ZeRO checkpoint (a folder with `latest` / `global_step*/`
  shards, e.g. `grpo.checkpoints/checkpoint-N`) is consolidated with DeepSpeed's `zero_to_fp32` into the
  fp32 master weights; a folder of `checkpoint-N` subfolders publishes its latest one;
- the tokenizer, with rayzero's prompt format as chat template when it has none, round-trip checked;
- the generation config (greedy, the run's `eval.max_new_tokens`: how the reported accuracy was measured);
- a model card (pipelines/report/model_card.py) with the run report's results, the plots and the recipe.

Hub targets: the repo is created if needed, a branch per revision; an existing revision with files is
never overwritten without `--overwrite`. No token, no network, or HF_HUB_OFFLINE fail with one line before
any work. Directory targets appear atomically and carry a marker file: `--overwrite` replaces only a
folder that an earlier publish wrote (or an empty one), never the source run, a folder above it or above
the current folder, or a folder with other content (`check_directory_target`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from pipelines.publish import hub
from pipelines.publish.adapter import locate_adapter
from pipelines.publish.hub import PublishError

# The rayzero prompt format: the user's text ends with a newline, the model continues with
# <think>…</think><answer>…</answer>; no role markers (the tiny tokenizer has none).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{{ message['content'] }}{{ eos_token }}"
    "{%- else -%}{{ message['content'] }}{% if not message['content'].endswith('\\n') %}{{ '\\n' }}{% endif %}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
PROBE = "Mia has 3 pens. She buys 2 more. How many pens does Mia have now?\n<think>3+2=5.</think><answer>5</answer>"


@dataclass(frozen=True)
class Target:
    to: str
    repo_id: str = ""  # hub targets
    revision: str = ""  # "" = main
    path: Path | None = None  # directory targets

    @property
    def is_hub(self) -> bool:
        return bool(self.repo_id)


def parse_target(to: str) -> Target:
    if to.startswith("hf://"):
        m = re.fullmatch(r"hf://([\w.-]+/[\w.-]+)(?:@([\w./-]+))?", to)
        if not m:
            raise PublishError(f"--to {to!r}: a Hub target is hf://<org>/<name>[@revision]")
        return Target(to, repo_id=m.group(1), revision=m.group(2) or "")
    if "://" in to:
        raise PublishError(f"--to {to!r}: use a directory path or hf://<org>/<name>[@revision]")
    return Target(to, path=Path(to).expanduser().resolve())


# ---------------------------------------------------------------------------------------------
# Where the weights are, and what run they belong to


def _step(p: Path) -> int:
    return int(p.name.rsplit("-", 1)[1]) if re.fullmatch(r"checkpoint-\d+", p.name) else -1


def locate(folder: Path) -> Path:
    """The folder holding the weights: `folder` itself, or its latest `checkpoint-N` subfolder; checked
    to hold weights before any work."""
    if not folder.is_dir():
        raise PublishError(f"{folder}: not a folder; pass a stage folder such as runs/<run>/grpo")
    ckpts = sorted((p for p in folder.iterdir() if _step(p) >= 0), key=_step)
    if (folder / "config.json").exists():
        weights = folder
    elif ckpts:
        weights = ckpts[-1]
    else:
        raise PublishError(f"{folder}: no model here (no config.json, no checkpoint-N subfolder); pass a finished "
                           f"stage folder (runs/<run>/<stage>) or a checkpoint folder")
    if not (is_zero_checkpoint(weights) or any(weights.glob("*.safetensors")) or any(weights.glob("pytorch_model*.bin"))):
        raise PublishError(f"{weights}: config.json but no weights (*.safetensors, pytorch_model*.bin, or "
                           f"DeepSpeed global_step*/ shards)")
    return weights


def is_zero_checkpoint(folder: Path) -> bool:
    return (folder / "latest").is_file() or any(folder.glob("global_step*"))


@dataclass(frozen=True)
class RunContext:
    run_dir: Path | None
    run: str
    stage: str
    evaluated: bool  # the finished stage folder: the report's results are this checkpoint's
    step: int | None  # training step of an intermediate checkpoint


def run_context(folder: Path, weights: Path) -> RunContext:
    """The run a checkpoint belongs to: the nearest ancestor with config.yaml or report.json."""
    run_dir = next((a for a in list(folder.resolve().parents)[:3]
                    if (a / "config.yaml").exists() or (a / "report.json").exists()), None)
    rel = folder.resolve().relative_to(run_dir) if run_dir else Path(folder.name)
    stage = rel.parts[0].split(".")[0]  # grpo, grpo.checkpoints, grpo.partial -> grpo
    evaluated = run_dir is not None and weights == folder and len(rel.parts) == 1 \
        and rel.parts[0] == stage and (folder / "manifest.json").exists()
    step = None
    if (weights / "trainer_state.json").exists():
        step = json.loads((weights / "trainer_state.json").read_text()).get("global_step")
    return RunContext(run_dir, run_dir.name if run_dir else folder.name, stage, evaluated, step)


# ---------------------------------------------------------------------------------------------
# Building the published folder


def load_model(weights: Path):
    """The model at `weights`; from the fp32 master weights when it is a DeepSpeed ZeRO checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not is_zero_checkpoint(weights):  # (`locate` made sure there are weights)
        return AutoModelForCausalLM.from_pretrained(weights, dtype="auto")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(weights))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(weights), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {id(model.get_parameter(k)) for k in state if k not in unexpected}
    untied = [k for k in missing if id(model.get_parameter(k)) not in loaded]  # tied weights are shared
    if untied or unexpected:
        raise PublishError(f"{weights}: ZeRO shards do not match config.json (missing {untied[:3]}, "
                           f"unexpected {list(unexpected)[:3]})")
    return model


def load_tokenizer(candidates: list[Path]):
    from transformers import AutoTokenizer

    for d in candidates:
        if (d / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(d)
    raise PublishError(f"no tokenizer in {', '.join(map(str, candidates))}")


def build_folder(src: Path, dst: Path, *, repo: str, base_model: str = "", datasets: tuple[str, ...] = (),
                 adapter: bool = False, say: Callable[[str], None] = print) -> dict:
    """Write the publishable folder for stage folder `src` into the empty folder `dst` (`adapter`: its LoRA
    adapter instead of the model's weights)."""
    from pipelines.report import model_card
    from rl.modeling import check_tokenizer_roundtrip

    lora = locate_adapter(src, base_model) if adapter else None
    weights = src if lora else locate(src)
    ctx = run_context(src, weights)
    cfg = yaml.safe_load((ctx.run_dir / "config.yaml").read_text()) if ctx.run_dir and \
        (ctx.run_dir / "config.yaml").exists() else {}
    report = json.loads((ctx.run_dir / "report.json").read_text()) if ctx.run_dir and \
        (ctx.run_dir / "report.json").exists() else None
    tok = load_tokenizer(([lora.folder] if lora else []) + [weights, src]
                         + ([ctx.run_dir / "tokenizer"] if ctx.run_dir else []))
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    adapter_base, base_note = "", ""
    if lora:
        from pipelines.publish.adapter import base_note as note_for, write_adapter

        say(f"publish: LoRA adapter from {lora.folder}")
        adapter_base = write_adapter(lora, dst, base_model)
        base_note = note_for(lora, adapter_base, ctx.run_dir)
        if base_note:
            say(f"publish: note: {base_note}")
    else:
        say(f"publish: weights from {weights}" + (" (DeepSpeed ZeRO shards -> fp32)" if is_zero_checkpoint(weights) else ""))
        _write_model(weights, dst, tok, cfg)
    tok.save_pretrained(dst)
    check_tokenizer_roundtrip(dst, tok, PROBE)
    plots = _copy_plots(ctx.run_dir, report, dst)
    recipe = model_card.recipe_text(cfg) if cfg else "# no config.yaml found next to the checkpoint\n"
    (dst / "rayzero_config.yaml").write_text(recipe)
    note = "" if ctx.evaluated or not ctx.run_dir else (
        f"Intermediate checkpoint{f' (training step {ctx.step})' if ctx.step is not None else ''} of stage "
        f"`{ctx.stage}`: the results below are the run's finished stages, not this checkpoint's.")
    note = " ".join(n for n in (note, base_note) if n)
    example = _card_example(ctx.run_dir, cfg, tok)
    card = model_card.build_card(repo=repo, run=ctx.run, stage=ctx.stage, cfg=cfg, report=report,
                                 evaluated=ctx.evaluated, plots=plots, recipe=recipe, note=note,
                                 base_model=base_model, datasets=datasets, example=example, adapter_base=adapter_base)
    card.save(dst / "README.md")
    return {"stage": ctx.stage, "run": ctx.run, "evaluated": ctx.evaluated, "weights": str(lora.folder if lora else weights),
            "adapter": bool(lora)}


def _card_example(run_dir: Path | None, cfg: dict, tok) -> str:
    """The first held-out question of the run, for the card's Use section ("" without one)."""
    from pipelines.report import model_card

    if not run_dir or not (run_dir / "data" / "heldout.jsonl").exists():
        return ""
    with (run_dir / "data" / "heldout.jsonl").open() as f:
        prompt = json.loads(f.readline()).get("prompt", "")
    # the raw question inside the run's rendered prompt: the card's code renders it again as the run did
    return model_card.question_of(prompt, cfg, tok) or ""


def _write_model(weights: Path, dst: Path, tok, cfg: dict) -> None:
    """The model as safetensors, with the generation config the report's accuracy was measured with."""
    from transformers import GenerationConfig

    model = load_model(weights)
    gen = GenerationConfig.from_pretrained(weights) if (weights / "generation_config.json").exists() \
        else GenerationConfig.from_model_config(model.config)
    gen.do_sample = False
    gen.max_new_tokens = cfg.get("eval", {}).get("max_new_tokens", gen.max_new_tokens or 256)
    gen.eos_token_id = tok.eos_token_id if gen.eos_token_id is None else gen.eos_token_id
    gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.generation_config = gen
    model.save_pretrained(dst, safe_serialization=True)


def _copy_plots(run_dir: Path | None, report: dict | None, dst: Path) -> list[str]:
    if run_dir is None:
        return []
    plots_dir = run_dir / "plots"
    if not any(plots_dir.glob("*.png")) and report is not None:
        from pipelines.report.plots import write_plots

        write_plots(run_dir, report)
    out = []
    order = ["reward", "accuracy", "response_length", "tts", "loss"]
    for p in sorted(plots_dir.glob("*.png"), key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.name)):
        (dst / "plots").mkdir(exist_ok=True)
        shutil.copy2(p, dst / "plots" / p.name)
        out.append(f"plots/{p.name}")
    return out


# ---------------------------------------------------------------------------------------------
# Targets


def publish(stage_dir: str | Path, to: str, *, overwrite: bool = False, base_model: str = "",
            datasets: tuple[str, ...] = (), adapter: bool = False, say: Callable[[str], None] = print) -> str:
    """Publish `stage_dir` to `to` (directory or hf://org/name[@rev]); returns where it went. `adapter`:
    the stage's LoRA adapter instead of the merged model."""
    src = Path(stage_dir).expanduser().resolve()
    target = parse_target(to)
    if adapter:  # a bad source fails before any Hub call
        locate_adapter(src, base_model)
    else:
        locate(src)
    build = dict(base_model=base_model, datasets=datasets, adapter=adapter, say=say)
    if target.is_hub:
        api = hub.preflight(target, overwrite)
        with tempfile.TemporaryDirectory(prefix="rayzero-publish-") as tmp:
            info = build_folder(src, Path(tmp), repo=target.repo_id, **build)
            message = f"rayzero: {info['run']} stage {info['stage']}" + (" (LoRA adapter)" if adapter else "")
            hub.upload(api, target, Path(tmp), message, overwrite)
        url = f"https://huggingface.co/{target.repo_id}" + (f"/tree/{target.revision}" if target.revision else "")
        say(f"publish: {info['run']}/{info['stage']} -> {url}")
        return url
    dst = target.path
    check_directory_target(src, dst, overwrite)
    partial = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        info = build_folder(src, partial, repo=str(dst), **build)
        (partial / MARKER).write_text(json.dumps({"run": info["run"], "stage": info["stage"], "source": str(src),
                                                  "adapter": info["adapter"]}))
        _swap_in(partial, dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    say(f"publish: {info['run']}/{info['stage']} -> {dst}")
    return str(dst)


MARKER = ".rayzero-publish.json"  # in every folder `rayzero publish` wrote: the only folders --overwrite replaces


def check_directory_target(src: Path, dst: Path, overwrite: bool) -> None:
    """A directory target may be new, empty, or (with --overwrite) an earlier `rayzero publish` output;
    never the source, a folder holding it (its run, the run's parents), the current folder or one above
    it, and never a folder with content rayzero did not write."""
    cwd = Path.cwd().resolve()
    if dst == src or src in dst.parents:
        raise PublishError(f"{dst}: must not be the stage folder or inside it")
    if dst in src.parents:
        raise PublishError(f"{dst}: holds the checkpoint being published ({src}); publish to a new folder")
    if dst == cwd or dst in cwd.parents:
        raise PublishError(f"{dst}: is the current folder or one above it; publish to a new folder")
    if not dst.exists():
        return
    if not dst.is_dir():
        raise PublishError(f"{dst}: exists and is not a folder")
    if not any(dst.iterdir()):
        return
    if not (dst / MARKER).is_file():
        raise PublishError(f"{dst}: holds files that rayzero publish did not write; publish to a new or empty folder")
    if not overwrite:
        raise PublishError(f"{dst}: holds an earlier published model; pass --overwrite to replace it")


def _swap_in(partial: Path, dst: Path) -> None:
    """Replace `dst` by `partial` with renames; the old model is removed only once the new one is in place."""
    if not dst.exists():
        partial.replace(dst)
        return
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
    dst.replace(old)
    try:
        partial.replace(dst)
    except BaseException:
        old.replace(dst)
        raise
    shutil.rmtree(old)


def published_stage(cfg) -> str:
    """The stage the recipe's `publish` section publishes: `publish.stage`, else the last enabled stage that
    leaves a model and is not a comparison arm (pipelines/stages/)."""
    from pipelines.stages import STAGES

    trained = [s.name for s in STAGES if s.checkpoint and not s.comparison and s.enabled(cfg)]
    return cfg.publish.stage or (trained[-1] if trained else "")


def publish_from_config(cfg, say: Callable[[str], None] = print) -> str:
    """The driver's end-of-run publish (`publish` section of the recipe)."""
    p = cfg.publish
    stage = published_stage(cfg)
    if not stage or not (cfg.run_dir / stage / "manifest.json").exists():
        raise PublishError(f"publish.stage={stage or '(last trained)'!r}: no finished stage folder "
                           f"{cfg.run_dir / (stage or '<stage>')}; enable that stage or pick another")
    return publish(cfg.run_dir / stage, p.to, overwrite=p.overwrite, base_model=p.base_model,
                   datasets=tuple(p.datasets), adapter=p.adapter, say=say)


def add_parser(sub) -> None:
    p = sub.add_parser("publish", help="publish a stage's checkpoint to a folder or the Hub")
    p.add_argument("stage_dir", help="a stage folder (runs/<run>/<stage>) or a (ZeRO) checkpoint folder")
    p.add_argument("--to", required=True, help="a directory, or hf://<org>/<name>[@revision]")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty directory / existing revision")
    p.add_argument("--base-model", default="", help="Hub id of the model it was fine-tuned from (card metadata)")
    p.add_argument("--dataset", action="append", default=[], help="Hub id / name for the card's datasets")
    p.add_argument("--adapter", action="store_true", help="publish the stage's LoRA adapter (adapter/) instead of "
                   "the merged model; --base-model then names the model it applies to")


def run(ns: argparse.Namespace) -> int:
    publish(ns.stage_dir, ns.to, overwrite=ns.overwrite, base_model=ns.base_model, datasets=tuple(ns.dataset),
            adapter=ns.adapter)
    return 0
