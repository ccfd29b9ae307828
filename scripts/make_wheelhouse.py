"""Prepare, on a machine with PyPI, what scripts/gpu_check.sh needs on a bare, offline GPU machine.

    python scripts/make_wheelhouse.py                        # wheels for Python 3.12 + Fashion-MNIST
    python scripts/make_wheelhouse.py --python-version 3.11  # the same wheels for this machine's Python
                                                             # (to test the offline install here)
    python scripts/make_wheelhouse.py --report               # sizes and the run plan only, no download
    python scripts/make_wheelhouse.py --python-version 3.11 --emulate-env /tmp/gpuenv
        # also a venv here whose only packages are this machine's copies of the GPU machine's own
        # (GPU_PREINSTALLED): gpu_check.sh run with its python3 must get the rest from the wheelhouse

The GPU machine (scripts/GPU_CHECK.md) has Python 3.12 with torch, torchvision, numpy, scipy,
matplotlib, pandas, tqdm, pytest, PyYAML, packaging and more (GPU_PREINSTALLED below), and reaches no
package registry. What the app imports beyond that travels as wheels (WHEELS below: Hydra, OmegaConf and
OmegaConf's ANTLR runtime; wandb is imported only with logger=wandb, which the check never uses).
This script writes, into ignored folders that a `run` call carries (`.gpu_carry/`, see .gitignore):

  .gpu_carry/wheels-py312/        the wheels (pip download --only-binary for manylinux x86_64 / CPython
                                  3.12; antlr4-python3-runtime 4.9.3 has no wheel on PyPI, so its sdist
                                  is built here into a pure-Python py3-none-any wheel), MANIFEST.txt
  .gpu_carry/fashion-mnist/       the four Fashion-MNIST .gz files and SHA256SUMS (layout `whole`), or
  .gpu_carry/fashion-mnist-part1/ the same bytes in two parts for two `run` calls (layout `split`, when
  .gpu_carry/fashion-mnist-part2/ the tree plus the whole data is over the 64 MiB that one call sends)

and prints the size of everything a call sends (the tracked and untracked-not-ignored files of the
checkout, plus the carried folders) against the 64 MiB limit, and the exact `run` call(s) to make.
Each wheel's own requirements are checked against the wheelhouse and GPU_PREINSTALLED (tests/
test_gpu_check.py checks that the app's imports are covered by the two).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".gpu_carry"
# What one `run` call may send: the working tree (tracked and untracked-not-ignored files, shared/)
# plus the carried paths (/work/.library/device/README.md, Limits).
BUDGET_BYTES = 64 * 2**20
# Room kept free below the budget for files others add before the call (results, notes).
MARGIN_BYTES = 2 * 2**20

# Distribution -> its import name: what the app imports that the GPU machine lacks. Versions: the ones
# installed here (the versions the test suite runs with), else these.
WHEELS = {
    "hydra-core": "hydra",
    "omegaconf": "omegaconf",
    "antlr4-python3-runtime": "antlr4",
}
FALLBACK_VERSIONS = {"hydra-core": "1.3.2", "omegaconf": "2.3.0", "antlr4-python3-runtime": "4.9.3"}
# Distributions the app may import only on paths the GPU check does not take.
NOT_CARRIED = {
    "wandb": "imported only inside bn_repro/records/tracking.py, for logger=wandb (the check: logger=none)",
}
# The GPU machine's Python packages ('cuda' image, /work/.library/device/KINDS.md, read 2026-11-17).
GPU_PREINSTALLED = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
    cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
    execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
    httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
    jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
    lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
    mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
    networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
    nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
    optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
    torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
    typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
    zipp
    """.split()
)
FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
SPLIT_FILE = "train-images-idx3-ubyte.gz"  # the one large file, cut in two for the split layout
# manylinux tags pip must be told one by one (it matches N exactly); the wheels here are pure Python,
# the tags matter only if a binary one is ever added.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
GPU_CHECK_TIMEOUT_S = 540  # the run call's timeout_s: the script's own 420 s budget plus the start-up


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_dir(python_version: str) -> Path:
    return CARRY / f"wheels-py{python_version.replace('.', '')}"


