"""The model card (README.md with YAML metadata) of a published checkpoint, built with huggingface_hub's
`ModelCard` / `ModelCardData` / `EvalResult`.

Metadata: base model (when it is a Hub id), datasets, tags, and a `model-index` with the run report's
results for the published stage (held-out greedy accuracy and any pass@k / maj@k the eval stage measured).
An intermediate checkpoint (not the finished stage folder) was never evaluated as such: it gets no
`model-index`, and the card says so. The body has every stage's results, the plots and the recipe.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pipelines.report.card_use import question_of, use_code, use_text  # noqa: F401 (question_of: publish)
from pipelines.stages import stage_named

DEFAULT_QUESTION = "Mia has 3 pens. She buys 2 more. How many pens does Mia have now?\n"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ description }}

Trained by rayzero (R1-Zero-style post-training on Ray), run `{{ run }}`,
stage `{{ stage }}`: {{ stage_text }}.
{% if note %}
> {{ note }}
{% endif %}

## Results

{{ results_text }}
{% if results_table %}
{{ results_table }}
{% endif %}
{% if plots %}
## Plots
{% for name, path in plots %}
![{{ name }}]({{ path }})
{% endfor %}
{% endif %}

## Use

{{ use_text }}{% if adapter_base %}
This repository holds the adapter alone: load the base model, then the adapter on it.{% endif %}

```python
{% if adapter_base -%}
from peft import PeftModel
{% endif -%}
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained({{ repo | tojson }})
{% if adapter_base -%}
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({{ adapter_base | tojson }}), {{ repo | tojson }})
{% else -%}
model = AutoModelForCausalLM.from_pretrained({{ repo | tojson }})
{% endif -%}
{{ use_code }}
```

## Recipe

The resolved rayzero config that produced this checkpoint (also in `rayzero_config.yaml`):

<details><summary>rayzero_config.yaml</summary>

```yaml
{{ recipe }}
```
</details>
"""


def base_model_of(cfg: dict, stage: str, override: str = "") -> str | None:
    """The Hub id this checkpoint was fine-tuned from, if one can be known: `publish.base_model`, else the
    stage's starting model: a Hub id as it is; a local folder by where it came from (a Hub cache snapshot
    `models--org--name/snapshots/...`, or `_name_or_path` in its config.json); a GGUF file by its
    metadata (`general.base_model.0.repo_url`, `general.source.*`, else organization + file name without the
    quantisation suffix). A model built from scratch, or a folder of unknown origin, has none (the Hub
    accepts only model ids there; `base_model_text` names the path in the card's body)."""
    if override:
        return override
    model = _start_model(cfg, stage)
    path = model.get("path", "")
    if not path or model.get("kind") not in ("hf", "gguf"):
        return None
    if model["kind"] == "hf":
        if HUB_ID.match(path) and not Path(path).exists():
            return path
        return _hub_id_of_folder(Path(path))
    return _hub_id_of_gguf(path)


def base_model_text(cfg: dict, stage: str) -> str:
    """What the card says the stage started from, whatever its kind."""
    model = _start_model(cfg, stage)
    kind, path = model.get("kind", "tiny"), model.get("path", "")
    if kind == "hf" and path:
        return f"`{path}`" + (" (a local folder)" if not (HUB_ID.match(path) and not Path(path).exists()) else "")
    if kind == "gguf" and path:
        return f"the GGUF file `{path}` (converted to a Hugging Face model)"
    if kind == "truncate" and path:
        return f"layers of `{path}`"
    return "a model built from scratch (random weights, tokenizer trained on the task's text)"


def _start_model(cfg: dict, stage: str) -> dict:
    """The model section the stage's checkpoint started from (`Stage.start_model`: the run's model, or
    distillation's first student)."""
    found = stage_named(stage)
    return dict(found.start_model(cfg) if found else cfg.get("model", {}))


