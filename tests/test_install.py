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
from packaging.requirements import Requirement

from igptlib import colab

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob(colab.COURSE_NOTEBOOKS))


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
    for name in ("igptlib", "models", "notebooks"):
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

    # The course's notebooks are the package's data too: `igpt sweep` runs them where the user is.
    sweep = subprocess.run([str(python.parent / "igpt"), "sweep", "--sizes", "xs", "--notebooks", "04_model",
                            "--smoke", "--runs", "runs"], cwd=elsewhere, env=plain_env(), capture_output=True,
                           text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    assert (elsewhere / "runs" / "mnist-xs" / "notebooks" / "04_model.ipynb").exists()
    installed = Path(package).parent
    assert sorted(path.name for path in (installed / "notebooks").iterdir()) == [path.name for path in NOTEBOOKS]


def test_without_the_course_extra_igpt_sweep_says_which_extra_to_install(monkeypatch, tmp_path, capsys):
    from igptlib.cli import main

    monkeypatch.setitem(sys.modules, "papermill", None)  # import papermill now fails, as where it is not installed
    assert main(["sweep", "--sizes", "xs", "--notebooks", "04_model", "--smoke", "--runs", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["igpt sweep: error: running the course's notebooks (igpt sweep) needs papermill, which is not "
                     "installed: pip install 'igptlib[course]'"]


def test_igpt_models_dir_names_another_folder(tmp_path):
    shutil.copy2(REPO / "models" / "mnist.safetensors", tmp_path / "digits.safetensors")
    check = run_python(Path(sys.executable), "import igptlib; print(igptlib.shipped_models()); igptlib.load_model('digits')",
                       cwd=tmp_path, IGPT_MODELS_DIR=str(tmp_path))
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.strip() == "['digits']"


# -- Colab: the notebooks' badge and first cell ------------------------------------------------------

def test_every_course_notebook_has_the_badge_and_set_up_cell_made_from_the_one_address(tmp_path):
    assert [path.stem for path in NOTEBOOKS] == ["01_data", "02_augmentation", "03_centroids", "04_model",
                                                 "05_training", "06_completion", "07_evaluation", "08_explorer"]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        assert "".join(cells[0]["source"]) == colab.badge(path.stem), f"{path.name}: run scripts/colab_cells.py"
        assert first_cell(path) == colab.set_up_cell(), f"{path.name}: run scripts/colab_cells.py"
        assert f"github/igpt-course/igpt/blob/main/notebooks/{path.name})" in cells[0]["source"][0]
        copy = tmp_path / path.name
        shutil.copy2(path, copy)
        assert not colab.write_colab_cells(copy) and copy.read_bytes() == path.read_bytes(), "the generator agrees"
    assert f"{colab.REPOSITORY}.git" in colab.set_up_cell()
    readme = (REPO / "README.md").read_text()
    assert colab.colab_url("01_data") in readme and "OWNER/REPO" not in readme


def as_colab(cell: str) -> str:
    """The cell as a plain Python script that Colab would run. The cell looks for the google.colab
    module, which Colab's runtime imports; a module of that name is put in place first."""
    return "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n" + cell


def test_off_colab_the_first_cell_does_nothing(tmp_path):
    result = run_python(Path(sys.executable), first_cell(NOTEBOOKS[0]), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "" and list(tmp_path.iterdir()) == []


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


def git_that_clones_the_course_from(copy: Path, folder: Path) -> Path:
    """A folder holding a `git` that logs its arguments to folder/git.log, then runs the real git with
    the course's address replaced by `copy` (there is no network here)."""
    folder.mkdir()
    script = folder / "git"
    script.write_text(f"""#!{sys.executable}
import subprocess, sys
with open({str(folder / "git.log")!r}, "a") as log:
    print(*sys.argv[1:], file=log)
arguments = [{str(copy)!r} if argument == {colab.REPOSITORY + ".git"!r} else argument for argument in sys.argv[1:]]
sys.exit(subprocess.run([{shutil.which("git")!r}, *arguments]).returncode)
""")
    script.chmod(0o755)
    return folder


def test_on_colab_the_first_cell_alone_clones_the_course_installs_and_imports_it(tmp_path):
    repository = committed_copy_of_this_checkout(tmp_path / "repository")
    tools = git_that_clones_the_course_from(repository, tmp_path / "bin")
    python = fresh_environment(tmp_path / "venv")
    content = tmp_path / "content"  # Colab's working directory
    content.mkdir()
    script = as_colab(first_cell(NOTEBOOKS[0])) + "\nimport igptlib; print(igptlib.__file__); print(os.getcwd())"
    # No IGPT_REPO, no other cell: the course's own address.
    result = run_python(python, script, cwd=content, PATH=f"{tools}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (tools / "git.log").read_text() == f"clone --depth 1 {colab.REPOSITORY}.git igpt\n"
    clone = content / "igpt"
    *_, imported, cwd = result.stdout.splitlines()
    assert Path(imported) == clone / "igptlib" / "__init__.py" and Path(cwd) == clone
    assert "installing what this runtime lacks" not in result.stdout, "everything was there: nothing to install"

    # Installed, not only importable from the clone: a new process elsewhere finds it too.
    check = run_python(python, "import igptlib; print(igptlib.__file__)", cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    assert Path(check.stdout.strip()) == clone / "igptlib" / "__init__.py"


def test_colab_installs_the_core_and_the_course_less_what_colab_brings():
    wanted = colab.project_requirements(REPO)
    names = {Requirement(spec).name for spec in wanted}
    assert {"lightning", "papermill", "ipywidgets", "torch"} <= names and "transformers" not in names
    assert not {"pytest", "nbval", "playwright", "voila"} & names


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
