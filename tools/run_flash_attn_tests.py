#!/usr/bin/env python3
"""Runs flash-attn's own tests/test_flash_attn.py against flash_attn_rocm.

    python3 tools/run_flash_attn_tests.py PATH/TO/test_flash_attn.py [--target 2000] [--every N]
        [--budget-s 220] [--collect-only] [--keep DIR] [-k EXPR] [-- more pytest args]

The test file is flash-attn's (2.8.3 was the one this was written against), not ours: it is not
in this repository; pass its path. The script builds, in a temporary folder, a shim package named
`flash_attn` that re-exports flash_attn_rocm under flash-attn's module names
(flash_attn, flash_attn.flash_attn_interface, flash_attn.bert_padding, flash_attn.layers.rotary),
plus a minimal `einops` (rearrange, repeat) when the real one is not installed, copies the test
file beside a conftest.py of its own, and runs pytest on a deterministic sample of the collected
cases: those whose crc32(test id) % N == 0, N chosen so that about --target cases run (or fixed
by --every). A hash, not every N-th case in order, so that the sample does not alias with the
innermost parameters (every other case would all be fp16). A time budget (--budget-s) skips the
cases still pending when it runs out, and says how many.

At the end: passed / failed / skipped counts, and the failures grouped by their first error line
(numbers replaced by #, so that one cause with different values groups together), with the place
that raised and a few test ids each. Exit status: 0 when nothing failed, 1 otherwise.

Without a GPU the upstream file cannot even be imported (it asks the device's capability at
import); the conftest then fakes an sm_90 device for collection and skips every case, so that
collection and sampling can be checked on a CPU machine (--collect-only or a full run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SHIM = {
    "flash_attn/__init__.py": '''
        """flash-attn's import names over flash_attn_rocm (tools/run_flash_attn_tests.py)."""
        from flash_attn_rocm import (
            flash_attn_func,
            flash_attn_kvpacked_func,
            flash_attn_qkvpacked_func,
            flash_attn_varlen_func,
            flash_attn_varlen_kvpacked_func,
            flash_attn_varlen_qkvpacked_func,
            flash_attn_with_kvcache,
        )
        __version__ = "2.8.3+flash_attn_rocm"
        ''',
    "flash_attn/flash_attn_interface.py": '''
        from flash_attn_rocm.interface import *  # noqa: F401,F403
        from flash_attn_rocm.interface import _get_block_size_n  # noqa: F401
        from flash_attn_rocm.kvcache import flash_attn_with_kvcache  # noqa: F401
        ''',
    "flash_attn/bert_padding.py": '''
        from flash_attn_rocm.bert_padding import *  # noqa: F401,F403
        ''',
    "flash_attn/layers/__init__.py": "",
    "flash_attn/layers/rotary.py": '''
        from flash_attn_rocm.rotary import apply_rotary_emb  # noqa: F401
        apply_rotary_emb_func = apply_rotary_emb
        ''',
}

# Only what flash-attn's test file uses of einops: rearrange and repeat with named axes,
# parenthesised groups, "..." and numeric literals. Used only when einops is not installed.
MINI_EINOPS = '''
    """A minimal stand-in for einops' rearrange and repeat (tools/run_flash_attn_tests.py)."""
    import math
    import re

    _TOKEN = re.compile(r"\\(|\\)|\\.\\.\\.|[A-Za-z_][A-Za-z0-9_]*|\\d+")


    def _parse(side):
        groups, current = [], None
        for token in _TOKEN.findall(side):
            if token == "(":
                current = []
            elif token == ")":
                groups.append(current)
                current = None
            else:
                atom = int(token) if token.isdigit() else token
                if current is not None:
                    current.append(atom)
                elif token == "...":
                    groups.append("...")
                else:
                    groups.append([atom])
        return groups


    def _transform(x, pattern, sizes, allow_new):
        left, right = (_parse(side) for side in pattern.split("->"))
        n_ellipsis = x.dim() - (len(left) - left.count("..."))

        def expand(groups):
            out = []
            for group in groups:
                out.extend([["...%d" % i] for i in range(n_ellipsis)] if group == "..." else [group])
            return out

        left, right = expand(left), expand(right)
        if len(left) != x.dim():
            raise ValueError("pattern %r does not match a %d-D tensor" % (pattern, x.dim()))
        known = dict(sizes)
        axes = []
        for group, dim in zip(left, x.shape):
            unknown = [a for a in group if isinstance(a, str) and a not in known]
            if len(unknown) > 1:
                raise ValueError("cannot infer %s in %r" % (unknown, pattern))
            product = math.prod(a if isinstance(a, int) else known[a] for a in group if a not in unknown)
            if unknown:
                known[unknown[0]] = dim // product
            axes.extend(a for a in group if isinstance(a, str))
        x = x.reshape([known[a] for a in axes])
        counter = 0
        named_right = []
        for group in right:
            named = []
            for atom in group:
                if isinstance(atom, int) and atom != 1:
                    counter += 1
                    known["#%d" % counter] = atom
                    atom = "#%d" % counter
                named.append(atom)
            named_right.append(named)
        order = [a for group in named_right for a in group if isinstance(a, str)]
        new = [a for a in order if a not in axes]
        if new and not allow_new:
            raise ValueError("rearrange cannot add axes %s" % new)
        if set(axes) - set(order):
            raise ValueError("pattern %r drops axes %s" % (pattern, set(axes) - set(order)))
        for _ in new:
            x = x.unsqueeze(-1)
        current = axes + new
        x = x.permute([current.index(a) for a in order])
        if new:
            x = x.expand([known[a] for a in order])
        shape = [math.prod(known[a] if isinstance(a, str) else a for a in group) for group in named_right]
        return x.reshape(shape)


    def rearrange(tensor, pattern, **sizes):
        return _transform(tensor, pattern, sizes, allow_new=False)


    def repeat(tensor, pattern, **sizes):
        return _transform(tensor, pattern, sizes, allow_new=True)
    '''

CONFTEST = '''
    """Sampling, a time budget and a failure log for flash-attn's test file (tools/run_flash_attn_tests.py)."""
    import json
    import os
    import time
    import zlib

    import pytest
    import torch

    HAS_GPU = torch.cuda.is_available()
    if not HAS_GPU:
        # The upstream file asks for the device's capability at import; fake an H100 so that it
        # collects, and skip every case below.
        class _Properties:
            total_memory = 80 * 2**30
            name = "no GPU (collection only)"

        torch.cuda.get_device_capability = lambda device=None: (9, 0)
        torch.cuda.get_device_properties = lambda device=None: _Properties()

    _START = time.monotonic()
    _RESULTS = {"sampled": 0, "collected": 0, "every": 1, "budget_skipped": 0, "failures": [], "outcomes": {}}
    _EVERY = int(os.environ.get("FA_SAMPLE_EVERY", "0"))
    _GENERATED = {"cases": 0, "emptied": set()}


    def _sampled(nodeid, every):
        return zlib.crc32(nodeid.encode()) % every == 0


    @pytest.hookimpl(hookwrapper=True)
    def pytest_generate_tests(metafunc):
        """With a fixed N, the sample is taken as the parameter sets are generated, before pytest
        builds an item for each of the ~500,000 cases (which takes minutes)."""
        yield
        calls = getattr(metafunc, "_calls", None)
        if _EVERY <= 1 or not calls:
            return
        _GENERATED["cases"] += len(calls)
        base = metafunc.definition.nodeid
        metafunc._calls = [c for c in calls if _sampled("%s[%s]" % (base, c.id), _EVERY)]
        if not metafunc._calls:  # pytest would then make one unparametrized item: dropped below
            _GENERATED["emptied"].add(base)


    def pytest_collection_modifyitems(session, config, items):
        every = _EVERY
        if every <= 0:
            target = int(os.environ.get("FA_SAMPLE_TARGET", "2000"))
            every = max(1, round(len(items) / max(target, 1)))
        if _GENERATED["cases"]:  # sampled while generating: drop only what that could not
            collected = _GENERATED["cases"] + sum(1 for item in items if not hasattr(item, "callspec") and
                                                  item.nodeid not in _GENERATED["emptied"])
            kept = [item for item in items if item.nodeid not in _GENERATED["emptied"]]
        else:
            collected = len(items)
            kept = [item for item in items if _sampled(item.nodeid, every)]
        kept_ids = {id(item) for item in kept}
        dropped = [item for item in items if id(item) not in kept_ids]
        _RESULTS.update(collected=collected, sampled=len(kept), every=every)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        if not HAS_GPU and os.environ.get("FA_RUN_WITHOUT_GPU") != "1":
            for item in items:
                item.add_marker(pytest.mark.skip(reason="no CUDA GPU: collection only"))


    def pytest_runtest_setup(item):
        budget = float(os.environ.get("FA_BUDGET_S", "0"))
        if budget > 0 and time.monotonic() - _START > budget:
            _RESULTS["budget_skipped"] += 1
            pytest.skip("time budget of the sampled run spent")


    def pytest_runtest_logreport(report):
        if report.when == "call":
            _RESULTS["outcomes"][report.nodeid] = report.outcome
        elif report.outcome != "passed":  # a skip or an error in setup, an error in teardown
            _RESULTS["outcomes"][report.nodeid] = "skipped" if report.skipped else "error"
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            if crash is not None:
                message, where = crash.message, "%s:%s" % (os.path.basename(crash.path), crash.lineno)
            else:
                lines = str(report.longrepr).strip().splitlines() or [""]
                message, where = lines[-1], "?"
            _RESULTS["failures"].append({"id": report.nodeid, "when": report.when,
                                         "message": message.strip().splitlines()[0] if message.strip() else "",
                                         "where": where})


    def pytest_sessionfinish(session, exitstatus):
        path = os.environ.get("FA_REPORT")
        if path:
            _RESULTS["seconds"] = time.monotonic() - _START
            with open(path, "w") as f:
                json.dump(_RESULTS, f)
    '''


def write(root: Path, files: dict) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def einops_installed() -> bool:
    return subprocess.run([sys.executable, "-c", "import einops"], capture_output=True).returncode == 0


def normalise(message: str) -> str:
    """One cause, many values: numbers (and tensors' reprs) become #."""
    message = re.sub(r"tensor\(\[.*", "tensor(...)", message)
    return re.sub(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", "#", message)


def summarise(report: dict) -> int:
    outcomes = defaultdict(int)
    for outcome in report["outcomes"].values():
        outcomes[outcome] += 1
    print(f"\ncollected {report['collected']}, sampled {report['sampled']} (crc32(test id) % {report['every']} == 0), "
          f"{report.get('seconds', 0):.0f} s")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) +
          (f" ({report['budget_skipped']} of the skipped: time budget spent)" if report["budget_skipped"] else ""))
    groups = defaultdict(list)
    for failure in report["failures"]:
        groups[(failure["where"], normalise(failure["message"]))].append(failure["id"])
    if groups:
        print(f"\nfailures by first error line ({len(report['failures'])} in {len(groups)} groups):")
    for (where, message), ids in sorted(groups.items(), key=lambda g: -len(g[1])):
        functions = defaultdict(int)
        for test_id in ids:
            functions[test_id.split("::")[-1].split("[")[0]] += 1
        print(f"\n  {len(ids):5d}  {where}: {message}")
        print("         in " + ", ".join(f"{name} ({n})" for name, n in sorted(functions.items(), key=lambda f: -f[1])))
        for test_id in ids[:3]:
            print(f"         e.g. {test_id.split('::')[-1]}")
    return 1 if report["failures"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("test_file", type=Path, help="flash-attn's tests/test_flash_attn.py")
    parser.add_argument("--every", type=int, default=250,
                        help="run the cases whose crc32(test id) %% N == 0 (default 250: about 2,000 of flash-attn "
                             "2.8.3's 508,772; sampled as pytest generates them, so collection is quick)")
    parser.add_argument("--target", type=int, default=0,
                        help="instead of --every, about this many cases: N from the full count (collects every "
                             "case first, minutes)")
    parser.add_argument("--budget-s", type=float, default=220.0,
                        help="skip the cases still pending after this many seconds (default 220; 0: no budget)")
    parser.add_argument("--collect-only", action="store_true", help="collect and sample, run nothing")
    parser.add_argument("--keep", type=Path, help="build the shim and run in this folder (kept) instead of a temporary one")
    parser.add_argument("--report", type=Path, help="also write the JSON report here")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression, applied before sampling")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    args.test_file = args.test_file.resolve()
    if not args.test_file.is_file():
        parser.error(f"{args.test_file} is not a file")

    work = (args.keep or Path(tempfile.mkdtemp(prefix="flash_attn_upstream_"))).resolve()
    shim, tests = work / "shim", work / "tests"
    for folder in (shim, tests):
        if folder.exists():
            shutil.rmtree(folder)
    write(shim, SHIM)
    if not einops_installed():
        print("einops is not installed: using the minimal rearrange/repeat of this script")
        write(shim, {"einops/__init__.py": MINI_EINOPS})
    write(tests, {"conftest.py": CONFTEST})
    shutil.copy(args.test_file, tests / "test_flash_attn.py")

    report_path = work / "report.json"
    every = 0 if args.target > 0 else args.every
    env = dict(os.environ, FA_SAMPLE_EVERY=str(every), FA_SAMPLE_TARGET=str(args.target),
               FA_BUDGET_S=str(args.budget_s), FA_REPORT=str(report_path))
    inherited = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(REPO), *inherited])
    command = [sys.executable, "-m", "pytest", "test_flash_attn.py", "-q", "-p", "no:cacheprovider",
               "--rootdir", str(tests), "-o", "addopts=", "--tb=line", "-rN"]
    if args.collect_only:
        command.append("--collect-only")
    if args.keyword:
        command += ["-k", args.keyword]
    command += args.pytest_args
    print(f"in {tests}: {' '.join(command[1:])}", flush=True)
    result = subprocess.run(command, cwd=tests, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = result.stdout.strip().splitlines()
    log = work / "pytest.log"
    log.write_text(result.stdout)
    print("\n".join(tail[-5:] if result.returncode in (0, 1, 5) else tail[-25:]))
    print(f"(pytest's whole output: {log})")
    if not report_path.exists():
        print("pytest wrote no report (it failed before the session ended): see the output above")
        return 2
    report = json.loads(report_path.read_text())
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    if args.collect_only:
        print(f"collected {report['collected']}, sampled {report['sampled']} (crc32(test id) % {report['every']} == 0)")
        return 0
    return summarise(report)


if __name__ == "__main__":
    sys.exit(main())
