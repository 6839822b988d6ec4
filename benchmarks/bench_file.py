"""Benchmark qengine's file backend against other Python disk queues, in one run.

Usage (from the repository root, in .bench-venv; ``make bench`` does this)::

    python benchmarks/bench_file.py [--n 20000] [--repeats 3] [--budget 2] [--big] [--json]

Every measurement runs in a fresh subprocess on a fresh directory, is repeated ``--repeats``
times (interleaved, so noise spreads over all engines) and reported as the median. A timed
phase stops after ``--n`` operations or ``--budget`` seconds, whichever comes first; a rate
cut short by the budget is marked with a dagger. Nothing here asserts a timing: it is a report.

Cases:

* ``add1``  adds/s, one process, one message per call;
* ``add2``  adds/s, two producer processes on one queue (aggregate);
* ``get``   destructive gets/s on a queue pre-filled with N messages;
* ``ack``   reserve+ack/s on a queue pre-filled with N messages (n/a for engines without ack);
* ``depth`` qengine only: per-op add and get cost at depth 1k vs 200k;
* ``big``   (``--big``) qengine only: open + first get, and consumer RSS, with 1M messages queued.

``qengine[compiled, fsync=never]`` is the compiled build (``QENGINE_COMPILE``, see setup.py),
imported from ``--compiled`` (default ``build/compiled``, which ``make test-compiled`` builds);
without one it is left out and the run says so.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import machine  # noqa: E402
import peers  # noqa: E402  (the benchmarks directory is not a package)
from machine import HANG_GUARD, cpu_model  # noqa: E402

CASES = ("add1", "add2", "get", "ack")
CASE_TITLES = {
    "add1": "adds/s (1 proc)",
    "add2": "adds/s (2 procs)",
    "get": "gets/s",
    "ack": "reserve+ack/s",
}
ALWAYS_N = 1000
DEPTHS = (1_000, 200_000)
DEPTH_BATCH = 5_000
DEPTH_ENGINE = "qengine[fsync=never]"
BIG_N = 1_000_000
BIG_ENGINE = "qengine[fsync=batch]"
BIG_GETS = 1000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILED_SRC = ""  # --compiled, absolute


# == worker side: runs inside a fresh subprocess ============================================


def _timed_adds(engine: peers.Engine, start: int, n: int, budget: float) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    deadline = t0 + budget
    done = 0
    for i in range(start, start + n):
        engine.add(peers.message(i))
        done += 1
        if not done & 63 and time.perf_counter() > deadline:
            break
    return done, t0, time.perf_counter()


def _prefill(engine: peers.Engine, n: int, budget: float) -> int:
    """Untimed fill with the engine's fastest way in, cut at ``budget`` seconds."""
    deadline = time.perf_counter() + budget
    filled = 0
    while filled < n and time.perf_counter() < deadline:
        chunk = min(1000, n - filled)
        engine.add_batch([peers.message(i) for i in range(filled, filled + chunk)])
        filled += chunk
    return filled


def _producer(name: str, path: str, n: int, start: int, budget: float, barrier: Any, out: Any) -> None:
    try:
        engine = peers.build(name, path)
        barrier.wait(timeout=60)
        done, t0, t1 = _timed_adds(engine, start, n, budget)
        engine.close()
    except BaseException as exc:  # report it: the parent is waiting for one result per producer
        barrier.abort()
        out.put(f"{type(exc).__name__}: {exc}")
        raise
    # perf_counter is CLOCK_MONOTONIC on Linux: comparable across processes.
    out.put((done, t0, t1))


