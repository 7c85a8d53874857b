#!/usr/bin/python3
"""Three llmd replicas behind nginx (conf/nginx/cluster.sh's config) under a
steady load of streamed and whole completions and PIM jobs, while one replica
is killed (SIGKILL), another is told to stop (SIGTERM), and the killed one is
started again. Run by tests/cluster/run.sh; stdlib only; 127.0.0.1 only.

Checks:
- every request ends (no hang) and every 200 is whole: a whole JSON answer, or
  a stream that ends with [DONE]; the only other outcomes are a clean 502/503
  from nginx or a stream cut by the SIGKILL of the replica that served it
  (headers already sent, so nothing can fail it over; the client sees the
  missing end);
- requests that hit the killed or draining replica were retried on another
  (X-LLMD-Upstream lists each replica tried);
- PIM jobs of the surviving replica stay reachable by id through nginx, and
  the ids of the killed one answer a clean 502 while it is down;
- the restarted replica takes traffic again;
- the generated config equals conf/nginx/llmd.conf's shape.
Prints what happened to every request, by kind and outcome.
"""
import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLMD = os.environ.get("LLMD_BINARY", "build/llmd")
MODEL = "tests/data/tiny-random.gguf"
WORK = os.environ.get("LLMD_CLUSTER_DIR", "build/cluster-test")
CLIENTS = 6
LOAD_SECONDS = 16
failures = []


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def free_ports(n):
    """n free consecutive ports: BASE (nginx) and BASE+1..BASE+n-1."""
    for base in range(20000, 40000, 97):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


