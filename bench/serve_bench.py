"""Measures `dino-run serve` against the batch CLI; driven by bench/serve.sh.

All traffic goes to 127.0.0.1 on a port the server picks; every loop is bounded by the
image count. The CLI's throughput excludes process start and session creation:
wall(N + w images) - wall(w images), w = one batch. Its latency is what `dino-run embed
--latency` measures inside the process: each image read, decoded, preprocessed and run on
its own after a warm-up run, as one request to the server is; the server's is measured by
the client, HTTP included, over the same images. The two are taken in pairs, image by
image (a fresh `embed --latency` process for each, which warms up on that image first),
so that a VM whose speed drifts by 20% from one minute to the next (as the 2-core VMs
here do) slows both sides alike; the median of the paired differences is printed beside
the percentiles. Prints a Markdown table.
"""

import argparse
import resource
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target/release/dino-run"
PHOTOS = sorted((ROOT.parent / "shared/data/photos").iterdir())


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cli_run(env, model, threads, batch, images):
    """(wall, CPU seconds) of one `dino-run embed` run."""
    cmd = [str(BIN), "--threads", str(threads), "embed", "--model", model,
           "--batch-size", str(batch), *map(str, images)]
    c, t = children_cpu(), time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t, children_cpu() - c


def cli_per_image(env, model, threads, batch, images, warm):
    """(wall, CPU) seconds per image of a warm CLI: the N-image run minus a `warm`-image
    run, best of 2 rounds each."""
    full = min(cli_run(env, model, threads, batch, images + images[:warm]) for _ in range(2))
    base = min(cli_run(env, model, threads, batch, images[:warm]) for _ in range(2))
    return tuple((f - b) / len(images) for f, b in zip(full, base))


def cli_latencies(env, model, threads, images):
    """Per-image milliseconds of `dino-run embed --latency` (warm, nothing overlapped)."""
    cmd = [str(BIN), "--threads", str(threads), "embed", "--latency", "--model", model,
           *map(str, images)]
    r = subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    return [float(l.split("\t")[1]) / 1e3 for l in r.stderr.splitlines() if l.startswith("latency\t")]


def percentile(sorted_values, q):
    """Nearest-rank percentile, as dino-run's."""
    n = len(sorted_values)
    return sorted_values[max(0, -(-q * n // 100) - 1)]


def start_server(env, model, threads):
    p = subprocess.Popen([str(BIN), "--threads", str(threads), "serve", "--model", model,
                          "--bind", "127.0.0.1:0", "--max-batch", "32", "--max-queue", "1024"],
                         env=env, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "http://" in line:
            host, port = line.split("http://")[1].split()[0].split(":")
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, host, int(port)
    raise SystemExit("dino-run serve did not start")


def post(host, port, body):
    c = http.client.HTTPConnection(host, port, timeout=120)
    t = time.perf_counter()
    c.request("POST", "/v1/embed", body=body)
    r = c.getresponse()
    r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"status {r.status}")
    return time.perf_counter() - t


def cpu_s(pid):
    """User + system CPU seconds of a process so far."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def load(host, port, bodies, clients, pid):
    """`clients` threads posting `bodies` (each once); returns (images/s, server CPU
    seconds per image, peak RSS MiB)."""
    next_i, lock, peak, done = [0], threading.Lock(), [0.0], threading.Event()

    def client():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= len(bodies):
                return
            post(host, port, bodies[i])

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.05)

    s = threading.Thread(target=sample)
    s.start()
    c, t = cpu_s(pid), time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall, cpu = time.perf_counter() - t, cpu_s(pid) - c
    done.set()
    s.join()
    return len(bodies) / wall, cpu / len(bodies), peak[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--model-args", default="--img 224 --patch 16 --dim 384 --depth 12 --heads 6")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dino-serve-bench-")
    env = dict(os.environ, XDG_CACHE_HOME=tmp)
    model = os.path.join(tmp, "vit.onnx")
    subprocess.run([sys.executable, str(ROOT / "tests/python/runtime_fixture.py"), model,
                    *a.model_args.split()], check=True, stdout=subprocess.DEVNULL)
    images = [PHOTOS[i % len(PHOTOS)] for i in range(a.images)]
    bodies = [p.read_bytes() for p in images]

    batch_s, batch_cpu = cli_per_image(env, model, a.threads, 32, images, 32)
    timed = images[: max(32, a.images // 2)]

    srv, host, port = start_server(env, model, a.threads)
    try:
        for b in bodies[:8]:
            post(host, port, b)  # warm-up
        # Paired: each image by a fresh CLI process (a warm-up run, then the timed one) and
        # by the server, the order alternating, so both sides of a pair see the same moment.
        cli_one, one, gaps = [], [], []
        for i, (path, body) in enumerate(zip(timed, bodies)):
            for side in (("cli", "server") if i % 2 == 0 else ("server", "cli")):
                if side == "cli":
                    got = cli_latencies(env, model, a.threads, [path])
                    if len(got) != 1:
                        raise SystemExit(f"dino-run embed --latency did not time {path}")
                    cli_one += got
                else:
                    one.append(post(host, port, body))
            gaps.append(one[-1] - cli_one[-1])
        gap = sorted(gaps)[len(gaps) // 2]
        cli_one, one = sorted(cli_one), sorted(one)
        cli_p50, cli_p99 = percentile(cli_one, 50), percentile(cli_one, 99)
        p50, p99 = percentile(one, 50), percentile(one, 99)
        # Best of 2 rounds, as the CLI's figures.
        rounds = [load(host, port, bodies, a.clients, srv.pid) for _ in range(2)]
        rate, cpu, peak = max(r[0] for r in rounds), min(r[1] for r in rounds), max(r[2] for r in rounds)
    finally:
        srv.terminate()
        srv.wait(timeout=60)

    cli_rate = 1.0 / batch_s
    print(f"model: runtime_fixture.py {a.model_args}; {a.threads} threads; "
          f"{a.images} images (the {len(PHOTOS)} photos repeated)\n")
    print("| measure | dino-run serve | CLI | ratio / difference | target |")
    print("|---|---|---|---|---|")
    print(f"| images/s, {a.clients} clients vs `embed --batch-size 32` | {rate:.1f} | "
          f"{cli_rate:.1f} | {rate / cli_rate:.2f}x | >= 0.9x |")
    print(f"| CPU ms per image, same runs | {cpu * 1e3:.1f} | {batch_cpu * 1e3:.1f} | "
          f"{cpu / batch_cpu:.2f}x | |")
    print(f"| latency p50, 1 client vs warm `embed --latency`, {len(timed)} images, paired | "
          f"{p50 * 1e3:.1f} ms | {cli_p50 * 1e3:.1f} ms | {(p50 - cli_p50) * 1e3:+.1f} ms | within 5 ms |")
    print(f"| latency p99, same | {p99 * 1e3:.1f} ms | {cli_p99 * 1e3:.1f} ms | "
          f"{(p99 - cli_p99) * 1e3:+.1f} ms | within 5 ms |")
    print(f"| median of the paired differences (server - CLI) | | | {gap * 1e3:+.1f} ms | |")
    print(f"| peak RSS under {a.clients} clients | {peak:.0f} MiB | | | |")


if __name__ == "__main__":
    main()
