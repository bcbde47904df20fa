"""The install story: pyproject.toml and environment.yml agree, the README opens with the two commands."""
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_specs = project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]
    conda = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    conda_pip = next(item["pip"] for item in conda if isinstance(item, dict))
    assert sorted(map(requirement_name, pip_specs)) == sorted(map(requirement_name, conda_pip))
    # Same pins too, so a conda user and a pip user get the same torch.
    assert sorted(pip_specs) == sorted(conda_pip)
    assert "torch==2.14.1" in pip_specs and "torchvision==0.29.1" in pip_specs


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if not line.startswith("#")]
    assert [c for c in commands if c] == ["make", "make test"]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["make test"]
