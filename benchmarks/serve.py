"""`segengine serve` against a warm in-process count, on an existing workspace.

    python -m benchmarks.serve WORKSPACE [--requests 400] [--clients 8] [--browser] [--write]

Reads only: the workspace is never written. Prints one JSON document: per segment,
the in-process count's p50/p99, the HTTP /api/count p50/p99 with CLIENTS concurrent
clients and the requests per second, and the peak RSS of the server and of a
process that counted the same segments warm. With --browser, also the time a
headless Chromium takes from the last keystroke in the builder to the updated count
(the 150 ms debounce included and also reported without it). With --write, also a
second run with one client, and the section of benchmarks/RESULTS.md between its
markers (which `make bench` keeps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from segengine.definition.yaml12 import load_yaml

REPO = Path(__file__).resolve().parent.parent
SEGMENTS = sorted((REPO / "data" / "segments").glob("*.yaml"))
AS_OF = "2026-11-27"

IN_PROCESS = """
import json, sys, time
import segengine
ws = segengine.open(sys.argv[1])
segs = json.loads(sys.argv[2])
out = {}
for name, seg in segs.items():
    seg = {"name": name, **seg}
    ws.count(seg, as_of=sys.argv[3])
    times = []
    for _ in range(int(sys.argv[4])):
        t = time.perf_counter(); ws.count(seg, as_of=sys.argv[3]); times.append((time.perf_counter() - t) * 1000)
    times.sort()
    out[name] = {"p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99) - 1]}
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"segments": out, "peak_rss_mb": int(peak) / 1024}))
"""


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[max(0, int(len(values) * q) - 1)]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workspace")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--browser", action="store_true", help="also time the builder page")
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=1))
    if args.write:
        single = run(argparse.Namespace(**{**vars(args), "clients": 1, "browser": False,
                                           "requests": max(args.requests // 2, 50)}))
        write_section(report, single, args.workspace)


def run(args: argparse.Namespace) -> dict:
    segs = {p.stem: {k: v for k, v in load_yaml(p.read_text()).items() if k != "name"} for p in SEGMENTS}

    local = json.loads(subprocess.run(
        [sys.executable, "-c", IN_PROCESS, args.workspace, json.dumps(segs), AS_OF, str(args.requests)],
        capture_output=True, text=True, check=True).stdout)

    server = subprocess.Popen([sys.executable, "-m", "segengine", "-w", args.workspace, "serve",
                               "--port", str(args.port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/api/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        results = {}
        for name, seg in segs.items():
            body = {"segments": [seg], "as_of": AS_OF}
            httpx.post(url + "/api/count", json=body, timeout=60).raise_for_status()  # warm
            latencies: list[float] = []
            per_client = args.requests // args.clients

            def client(body=body, latencies=latencies, per_client=per_client) -> None:
                with httpx.Client(base_url=url, timeout=60) as c:
                    for _ in range(per_client):
                        t = time.perf_counter()
                        c.post("/api/count", json=body).raise_for_status()
                        latencies.append((time.perf_counter() - t) * 1000)

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
            results[name] = {
                "in_process_p50_ms": round(local["segments"][name]["p50_ms"], 3),
                "in_process_p99_ms": round(local["segments"][name]["p99_ms"], 3),
                "http_p50_ms": round(statistics.median(latencies), 2),
                "http_p99_ms": round(percentile(latencies, 0.99), 2),
                "requests_per_s": round(len(latencies) / wall, 1),
            }
        report = {"clients": args.clients, "requests_per_segment": args.requests,
                  "segments": results, "server_peak_rss_mb": round(peak_rss_mb(server.pid), 1),
                  "in_process_peak_rss_mb": round(local["peak_rss_mb"], 1)}
        if args.browser:
            report["browser_keystroke_to_count_ms"] = keystroke_to_count(url)
        return report
    finally:
        server.terminate()
        server.wait(10)


MARK_START, MARK_END = "<!-- serve benchmark -->", "<!-- /serve benchmark -->"


def write_section(report: dict, single: dict, workspace: str) -> None:
    import os
    import platform

    from segengine.store.workspace import Store

    counts = Store(workspace).snapshot().manifest["counts"]
    load = os.getloadavg()[0]
    lines = [MARK_START, f"## `segengine serve` at {counts['contacts']:,} contacts", "",
             f"`python -m benchmarks.serve WORKSPACE {' '.join(sys.argv[2:])}` on {platform.node() or 'this machine'} "
             f"({os.cpu_count()} cores, load average {load:.1f} while measuring: the cores are shared). "
             "HTTP `/api/count` from concurrent clients (threads of one load-generating process, "
             "each with its own keep-alive connection) against the warm in-process `Workspace.count` "
             "of the same definitions (the seed's segments, sent inline), side by side in one run.", "",
             "| segment | in-process p50 / p99 ms | HTTP, 1 client: p50 / p99 ms, req/s | "
             f"HTTP, {report['clients']} clients: p50 / p99 ms, req/s |", "|---|---|---|---|"]
    for name, r in report["segments"].items():
        one = single["segments"][name]
        lines.append(f"| {name} | {r['in_process_p50_ms']:.2f} / {r['in_process_p99_ms']:.1f} | "
                     f"{one['http_p50_ms']:.1f} / {one['http_p99_ms']:.1f}, {one['requests_per_s']:.0f} | "
                     f"{r['http_p50_ms']:.1f} / {r['http_p99_ms']:.1f}, {r['requests_per_s']:.0f} |")
    lines += ["", f"- Peak RSS: server {report['server_peak_rss_mb']:.0f} MB after all the requests, "
              f"a process that counted the same segments warm {report['in_process_peak_rss_mb']:.0f} MB "
              f"({report['server_peak_rss_mb'] / report['in_process_peak_rss_mb']:.2f}x)."]
    browser = report.get("browser_keystroke_to_count_ms")
    if browser:
        lines.append(f"- Builder page in headless Chromium, last keystroke to the updated count "
                     f"(10 edits of a field rule): p50 {browser['p50']:.0f} ms including the 150 ms "
                     f"debounce ({browser['p50_after_debounce']:.0f} ms after it), max {browser['max']:.0f} ms.")
    over = max(r["http_p50_ms"] - r["in_process_p50_ms"] for r in report["segments"].values())
    p99 = max(r["http_p99_ms"] for r in report["segments"].values())
    server_rss, local_rss = report["server_peak_rss_mb"], report["in_process_peak_rss_mb"]
    lines += [f"- Targets at {report['clients']} clients: HTTP p50 within 2 ms of in-process: "
              f"{'met' if over <= 2 else 'missed'} (worst +{over:.1f} ms); p99 <= 25 ms: "
              f"{'met' if p99 <= 25 else 'missed'} (worst {p99:.0f} ms); server RSS within 1.5x: "
              f"{'met' if server_rss <= 1.5 * local_rss else 'missed'}."]
    lines += ["- 10M contacts: not measured here (no 10M workspace on this machine).",
              "- With concurrent clients, the p50 is mostly queueing: one evaluation runs at a time "
              "(see docs/serve.md), so with N clients a request waits for about N-1 others.",
              MARK_END, ""]
    path = Path(__file__).resolve().parent / "RESULTS.md"
    text = path.read_text()
    section = "\n".join(lines)
    if MARK_START in text:
        before, rest = text.split(MARK_START, 1)
        text = before + section + rest.split(MARK_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def keystroke_to_count(url: str, rounds: int = 10) -> dict[str, float]:
    """Type a state into a field rule, `rounds` times; time the last key to the new count."""
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        d.get(url + "/")
        WebDriverWait(d, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=add-field]"))
        d.find_element(By.CSS_SELECTOR, "[data-testid=add-field]").click()
        Select(d.find_element(By.ID, "rules[0]-field")).select_by_value("state")
        d.execute_script("document.addEventListener('input', () => { window.lastInput = performance.now(); }, true)")
        times = []
        for state in ["CA", "NY", "TX", "WA", "OR", "FL", "IL", "MA", "NJ", "GA"][:rounds]:
            box = d.find_element(By.ID, "rules[0]-value")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(state)
            before = d.execute_script("return window.lastInput")
            WebDriverWait(d, 30).until(
                lambda d, before=before: float(d.execute_script("return document.body.dataset.countedAt || 0")) > before)
            times.append(d.execute_script("return Number(document.body.dataset.countedAt) - window.lastInput"))
        times.sort()
        return {"p50": round(times[len(times) // 2], 1), "max": round(times[-1], 1),
                "p50_after_debounce": round(times[len(times) // 2] - 150, 1)}
    finally:
        d.quit()


if __name__ == "__main__":
    main()