def pinned_versions() -> dict[str, str]:
    versions = {}
    for dist in WHEELS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = FALLBACK_VERSIONS[dist]
    return versions


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def download_wheels(python_version: str, dest: Path) -> list[Path]:
    """The WHEELS for CPython `python_version` on manylinux x86_64 into `dest` (emptied first)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for dist, version in pinned_versions().items():
        spec = f"{dist}=={version}"
        got = pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                  "--implementation", "cp", *platforms, "-d", str(dest), spec)  # fmt: skip
        if got.returncode == 0:
            continue
        # No wheel on PyPI (antlr4-python3-runtime 4.9.3 is an sdist): build one; it must be pure Python,
        # since a binary built here would be for this machine's Python, not the GPU machine's.
        with tempfile.TemporaryDirectory() as build:
            built = pip("wheel", "--no-deps", "-w", build, spec)
            wheels = list(Path(build).glob("*.whl"))
            if built.returncode != 0 or len(wheels) != 1:
                raise SystemExit(f"make_wheelhouse: no wheel for {spec}:\n{got.stderr}\n{built.stderr}")
            if not wheels[0].name.endswith("-py3-none-any.whl"):
                raise SystemExit(f"make_wheelhouse: {wheels[0].name} built from the sdist is not pure Python")
            shutil.copy2(wheels[0], dest / wheels[0].name)
    wheels = sorted(dest.glob("*.whl"))
    lines = [f"{hashlib.sha256(w.read_bytes()).hexdigest()}  {w.stat().st_size:>9}  {w.name}" for w in wheels]
    (dest / "MANIFEST.txt").write_text(
        f"# wheels for CPython {python_version}, manylinux x86_64 (scripts/make_wheelhouse.py)\n"
        + "\n".join(lines)
        + "\n"  # fmt: skip
    )
    return wheels


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """(distribution name, version, Requires-Dist lines) read from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
    fields = [line.split(":", 1) for line in text.split("\n\n", 1)[0].splitlines() if ":" in line]
    name = next(v.strip() for k, v in fields if k == "Name")
    version = next(v.strip() for k, v in fields if k == "Version")
    return name, version, [v.strip() for k, v in fields if k == "Requires-Dist"]


def check_closure(wheels: list[Path], python_version: str) -> list[str]:
    """Problems with the wheelhouse as a whole: a WHEELS distribution missing, two versions of one, or a
    requirement (for `python_version`, no extras) that neither the wheelhouse nor the GPU machine has, or
    whose version the wheelhouse's copy does not satisfy. Empty: complete."""
    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "extra": ""}
    found: dict[str, str] = {}
    problems = []
    requirements = []
    for wheel in wheels:
        name, version, requires = wheel_metadata(wheel)
        if normalize(name) in found:
            problems.append(f"two wheels of {name}: pip would refuse the install")
        found[normalize(name)] = version
        requirements += [(name, Requirement(r)) for r in requires]
    for dist in WHEELS:
        if normalize(dist) not in found:
            problems.append(f"{dist}: no wheel")
    for owner, req in requirements:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = normalize(req.name)
        if dep in found:
            if not req.specifier.contains(found[dep], prereleases=True):
                problems.append(f"{owner} needs {req}, the wheelhouse has {found[dep]}")
        elif dep not in GPU_PREINSTALLED:
            problems.append(f"{owner} needs {req}: neither in the wheelhouse nor on the GPU machine")
    return problems


