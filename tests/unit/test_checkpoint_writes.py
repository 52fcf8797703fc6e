"""A disk that fills while a checkpoint or final/ is written: a clear "the disk is full" error,
the partial temporary folder removed, and the earlier checkpoint and final/ untouched. The
writes go to ``/dev/full``, whose every write fails with the kernel's own ENOSPC."""

from __future__ import annotations

import pytest
import torch

from alignkit.errors import UserError
from alignkit.models import checkpoint as ckpt

pytestmark = pytest.mark.unit


def write_to_full_disk(*args, **kwargs):
    with open("/dev/full", "wb") as fh:  # ENOSPC on the flush
        fh.write(b"\0" * 65536)


@pytest.fixture
def parts(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_a_full_disk_during_a_checkpoint(parts, tmp_path, monkeypatch):
    model, optimizer, scheduler, _ = parts
    first = ckpt.save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {})
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    monkeypatch.setattr(torch, "save", write_to_full_disk)
    with pytest.raises(UserError, match=r"checkpoint of step 2 .*the disk is full"):
        ckpt.save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1"]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before


def test_a_full_disk_during_final(parts, tmp_path, monkeypatch):
    model, _, _, tokenizer = parts
    final, _ = ckpt.save_final(tmp_path, model, tokenizer)
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    monkeypatch.setattr(type(tokenizer), "save_pretrained", write_to_full_disk)
    with pytest.raises(UserError, match=r"final: cannot write it \(the disk is full\)"):
        ckpt.save_final(tmp_path, model, tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
