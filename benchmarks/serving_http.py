"""`ebr serve` against the in-process call: the same searches over HTTP/1.1 keep-alive and in process.

    OPENBLAS_NUM_THREADS=1 python benchmarks/serving_http.py [--baseline-path /tmp/ebr_head] [--workers 1 2]

The served version is the engine benchmarks' corpus (benchmarks/engine_data.py: 1M documents, 64-d,
OPQ16,IVF1024,PQ16, cached read-only in --workdir) published as a version of dataset `bench` in --home (its
engine folder copied, documents.parquet with a title and vertical per document, a manifest with checksums,
serving.json): the server loads and verifies it as any other. Each server is a real `ebr serve --json`
subprocess (the console command's code path: config, create_app, uvicorn); the in-process systems open the
same version with `SearchService.open` in this process:

    execute       the bare `execute()` of the parsed expression with its unit vector (the engine alone)
    service       `SearchService.search` of the same request (the search POST /search runs in its thread)
    answer        what POST /search computes in its thread: `service`, the titles and verticals of the
                  results (`describe`) and the JSON answer
    http          POST /search to `ebr serve` of this code (served-results log on: the default)
    http-nolog    the same with engine.serving.log_results.enabled=false (the log's own cost)
    http-base     (with --baseline-path) `ebr serve` of another copy of the code, e.g. the previous commit,
                  without httptools and uvloop (hidden: h11 and asyncio, as before they were dependencies)
    http-bare     the transport alone: uvicorn as `ebr serve` runs it, serving a bare ASGI app that reads the
                  request and answers a pre-encoded answer of the served version (hybrid request 0's); the
                  floor of any app on this server is `answer` + `http-bare` (printed as `floor`)

Queries: hybrid `(and (term region:rX) (nn bench :radius 2 :nprobe 16))` (1% filter, its region from the
query's nearest centre, limit 10) and plain top-10 `(nn bench :k 10 :nprobe 16)`, each with an explicit
`vector`. Concurrency 1: every system answers the same block of queries in turn, block after block
(interleaved), latency p50/p90/p99 per system. Concurrency 4 (--threads): 4 client threads, each with its
own keep-alive connection, against 4 threads calling `service` in process; systems alternate in slices of
--slice-s seconds; throughput in requests per second. The client is raw sockets with pre-encoded requests;
its own CPU time per request (thread CPU time of the calling threads) is reported as `client_us` (in process:
the whole call), the server processes' CPU time per request as `server_us` (psutil; robust to the machine's
load, unlike latency, which pays for every wake-up of the server and the client when cores are busy). With
--workers N...: one more server per N > 1 (`ebr serve --workers N`) in the concurrency-4 runs.

Prints markdown tables and writes --out (JSON). Figures depend on the machine's load (other processes share
its cores), on the client sharing those cores with the server, and on the one-thread BLAS/faiss setting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from engine_data import KEY, add_data_args, load

DATASET = "bench"
VERSION = "v0001"
CLI = "import sys; from ebr.cli import main; sys.exit(main())"
BARE = """
import json, sys, uvicorn
port, body = int(sys.argv[1]), open(sys.argv[2], "rb").read()
health = json.dumps({"status": "ok", "version": sys.argv[3]}).encode()
async def app(scope, receive, send):
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    content = body if scope["method"] == "POST" else health
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": content})
print(json.dumps({"url": f"http://127.0.0.1:{port}"}), flush=True)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")
"""
MIXES = {
    "hybrid": "(and (term region:r{region}) (nn bench :radius 2 :nprobe 16))",
    "top10": "(nn bench :k 10 :nprobe 16)",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ----- the served version


def publish(data: Any, workdir: Path, home_dir: Path) -> None:
    """Publish the cached engine folder of `workdir` as version v0001 of dataset `bench` (once)."""
    os.environ["EBR_HOME"] = str(home_dir)
    from ebr import home, registry

    version_dir = home.versions_dir(DATASET) / VERSION
    if (version_dir / registry.MANIFEST).is_file():
        if registry.served_version(DATASET) != VERSION:
            registry.set_served_version(DATASET, VERSION)
        return
    if version_dir.exists():
        shutil.rmtree(version_dir)
    staging = version_dir.with_name(VERSION + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    shutil.copytree(workdir / "engine", staging / "engine")
    index = data.index
    doc_ids = np.asarray(index.doc_ids, dtype=np.int64)
    np.save(staging / "doc_ids.npy", doc_ids)
    vertical = np.empty(len(doc_ids), dtype=object)
    for name in ("people", "groups", "events"):
        vertical[index.posting(f"vertical:{name}")] = name
    table = pa.table(
        {
            "doc_id": doc_ids,
            "vertical": pa.array(vertical.tolist(), type=pa.string()),
            "title": pa.array([f"document {i}" for i in doc_ids.tolist()], type=pa.string()),
        }
    )
    pq.write_table(table, staging / "documents.parquet")
    registry.write_manifest(staging, {"version": VERSION})
    staging.rename(version_dir)
    registry.set_served_version(DATASET, VERSION)


def requests_of(data: Any, n: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Per mix, `n` (expression, unit query vector) pairs: the hybrid filter is the region of the query's
    nearest document's city, so that the filter holds neighbours (a 1% posting list)."""
    queries = np.asarray(data.queries[:n], dtype=np.float32)
    vectors = np.asarray(data.vectors[: min(len(data.vectors), 200_000)])
    nearest = np.argmax(queries @ vectors.T, axis=1)
    regions = (data.cities[nearest] // 10).tolist()
    return {
        "hybrid": [(MIXES["hybrid"].format(region=r), q) for r, q in zip(regions, queries, strict=True)],
        "top10": [(MIXES["top10"], q) for q in queries],
    }


# ----- servers and the client


def without_extras(home_dir: Path) -> Path:
    """A folder whose `httptools` and `uvloop` fail to import: on PYTHONPATH, uvicorn falls back to h11 and
    asyncio, the environment of the code before they were dependencies."""
    folder = home_dir / "without-extras"
    for name in ("httptools", "uvloop"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f'raise ImportError("{name} hidden (serving_http.py)")\n')
    return folder


class Server:
    """`ebr serve --json ARGS` (or `python -c CODE ARGS`) in a subprocess (its stderr to a file), stopped
    by `stop()`."""

    def __init__(
        self,
        label: str,
        port: int,
        home_dir: Path,
        pythonpath: str | None,
        args: list[str],
        code: str | None = None,
    ):
        self.label, self.port = label, port
        env = dict(os.environ, EBR_HOME=str(home_dir), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.log = open(home_dir / f"server-{label}.log", "w")  # noqa: SIM115 (closed in stop)
        command = [sys.executable, "-c", CLI, "serve", "--port", str(port), "--dataset", DATASET, "--json"]
        if code is not None:
            command = [sys.executable, "-c", code]
        self.process = subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd="/"
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("{"):
            self.stop()
            sys.exit(
                f"server {label} did not start: {(home_dir / f'server-{label}.log').read_text()[-2000:]}"
            )
        self.startup = json.loads(line)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                status, body = Client(port).call(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                if status == 200 and json.loads(body)["version"] == VERSION:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        sys.exit(
            f"server {label} serves no version: {(home_dir / f'server-{label}.log').read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Client:
    """One keep-alive HTTP/1.1 connection over a raw socket; `call` sends pre-encoded bytes."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def call(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(v) for k, _, v in (h.partition(b":") for h in lines[1:]) if k.lower() == b"content-length"
        )
        while len(rest) < length:
            self.buffer = rest
            self._read()
            rest = self.buffer
        self.buffer = rest[length:]
        return status, rest[:length]

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def encoded(expr: str, vector: np.ndarray) -> bytes:
    body = json.dumps({"expr": expr, "vector": vector.tolist(), "limit": 10}).encode()
    head = (
        "POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# ----- the systems


class Systems:
    """Callables per system answering request i of a mix; the in-process ones share one service."""

    def __init__(self, service: Any, servers: list[Server], mixes: dict[str, list[tuple[str, np.ndarray]]]):
        from ebr.retrieval.api import shown_answer
        from ebr.retrieval.executor import execute
        from ebr.retrieval.query import parse_cached
        from ebr.retrieval.service import SearchRequest

        self.service, self.servers, self.mixes = service, servers, mixes
        config = service.config
        self.execute, self.parse, self.shown_answer = execute, parse_cached, shown_answer
        self.requests = {
            m: [SearchRequest(expr=e, vector=v.tolist(), limit=10) for e, v in r] for m, r in mixes.items()
        }
        self.roots = {m: [parse_cached(e, config.limits) for e, _ in r] for m, r in mixes.items()}
        self.bodies = {m: [encoded(e, v) for e, v in r] for m, r in mixes.items()}
        self.local = threading.local()

    def server_cpu(self, name: str) -> float:
        """CPU seconds used so far by the server `name` and its worker processes (0 in process)."""
        server = next((s for s in self.servers if s.label == name), None)
        if server is None:
            return 0.0
        root = psutil.Process(server.process.pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def names(self) -> list[str]:
        return ["execute", "service", "answer", *(s.label for s in self.servers)]

    def answer(self, mix: str, i: int) -> bytes:
        """The JSON answer of request i of `mix`, by the code of POST /search (`shown_answer`)."""
        return self.shown_answer(self.service, self.service.search(self.requests[mix][i]))

    def client(self, label: str) -> Client:
        clients = self.local.__dict__.setdefault("clients", {})
        if label not in clients:
            clients[label] = Client(next(s.port for s in self.servers if s.label == label))
        return clients[label]

    def run(self, name: str, mix: str, i: int) -> int:
        """Answer request i of `mix` by system `name`; returns the number of results."""
        if name == "execute":
            _, vector = self.mixes[mix][i]
            hits = self.execute(
                self.service.engine.index,
                self.roots[mix][i],
                {KEY: vector},
                limit=10,
                costs=self.service.config.planner,
            )
            return len(hits.doc_ids)
        if name == "service":
            return len(self.service.search(self.requests[mix][i]).hits.doc_ids)
        if name == "answer":
            return self.answer(mix, i).count(b'"doc_id"')
        try:
            status, body = self.client(name).call(self.bodies[mix][i])
        except (ConnectionError, OSError):  # closed while idle (uvicorn's keep-alive timeout): once more
            self.local.clients.pop(name).close()
            status, body = self.client(name).call(self.bodies[mix][i])
        if status != 200:
            raise RuntimeError(f"{name}: HTTP {status}: {body[:300]!r}")
        return body.count(b'"doc_id"')


def check_answers(systems: Systems, n: int) -> None:
    """Every system returns the same number of results per request (the servers answer the same version)."""
    for mix in systems.mixes:
        for i in range(min(n, len(systems.mixes[mix]))):
            counts = {name: systems.run(name, mix, i) for name in systems.names() if name != "http-bare"}
            if len(set(counts.values())) != 1:
                sys.exit(f"{mix} request {i}: the systems disagree on the result count: {counts}")


def latency(systems: Systems, mix: str, blocks: int, block: int) -> dict[str, dict[str, float]]:
    """Concurrency 1: per system, ms per request over `blocks` interleaved blocks of `block` requests."""
    n = len(systems.mixes[mix])
    times: dict[str, list[float]] = {name: [] for name in systems.names()}
    client_cpu: dict[str, float] = {name: 0.0 for name in systems.names()}
    server_cpu: dict[str, float] = {name: 0.0 for name in systems.names()}
    for b in range(blocks):
        rows = [(b * block + j) % n for j in range(block)]
        order = systems.names() if b % 2 == 0 else systems.names()[::-1]
        for name in order:
            cpu, served = time.thread_time(), systems.server_cpu(name)
            for i in rows:
                started = time.perf_counter()
                systems.run(name, mix, i)
                times[name].append(1000 * (time.perf_counter() - started))
            client_cpu[name] += time.thread_time() - cpu
            server_cpu[name] += systems.server_cpu(name) - served
    return {
        name: {
            "p50_ms": percentile(t, 0.5),
            "p90_ms": percentile(t, 0.9),
            "p99_ms": percentile(t, 0.99),
            "mean_ms": float(np.mean(t)),
            "requests": len(t),
            "client_us": 1e6 * client_cpu[name] / len(t),  # the calling thread's CPU per request
            "server_us": 1e6 * server_cpu[name] / len(t),  # the server processes' CPU per request
        }
        for name, t in times.items()
    }


def one_slice(
    systems: Systems, name: str, mix: str, threads: int, slice_s: float
) -> tuple[int, float, float, float]:
    """`threads` threads calling `name` for `slice_s` seconds: requests, seconds, CPU seconds of the
    calling threads and of the server."""
    n = len(systems.mixes[mix])
    counts = [0] * threads
    cpus = [0.0] * threads
    ready, go = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(t: int) -> None:
        systems.run(name, mix, t)  # connect (and warm) before the clock starts
        ready.wait()
        go.wait()
        started = time.thread_time()
        i = t
        while time.perf_counter() < stop_at[0]:
            systems.run(name, mix, i % n)
            counts[t] += 1
            i += threads
        cpus[t] = time.thread_time() - started

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    ready.wait()
    served = systems.server_cpu(name)
    started = time.perf_counter()
    stop_at[0] = started + slice_s
    go.wait()
    for p in pool:
        p.join()
    elapsed = time.perf_counter() - started
    return sum(counts), elapsed, sum(cpus), systems.server_cpu(name) - served


def throughput(
    systems: Systems, names: list[str], mix: str, threads: int, rounds: int, slice_s: float
) -> dict[str, dict[str, float]]:
    """Concurrency `threads`: per system, requests per second over `rounds` alternating slices."""
    done: dict[str, int] = {name: 0 for name in names}
    seconds: dict[str, float] = {name: 0.0 for name in names}
    cpu: dict[str, float] = {name: 0.0 for name in names}
    server: dict[str, float] = {name: 0.0 for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            count, elapsed, used, served = one_slice(systems, name, mix, threads, slice_s)
            server[name] += served
            done[name] += count
            seconds[name] += elapsed
            cpu[name] += used
    return {
        name: {
            "rps": done[name] / seconds[name],
            "requests": done[name],
            "client_us": 1e6 * cpu[name] / max(done[name], 1),
            "server_us": 1e6 * server[name] / max(done[name], 1),
        }
        for name in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser)
    parser.add_argument(
        "--home", type=Path, default=Path("/tmp/h14_a1_bench/home"), help="EBR_HOME of the servers"
    )
    parser.add_argument(
        "--baseline-path", default=None, help="PYTHONPATH of a second copy of the code (http-base)"
    )
    parser.add_argument(
        "--no-nolog", action="store_true", help="skip the server with the served-results log off"
    )
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="worker counts > 1 to add at c=4")
    parser.add_argument("--port", type=int, default=18400, help="first port of the servers")
    parser.add_argument("--n-requests", type=int, default=200, help="distinct requests per mix")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--block", type=int, default=50, help="requests per block and system")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--slice-s", type=float, default=2.0)
    parser.add_argument("--mixes", nargs="*", default=list(MIXES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving_http.json"))
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    data = load(args)
    publish(data, args.workdir, args.home)
    from ebr import home
    from ebr.retrieval.config import load_engine_config
    from ebr.retrieval.service import SearchService

    mixes = {m: r for m, r in requests_of(data, args.n_requests).items() if m in args.mixes}
    data_for_publish = data if args.workers else None
    del data
    servers: list[Server] = []
    port = args.port
    try:
        plan: list[tuple[str, str | None, list[str]]] = [("http", None, [])]
        if not args.no_nolog:
            plan.append(("http-nolog", None, ["engine.serving.log_results.enabled=false"]))
        if args.baseline_path:
            plan.append(("http-base", f"{without_extras(args.home)}:{args.baseline_path}", []))
        for label, path, overrides in plan:
            servers.append(Server(label, port, args.home, path, overrides))
            port += 1
        config = load_engine_config([])
        version_dir = home.versions_dir(DATASET) / VERSION
        service = SearchService.open(
            version_dir, config, writable=False, verify=False, warm=True, dataset=DATASET
        )
        systems = Systems(service, servers, mixes)
        bare_answer = args.home / "bare-answer.json"
        bare_answer.write_bytes(systems.answer(next(iter(mixes)), 0))
        bare_args = [str(port), str(bare_answer), VERSION]
        servers.append(Server("http-bare", port, args.home, None, bare_args, BARE))
        port += 1
        check_answers(systems, 20)
        results: dict[str, Any] = {"params": {k: str(v) for k, v in vars(args).items()}, "c1": {}, "c4": {}}
        for mix in mixes:
            for name in systems.names():  # warm each system's path
                for i in range(20):
                    systems.run(name, mix, i)
            results["c1"][mix] = latency(systems, mix, args.blocks, args.block)
            names = ["service", *(s.label for s in servers)]
            results["c4"][mix] = throughput(systems, names, mix, args.threads, args.rounds, args.slice_s)
        for workers in args.workers:  # in a home of their own: the one-process server holds the LOCK
            label, shared_home = f"http-w{workers}", args.home.with_name(args.home.name + f"-w{workers}")
            publish(data_for_publish, args.workdir, shared_home)
            os.environ["EBR_HOME"] = str(args.home)
            servers.append(Server(label, port, shared_home, None, [f"engine.serving.workers={workers}"]))
            port += 1
            for mix in mixes:
                names = ["service", "http", label]
                extra = throughput(systems, names, mix, args.threads, args.rounds, args.slice_s)
                results["c4"][mix][label] = extra[label] | {"service_same_run_rps": extra["service"]["rps"]}
        service.close()
    finally:
        for server in servers:
            server.stop()
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


def report(results: dict[str, Any]) -> None:
    for mix, rows in results["c1"].items():
        base = rows["service"]["p50_ms"]
        print(f"\n### concurrency 1, {mix}\n")
        print("| system | p50 ms | p90 ms | p99 ms | p50 / service | caller CPU µs/req | server CPU µs/req |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            print(
                f"| {name} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                f"{r['p50_ms'] / base:.2f}x | {r['client_us']:.0f} | {r['server_us']:.0f} |"
            )
        if "http-bare" in rows:
            floor = rows["answer"]["p50_ms"] + rows["http-bare"]["p50_ms"]
            print(f"\nfloor (answer + http-bare p50): {floor:.3f} ms, {floor / base:.2f}x service")
    for mix, rows in results["c4"].items():
        base = rows["service"]["rps"]
        print(f"\n### concurrency 4, {mix}\n")
        print("| system | requests/s | / service threads | caller CPU µs/req | server CPU µs/req |")
        print("|---|---|---|---|---|")
        for name, r in rows.items():
            ref = r.get("service_same_run_rps", base)
            print(
                f"| {name} | {r['rps']:.0f} | {r['rps'] / ref:.0%} | {r['client_us']:.0f} | "
                f"{r['server_us']:.0f} |"
            )


if __name__ == "__main__":
    main()
