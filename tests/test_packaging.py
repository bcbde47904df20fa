"""The install story: a light core with lower bounds, the tested versions pinned in constraints.txt,
pyproject.toml and environment.yml agree, the README opens with the two commands, each job installs
what it needs and no more, and only the browser test needs a browser."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def constraints() -> dict[str, str]:
    """constraints.txt as {name: pinned version}."""
    lines = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert all("==" in line for line in lines), "constraints.txt pins exact versions only"
    return {requirement_name(line): line.split("==", 1)[1] for line in lines}


def test_environment_yml_lists_the_core_and_the_users_extras_as_pyproject_does_and_no_test_tools():
    extras = project()["optional-dependencies"]
    users = project()["dependencies"] + extras["course"] + extras["page"] + extras["hf"]
    conda = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    conda_pip = next(item["pip"] for item in conda if isinstance(item, dict))
    assert sorted(conda_pip) == sorted(users), "the same packages with the same bounds, so conda and pip agree"
    assert not {requirement_name(spec) for spec in conda_pip} & {"pytest", "nbval", "playwright"}
    python = next(item for item in conda if isinstance(item, str) and item.startswith("python"))
    assert python == "python" + project()["requires-python"] == "python>=3.10"


def test_pyproject_bounds_versions_from_below_and_constraints_txt_pins_the_tested_ones():
    extras = project()["optional-dependencies"]
    every = project()["dependencies"] + [spec for extra in extras.values() for spec in extra]
    assert not [spec for spec in every if "==" in spec], "no exact pins: another torch (CPU, conda, Colab) may stay"
    pinned = constraints()
    assert (pinned["torch"], pinned["torchvision"]) == ("2.14.1", "0.29.1")
    for spec in every:  # the tested versions satisfy the bounds
        requirement = Requirement(spec)
        assert requirement.specifier.contains(pinned[requirement_name(spec)], prereleases=True), spec
    # An earlier torch and its torchvision (what Colab or a CPU index may hold) are admitted.
    core = {requirement_name(spec): Requirement(spec).specifier for spec in project()["dependencies"]}
    assert "2.13.0" in core["torch"] and "2.4.0" in core["torch"] and "0.28.0" in core["torchvision"]


def test_the_core_install_is_the_library_and_the_command_and_the_course_is_an_extra():
    core = {requirement_name(spec) for spec in project()["dependencies"]}
    extras = {name: {requirement_name(spec) for spec in specs} for name, specs in project()["optional-dependencies"].items()}
    assert {"torch", "torchvision", "lightning", "safetensors"} <= core
    assert not core & {"jupyterlab", "papermill", "ipykernel", "ipywidgets", "voila", "transformers", "pytest", "nbval",
                       "playwright"}
    assert extras == {"course": {"jupyterlab", "papermill", "ipykernel", "ipywidgets"}, "page": {"voila"},
                      "hf": {"transformers"}, "test": {"pytest", "nbval", "playwright"}}


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if not line.startswith("#")]
    assert [c for c in commands if c] == ["make", "make test"]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["make test"]


def make_dry_run(target: str) -> str:
    """The commands `make target` would run on a fresh checkout (-B: as if nothing were done yet)."""
    return subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True).stdout


def installs(commands: str) -> list[set[str]]:
    """The extras of each `pip install` line: every one must install with the tested versions."""
    lines = [line for line in commands.splitlines() if "pip install" in line]
    assert lines and all("-c constraints.txt -e '.[" in line for line in lines), lines
    return [set(re.search(r"\.\[([^\]]*)\]", line).group(1).split(",")) for line in lines]


def test_make_installs_the_course_with_the_tested_versions_and_make_test_everything():
    main_job = make_dry_run("all")
    assert "apt-get" not in main_job and "sudo" not in main_job and "chromium" not in main_job
    assert installs(main_job) == [{"course"}]
    assert installs(make_dry_run("test"))[-1] == set(project()["optional-dependencies"])


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
