"""`rayzero eval`: which config and task it measures with, said in its first line; `--task` replaces the
run's task section whole (a task name, a recipe's section, or a mapping), `--limit N` takes the first N
problems; bad values are one line, exit 2."""

import yaml

from pipelines.config import TaskSection, load_config, to_dict
from pipelines.eval_cli import eval_config, main


def _run_folder(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    cfg = load_config("micro", ["run.name=r", "task.num_heldout=5", "task.max_value=9"])
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return run / "grpo"


def test_the_runs_config_and_task_and_where_they_come_from(tmp_path):
    ckpt = _run_folder(tmp_path)
    cfg, line = eval_config(ckpt, None, [])
    assert (cfg.task.num_heldout, cfg.task.max_value) == (5, 9)
    assert line == f"eval: config {ckpt.parent / 'config.yaml'} (the checkpoint's run); task arithmetic from the run's task section"
    cfg, line = eval_config(ckpt, None, ["task.num_heldout=3", "eval.samples=2"])
    assert cfg.task.num_heldout == 3 and line.endswith("; overrides: task.num_heldout, eval.samples")
    cfg, line = eval_config(tmp_path / "elsewhere" / "ckpt", None, [])
    assert "config recipe tiny (no config.yaml next to the checkpoint)" in line and cfg.task == load_config("tiny").task


def test_task_replaces_the_runs_task_section_whole(tmp_path):
    ckpt = _run_folder(tmp_path)
    cfg, line = eval_config(ckpt, "arithmetic", [])
    assert cfg.task == TaskSection(name="arithmetic")  # nothing of the run's task (num_heldout=5, max_value=9) kept
    assert "task arithmetic from --task arithmetic: its defaults" in line
    cfg, line = eval_config(ckpt, "micro", ["task.num_heldout=4"])
    assert cfg.task == load_config("micro", ["task.num_heldout=4"]).task
    assert "from --task micro: that recipe's task section; overrides: task.num_heldout" in line
    cfg, line = eval_config(ckpt, "{name: arithmetic, num_heldout: 7}", [])
    assert cfg.task.num_heldout == 7 and cfg.task.max_value == TaskSection().max_value and "the mapping given" in line


def test_bad_task_and_limit_are_one_line_exit_2(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    for argv, message in (
            ([str(ckpt), "--limit", "0"], "rayzero: error: --limit 0: must be >= 1 (problems to measure)"),
            ([str(ckpt), "--task", "no-such-task"], "rayzero: error: --task 'no-such-task': not a task (arithmetic, hf, "
                                                    "jsonl, reasoning_gym, human_eval, multiply), a recipe with a task section, "
                                                    "nor a mapping"),
            ([str(ckpt), "arithmetic", "--task", "micro"], "rayzero: error: TASK 'arithmetic' and --task 'micro': give the "
                                                           "task once (--task)")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err


def test_limit_and_task_on_a_checkpoint_outside_a_run(tmp_path, capsys):
    import json

    from rl.modeling import build_tiny_model, train_tokenizer

    ckpt = tmp_path / "ckpt"
    tok = train_tokenizer([f"Calculate {a} + {b}.\n<think>{a}+{b}={a + b}.</think><answer>{a + b}</answer>"
                           for a in range(10) for b in range(10)], 300)
    tok.save_pretrained(ckpt)
    build_tiny_model(tok, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position=256,
                     seed=0).save_pretrained(ckpt)
    out = tmp_path / "r.json"
    assert main([str(ckpt), "--task", "arithmetic", "task.num_heldout=10", "eval.max_new_tokens=4", "--limit", "3",
                 "--out", str(out)]) == 0
    # the first line of its own (DeepSpeed's import-time logging aside)
    first = next(x for x in capsys.readouterr().out.splitlines() if not x.startswith("[20"))
    assert first == ("eval: config recipe tiny (no config.yaml next to the checkpoint); task arithmetic from --task "
                     "arithmetic: its defaults; overrides: task.num_heldout, eval.max_new_tokens; the first 3 problems")
    assert json.loads(out.read_text())["num_examples"] == 3
