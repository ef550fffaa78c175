"""Measures `dino-run serve` against the batch CLI; driven by bench/serve.sh.

All traffic goes to 127.0.0.1 on a port the server picks; every loop is bounded by the
image count. Clients keep their connection open (HTTP/1.1 keep-alive), as a client calling
many times a second does.

The 2-core VMs this runs on drift in speed by 20% from one minute to the next, so every
comparison is paired in time:
* throughput: rounds of the CLI and the server under load, the order alternating round by
  round; the round of the median ratio gives the figures, and every round's ratio is
  printed. Both sides are measured alike, wall(N + w images) - wall(w images), w = one
  batch: this leaves out the CLI's process start and session creation, and the ramp up
  and down of the server's clients;
* latency: one warm `dino-run embed --latency -` process, fed one path at a time on stdin,
  and the server are given each image in turn, one right after the other, the order
  alternating image by image. The CLI's figure is measured inside its process (read,
  decode, preprocess, run), the server's by the client, HTTP included. The percentiles of
  each side are over the same moments; the median of the paired differences is printed
  beside them. Each is timed after a rest (--settle-ms): ONNX Runtime's threads spin for a
  while after a run, and on 2 cores one side's spinning slows the other's next run (by
  30 ms, whichever side went second, without the rest).
Prints a Markdown table.
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
    run."""
    full = cli_run(env, model, threads, batch, images + images[:warm])
    base = cli_run(env, model, threads, batch, images[:warm])
    return tuple((f - b) / len(images) for f, b in zip(full, base))


class CliLatency:
    """A warm `dino-run embed --latency -` process that times one image per call."""

    def __init__(self, env, model, threads):
        cmd = [str(BIN), "--threads", str(threads), "embed", "--latency", "--model", model, "-"]
        self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def time(self, path):
        """Seconds the process took for `path` (its first image also warms it up)."""
        self.p.stdin.write(f"{path}\n")
        self.p.stdin.flush()
        line = self.p.stderr.readline()
        if not line.startswith("latency\t"):
            raise SystemExit(f"dino-run embed --latency: {line.strip() or 'ended'} ({path})")
        return float(line.split("\t")[1]) / 1e3

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=60)


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


class Client:
    """One keep-alive connection posting images to /v1/embed."""

    def __init__(self, host, port):
        self.c = http.client.HTTPConnection(host, port, timeout=120)

    def post(self, body):
        """Seconds from sending the request to reading the whole answer."""
        t = time.perf_counter()
        self.c.request("POST", "/v1/embed", body=body)
        r = self.c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"status {r.status}")
        return time.perf_counter() - t

    def close(self):
        self.c.close()


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
    """`clients` threads posting `bodies` (each once); returns (wall seconds, server CPU
    seconds, peak RSS MiB)."""
    next_i, lock, peak, done = [0], threading.Lock(), [0.0], threading.Event()

    def client():
        c = Client(host, port)
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= len(bodies):
                c.close()
                return
            c.post(bodies[i])

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
    return wall, cpu, peak[0]


def server_per_image(host, port, bodies, warm, clients, pid):
    """(wall, CPU) seconds per image of the server under load, as the CLI's: the run of
    N + w images minus a run of w (the ramp up and down of the clients cancel out), and
    the peak RSS."""
    full = load(host, port, bodies + bodies[:warm], clients, pid)
    base = load(host, port, bodies[:warm], clients, pid)
    return (full[0] - base[0]) / len(bodies), (full[1] - base[1]) / len(bodies), full[2]


def paired_latency(env, model, threads, client, images, bodies, settle):
    """Per-image seconds of the CLI and of the server, taken in pairs. Each is timed
    after `settle` seconds of rest: ONNX Runtime's threads spin for a while after a run,
    and on 2 cores the one side's spinning would slow the other's next run."""
    cli, cli_s, srv = CliLatency(env, model, threads), [], []
    for i, (path, body) in enumerate(zip(images, bodies)):
        for side in (("cli", "server") if i % 2 == 0 else ("server", "cli")):
            time.sleep(settle)
            if side == "cli":
                cli_s.append(cli.time(path))
            else:
                srv.append(client.post(body))
    cli.close()
    return cli_s, srv


