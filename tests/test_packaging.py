"""The install story: pyproject.toml and environment.yml agree, the README opens with the two commands,
each job installs what it needs and no more, and only the browser test needs a browser."""
import os
import re
import shutil
import subprocess
import sys
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


def test_the_main_job_installs_neither_test_tools_nor_the_page_server():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = set(map(requirement_name, project["dependencies"]))
    assert not core & {"pytest", "nbval", "playwright", "voila"}
    assert list(map(requirement_name, project["optional-dependencies"]["page"])) == ["voila"]
    assert {"pytest", "nbval", "playwright"} <= set(map(requirement_name, project["optional-dependencies"]["test"]))


def make_dry_run(target: str) -> str:
    """The commands `make target` would run on a fresh checkout (-B: as if nothing were done yet)."""
    return subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True).stdout


def installed_extras(commands: str) -> set[str]:
    return {extra for extras in re.findall(r"pip install .*-e '?\.\[([^\]]*)\]", commands) for extra in extras.split(",")}


def test_make_needs_no_root_and_no_browser_and_make_test_installs_the_extras():
    main_job = make_dry_run("all")
    assert "pip install --quiet -e ." in main_job
    assert "apt-get" not in main_job and "sudo" not in main_job and "chromium" not in main_job
    assert installed_extras(main_job) == set()
    assert {"page", "test"} <= installed_extras(make_dry_run("test"))


def test_without_apt_get_make_installs_no_browser_and_says_the_test_will_be_skipped(tmp_path):
    tools = tmp_path / "bin"  # a PATH with what the recipe runs, and no apt-get
    tools.mkdir()
    for tool in ("sh", "id"):
        (tools / tool).symlink_to(shutil.which(tool))
    result = subprocess.run([shutil.which("make"), "-s", "browser", f"CHROMIUM={tmp_path / 'chromium'}"], cwd=REPO,
                            env={"PATH": str(tools)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no apt-get here: not installing chromium; the browser test will be skipped"


def test_without_chromium_only_the_browser_test_is_skipped_and_says_why(tmp_path):
    env = {**os.environ, "IGPT_CHROMIUM": str(tmp_path / "chromium")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "tests/test_explorer_page.py"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 skipped" in result.stdout and "Voila" not in result.stderr
    assert f"no browser: {tmp_path / 'chromium'} is missing" in result.stdout
