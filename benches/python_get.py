"""Python read path, side by side in one run: lockstep.Client.get, a dict lookup, and redis-py
GET against a local redis-server this script starts.

The three run interleaved over ROUNDS rounds after one unrecorded warm-up round, in alternating
order (A B C, then C B A, ...), on a machine shared with other builds: each figure is the median
with the min-max over the rounds, and each ratio is taken round by round.

    python3 benches/python_get.py            (after cargo build --release)
"""

import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "bindings", "python"))
os.environ.setdefault("LOCKSTEP_LIBRARY", os.path.join(REPO, "target", "release", "liblockstep.so"))

import lockstep  # noqa: E402
import redis  # noqa: E402

N_KEYS = 10_000
CALLS = 200_000
ROUNDS = 7


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def per_call_ns(fn, keys):
    t = time.perf_counter_ns()
    for k in keys:
        fn(k)
    return (time.perf_counter_ns() - t) / len(keys)


def interleave(contenders):
    """Runs each contender once per round after a warm-up round, the order reversed every other
    round; returns each contender's samples in round order."""
    for c in contenders:
        c()
    samples = [[] for _ in contenders]
    order = list(range(len(contenders)))
    for _ in range(ROUNDS):
        for i in order:
            samples[i].append(contenders[i]())
        order.reverse()
    return samples


def spread(xs, fmt):
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def main():
    keys = ["key:%028d" % i for i in range(N_KEYS)]
    values = {k: ("value:%08d:%049d" % (0, i)).encode() for i, k in enumerate(keys)}
    tmp = tempfile.mkdtemp()
    env = dict(os.environ, LOCKSTEP_ADMIN_TOKEN="bench", LOCKSTEP_LOG="warn")
    server = subprocess.Popen(
        [os.path.join(REPO, "target", "release", "lockstep"), "serve", "--db", tmp + "/db",
         "--listen", "127.0.0.1:0", "--interval", "500ms"], stdout=subprocess.PIPE, env=env)
    url = server.stdout.readline().decode().split()[-1]
    with open(tmp + "/keys.csv", "w") as f:
        for k, v in values.items():
            f.write(f"{k},{v.decode()}\n")
    subprocess.run([os.path.join(REPO, "target", "release", "lockstep"), "--server", url,
                    "import", tmp + "/keys.csv"], check=True, env=env, stdout=subprocess.DEVNULL)
    port = free_port()
    rds = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly",
                            "no", "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        client = lockstep.Client(url, name="bench")
        deadline = time.time() + 60
        while client.get(keys[0]) is None:
            assert time.time() < deadline, "data never became active"
            time.sleep(0.05)
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        pipe = r.pipeline()
        for k, v in values.items():
            pipe.set(k, v)
        pipe.execute()

        rng = random.Random(1)
        sample = [rng.choice(keys) for _ in range(CALLS)]
        assert client.get(sample[0]) == values[sample[0]] == r.get(sample[0])
        # Redis takes about 100 times longer per call: fewer calls keep its part of a round short.
        ls, d, rd = interleave([
            lambda: per_call_ns(client.get, sample),
            lambda: per_call_ns(values.get, sample),
            lambda: per_call_ns(r.get, sample[: CALLS // 20]),
        ])
        print(f"{ROUNDS} interleaved rounds, median (min-max), ns per call:")
        print(f"  lockstep.Client.get  {spread(ls, ',.0f')}")
        print(f"  dict.get             {spread(d, ',.0f')}")
        print(f"  redis-py GET         {spread(rd, ',.0f')}")
        print(f"  per round: Client.get / dict {spread([a / b for a, b in zip(ls, d)], '.1f')}x; "
              f"redis-py GET / Client.get {spread([b / a for a, b in zip(ls, rd)], '.1f')}x "
              f"(target >= 50x faster than Redis)")
        client.close()
    finally:
        rds.terminate()
        server.terminate()
        rds.wait()
        server.wait()


if __name__ == "__main__":
    main()
