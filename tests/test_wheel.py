"""The built wheel carries everything geomsteer reads: install it into a fresh environment and run it elsewhere."""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """A fresh virtual environment with only the wheel installed; its dependencies are read from the
    project's environment through a plain path entry (the project's editable install is not seen)."""
    import shutil

    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources: a build in the checkout would race the other worker's bytecode
    # writes in geomsteer/ (a .pyc renamed into place while setuptools lists the package once failed it).
    src = tmp / "src"
    shutil.copytree(ROOT / "geomsteer", src / "geomsteer", ignore=shutil.ignore_patterns("__pycache__", "*.pyc*"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("geomsteer-*.whl")
    env_dir = tmp / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # A plain directory line: the project's site-packages joins sys.path, but its .pth files (the
    # editable finder that points at this checkout) are not run.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps",
                    "--no-index", str(whl)], check=True, capture_output=True)
    return env_dir, tmp


def _run(env_dir, cwd, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEOMSTEER_QUIET": "1"}
    env.pop("GEOMSTEER_WORDNET_DIR", None)
    env.pop("PYTHONPATH", None)
    return subprocess.run([*args], cwd=cwd, env=env, capture_output=True, text=True)


def test_wheel_ships_the_data_it_reads(wheel_env):
    env_dir, tmp = wheel_env
    code = ("import geomsteer, geomsteer.wordnet as w, geomsteer.steering as s; print(geomsteer.__file__); "
            "print(len(w.load_wordnet().synsets)); print(len(s.load_pairs('sentiment')[0]), "
            "len(s.load_eval('animal_plant_eval')[0]))")
    out = _run(env_dir, tmp, str(env_dir / "bin" / "python"), "-c", code)
    assert out.returncode == 0, out.stderr
    where, n_synsets, sizes = out.stdout.strip().splitlines()
    assert str(env_dir) in where and str(ROOT) not in where  # the installed copy, not this checkout
    assert int(n_synsets) > 80_000
    assert all(int(x) > 0 for x in sizes.split())


@pytest.mark.real_model
def test_installed_command_runs_from_another_directory(wheel_env):
    env_dir, tmp = wheel_env
    out = _run(env_dir, tmp, str(env_dir / "bin" / "geomsteer"), "hierarchy", "--model", "gemma-3-270m",
               "--no-baselines", "--min-tokens", "400", "--out", "run")
    assert out.returncode == 0, out.stderr
    assert (tmp / "run" / "result.json").is_file() and (tmp / "run" / "report.md").is_file()