def paired_throughput(env, model, a, host, port, pid, images, bodies):
    """Per round: (CLI images/s, CLI CPU s/image, server images/s, server CPU s/image,
    server peak RSS MiB), the order alternating round by round."""
    rounds = []
    for r in range(a.rounds):
        got = {}
        for side in (("cli", "server") if r % 2 == 0 else ("server", "cli")):
            if side == "cli":
                got["cli"] = cli_per_image(env, model, a.threads, 32, images, 32)
            else:
                got["server"] = server_per_image(host, port, bodies, 32, a.clients, pid)
        (cli_s, cli_cpu), (srv_s, cpu, peak) = got["cli"], got["server"]
        rounds.append((1.0 / cli_s, cli_cpu, 1.0 / srv_s, cpu, peak))
    return rounds


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=192, help="images per throughput round")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds per side")
    ap.add_argument("--latency-images", type=int, default=480,
                    help="image pairs timed at 1 client (p99 leaves 1%% above it)")
    ap.add_argument("--settle-ms", type=float, default=100.0,
                    help="rest before each timed image at 1 client")
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
    timed = [PHOTOS[i % len(PHOTOS)] for i in range(a.latency_images)]
    timed_bodies = [p.read_bytes() for p in timed]

    srv, host, port = start_server(env, model, a.threads)
    try:
        client = Client(host, port)
        for b in bodies[:8]:
            client.post(b)  # warm-up
        cli_one, one = paired_latency(env, model, a.threads, client, timed, timed_bodies,
                                      a.settle_ms / 1e3)
        client.close()
        rounds = paired_throughput(env, model, a, host, port, srv.pid, images, bodies)
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    report(a, rounds, cli_one, one)


def report(a, rounds, cli_one, one):
    gap = median([s - c for s, c in zip(one, cli_one)])
    cli_one, one = sorted(cli_one), sorted(one)
    cli_p50, cli_p99 = percentile(cli_one, 50), percentile(cli_one, 99)
    p50, p99 = percentile(one, 50), percentile(one, 99)
    # The round of the median ratio (the lower one of an even count) gives the figures.
    by_ratio = sorted(rounds, key=lambda r: r[2] / r[0])
    cli_rate, cli_cpu, rate, cpu, _ = by_ratio[(len(rounds) - 1) // 2]
    peak = max(r[4] for r in rounds)
    print(f"model: runtime_fixture.py {a.model_args}; {a.threads} threads; "
          f"the {len(PHOTOS)} photos repeated\n")
    print("per throughput round (server / CLI images/s): "
          + ", ".join(f"{r[2]:.1f}/{r[0]:.1f} = {r[2] / r[0]:.2f}x" for r in rounds) + "\n")
    print("| measure | dino-run serve | CLI | ratio / difference | target |")
    print("|---|---|---|---|---|")
    print(f"| images/s, {a.clients} clients vs `embed --batch-size 32`, {a.images} images, "
          f"the median of {len(rounds)} paired rounds | {rate:.1f} | {cli_rate:.1f} | "
          f"{rate / cli_rate:.2f}x | >= 0.9x |")
    print(f"| CPU ms per image, same round | {cpu * 1e3:.1f} | {cli_cpu * 1e3:.1f} | "
          f"{cpu / cli_cpu:.2f}x | |")
    print(f"| latency p50, 1 client vs warm `embed --latency`, {len(one)} images, paired | "
          f"{p50 * 1e3:.1f} ms | {cli_p50 * 1e3:.1f} ms | {(p50 - cli_p50) * 1e3:+.1f} ms | "
          f"within 5 ms |")
    print(f"| latency p99, same | {p99 * 1e3:.1f} ms | {cli_p99 * 1e3:.1f} ms | "
          f"{(p99 - cli_p99) * 1e3:+.1f} ms | within 5 ms |")
    print(f"| median of the paired differences (server - CLI) | | | {gap * 1e3:+.1f} ms | |")
    print(f"| peak RSS under {a.clients} clients | {peak:.0f} MiB | | | |")


if __name__ == "__main__":
    main()