def _rss_kib() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    case, name, path = spec["case"], spec["engine"], spec["dir"]
    if name == peers.COMPILED:  # before anything imports queue_engine (spawned producers inherit sys.path)
        sys.path.insert(0, spec["src"])
        from queue_engine.backends.file import COMPILED

        if not COMPILED:
            return {"error": f"no compiled build in {spec['src']}"}
    n, budget = spec.get("n", 0), spec.get("budget", 0.0)
    if case == "add1":
        engine = peers.build(name, path)
        done, t0, t1 = _timed_adds(engine, 0, n, budget)
        engine.close()
        return {"ops": done, "seconds": t1 - t0, "truncated": done < n, "durability": engine.durability}
    if case == "add2":
        probe = peers.build(name, path)
        durability, mp_safe = probe.durability, probe.mp_safe
        probe.close()
        if not mp_safe:
            return {"na": "not multi-process safe"}
        ctx = multiprocessing.get_context("spawn")
        barrier, out = ctx.Barrier(2), ctx.Queue()
        half = n // 2
        procs = [
            ctx.Process(target=_producer, args=(name, path, half, k * half, budget, barrier, out)) for k in range(2)
        ]
        for p in procs:
            p.start()
        results: list[Any] = []
        deadline = time.monotonic() + HANG_GUARD
        while len(results) < len(procs):
            try:
                results.append(out.get(timeout=1.0))
            except queue.Empty:
                # a producer killed outright reports nothing; do not wait for it forever
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if all(p.exitcode is not None for p in procs):
                    deadline = min(deadline, time.monotonic() + 5.0)  # all gone: results, if any, arrive soon
                if dead or time.monotonic() > deadline:
                    for p in procs:
                        p.kill()
                    raise RuntimeError(f"producer died (exit codes {dead}) or hung") from None
        for p in procs:
            p.join()
        failures = [r for r in results if isinstance(r, str)]
        if failures:
            raise RuntimeError(f"producer failed: {failures[0]}")
        ops = sum(r[0] for r in results)
        seconds = max(r[2] for r in results) - min(r[1] for r in results)
        return {"ops": ops, "seconds": seconds, "truncated": ops < 2 * half, "durability": durability}
    if case in ("get", "ack"):
        engine = peers.build(name, path)
        if case == "ack" and type(engine).reserve_ack is peers.Engine.reserve_ack:
            engine.close()
            return {"na": engine.ack_api}
        filled = _prefill(engine, n, budget * 2)
        engine.close()
        engine = peers.build(name, path)  # consumers usually open a queue someone else filled
        op = engine.get if case == "get" else engine.reserve_ack
        t0 = time.perf_counter()
        deadline = t0 + budget
        done = 0
        while done < filled:
            if op() is None:
                raise RuntimeError(f"{name}: queue empty after {done} of {filled} messages")
            done += 1
            if not done & 63 and time.perf_counter() > deadline:
                break
        t1 = time.perf_counter()
        engine.close()
        return {"ops": done, "seconds": t1 - t0, "truncated": done < n, "depth": filled,
                "durability": engine.durability}
    if case == "depth":
        engine = peers.build(name, path)
        _prefill(engine, spec["depth"], float("inf"))
        engine.close()
        engine = peers.build(name, path)
        t0 = time.perf_counter()
        for i in range(DEPTH_BATCH):
            engine.add(peers.message(i))
        t1 = time.perf_counter()
        for _ in range(DEPTH_BATCH):
            if engine.get() is None:
                raise RuntimeError("queue empty during the depth test")
        t2 = time.perf_counter()
        engine.close()
        return {"add_us": (t1 - t0) / DEPTH_BATCH * 1e6, "get_us": (t2 - t1) / DEPTH_BATCH * 1e6}
    if case == "big_fill":
        engine = peers.build(name, path)
        t0 = time.perf_counter()
        _prefill(engine, BIG_N, float("inf"))
        seconds = time.perf_counter() - t0
        engine.close()
        return {"ops": BIG_N, "seconds": seconds}
    if case == "big_open":
        t0 = time.perf_counter()
        from queue_engine import QueueFactory

        t1 = time.perf_counter()
        m = QueueFactory.get_queue_manager(queue_type="file", cache_root=path)
        t2 = time.perf_counter()
        first = m.get_message(peers.QUEUE)
        t3 = time.perf_counter()
        m.close()
        if first is None:
            raise RuntimeError("the 1M-message queue returned no message")
        return {"import_s": t1 - t0, "open_s": t2 - t1, "first_get_s": t3 - t2, "open_first_s": t3 - t1,
                "first_id": first.data.get("id") if isinstance(first.data, dict) else None}
    if case == "big_rss":
        from queue_engine import QueueFactory

        before = _rss_kib()
        m = QueueFactory.get_queue_manager(queue_type="file", cache_root=path)
        for _ in range(BIG_GETS):
            if m.get_message(peers.QUEUE) is None:
                raise RuntimeError("the 1M-message queue ran empty")
        after = _rss_kib()
        m.close()
        return {"rss_before_kib": before["VmRSS"], "rss_kib": after["VmRSS"], "hwm_kib": after["VmHWM"],
                "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    raise ValueError(f"unknown case {case!r}")


# == driver side ==============================================================================


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement of this script in a fresh interpreter."""
    return machine.spawn(os.path.abspath(__file__), spec)


def fresh_dir(base: str) -> str:
    return tempfile.mkdtemp(prefix="qbench-", dir=base)


def filesystem_of(path: str) -> str:
    """``fstype device on mountpoint`` for the mount holding ``path`` (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] = ("?", "?", "/")
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                mount = left.split()[4].replace("\\040", " ")
                fstype, device = right.split()[:2]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[2]):
                    best = (fstype, device, mount)
    except OSError:
        pass
    return f"{best[0]} ({best[1]} on {best[2]})"


