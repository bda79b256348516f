"""docs/server.md's reference tables follow the code: what a person reads to configure a pod or to chart it."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from trtop import names
from trtop.serve.settings import _OPTIONS, ServeSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def section(title: str) -> str:
    return DOC.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_every_setting_is_in_the_servers_settings_table_with_its_flag_and_variable() -> None:
    """docs/server.md's Settings table is what a person reads to configure a pod: a flag added here without a row
    there (or a variable renamed) is a setting nobody finds."""
    table = section("Settings")
    rows = [line for line in table.splitlines() if line.startswith("| `--")]
    documented = set()
    for line in rows:
        flags, variables = line.split("|")[1:3]
        documented |= set(zip(re.findall(r"`(--[a-z0-9-]+)`", flags), re.findall(r"`(TRTOP_[A-Z0-9_]+)`", variables),
                              strict=True))
    missing = [f"{flag} / {var}" for field, (flag, var, _) in _OPTIONS.items() if (flag, var) not in documented]
    assert not missing, f"not in docs/server.md's Settings table: {missing}"
    assert {f.name for f in fields(ServeSettings)} == set(_OPTIONS)  # every field has a flag and a variable


def test_every_metric_is_in_the_servers_metrics_table() -> None:
    """A series the server exports without a row in the Metrics table is one nobody charts or alerts on."""
    rows = [line for line in section("Metrics").splitlines() if line.startswith("| `trtop_")]
    documented = {re.match(r"\| `([a-z_]+)", line).group(1) for line in rows}  # type: ignore[union-attr]
    exported = {value for key, value in vars(names).items() if key.startswith("METRIC_")}
    assert exported and exported - documented == set(), f"not in docs/server.md's Metrics table: {exported - documented}"