def copy_data(source: Path, layout: str) -> dict[str, list[Path]]:
    """The four Fashion-MNIST files in `layout` (whole | split) under .gpu_carry/; the other layout's
    folders are removed. Returns {carry folder name: its files}."""
    missing = [f for f in FASHION_FILES if not (source / f).is_file()]
    if missing:
        raise SystemExit(f"make_wheelhouse: {source} lacks {', '.join(missing)}")
    for old in ("fashion-mnist", "fashion-mnist-part1", "fashion-mnist-part2"):
        shutil.rmtree(CARRY / old, ignore_errors=True)
    sums = "".join(f"{hashlib.sha256((source / f).read_bytes()).hexdigest()}  {f}\n" for f in FASHION_FILES)
    if layout == "whole":
        folder = CARRY / "fashion-mnist"
        folder.mkdir(parents=True)
        for f in FASHION_FILES:
            shutil.copy2(source / f, folder / f)
        (folder / "SHA256SUMS").write_text(sums)
        return {folder.name: sorted(folder.iterdir())}
    # split: the first part of the large file alone in part1, the rest of the bytes in part2, cut so that
    # the two calls send about the same (part2's call also carries the wheels).
    part1, part2 = CARRY / "fashion-mnist-part1", CARRY / "fashion-mnist-part2"
    part1.mkdir(parents=True)
    part2.mkdir(parents=True)
    data = (source / SPLIT_FILE).read_bytes()
    others = sum((source / f).stat().st_size for f in FASHION_FILES if f != SPLIT_FILE)
    cut = min(len(data), (len(data) + others) // 2)
    (part1 / f"{SPLIT_FILE}.part1").write_bytes(data[:cut])
    (part2 / f"{SPLIT_FILE}.part2").write_bytes(data[cut:])
    for f in FASHION_FILES:
        if f != SPLIT_FILE:
            shutil.copy2(source / f, part2 / f)
    for folder in (part1, part2):
        (folder / "SHA256SUMS").write_text(sums)
    return {part1.name: sorted(part1.iterdir()), part2.name: sorted(part2.iterdir())}


def emulate_gpu_env(dest: Path) -> Path:
    """A venv at `dest` (replaced) that sees only the distributions of GPU_PREINSTALLED that this machine
    has (symlinked into dest/gpu-preinstalled, on sys.path through a .pth file): not Hydra, OmegaConf,
    wandb, the Hydra plugins or the editable bn_repro. Returns its python3. The stand-in for the GPU
    machine when testing the offline install (its Python version is this machine's)."""
    import venv

    shutil.rmtree(dest, ignore_errors=True)
    venv.create(dest, system_site_packages=False, with_pip=False, symlinks=True)
    view = dest / "gpu-preinstalled"
    view.mkdir()
    for dist in importlib.metadata.distributions():
        if normalize(dist.metadata["Name"] or "") not in GPU_PREINSTALLED:
            continue
        base = Path(dist.locate_file(""))
        tops = {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            source, link = base / top, view / top
            if source.exists() and not top.endswith(".pth") and not os.path.lexists(link):
                link.symlink_to(source)
    site = next((dest / "lib").glob("python3*/site-packages"))
    (site / "gpu-preinstalled.pth").write_text(f"{view}\n")
    return dest / "bin" / "python3"


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what a `run` call sends besides its carried paths: the tracked files present in the
    working tree, the untracked files git does not ignore, and shared/ if there is one."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=repo, capture_output=True, check=True).stdout  # fmt: skip
    paths = {repo / p for p in listed.decode().split("\0") if p}
    if (repo / "shared").is_dir():
        paths |= {p for p in (repo / "shared").rglob("*") if not p.is_dir()}
    return sum(p.lstat().st_size for p in paths if os.path.lexists(p) and not p.is_dir())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def run_calls(wheels: str, layout: str) -> list[tuple[str, list[str], int]]:
    """The `run` calls of the plan: (command, carry, timeout_s)."""
    check = (f"bash scripts/gpu_check.sh --wheelhouse {wheels} --archive $OUT/gpu_check.tgz "
             "/tmp/gpu_check_out 2>&1")  # fmt: skip
    if layout == "split":
        stage = ("sha256sum .gpu_carry/fashion-mnist-part1/*.part1 && "
                 "cp -r .gpu_carry/fashion-mnist-part1 /tmp/ && echo staged")  # fmt: skip
        return [
            (stage, [".gpu_carry/fashion-mnist-part1"], 120),
            (check, [wheels, ".gpu_carry/fashion-mnist-part2"], GPU_CHECK_TIMEOUT_S),
        ]
    return [(check, [wheels, ".gpu_carry/fashion-mnist"], GPU_CHECK_TIMEOUT_S)]


def report(wheels: Path, layout: str) -> bool:
    """Print the sizes and the plan; True when every call fits the budget."""
    tree = tree_bytes()
    carried = {p.name: folder_bytes(p) for p in sorted(CARRY.glob("*")) if p.is_dir()}
    print(f"working tree that travels (tracked + untracked-not-ignored, shared/): {mib(tree)}")
    results = REPO / "results"
    if results.is_dir():
        listed = subprocess.run(["git", "ls-files", "-z", "results"], cwd=REPO, capture_output=True).stdout
        in_results = sum((REPO / p).stat().st_size for p in listed.decode().split("\0")
                         if p and (REPO / p).is_file())  # fmt: skip
        print(f"  of which results/: {mib(in_results)}")
    for name, size in carried.items():
        print(f".gpu_carry/{name}: {mib(size)}")
    fits = True
    calls = run_calls(str(wheels.relative_to(REPO)), layout)
    for i, (command, carry, timeout) in enumerate(calls, 1):
        total = tree + sum(folder_bytes(REPO / c) for c in carry)
        ok = total + MARGIN_BYTES <= BUDGET_BYTES
        fits &= ok
        print(f"\ncall {i} of {len(calls)} sends {mib(total)} of {mib(BUDGET_BYTES)} "
              f"({'fits' if ok else 'OVER the limit (or within the 2 MiB margin)'}):")  # fmt: skip
        print(f"  run(command={command!r},\n      carry={carry!r}, timeout_s={timeout})")
    if layout == "split":
        print(
            "\nSplit layout: make call 2 at once after call 1 (the machine stays warm 30 s after a call, and"
            "\nkeeps part1 in /tmp and in its copy of .gpu_carry/ only while warm). gpu_check.sh joins the"
            "\nparts and checks them against SHA256SUMS; without part1 it says so and runs the short Fig. 1"
            "\npair on generated data instead of the full Fig. 1 (make both calls again for that)."
        )
    return fits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python-version", default="3.12", help="the target's CPython, e.g. 3.12 (default)")
    parser.add_argument("--data", type=Path, default=FASHION_SOURCE, help="folder of the four .gz files")
    parser.add_argument(
        "--data-layout",
        choices=["auto", "whole", "split", "none"],
        default="auto",
        help="auto: whole if one call can send the tree, the wheels and the data, else split",
    )
    parser.add_argument("--report", action="store_true", help="only print the sizes and the plan")
    parser.add_argument(
        "--emulate-env",
        type=Path,
        default=None,
        metavar="DIR",
        help="also make a venv in DIR with only the GPU machine's packages (emulate_gpu_env)",
    )
    args = parser.parse_args(argv)
    wheels = wheel_dir(args.python_version)
    if not args.report:
        downloaded = download_wheels(args.python_version, wheels)
        print(f"{wheels.relative_to(REPO)}: {len(downloaded)} wheels, {mib(folder_bytes(wheels))}")
        for w in downloaded:
            print(f"  {w.name}")
    problems = check_closure(sorted(wheels.glob("*.whl")), args.python_version)
    for problem in problems:
        print(f"make_wheelhouse: {problem}", file=sys.stderr)
    layout = args.data_layout
    if layout == "auto":
        whole = sum((args.data / f).stat().st_size for f in FASHION_FILES if (args.data / f).is_file())
        room = BUDGET_BYTES - MARGIN_BYTES - tree_bytes() - folder_bytes(wheels)
        layout = "whole" if whole <= room else "split"
        print(f"data layout: {layout} (data {mib(whole)}, room left in one call {mib(room)})")
    if layout != "none" and not args.report:
        for name, files in copy_data(args.data, layout).items():
            print(f".gpu_carry/{name}: {', '.join(f.name for f in files)}")
    if layout == "none":
        layout = "split" if (CARRY / "fashion-mnist-part1").is_dir() else "whole"
    if args.emulate_env:
        python = emulate_gpu_env(args.emulate_env.resolve())
        print(f"a venv with only the GPU machine's packages: {python}")
    print()
    fits = report(wheel_dir("3.12"), layout)
    return 1 if problems or not fits else 0


if __name__ == "__main__":
    sys.exit(main())