def _hub_id_of_folder(folder: Path) -> str | None:
    parts = folder.expanduser().resolve().parts
    for i, part in enumerate(parts[:-1]):  # .../hub/models--org--name/snapshots/<sha>
        if part.startswith("models--") and parts[i + 1] == "snapshots" and part.count("--") >= 2:
            return "/".join(part[len("models--"):].split("--", 1))
    try:
        name = json.loads((folder / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and HUB_ID.match(name) and not Path(name).exists() else None


_QUANT_SUFFIX = re.compile(r"[.-](?:I?Q\d\w*|[Ff]16|[Ff]32|[Bb][Ff]16)$")


def _hub_id_of_gguf(path: str) -> str | None:
    try:
        from gguf import GGUFReader

        from rl.gguf import resolve_gguf

        file = resolve_gguf(path)
        fields = GGUFReader(str(file)).fields
    except Exception:  # noqa: BLE001 - an unreadable file just leaves the metadata without a base model
        return None

    def get(key: str):
        try:
            return fields[key].contents() if key in fields else None
        except Exception:  # noqa: BLE001
            return None

    for key in ("general.base_model.0.repo_url", "general.source.huggingface.repository", "general.source.url",
                "general.repo_url"):
        value = get(key)
        if isinstance(value, str):
            m = re.search(r"huggingface\.co/([\w.-]+/[\w.-]+)", value)
            if m or HUB_ID.match(value):
                return m.group(1) if m else value
    org = get("general.organization")
    stem = _QUANT_SUFFIX.sub("", file.name[: -len(".gguf")] if file.name.endswith(".gguf") else file.stem)
    return f"{org}/{stem}" if isinstance(org, str) and HUB_ID.match(f"{org}/{stem}") else None


def datasets_of(cfg: dict, override: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The data the run used, by name: a Hub dataset's id, local files by their file names (not the
    `datasets` builder, json/parquet/csv, that read them), a built-in task by its name."""
    if override:
        return list(override)
    from pipelines.tasks import find

    task = cfg.get("task", {})
    known = find(task.get("name", ""))  # None: a run of a task this version no longer has
    out: list[str] = known.datasets(task) if known else []
    return list(dict.fromkeys(out)) or [task.get("dataset") or task.get("name", "unknown")]


def eval_results(stage_report: dict, cfg: dict) -> list[EvalResult]:
    """model-index entries from one stage of report.json: greedy held-out accuracy, and pass@k / maj@k
    (either `{"pass@k": {k: v}}` as the eval stage writes them, or flat `"pass@4": v` keys)."""
    task = cfg.get("task", {})
    name = datasets_of(cfg)[0]
    common = {"task_type": "text-generation", "dataset_type": name, "dataset_split": "heldout",
              "dataset_name": f"{name} held-out split ({task.get('num_heldout', '?')} problems, never trained on)"}
    out = []
    if isinstance(stage_report.get("accuracy"), (int, float)):
        out.append(EvalResult(metric_type="accuracy", metric_value=float(stage_report["accuracy"]),
                              metric_name="held-out accuracy (greedy pass@1)", **common))
    for metric in ("pass", "maj"):
        values = stage_report.get(f"{metric}@k")
        flat = {int(k.split("@")[1]): v for k, v in stage_report.items() if re.fullmatch(rf"{metric}@\d+", k)}
        for k, v in sorted({**{int(k): v for k, v in (values or {}).items()}, **flat}.items()):
            if isinstance(v, (int, float)):
                out.append(EvalResult(metric_type=f"{metric}@{k}", metric_value=float(v),
                                      metric_name=f"held-out {metric}@{k}", **common))
    return out


def results_table(report: dict, stage: str) -> str:
    rows = ["| stage | params | held-out acc (greedy pass@1) |", "|---|---|---|"]
    for name, m in report.get("stages", {}).items():
        if not isinstance(m.get("accuracy"), (int, float)):
            continue
        cells = [name, f"{m.get('params', 0):,}", f"{100 * m['accuracy']:.1f} %"]
        if name == stage:
            cells = [f"**{c}**" for c in cells]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) if len(rows) > 2 else ""


def build_card(*, repo: str, run: str, stage: str, cfg: dict, report: dict | None, evaluated: bool,
               plots: list[str], recipe: str, note: str = "", base_model: str = "",
               datasets: tuple[str, ...] = (), example: str = "", adapter_base: str = "") -> ModelCard:
    """The card for checkpoint `stage` of run `run`; `evaluated` = its results are the report's; `example`:
    the question the Use section's code asks (a held-out question of the run).
    `adapter_base`: the card is for a LoRA adapter of that model (PEFT; its `base_model` when a Hub id)."""
    found = stage_named(stage)  # None: a stage this version no longer has (its card says its name alone)
    stage_report = (report or {}).get("stages", {}).get(stage, {}) if evaluated else {}
    results = eval_results(stage_report, cfg) if stage_report else []
    model_name = f"{run}-{stage}" + ("-lora" if adapter_base else "")
    # An adapter's base is the exact model it applies to (a Hub id or nothing), not the run's lineage.
    base = (adapter_base if HUB_ID.match(adapter_base) and not Path(adapter_base).exists() else None) \
        if adapter_base else base_model_of(cfg, stage, base_model)
    data = ModelCardData(
        model_name=model_name, base_model=base, datasets=datasets_of(cfg, datasets),
        tags=["rayzero", "reasoning", "trl", *(found.card_tags if found else ()), *(["lora", "peft"] if adapter_base else [])],
        library_name="peft" if adapter_base else "transformers", pipeline_tag="text-generation",
        eval_results=results or None,
    )
    if results:
        text = "; ".join(f"{r.metric_name}: {100 * r.metric_value:.1f} %" for r in results)
        results_text = f"This checkpoint, on the task's held-out split: {text}. All stages of the run:"
    elif report:
        results_text = "This checkpoint was not evaluated itself. The finished stages of the run:"
    else:
        results_text = "No run report was found next to this checkpoint; no results to show."
    results_text += contamination_line((report or {}).get("data", {}).get("contamination"))
    description = (f"A {stage_report.get('params', 0):,}-parameter causal language model."
                   if stage_report.get("params") else "A causal language model.")
    if adapter_base:
        description = f"A LoRA adapter (PEFT) for `{adapter_base}`" + (
            f"; the adapted model has {stage_report['params']:,} parameters." if stage_report.get("params") else ".")
    return ModelCard.from_template(
        data, template_str=TEMPLATE, model_name=model_name, description=description, run=run, stage=stage,
        stage_text=(found and found.card_text) or stage, note=note, results_text=results_text,
        results_table=results_table(report or {}, stage if evaluated else ""), repo=repo,
        plots=[(Path(p).stem.replace("_", " "), p) for p in plots], recipe=recipe.strip(), adapter_base=adapter_base,
        use_text=use_text(cfg) + f" Started from {base_model_text(cfg, stage)}.",
        use_code=use_code(cfg, example or DEFAULT_QUESTION),
    )


def contamination_line(c: dict | None) -> str:
    """One sentence on the run's contamination check (report.json data.contamination), or nothing."""
    if not c:
        return ""
    dropped, near = sum(c["exact_duplicates_dropped"].values()), sum(c["near_duplicates"].values())
    return (f"\n\nContamination check of the training data against {', '.join(c['against'])}: {dropped} exact "
            f"duplicates dropped, {near} near-duplicates ({c['ngram']}-gram overlap) kept (report.json data.contamination).")


def recipe_text(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
