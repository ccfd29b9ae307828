"""scripts/gpu_check.sh and scripts/make_wheelhouse.py, without a GPU and without a network: the script is
valid bash and stops (exit 2) before any check without CUDA; what it installs from the wheelhouse covers
what the app imports beyond the GPU machine's own packages; Fashion-MNIST's split layout joins back to
the original bytes. The slow test installs the wheelhouse into a venv that has only the GPU machine's
packages and runs the script there (it needs `python scripts/make_wheelhouse.py --python-version X.Y`
to have been run for this Python, and is skipped otherwise)."""

import ast
import gzip
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"
no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is here: the script would run its checks"
)


def _load_make_wheelhouse():
    spec = importlib.util.spec_from_file_location("make_wheelhouse", REPO / "scripts" / "make_wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mw = _load_make_wheelhouse()


def run_script(*args, env=None, cwd=None, script=SCRIPT):
    return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)  # fmt: skip


def test_gpu_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_help_and_bad_option():
    result = run_script("--help")
    assert result.returncode == 0 and "--wheelhouse" in result.stdout and "fig1_full" in result.stdout
    result = run_script("--no-such-option")
    assert result.returncode == 64 and "unknown option" in result.stderr


@no_cuda
def test_gpu_check_without_a_gpu_stops_with_a_clear_message(tmp_path):
    result = run_script(tmp_path / "out")
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
    assert not (tmp_path / "out" / "summary.txt").exists()


def test_gpu_check_with_an_empty_wheelhouse_says_so(tmp_path):
    (tmp_path / "wheels").mkdir()
    result = run_script("--wheelhouse", tmp_path / "wheels", tmp_path / "out")
    assert result.returncode == 3 and "no wheels in" in result.stderr


# --- What travels as wheels covers what the check path imports ---------------------------------------------


def _check_path_files() -> list[Path]:
    """The Python files the GPU check runs: the package, the Hydra plugin, the scripts it calls, and the
    test files with GPU tests (with conftest)."""
    script = SCRIPT.read_text()
    scripts = sorted({REPO / "scripts" / name for name in
                      ("bench_norm.py", "bench_speedup.py", "make_figures.py", "speedup_table.py")
                      if f"scripts/{name}" in script})  # fmt: skip
    gpu_tests = [p for p in (REPO / "tests").glob("test_*.py") if "pytest.mark." + "gpu" in p.read_text()]
    assert gpu_tests, "no test file marks a test gpu: pytest -m gpu would run nothing"
    return [*(REPO / "bn_repro").rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py"), *scripts,
            REPO / "tests" / "conftest.py", *gpu_tests]  # fmt: skip


def _third_party_imports(files: list[Path]) -> dict[str, dict[str, set[str]]]:
    """{top-level module: {"module": files importing it at module level, "nested": files importing it
    inside a function or block}} for the modules that are neither the standard library nor ours."""
    ours = {"bn_repro", "hydra_plugins", "conftest"} | {p.stem for p in (REPO / "tests").glob("*.py")}
    found: dict[str, dict[str, set[str]]] = {}
    for path in files:
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root in sys.stdlib_module_names or root in ours:
                    continue
                where = "module" if id(node) in top_level else "nested"
                found.setdefault(root, {"module": set(), "nested": set()})[where].add(
                    str(path.relative_to(REPO))
                )
    return found


def test_the_wheelhouse_and_the_gpu_machine_cover_the_check_paths_imports():
    distributions = importlib.metadata.packages_distributions()
    carried = {mw.normalize(d) for d in mw.WHEELS}
    available = carried | mw.GPU_PREINSTALLED
    problems = []
    for module, where in _third_party_imports(_check_path_files()).items():
        dists = {mw.normalize(d) for d in distributions.get(module, [module])}
        if dists & available:
            continue
        if dists & set(mw.NOT_CARRIED):
            if where["module"]:
                problems.append(
                    f"{module} (not carried) is imported at module level in {sorted(where['module'])}"
                )
            continue
        problems.append(f"{module} ({', '.join(sorted(dists))}) is neither carried nor on the GPU machine: "
                        f"{sorted(where['module'] | where['nested'])}")  # fmt: skip
    assert not problems, "\n".join(problems)
    # The import names WHEELS gives are the ones these distributions provide here.
    for dist, module in mw.WHEELS.items():
        assert dist in distributions.get(module, []), (dist, module)


