"""The documentation: the mkdocs site builds with warnings as errors, every `python -m leak_lightning` example
in the README and docs/ names a real subcommand and options that subcommand accepts, the README stays a
five-minute read whose links resolve, and docs/design.md's layout names what exists."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.files import REPO

DOCS = REPO / "docs"
PACKAGE = REPO / "leak_lightning"
PAGES = sorted([REPO / "README.md", *DOCS.rglob("*.md")])
SUBCOMMANDS = ("build", "fit", "validate", "test", "predict", "export", "adapt", "review")
README_WORDS = 1200  # what a newcomer reads in five minutes; the rest belongs in docs/


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=120)


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    done = _mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    for page in DOCS.rglob("*.md"):  # every page is in the site (strict mode also refuses pages outside the nav)
        rel = page.relative_to(DOCS).with_suffix("").as_posix()
        assert ("index.html" if rel == "index" else f"{rel}/index.html") in built, page
    assert (tmp_path / "site" / "test_pr_roc.png").is_file()


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The check above can fail: the same site with one link to a page that does not exist is refused."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "commands" / "fit.md").open("a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    done = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-page.md" in done.stderr, done.stderr[-3000:]


def test_the_test_script_builds_the_site_before_the_tests():
    lines = (REPO / "scripts" / "test.sh").read_text().splitlines()
    mkdocs = next(i for i, line in enumerate(lines) if "mkdocs build --strict" in line)
    pytest_ = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    command = lines[mkdocs].split("#")[0]
    assert mkdocs < pytest_ and "--site-dir" in command and "--quiet" not in command  # --quiet hides warnings


def examples(text: str) -> list[str]:
    """Each `python -m leak_lightning ...` (or `torchrun ... -m leak_lightning ...`) command in a page, from
    the subcommand on: continuation lines joined, cut at a comment, a closing backtick or quote."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        for after in re.split(r"-m leak_lightning\b", line)[1:]:
            rest = re.split(r"`|\"|\s#", after)[0]
            found.append(" ".join(rest.split()))
    return found


def options_in(example: str) -> list[str]:
    return re.findall(r"(?<![\w-])(--[A-Za-z][\w.-]*[\w])", example)


def test_examples_are_found_with_their_options():
    """The extraction the check relies on, on a hand-written page."""
    page = ("```bash\npython -m leak_lightning fit --config a.yaml \\\n    --data.batch_size 8  # --not.this\n```\n"
            "Run `python -m leak_lightning predict --ckpt_path x.ckpt` then `python -m leak_lightning CMD --help`\n"
            'sbatch --wrap "python -m leak_lightning build --input /w --output /h"\n'
            "RUN --rdzv_id b1 -m leak_lightning export --ckpt_path c [--with_frontend]\n")
    found = examples(page)
    assert found == ["fit --config a.yaml --data.batch_size 8", "predict --ckpt_path x.ckpt", "CMD --help",
                     "build --input /w --output /h", "export --ckpt_path c [--with_frontend]"]
    assert options_in(found[4]) == ["--ckpt_path", "--with_frontend"]


@pytest.fixture(scope="module")
def accepted() -> dict[str, set[str]]:
    """Each subcommand's options, as its real parser lists them in `--help` (in-process: one import)."""
    from leak_lightning.cli import main

    options = {}
    for command in SUBCOMMANDS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0, command
        options[command] = set(re.findall(r"(?<![\w-])(--[A-Za-z][\w.-]*[\w])", out.getvalue()))
    return options


def accepts(command: str, option: str, accepted: dict[str, set[str]]) -> bool:
    known = accepted[command]
    if command == "export":  # --with-frontend and --with_frontend are both export's spellings
        option, known = option.replace("-", "_"), {o.replace("-", "_") for o in known}
    if option in known or option in ("--help", "--print_config"):
        return True
    # a class_path group (`--model.optimizer`, `--model.net`) takes its class's own arguments below it
    parts = option.split(".")
    return any(".".join(parts[:i]) + ".help" in known for i in range(1, len(parts)))


def bad_examples(pages: list[Path], accepted: dict[str, set[str]]) -> list[str]:
    bad = []
    for page in pages:
        for example in examples(page.read_text()):
            command = example.split()[0] if example else ""
            if command in ("--help", "--version") or command.isupper():  # `SUBCOMMAND --help`: a placeholder
                continue
            if command not in SUBCOMMANDS:
                bad.append(f"{page.name}: unknown subcommand in {example!r}")
                continue
            bad += [f"{page.name}: {command} does not accept {o} ({example!r})"
                    for o in options_in(example) if not accepts(command, o, accepted)]
    return bad


def test_every_example_names_a_subcommand_and_options_it_accepts(accepted):
    assert bad_examples(PAGES, accepted) == []
    readme = {e.split()[0] for e in examples((REPO / "README.md").read_text()) if e}
    assert set(SUBCOMMANDS) - {"validate"} <= readme, "the README's tour shows every command"


def test_a_misspelt_option_or_subcommand_is_caught(tmp_path, accepted):
    page = tmp_path / "page.md"
    page.write_text("```bash\npython -m leak_lightning fit --data.batch_sise 8 --model.optimizer.lr 3e-4\n"
                    "python -m leak_lightning export --ckpt_path c --with-frontend --with_frontend\n"
                    "python -m leak_lightning tset --ckpt_path best\n```\n")
    assert bad_examples([page], accepted) == [
        "page.md: fit does not accept --data.batch_sise ('fit --data.batch_sise 8 --model.optimizer.lr 3e-4')",
        "page.md: unknown subcommand in 'tset --ckpt_path best'"]


def test_the_readme_is_a_five_minute_read_and_its_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.split()) <= README_WORDS, f"README.md has {len(text.split())} words; move detail to docs/"
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert {"docs/index.md", "docs/design.md", "docs/faults.md", "docs/benchmarks.md"} <= set(local)
    assert [link for link in local if not (REPO / link).is_file()] == []
    for line in ("bash scripts/demo.sh", "bash scripts/test.sh"):  # the two commands a newcomer runs
        assert re.search(rf"^{re.escape(line)}\s", text, flags=re.M), line


def test_the_design_layout_names_what_exists():
    text = (DOCS / "design.md").read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[: block.index("```")]
    named = set(re.findall(r"^\s{2,4}([\w/]+(?:\.py)?)\s", block, flags=re.M))
    package = {p.name + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir()
               if (p.suffix == ".py" and p.stem != "__init__" and p.stem != "__main__") or
               (p.is_dir() and (p / "__init__.py").exists())}
    listed = {n for n in named if n.endswith((".py", "/"))} - {"configs/", "scripts/", "tests/", "leak_lightning/"}
    assert listed == package, f"docs/design.md lists {sorted(listed - package)} that do not exist and misses " \
                              f"{sorted(package - listed)}"
