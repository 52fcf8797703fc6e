"""Config dataclasses are the CLI flags, the YAML schema and the saved record of a run:
precedence defaults < YAML < flags, exact error texts, and a lossless round trip."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from alignkit.cli import STAGES, build_parser, main
from alignkit.config import (DemoConfig, SFTConfig, TinyModelConfig, add_config_flags,
                             build_config, config_to_dict, flag_name, read_yaml_overrides,
                             save_config)
from alignkit.errors import UserError

pytestmark = pytest.mark.unit

CLASSES = [SFTConfig, DemoConfig, TinyModelConfig]


def stage_parser(stage: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[stage]


def parse(stage: str, argv: list[str]):
    return build_parser().parse_args([stage, *argv])


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
    # unknown flags are reported by the top-level parser ("alignkit: error: ...")
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
              chat="never", model="null", output="yes", lora_targets="q_proj", seed=-1,
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