def test_the_carried_wheels_requirements_are_met_for_python_3_12():
    from packaging.requirements import Requirement

    env = {"python_version": "3.12", "python_full_version": "3.12.0", "extra": ""}
    versions = mw.pinned_versions()
    for dist in mw.WHEELS:
        for line in importlib.metadata.requires(dist) or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = mw.normalize(req.name)
            carried = {mw.normalize(d): v for d, v in versions.items()}
            if name in carried:
                assert req.specifier.contains(carried[name]), (dist, line, carried[name])
            else:
                assert name in mw.GPU_PREINSTALLED, (
                    f"{dist} needs {line}: not carried, not on the GPU machine"
                )


@pytest.mark.parametrize("version", ["3.12", f"{sys.version_info[0]}.{sys.version_info[1]}"])
def test_a_downloaded_wheelhouse_is_complete(version):
    wheels = sorted(mw.wheel_dir(version).glob("*.whl"))
    if not wheels:
        pytest.skip(
            f"no wheelhouse for {version}: python scripts/make_wheelhouse.py --python-version {version}"
        )
    assert mw.check_closure(wheels, version) == []
    assert all(w.name.endswith("-none-any.whl") or "cp" + version.replace(".", "") in w.name for w in wheels)


# --- Fashion-MNIST's layouts --------------------------------------------------------------------------------


def _fake_fashion(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    contents = {}
    for i, name in enumerate(mw.FASHION_FILES):
        data = gzip.compress(os.urandom(3000 if name == mw.SPLIT_FILE else 200 + i), mtime=0)
        (folder / name).write_bytes(data)
        contents[name] = data
    return contents


def _split(tmp_path, monkeypatch, carry: Path) -> dict[str, bytes]:
    monkeypatch.setattr(mw, "CARRY", carry)
    contents = _fake_fashion(tmp_path / "source")
    parts = mw.copy_data(tmp_path / "source", "split")
    assert set(parts) == {"fashion-mnist-part1", "fashion-mnist-part2"}
    return contents


def test_the_split_layout_holds_the_same_bytes(tmp_path, monkeypatch):
    contents = _split(tmp_path, monkeypatch, tmp_path / ".gpu_carry")
    part1, part2 = tmp_path / ".gpu_carry/fashion-mnist-part1", tmp_path / ".gpu_carry/fashion-mnist-part2"
    joined = (part1 / f"{mw.SPLIT_FILE}.part1").read_bytes() + (part2 / f"{mw.SPLIT_FILE}.part2").read_bytes()
    assert joined == contents[mw.SPLIT_FILE]
    assert sorted(p.name for p in part1.iterdir()) == ["SHA256SUMS", f"{mw.SPLIT_FILE}.part1"]
    for name, data in contents.items():
        if name != mw.SPLIT_FILE:
            assert (part2 / name).read_bytes() == data
    # The parts are about even once the small files are counted with part2.
    sizes = [mw.folder_bytes(part1), mw.folder_bytes(part2)]
    assert abs(sizes[0] - sizes[1]) < 1000


@pytest.mark.slow
@no_cuda
def test_the_split_layout_joins_back_in_gpu_check(tmp_path, monkeypatch):
    # A stand-in checkout: the script (it finds .gpu_carry/ beside it), the app on PYTHONPATH.
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    script = repo / "scripts" / "gpu_check.sh"
    shutil.copy2(SCRIPT, script)
    _split(tmp_path, monkeypatch, repo / ".gpu_carry")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = run_script(tmp_path / "out", env=env, cwd=tmp_path, script=script)
    assert result.returncode == 2, result.stderr
    assert "Fashion-MNIST: /tmp/gpu_check." in result.stdout and "/fashion-mnist" in result.stdout

    # A damaged part is caught by SHA256SUMS, and part2 without part1 is reported as such.
    (repo / ".gpu_carry/fashion-mnist-part2" / f"{mw.SPLIT_FILE}.part2").write_bytes(b"damaged")
    result = run_script(tmp_path / "out", env=env, cwd=tmp_path, script=script)
    assert "do not match SHA256SUMS" in result.stderr
    shutil.rmtree(repo / ".gpu_carry/fashion-mnist-part1")
    if not Path("/tmp/fashion-mnist-part1").exists():
        result = run_script(tmp_path / "out", env=env, cwd=tmp_path, script=script)
        assert "fashion-mnist-part1 is not" in result.stderr


def test_the_whole_layout_and_the_run_plan(tmp_path, monkeypatch):
    monkeypatch.setattr(mw, "CARRY", tmp_path / ".gpu_carry")
    contents = _fake_fashion(tmp_path / "source")
    (files,) = mw.copy_data(tmp_path / "source", "whole").values()
    sums = (tmp_path / ".gpu_carry/fashion-mnist/SHA256SUMS").read_text()
    for name, data in contents.items():
        assert (tmp_path / ".gpu_carry/fashion-mnist" / name).read_bytes() == data
        assert f"{hashlib.sha256(data).hexdigest()}  {name}" in sums
    # Each plan's last call runs the script with the wheels and the data's folder carried.
    for layout, folder in (
        ("whole", ".gpu_carry/fashion-mnist"),
        ("split", ".gpu_carry/fashion-mnist-part2"),
    ):
        command, carry, timeout = mw.run_calls(".gpu_carry/wheels-py312", layout)[-1]
        assert command.startswith("bash scripts/gpu_check.sh --wheelhouse .gpu_carry/wheels-py312 --archive")
        assert carry == [".gpu_carry/wheels-py312", folder] and 420 < timeout <= 600


def test_the_tree_size_counts_tracked_files():
    # results/ is tracked, so it travels: the tree is at least its size.
    listed = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True).stdout
    if not listed:
        pytest.skip("not a git checkout")
    results = sum((REPO / p).stat().st_size for p in listed.split() if (REPO / p).is_file())
    assert mw.tree_bytes() >= results > 0


