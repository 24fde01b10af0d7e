"""Every document the code cites is in the repository, and every cited section exists there.

Citations look like ``docs/METHOD.md §8.9`` (also ``§2-§4`` and ``§2 and §4``); no file outside
the repository (the spec, the design notes, the paper's text) may be cited.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("fhgs_ros", "config", "launch", "msg", "test") for p in (ROOT / d).rglob("*")
           if p.suffix in {".py", ".h", ".cpp", ".cu", ".md", ".yaml", ".txt", ".srv", ".msg"} and p.is_file()
           and "__pycache__" not in p.parts] + [ROOT / "README.md", ROOT / ".importlinter", ROOT / "Makefile"]
CITE = re.compile(r"(docs/[A-Za-z_]+\.md)((?:\s*(?:§[0-9][0-9.]*[0-9]|§[0-9]|-|,|and)\s*)*)")


def _sections(doc: Path) -> set[str]:
    out = set()
    for line in doc.read_text().splitlines():
        m = re.match(r"^#{2,4}\s+([0-9]+(?:\.[0-9]+)*)\.?\s", line)
        if m:
            out.add(m.group(1))
    return out


def test_cited_documents_and_sections_exist():
    missing = []
    for src in SOURCES:
        if src.name == "test_docs.py":
            continue
        for m in CITE.finditer(src.read_text(errors="replace")):
            doc = ROOT / m.group(1)
            if not doc.is_file():
                missing.append(f"{src.relative_to(ROOT)}: {m.group(1)} does not exist")
                continue
            secs = _sections(doc)
            for sec in re.findall(r"§([0-9][0-9.]*[0-9]|[0-9])", m.group(2)):
                if sec not in secs:
                    missing.append(f"{src.relative_to(ROOT)}: {m.group(1)} has no section {sec}")
    assert not missing, "\n".join(missing)


def test_no_citation_of_files_outside_the_repository():
    bad = re.compile(r"FHGS_SPEC|DESIGN\.md|ENVIRONMENT\.md|\.\./shared/docs|FHGS_paper\.txt")
    hits = [f"{p.relative_to(ROOT)}:{i + 1}" for p in SOURCES if p.name != "test_docs.py"
            for i, line in enumerate(p.read_text(errors="replace").splitlines()) if bad.search(line)]
    assert not hits, hits
