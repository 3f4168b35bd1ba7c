"""``fsmtl doctor``: real imports, so missing and broken parts are told apart."""

from __future__ import annotations

import json
import sys

from fsmtl.cli import main as cli
from fsmtl.doctor import COMPONENTS, Component, check_component


def test_doctor_reports_devices_and_every_component(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert cli(["doctor", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["devices"]["cpu_count"] >= 1 and isinstance(doc["devices"]["cuda_available"], bool)
    assert [r["module"] for r in doc["components"]] == [c.module for c in COMPONENTS]
    assert {r["module"]: r["status"] for r in doc["components"]}["torch"] == "ok"
    assert "fsmtl train here:" in capsys.readouterr().out


def test_a_missing_and_a_broken_component_are_told_apart(tmp_path, monkeypatch):
    missing = check_component(Component("fsmtl_no_such_module", "fsmtl-no-such-dist", "nothing", "pip install it"))
    assert (missing["status"], missing["version"]) == ("missing", None)
    (tmp_path / "fsmtl_broken_mod.py").write_text("raise OSError('libfoo.so.1: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = check_component(Component("fsmtl_broken_mod", "fsmtl-no-such-dist", "nothing", "apt-get install libfoo"))
    assert broken["status"] == "broken" and "libfoo.so.1" in broken["detail"]
    sys.modules.pop("fsmtl_broken_mod", None)
