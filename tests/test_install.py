"""Installing the course where users run it: a non-editable install that finds the shipped models,
and Colab, through the notebooks' first cell.

Both install into a fresh virtual environment that sees this one's packages (a .pth line naming its
site-packages), so that torch is not installed again, while the project itself really is: built,
installed and imported from the new environment, never from this checkout.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def first_cell(path: Path) -> str:
    code = [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]
    return "".join(code[0]["source"])


def fresh_environment(folder: Path) -> Path:
    """A new venv whose Python also sees this environment's packages; returns its python.

    Only a plain path line: the .pth files in this site-packages (this checkout's editable install
    among them) are not run, so `import igptlib` there finds only what is installed into the new one.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "parent_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def plain_env(**changes) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "IGPT_REPO", "IGPT_DRIVE", "IGPT_MODELS_DIR")}
    return {**env, **changes}


def run_python(python: Path, code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=cwd, env=plain_env(**env),
                          capture_output=True, text=True, timeout=600)


# -- a non-editable install ------------------------------------------------------------------------

def test_a_non_editable_install_loads_a_shipped_model_by_name(tmp_path):
    source = tmp_path / "source"  # a copy: an in-tree build writes build/ and *.egg-info beside the sources
    for name in ("igptlib", "models"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    python = fresh_environment(tmp_path / "venv")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
                             capture_output=True, text=True, timeout=600, env=plain_env())
    assert install.returncode == 0, install.stderr[-3000:]
    shutil.rmtree(source)  # nothing may come from the sources now

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = run_python(python, "import igptlib, igptlib.shipped as s\n"
                               "module = igptlib.load_model('mnist')\n"
                               "print(igptlib.__file__); print(s.MODELS_DIR); print(igptlib.shipped_models())\n"
                               "print(module.model.num_parameters())", cwd=elsewhere)
    assert check.returncode == 0, check.stderr[-3000:]
    package, models, names, parameters = check.stdout.splitlines()
    assert Path(package).is_relative_to(tmp_path / "venv"), "imported from the new environment"
    assert Path(models) == Path(package).parent / "models", "the models are the package's own data"
    assert "mnist" in names and int(parameters) > 0


def test_igpt_models_dir_names_another_folder(tmp_path):
    shutil.copy2(REPO / "models" / "mnist.safetensors", tmp_path / "digits.safetensors")
    check = run_python(Path(sys.executable), "import igptlib; print(igptlib.shipped_models()); igptlib.load_model('digits')",
                       cwd=tmp_path, IGPT_MODELS_DIR=str(tmp_path))
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.strip() == "['digits']"


# -- Colab: the notebooks' first cell ---------------------------------------------------------------

def test_every_notebook_opens_with_the_same_set_up_cell():
    cells = {path.name: first_cell(path) for path in NOTEBOOKS}
    assert len(cells) == 8 and len(set(cells.values())) == 1, "the eight notebooks' first cells differ"
    assert "google.colab" in cells["01_data.ipynb"]


def as_colab(cell: str) -> str:
    """The cell as a plain Python script that Colab would run: the google.colab module is what the
    cell looks for (Colab's runtime imports it), so a stand-in for it is put in place first."""
    return "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n" + cell


def test_the_first_cell_without_a_repository_url_says_what_to_set(tmp_path):
    result = run_python(Path(sys.executable), as_colab(first_cell(NOTEBOOKS[0])), cwd=tmp_path)
    assert result.returncode == 1
    assert "Set the course's git URL first" in result.stderr and "%env IGPT_REPO=" in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing was cloned or installed"


def test_the_first_cell_stops_when_the_clone_fails(tmp_path):
    result = run_python(Path(sys.executable), as_colab(first_cell(NOTEBOOKS[0])), cwd=tmp_path,
                        IGPT_REPO=str(tmp_path / "no-such-repository"))
    assert result.returncode == 1
    assert f"git clone {tmp_path / 'no-such-repository'} failed" in result.stderr


def committed_copy_of_this_checkout(folder: Path) -> Path:
    """A git repository holding this checkout's files as they are now (committed or not)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the course"]):
        subprocess.run([*git, *command], cwd=folder, check=True, capture_output=True)
    return folder


def test_the_first_cell_clones_installs_and_imports_the_course(tmp_path):
    repository = committed_copy_of_this_checkout(tmp_path / "repository")
    python = fresh_environment(tmp_path / "venv")
    content = tmp_path / "content"  # Colab's working directory
    content.mkdir()
    script = as_colab(first_cell(NOTEBOOKS[0])) + "\nimport igptlib; print(igptlib.__file__); print(os.getcwd())"
    result = run_python(python, script, cwd=content, IGPT_REPO=str(repository))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    clone = content / "igpt"
    *_, imported, cwd = result.stdout.splitlines()
    assert Path(imported) == clone / "igptlib" / "__init__.py" and Path(cwd) == clone
    assert "installing what this runtime lacks" not in result.stdout, "everything was there: nothing to install"

    # Installed, not only importable from the clone: a new process elsewhere finds it too.
    check = run_python(python, "import igptlib; print(igptlib.__file__)", cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    assert Path(check.stdout.strip()) == clone / "igptlib" / "__init__.py"


@pytest.mark.parametrize("requirement, missing", [("pyyaml>=6", False), ("pyyaml>=999", True),
                                                   ("no-such-package-igpt>=1", True), ("torch>=999", False)])
def test_colab_installs_only_what_it_lacks_and_never_its_own_torch_or_jupyter(requirement, missing):
    from igptlib.colab import missing_requirements

    assert missing_requirements([requirement]) == ([requirement] if missing else [])


def test_runs_on_drive_is_a_link_made_once(tmp_path):
    from igptlib.colab import SetUpError, link_runs

    drive = tmp_path / "drive" / "igpt" / "runs"
    (tmp_path / "clone").mkdir()
    runs = link_runs(tmp_path / "clone", drive)
    assert runs.is_symlink() and runs.resolve() == drive.resolve()
    assert link_runs(tmp_path / "clone", drive) == runs  # running the cell again changes nothing
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "runs").mkdir()
    with pytest.raises(SetUpError, match="already exists"):
        link_runs(tmp_path / "other", drive)
