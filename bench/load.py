"""Load tests of both servers, over real HTTP on loopback (a benchmark, not a test: run it alone).

``annotate``: ``--annotators`` concurrent annotators make ``--submissions`` labels in total on
``alignkit annotate serve`` backed by a throwaway PostgreSQL cluster. Each annotator loops
"next item -> label it", as the web page does, and resends a label whose answer it did not get
(submit is idempotent). A third of the way in the server is killed (SIGKILL) and started again;
two thirds in, PostgreSQL is stopped and started. Reported: latency p50/p99 of the submits,
throughput, wasted submits (409: the item was full), errors by kind, and acknowledged labels
against stored ones (must be equal, with no duplicate).

``serve``: ``--clients`` concurrent clients send ``--requests`` chat completions in total to
``alignkit serve`` on the tiny random model, retrying a 429 after its Retry-After; reported:
latency p50/p99 (queueing and retries included), errors, the 429s retried (the server's queue
bound at work), throughput and the server's peak RSS.

    python bench/load.py annotate --annotators 100 --submissions 10000
    python bench/load.py serve --clients 50 --requests 500
Results: ``bench/results/load_<part>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import idle_check, versions, write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ADMIN_TOKEN = "load-test-admin-token-0123456789"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start_annotate_server(db_url: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "ALIGNKIT_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "alignkit", "annotate", "serve", "--db", db_url,
                             "--port", str(port)], stdout=log.open("a"), stderr=subprocess.STDOUT,
                            env=env)
    deadline = time.time() + 120
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/login", timeout=10).status_code == 200:
                return proc
        except requests.RequestException:  # not listening yet, or busy with the annotators
            pass
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the annotation server did not start; see {log}")
        time.sleep(0.1)


def annotate(args) -> dict:
    from alignkit.feedback.store import Store
    from tests.web.pg import PostgresCluster, free_port

    # 1. A throwaway PostgreSQL cluster, a project of --submissions items (R = 1) and the people.
    cluster = PostgresCluster().start()
    work = Path(tempfile.mkdtemp(prefix="alignkit-load-"))
    try:
        db_url = cluster.new_database()
        store = Store(db_url)
        store.upgrade()
        pid = store.create_project("load", "Pick the better answer.", ["overall"], 1)
        store.add_tasks(pid, [{"kind": "pairwise", "prompt": f"prompt {i}",
                               "responses": [f"a{i}", f"b{i}"]} for i in range(args.submissions)])
        tokens = []
        for i in range(args.annotators):
            user, token = store.create_user(f"load{i}")
            store.add_member(pid, user.id)
            tokens.append(token)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_annotate_server(db_url, port, work / "server.log")

        # 2. The annotators, each a thread with its own HTTP session.
        lock = threading.Lock()
        acked: set[tuple[int, str]] = set()
        latencies: list[float] = []
        outcomes: Counter = Counter()
        stop = threading.Event()

        def one(token: str, name: str) -> None:
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {token}"
            while not stop.is_set():
                try:
                    task = http.get(f"{url}/api/projects/{pid}/next", timeout=30).json()["task"]
                except (requests.RequestException, ValueError, KeyError):
                    with lock:
                        outcomes["next_failed"] += 1
                    time.sleep(0.2)
                    continue
                if task is None:
                    with lock:
                        if len(acked) >= args.submissions:
                            return
                    time.sleep(0.1)
                    continue
                body = {"task_id": task["id"], "value": {"choices": {"overall": "A"}}}
                while not stop.is_set():  # the same label until an answer says what became of it
                    t0 = time.perf_counter()
                    try:
                        r = http.post(f"{url}/api/projects/{pid}/labels", json=body, timeout=30)
                    except requests.RequestException:
                        with lock:
                            outcomes["connection_error_resent"] += 1
                        time.sleep(0.2)
                        continue
                    took = time.perf_counter() - t0
                    with lock:
                        if r.status_code in (200, 201):
                            latencies.append(took)
                            acked.add((task["id"], name))
                            outcomes["acked"] += 1
                        elif r.status_code == 409:
                            outcomes["wasted_409"] += 1
                        elif r.status_code == 503:
                            outcomes["unavailable_503_resent"] += 1
                        else:
                            outcomes[f"status_{r.status_code}"] += 1
                    if r.status_code == 503:
                        time.sleep(0.2)
                        continue
                    break

        threads = [threading.Thread(target=one, args=(tok, f"load{i}"), daemon=True)
                   for i, tok in enumerate(tokens)]
        started = time.time()
        for t in threads:
            t.start()

        # 3. Faults: the server killed and restarted, then PostgreSQL stopped and started.
        events = []

        def progress() -> int:
            with lock:
                return len(acked)

        while progress() < args.submissions // 3:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait()
        events.append({"at_acked": progress(), "event": "server SIGKILL"})
        server = start_annotate_server(db_url, port, work / "server.log")
        events.append({"at_acked": progress(), "event": "server back"})
        while progress() < 2 * args.submissions // 3:
            time.sleep(0.05)
        cluster.pause()
        events.append({"at_acked": progress(), "event": "PostgreSQL stopped"})
        time.sleep(2)
        cluster.resume()
        events.append({"at_acked": progress(), "event": "PostgreSQL back"})
        deadline = time.time() + args.timeout
        while progress() < args.submissions and time.time() < deadline:
            time.sleep(0.1)
        took = time.time() - started
        stop.set()
        for t in threads:
            t.join(timeout=60)
        server.terminate()
        server.wait(timeout=30)

        # 4. What the database holds against what was acknowledged.
        import sqlalchemy as sa

        with store.engine.connect() as c:
            stored = [(r.task_id, r.name) for r in c.execute(sa.text(
                "SELECT l.task_id, u.name FROM labels l JOIN users u ON u.id = l.user_id"))]
        store.dispose()
        log_text = (work / "server.log").read_text()
        return {
            "annotators": args.annotators, "submissions": args.submissions,
            "seconds": round(took, 1), "labels_per_s": round(len(acked) / took, 1),
            "submit_latency_ms": {"p50": round(1000 * percentile(latencies, 0.5), 1),
                                  "p99": round(1000 * percentile(latencies, 0.99), 1),
                                  "mean": round(1000 * statistics.mean(latencies), 1)},
            "outcomes": dict(outcomes), "events": events,
            "acked": len(acked), "stored": len(stored), "stored_distinct": len(set(stored)),
            "acked_equals_stored": acked == set(stored) and len(stored) == len(set(stored)),
            "wasted_submits_per_label": round(outcomes["wasted_409"] / max(1, len(acked)), 4),
            "unexpected_errors_logged": log_text.count("unexpected error"),
        }
    finally:
        cluster.stop()


def peak_rss_of(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def serve(args) -> dict:
    from alignkit.models.tiny import save_tiny_model
    from tests.smoke.serve_process import serve_process

    model = save_tiny_model(Path(tempfile.mkdtemp(prefix="alignkit-load-")) / "model")
    latencies: list[float] = []
    outcomes: Counter = Counter()
    lock = threading.Lock()
    counter = iter(range(args.requests))
    with serve_process(model, "--max-queue", str(args.max_queue)) as url:

        def client() -> None:
            http = requests.Session()
            for i in counter:
                body = {"messages": [{"role": "user", "content": f"Question {i}: how are you?"}],
                        "max_tokens": args.max_tokens, "temperature": 1.0, "seed": i}
                t0 = time.perf_counter()
                while True:  # a 429 is retried after its Retry-After, as a good client does
                    try:
                        r = http.post(url + "/chat/completions", json=body, timeout=300)
                        status = r.status_code
                    except requests.RequestException as e:
                        status = type(e).__name__
                    if status != 429:
                        break
                    with lock:
                        outcomes["429_retried"] += 1
                    time.sleep(float(r.headers.get("retry-after", 1)))
                took = time.perf_counter() - t0
                with lock:
                    outcomes[str(status)] += 1
                    if status == 200:
                        latencies.append(took)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.time() - started
        pids = subprocess.run(["pgrep", "-f", "alignkit serve --model"], capture_output=True,
                              text=True).stdout.split()
        peak = max((peak_rss_of(int(p)) or 0 for p in pids), default=None)
    return {"clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
            "max_queue": args.max_queue, "seconds": round(took, 1),
            "answers_per_s": round(outcomes["200"] / took, 2),
            "latency_s": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)},
            "outcomes": dict(outcomes), "server_peak_rss_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    a = sub.add_parser("annotate")
    a.add_argument("--annotators", type=int, default=100)
    a.add_argument("--submissions", type=int, default=10_000)
    a.add_argument("--timeout", type=float, default=3600)
    s = sub.add_parser("serve")
    s.add_argument("--clients", type=int, default=50)
    s.add_argument("--requests", type=int, default=500)
    s.add_argument("--max-tokens", type=int, default=16)
    s.add_argument("--max-queue", type=int, default=32)
    args = parser.parse_args()
    busy = idle_check()
    result = annotate(args) if args.part == "annotate" else serve(args)
    result.update(others_busy_share_at_start=busy, versions=versions())
    out = RESULTS / f"load_{args.part}.json"
    write_json(out, result)
    print(json.dumps(result, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
