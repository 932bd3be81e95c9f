"""Drive a launched serdemo app with N concurrent gradio_client users for a bounded time.

Each user loops: analyse a real clip, and every third time relabel it. Prints throughput, p50/p95
latency per endpoint and the errors seen.

    .venv/bin/python app.py &                                  # or any running instance
    .venv/bin/python benchmarks/load.py --url http://127.0.0.1:7860/ --users 1 4 16 --seconds 30
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from pathlib import Path


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def run(url: str, users: int, seconds: float, clips: list[Path], model: str) -> dict:
    from gradio_client import Client, handle_file

    lat: dict[str, list[float]] = {"analyze": [], "relabel": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def user(uid: int):
        rng = random.Random(uid)
        try:
            client = Client(url, verbose=False)
        except Exception as exc:  # the server refused the session
            with lock:
                errors.append(f"connect: {exc}")
            return
        n = 0
        while time.monotonic() < stop:
            clip = rng.choice(clips)
            t0 = time.perf_counter()
            try:
                out = client.predict(handle_file(str(clip)), model, 1.1, api_name="/analyze")
                with lock:
                    lat["analyze"].append(time.perf_counter() - t0)
                n += 1
                if n % 3 == 0:
                    t0 = time.perf_counter()
                    client.predict(out[4], "neutral", f"load-{uid}", api_name="/relabel")
                    with lock:
                        lat["relabel"].append(time.perf_counter() - t0)
            except Exception as exc:
                with lock:
                    errors.append(type(exc).__name__ + ": " + str(exc)[:120])

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    wall = time.monotonic() - t_start
    done = sum(len(v) for v in lat.values())
    return {"users": users, "wall_s": wall, "requests": done, "rps": done / wall,
            **{f"{k}_p50_ms": 1000 * percentile(v, 50) for k, v in lat.items()},
            **{f"{k}_p95_ms": 1000 * percentile(v, 95) for k, v in lat.items()},
            "errors": len(errors), "first_error": errors[0] if errors else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860/")
    ap.add_argument("--users", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="../shared/data/emodb/wav")
    args = ap.parse_args()
    clips = sorted(Path(args.data).glob("*.wav"))[:40]
    if not clips:
        raise SystemExit(f"no wav files under {args.data}")
    print(f"{'users':>5} {'req/s':>7} {'analyse p50':>12} {'p95':>8} {'relabel p50':>12} {'p95':>8} {'errors':>7}")
    for n in args.users:
        r = run(args.url, n, args.seconds, clips, args.model)
        print(f"{n:>5} {r['rps']:>7.2f} {r['analyze_p50_ms']:>10.0f}ms {r['analyze_p95_ms']:>6.0f}ms "
              f"{r['relabel_p50_ms']:>10.0f}ms {r['relabel_p95_ms']:>6.0f}ms {r['errors']:>7}"
              + (f"  ({r['first_error']})" if r["errors"] else ""))


if __name__ == "__main__":
    main()