def machine_facts(base: str) -> dict[str, str]:
    cpu = cpu_model()
    mem = "?"
    try:
        with open("/proc/meminfo") as fh:
            kib = int(next(ln for ln in fh if ln.startswith("MemTotal")).split()[1])
            mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "directory": base,
        "filesystem": filesystem_of(base),
    }


def version_of(package: str | None) -> str:
    try:
        return metadata.version(package or "qengine")
    except metadata.PackageNotFoundError:
        return "not installed"


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "?"
    return f"{rate:,.0f}"


class Results:
    """Rates per (case, engine), collected over repeats."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def add(self, case: str, engine: str, result: dict[str, Any]) -> None:
        self.runs.setdefault((case, engine), []).append(result)

    def cell(self, case: str, engine: str) -> dict[str, Any]:
        runs = self.runs.get((case, engine), [])
        ok = [r for r in runs if "ops" in r and r["seconds"] > 0]
        out: dict[str, Any] = {"runs": runs}
        if ok:
            out["rate"] = statistics.median(r["ops"] / r["seconds"] for r in ok)
            out["truncated"] = any(r.get("truncated") for r in ok)
            out["ops"] = [r["ops"] for r in ok]
        elif any("na" in r for r in runs):
            out["na"] = next(r["na"] for r in runs if "na" in r)
        elif runs:
            out["error"] = next(r.get("error", "?") for r in runs if "error" in r)
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="operations per timed phase (default 20000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--budget", type=float, default=2.0,
                        help="seconds after which a timed phase stops early (default 2; pre-fill gets twice that)")
    parser.add_argument("--dir", default=None, help="where the temporary queues go (default: the system temp dir)")
    parser.add_argument("--engines", default="", help="comma-separated substrings: only engines whose name matches")
    parser.add_argument("--cases", default="add1,add2,get,ack,depth",
                        help="comma-separated subset of add1,add2,get,ack,depth")
    parser.add_argument("--big", action="store_true",
                        help="also run the 1M-message qengine cases (about 400 MB of disk, ~15 s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of markdown")
    parser.add_argument("--compiled", default=os.path.join(REPO, "build", "compiled"),
                        help="tree holding the compiled build (default: build/compiled, from make test-compiled)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    base = os.path.abspath(args.dir or tempfile.gettempdir())
    os.makedirs(base, exist_ok=True)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES) - {"depth"})
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; valid: {', '.join(CASES)}, depth")
    wanted = [s.strip() for s in args.engines.split(",") if s.strip()]
    global COMPILED_SRC
    COMPILED_SRC = os.path.abspath(args.compiled)
    names = list(peers.ENGINES)
    if has_compiled_build(COMPILED_SRC):
        names.insert(1, peers.COMPILED)
    else:
        log(f"no compiled build in {args.compiled}: {peers.COMPILED} left out (make test-compiled builds one)")
    engines = [e for e in names if not wanted or any(w in e for w in wanted)]
    with_always = peers.ALWAYS if not wanted or any(w in peers.ALWAYS for w in wanted) else None

    facts = machine_facts(base)
    log("machine: " + "; ".join(f"{k}={v}" for k, v in facts.items()))
    started = time.perf_counter()
    results = Results()
    depth_runs: dict[int, list[dict[str, Any]]] = {d: [] for d in DEPTHS}
    for rep in range(args.repeats):
        for case in (c for c in CASES if c in cases):
            for engine in engines:
                results.add(case, engine, measure(case, engine, args.n, args.budget, base, rep))
        if "add1" in cases and with_always:
            results.add("add1", with_always, measure("add1", with_always, ALWAYS_N, args.budget * 5, base, rep))
        if "depth" in cases:
            for depth in DEPTHS:
                depth_runs[depth].append(run_in_dir("depth", DEPTH_ENGINE, base, rep, depth=depth))

    big: dict[str, Any] = {}
    if args.big:
        big = measure_big(base, args.repeats)

    report = build_report(args, facts, engines, with_always, results, depth_runs, big, cases)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_markdown(report))
    return 0


def has_compiled_build(src: str) -> bool:
    store = os.path.join(src, "queue_engine", "backends", "file")
    return os.path.isdir(store) and any(f.startswith("store.") and f.endswith(".so") for f in os.listdir(store))


def run_in_dir(case: str, engine: str, base: str, rep: int, **extra: Any) -> dict[str, Any]:
    if engine == peers.COMPILED:
        extra["src"] = COMPILED_SRC
    path = fresh_dir(base)
    try:
        result = spawn({"case": case, "engine": engine, "dir": path, **extra})
    finally:
        shutil.rmtree(path, ignore_errors=True)
    log(f"[{rep + 1}] {case:6s} {engine:32s} {summary(result)}")
    return result


def measure(case: str, engine: str, n: int, budget: float, base: str, rep: int) -> dict[str, Any]:
    return run_in_dir(case, engine, base, rep, n=n, budget=budget)


def summary(result: dict[str, Any]) -> str:
    if "ops" in result and result.get("seconds"):
        return f"{result['ops'] / result['seconds']:>10,.0f} ops/s ({result['ops']} ops)"
    if "add_us" in result:
        return f"add {result['add_us']:.1f} us/op, get {result['get_us']:.1f} us/op"
    return json.dumps(result)[:160]


def measure_big(base: str, repeats: int) -> dict[str, Any]:
    path = fresh_dir(base)
    try:
        fill = spawn({"case": "big_fill", "engine": BIG_ENGINE, "dir": path})
        log(f"[big] fill 1M: {summary(fill)}")
        out: dict[str, Any] = {"fill": fill, "open": [], "rss": [], "disk_bytes": du(path)}
        if "error" in fill:
            return out
        for rep in range(repeats):
            out["open"].append(spawn({"case": "big_open", "engine": BIG_ENGINE, "dir": path}))
            log(f"[big {rep + 1}] open+first: {json.dumps(out['open'][-1])}")
        for rep in range(repeats):
            out["rss"].append(spawn({"case": "big_rss", "engine": BIG_ENGINE, "dir": path}))
            log(f"[big {rep + 1}] rss: {json.dumps(out['rss'][-1])}")
        return out
    finally:
        shutil.rmtree(path, ignore_errors=True)


def du(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def build_report(
    args: argparse.Namespace,
    facts: dict[str, str],
    engines: list[str],
    with_always: str | None,
    results: Results,
    depth_runs: dict[int, list[dict[str, Any]]],
    big: dict[str, Any],
    cases: list[str],
) -> dict[str, Any]:
    rows = engines + ([with_always] if with_always and "add1" in cases else [])
    info: dict[str, Any] = {}
    for engine in rows:
        cls = (peers.ENGINES | peers.ENGINES_EXTRA)[engine]
        reported = [r["durability"] for (_, e), runs in results.runs.items() if e == engine for r in runs
                    if "durability" in r]
        durability = reported[0] if reported else getattr(cls, "durability", "")
        info[engine] = {
            "version": version_of(getattr(cls, "package", None)),
            "durability": durability,
            "multi_process_safe": getattr(cls, "mp_safe", True),
            "mp_note": getattr(cls, "mp_note", ""),
            "get_api": getattr(cls, "get_api", ""),
            "ack_api": getattr(cls, "ack_api", ""),
        }
    table = {case: {e: results.cell(case, e) for e in rows} for case in CASES if case in cases}
    ratios: dict[str, dict[str, Any]] = {}
    for q in (e for e in engines if peers.is_qengine(e)):
        ratios[q] = {}
        for case, cells in table.items():
            peer_rates = {e: c["rate"] for e, c in cells.items() if not peers.is_qengine(e) and "rate" in c}
            mine = cells.get(q, {}).get("rate")
            if peer_rates and mine:
                best = max(peer_rates, key=lambda e: peer_rates[e])
                ratios[q][case] = {"ratio": mine / peer_rates[best], "best_peer": best}
    depth: dict[str, Any] = {}
    if "depth" in cases:
        lo, hi = DEPTHS
        for op in ("add_us", "get_us"):
            a, b = _median(depth_runs[lo], op), _median(depth_runs[hi], op)
            depth[op] = {str(lo): a, str(hi): b, "ratio": (b / a) if a and b else None}
        depth["engine"] = DEPTH_ENGINE
        depth["batch"] = DEPTH_BATCH
        depth["runs"] = {str(d): r for d, r in depth_runs.items()}
    big_summary: dict[str, Any] = {}
    if big:
        big_summary = dict(big)
        for key in ("open_first_s", "open_s", "first_get_s", "import_s"):
            big_summary[key] = _median(big.get("open", []), key)
        for key in ("rss_before_kib", "rss_kib", "hwm_kib", "ru_maxrss_kib"):
            big_summary[key] = _median(big.get("rss", []), key)
        big_summary["first_ids"] = [r.get("first_id") for r in big.get("open", []) if "first_id" in r]
    return {
        "machine": facts,
        "settings": {"n": args.n, "repeats": args.repeats, "budget_s": args.budget, "always_n": ALWAYS_N,
                     "message": '{"id": i, "payload": "x" * 100}',
                     "command": shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])},
        "engines": info,
        "results": table,
        "ratios": ratios,
        "depth": depth,
        "big": big_summary,
    }


def render_markdown(report: dict[str, Any]) -> str:
    facts, settings, info = report["machine"], report["settings"], report["engines"]
    table: dict[str, dict[str, Any]] = report["results"]
    cases = list(table)
    out: list[str] = []
    out.append("## qengine file backend vs other Python disk queues")
    out.append("")
    out.append(
        f"Machine: {facts['nproc']} CPU ({facts['cpu']}), {facts['memory']} RAM, {facts['python']}, "
        f"{facts['kernel']}; queues in {facts['directory']} on {facts['filesystem']}."
    )
    out.append(
        f"Ops/s, median of {settings['repeats']} runs, each in a fresh process on a fresh directory; "
        f"N={settings['n']:,} per timed phase, or {settings['budget_s']:g}s, whichever ends first. "
        f"Message: `{{\"id\": i, \"payload\": \"x\" * 100}}`. Run: `{settings['command']}`."
    )
    out.append("")
    if cases:
        out.append("| engine | " + " | ".join(CASE_TITLES[c] for c in cases) + " |")
        out.append("|---|" + "---:|" * len(cases))
        for engine in info:
            cells = []
            for c in cases:
                cell = table[c].get(engine, {})
                if "rate" in cell:
                    cells.append(fmt_rate(cell["rate"]) + ("†" if cell["truncated"] else ""))
                elif "na" in cell:
                    cells.append("n/a")
                elif "error" in cell:
                    cells.append("error")
                else:
                    cells.append("—")
            label = engine + (f" (N={settings['always_n']:,})" if engine == peers.ALWAYS else "")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        for q, per_case in report["ratios"].items():
            cells = []
            for c in cases:
                r = per_case.get(c)
                cells.append(f"{r['ratio']:.2f}× vs {r['best_peer']}" if r else "—")
            out.append(f"| **{q} / best peer** | " + " | ".join(cells) + " |")
        out.append("")
        out.append(
            "† fewer than N operations: the timed phase hit the time budget (or, for gets and reserve+ack, the "
            "pre-fill did). Such a get rate covers only the first part of a drain, at a depth below N for a "
            "short pre-fill; engines whose per-get cost grows with depth or with consumed rows would look "
            "worse over a full drain of N. `--json` has the op counts and depths."
        )
        errors = [(c, e, cell["error"]) for c in cases for e, cell in table[c].items() if "error" in cell]
        for c, e, err in errors:
            out.append(f"- error in {c} / {e}: `{err}`")
        out.append("")
        out.append("| engine | version | default durability (as used) | get | reserve+ack | multi-process safe |")
        out.append("|---|---|---|---|---|---|")
        for engine, d in info.items():
            mp = d["mp_note"] or ("yes" if d["multi_process_safe"] else "**no**")
            out.append(f"| {engine} | {d['version']} | {d['durability']} | {d['get_api']} | {d['ack_api']} | {mp} |")
        out.append("")
    depth = report["depth"]
    if depth:
        lo, hi = (str(d) for d in DEPTHS)
        out.append(f"qengine per-op cost vs queue depth ({depth['engine']}; {depth['batch']:,} single-message ops "
                   f"timed after pre-filling to the depth; median of {settings['repeats']}):")
        out.append("")
        out.append(f"| op | µs/op at depth {int(lo):,} | µs/op at depth {int(hi):,} | ratio (target ≤ 1.3) |")
        out.append("|---|---:|---:|---:|")
        for op, title in (("add_us", "add_message"), ("get_us", "get_message")):
            d = depth[op]
            a, b, r = d[lo], d[hi], d["ratio"]
            out.append(
                f"| {title} | {'error' if a is None else f'{a:.1f}'} | {'error' if b is None else f'{b:.1f}'} | "
                f"{'—' if r is None else f'{r:.2f}'} |"
            )
        errs = [r["error"] for runs in depth["runs"].values() for r in runs if "error" in r]
        if errs:
            out.append(f"- error: `{errs[0]}`")
        out.append("")
    big = report["big"]
    if big:
        fill = big.get("fill", {})
        out.append(f"qengine with {BIG_N:,} messages queued ({BIG_ENGINE}; fresh process per measurement; "
                   f"warm page cache; median of {settings['repeats']}):")
        out.append("")
        out.append("| measurement | value |")
        out.append("|---|---:|")
        if "ops" in fill:
            out.append(f"| fill with add_messages (batches of 1,000) | {fill['ops'] / fill['seconds']:,.0f} msg/s |")
            out.append(f"| disk used | {big.get('disk_bytes', 0) / 1024 / 1024:,.0f} MiB |")

        def secs(key: str) -> str:
            v = big.get(key)
            return "error" if v is None else f"{v * 1000:,.0f} ms"

        def kib(key: str) -> str:
            v = big.get(key)
            return "error" if v is None else f"{v / 1024:,.1f} MiB"

        ids = sorted(set(big.get("first_ids", [])))
        note = f" (ids got: {', '.join(map(str, ids))}; each run removes one)" if ids else ""
        out.append(f"| open + first get_message (target < 1 s){note} | {secs('open_first_s')} |")
        out.append(f"| of which open (get_queue_manager) | {secs('open_s')} |")
        out.append(f"| `import queue_engine` (not included above) | {secs('import_s')} |")
        out.append(f"| consumer RSS before opening (interpreter + import) | {kib('rss_before_kib')} |")
        out.append(f"| consumer RSS after opening and {BIG_GETS:,} gets (VmRSS) | {kib('rss_kib')} |")
        out.append(f"| consumer peak RSS (VmHWM / ru_maxrss) | {kib('hwm_kib')} / {kib('ru_maxrss_kib')} |")
        errs = [r["error"] for r in [fill, *big.get("open", []), *big.get("rss", [])] if "error" in r]
        if errs:
            out.append(f"- error: `{errs[0]}`")
        out.append("")
    out.append(f"Total benchmark time: {report.get('elapsed_s', 0):.0f}s.")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
