"""Config dataclasses are the CLI flags, the YAML schema and the saved record of a run:
precedence defaults < YAML < flags, exact error texts, and a lossless round trip."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from alignkit.cli import STAGES, build_parser, main
from alignkit.config import (DemoConfig, PPOConfig, Range, SFTConfig, TinyModelConfig,
                             add_config_flags, build_config, config_to_dict, field_range,
                             flag_name, opt, range_problems, read_yaml_overrides, save_config)
from alignkit.errors import UserError

pytestmark = pytest.mark.unit

CLASSES = [SFTConfig, DemoConfig, TinyModelConfig]


def stage_parser(stage: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[stage]


def parse(stage: str, argv: list[str]):
    return build_parser().parse_args([stage, *argv])


def required(cls) -> dict[str, str]:
    """A value for every option the command line must give (a model folder, say)."""
    return {f.name: f"given-{f.name}" for f in dataclasses.fields(cls)
            if f.metadata.get("required")}


def required_flags(stage: str) -> list[str]:
    return [x for name, value in required(STAGES[stage][0]).items()
            for x in (flag_name(name), value)]


def field_types(cls) -> dict[str, type]:
    import typing

    hints = typing.get_type_hints(cls)
    out = {}
    for name, tp in hints.items():
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        out[name] = args[0] if args and typing.get_origin(tp) is typing.Union else tp
    return out


# ---------------------------------------------------------------------------------------------
# flags


def test_flag_name():
    assert flag_name("max_grad_norm") == "--max-grad-norm"
    assert flag_name("lr") == "--lr"


@pytest.mark.parametrize("cls", CLASSES)
def test_every_field_has_a_flag(cls):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, cls)
    by_flag = {s: a for a in parser._actions for s in a.option_strings}
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        action = by_flag[flag_name(f.name)]
        assert action.dest == f.name
        assert action.default is argparse.SUPPRESS
        if types[f.name] is bool:
            assert "--no-" + flag_name(f.name)[2:] in by_flag
        else:
            assert action.type is types[f.name]
            assert action.choices == f.metadata.get("choices")
    # nothing typed -> nothing set, so YAML values are not overridden by flag defaults
    assert vars(parser.parse_args([])) == {}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_parser_has_every_field(stage):
    cls = STAGES[stage][0]
    flags = {s for a in stage_parser(stage)._actions for s in a.option_strings}
    assert "--config" in flags
    for f in dataclasses.fields(cls):
        assert flag_name(f.name) in flags


def test_flag_values_are_typed():
    args = parse("sft", ["--lr", "0.5", "--batch-size", "4", "--data", "d.jsonl", "--no-packing",
                         "--lora", "--schedule", "linear", "--eval-fraction", "0"])
    assert vars(args) == {"stage": "sft", "config": None, "lr": 0.5, "batch_size": 4,
                          "data": "d.jsonl", "packing": False, "lora": True,
                          "schedule": "linear", "eval_fraction": 0.0}


@pytest.mark.parametrize("argv", [["--batch-size", "four"], ["--lr", "x"],
                                  ["--schedule", "bogus"], ["--chat", "sometimes"],
                                  ["--precision", "fp16"], ["--no-such-flag", "1"]])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse("sft", argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sft", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    types = field_types(SFTConfig)
    for f in dataclasses.fields(SFTConfig):
        assert flag_name(f.name) in out, f.name
        if types[f.name] is bool:
            assert "--no-" + flag_name(f.name)[2:] in out, f.name
    assert "--config FILE.yaml" in out
    assert "(default: runs/sft)" in out


def test_no_stage_prints_help(capsys):
    assert main([]) == 0
    assert "<stage>" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# defaults < YAML < flags


def test_defaults():
    cfg = build_config(SFTConfig, parse("sft", []))
    assert cfg == SFTConfig()
    assert (cfg.data, cfg.output, cfg.lr, cfg.packing, cfg.chat, cfg.lora) == (
        None, "runs/sft", 2e-5, True, "auto", False)
    demo = build_config(DemoConfig, parse("demo", []))
    assert (demo.data, demo.lora, demo.lr, demo.max_steps, demo.output, demo.eval_fraction) == (
        "demo", True, 1e-3, 60, "runs/demo", 0.1)


def test_precedence_defaults_yaml_flags(in_tmp):
    (in_tmp / "run.yaml").write_text(
        "# a comment\n"
        "lr: 0.001\n"
        "batch_size: 4\n"
        "packing: false\n"
        "max-steps: 7\n"          # hyphenated keys are accepted too
        "data: from_yaml.jsonl\n"
        "eval_data: null\n", encoding="utf-8")
    cfg = build_config(SFTConfig, parse("sft", ["--config", "run.yaml", "--batch-size", "2",
                                                "--data", "from_flag.jsonl"]))
    assert cfg.lr == 0.001                 # YAML over default
    assert cfg.batch_size == 2             # flag over YAML
    assert cfg.data == "from_flag.jsonl"   # flag over YAML
    assert cfg.packing is False            # YAML over default
    assert cfg.max_steps == 7
    assert cfg.eval_data is None
    assert cfg.seed == 42                  # default
    assert isinstance(cfg.lr, float) and isinstance(cfg.batch_size, int)
    # a flag that re-enables a boolean the YAML turned off
    cfg = build_config(SFTConfig, parse("sft", ["--config", "run.yaml", "--packing"]))
    assert cfg.packing is True
    # `extra` (used by recipes) wins over everything
    cfg = build_config(SFTConfig, parse("sft", ["--config", "run.yaml", "--lr", "0.5"]),
                       extra={"lr": 0.25})
    assert cfg.lr == 0.25


@pytest.mark.parametrize("text,expected", [
    ("lr: 1\n", {"lr": 1.0}),
    ("lr: 1e-3\n", {"lr": 0.001}),            # YAML 1.1 reads this as a string; coerced
    ("batch_size: '8'\n", {"batch_size": 8}),
    ("packing: 'no'\n", {"packing": False}),
    ("packing: yes\n", {"packing": True}),
    ("lora: 'TRUE'\n", {"lora": True}),
    ("model: 123\n", {"model": "123"}),
    ("data: ~\n", {"data": None}),
    ("", {}),
])
def test_yaml_values_are_coerced(in_tmp, text, expected):
    (in_tmp / "c.yaml").write_text(text, encoding="utf-8")
    got = read_yaml_overrides(SFTConfig, "c.yaml")
    assert got == expected
    assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]


# ---------------------------------------------------------------------------------------------
# YAML errors name file, line and option


@pytest.mark.parametrize("text,message", [
    ("lr: 0.1\nseed: 1\nlearning_rate: 3\n",
     "c.yaml:3: option 'learning_rate' is not an option of this stage (see --help)"),
    ("lr: 0.1\nbatch_size: four\n", "c.yaml:2: option 'batch_size': expected an integer, got 'four'"),
    ("batch_size: 2.5\n", "c.yaml:1: option 'batch_size': expected an integer, got 2.5"),
    ("batch_size: true\n", "c.yaml:1: option 'batch_size': expected an integer, got True"),
    ("\n\nlr: fast\n", "c.yaml:3: option 'lr': expected a number, got 'fast'"),
    ("lr: [1, 2]\n", "c.yaml:1: option 'lr': expected a number, got [1, 2]"),
    ("lr: false\n", "c.yaml:1: option 'lr': expected a number, got False"),
    ("packing: maybe\n", "c.yaml:1: option 'packing': expected true or false, got 'maybe'"),
    ("packing: 1\n", "c.yaml:1: option 'packing': expected true or false, got 1"),
    ("model: {a: 1}\n", "c.yaml:1: option 'model': expected a string, got {'a': 1}"),
    ("seed: 1\nmodel:\n", "c.yaml:2: option 'model': must not be empty"),
    ("- lr\n- seed\n", "c.yaml: expected a mapping of option: value"),
    ("lr: 1\nseed: [1, 2\nbatch_size: 3\n",
     "c.yaml:3: not valid YAML (expected ',' or ']', but got ':')"),
    ("lr: 1\n  seed: 2\n", "c.yaml:2: not valid YAML (mapping values are not allowed here)"),
])
def test_yaml_errors(in_tmp, text, message):
    (in_tmp / "c.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        build_config(SFTConfig, parse("sft", ["--config", "c.yaml"]))
    assert str(info.value) == message


def test_yaml_option_of_another_stage(in_tmp):
    (in_tmp / "c.yaml").write_text("samples: 3\n", encoding="utf-8")
    assert build_config(DemoConfig, parse("demo", ["--config", "c.yaml"])).samples == 3
    with pytest.raises(UserError) as info:
        build_config(SFTConfig, parse("sft", ["--config", "c.yaml"]))
    assert str(info.value) == "c.yaml:1: option 'samples' is not an option of this stage (see --help)"


def test_yaml_bad_choice(in_tmp):
    (in_tmp / "c.yaml").write_text("schedule: bogus\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        build_config(SFTConfig, parse("sft", ["--config", "c.yaml"]))
    assert str(info.value) == "option 'schedule': 'bogus' is not one of cosine, linear, constant"


def test_missing_config_file(in_tmp):
    with pytest.raises(UserError) as info:
        build_config(SFTConfig, parse("sft", ["--config", "nope.yaml"]))
    assert str(info.value) == "nope.yaml: config file not found"


def test_cli_bad_yaml_exits_2(in_tmp, capsys):
    (in_tmp / "c.yaml").write_text("lr: 0.1\nbatch_size: four\n", encoding="utf-8")
    assert main(["sft", "--config", "c.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("alignkit sft: error: c.yaml:2: option 'batch_size': expected an "
                        "integer, got 'four'\n")
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# the saved config


@pytest.mark.parametrize("cfg", [
    SFTConfig(),
    SFTConfig(lr=0.001, batch_size=3, data="x.jsonl", eval_data="123", packing=False,
              chat="never", model="null", output="yes", lora_targets="q_proj", seed=0,
              eval_fraction=1e-10, epochs=2.5),
    DemoConfig(quick=True, samples=2),
    TinyModelConfig(output="tiny", hidden_size=32),
])
def test_save_config_round_trips(tmp_path, cfg):
    cls = type(cfg)
    path = save_config(cfg, tmp_path / "run" / "out")
    assert path == tmp_path / "run" / "out" / "config.yaml"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]  # no temp file left
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert raw == config_to_dict(cfg) == dataclasses.asdict(cfg)
    assert list(raw) == [f.name for f in dataclasses.fields(cls)]
    assert read_yaml_overrides(cls, str(path)) == dataclasses.asdict(cfg)
    assert build_config(cls, argparse.Namespace(config=str(path))) == cfg


def test_saved_config_can_be_given_back_with_flags(tmp_path):
    cfg = SFTConfig(lr=0.001, data="x.jsonl")
    path = save_config(cfg, tmp_path)
    again = build_config(SFTConfig, parse("sft", ["--config", str(path), "--seed", "5"]))
    assert again == dataclasses.replace(cfg, seed=5)


def varied(cls):
    """A config of ``cls`` with every field off its default (still valid), so that a round trip
    that dropped or retyped any field would show."""
    types, values = field_types(cls), {}
    for f in dataclasses.fields(cls):
        tp, default = types[f.name], f.default
        if f.metadata.get("choices"):
            values[f.name] = next((c for c in f.metadata["choices"] if c != default), default)
        elif tp is bool:
            values[f.name] = not default if default is not None else True
        elif tp in (int, float):
            rng = field_range(cls, f.name)
            start = default if default is not None else 1
            candidates = [start + 1, start - 1, start / 2, 0.5, 1] if tp is float else \
                [start + 1, start - 1, 1, 0]
            values[f.name] = next(tp(v) for v in candidates
                                  if tp(v) != default and rng.allows(tp(v)))
        else:
            values[f.name] = f"{default or 'x'}-2"
    cfg = cls(**values)
    assert range_problems(cfg) == []
    assert all(getattr(cfg, f.name) != f.default for f in dataclasses.fields(cls)
               if len(f.metadata.get("choices") or "ab") > 1)
    return cfg


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("variant", ["defaults", "varied"])
def test_every_stage_config_round_trips_through_config_flag(tmp_path, stage, variant):
    """``save_config`` writes what ``--config`` reads back into the same resolved config."""
    cls = STAGES[stage][0]
    cfg = cls(**required(cls)) if variant == "defaults" else varied(cls)
    path = save_config(cfg, tmp_path)
    assert build_config(cls, parse(stage, ["--config", str(path)])) == cfg


# ---------------------------------------------------------------------------------------------
# allowed ranges of numeric options


@pytest.mark.parametrize("rng,desc,good,bad", [
    (Range(low=1), ">= 1", [1, 7, 10**9], [0, -1]),
    (Range(low=0, low_open=True), "> 0", [1e-12, 3.0], [0.0, -1.0, float("nan"), float("inf")]),
    (Range(0, 1, high_open=True), "in [0, 1)", [0.0, 0.5], [1.0, -0.1, float("nan")]),
    (Range(0, 1, low_open=True), "in (0, 1]", [1.0, 0.01], [0.0, 1.5]),
    (Range(low=1, also=(-1,)), "-1 or >= 1", [-1, 1, 5], [0, -2]),
    (Range(low=0, inf=True), ">= 0", [0.0, float("inf")], [float("-inf"), float("nan"), -1.0]),
    (Range(), "", [-5.0, 0.0, 1e300], [float("nan"), float("inf"), float("-inf")]),
])
def test_range_allows_and_describes(rng, desc, good, bad):
    assert rng.describe() == desc
    assert [rng.allows(v) for v in good] == [True] * len(good)
    assert [rng.allows(v) for v in bad] == [False] * len(bad)


def test_opt_builds_a_range():
    assert opt(1, "x", ge=1).metadata["range"] == Range(low=1)
    assert opt(0.5, "x", gt=0, le=1).metadata["range"] == Range(0, 1, low_open=True)
    assert opt(-1, "x", ge=1, also=(-1,)).metadata["range"] == Range(low=1, also=(-1,))
    assert opt(0.0, "x", unbounded=True).metadata["range"] == Range()
    assert opt("a", "x").metadata["range"] is None
    with pytest.raises(TypeError):
        opt(1, "x", ge=0, gt=0)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_numeric_field_declares_a_range_and_defaults_fit(stage):
    cls = STAGES[stage][0]
    types = field_types(cls)
    numeric = [f.name for f in dataclasses.fields(cls) if types[f.name] in (int, float)]
    assert [n for n in numeric if field_range(cls, n) is None] == []
    assert range_problems(cls()) == []


def test_redefined_field_keeps_the_base_range():
    # DemoConfig gives lr / max_steps only other defaults (its DEFAULTS)
    assert field_range(DemoConfig, "lr") == field_range(SFTConfig, "lr") == Range(0, low_open=True)
    assert field_range(DemoConfig, "max_steps") == Range(low=1, also=(-1,))
    # PPO's max_steps means rollout batches: no -1
    assert field_range(PPOConfig, "max_steps") == Range(low=1)


@pytest.mark.parametrize("stage,argv,message", [
    ("sft", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ("sft", ["--grad-accum", "0"], "--grad-accum must be >= 1, got 0"),
    ("sft", ["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    ("sft", ["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    ("sft", ["--max-steps", "0"], "--max-steps must be -1 or >= 1, got 0"),
    ("sft", ["--eval-fraction", "1"], "--eval-fraction must be a finite number in [0, 1), got 1.0"),
    ("demo", ["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    ("ppo", ["--max-steps", "-1"], "--max-steps must be >= 1, got -1"),
    ("ppo", ["--top-p", "0"], "--top-p must be a finite number in (0, 1], got 0.0"),
    ("ppo", ["--kl-budget", "nan"], "--kl-budget must be >= 0, got nan"),
    ("ppo", ["--kl-budget=-inf"], "--kl-budget must be >= 0, got -inf"),
    ("online-dpo", ["--min-margin", "inf"], "--min-margin must be a finite number, got inf"),
    ("serve", ["--port", "65536"], "--port must be in [0, 65535], got 65536"),
    ("sft", ["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    ("sft", ["--epochs", "inf", "--batch-size", "0"],  # reported in field order
     "--batch-size must be >= 1, got 0; --epochs must be a finite number > 0, got inf"),
])
def test_out_of_range_flag_names_flag_and_range(stage, argv, message):
    with pytest.raises(UserError) as info:
        build_config(STAGES[stage][0], parse(stage, argv))
    assert str(info.value) == message


@pytest.mark.parametrize("stage,argv", [
    ("ppo", ["--kl-budget", "inf", "--length-drift", "inf"]),  # inf: never warn
    ("ppo", ["--uncertainty-penalty", "0"]),
    ("online-dpo", ["--min-margin", "-1"]),
    ("sft", ["--max-steps", "-1", "--eval-fraction", "0", "--seed", "4294967295"]),
])
def test_in_range_flags_are_accepted(stage, argv):
    build_config(STAGES[stage][0], parse(stage, [*required_flags(stage), *argv]))


def test_out_of_range_yaml_names_file_line_and_option(in_tmp):
    (in_tmp / "c.yaml").write_text("seed: 1\nbatch_size: 0\nmax-steps: 0\nlr: .nan\n"
                                   "weight_decay: -inf\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        build_config(SFTConfig, parse("sft", ["--config", "c.yaml"]))
    assert str(info.value) == (
        "c.yaml:4: option 'lr' must be a finite number > 0, got nan; "
        "c.yaml:5: option 'weight_decay' must be a finite number >= 0, got -inf; "
        "c.yaml:2: option 'batch_size' must be >= 1, got 0; "
        "c.yaml:3: option 'max-steps' must be -1 or >= 1, got 0")
    # a flag that replaces the bad values leaves nothing to complain about
    cfg = build_config(SFTConfig, parse("sft", ["--config", "c.yaml", "--batch-size", "2",
                                                "--max-steps", "3", "--lr", "0.1",
                                                "--weight-decay", "0"]))
    assert (cfg.batch_size, cfg.max_steps, cfg.lr, cfg.weight_decay) == (2, 3, 0.1, 0.0)
    # and a flag's bad value is named as the flag, though the YAML file set it too
    with pytest.raises(UserError, match=r"^--batch-size must be >= 1, got 0$"):
        build_config(SFTConfig, parse("sft", ["--config", "c.yaml", "--batch-size", "0",
                                              "--max-steps", "3", "--lr", "0.1",
                                              "--weight-decay", "0"]))


def test_out_of_range_extra_is_named_as_option():
    with pytest.raises(UserError, match=r"^option 'batch_size' must be >= 1, got 0$"):
        build_config(SFTConfig, parse("sft", []), extra={"batch_size": 0})


@pytest.mark.parametrize("argv,line", [
    (["sft", "--batch-size", "0"], "alignkit sft: error: --batch-size must be >= 1, got 0\n"),
    (["sft", "--lr", "-1"], "alignkit sft: error: --lr must be a finite number > 0, got -1.0\n"),
    (["annotate", "add-tasks", "--top-p", "1.5"],
     "alignkit annotate-add-tasks: error: --top-p must be a finite number in (0, 1], got 1.5\n"),
])
def test_cli_out_of_range_exits_2_with_one_line(argv, line, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == line


def test_help_shows_the_allowed_range(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "(default: -1; allowed: -1 or >= 1)" in out
    assert "(default: 0.05; allowed: in [0, 1))" in out
    assert "(default: 8; allowed: >= 1)" in out


# ---------------------------------------------------------------------------------------------
# the demo's sub-stages write configs their own stage loads


def demo_sub_configs(cfg: DemoConfig, root) -> dict:
    from alignkit.recipes import demo

    return {"sft": demo.sft_config_from_demo(cfg, root),
            "reward": demo.reward_config_from_demo(cfg, root, root / "prefs.jsonl"),
            "ppo": demo.ppo_config_from_demo(cfg, root, root / "sft" / "final",
                                             root / "reward" / "final"),
            "dpo": demo.dpo_config_from_demo(cfg, root, root / "sft" / "final",
                                             root / "prefs.jsonl")}


@pytest.mark.parametrize("demo_cfg", [
    DemoConfig(),
    DemoConfig(quick=True, samples=1, max_steps=-1, epochs=0.5, seed=7, lora_r=4, ppo_steps=1,
               ppo_batch_size=1, dpo_steps=1, compare_prompts=1, progress=False,
               device="cpu", precision="fp32"),
])
def test_demo_sub_stage_configs_load_with_their_own_stage(tmp_path, demo_cfg):
    root = tmp_path / "demo"
    for stage, sub in demo_sub_configs(demo_cfg, root).items():
        cls = STAGES[stage][0]
        assert type(sub) is cls
        assert range_problems(sub) == []
        path = save_config(sub, tmp_path / stage)
        assert build_config(cls, parse(stage, ["--config", str(path)])) == sub, stage
    sft_cfg = demo_sub_configs(demo_cfg, root)["sft"]
    # stage 1 is the demo's own SFT settings, under <output>/sft
    shared = {f.name for f in dataclasses.fields(SFTConfig)} - {"output"}
    assert {n: getattr(sft_cfg, n) for n in shared} == {n: getattr(demo_cfg, n) for n in shared}
    assert sft_cfg.output == str(root / "sft")


def test_demo_passes_an_sft_config_to_stage_1(tmp_path, monkeypatch):
    """What ``alignkit demo`` hands stage 1 (intercepted before any training)."""
    from alignkit.recipes import demo

    class Stop(Exception):
        pass

    def fake_sft_main(cfg):
        seen.append(cfg)
        raise Stop

    seen = []
    monkeypatch.setattr(demo, "resolve_model", lambda model: None)
    monkeypatch.setattr(demo, "load_model_and_tokenizer", lambda *a, **k: (None, None))
    monkeypatch.setattr(demo, "generate", lambda *a, **k: [])
    monkeypatch.setattr(demo.sft, "main", fake_sft_main)
    cfg = DemoConfig(output=str(tmp_path / "d"), device="cpu")
    with pytest.raises(Stop):
        demo.main(cfg)
    (sft_cfg,) = seen
    assert type(sft_cfg) is SFTConfig
    path = save_config(sft_cfg, tmp_path / "saved")
    again = build_config(SFTConfig, parse("sft", ["--config", str(path)]))
    assert again == sft_cfg and again.lora is True and again.data == "demo"
