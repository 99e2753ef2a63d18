#!/usr/bin/env python3
"""llama-server with a TurboQuant KV cache: start it on localhost, send a real OpenAI-style
/v1/chat/completions request, check the answer, stop the server. Bounded in time.

Environment: LLAMA_BIN, MODEL, THREADS. Exit status 0 only when the answer is right and the server
log shows the TurboQuant cache.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    bin_dir, model = os.environ["LLAMA_BIN"], os.environ["MODEL"]
    threads = os.environ.get("THREADS", "2")
    ctk, ctv = os.environ.get("CTK", "tq4"), os.environ.get("CTV", "tq4")
    n_par = os.environ.get("NP", "2")
    port = free_port()
    log_path = os.path.join(os.path.dirname(bin_dir.rstrip("/")), "server-test.log")
    cmd = [os.path.join(bin_dir, "llama-server"), "-m", model, "--host", "127.0.0.1", "--port", str(port),
           "-t", threads, "-c", "2048", "-np", n_par, "-ctk", ctk, "-ctv", ctv, "--no-webui", "-lv", "4"]
    print("starting:", " ".join(cmd), flush=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    ok = False
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with status {proc.returncode} while starting")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            if time.time() - t0 > START_TIMEOUT_S:
                raise RuntimeError(f"llama-server not healthy after {START_TIMEOUT_S} s")
            time.sleep(0.5)
        print(f"healthy after {time.time() - t0:.1f} s", flush=True)

        body = {
            "model": "smollm2",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            "temperature": 0,
            "max_tokens": 48,
        }
        req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        answers = []
        # twice: the second request reuses the cached prompt prefix of its slot (llama's seq_rm of the
        # rest), and must give the same greedy answer
        for i in range(2):
            t1 = time.time()
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
                resp = json.load(r)
            answer = resp["choices"][0]["message"]["content"]
            usage = resp.get("usage", {})
            print(f"answer {i + 1} ({time.time() - t1:.1f} s, usage {usage}): {answer!r}", flush=True)
            answers.append(answer)
        if "paris" not in answers[0].lower():
            raise RuntimeError("the answer does not name Paris")
        if answers[1] != answers[0]:
            raise RuntimeError("the repeated request (cached prefix) gave another answer")
        ok = True
    except Exception as e:  # report, then stop the server below
        print(f"FAIL: {e}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    text = open(log_path, errors="replace").read()
    lines = [l for l in text.splitlines() if "TurboQuant" in l]
    for l in lines[:2]:
        print("server log:", l.strip())
    if not lines:
        print("FAIL: the server log has no TurboQuant KV cache line")
        ok = False
    print("llama-server test:", "PASS" if ok else f"FAIL (log: {log_path})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
