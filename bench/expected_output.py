"""What checking output costs: 200 tiny scripts with a ``.stdout`` file each, against the
same scripts without, run by ``pytest --exec-parallel`` in turns. Prints each run's wall
time and the ratio of the medians (the issue's bar: at most 1.05).

    python bench/expected_output.py            # 5 runs of each
    python bench/expected_output.py --runs 9 --scripts 400
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_corpus(folder: Path, scripts: int, *, expected: bool) -> None:
    folder.mkdir(parents=True)
    (folder / "pytest.ini").write_text("[pytest]\nexec_redact = ADDR=0x[0-9a-f]+\n")
    for index in range(scripts):
        script = folder / f"tiny{index:04d}_script.py"
        script.write_text(f"import os\nprint('tiny {index} in', os.getcwd(), hex(id(os)))\n")
        if expected:
            script.with_suffix(".stdout").write_text(f"tiny {index} in [CWD] [ADDR]\n")


def run_once(folder: Path, scripts: int) -> float:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--exec-parallel"]
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=folder, capture_output=True, text=True, timeout=600, check=False
    )
    elapsed = time.perf_counter() - started
    if f"{scripts} passed" not in done.stdout:
        raise SystemExit(f"{folder.name}: not every script passed:\n{done.stdout[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scripts", type=int, default=200)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-expected-") as root:
        plain, checked = Path(root, "plain"), Path(root, "checked")
        write_corpus(plain, options.scripts, expected=False)
        write_corpus(checked, options.scripts, expected=True)
        times: dict[str, list[float]] = {"plain": [], "checked": []}
        for _ in range(options.runs):  # in turns: a slow spell of the machine hits both
            times["plain"].append(run_once(plain, options.scripts))
            times["checked"].append(run_once(checked, options.scripts))
    for name, values in times.items():
        shown = " ".join(f"{value:.2f}" for value in values)
        print(f"{name:8} median {statistics.median(values):.2f} s  ({shown})")
    ratio = statistics.median(times["checked"]) / statistics.median(times["plain"])
    print(f"with .stdout files / without: {ratio:.3f}x ({options.scripts} scripts)")


if __name__ == "__main__":
    main()
