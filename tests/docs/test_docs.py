"""The docs say what the code does: every setting of every process is in the README's tables,
every package is in its Layout table, and every path the Markdown files name exists.

No cluster: the settings classes are imported and the files read. The chart README's RBAC
is compared with the rendered templates in ``tests/e2e/test_chart_readme.py`` (it needs helm).
"""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

import agent_sidecar
from agent_registry.controller.settings import OperatorSettings
from agent_registry.facade import settings as facade_settings
from agent_sidecar import config as sidecar_config
from repo import CHART_DIR, REPO_ROOT

PACKAGE = REPO_ROOT / "operator" / "agent_registry"
README = REPO_ROOT / "README.md"
CHART_README = CHART_DIR / "README.md"
MARKDOWN = [README, *sorted((REPO_ROOT / "docs").glob("*.md")), CHART_README]

OPERATOR_PREFIX = "AGENT_REGISTRY_"
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")
BACKTICKED = re.compile(r"`([^`\n]+)`")


# -- reading the README ------------------------------------------------------------------------


def sections(text: str) -> dict[str, str]:
    """``## Heading`` -> the text up to the next such heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def tables(text: str) -> list[list[list[str]]]:
    """Markdown tables as rows of cells, the header row first, the ``| --- |`` row left out."""
    found: list[list[list[str]]] = []
    for is_table, lines in itertools.groupby(text.splitlines(), key=lambda line: line.startswith("|")):
        if not is_table:
            continue
        rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]] for line in lines]
        found.append([row for row in rows if not all(re.fullmatch(r":?-+:?", cell) for cell in row)])
    return found


def section(title: str) -> str:
    found = sections(README.read_text())
    assert title in found, f"README.md has no '## {title}' section"
    return found[title]


def variable_tables(text: str) -> list[list[list[str]]]:
    found = [table for table in tables(text) if table[0][0].startswith("variable")]
    assert found, "no table whose first column is 'variable'"
    return found


def documented(text: str, prefix: str) -> tuple[set[str], set[str]]:
    """The variables the ``variable`` tables of ``text`` name: (rows' own, all).

    The README's conventions: a header ``variable (`PREFIX` +)`` puts PREFIX before every name
    of the first column; a name starting with ``_`` continues the process's prefix
    (`AGENT_REGISTRY_LEASE_NAME` / `_LEASE_NAMESPACE`). "All" adds the full names that other
    columns mention (a setting the facade shares with the operator).
    """
    own: set[str] = set()
    mentioned: set[str] = set()
    for header, *rows in variable_tables(text):
        table_prefix = re.search(r"`([A-Z0-9_]+_)` \+", header[0])
        for row in rows:
            for written in BACKTICKED.findall(row[0]):
                if written.startswith("_"):
                    own.add(prefix.rstrip("_") + written)
                elif table_prefix:
                    own.add(table_prefix.group(1) + written)
                else:
                    own.add(written)
            mentioned |= {name for cell in row[1:] for name in BACKTICKED.findall(cell) if ENV_NAME.match(name)}
    return own, own | mentioned


def named_in_code(root: Path, prefix: str) -> set[str]:
    """Whole variable names written as string literals in the code under ``root`` (its reads
    outside the settings class, such as the operator's liveness endpoint)."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and value.startswith(prefix) and ENV_NAME.match(value):
                names.add(value)
    return names


def settings_variables(model: type[BaseSettings], prefix: str) -> set[str]:
    """Every variable a settings class reads: prefix + field, or the field's aliases."""
    names: set[str] = set()
    for field, info in model.model_fields.items():
        alias = info.validation_alias
        if alias is None:
            names.add(f"{prefix}{field}".upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names |= {str(choice).upper() for choice in getattr(alias, "choices", [])}
    return names


def assert_same(known: set[str], own: set[str], everything: set[str], where: str) -> None:
    assert not known - everything, (
        f"read by the code but missing from the README's {where}: {sorted(known - everything)}"
    )
    assert not own - known, f"in the README's {where} but read by nothing: {sorted(own - known)}"


# -- settings ----------------------------------------------------------------------------------


def test_every_operator_setting_is_in_the_readme() -> None:
    known = settings_variables(OperatorSettings, OPERATOR_PREFIX)
    known |= named_in_code(PACKAGE / "controller", OPERATOR_PREFIX)
    assert "AGENT_REGISTRY_LIVENESS_ENDPOINT" in known  # read by the entry point, for kopf
    own, everything = documented(section("The operator"), OPERATOR_PREFIX)
    assert_same(known, own, everything, '"The operator" table')


def test_every_facade_setting_is_in_the_readme() -> None:
    prefix = facade_settings.ENV_PREFIX
    known = settings_variables(facade_settings.FacadeSettings, prefix)
    known |= named_in_code(PACKAGE / "facade", OPERATOR_PREFIX)
    assert "AGENT_REGISTRY_REDIS_URL" in known  # shared with the operator
    own, everything = documented(section("The REST API"), prefix)
    assert_same(known, own, everything, '"The REST API" table')


def sidecar_variables() -> set[str]:
    fields = {sidecar_config.env_name(field) for field in sidecar_config.SidecarSettings.model_fields}
    # Read outside the settings class (AGENT_LOG_LEVEL before the settings parse, the service
    # account directory), and listed by --help.
    extra = named_in_code(Path(agent_sidecar.__file__).parent, sidecar_config.ENV_PREFIX)
    return fields | extra


def test_every_sidecar_variable_is_in_the_readme() -> None:
    known = sidecar_variables()
    assert {"AGENT_LOG_LEVEL", "AGENT_SERVICE_ACCOUNT_DIR", "POD_UID"} <= known
    own, everything = documented(section("The sidecar"), sidecar_config.ENV_PREFIX)
    assert_same(known, own, everything, '"The sidecar" table')


def test_the_sidecars_help_lists_every_variable() -> None:
    help_text = sidecar_config.__doc__ or ""
    missing = {name for name in sidecar_variables() if f"``{name}``" not in help_text}
    assert not missing, f"python -m agent_sidecar --help does not list {sorted(missing)}"


def test_every_variable_the_code_names_is_in_the_readme() -> None:
    """Wherever a registry variable is read (the local control plane, make run, the client
    layer), the README names it: in a process's table or in the build machinery's."""
    everything = set()
    for _, text in sections(README.read_text()).items():
        if any(table[0][0].startswith("variable") for table in tables(text)):
            everything |= documented(text, OPERATOR_PREFIX)[1]
    named = named_in_code(PACKAGE, "AGENT_") | named_in_code(Path(agent_sidecar.__file__).parent, "AGENT_")
    assert not named - everything, f"named in the code, missing from the README: {sorted(named - everything)}"


def test_the_conventions_are_read_as_meant() -> None:
    text = """
| variable (`AGENT_X_` +) | default | meaning |
| --- | --- | --- |
| `A`, `B_C` | 1 | shares `AGENT_Y_D` |
| variable | default | meaning |
"""
    assert documented(text, "AGENT_X_") == ({"AGENT_X_A", "AGENT_X_B_C"}, {"AGENT_X_A", "AGENT_X_B_C", "AGENT_Y_D"})
    text = "| variable | default |\n| --- | --- |\n| `AGENT_X_LEASE_NAME` / `_LEASE_NAMESPACE` | a |\n"
    assert documented(text, "AGENT_X_")[0] == {"AGENT_X_LEASE_NAME", "AGENT_X_LEASE_NAMESPACE"}


# -- layout ------------------------------------------------------------------------------------


def tracked_files() -> list[str]:
    try:
        result = subprocess.run(
            ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: what is in the repository is what git tracks")
    return result.stdout.splitlines()


def required_layout(files: Iterable[str]) -> set[str]:
    """Every top-level folder and file (but the README and dotfiles), every Python package
    outside the tests, every folder of ``helm/`` and ``manifests/``, and ``tests/e2e``."""
    required = {"tests/e2e"}
    for name in files:
        parts = name.split("/")
        if len(parts) == 1:
            if not name.startswith(".") and name != "README.md":
                required.add(name)
            continue
        required.add(parts[0])
        if parts[0] in ("helm", "manifests") and len(parts) > 2:
            required.add("/".join(parts[:2]))
        if parts[-1] == "__init__.py" and parts[0] != "tests":
            required.add("/".join(parts[:-1]))
    return required


def test_the_layout_table_lists_every_package_and_folder() -> None:
    files = tracked_files()
    (table,) = tables(section("Layout"))
    listed = [name.rstrip("/") for row in table[1:] for name in BACKTICKED.findall(row[0])]
    # A top-level folder may be listed through what is in it (`helm/agent-registry/`).
    missing = {
        name
        for name in required_layout(files) - set(listed)
        if "/" in name or not any(entry.startswith(name + "/") for entry in listed)
    }
    assert not missing, f"not in the README's Layout table: {sorted(missing)}"
    assert len(listed) == len(set(listed)), "a folder is listed twice"
    assert all(row[1] for row in table[1:]), "every row says what the folder is"
    assert not any("to come" in row[1] for row in table[1:])


# -- paths -------------------------------------------------------------------------------------

EXTENSIONS = "py|md|ya?ml|json|toml|txt|tpl|sh|log"
PATH_LIKE = re.compile(rf"^[\w.*<>/-]*[\w*>]\.({EXTENSIONS}|\{{(({EXTENSIONS}),?)+\}})$|/$")


def path_references(text: str) -> set[str]:
    """Backticked tokens that name a file (by its extension) or a folder (a trailing ``/``).

    Left out: URLs, absolute and home paths (they are on the machine, not in the repo), and
    anything with a space (a command line).
    """
    refs = set()
    for token in BACKTICKED.findall(text):
        if " " in token or "://" in token or token.startswith(("/", "~", "$", ".")) or "..." in token:
            continue
        if PATH_LIKE.search(token) or token in ("Dockerfile", "Makefile"):
            refs.add(token)
    return refs


def _globs(token: str) -> list[str]:
    """``<name>`` placeholders match anything; ``{json,md}`` means each of them."""
    pattern = re.sub(r"<[^>]+>", "*", token)
    braces = re.search(r"\{([^}]*)\}", pattern)
    if braces is None:
        return [pattern]
    return [g for alt in braces.group(1).split(",") for g in _globs(pattern.replace(braces.group(0), alt, 1))]


def exists(token: str, markdown: Path) -> bool:
    """Relative to the repository, the Markdown file's folder, or the package (``controller/...``)."""
    for base in (REPO_ROOT, markdown.parent, PACKAGE):
        if all(any(base.glob(g.rstrip("/"))) if "*" in g else (base / g).exists() for g in _globs(token)):
            return True
    return False


@pytest.mark.parametrize("markdown", MARKDOWN, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_path_the_docs_name_exists(markdown: Path) -> None:
    refs = path_references(markdown.read_text())
    assert refs, "the filter found no path at all"
    missing = sorted(ref for ref in refs if not exists(ref, markdown))
    assert not missing, f"{markdown.relative_to(REPO_ROOT)} names files that are not in the repository: {missing}"


def test_the_path_filter_finds_paths_and_only_paths() -> None:
    text = (
        "`docs/decisions.md` `crds/` `ci/*-values.yaml` `bench/results/<name>.json` `Dockerfile` "
        "`agents/status` `registry.optiinfra.io/agent-id` `/health` `~/.kube/config` `.md` "
        "`redis://127.0.0.1:6379/0` `helm.sh/helm/v3` `make test PYTEST_ARGS=x.py`"
    )
    assert path_references(text) == {
        "docs/decisions.md",
        "crds/",
        "ci/*-values.yaml",
        "bench/results/<name>.json",
        "Dockerfile",
    }
    assert exists("bench/results/<name>.{json,md}", README)
    assert not exists("tests/test_schema_validation.py", README)


def test_no_doc_points_outside_the_repository() -> None:
    """Issue numbers and design notes live outside the repository; say what is meant instead."""
    outside = re.compile(r"\b(DESIGN" + r"\.md|[Ii]ssue #?\d+)\b")
    found = []
    for name in tracked_files():
        path = REPO_ROOT / name
        text_file = path.suffix in (".py", ".md", ".yaml", ".tpl", ".txt", ".toml", ".sh") or path.name == "Makefile"
        if text_file and path.is_file():
            lines = enumerate(path.read_text().splitlines(), 1)
            found += [f"{name}:{n}" for n, line in lines if outside.search(line)]
    assert not found, found
