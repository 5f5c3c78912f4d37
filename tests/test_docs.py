"""The docs say what is true: install lines work as written from this repository, the CLI's commands are the ones
docs/architecture.md lists, and docs/performance.md quotes its own measurements and cites the records it keeps."""
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VALUE_OPTIONS = {"-r", "-c", "--index-url", "-i", "--extra-index-url", "--target", "-t", "-f", "--find-links"}


def install_commands(path: Path) -> list[str]:
    """Every ``pip install ...`` in a doc: code-block lines and inline code, without trailing comments."""
    return [m.group(0).strip() for m in re.finditer(r"pip install [^`\n#]*", path.read_text())]


def repo_distributions() -> dict[str, Path]:
    """This repository's distributions (none published yet): name -> directory."""
    out = {}
    for pyproject in [ROOT / "pyproject.toml", *sorted(ROOT.glob("plugins/*/pyproject.toml"))]:
        out[tomllib.loads(pyproject.read_text())["project"]["name"]] = pyproject.parent
    return out


def requirements(command: str) -> list[str]:
    args, out, skip = shlex.split(command)[2:], [], False
    for a in args:
        if skip:
            skip = False
        elif a in VALUE_OPTIONS:
            skip = True
        elif not a.startswith("-") and a != "...":
            out.append(a)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_install_lines_install_from_this_repository(doc):
    ours = repo_distributions()
    for command in install_commands(doc):
        for req in requirements(command):
            name, _, extras = req.partition("[")
            extras = {e.strip() for e in extras.rstrip("]").split(",") if e.strip()}
            if name.startswith(("~", "/")):           # the reader's own checkout (the plugin guide's §9)
                continue
            if name.startswith(".") or "/" in name:
                where = (ROOT / name).resolve()
                assert (where / "pyproject.toml").is_file(), f"{doc.name}: {command!r}: no package at {name!r}"
                declared = tomllib.loads((where / "pyproject.toml").read_text())["project"].get(
                    "optional-dependencies", {})
                assert extras <= set(declared), f"{doc.name}: {command!r}: extras {extras - set(declared)} " \
                                                f"are not declared (declared: {sorted(declared)})"
            else:
                base = re.split(r"[<>=!~;]", name)[0].strip().lower().replace("_", "-")
                assert base not in ours, (f"{doc.name}: {command!r} installs {base!r} from the package index, where "
                                          f"it is not published; install {ours[base].relative_to(ROOT) or '.'} "
                                          "from the repository")


def test_the_readme_install_block_is_accepted_by_pip():
    """pip resolves the README's own install lines as written (a dry run, without installing requirements)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Install", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert lines and all(line.startswith("pip install") for line in lines), lines
    for line in lines:
        r = subprocess.run([sys.executable, "-m", *shlex.split(line), "--dry-run", "--no-deps", "--ignore-installed",
                            "-q"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{line!r}: {r.stderr[-2000:]}"


def test_architecture_lists_every_cli_command():
    import argparse

    from fastgen_core.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    front_ends = (ROOT / "docs" / "architecture.md").read_text().split("## Front ends", 1)[1].split("\n## ", 1)[0]
    offers = front_ends.split("offers", 1)[1].split(".", 1)[0]
    missing = [c for c in sub.choices if f"`{c}`" not in offers]
    assert not missing, f"docs/architecture.md's front ends leave out {missing}: {offers!r}"


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a markdown text."""
    assert f"\n## {heading}\n" in text, f"docs/performance.md has no '## {heading}' section"
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _table(block: str) -> tuple[list[str], list[list[str]]]:
    header, _, *rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.strip().splitlines()]
    return header, rows


def test_the_performance_summary_quotes_the_measured_per_token_latency():
    """"What is known to be left" quotes the per-token P50 at 1 client of the "Online" section's table in the same
    file, and no other per-token latency."""
    text = (ROOT / "docs" / "performance.md").read_text()
    online = _section(text, "Online")
    table = next(block for block in online.split("\n\n") if "per-token P50" in block and block.lstrip().startswith("|"))
    header, rows = _table(table)
    col = next(i for i, h in enumerate(header) if h.startswith("per-token P50"))
    one_client = next(r for r in rows if r[0] == "1")
    p50 = one_client[col].split("/")[0].strip()
    gap = _section(text, "What is known to be left")
    assert f"{p50} ms" in gap, f"'What is known to be left' does not quote the per-token P50 at 1 client ({p50} ms)"
    stale = [ms for ms in re.findall(r"per-token[^.]*?(\d+(?:\.\d+)?) ms", gap) if ms != p50]
    assert not stale, f"'What is known to be left' quotes per-token latencies that are not the table's: {stale}"


def test_the_performance_records_are_the_ones_it_cites():
    """Every record docs/performance.md links exists; every file in docs/bench-results is linked from it and has a
    line in docs/bench-results/README.md (the index)."""
    results = ROOT / "docs" / "bench-results"
    text = (ROOT / "docs" / "performance.md").read_text()
    cited = set(re.findall(r"\(bench-results/([^)#\s]+)\)", text))
    missing = sorted(name for name in cited if not (results / name).is_file())
    assert not missing, f"docs/performance.md links records that do not exist: {missing}"
    files = {p.name for p in results.iterdir() if p.is_file() and p.name != "README.md"}
    assert not files - cited, f"records that docs/performance.md does not cite: {sorted(files - cited)}"
    index = (results / "README.md").read_text()
    unindexed = sorted(name for name in files if f"]({name})" not in index)
    assert not unindexed, f"records without a line in docs/bench-results/README.md: {unindexed}"


DIARY = re.compile(r"\b(sessions?|calls?|speed) ?\d|\bSpeed (I|II|III|IV|V|VI|VII|VIII|IX|X)\b|\bissue \d|\bfinal\d|"
                   r"\bdevice (call|time)|device_run", re.IGNORECASE)


def test_the_performance_page_speaks_to_users_not_of_its_making():
    """No work-session, device-call, issue or run-name vocabulary in the performance page, its records' index or
    the records' names: the history lives in git."""
    results = ROOT / "docs" / "bench-results"
    texts = {"docs/performance.md": (ROOT / "docs" / "performance.md").read_text(),
             "docs/bench-results/README.md": (results / "README.md").read_text(),
             "docs/bench-results/ (file names)": " ".join(p.name.replace("-", " ") for p in results.iterdir())}
    found = {where: sorted({m.group(0) for m in DIARY.finditer(t)}) for where, t in texts.items()}
    found = {where: words for where, words in found.items() if words}
    assert not found, f"development history in user-facing performance docs: {found}"
