"""Every cache is keyed on everything its value is computed from: the DPO reference log-probs,
the HTTP judge's answers, the GGUF conversion and the benchmarks' tiny model. Identical inputs
give the identical key; changing any one input changes it, and a file whose key differs (or that
a killed writer left unfinished) is never used."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignkit.config import DPOConfig
from alignkit.data.preferences import PreferencePair, build_groups
from alignkit.data.tokenize import IGNORE
from alignkit.errors import UserError
from alignkit.judges.http import HTTPJudge, ResponseCache
from alignkit.models import loading
from alignkit.training import preference as dpo
from alignkit.training.engine import prepare_output

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- DPO reference


def pair_examples():
    return [PreferencePair("Say hi", "Hi! How can I help?", "Go away."),
            PreferencePair("Two plus two?", "Four.", "Twenty-two."),
            PreferencePair("Name a colour.", "Blue.", "Loud."),
            PreferencePair("Count to three.", "One, two, three.", "Three.")]


@pytest.fixture(scope="module")
def parts(tiny_tokenizer):
    from alignkit.models.tiny import build_tiny_model

    groups, problems = build_groups(pair_examples(), tiny_tokenizer, "policy", chat="always")
    assert not problems and len(groups) == 4
    model = build_tiny_model(tiny_tokenizer, seed=3).eval()
    # fp32 named: --precision auto is bf16 on CUDA, and the cases below change it
    cfg = DPOConfig(data="unused.jsonl", batch_size=2, max_length=512, precision="fp32")
    return model, groups[:3], groups[3:], cfg, tiny_tokenizer


def key_of(model, train, heldout, cfg, pad_id=0, device="cpu"):
    return dpo.reference_cache_key(model, train, heldout, cfg, pad_id, device)


def changed_parts(a: dict, b: dict) -> set[str]:
    return {part for part in a if a[part] != b[part]}


def test_reference_key_is_the_same_for_the_same_computation(parts, tiny_tokenizer):
    model, train, heldout, cfg, _ = parts
    key = key_of(model, train, heldout, cfg)
    assert key_of(model, train, heldout, cfg) == key
    # the same weights loaded from elsewhere, the same records tokenised again, an equal config
    twin = copy.deepcopy(model)
    twin.config._name_or_path = "/somewhere/else"
    again, _ = build_groups(pair_examples(), tiny_tokenizer, "policy", chat="always")
    assert key_of(twin, again[:3], again[3:], dataclasses.replace(cfg)) == key
    # the loss is not part of it: every loss reads the same summed log-probs
    assert key_of(model, train, heldout, dataclasses.replace(cfg, loss="ipo")) == key


def nudge_weight(model):
    """One weight moved by one float32 ulp."""
    model = copy.deepcopy(model)
    w = model.model.layers[-1].mlp.down_proj.weight.data
    w[3, 5] = torch.nextafter(w[3, 5], torch.tensor(float("inf")))
    return model


def nudge_buffer(model):
    model = copy.deepcopy(model)
    inv_freq = model.model.rotary_emb.inv_freq
    inv_freq[1] = inv_freq[1] * 1.001
    return model


def set_config(model, **values):
    model = copy.deepcopy(model)
    for k, v in values.items():
        setattr(model.config, k, v)
    return model


def edit(groups, g, field, i, pos, value):
    groups = copy.deepcopy(groups)
    getattr(groups[g], field)[i][pos] = value
    return groups


def first_target(group) -> int:
    return next(t for t, y in enumerate(group.targets[0]) if y != IGNORE)


# each: (name, function of the fixture parts -> (model, train, heldout, cfg), parts expected to
# change)
CHANGES = [
    ("one train token id", lambda m, tr, ho, c: (m, edit(tr, 1, "input_ids", 0, -2, 7), ho, c),
     {"data"}),
    ("one held-out token id", lambda m, tr, ho, c: (m, tr, edit(ho, 0, "input_ids", 1, 0, 9), c),
     {"data"}),
    ("one target", lambda m, tr, ho, c: (
        m, edit(tr, 0, "targets", 0, first_target(tr[0]), IGNORE), ho, c), {"data"}),
    ("a group moved to held-out (the split)", lambda m, tr, ho, c: (m, tr[:2], tr[2:] + ho, c),
     {"data"}),
    ("group order", lambda m, tr, ho, c: (m, tr[::-1], ho, c), {"data"}),
    ("a group's responses swapped", lambda m, tr, ho, c: (
        m, [dataclasses.replace(tr[0], input_ids=tr[0].input_ids[::-1],
                                targets=tr[0].targets[::-1])] + tr[1:], ho, c), {"data"}),
    ("one weight by one ulp", lambda m, tr, ho, c: (nudge_weight(m), tr, ho, c), {"reference"}),
    ("a buffer", lambda m, tr, ho, c: (nudge_buffer(m), tr, ho, c), {"reference"}),
    ("model config", lambda m, tr, ho, c: (set_config(m, rms_norm_eps=1e-5), tr, ho, c),
     {"reference"}),
    ("precision bf16", lambda m, tr, ho, c: (m, tr, ho, dataclasses.replace(c, precision="bf16")),
     {"numerics"}),
    ("packing off", lambda m, tr, ho, c: (m, tr, ho, dataclasses.replace(c, packing=False)),
     {"numerics"}),
    ("no shared prefix", lambda m, tr, ho, c: (
        m, tr, ho, dataclasses.replace(c, share_prefix=False)), {"numerics"}),
    ("pack length", lambda m, tr, ho, c: (m, tr, ho, dataclasses.replace(c, pack_length=256)),
     {"numerics"}),
    ("max length (the row capacity)", lambda m, tr, ho, c: (
        m, tr, ho, dataclasses.replace(c, max_length=1024)), {"numerics"}),
    ("batch size", lambda m, tr, ho, c: (m, tr, ho, dataclasses.replace(c, batch_size=3)),
     {"numerics"}),
]


@pytest.mark.parametrize("name, change, expected", CHANGES, ids=[c[0] for c in CHANGES])
def test_reference_key_changes_with_any_input(parts, name, change, expected):
    model, train, heldout, cfg, _ = parts
    before = key_of(model, train, heldout, cfg)
    after = key_of(*change(model, train, heldout, cfg))
    assert changed_parts(before, after) == expected


def test_reference_key_sees_device_pad_id_and_chat_and_max_length_effects(parts,
                                                                          tiny_tokenizer):
    model, train, heldout, cfg, tok = parts
    before = key_of(model, train, heldout, cfg)
    # CUDA: another device's arithmetic, and bf16 autocast under --precision auto
    cuda = key_of(model, train, heldout, dataclasses.replace(cfg, precision="auto"),
                  device="cuda")
    assert cuda["numerics"]["device"] == "cuda" and cuda["numerics"]["bf16_autocast"] is True
    assert changed_parts(before, cuda) == {"numerics"}
    assert changed_parts(before, key_of(model, train, heldout, cfg, pad_id=5)) == {"numerics"}
    # --chat never renders the same records into other token ids
    plain, _ = build_groups(pair_examples(), tok, "policy", chat="never")
    assert plain[0].input_ids != train[0].input_ids
    assert changed_parts(before, key_of(model, plain[:3], plain[3:], cfg)) == {"data"}
    # a --max-length that rejects a record leaves other groups (same options otherwise)
    longest = max(len(ids) for g in train + heldout for ids in g.input_ids)
    short, problems = build_groups(pair_examples(), tok, "policy", chat="always",
                                   max_length=longest - 1)
    assert len(problems) >= 1 and len(short) < 4
    assert "data" in changed_parts(before, key_of(model, short[:3], short[3:], cfg))


def test_lora_reference_key_ignores_adapters_but_not_base_weights(parts):
    from alignkit.models.lora import add_lora

    model, train, heldout, cfg, _ = parts
    lora = add_lora(copy.deepcopy(model), 4, 8, 0.0, "q_proj,v_proj")
    before = key_of(lora, train, heldout, cfg)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_A" in name:
                p.add_(1.0)  # the reference runs with adapters disabled: not its computation
    assert key_of(lora, train, heldout, cfg) == before
    with torch.no_grad():
        lora.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight[0, 0] += 1e-3
    assert changed_parts(before, key_of(lora, train, heldout, cfg)) == {"reference"}


def test_cached_reference_reuses_only_its_own_computation(parts, tmp_path, monkeypatch,
                                                          caplog):
    model, train, heldout, cfg, _ = parts
    calls = []
    real = dpo.reference_logps

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dpo, "reference_logps", counting)
    caplog.set_level(logging.INFO, logger="alignkit.dpo")
    first = dpo.cached_reference(model, train, heldout, cfg, 0, "cpu", tmp_path)
    assert len(calls) == 2  # train and held-out computed
    again = dpo.cached_reference(model, train, heldout, cfg, 0, "cpu", tmp_path)
    assert len(calls) == 2 and "reusing" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(first[0] + first[1], again[0] + again[1]))
    assert not (tmp_path / "reference_logps.pt.tmp").exists()

    # the same shapes (two responses per group, as many groups) from other token ids: recomputed
    other = edit(train, 0, "input_ids", 0, -2, 11)
    caplog.clear()
    changed = dpo.cached_reference(model, other, heldout, cfg, 0, "cpu", tmp_path)
    assert len(calls) == 4
    assert "recomputing" in caplog.text and "the data" in caplog.text
    assert not torch.equal(changed[0][0], first[0][0]) and torch.equal(changed[0][1], first[0][1])

    # a file of the old format (keyed on shapes only) is not trusted
    torch.save({"shapes": ([2, 2, 2], [2]), "train": first[0], "heldout": first[1]},
               tmp_path / "reference_logps.pt")
    caplog.clear()
    dpo.cached_reference(model, train, heldout, cfg, 0, "cpu", tmp_path)
    assert len(calls) == 6 and "older alignkit" in caplog.text
    # precision: named in the message with the old and new value
    caplog.clear()
    dpo.cached_reference(model, train, heldout, dataclasses.replace(cfg, precision="bf16"), 0,
                         "cpu", tmp_path)
    assert len(calls) == 8 and "bf16_autocast False -> True" in caplog.text


def test_overwrite_removes_the_output_caches_and_resume_keeps_them(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("reference_logps.pt", "reference_logps.pt.tmp", "metrics.jsonl"):
        (out / name).write_text("x")
    cfg = DPOConfig(output=str(out), resume=True)
    prepare_output(cfg)
    assert (out / "reference_logps.pt").exists()
    prepare_output(dataclasses.replace(cfg, resume=False, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == []
    # a folder a killed run left with only its cache (nothing else marks an earlier run)
    (out / "reference_logps.pt").write_text("x")
    prepare_output(dataclasses.replace(cfg, resume=False, overwrite=True))
    assert not (out / "reference_logps.pt").exists()


# ----------------------------------------------------------------------------- HTTP judge

URL = "http://127.0.0.1:9/v1"  # a dead port: nothing here sends a request


def judge_body(**kw):
    url = kw.pop("url", URL)
    model = kw.pop("model", "judge-7b")
    judge = HTTPJudge(url, model, **kw)
    return judge.request_body("Q", "answer x", "answer y"), judge.base_url


def test_judge_cache_key_is_the_same_for_the_same_request():
    body, endpoint = judge_body()
    same, same_endpoint = judge_body(url=URL + "/chat/completions")  # the same endpoint
    assert same_endpoint == endpoint
    assert ResponseCache.key(same, same_endpoint) == ResponseCache.key(body, endpoint)
    reordered = dict(reversed(list(body.items())))
    assert ResponseCache.key(reordered, endpoint) == ResponseCache.key(body, endpoint)


@pytest.mark.parametrize("change", [
    {"model": "judge-13b"}, {"model": ""}, {"temperature": 0.7}, {"max_tokens": 17},
    {"logprobs": False}, {"top_logprobs": 6}, {"principle": "Prefer the shorter answer."},
    {"url": "http://127.0.0.1:10/v1"}, {"url": "https://api.example.com/v1"},
])
def test_judge_cache_key_changes_with_what_changes_the_answer(change):
    body, endpoint = judge_body()
    other, other_endpoint = judge_body(**change)
    assert ResponseCache.key(other, other_endpoint) != ResponseCache.key(body, endpoint)


def test_judge_cache_key_covers_every_field_sent():
    body, endpoint = judge_body()
    base = ResponseCache.key(body, endpoint)
    messages = copy.deepcopy(body["messages"])
    messages[-1]["content"] = messages[-1]["content"].replace("answer y", "answer z")
    assert ResponseCache.key({**body, "messages": messages}, endpoint) != base
    assert ResponseCache.key({**body, "seed": 1}, endpoint) != base


def test_two_endpoints_sharing_a_cache_folder_get_their_own_answers(tmp_path):
    # an unnamed model: the body is the same, only the URL says which server answers
    a = HTTPJudge("http://127.0.0.1:9/v1", "", cache_dir=str(tmp_path))
    b = HTTPJudge("http://127.0.0.1:10/v1", "", cache_dir=str(tmp_path))
    body = a.request_body("Q", "x", "y")
    assert b.request_body("Q", "x", "y") == body
    a.cache.put(body, "A")
    assert a.cache.read(body).text == "A"
    assert b.cache.read(body) is None
    # a file at the right name holding another request is no answer to this one
    path = b.cache.path(body)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"endpoint": b.base_url, "request": {**body, "max_tokens": 1},
                                "text": "B"}))
    assert b.cache.read(body) is None
    path.write_text(json.dumps({"endpoint": b.base_url, "request": body, "text": "B"}))
    assert b.cache.read(body).text == "B"


# ----------------------------------------------------------------------------- GGUF conversion


def fake_gguf(path: Path, fill: bytes = b"\x01") -> Path:
    path.write_bytes(b"GGUF" + fill * 4096 + b"tail")
    return path


def test_conversion_key_is_the_file_content_not_its_name_or_times(tmp_path, monkeypatch):
    a = fake_gguf(tmp_path / "a.gguf")
    key = loading.conversion_key(a)
    assert key == loading.conversion_key(a)
    # a copy elsewhere, with another modification time: the same content, the same key
    (tmp_path / "copy").mkdir()
    b = fake_gguf(tmp_path / "copy" / "b.gguf")
    os.utime(b, ns=(1, 1))
    assert loading.conversion_key(b) == key
    # one byte changed at the end (where a fine-tune differs), same size and times kept: a
    # size + mtime + head key would call this the same file
    st = a.stat()
    data = bytearray(a.read_bytes())
    data[-1] ^= 0xFF
    a.write_bytes(bytes(data))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert a.stat().st_size == st.st_size and a.stat().st_mtime_ns == st.st_mtime_ns
    changed = loading.conversion_key(a)
    assert changed["sha256"] != key["sha256"] and changed["size"] == key["size"]
    # the conversion code's version is part of it
    monkeypatch.setattr(loading, "CONVERSION_FORMAT", loading.CONVERSION_FORMAT + 1)
    assert loading.conversion_key(b)["format"] != key["format"]
    assert loading.conversion_key(b) != key


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """``_dequantise`` replaced by a fast fake that records each conversion (file content)."""
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    done = []

    def fake(gguf: Path, folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(gguf.read_bytes())
        done.append(gguf.read_bytes())

    monkeypatch.setattr(loading, "_dequantise", fake)
    return done


def test_cached_conversion_is_reused_only_for_the_same_file(tmp_path, fake_conversion):
    gguf = fake_gguf(tmp_path / "m.gguf")
    folder = Path(loading.resolve_model(str(gguf)))
    assert len(fake_conversion) == 1
    assert loading.converted_key(folder) == loading.conversion_key(gguf)
    assert loading.resolve_model(str(gguf)) == str(folder) and len(fake_conversion) == 1
    # new content of the same size, modification time set back: converted again, in place
    st = gguf.stat()
    fake_gguf(gguf, b"\x02")
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert loading.resolve_model(str(gguf)) == str(folder) and len(fake_conversion) == 2
    assert (folder / "model.safetensors").read_bytes() == gguf.read_bytes()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no leftovers


def test_an_unfinished_conversion_is_never_used(tmp_path, fake_conversion, monkeypatch):
    gguf = fake_gguf(tmp_path / "m.gguf")
    folder = Path(loading.resolve_model(str(gguf)))
    # the record is written last: a folder with weights and config but no record is unfinished
    (folder / loading.CONVERSION_RECORD).unlink()
    assert loading.converted_key(folder) is None
    loading.resolve_model(str(gguf))
    assert len(fake_conversion) == 2 and loading.converted_key(folder) is not None

    # a conversion that dies half-way leaves neither a target nor its build folder
    other = fake_gguf(tmp_path / "other.gguf", b"\x03")

    def dies(gguf: Path, tmp: Path) -> None:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed while writing the weights")

    monkeypatch.setattr(loading, "_dequantise", dies)
    with pytest.raises(RuntimeError):
        loading.resolve_model(str(other))
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]

    # a file still being written while it is converted: the key would not describe it
    def grows(gguf: Path, tmp: Path) -> None:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text("{}")
        with gguf.open("ab") as fh:
            fh.write(b"more")

    monkeypatch.setattr(loading, "_dequantise", grows)
    with pytest.raises(UserError, match="changed while it was being converted"):
        loading.resolve_model(str(other))
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]


def test_folders_of_killed_conversions_are_removed(tmp_path, fake_conversion):
    gguf = fake_gguf(tmp_path / "m.gguf")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid names a process that is gone
    models = tmp_path / "cache" / "models"
    target = Path(loading.resolve_model(str(gguf)))
    abandoned = models / f"{target.name}.tmp-{proc.pid}"
    abandoned.mkdir()
    (abandoned / "config.json").write_text("{}")
    mine = models / f"{target.name}.tmp-{os.getpid()}-x"  # not a conversion folder name
    mine.mkdir()
    (target / loading.CONVERSION_RECORD).unlink()
    loading.resolve_model(str(gguf))
    assert sorted(p.name for p in models.iterdir()) == sorted([target.name, mine.name])


# ----------------------------------------------------------------------------- bench tiny model


@pytest.fixture
def harness():
    spec = importlib.util.spec_from_file_location("bench_harness", REPO / "bench" / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SIZES = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


def test_bench_tiny_model_key_covers_sizes_seed_builder_and_corpus(harness, monkeypatch,
                                                                   tmp_path):
    import alignkit.models.tiny as tiny

    key = harness.tiny_model_key(SIZES)
    assert harness.tiny_model_key(dict(reversed(list(SIZES.items())))) == key
    assert harness.tiny_model_key({**SIZES, "hidden_size": 64}) != key
    assert harness.tiny_model_key(SIZES, seed=1) != key
    edited = tmp_path / "tiny.py"
    edited.write_text(Path(tiny.__file__).read_text() + "\n# an edit\n")
    monkeypatch.setattr(tiny, "__file__", str(edited))
    assert harness.tiny_model_key(SIZES)["builder"] != key["builder"]


def test_bench_tiny_model_is_rebuilt_when_unfinished(harness, monkeypatch, tmp_path):
    import alignkit.models.tiny as tiny

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    builds = []

    def fake_build(output, seed=0, **sizes):
        Path(output).mkdir(parents=True)
        (Path(output) / "config.json").write_text(json.dumps({**sizes, "seed": seed}))
        builds.append(seed)
        return Path(output)

    monkeypatch.setattr(tiny, "save_tiny_model", fake_build)
    folder = Path(harness.tiny_model_folder(SIZES))
    assert harness.tiny_model_folder(SIZES) == str(folder) and builds == [0]
    assert json.loads((folder / "alignkit-build.json").read_text()) == \
        json.loads(json.dumps(harness.tiny_model_key(SIZES)))
    (folder / "alignkit-build.json").unlink()  # as a killed build would leave it
    assert harness.tiny_model_folder(SIZES) == str(folder) and builds == [0, 0]
    assert Path(harness.tiny_model_folder(SIZES, seed=1)) != folder and builds == [0, 0, 1]
