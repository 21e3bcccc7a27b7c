"""The user guide and the README run: every ```python block of each
docs/guide/*.md page is executed in order as one script (a fresh namespace
per page, in a temporary working directory), and so is the README's example.

Block info strings:
- ```python                 runs.
- ```python needs=MOD[,MOD] runs only when every MOD imports (torch, jax:
  optional peers of the autograd recipes); test_optional_blocks reports a
  skip naming what did not run. Such blocks must not be needed by later ones.
- ```python no-run          is shown, never run: for code that needs what a
  test cannot give (a build command's setup.py run by setuptools, say). Each
  such block must be preceded, within three lines, by a sentence saying
  where it is tested, and test_no_run_blocks_are_tested_elsewhere checks
  that the named test file exists.
"""

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide"
PAGES = sorted(GUIDE.glob("*.md")) if GUIDE.is_dir() else []
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.M | re.S)


def blocks(text):
    """[(options, code, start offset)] of the ```python blocks of a page."""
    out = []
    for m in FENCE.finditer(text):
        opts = m.group(1).split()
        needs = [n for o in opts if o.startswith("needs=") for n in o[6:].split(",")]
        out.append({"needs": needs, "no_run": "no-run" in opts, "code": m.group(2),
                    "pos": m.start()})
    return out


def _missing(needs):
    return [n for n in needs if importlib.util.find_spec(n) is None]


def _run(code_blocks, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for i, b in enumerate(code_blocks):
        try:
            exec(compile(b["code"], f"{name} (python block {i + 1})", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{name}: python block {i + 1} failed:\n{b['code']}") from e


def test_guide_pages_found():
    if not PAGES:
        pytest.skip(f"{GUIDE} not found (the tests run from a source checkout)")
    names = {p.name for p in PAGES}
    assert {"index.md", "functional.md", "layers.md", "checkpoints.md", "embedding.md",
            "threads.md", "compat.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_guide_page(page, tmp_path, monkeypatch):
    runnable = [b for b in blocks(page.read_text())
                if not b["no_run"] and not _missing(b["needs"])]
    _run(runnable, page.name, tmp_path, monkeypatch)


OPTIONAL = sorted({(p.name, n) for p in PAGES for b in blocks(p.read_text())
                   for n in b["needs"]})


@pytest.mark.parametrize("page, module", OPTIONAL, ids=[f"{p}-{m}" for p, m in OPTIONAL])
def test_optional_blocks(page, module):
    n = sum(module in b["needs"] for b in blocks((GUIDE / page).read_text()))
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not importable: {n} python block(s) of {page} not run")
    assert n > 0  # they ran in test_guide_page


def test_no_run_blocks_are_tested_elsewhere():
    for page in PAGES:
        text = page.read_text()
        for b in blocks(text):
            if b["no_run"]:
                before = "\n".join(text[:b["pos"]].rstrip().splitlines()[-3:])
                found = re.findall(r"tests/\w+\.py", before)
                assert found, f"{page.name}: a no-run block without 'tests/...py' before it"
                for f in found:
                    assert (ROOT / f).is_file(), f


def test_index_lists_every_page():
    if not PAGES:
        pytest.skip(f"{GUIDE} not found")
    index = (GUIDE / "index.md").read_text()
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    assert {p.name for p in PAGES} - {"index.md"} <= linked
    assert "layers.md" in linked


def test_readme_example(tmp_path, monkeypatch):
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not found")
    text = readme.read_text()
    section = text[text.index("## Example"):]
    example = blocks(section)[:1]
    assert example and not example[0]["needs"]
    _run(example, "README.md", tmp_path, monkeypatch)
    assert os.listdir(tmp_path) == []  # the example writes no files
