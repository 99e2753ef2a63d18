#!/usr/bin/env python3
"""llama-server with a TurboQuant KV cache: start it on localhost, send real requests, check the answers,
stop the server. Bounded in time.

Two kinds of check (REQUEST):
  chat (default)  an OpenAI-style /v1/chat/completions request ("What is the capital of France?") to the
                  TurboQuant server; the answer must name Paris (an instruction-tuned model: SmolLM2-135M-Instruct).
  completion      for a base model (Gemma 3 270M), which does not answer that chat question even with f16: the
                  same greedy /completion request ("The capital of France is") to an f16 server and then to a
                  TurboQuant server; the f16 answer must name Paris (the reference is sane), the TurboQuant one
                  too, and both must start with the same first sentence.
Both: the request is sent twice to the TurboQuant server (the second reuses the cached prompt prefix of its slot)
and must give the same greedy answer; the TurboQuant server's log must show CACHES TurboQuant caches (Gemma 3:
2, the full-attention and the sliding-window one).

Environment: LLAMA_BIN, MODEL, THREADS; optional REQUEST, CACHES (1), CTK/CTV (tq4), NP (2), SERVER_ARGS (more
llama-server options for every server started, e.g. "-ngl 99" on a CUDA build).
Exit status 0 only when every check passes.
"""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 120
COMPLETION_PROMPT = "The capital of Italy is Rome. The capital of Germany is Berlin. The capital of France is"
EXPECT = "paris"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bin_dir, model, threads, n_par, ctk, ctv, log_path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [os.path.join(bin_dir, "llama-server"), "-m", model, "--host", "127.0.0.1", "--port", str(self.port),
               "-t", threads, "-c", "2048", "-np", n_par, "-ctk", ctk, "-ctv", ctv, "--no-webui", "-lv", "4"]
        cmd += shlex.split(os.environ.get("SERVER_ARGS", ""))
        print("starting:", " ".join(cmd), flush=True)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self):
        t0 = time.time()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with status {self.proc.returncode} while starting")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            if time.time() - t0 > START_TIMEOUT_S:
                raise RuntimeError(f"llama-server not healthy after {START_TIMEOUT_S} s")
            time.sleep(0.5)
        print(f"healthy after {time.time() - t0:.1f} s", flush=True)

    def post(self, path, body):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            return json.load(r)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def log_lines(self, word):
        text = open(self.log_path, errors="replace").read()
        return [l for l in text.splitlines() if word in l]


def chat_request(server):
    body = {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "temperature": 0,
        "max_tokens": 48,
    }
    t1 = time.time()
    resp = server.post("/v1/chat/completions", body)
    return resp["choices"][0]["message"]["content"], resp.get("usage", {}), time.time() - t1


def completion_request(server):
    body = {"prompt": COMPLETION_PROMPT, "temperature": 0, "n_predict": 16, "cache_prompt": True}
    t1 = time.time()
    resp = server.post("/completion", body)
    usage = {k: resp.get(k) for k in ("tokens_evaluated", "tokens_predicted")}
    usage["prompt_tokens_processed"] = resp.get("timings", {}).get("prompt_n")
    return resp["content"], usage, time.time() - t1


def first_sentence(text):
    line = text.strip().split("\n")[0]
    m = re.match(r"[^.!?]*[.!?]", line)
    return (m.group(0) if m else line).strip()


def run_server(bin_dir, model, threads, n_par, ctk, ctv, log_path, request, n_requests):
    """starts a server, sends the request n_requests times, stops it; returns the answers"""
    server = Server(bin_dir, model, threads, n_par, ctk, ctv, log_path)
    answers = []
    try:
        server.wait_healthy()
        for i in range(n_requests):
            answer, usage, dt = request(server)
            print(f"{ctk}/{ctv} answer {i + 1} ({dt:.1f} s, {usage}): {answer!r}", flush=True)
            answers.append(answer)
    finally:
        server.stop()
    return server, answers


def main():
    bin_dir, model = os.environ["LLAMA_BIN"], os.environ["MODEL"]
    threads = os.environ.get("THREADS", "2")
    ctk, ctv = os.environ.get("CTK", "tq4"), os.environ.get("CTV", "tq4")
    n_par = os.environ.get("NP", "2")
    mode = os.environ.get("REQUEST", "chat")
    n_caches = int(os.environ.get("CACHES", "1"))
    if mode not in ("chat", "completion"):
        print(f"REQUEST={mode}: expected chat or completion")
        return 2
    request = chat_request if mode == "chat" else completion_request
    work = os.path.dirname(bin_dir.rstrip("/"))
    log_path = os.path.join(work, "server-test.log")
    ok = False
    tq_server = None
    try:
        ref = None
        if mode == "completion":
            f16_server, f16_answers = run_server(bin_dir, model, threads, n_par, "f16", "f16",
                                                 os.path.join(work, "server-test-f16.log"), request, 1)
            ref = f16_answers[0]
            if f16_server.log_lines("TurboQuant"):
                raise RuntimeError("the f16 server's log mentions TurboQuant")
            if EXPECT not in ref.lower():
                raise RuntimeError(f"the f16 reference answer does not name {EXPECT.title()} (the check needs a model that answers)")
        # twice: the second request reuses the cached prompt prefix of its slot (llama's seq_rm of the rest)
        # and must give the same greedy answer
        tq_server, answers = run_server(bin_dir, model, threads, n_par, ctk, ctv, log_path, request, 2)
        if EXPECT not in answers[0].lower():
            raise RuntimeError(f"the answer does not name {EXPECT.title()}")
        if answers[1] != answers[0]:
            raise RuntimeError("the repeated request (cached prefix) gave another answer")
        if ref is not None:
            if first_sentence(answers[0]) != first_sentence(ref):
                raise RuntimeError(f"first sentence differs: f16 {first_sentence(ref)!r}, "
                                   f"{ctk}/{ctv} {first_sentence(answers[0])!r}")
            print(f"{ctk}/{ctv} answer {'identical to' if answers[0] == ref else 'differs after the first sentence from'} "
                  "the f16 answer", flush=True)
        ok = True
    except Exception as e:  # report; the servers are stopped by run_server
        print(f"FAIL: {e}", flush=True)
    if tq_server is not None:
        lines = tq_server.log_lines("TurboQuant K ")
        for l in lines[:n_caches]:
            print("server log:", l.strip())
        if len(lines) < n_caches:
            print(f"FAIL: the server log has {len(lines)} TurboQuant KV cache lines, expected {n_caches}")
            ok = False
    print("llama-server test:", "PASS" if ok else f"FAIL (log: {log_path})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
