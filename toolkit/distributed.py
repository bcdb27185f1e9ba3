"""dask.distributed as the engine for many trace sets or very large ones.

``engine(workers=N)`` starts a local cluster (N worker processes, one thread each, no dashboard; it binds to
127.0.0.1 and works offline); ``engine(scheduler="tcp://host:8786")`` connects to an existing cluster. Both yield
a ``distributed.Client``.

* ``ingest_sets(client, sets)``: one task per trace file set (a ``[[trace]]``: its per-CPU files together, which
  the parser merges) across all the sets at once. A task parses its trace and writes its Parquet parts into the
  set's store (the workers need the set's folder and its store at the same path: a local cluster, or a shared
  filesystem); only the small store entry (counts, summary) comes back. The store index (``store.json``) is
  committed here, once per set, exactly as ``store.ingest`` would.
* ``check_sets(client, paths)``: ingest first (above), then one task per set running the same
  ``verdict.check_analysis`` as the single-process path; each task returns the rendered text, the JSON document
  and the violation count, so the output is byte for byte the single-process one.

dask is an optional dependency (``pip install 'writeorder[fleet]'``); nothing imports it unless asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from toolkit import store, traceset
from toolkit.fileio import TraceError
from toolkit.traceset import Trace, TraceSet


def _dask():
    try:
        import distributed
    except ImportError:  # pragma: no cover - depends on the installation
        raise TraceError("--workers/--scheduler need dask.distributed: pip install 'writeorder[fleet]'") from None
    return distributed


@contextlib.contextmanager
def engine(workers: int | None = None, scheduler: str | None = None) -> Iterator:
    """A ``distributed.Client`` on an existing scheduler or on a local cluster of ``workers`` processes."""
    distributed = _dask()
    import logging

    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker",
                 "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except OSError as e:
            raise TraceError(f"--scheduler {scheduler}: cannot connect ({e})") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or 1
    if n < 1:
        raise TraceError(f"--workers {workers}: needs at least 1")
    with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
        yield client


# ------------------------------------------------------------------------------------------------------ tasks
def _ingest_task(base: str, root: str, t: Trace, known: dict | None, use_cache: bool) -> tuple[dict, str | None]:
    entry, _res, note = store.ingest_trace(Path(base), Path(root), t, known, use_cache)
    return entry, note


def _check_task(path: str, use_cache: bool) -> dict:
    from toolkit import verdict

    try:
        r = verdict.check_set(path, use_cache=use_cache)
    except TraceError as e:
        return {"path": path, "error": str(e)}
    return r.rendered(path)


def _absolute(t: Trace) -> Trace:
    """The trace with absolute file paths (a worker's working directory may differ; the store records the
    paths the parser saw and maps them back to the caller's on reading)."""
    return dataclasses.replace(t, files=[os.path.abspath(f) for f in t.files])


def _wait(client, futures: list, tick: Callable[[object], None] | None) -> list:
    """Results in submission order; ``tick(result)`` as each finishes (progress)."""
    distributed = _dask()
    if tick:
        for f in distributed.as_completed(futures):
            tick(f)
    return client.gather(futures)


# ------------------------------------------------------------------------------------------------------ ingest
def ingest_sets(client, sets: list[TraceSet], *, use_cache: bool = True,
                tick: Callable[[object], None] | None = None) -> list[dict[int, dict]]:
    """Ingest every trace of every set, one task per trace; returns the store entries of each set by trace index
    (each with its ``summary``), after committing each set's store index."""
    futures, owner = [], []
    for si, ts in enumerate(sets):
        base = store.cache_dir(ts).resolve() if use_cache else store.cache_dir(ts)
        doc = store.load_index(base) if use_cache else {"traces": {}}
        for t in ts.traces:
            futures.append(client.submit(_ingest_task, str(base), str(Path(ts.root).resolve()), _absolute(t),
                                         doc["traces"].get(store.trace_key(t)), use_cache, pure=False,
                                         key=f"ingest-{si}-{t.index}-{store.trace_key(t)}"))
            owner.append(si)
    got = _wait(client, futures, tick)
    out = []
    for si, ts in enumerate(sets):
        mine = [g for g, o in zip(got, owner, strict=True) if o == si]
        entries, _ = store.update(ts, use_cache=use_cache, keep=False, runner=lambda *_a, mine=mine: mine)
        out.append(entries)
    return out


def load_sets(paths: list[str]) -> list[TraceSet | TraceError]:
    """Each set's manifest, or the error that stops it (the others go on)."""
    out: list[TraceSet | TraceError] = []
    for p in paths:
        try:
            out.append(traceset.load(p))
        except TraceError as e:
            out.append(e)
    return out


# ------------------------------------------------------------------------------------------------------ check
_STORE_ENV = ("WRITEORDER_CACHE", "XDG_CACHE_HOME")


def _set_env(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _disk_task(path: str, disk: int, slice_events: int, env: dict[str, str | None]):
    """One disk of a set, read from the store the caller ingested into (``env``: the caller's variables that
    place the store, see store.cache_dir)."""
    from toolkit import slicing

    saved = {k: os.environ.get(k) for k in _STORE_ENV}
    try:
        _set_env(env)
        return slicing.check_disk_of(path, disk, slice_events)
    except TraceError as e:
        return {"path": path, "error": str(e)}
    finally:
        _set_env(saved)


def check_sets(client, paths: list[str], *, use_cache: bool = True, slice_events: int | None = None,
               tick: Callable[[object], None] | None = None, ingest_tick: Callable[[object], None] | None = None
               ) -> list[dict]:
    """Check every set (after ingesting every trace, one task per trace): one task per disk, each sliced in
    time when large (toolkit.slicing), the set's document assembled here; a set with several QEMU processes
    (migration, several writers: its checks need the whole shared device) is one task.

    Returns per set ``{"path", "text", "json", "violations"}`` or ``{"path", "error"}``."""
    from toolkit import slicing

    loaded = load_sets(paths)
    sets = [x for x in loaded if isinstance(x, TraceSet)]
    if use_cache and sets:
        ingest_sets(client, sets, use_cache=True, tick=ingest_tick)
    per_disk = slice_events != 0 and use_cache
    futures, plan = [], []
    for i, (p, x) in enumerate(zip(paths, loaded, strict=True)):
        if not isinstance(x, TraceSet):
            continue
        if per_disk and slicing.sliceable(x) and x.disks:
            env = {k: os.environ.get(k) for k in _STORE_ENV}
            fs = [client.submit(_disk_task, os.path.abspath(p), d, slice_events or slicing.SLICE_EVENTS, env,
                                pure=False, key=f"check-{i}-disk{d}") for d in range(len(x.disks))]
            plan.append((p, len(futures), len(fs)))
            futures += fs
        else:
            plan.append((p, len(futures), 0))
            futures.append(client.submit(_check_task, p, use_cache, pure=False, key=f"check-{i}"))
    got = _wait(client, futures, tick)
    done: dict[str, dict] = {}
    for p, at, n in plan:
        if n == 0:
            done[p] = got[at]
            continue
        mine = got[at:at + n]
        err = next((g for g in mine if isinstance(g, dict)), None)
        if err is not None:
            done[p] = err
            continue
        done[p] = slicing.assemble(p, [g[0] for g in mine], [g[1] for g in mine]).rendered(p)
    return [done[p] if isinstance(x, TraceSet) else {"path": p, "error": str(x)}
            for p, x in zip(paths, loaded, strict=True)]
