"""The docs' measured numbers come from the result files (scripts/docs_numbers.py): the suite fails when one drifts."""

from __future__ import annotations

import importlib.util
import shutil

from conftest import ROOT


def _script():
    spec = importlib.util.spec_from_file_location("docs_numbers", ROOT / "scripts" / "docs_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_marked_number_equals_its_source_and_every_link_resolves():
    docs = _script()
    assert docs.check() == []
    assert sum(len(docs.MARKER.findall(d.read_text())) for d in docs.doc_files()) >= 40  # the README's results are marked


def test_a_changed_number_an_unknown_name_and_a_dangling_link_fail(tmp_path):
    docs = _script()
    (tmp_path / "docs").mkdir()
    for doc in docs.doc_files():
        shutil.copy(doc, tmp_path / doc.relative_to(ROOT))
    for target in {m.group(1).split("#")[0] for d in docs.doc_files() for m in docs.LINK.finditer(d.read_text())}:
        if target and not target.startswith("http") and (ROOT / target).exists() and not (tmp_path / target).exists():
            (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / target).touch()  # what the links point at, so only the planted faults are reported
    assert docs.check(tmp_path) == []
    readme = tmp_path / "README.md"
    text = readme.read_text()
    readme.write_text(
        text.replace("<!--n:grid.64KB.scratch-->91.76 ± 0.10<!--/n-->", "<!--n:grid.64KB.scratch-->91.86 ± 0.10<!--/n-->")
        + "\n<!--n:grid.64KB.nothing-->1<!--/n--> [gone](docs/gone.md)\n"
    )
    problems = docs.check(tmp_path)
    assert len(problems) == 3, problems
    assert "grid.64KB.scratch is '91.86 ± 0.10' in the text but '91.76 ± 0.10' in its source" in problems[0]
    assert "unknown number 'grid.64KB.nothing'" in problems[1] and "link to 'docs/gone.md'" in problems[2]
    # --write puts the source's number back
    readme.write_text(text.replace("<!--n:grid.64KB.scratch-->91.76 ± 0.10<!--/n-->", "<!--n:grid.64KB.scratch-->91.86 ± 0.10<!--/n-->"))
    assert docs.write(tmp_path) == 1 and readme.read_text() == text and docs.check(tmp_path) == []
