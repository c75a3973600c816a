"""Every file README and docs/ name under bench/results/ exists: a figure's source cannot silently go missing; README
stays a front door (at most 250 lines) whose links to docs/ resolve."""

import glob
import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMED = re.compile(r"bench/results/[A-Za-z0-9_./{},*-]+")


def expansions(path: str) -> list[str]:
    """``a.{md,json}`` → ``a.md``, ``a.json`` (shell brace expansion, any number of groups)."""
    parts = re.split(r"(\{[^}]*\})", path)
    options = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(choice) for choice in itertools.product(*options)]


def exists(name: str) -> bool:
    """A file or folder, a glob that matches, or an output prefix (``--out DIR/evaluate`` names evaluate.*, a script's
    ``OUT=…/s2dm-ablation-4000`` names s2dm-ablation-4000-*)."""
    name = name.rstrip(".,")
    if any(ch in name for ch in "*?"):
        return bool(glob.glob(str(ROOT / name)))
    return (ROOT / name).exists() or any(glob.glob(str(ROOT / name) + sep + "*") for sep in ".-")


def named_in(path: Path) -> list[str]:
    text = path.read_text()
    return sorted({variant for match in NAMED.findall(text) for variant in expansions(match.rstrip(".,`)"))})


def test_every_bench_result_readme_names_exists():
    named = named_in(ROOT / "README.md")
    missing = [name for name in named if not exists(name)]
    assert named and not missing, f"README names files that are not there: {missing}"


def test_readme_is_a_front_door_and_names_only_docs_that_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    docs = set(re.findall(r"docs/[a-z-]+\.md", text))
    assert len(docs) >= 8 and all((ROOT / doc).is_file() for doc in docs)


def test_every_bench_result_the_docs_name_exists():
    missing = {doc.name: [name for name in named_in(doc) if not exists(name)] for doc in (ROOT / "docs").glob("*.md")}
    assert sum(len(named_in(doc)) for doc in (ROOT / "docs").glob("*.md")) > 40
    assert not any(missing.values()), f"docs name files that are not there: {missing}"


def test_every_relative_link_in_readme_and_docs_resolves_from_its_own_file():
    """A Markdown link or image is resolved against the file it is in (as GitHub renders it), so a link written from
    the repository root inside docs/ (`](docs/model.md)`) is broken there."""
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = {
        str(page.relative_to(ROOT)): [target for target in link.findall(page.read_text())
                                      if not re.match(r"[a-z]+:|#", target)
                                      and not (page.parent / target.split("#")[0]).exists()]
        for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    }
    assert not any(broken.values()), f"links that do not resolve from their own file: {broken}"
