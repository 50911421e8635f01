"""Regenerate the config reference in README.md from the schema, and docs/catalogue.md (bad inputs and faults) from
tests/catalogue/catalogue_rows.py (tests/test_readme.py and tests/catalogue/test_catalogue.py check both are current)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
CAT_START, CAT_END = "<!-- catalogue:start -->", "<!-- catalogue:end -->"
CATALOGUE = ROOT / "docs" / "catalogue.md"


def render(readme: str) -> str:
    from nb_finetune.core.config import config_reference_markdown

    body = f"{START}\n{config_reference_markdown()}{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: body, readme, flags=re.S)


def render_catalogue(doc: str) -> str:
    """docs/catalogue.md with its table regenerated from the catalogue's rows (the same rows the test runs)."""
    import importlib.util

    path = ROOT / "tests" / "catalogue" / "catalogue_rows.py"
    spec = importlib.util.spec_from_file_location("catalogue_rows", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("catalogue_rows", mod)
    spec.loader.exec_module(mod)
    body = f"{CAT_START}\n{mod.table_markdown()}{CAT_END}"
    return re.sub(re.escape(CAT_START) + r".*?" + re.escape(CAT_END), lambda _: body, doc, flags=re.S)


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"updated {path}")
    CATALOGUE.write_text(render_catalogue(CATALOGUE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"updated {CATALOGUE}")