# --- The offline install in a venv with only the GPU machine's packages -------------------------------------


@pytest.mark.slow
@no_cuda
def test_offline_install_in_a_venv_with_only_the_gpu_machines_packages(tmp_path):
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    wheels = mw.wheel_dir(version)
    if not list(wheels.glob("*.whl")):
        pytest.skip(
            f"no wheelhouse for {version}: python scripts/make_wheelhouse.py --python-version {version}"
        )
    python = mw.emulate_gpu_env(tmp_path / "venv")
    # The stand-in lacks what the wheelhouse brings (and the editable bn_repro).
    for module in ("hydra", "omegaconf", "antlr4", "bn_repro", "wandb"):
        assert subprocess.run(
            [python, "-c", f"import {module}"], capture_output=True, cwd=tmp_path
        ).returncode
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    result = run_script("--wheelhouse", wheels, tmp_path / "out", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device" in result.stderr
    assert "hydra 1." in result.stderr and "/site/hydra/__init__.py" in result.stderr
    assert f"bn_repro from {REPO}" in result.stderr
    # The dry run of one step on the CPU, through the same install.
    result = run_script("--wheelhouse", wheels, "--cpu-dry-run", "--only", "norm_check", tmp_path / "dry",
                        env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "norm_check: exit 0" in (tmp_path / "dry" / "summary.txt").read_text()
    assert "all ok" in (tmp_path / "dry" / "norm_check.md").read_text()


def test_the_documented_run_calls_are_the_ones_make_wheelhouse_prints():
    doc = (REPO / "scripts" / "GPU_CHECK.md").read_text()
    header = SCRIPT.read_text()
    for layout in ("split", "whole"):
        for command, carry, timeout in mw.run_calls(".gpu_carry/wheels-py312", layout):
            for text in (doc, header):
                assert f'command="{command}"' in text or layout == "whole"
                assert str(carry).replace("'", '"') in text
            assert f"timeout_s={timeout}" in doc
