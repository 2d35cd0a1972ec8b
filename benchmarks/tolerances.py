"""Tolerance audit: every numeric comparison of the suite, its tolerance against the
error it actually meets.

    python benchmarks/tolerances.py [pytest args, default: tests]

Runs the tests (in this process) with `numpy.testing.assert_allclose` and
`torch.testing.assert_close` wrapped: each call records its call site, its tolerance
(atol, rtol; torch's dtype defaults when not given) and the measured error, then
compares as before. Prints one row per call site: the slack, i.e. the smallest ratio
over the elements of allowed error (atol + rtol |expected|) to actual error |a - b|
("exact" when every element matched bit for bit). A slack over 100 needs a reason in a
comment at the call site (issue 33: tolerances come from an error model); the rows are
sorted by slack so those come first. Comparisons written as `<` or `pytest.approx` are
not seen here; their reasons are in their comments. Writes the rows to
/tmp/clips4rt-tolerances.json.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SEEN: dict[tuple[str, int], list] = defaultdict(list)


def _slack(actual, desired, atol, rtol) -> float:
    a = np.asarray(actual, dtype=np.float64)
    d = np.broadcast_to(np.asarray(desired, dtype=np.float64), a.shape)
    err = np.abs(a - d)
    allowed = atol + rtol * np.abs(d)
    moved = err > 0
    if not moved.any():
        return float("inf")
    return float((allowed[moved] / err[moved]).min())


def _site() -> tuple[str, int]:
    f = sys._getframe(2)
    while f is not None and not f.f_code.co_filename.startswith(str(REPO / "tests")):
        f = f.f_back
    return (str(Path(f.f_code.co_filename).relative_to(REPO)), f.f_lineno) if f else ("?", 0)


def _install() -> None:
    import numpy.testing as npt

    np_assert = npt.assert_allclose

    def assert_allclose(actual, desired, rtol=1e-7, atol=0, *args, **kw):
        SEEN[_site()].append((_slack(actual, desired, atol, rtol), atol, rtol))
        return np_assert(actual, desired, rtol, atol, *args, **kw)

    npt.assert_allclose = assert_allclose
    try:
        import torch
        import torch.testing as tt
    except ImportError:
        return
    t_assert = tt.assert_close

    def assert_close(actual, expected, *args, rtol=None, atol=None, **kw):
        if isinstance(actual, torch.Tensor) and actual.is_floating_point():
            if rtol is None:  # torch's defaults for the dtype
                rtol, atol = {
                    torch.float16: (1e-3, 1e-5),
                    torch.bfloat16: (1.6e-2, 1e-5),
                    torch.float64: (1e-7, 1e-7),
                }.get(actual.dtype, (1.3e-6, 1e-5))
            e = torch.as_tensor(expected).detach().double().cpu().numpy()
            SEEN[_site()].append(
                (_slack(actual.detach().double().cpu().numpy(), e, atol, rtol), atol, rtol)
            )
        return t_assert(actual, expected, *args, rtol=rtol, atol=atol, **kw)

    tt.assert_close = assert_close


def main(argv=None) -> int:
    _install()
    code = pytest.main(list(argv or sys.argv[1:]) or ["tests", "-q", "-p", "no:cacheprovider"])
    rows = []
    for (path, line), calls in SEEN.items():
        slack = min(c[0] for c in calls)
        rows.append(
            {
                "site": f"{path}:{line}",
                "calls": len(calls),
                "slack": slack,
                "atol": calls[0][1],
                "rtol": calls[0][2],
            }
        )
    rows.sort(key=lambda r: -r["slack"])
    print(f"\n{'call site':<34} {'calls':>5} {'atol':>8} {'rtol':>8}  slack")
    for r in rows:
        s = "exact" if r["slack"] == float("inf") else f"{r['slack']:.3g}"
        print(f"{r['site']:<34} {r['calls']:>5} {r['atol']:>8.2g} {r['rtol']:>8.2g}  {s}")
    Path("/tmp/clips4rt-tolerances.json").write_text(json.dumps(rows, indent=1))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
