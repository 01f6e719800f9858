"""pytest-randomly: scripts run in a shuffled order, a seed repeats it, outcomes stay."""

from __future__ import annotations

import pytest
from conftest import AFTER_THE_RUN, ExecPytester, Mode

from .conftest import EcosystemCheck

pytest.importorskip("pytest_randomly")
pytestmark = pytest.mark.ecosystem("pytest-randomly")

NAMES = [f"s{i}" for i in range(8)]
FAILING = {"s3", "s6"}


@AFTER_THE_RUN
def test_randomly_shuffles_the_scripts_without_changing_outcomes(
    px: ExecPytester, mode: Mode, ecosystem_check: EcosystemCheck
) -> None:
    order = px.path / "order.txt"
    for name in NAMES:
        failing = "raise SystemExit(1)\n" if name in FAILING else ""
        record = f"with open({str(order)!r}, 'a') as out:\n    out.write('{name}\\n')\n"
        px.script(f"{name}_script.py", record + failing)
    # One at a time, so the order they start in is the order they record. In parallel the
    # start order is by priority, then by the durations the last run left (--exec-order
    # duration, the default): the shuffle only breaks ties. Collection order is the shuffle.
    workers = ("--exec-workers", "1", "--exec-order", "collection") if mode.parallel else ()

    def run(seed: str) -> list[str]:
        order.unlink(missing_ok=True)
        result = px.run("-p", "randomly", f"--randomly-seed={seed}", "-rf", *mode, *workers)
        result.assert_outcomes(passed=6, failed=2)
        failed = {line.split("::")[0] for line in result.outlines if line.startswith("FAILED ")}
        assert failed == {f"FAILED {name}_script.py" for name in FAILING}
        seeds = [line for line in result.outlines if "--randomly-seed=" in line]
        assert seeds, "pytest-randomly did not say which seed it used"
        return px.lines("order.txt")

    one, two = run("1"), run("2")
    assert sorted(one) == sorted(two) == NAMES
    assert one != two, "two seeds, one order: the scripts were not shuffled"
    # A failure seen under a seed is reproduced the way pytest-randomly says: the last seed.
    assert run("last") == two
    ecosystem_check(
        "pytest-randomly",
        "scripts start in an order that differs per seed, `--randomly-seed=last` repeats it, "
        "outcomes stay the same (with `--exec-parallel` under `--exec-order collection`: the "
        "default order starts the scripts that took longest last time first, and the "
        "shuffle only breaks its ties)",
    )
