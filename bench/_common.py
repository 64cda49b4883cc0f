"""Helpers shared by the benchmarks: the one set-up, where the real data is, an isolated medtune home, a table."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Bench:
    """What :func:`set_up` gives a benchmark.

    Attributes:
        home: its isolated medtune home (tracking store, caches), removed at exit unless ``--keep-home``.
        data: the image folder it reads (``--data``, cut to ``--per-class``; see :func:`add_data_args`).
        threads: TensorFlow's (intra, inter) op threads as medtune sets them, or None if not asked for.
    """

    home: Path
    data: Path
    threads: tuple[int, int] | None


def set_up(name: str, args, *, progress: bool = False, threads: bool = True) -> Bench:
    """The set-up every benchmark shares, in this order: an isolated home, quiet logging, the data
    folder, medtune's TensorFlow threads (``threads``), MLflow pointed at the home's store.

    Args:
        name: the benchmark's name, part of the home's folder name.
        args: its parsed arguments: ``keep_home`` and those of :func:`add_data_args`.
        progress: show medtune's per-trial progress lines.
        threads: configure TensorFlow's threads as medtune does (imports TensorFlow).
    """
    home = isolated_home(name)
    quiet(progress=progress)
    remove_home_at_exit(home, args.keep_home)
    folder = data_folder(args, home)
    configured = None
    if threads:
        from medtune.training import configure_threads

        configured = configure_threads()
    from medtune import tracking

    tracking.configure()
    return Bench(home, folder, configured)


def shared_data(name: str) -> Path:
    root = Path(os.environ.get("MEDTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root / name
    if not path.is_dir():
        sys.exit(f"benchmark needs {path} (set MEDTUNE_SHARED_DATA to the folder holding {name}/)")
    return path


def kept_home(args) -> tuple[Path, Path, str]:
    """The data folder, its dataset name and the home kept across runs of the budget benchmarks.

    ``args.data`` is a folder under ../shared/data (or an absolute path), ``args.dataset`` an
    optional medtune dataset name, ``args.home`` an optional home; ``bench/budget.py`` and
    ``bench/rungs.py`` share the default home (``~/.cache/medtune-bench/budget-<dataset>``), so
    they share one split. Also points MLflow at the home's store and imports medtune from here.
    """
    given = Path(args.data)
    data = given if given.is_absolute() else shared_data(given.parts[0]).parent / given
    dataset = getattr(args, "dataset", None) or (data.name if given.is_absolute() else given.parts[0])
    quick = "-quick" if args.quick else ""
    home = use_home(Path(args.home or Path.home() / ".cache" / "medtune-bench" / f"budget-{dataset}{quick}"))
    return data, home, dataset


def use_home(home: Path) -> Path:
    """``home`` (made if missing) as medtune's home and MLflow store, quiet, medtune imported from here."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ["MEDTUNE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    sys.path.insert(0, str(REPO / "src"))
    return home


def load_rows(path: Path) -> dict:
    """The rows a benchmark recorded in ``path`` (a JSON object of row name -> row), or none."""
    return json.loads(path.read_text()) if path.exists() else {}


def save_row(path: Path, name: str, row: dict) -> None:
    """Record ``row`` under ``name`` in ``path``, keeping the other rows."""
    rows = load_rows(path)
    rows[name] = row
    path.write_text(json.dumps(rows, indent=1))


def isolated_home(prefix: str) -> Path:
    """A fresh medtune home (tracking store, caches) so runs measure cold starts honestly."""
    home = Path(tempfile.mkdtemp(prefix=f"medtune-bench-{prefix}-"))
    os.environ["MEDTUNE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return home


def table(rows: list[dict], title: str) -> str:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    lines = [title, "  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


# ---------------------------------------------------------------- added for the issue-5 benchmarks


def add_data_args(parser, *, per_class: int = 0) -> None:
    """``--data`` (default: the shared brain_mri/Training) and ``--per-class`` (a subset)."""
    parser.add_argument(
        "--data", default=None, help="image folder, one sub-folder per class (default: shared brain_mri/Training)"
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=per_class,
        help="use only the first N images of each class (copied into the bench home); 0 = all",
    )


def data_folder(args, home: Path) -> Path:
    """The folder both sides read: the real one, or a per-class subset of it inside ``home``."""
    src = Path(args.data) if args.data else shared_data("brain_mri") / "Training"
    if not src.is_dir():
        sys.exit(f"benchmark needs the image folder {src}")
    if not args.per_class:
        return src
    return subset_folder(src, home / "data" / src.name, args.per_class)


def subset_folder(src: Path, dst: Path, per_class: int) -> Path:
    """The first ``per_class`` files (by name) of every class folder of ``src``, linked or copied.

    Hard links where the file system allows (no bytes copied), copies otherwise; never symlinks,
    which medtune's scanner ignores when they point outside the dataset root.
    """
    import shutil

    for cls in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out = dst / cls.name
        out.mkdir(parents=True, exist_ok=True)
        files = sorted(f for f in cls.iterdir() if f.is_file() and not f.name.startswith("."))[:per_class]
        for f in files:
            target = out / f.name
            if target.exists():
                continue
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
    return dst


def remove_home_at_exit(home: Path, keep: bool = False) -> None:
    """Delete the bench home (array caches can be hundreds of MB) when the process ends."""
    if keep:
        print(f"keeping {home}")
        return
    import atexit
    import shutil

    atexit.register(shutil.rmtree, home, True)


def machine() -> str:
    """One line: cores (all / usable by this process), load, CPU model, RAM."""
    from medtune.training import usable_cpus  # affinity mask and cgroup quota, as medtune counts them

    cores, usable = os.cpu_count() or 1, usable_cpus()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        ram = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    load = "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"machine: {cores} cores ({usable} usable by this process), load {load}, {model or 'unknown CPU'}{ram}"


def memory() -> dict:
    """Peak and current resident memory (MiB), threads and open file descriptors of this process."""
    import resource

    out = {"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                out["rss_mib"] = int(value.split()[0]) / 1024
            elif key == "RssAnon":  # heap and stacks: what a leak grows (memory-mapped caches are RssFile)
                out["anon_mib"] = int(value.split()[0]) / 1024
            elif key == "VmHWM":
                out["hwm_mib"] = int(value.split()[0]) / 1024
            elif key == "Threads":
                out["threads"] = int(value.split()[0])
    except OSError:
        pass
    try:
        out["fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


QUICK_NOTE = "(--quick: tiny settings to check the benchmark runs; the verdict means nothing at this scale)"


def quiet(progress: bool = False) -> None:
    """The warnings and log lines the medtune CLI hides; ``progress`` shows medtune's per-trial lines."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow resets its logger's level on import
    from medtune.cli import QUIET_WARNINGS

    for message in (
        *QUIET_WARNINGS,
        ".*`shuffle=True` was passed.*",
        ".*RetryFailedTrialCallback has been deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    for noisy in ("alembic", "mlflow", "absl", "h5py", "PIL", "matplotlib", "optuna", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if progress:
        logging.getLogger("medtune.progress").setLevel(logging.INFO)
