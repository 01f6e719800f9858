"""``--exec-preload auto`` against warm start without a preload and against cold starts.

    python bench/preload_auto.py              # 40 scripts, 5 interleaved runs per arm
    python bench/preload_auto.py --runs 7 --scripts 60

The corpus is an examples folder: scripts that import numpy and a local package beside
them (``mylib``: 40 modules, moderately heavy to import). The ``auto`` arm is primed by one
run that records what the scripts import; every measured run of it is then a "second run".
All arms: ``--exec-parallel``, 2 workers. Prints each arm's median wall and CPU seconds and
the ratios of medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from measure import child_environment, load_average, run_once

_MODULE = '''\
"""One of mylib's modules: enough classes, functions and constants to take a while."""
import dataclasses, decimal, fractions, json, re

PATTERN = re.compile(r"(?P<word>[a-z]+)_{index}")
{functions}

@dataclasses.dataclass
class Record{index}:
    name: str
    value: decimal.Decimal = decimal.Decimal("{index}.5")
    share: fractions.Fraction = fractions.Fraction({index} + 1, 7)

    def dumped(self) -> str:
        return json.dumps({{"name": self.name, "value": str(self.value)}})
'''
_FUNCTION = "def f{n}(x):\n    return x * {n} + len(PATTERN.pattern)\n"
_SCRIPT = """\
import numpy as np
import mylib

print(mylib.total(np.arange({index} + 100)))
"""
_MODULES = 40


def make_corpus(folder: Path, scripts: int) -> Path:
    examples = folder / "examples"
    package = examples / "mylib"
    package.mkdir(parents=True)
    functions = "\n".join(_FUNCTION.format(n=n) for n in range(60))
    for index in range(_MODULES):
        module = _MODULE.format(index=index, functions=functions)
        (package / f"part{index}.py").write_text(module)
    imports = "\n".join(f"from . import part{index}" for index in range(_MODULES))
    (package / "__init__.py").write_text(
        f"{imports}\n\ndef total(values):\n    return int(values.sum()) + part0.f1(1)\n"
    )
    for index in range(scripts):
        (examples / f"example{index:03d}_script.py").write_text(_SCRIPT.format(index=index))
    (folder / "pytest.ini").write_text("[pytest]\n")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scripts", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-preload-auto-") as temp:
        root = make_corpus(Path(temp), args.scripts)
        env = child_environment(Path(temp) / "pycache")
        base = (sys.executable, "-m", "pytest", "-q", "-p", "no:randomly")
        base += ("--exec-parallel", "--exec-workers", "2", "examples")
        arms = {
            "cold": base,
            "warm, no preload": (*base, "--exec-warm"),
            "warm, --exec-preload auto": (*base, "--exec-warm", "--exec-preload", "auto"),
        }
        for argv in arms.values():  # warm-up: bytecode compiled, auto's first run recorded
            first = run_once(argv, cwd=root, env=env, expect_passed=args.scripts)
            if not first.ok:
                print(first.problem, file=sys.stderr)
                return 1
        walls: dict[str, list[float]] = {arm: [] for arm in arms}
        cpus: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(args.runs):
            for arm, argv in arms.items():
                sample = run_once(argv, cwd=root, env=env, expect_passed=args.scripts)
                if not sample.ok:
                    print(f"{arm}: {sample.problem}", file=sys.stderr)
                    return 1
                walls[arm].append(sample.wall)
                cpus[arm].append(sample.cpu)
    wall = {arm: statistics.median(values) for arm, values in walls.items()}
    cpu = {arm: statistics.median(values) for arm, values in cpus.items()}
    auto = "warm, --exec-preload auto"
    print(
        f"{args.scripts} scripts (numpy + a 40-module local package), 2 workers, "
        f"medians of {args.runs}; load average {load_average()}"
    )
    print("| arm | wall s | CPU s | auto / arm (wall) |")
    print("|---|--:|--:|--:|")
    for arm in arms:
        print(f"| {arm} | {wall[arm]:.2f} | {cpu[arm]:.2f} | {wall[auto] / wall[arm]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
