"""What pip, conda and `mlflow run` install: dependency markers, one source of dependencies, package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

LINUX_X86 = {"platform_machine": "x86_64", "sys_platform": "linux"}
LINUX_ARM = {"platform_machine": "aarch64", "sys_platform": "linux"}
MAC_ARM = {"platform_machine": "arm64", "sys_platform": "darwin"}


def _installed(requirements: list[str], env: dict) -> dict[str, Requirement]:
    """The requirements whose markers hold on a machine described by ``env``, by name."""
    out = {}
    for line in requirements:
        req = Requirement(line)
        full = {"extra": "", "python_version": "3.11", "os_name": "posix", **env}
        if req.marker is None or req.marker.evaluate(full):
            out[req.name] = req
    return out


def _tensorflows(requirements: list[str], env: dict) -> set[str]:
    return {name for name in _installed(requirements, env) if name.startswith("tensorflow")}


def test_base_dependencies_leave_tensorflow_to_an_extra_or_to_what_is_installed():
    assert _tensorflows(PYPROJECT["dependencies"], LINUX_X86) == set(), (
        "a preinstalled GPU TensorFlow (Colab, Kaggle) must not be overlaid with tensorflow-cpu"
    )


@pytest.mark.parametrize(
    "machine, cpu, gpu",
    [
        (LINUX_X86, {"tensorflow-cpu"}, {"tensorflow"}),
        (LINUX_ARM, {"tensorflow"}, {"tensorflow"}),
        (MAC_ARM, {"tensorflow"}, {"tensorflow"}),
    ],
)
def test_cpu_and_gpu_extras_install_one_tensorflow_each(machine, cpu, gpu):
    extras = PYPROJECT["optional-dependencies"]
    assert _tensorflows(extras["cpu"], machine) == cpu
    assert _tensorflows(extras["gpu"], machine) == gpu


def test_gpu_extra_pulls_cuda_on_linux():
    req = _installed(PYPROJECT["optional-dependencies"]["gpu"], LINUX_X86)["tensorflow"]
    assert req.extras == {"and-cuda"} and "2.21" in str(req.specifier)


def test_numpy_floor_and_postgres_driver_only_in_its_extra():
    base = _installed(PYPROJECT["dependencies"], LINUX_X86)
    assert "2.0" in base["numpy"].specifier and "1.26" not in base["numpy"].specifier  # np.bitwise_count
    assert "psycopg2-binary" not in base
    extras = PYPROJECT["optional-dependencies"]
    assert [Requirement(r).name for r in extras["postgres"]] == ["psycopg2-binary"]
    test_extra = {Requirement(r).name: Requirement(r) for r in extras["test"]}
    assert test_extra["medtune"].extras == {"cpu", "postgres"}, "CI installs [test]: it needs TensorFlow and the driver"


def test_conda_and_python_env_install_medtune_from_pyproject():
    """conda.yaml and python_env.yaml list no dependency of their own: they install this project's
    `cpu` extra, so they cannot drift from pyproject.toml."""
    supported = SpecifierSet(PYPROJECT["requires-python"])
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pythons = [d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert len(pythons) == 1 and pythons[0].split("=")[1] + ".0" in supported
    pip_lists = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    assert pip_lists == [["--editable .[cpu]"]]

    python_env = yaml.safe_load((REPO / "python_env.yaml").read_text())
    assert python_env["python"] in supported
    assert python_env["dependencies"] == [".[cpu]"]
    mlproject = yaml.safe_load((REPO / "MLproject").read_text())
    assert mlproject.get("python_env") == "python_env.yaml" and "conda_env" not in mlproject, (
        "plain `mlflow run .` must build a virtualenv: pip-only machines have no conda"
    )


def test_readme_states_the_supported_python_versions():
    readme = (REPO / "README.md").read_text()
    assert "Python 3.10, 3.11 and 3.12" in readme
    assert SpecifierSet(PYPROJECT["requires-python"]) == SpecifierSet(">=3.10,<3.13")


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_finds_the_search_spaces(tmp_path):
    """A non-editable install (a wheel, `pip install .`) ships the search spaces as package data."""
    source = tmp_path / "source"  # building writes egg-info and build/ beside the sources: not into the checkout
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "mlruns", ".medtune", "data", "*.egg-info", "build", "__pycache__", "*.db"
        ),
    )
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDTUNE_HOME")}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        timeout=600,
        env=env,
    )
    wheel = next(dist.glob("medtune-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (REPO / "search_spaces").glob("*.yaml")}
    assert {f"medtune/search_spaces/{n}" for n in shipped} <= names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300, env=env
    )
    # medtune's dependencies come from this interpreter's site-packages, after the fresh venv's own
    site = next(p for p in sys.path if p.endswith("site-packages"))
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "medtune_test_deps.pth").write_text(site + "\n")
    code = (
        "import medtune, medtune.space as s; from pathlib import Path; "
        "p = s.resolve_space_path('cnn'); assert 'site-packages' in str(p), p; "
        "print(p, len(s.load_space(p).params), medtune.__version__)"
    )
    out = subprocess.run([str(python), "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "/site-packages/medtune/search_spaces/cnn.yaml" in out.stdout
    version = subprocess.run(
        [str(env_dir / "bin" / "medtune"), "--version"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.stdout.strip() == "medtune, version 0.1.0", version.stderr


def test_every_package_under_src_and_the_search_spaces_are_shipped():
    """pyproject lists the packages (the spaces live at the top, mapped into medtune/search_spaces)."""
    found = {
        ".".join(p.parent.relative_to(REPO / "src").parts) for p in (REPO / "src" / "medtune").rglob("__init__.py")
    }
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools["packages"]) == found | {"medtune.search_spaces"}
    assert setuptools["package-dir"]["medtune.search_spaces"] == "search_spaces"
    assert not (REPO / "src" / "medtune" / "search_spaces").exists()  # one copy, at the top
