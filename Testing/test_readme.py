"""The README is the manual's first page: its shape is part of the product (issue 27), and a link to a
page that moved is a broken manual. These checks keep both true as the code changes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTIONS = ["Install", "Quick start", "Usage", "How it works", "Results at a glance", "Typical problems",
            "Limits", "Development", "Citation and licence"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_a_short_manual_in_its_order():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300
    headings = [line[3:] for line in lines if line.startswith("## ")]
    assert headings == SECTIONS
    slicer_install = next(i for i, line in enumerate(lines) if "Extensions Manager" in line)
    assert slicer_install < 60
    assert "Not a medical device" in "\n".join(lines[:40])


def test_readme_starts_with_the_two_fresh_machine_commands():
    text = README.read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert text.index("```bash") < 40 and len(block) == 2
    assert block[0].endswith("twofivecnn demo --out demo_out") and block[1].endswith("python -m pytest -q")
    assert (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().endswith(block[1])


def test_every_relative_link_of_the_manual_exists():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = [f"{page.name}: {target}" for page in pages
              for target in LINK.findall(page.read_text(encoding="utf-8"))
              if "://" not in target and not (page.parent / target).exists()]
    assert not broken