class Replica:
    def __init__(self, index, port):
        self.index, self.port, self.proc = index, port, None
        self.addr = "127.0.0.1:%d" % port

    def start(self):
        log = open(os.path.join(WORK, "r%d.log" % self.index), "ab")
        self.proc = subprocess.Popen(
            [LLMD, "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", str(self.port),
             "--replica-id", "r%d" % self.index, "--precision", "fp32", "--kv-type", "f32",
             "--grace-s", "20", "--max-running", "16"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("replica r%d did not start" % self.index)


def request(port, method, path, body=None, timeout=30):
    """(status, headers, body bytes, transfer error or None)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        headers = {k.lower(): v for k, v in r.getheaders()}
        try:
            data = r.read()
            return r.status, headers, data, None
        except (http.client.IncompleteRead, ConnectionError, OSError) as e:
            return r.status, headers, getattr(e, "partial", b""), e
    finally:
        c.close()


outcomes = collections.Counter()
by_upstream = collections.Counter()
jobs = []  # (id, replica address that took it)
lock = threading.Lock()
stop_load = threading.Event()
problems = []
killed_addr = None


def note(kind, outcome, upstream):
    with lock:
        outcomes[(kind, outcome)] += 1
        for addr in (upstream or "").split(", "):
            if addr:
                by_upstream[(addr, time.time() > restart_time[0])] += 1


restart_time = [float("inf")]


def classify(kind, status, headers, data, err):
    upstream = headers.get("x-llmd-upstream", "")
    tried = [a for a in upstream.split(", ") if a and a != "-"]
    retried = len(tried) > 1
    if status == 200 and err is None:
        if kind == "stream":
            whole = data.rstrip().endswith(b"data: [DONE]")
        else:
            try:
                j = json.loads(data)
                whole = bool(j.get("choices") or j.get("id"))
            except ValueError:
                whole = False
        if not whole:
            problems.append("%s: a 200 that is not whole from %s: %r" % (kind, upstream, data[-200:]))
            return "truncated 200 (BAD)", upstream
        return ("200 after a retry" if retried else "200"), upstream
    if status == 200 and err is not None:
        # Headers sent, then the connection died: only the killed replica's streams.
        if tried and tried[-1] == killed_addr and kind == "stream":
            return "stream cut by the SIGKILL (client saw the missing end)", upstream
        problems.append("%s: transfer error %r from %s" % (kind, err, upstream))
        return "transfer error (BAD)", upstream
    if status in (502, 503, 504):
        return "clean %d" % status, upstream
    if status in (202,) and kind == "pim":
        return "202 after a retry" if retried else "202", upstream
    problems.append("%s: status %s from %s: %r" % (kind, status, upstream, data[:200]))
    return "status %s (BAD)" % status, upstream


def client(n, port):
    i = 0
    while not stop_load.is_set():
        kind = ("stream", "whole", "pim")[(n + i) % 3]
        i += 1
        try:
            if kind == "pim":
                status, headers, data, err = request(port, "POST", "/v1/pim/jobs", {
                    "type": "vmm", "matrix": [[1, 2], [3, 4]], "input": [1, i]})
                if status in (200, 202) and err is None:
                    j = json.loads(data)
                    with lock:
                        jobs.append((j["id"], headers.get("x-llmd-upstream", "").split(", ")[-1]))
            else:
                status, headers, data, err = request(port, "POST", "/v1/completions", {
                    "prompt": "The sea %d" % i, "max_tokens": 48, "ignore_eos": True,
                    "temperature": 0, "stream": kind == "stream"})
            outcome, upstream = classify(kind, status, headers, data, err)
        except socket.timeout:
            outcome, upstream = "hang (BAD)", ""
            problems.append("%s: no answer in 30 s" % kind)
        except OSError as e:
            outcome, upstream = "connection error to nginx (BAD)", ""
            problems.append("%s: %r" % (kind, e))
        note(kind, outcome, upstream)


def main():
    global killed_addr
    os.chdir(ROOT)
    os.makedirs(os.path.join(WORK, "logs"), exist_ok=True)
    os.makedirs(os.path.join(WORK, "tmp"), exist_ok=True)
    base = free_ports(4)
    conf = subprocess.run(["conf/nginx/cluster.sh", "conf", "3", str(base), str(base)],
                          check=True, capture_output=True, text=True).stdout
    shipped = open("conf/nginx/llmd.conf").read()
    generic = subprocess.run(["conf/nginx/cluster.sh", "conf", "3", "8080", "8080"],
                             check=True, capture_output=True, text=True).stdout
    check(generic == shipped, "conf/nginx/llmd.conf is what cluster.sh writes for 3 replicas")
    if os.getuid() == 0:
        conf = "user root;\n" + conf
    with open(os.path.join(WORK, "nginx.conf"), "w") as f:
        f.write(conf)

    replicas = [Replica(i, base + i) for i in (1, 2, 3)]
    nginx = None
    try:
        for r in replicas:
            r.start()
        nginx = subprocess.Popen(["nginx", "-p", WORK, "-c", "nginx.conf", "-g", "daemon off;"],
                                 stdout=open(os.path.join(WORK, "nginx.log"), "ab"),
                                 stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if request(base, "GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        seen = set()
        for _ in range(12):
            status, headers, data, _ = request(base, "GET", "/v1/pim/devices")
            seen.add(json.loads(data)["replica_id"])
        check(seen == {"r1", "r2", "r3"}, "/v1/pim/devices through nginx says who answered: %s" % sorted(seen))
        for r in replicas:
            status, _, data, _ = request(base, "GET", "/replicas/r%d/metrics" % r.index)
            check(status == 200 and ('llmd_build_info{replica_id="r%d"} 1' % r.index).encode() in data,
                  "r%d's /metrics through nginx is its own" % r.index)

        threads = [threading.Thread(target=client, args=(n, base)) for n in range(CLIENTS)]
        t0 = time.time()
        for t in threads:
            t.start()
        r1, r2, r3 = replicas
        time.sleep(3)
        killed_addr = r1.addr
        r1.proc.send_signal(signal.SIGKILL)
        print("  ... t=%.1fs: r1 SIGKILL" % (time.time() - t0), flush=True)
        time.sleep(2)
        r2.proc.send_signal(signal.SIGTERM)
        print("  ... t=%.1fs: r2 SIGTERM" % (time.time() - t0), flush=True)
        r1.proc.wait()
        time.sleep(2)
        r1.start()
        restart_time[0] = time.time()
        print("  ... t=%.1fs: r1 started again" % (time.time() - t0), flush=True)
        r2_code = r2.proc.wait(timeout=30)
        time.sleep(max(0, LOAD_SECONDS - (time.time() - t0)))
        stop_load.set()
        for t in threads:
            t.join(60)
        check(not any(t.is_alive() for t in threads), "every client finished")
        check(r2_code == 0, "r2 drained and exited 0 on SIGTERM (got %s)" % r2_code)

        print("  what happened to every request:")
        for (kind, outcome), count in sorted(outcomes.items()):
            print("    %-7s %-55s %5d" % (kind, outcome, count))
        total = sum(outcomes.values())
        bad = sum(c for (k, o), c in outcomes.items() if "BAD" in o)
        check(total > 60, "a steady load: %d requests" % total)
        check(bad == 0, "no hang, no truncated 200, no other failure%s" %
              ("" if not problems else ": " + " | ".join(problems[:5])))
        retried = sum(c for (k, o), c in outcomes.items() if "retry" in o)
        check(retried > 0, "requests that hit the killed or draining replica failed over (%d)" % retried)
        after = by_upstream.get((r1.addr, True), 0)
        check(after > 0, "the restarted r1 takes traffic again (%d requests after its restart)" % after)

        # Jobs of the surviving replica r3 are reachable by id through nginx;
        # r2's (drained, exited) and the old r1's answer a clean 502/404.
        r3_jobs = [j for j, addr in jobs if j.startswith("pim-r3-")]
        ok = 0
        for job in r3_jobs:
            status, _, data, _ = request(base, "GET", "/v1/pim/jobs/%s?wait=10" % job)
            ok += status == 200 and json.loads(data)["status"] == "done"
        check(r3_jobs and ok == len(r3_jobs), "r3's PIM jobs stay reachable through nginx (%d of %d)" % (ok, len(r3_jobs)))
        r2_jobs = [j for j, addr in jobs if j.startswith("pim-r2-")]
        if r2_jobs:
            status = request(base, "GET", "/v1/pim/jobs/%s" % r2_jobs[0])[0]
            check(status == 502, "a job of the stopped r2 answers a clean 502 (got %d)" % status)
        old_r1 = [j for j, addr in jobs if j.startswith("pim-r1-")]
        if old_r1:
            status = request(base, "GET", "/v1/pim/jobs/%s" % old_r1[0])[0]
            check(status in (200, 404), "an r1 job id after r1's restart is answered by r1 (%d)" % status)
    finally:
        stop_load.set()
        for r in replicas:
            if r.proc and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
                try:
                    r.proc.wait(20)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
        if nginx:
            nginx.terminate()
            nginx.wait(10)
    print("cluster test: %s" % ("all passed" if not failures else "%d failed" % len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
